"""`compute_delta_since(current, snapshot, horizon)`: the same delta as `compute_delta`, found without reading every
row of both sides — what makes a rollback take seconds at any size.

How: `horizon` is the current side's transaction horizon recorded at the cutover, after the final copy and before
the target took any write (`xid_horizon`: the oldest transaction still running then, so every transaction that
wrote after it has an id at or above it). PostgreSQL keeps the id of the transaction that wrote each row version in
its `xmin` (also after a freeze, since 9.4), so:

- **inserted and updated rows** are among the rows whose `xmin` is at or after the horizon (the *candidates*, one
  sequential scan without hashing the other rows); each candidate is looked up by key in the snapshot: absent →
  inserted, a different row hash → updated, equal → not a change (rows the final copy wrote are candidates too;
  they compare equal). Every other row has not been written since the horizon, so it is the snapshot's row.
- **deleted rows** leave nothing to find, so they are counted: rows per key range on both sides (one aggregate
  per side, read side by side with the candidates; an integer key is split by arithmetic, any other by boundaries
  from the snapshot, see `_Ranges`), and `snapshot rows + inserted - current rows` per range says which ranges lost
  rows. A range that lost one row of a one-column integer key lost the key `snapshot sum + inserted sum - current
  sum` of that range (checked: in the snapshot, not on the current side); only the other ranges' keys are
  merge-joined.

Exactness needs (1) no write to the current side between the snapshot's state and the horizon — the cutover records
the horizon right after the verified final copy, while the target app still refuses writes; (2) fewer than 2³¹
transactions on the current side since the horizon (`age()` compares 32-bit ids; autovacuum keeps a cluster far
below that). A table whose counts do not add up (a row older than the horizon that the snapshot lacks: condition 1
was broken), or with more than `MAX_CANDIDATES` candidates, is compared the full way (`compute_delta`'s merge); the
result says which tables took that path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from timetodo.ops.adapters.postgres import PgTarget
from timetodo.ops.adapters.postgres.chunks import (
    MAX_RANGE_FILTERS,
    ROWS_PER_CHUNK,
    ChunkSpec,
    chunk_filter,
    plan_table,
)
from timetodo.ops.migrate.rollback.compute import compute_delta, diff_table
from timetodo.ops.migrate.rollback.delta import (
    CURSOR_BATCH,
    DEFAULT_EXCLUDE,
    INT_TYPES,
    Delta,
    DeltaError,
    Key,
    TableDelta,
    TableInfo,
    chunks,
    key_arrays,
    record_key,
    text_connection,
)

MAX_CANDIDATES = 200_000
"""Above this many rows written since the horizon in one table, that table is compared the full way (the candidates'
keys are held in memory)."""

XID_SPACE = 1 << 32


async def xid_horizon(url: str) -> int:
    """The database's transaction horizon now (32-bit): the oldest transaction still running. Every row written by a
    transaction that commits later has `xmin` at or after it."""
    async with text_connection(PgTarget.from_url(url)) as conn:
        return int(await conn.fetchval("SELECT txid_snapshot_xmin(txid_current_snapshot())")) % XID_SPACE


async def _candidates(conn: asyncpg.Connection, info: TableInfo, horizon: int, batch: int) -> list[tuple[Key, str]]:
    """(key, row hash) of the rows written at or after the horizon; raises _TooMany above MAX_CANDIDATES."""
    width = len(info.key)
    sql = (
        f"SELECT {info.key_select()}, {info.row_hash()} FROM {info.qname} AS t "  # noqa: S608
        "WHERE age(t.xmin) <= age($1::text::xid)"
    )
    found: list[tuple[Key, str]] = []
    async for row in conn.cursor(sql, str(horizon), prefetch=batch):
        found.append((record_key(row, width), str(row[width])))
        if len(found) > MAX_CANDIDATES:
            raise _TooMany
    return found


class _TooMany(Exception):
    pass


async def hashes_by_key(conn: asyncpg.Connection, info: TableInfo, keys: Sequence[Key]) -> dict[Key, str]:
    width = len(info.key)
    sql = (
        f"SELECT {info.key_select()}, {info.row_hash()} FROM {info.qname} AS t "  # noqa: S608
        f"JOIN {info.keys_relation()} AS k ON {info.key_join()}"
    )
    rows = await conn.fetch(sql, *key_arrays(keys, width))
    return {record_key(row, width): str(row[width]) for row in rows}


async def _key_stream(
    conn: asyncpg.Connection, info: TableInfo, where: str, args: Sequence[Any], batch: int, side: str
) -> AsyncGenerator[Key, None]:
    width = len(info.key)
    sql = f"SELECT {info.key_select()} FROM {info.qname} AS t WHERE {where} ORDER BY {info.key_order()}"  # noqa: S608
    previous: Key | None = None
    async for row in conn.cursor(sql, *args, prefetch=batch):
        key = record_key(row, width)
        if previous is not None and not previous < key:
            raise DeltaError(f"{info.name} on the {side}: keys are not in a strictly increasing order; cannot merge")
        previous = key
        yield key


@dataclass(frozen=True)
class _Ranges:
    """A table's keys split into ranges for counting, the same on both sides. An integer first key column is split by
    arithmetic (`lo + n·ROWS_PER_CHUNK`, `lo` the smallest key on either side: nothing to plan); any other by
    boundaries taken from the snapshot (`chunks.plan_table`, one ordered pass over its key)."""

    info: TableInfo
    lo: int | None = None
    spec: ChunkSpec | None = None

    def bucket(self, alias: str = "t") -> tuple[str, list[Any]]:
        """The range number of a row (SQL) and its parameters."""
        if self.lo is not None:
            return f"({alias}.{self.info.key[0].q}::bigint - {self.lo}) / {ROWS_PER_CHUNK}", []
        assert self.spec is not None
        return self.spec.bucket(alias), [list(self.spec.bounds)]

    @property
    def sums(self) -> bool:
        """Whether range sums of the key say which key a range lost (a one-column integer key)."""
        return self.lo is not None and len(self.info.key) == 1

    def where(self, ranges: Sequence[int]) -> tuple[str, list[Any]]:
        """A WHERE condition selecting the rows of `ranges`, and its parameters."""
        if self.lo is None:
            assert self.spec is not None
            return chunk_filter(self.spec, ranges)
        if len(ranges) > MAX_RANGE_FILTERS:
            return f"{self.bucket()[0]} = ANY($1::bigint[])", [list(ranges)]
        column = f"t.{self.info.key[0].q}"
        parts = [
            f"({column} >= {self.lo + n * ROWS_PER_CHUNK} AND {column} < {self.lo + (n + 1) * ROWS_PER_CHUNK})"
            for n in ranges
        ]
        return "(" + " OR ".join(parts) + ")", []

    async def of_keys(self, conn: asyncpg.Connection, keys: Sequence[Key], batch: int) -> RangeCounts:
        """How many of `keys` fall in each range (and their sum, with `sums`)."""
        found: RangeCounts = {}
        if self.lo is not None:
            for key in keys:
                n = (int(key[0]) - self.lo) // ROWS_PER_CHUNK
                rows, total = found.get(n, (0, 0))
                found[n] = (rows + 1, total + (int(key[0]) if self.sums else 0))
            return found
        assert self.spec is not None
        collate = ' COLLATE "C"' if self.spec.collatable else ""
        width = len(self.info.key)
        bucket = f"width_bucket(k.k0{collate}, ${width + 1}::text[]::{self.spec.type}[])"
        sql = f"SELECT {bucket} AS c, count(*) AS n FROM {self.info.keys_relation()} AS k GROUP BY 1"  # noqa: S608
        for part in chunks(keys, batch):
            for r in await conn.fetch(sql, *key_arrays(part, width), list(self.spec.bounds)):
                rows, _ = found.get(int(r["c"]), (0, 0))
                found[int(r["c"])] = (rows + int(r["n"]), 0)
        return found


async def _ranges(current: asyncpg.Connection, snapshot: asyncpg.Connection, info: TableInfo) -> _Ranges:
    first = info.key[0]
    if first.typid in INT_TYPES:
        sql = f"SELECT min({first.q}) FROM {info.qname}"  # noqa: S608
        lows = [v for v in (await current.fetchval(sql), await snapshot.fetchval(sql)) if v is not None]
        return _Ranges(info, lo=min(lows, default=0))
    return _Ranges(info, spec=await plan_table(snapshot, info.name))


RangeCounts = dict[int, tuple[int, int]]
"""Per range: (rows, sum of the keys — 0 unless `_Ranges.sums`)."""


async def _range_counts(conn: asyncpg.Connection, ranges: _Ranges) -> RangeCounts:
    bucket, args = ranges.bucket()
    total = f"sum(t.{ranges.info.key[0].q})" if ranges.sums else "0"
    sql = f"SELECT {bucket} AS c, count(*) AS n, {total} AS s FROM {ranges.info.qname} AS t GROUP BY 1"  # noqa: S608
    return {int(r["c"]): (int(r["n"]), int(r["s"])) for r in await conn.fetch(sql, *args)}


async def _single_losses(
    current: asyncpg.Connection,
    snapshot: asyncpg.Connection,
    ranges: _Ranges,
    lost: dict[int, int],
    sums: dict[int, int],
) -> tuple[list[Key], list[int]]:
    """A range that lost exactly one row of a one-column integer key lost the key `snapshot sum + inserted sum -
    current sum`; each such key is checked (in the snapshot, not on the current side). The keys found, and the
    ranges left to merge."""
    guesses = {n: sums[n] for n, count in lost.items() if count == 1} if ranges.sums else {}
    if not guesses:
        return [], sorted(n for n, count in lost.items() if count)
    info = ranges.info
    column = info.key[0].q
    sql = f"SELECT t.{column} FROM {info.qname} AS t WHERE t.{column} = ANY($1::bigint[])"  # noqa: S608
    wanted = list(guesses.values())
    in_snapshot = {int(r[0]) for r in await snapshot.fetch(sql, wanted)}
    on_current = {int(r[0]) for r in await current.fetch(sql, wanted)}
    found = [n for n, key in guesses.items() if key in in_snapshot and key not in on_current]
    # a guess that fails its check (two changes cancelling in the sums) sends its range to the merge
    rest = sorted(n for n, count in lost.items() if count and n not in set(found))
    return sorted((guesses[n],) for n in found), rest


async def _deleted_keys(
    current: asyncpg.Connection, snapshot: asyncpg.Connection, ranges: _Ranges, lost: Sequence[int], batch: int
) -> list[Key]:
    """The snapshot's keys the current side no longer has, in the ranges that lost rows (merge-joined by key)."""
    where, args = ranges.where(lost)
    deleted: list[Key] = []
    ours = _key_stream(current, ranges.info, where, args, batch, "current side")
    theirs = _key_stream(snapshot, ranges.info, where, args, batch, "snapshot")
    try:
        a, b = await anext(ours, None), await anext(theirs, None)
        while b is not None:
            if a is None or b < a:
                deleted.append(b)
                b = await anext(theirs, None)
            elif a < b:
                a = await anext(ours, None)
            else:
                a, b = await anext(ours, None), await anext(theirs, None)
    finally:
        await ours.aclose()
        await theirs.aclose()
    return deleted


