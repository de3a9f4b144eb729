"""Chunk maps: a table's rows split into primary-key ranges, with a content hash per range (of the rows' COPY text).

Used by the `delta` strategy of `timetodo migrate`: both sides are hashed chunk by chunk, only the chunks whose hashes
differ are compared row by row and copied.

Guarantees:

- **Every key belongs to exactly one chunk, whatever happens to the table.** A table is chunked on the first column
  of its primary key by increasing boundaries b1 < b2 < … < bn taken from the source: chunk 0 is `key < b1`, chunk i
  is `bi <= key < b(i+1)`, chunk n is `key >= bn` (the two outer chunks are open-ended). Rows inserted, deleted or
  whose key changed after the boundaries were chosen still fall into one chunk on each side, so comparing the same
  chunk numbers on both sides compares the whole table. A table empty when planned has no boundary: one chunk.
- **Same order on both servers.** Collatable key columns (text, varchar) are compared under `COLLATE "C"` (byte
  order) in the bucketing and in the range filters, so servers with different default collations agree.
- **A chunk's hash is `(rows, first 128 bits of SHA-256 of its COPY text)`** (`ChunkHasher`): the bytes
  `COPY (SELECT <columns> FROM table WHERE <chunk's key range> ORDER BY <primary key>) TO STDOUT` prints under
  `FIXED_TEXT_OUTPUT` (the session settings pg_dump's COPY uses), the columns those of the spec (the source's
  non-generated columns, named, so the target's column order does not matter). Equal rows give equal bytes on any
  server, in whatever physical order they are stored; a changed, added or removed row changes the hash except with
  a probability of about 2⁻¹²⁸. It is the one definition everywhere: the streaming copy hashes the source's chunks
  from the very bytes it pipes to the target (`adapters.postgres.stream`), `hash_table` reads a chunk with COPY
  and hashes it in this process (the server only prints rows; no per-row hashing in SQL), the in-freeze re-hash
  and the verification of copied chunks call `hash_table`. A table without a primary key (one chunk, no order) is
  hashed as the sum of its lines' SHA-256 instead, which does not depend on the order.
- **One snapshot per side.** `hash_tables` reads a database in one REPEATABLE READ READ ONLY transaction; its
  parallel connections share that transaction's exported snapshot (`pg_export_snapshot`), so the hashes of all
  tables describe one instant.
- Tables without a primary key are one chunk (number 0) each: when their hash differs they are copied whole.
- **Re-hashing only what can have changed** (`rehash_changed`): `hash_tables_at` also returns the snapshot's xmin
  horizon h (every transaction id below h had ended when the snapshot was taken). Later, in one snapshot, a cheap
  scan (no row text, no hashing) counts each chunk's rows and looks for a row version whose `xmin` is h or newer;
  only those chunks, and chunks whose row count changed, are hashed again — the others keep the hashes taken at h.
  This never misses a change: a row version visible now but not then was written by a transaction not ended at the
  first snapshot, so its xid is ≥ h; inserts and updates therefore show such a row in their chunk, and a chunk that
  only lost rows has fewer of them. "≥ h" is decided by `age()` (modulo-2³² distance to the current xid, the way
  PostgreSQL itself orders xids), exact while fewer than 2³¹ xids pass between the two snapshots (PostgreSQL stops
  long before that); the `xmin` column shows the raw xid even for frozen rows (checked by the tests), and an old
  frozen row whose raw xid looks new after a wraparound only costs a useless re-hash.
- **A large table's scan is split, not shortened.** Above `SCAN_SPLIT_BYTES` the scan runs as heap block ranges
  (TID range scans, PostgreSQL ≥ 14), one per connection of the snapshot; the last range is open-ended, so pages
  added after the size was read are scanned too. The per-chunk counts of the ranges are summed and their "written
  since" flags ORed: the same result as one scan of every row visible to the snapshot.
- **No scan at all when nothing was written** (`snapshot_identity`): a baseline also records its snapshot
  (`xmin:xmax:in-progress xids`) and the server's start time. A later snapshot with the same identity sees exactly
  the same committed transactions — a row can only change through a transaction that takes an xid, and such a
  transaction, once ended, either moves xmax or leaves the in-progress list; a restart (which empties unlogged
  tables without a transaction) changes the start time. So equal identities mean equal contents, and the
  baseline's hashes are taken as they are. Any xid taken on that server since (another database, autovacuum's
  ANALYZE) only makes the scan run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from timetodo.ops.adapters.postgres.catalog import columns, fix_text_output, list_tables, primary_keys
from timetodo.ops.adapters.postgres.target import PgTarget, connect, quote_ident

ROWS_PER_CHUNK = 2000
"""Rows per chunk when planned: small enough that a changed chunk is compared and copied in milliseconds, large
enough that a table of millions of rows has a few thousand chunks (hashed whole: one COPY per chunk)."""

MAX_RANGE_FILTERS = 64
"""Above this many chunks of one table, `chunk_filter` tests the bucket of every row rather than ORing key ranges."""

ChunkHash = tuple[int, int]
"""(rows, hash) of one chunk; (0, 0) for a chunk without rows."""

EMPTY: ChunkHash = (0, 0)
_MASK = (1 << 128) - 1


@dataclass(frozen=True)
class ChunkSpec:
    """How one table is chunked: on `column` (the first primary-key column; None: no primary key, one chunk) by
    `bounds` (the boundary values as text, strictly increasing in the column's order)."""

    table: str
    column: str | None
    type: str = "text"
    collatable: bool = False
    bounds: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    """The columns copied and hashed, in this order (the source's non-generated columns); empty: looked up."""
    order: tuple[tuple[str, bool], ...] = ()
    """The primary key's columns (name, collatable), the order rows are hashed in."""

    @property
    def qname(self) -> str:
        return f"public.{quote_ident(self.table)}"

    @property
    def chunks(self) -> int:
        return len(self.bounds) + 1

    def key(self, alias: str = "t") -> str:
        assert self.column is not None
        column = f"{alias}.{quote_ident(self.column)}"
        return f'{column} COLLATE "C"' if self.collatable else column

    def value(self, param: int) -> str:
        """Parameter `$param` (text) as a value of the key column, in the key's order."""
        cast = f"${param}::text::{self.type}"
        return f'{cast} COLLATE "C"' if self.collatable else cast

    def bucket(self, alias: str = "t", param: int = 1) -> str:
        """The chunk number of a row, with the bounds as parameter `$param` (text[])."""
        if self.column is None:
            return "0"
        bounds = f"${param}::text[]::{self.type}[]"
        return f"width_bucket({self.key(alias)}, {bounds})"

    def literal(self, value: str) -> str:
        """A boundary inlined as a literal of the key column (COPY takes no parameters; the connections run with
        `standard_conforming_strings` on, so doubling quotes is the whole quoting)."""
        cast = "'" + value.replace("'", "''") + f"'::text::{self.type}"
        return f'{cast} COLLATE "C"' if self.collatable else cast

    def range_sql(self, first: int, end: int, alias: str = "t") -> str:
        """A WHERE condition, literals inlined, selecting the rows of chunks first … end-1 (one key range)."""
        if self.column is None:
            return "true"
        conds = []
        if first > 0:
            conds.append(f"{self.key(alias)} >= {self.literal(self.bounds[first - 1])}")
        if end <= len(self.bounds):
            conds.append(f"{self.key(alias)} < {self.literal(self.bounds[end - 1])}")
        return " AND ".join(conds) or "true"

    def copy_sql(self, first: int, end: int | None = None, alias: str = "t") -> str:
        """The SELECT whose COPY text output defines the hash of chunks first … end-1 (see `ChunkHasher`): the
        spec's columns, rows in primary-key order."""
        assert self.columns, "the spec's columns are not known"
        cols = ", ".join(f"{alias}.{quote_ident(c)}" for c in self.columns)
        where = self.range_sql(first, first + 1 if end is None else end, alias)
        order = ", ".join(f"{alias}.{quote_ident(n)}" + (' COLLATE "C"' if c else "") for n, c in self.order)
        return f"SELECT {cols} FROM {self.qname} AS {alias} WHERE {where}" + (  # noqa: S608
            f" ORDER BY {order}" if order and self.column is not None else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "column": self.column,
            "type": self.type,
            "collatable": self.collatable,
            "bounds": list(self.bounds),
            "columns": list(self.columns),
            "order": [[n, c] for n, c in self.order],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkSpec:
        return cls(
            table=str(data["table"]),
            column=None if data.get("column") is None else str(data["column"]),
            type=str(data.get("type", "text")),
            collatable=bool(data.get("collatable", False)),
            bounds=tuple(str(b) for b in data.get("bounds", [])),
            columns=tuple(str(c) for c in data.get("columns", [])),
            order=tuple((str(n), bool(c)) for n, c in data.get("order", [])),
        )


TableHashes = dict[int, ChunkHash]


def differing(left: TableHashes, right: TableHashes) -> list[int]:
    """Chunk numbers whose hashes differ (a chunk absent on one side counts as empty there), in order."""
    return sorted(n for n in set(left) | set(right) if left.get(n, EMPTY) != right.get(n, EMPTY))


async def table_shape(conn: asyncpg.Connection, table: str) -> ChunkSpec:
    """`table`'s spec without boundaries (one chunk): its key column, columns and key order."""
    key = (await primary_keys(conn, table)).get(table)
    found = (await columns(conn, table))[table]
    cols = tuple(c.name for c in found if not c.generated)
    if not key:
        return ChunkSpec(table, None, columns=cols)
    info = next(c for c in found if c.name == key[0])
    order = tuple((name, next(c.collatable for c in found if c.name == name)) for name in key)
    return ChunkSpec(table, info.name, info.type, info.collatable, columns=cols, order=order)


async def plan_table(conn: asyncpg.Connection, table: str, rows_per_chunk: int = ROWS_PER_CHUNK) -> ChunkSpec:
    """The chunk spec of `table`: every `rows_per_chunk`-th value of its first primary-key column as a boundary
    (an index-only scan of the key). A table without a primary key gets one chunk."""
    if rows_per_chunk < 1:
        raise ValueError("rows_per_chunk must be at least 1")
    spec = await table_shape(conn, table)
    if spec.column is None:
        return spec
    sql = (
        f"SELECT s.b::text FROM (SELECT {spec.key()} AS b, row_number() OVER (ORDER BY {spec.key()}) AS n "  # noqa: S608
        f"FROM {spec.qname} AS t) AS s WHERE s.n % $1 = 1 AND s.n > 1 ORDER BY s.n"
    )
    bounds: list[str] = []
    for row in await conn.fetch(sql, rows_per_chunk):
        if not bounds or bounds[-1] != row[0]:  # a composite key repeats its first column's values
            bounds.append(str(row[0]))
    return dataclasses.replace(spec, bounds=tuple(bounds))


INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})


async def plan_table_quickly(conn: asyncpg.Connection, table: str, rows_per_chunk: int = ROWS_PER_CHUNK) -> ChunkSpec:
    """`plan_table` without reading the key: for an integer key, boundaries evenly spaced between its smallest and
    largest value (two index lookups), as many as the planner's row estimate asks — chunks of about
    `rows_per_chunk` rows when the keys are dense, uneven otherwise (any boundaries are correct: they only decide
    how fine the comparison is). Other keys, or a table never analyzed: `plan_table`."""
    spec = await table_shape(conn, table)
    if spec.column is None or spec.type not in INTEGER_TYPES:
        return await plan_table(conn, table, rows_per_chunk)
    column = quote_ident(spec.column)
    row = await conn.fetchrow(
        f"SELECT min({column}) AS low, max({column}) AS high, "  # noqa: S608
        f"(SELECT reltuples FROM pg_class WHERE oid = $1::regclass) AS rows FROM {spec.qname}",
        spec.qname,
    )
    assert row is not None
    if row["low"] is None:
        return spec
    if row["rows"] is None or row["rows"] < 0:
        return await plan_table(conn, table, rows_per_chunk)
    low, high = int(row["low"]), int(row["high"])
    parts = max(1, min(-(-int(row["rows"]) // rows_per_chunk), high - low + 1))
    step = -(-(high - low + 1) // parts)
    bounds = tuple(str(low + step * n) for n in range(1, parts) if low + step * n <= high)
    return dataclasses.replace(spec, bounds=bounds)


async def plan_tables(
    conn: asyncpg.Connection, exclude: Iterable[str] = (), rows_per_chunk: int = ROWS_PER_CHUNK
) -> dict[str, ChunkSpec]:
    """The chunk spec of every table of the public schema but `exclude`."""
    skip = set(exclude)
    return {name: await plan_table(conn, name, rows_per_chunk) for name in await list_tables(conn) if name not in skip}


class ChunkHasher:
    """The hash of one chunk, from the COPY text output of its rows (`ChunkSpec.copy_sql`, under
    `FIXED_TEXT_OUTPUT`): `(rows, first 128 bits of SHA-256 of the bytes)` — the rows in primary-key order, so the
    bytes are the same on any server holding the same rows. A table without a primary key (one chunk, no order) is
    hashed as the sum modulo 2¹²⁸ of each row's line's SHA-256 instead, which does not depend on the order.

    This is the one definition of a chunk's hash: the streaming copy computes it on the source from the very bytes
    it pipes to the target, `hash_table` on either side from a COPY of the chunk. Fed as the data arrives."""

    def __init__(self, ordered: bool = True) -> None:
        self.rows = 0
        self._ordered = ordered
        self._sha = hashlib.sha256()
        self._sum = 0
        self._rest = b""

    def update(self, data: bytes) -> None:
        self.rows += data.count(b"\n")
        if self._ordered:
            self._sha.update(data)
            return
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            self._sum += int.from_bytes(hashlib.sha256(line).digest()[:16], "big")

    def digest(self) -> ChunkHash:
        if not self.rows:
            return EMPTY
        if self._ordered:
            return self.rows, int.from_bytes(self._sha.digest()[:16], "big")
        return self.rows, self._sum & _MASK


async def hash_chunk(conn: asyncpg.Connection, spec: ChunkSpec, chunk: int) -> ChunkHash:
    """The hash of one chunk, read with COPY (the connection's text output must be fixed first)."""
    hasher = ChunkHasher(spec.column is not None)

    async def feed(data: bytes) -> None:
        hasher.update(data)

    await conn.copy_from_query(spec.copy_sql(chunk), output=feed, format="text")
    return hasher.digest()


async def with_columns(conn: asyncpg.Connection, spec: ChunkSpec) -> ChunkSpec:
    """`spec`, with its columns looked up when it has none (a chunk map saved by an older version)."""
    if spec.columns:
        return spec
    shape = await table_shape(conn, spec.table)
    return dataclasses.replace(spec, columns=shape.columns, order=shape.order)


async def hash_table(conn: asyncpg.Connection, spec: ChunkSpec, only: Sequence[int] | None = None) -> TableHashes:
    """Hashes of every non-empty chunk of one table, or of the chunks `only` (the connection's text output must be
    fixed first): one COPY per chunk, hashed as it arrives."""
    spec = await with_columns(conn, spec)
    wanted = range(spec.chunks) if only is None else sorted({n for n in only if 0 <= n < spec.chunks})
    found: TableHashes = {}
    for chunk in wanted:
        got = await hash_chunk(conn, spec, chunk)
        if got[0]:
            found[chunk] = got
    return found


@contextlib.asynccontextmanager
async def snapshot_connections(target: PgTarget, count: int) -> AsyncIterator[list[asyncpg.Connection]]:
    """`count` connections reading one snapshot (REPEATABLE READ READ ONLY, exported by the first), with the text
    output fixed; rolled back and closed on exit."""
    conns: list[asyncpg.Connection] = []
    try:
        first = await connect(target)
        conns.append(first)
        await fix_text_output(first)
        await first.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = str(await first.fetchval("SELECT pg_export_snapshot()")) if count > 1 else ""
        for _ in range(count - 1):
            conn = await connect(target)
            conns.append(conn)
            await fix_text_output(conn)
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        yield conns
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()


@dataclass
class Hashed:
    """The chunk hashes of some tables of one database, as one snapshot saw them."""

    hashes: dict[str, TableHashes]
    horizon: int
    """The snapshot's xmin (64-bit): every transaction below it had ended."""
    snapshot: str
    """The snapshot's identity (`snapshot_identity`): the same string later means nothing was written since."""
    oids: dict[str, int]
    rehashed: int = 0
    """Chunks hashed (by `rehash_changed`: hashed again)."""
    scanned: bool = True
    """`rehash_changed`: whether it scanned for changes (False: the snapshot was the baseline's, nothing to scan)."""


HASH_BATCH = 16
"""Chunks per work item when several connections hash one table."""

SCAN_SPLIT_BYTES = 32 * 1024 * 1024
"""Tables larger than this are scanned for changes as block ranges, one per connection of the snapshot."""


async def hash_tables(target: PgTarget, specs: Iterable[ChunkSpec], jobs: int = 2) -> dict[str, TableHashes]:
    """The chunk hashes of every table of `specs`, read in one snapshot by `jobs` connections."""
    return (await hash_tables_at(target, specs, jobs)).hashes


async def hash_tables_at(target: PgTarget, specs: Iterable[ChunkSpec], jobs: int = 2) -> Hashed:
    """`hash_tables`, with the snapshot's horizon, identity and table oids, for a later `rehash_changed`."""
    todo = list(specs)
    async with snapshot_connections(target, max(1, jobs)) as conns:
        horizon, identity = await snapshot_horizon(conns[0]), await snapshot_identity(conns[0])
        oids = await table_oids(conns[0])
        found = await _hash_many(conns, {spec.table: (spec, list(range(spec.chunks))) for spec in todo})
    return Hashed(found, horizon, identity, oids, rehashed=sum(spec.chunks for spec in todo))


async def _hash_many(
    conns: list[asyncpg.Connection], wanted: dict[str, tuple[ChunkSpec, list[int]]]
) -> dict[str, TableHashes]:
    """The chunks `wanted` of each table hashed by `conns` (one snapshot), in batches of `HASH_BATCH` chunks taken
    in turn by the connections, so a big table is hashed by all of them."""
    found: dict[str, TableHashes] = {table: {} for table in wanted}
    items: list[tuple[ChunkSpec, list[int]]] = []
    for spec, only in sorted(wanted.values(), key=lambda w: len(w[1]), reverse=True):
        items += [(spec, only[i : i + HASH_BATCH]) for i in range(0, len(only), HASH_BATCH)]

    async def worker(conn: asyncpg.Connection) -> None:
        while items:
            spec, batch = items.pop(0)
            found[spec.table].update(await hash_table(conn, spec, batch))

    await asyncio.gather(*(worker(conn) for conn in conns))
    return found


async def snapshot_horizon(conn: asyncpg.Connection) -> int:
    """The xmin of the connection's snapshot, as a 64-bit transaction id (epoch included)."""
    return int(await conn.fetchval("SELECT txid_snapshot_xmin(txid_current_snapshot())"))


async def snapshot_identity(conn: asyncpg.Connection) -> str:
    """The connection's snapshot (`xmin:xmax:in-progress xids`) and the server's start time. Two snapshots with the
    same identity see the same committed transactions, so every table holds the same rows in both: a row can
    only change by a transaction that gets an xid, and such a transaction, once ended, moves xmax or leaves the
    in-progress list. The start time covers what a restart changes without a transaction (unlogged tables)."""
    row = await conn.fetchrow("SELECT txid_current_snapshot()::text AS s, pg_postmaster_start_time()::text AS t")
    assert row is not None
    return f"{row['s']}@{row['t']}"


async def table_oids(conn: asyncpg.Connection) -> dict[str, int]:
    """The oid of every table of the public schema: a table dropped and created again (or a database restored
    again) gets new ones, and its rows' xids say nothing about the old table's."""
    rows = await conn.fetch(
        "SELECT c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "AND n.nspname = 'public' WHERE c.relkind IN ('r', 'p')"
    )
    return {str(r["relname"]): int(r["oid"]) for r in rows}


XID_SAFE_DISTANCE = 1 << 30
"""A baseline whose horizon is further from the current xid than this (or ahead of it: another database) is not
used: `age()` compares xids modulo 2³², exact below 2³¹."""

Counts = dict[int, tuple[int, bool]]
"""Per chunk: (rows now, whether a row version is newer than the horizon)."""


async def _count_chunks(
    conn: asyncpg.Connection, spec: ChunkSpec, horizon: int, blocks: tuple[int, int | None] = (0, None)
) -> Counts:
    """One scan without row text of the table (or of its heap blocks `blocks`: first, end or None for the rest):
    rows per chunk and whether one of them was written by a transaction ≥ the horizon (`age(xmin) <= age(h)`, both
    in one statement: `age()` counts from a latest xid fixed per transaction, so the two must share it)."""
    args: list[Any] = [list(spec.bounds)] if spec.column is not None else []
    args.append(str(horizon % (1 << 32)))
    where = []
    if blocks[0] > 0:
        where.append(f"t.ctid >= '({blocks[0]},0)'::tid")
    if blocks[1] is not None:
        where.append(f"t.ctid < '({blocks[1]},0)'::tid")
    sql = (
        f"SELECT {spec.bucket()} AS chunk, count(*) AS n, bool_or(age(t.xmin) <= age(${len(args)}::text::xid)) AS fresh "  # noqa: S608
        f"FROM {spec.qname} AS t WHERE {' AND '.join(where) or 'true'} GROUP BY 1"
    )
    return {int(r["chunk"]): (int(r["n"]), bool(r["fresh"])) for r in await conn.fetch(sql, *args)}


def _changed(now: Counts, known: TableHashes) -> list[int]:
    out = {n for n, (rows, fresh) in now.items() if fresh or rows != known.get(n, EMPTY)[0]}
    out.update(n for n, (rows, _) in known.items() if rows and n not in now)  # every row of the chunk gone
    return sorted(out)


async def changed_chunks(conn: asyncpg.Connection, spec: ChunkSpec, known: TableHashes, horizon: int) -> list[int]:
    """The chunks of one table that can differ from `known` (hashes taken in a snapshot of xmin `horizon`): a row
    version written by a transaction ≥ the horizon, or another row count (see the module). One scan without row
    text; the connection's snapshot decides what "now" is."""
    return _changed(await _count_chunks(conn, spec, horizon), known)


async def _block_ranges(conn: asyncpg.Connection, spec: ChunkSpec, parts: int) -> list[tuple[int, int | None]]:
    """The table's heap split into `parts` block ranges (the last open-ended: pages added since are scanned too)
    when it is larger than `SCAN_SPLIT_BYTES` and the server has TID range scans (PostgreSQL 14); else one."""
    if parts < 2:
        return [(0, None)]
    row = await conn.fetchrow(
        "SELECT pg_relation_size($1::regclass) AS bytes, current_setting('block_size')::int AS block, "
        "current_setting('server_version_num')::int AS version",
        spec.qname,
    )
    assert row is not None
    if row["bytes"] <= SCAN_SPLIT_BYTES or row["version"] < 140000:
        return [(0, None)]
    step = -(-(int(row["bytes"]) // int(row["block"])) // parts)
    return [(n * step, (n + 1) * step if n < parts - 1 else None) for n in range(parts)]


async def rehash_changed(
    target: PgTarget,
    specs: Iterable[ChunkSpec],
    known: dict[str, TableHashes],
    horizon: int,
    jobs: int = 2,
    oids: dict[str, int] | None = None,
    snapshot: str = "",
) -> Hashed:
    """The chunk hashes of every table of `specs` now (one snapshot, `jobs` connections), computed from `known`
    (taken in a snapshot of xmin `horizon` and identity `snapshot`, on the same database, whose tables had `oids`)
    by hashing again only the chunks that can have changed since (`changed_chunks`; a large table's scan is split
    into block ranges over the connections). When this snapshot has the baseline's identity nothing was written
    since (`snapshot_identity`): nothing is scanned. A table `known` lacks, or whose oid changed, is hashed whole;
    so is everything when the horizon is not a recent past xid of this database."""
    todo = list(specs)
    async with snapshot_connections(target, max(1, jobs)) as conns:
        first = conns[0]
        now = int(await first.fetchval("SELECT txid_snapshot_xmax(txid_current_snapshot())"))
        usable = horizon <= now and now - horizon < XID_SAFE_DISTANCE
        current = await table_oids(first)
        identity, new_horizon = await snapshot_identity(first), await snapshot_horizon(first)

        def kept(spec: ChunkSpec) -> bool:
            return usable and spec.table in known and (oids is None or oids.get(spec.table) == current.get(spec.table))

        if snapshot and identity == snapshot and all(kept(spec) for spec in todo):
            return Hashed({s.table: dict(known[s.table]) for s in todo}, new_horizon, identity, current, 0, False)
        scans: list[tuple[ChunkSpec, tuple[int, int | None]]] = []
        for spec in todo:
            if kept(spec):
                scans += [(spec, blocks) for blocks in await _block_ranges(first, spec, len(conns))]
        scans.sort(key=lambda s: -1 if s[1][1] is None and s[1][0] == 0 else s[1][1] or 0, reverse=True)
        counts: dict[str, Counts] = {spec.table: {} for spec, _ in scans}

        async def scan(conn: asyncpg.Connection) -> None:
            while scans:
                spec, blocks = scans.pop(0)
                for n, (rows, fresh) in (await _count_chunks(conn, spec, horizon, blocks)).items():
                    had, was = counts[spec.table].get(n, (0, False))
                    counts[spec.table][n] = (had + rows, was or fresh)

        await asyncio.gather(*(scan(conn) for conn in conns))
        wanted = {
            spec.table: (
                spec,
                _changed(counts[spec.table], known[spec.table]) if kept(spec) else list(range(spec.chunks)),
            )
            for spec in todo
        }
        fresh = await _hash_many(conns, {t: w for t, w in wanted.items() if w[1]})
    out: dict[str, TableHashes] = {}
    for spec in todo:
        merged = {n: h for n, h in known.get(spec.table, {}).items() if kept(spec) and n not in wanted[spec.table][1]}
        merged.update(fresh.get(spec.table, {}))
        out[spec.table] = merged
    return Hashed(out, new_horizon, identity, current, sum(len(w[1]) for w in wanted.values()), True)


def chunk_filter(
    spec: ChunkSpec, chunks: Sequence[int], alias: str = "t", first_param: int = 1
) -> tuple[str, list[Any]]:
    """A WHERE condition selecting the rows of `chunks`, and its parameters (numbered from `first_param`): key
    ranges ORed (index range scans) for a few chunks, the bucket of every row otherwise."""
    if spec.column is None or not chunks:
        return ("true" if spec.column is None and chunks else "false"), []
    if len(chunks) > MAX_RANGE_FILTERS:
        return f"{spec.bucket(alias, first_param)} = ANY(${first_param + 1}::int[])", [list(spec.bounds), list(chunks)]
    parts: list[str] = []
    args: list[Any] = []
    key = spec.key(alias)
    for chunk in chunks:
        conds = []
        if chunk > 0:
            args.append(spec.bounds[chunk - 1])
            conds.append(f"{key} >= {spec.value(first_param + len(args) - 1)}")
        if chunk < len(spec.bounds):
            args.append(spec.bounds[chunk])
            conds.append(f"{key} < {spec.value(first_param + len(args) - 1)}")
        parts.append("(" + (" AND ".join(conds) or "true") + ")")
    return "(" + " OR ".join(parts) + ")", args


async def copy_table(source: asyncpg.Connection, target: asyncpg.Connection, table: str) -> int:
    """Replace every row of `table` on the target by the source's (DELETE, then COPY through a spooled temporary
    file, text format); the caller holds the target's transaction. The rows copied."""
    qname = f"public.{quote_ident(table)}"
    cols = [c.name for c in (await columns(source, table))[table] if not c.generated]
    with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:

        async def write(data: bytes) -> None:
            spool.write(data)

        await source.copy_from_query(
            f"SELECT {', '.join(quote_ident(c) for c in cols)} FROM {qname}",  # noqa: S608
            output=write,
            format="text",
        )
        spool.seek(0)
        await target.execute(f"DELETE FROM {qname}")  # noqa: S608
        status = await target.copy_to_table(table, source=spool, columns=cols, schema_name="public", format="text")
    return int(str(status).rsplit(" ", 1)[-1])


_SEQUENCES_SQL = """
SELECT format('%I.%I', n.nspname, c.relname) AS qualified FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND (n.nspname = 'public' OR EXISTS (
    SELECT 1 FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid
    JOIN pg_namespace tn ON tn.oid = t.relnamespace AND tn.nspname = 'public'
    WHERE d.objid = c.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
ORDER BY 1
"""


async def copy_sequences(source: asyncpg.Connection, target: asyncpg.Connection) -> dict[str, int]:
    """Every sequence of the public schema (and every sequence owned by a public table's column) set on the target
    to the source's exact state (`setval(…, last_value, is_called)`); the ones that changed, with their value."""
    theirs = {str(r["qualified"]) for r in await target.fetch(_SEQUENCES_SQL)}
    moved: dict[str, int] = {}
    for row in await source.fetch(_SEQUENCES_SQL):
        name = str(row["qualified"])
        if name not in theirs:
            continue
        value = await source.fetchrow(f"SELECT last_value, is_called FROM {name}")  # noqa: S608
        current = await target.fetchrow(f"SELECT last_value, is_called FROM {name}")  # noqa: S608
        if value is None or current is None or tuple(value) == tuple(current):
            continue
        await target.execute("SELECT setval($1::text::regclass, $2, $3)", name, value[0], value[1])
        moved[name] = int(value[0])
    return moved


def elapsed(started: float) -> float:
    return round(time.monotonic() - started, 3)


__all__ = [
    "EMPTY",
    "ROWS_PER_CHUNK",
    "ChunkHash",
    "ChunkHasher",
    "ChunkSpec",
    "Hashed",
    "TableHashes",
    "changed_chunks",
    "chunk_filter",
    "copy_sequences",
    "copy_table",
    "differing",
    "hash_chunk",
    "hash_table",
    "hash_tables",
    "hash_tables_at",
    "plan_table",
    "plan_table_quickly",
    "plan_tables",
    "rehash_changed",
    "snapshot_connections",
    "snapshot_horizon",
    "snapshot_identity",
    "table_oids",
    "table_shape",
]