async def _table_since(
    current: asyncpg.Connection, snapshot: asyncpg.Connection, info: TableInfo, horizon: int, batch: int
) -> TableDelta | None:
    """The table's delta by the horizon, or None when it must be compared the full way. The current side (candidates,
    then its range counts) and the snapshot side (its range counts) are read side by side."""
    ranges = await _ranges(current, snapshot, info)

    async def current_side() -> tuple[list[tuple[Key, str]], RangeCounts]:
        return await _candidates(current, info, horizon, batch), await _range_counts(current, ranges)

    ours, theirs = await asyncio.gather(current_side(), _range_counts(snapshot, ranges), return_exceptions=True)
    if isinstance(ours, _TooMany):
        return None
    for outcome in (ours, theirs):
        if isinstance(outcome, BaseException):
            raise outcome
    assert not isinstance(ours, BaseException) and not isinstance(theirs, BaseException)
    (candidates, cur_n), snap_n = ours, theirs
    delta = TableDelta(key_columns=[c.name for c in info.key])
    for start in range(0, len(candidates), batch):
        part = candidates[start : start + batch]
        there = await hashes_by_key(snapshot, info, [key for key, _ in part])
        for key, digest in part:
            known = there.get(key)
            if known is None:
                delta.inserted.append(key)
            elif known != digest:
                delta.updated.append(key)
    delta.inserted.sort()
    delta.updated.sort()
    delta.rows_current = sum(rows for rows, _ in cur_n.values())
    delta.rows_snapshot = sum(rows for rows, _ in snap_n.values())
    if delta.rows_snapshot + len(delta.inserted) - delta.rows_current < 0:
        return None  # a row older than the horizon that the snapshot lacks: compare the full way
    ins_n = await ranges.of_keys(current, delta.inserted, batch)
    empty = (0, 0)
    lost: dict[int, int] = {}
    sums: dict[int, int] = {}
    for r in set(snap_n) | set(ins_n) | set(cur_n):
        (sn, ss), (cn, cs), (inn, ins) = snap_n.get(r, empty), cur_n.get(r, empty), ins_n.get(r, empty)
        lost[r], sums[r] = sn + inn - cn, ss + ins - cs
    if any(v < 0 for v in lost.values()):
        return None
    if any(lost.values()):
        single, rest = await _single_losses(current, snapshot, ranges, lost, sums)
        merged = await _deleted_keys(current, snapshot, ranges, rest, batch) if rest else []
        delta.deleted = sorted([*single, *merged])
        if len(delta.deleted) != sum(lost.values()):
            return None
    return delta


async def compute_delta_since(
    current_url: str,
    snapshot_url: str,
    horizon: int,
    *,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    batch: int = CURSOR_BATCH,
) -> tuple[Delta, list[str]]:
    """`compute_delta(current_url, snapshot_url)` through the horizon (see the module's docstring); also the tables
    that had to be compared the full way. Same errors as `compute_delta`."""
    full: list[str] = []

    async def compare(
        current: asyncpg.Connection, snapshot: asyncpg.Connection, info: TableInfo, batch: int
    ) -> TableDelta:
        found = await _table_since(current, snapshot, info, horizon, batch)
        if found is None:
            full.append(info.name)
            found = await diff_table(current, snapshot, info, batch)
        return found

    delta = await compute_delta(current_url, snapshot_url, exclude=exclude, batch=batch, compare=compare)
    return delta, full
