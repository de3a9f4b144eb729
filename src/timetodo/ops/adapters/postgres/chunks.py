"""Chunk maps: a table's rows split into primary-key ranges, with a content hash per range, computed on the server.

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
- **A chunk's hash is `(rows, sum of the first 64 bits of md5(row text))`**, the row text printed under
  `FIXED_TEXT_OUTPUT` (the session settings pg_dump's COPY uses): equal rows give equal hashes on any server; a
  changed, added or removed row changes the hash except with a probability of about 2⁻⁶⁴. The sum does not depend
  on the order rows are read in, so one sequential scan with a hash aggregate hashes every chunk of a table.
- **One snapshot per side.** `hash_tables` reads a database in one REPEATABLE READ READ ONLY transaction; its
  parallel connections share that transaction's exported snapshot (`pg_export_snapshot`), so the hashes of all
  tables describe one instant.
- Tables without a primary key are one chunk (number 0) each: when their hash differs they are copied whole.
- **Re-hashing only what can have changed** (`rehash_changed`): `hash_tables_at` also returns the snapshot's xmin
  horizon h (every transaction id below h had ended when the snapshot was taken). Later, in one snapshot, a cheap
  scan (no row text, no md5) counts each chunk's rows and looks for a row version whose `xmin` is h or newer; only
  those chunks, and chunks whose row count changed, are hashed again — the others keep the hashes taken at h. This
  never misses a change: a row version visible now but not then was written by a transaction not ended at the first
  snapshot, so its xid is ≥ h; inserts and updates therefore show such a row in their chunk, and a chunk that only
  lost rows has fewer of them. "≥ h" is decided by `age()` (modulo-2³² distance to the current xid, the way
  PostgreSQL itself orders xids), exact while fewer than 2³¹ xids pass between the two snapshots (PostgreSQL stops
  long before that); the `xmin` column shows the raw xid even for frozen rows (checked by the tests), and an old
  frozen row whose raw xid looks new after a wraparound only costs a useless re-hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from timetodo.ops.adapters.postgres.catalog import columns, fix_text_output, list_tables, primary_keys
from timetodo.ops.adapters.postgres.target import PgTarget, connect, quote_ident

ROWS_PER_CHUNK = 2000
"""Rows per chunk when planned: small enough that a changed chunk is compared and copied in milliseconds, large
enough that a table of millions of rows has a few thousand chunks (one hash aggregate per table stays cheap)."""

MAX_RANGE_FILTERS = 64
"""Above this many chunks of one table, `chunk_filter` tests the bucket of every row rather than ORing key ranges."""

ChunkHash = tuple[int, int]
"""(rows, hash) of one chunk; (0, 0) for a chunk without rows."""

EMPTY: ChunkHash = (0, 0)
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class ChunkSpec:
    """How one table is chunked: on `column` (the first primary-key column; None: no primary key, one chunk) by
    `bounds` (the boundary values as text, strictly increasing in the column's order)."""

    table: str
    column: str | None
    type: str = "text"
    collatable: bool = False
    bounds: tuple[str, ...] = ()

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "column": self.column,
            "type": self.type,
            "collatable": self.collatable,
            "bounds": list(self.bounds),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkSpec:
        return cls(
            table=str(data["table"]),
            column=None if data.get("column") is None else str(data["column"]),
            type=str(data.get("type", "text")),
            collatable=bool(data.get("collatable", False)),
            bounds=tuple(str(b) for b in data.get("bounds", [])),
        )


TableHashes = dict[int, ChunkHash]


def differing(left: TableHashes, right: TableHashes) -> list[int]:
    """Chunk numbers whose hashes differ (a chunk absent on one side counts as empty there), in order."""
    return sorted(n for n in set(left) | set(right) if left.get(n, EMPTY) != right.get(n, EMPTY))


async def plan_table(conn: asyncpg.Connection, table: str, rows_per_chunk: int = ROWS_PER_CHUNK) -> ChunkSpec:
    """The chunk spec of `table`: every `rows_per_chunk`-th value of its first primary-key column as a boundary
    (an index-only scan of the key). A table without a primary key gets one chunk."""
    if rows_per_chunk < 1:
        raise ValueError("rows_per_chunk must be at least 1")
    key = (await primary_keys(conn, table)).get(table)
    if not key:
        return ChunkSpec(table, None)
    info = next(c for c in (await columns(conn, table))[table] if c.name == key[0])
    spec = ChunkSpec(table, info.name, info.type, info.collatable)
    sql = (
        f"SELECT s.b::text FROM (SELECT {spec.key()} AS b, row_number() OVER (ORDER BY {spec.key()}) AS n "  # noqa: S608
        f"FROM {spec.qname} AS t) AS s WHERE s.n % $1 = 1 AND s.n > 1 ORDER BY s.n"
    )
    bounds: list[str] = []
    for row in await conn.fetch(sql, rows_per_chunk):
        if not bounds or bounds[-1] != row[0]:  # a composite key repeats its first column's values
            bounds.append(str(row[0]))
    return ChunkSpec(table, spec.column, spec.type, spec.collatable, tuple(bounds))


async def plan_tables(
    conn: asyncpg.Connection, exclude: Iterable[str] = (), rows_per_chunk: int = ROWS_PER_CHUNK
) -> dict[str, ChunkSpec]:
    """The chunk spec of every table of the public schema but `exclude`."""
    skip = set(exclude)
    return {name: await plan_table(conn, name, rows_per_chunk) for name in await list_tables(conn) if name not in skip}


ROW_HASH = "('x' || left(md5(t::text), 16))::bit(64)::bigint"
"""The first 64 bits of the md5 of a row's text (alias `t`), as a bigint."""


def hash_sql(spec: ChunkSpec, where: str = "true") -> str:
    """One hash aggregate over the table: (chunk, rows, sum of 64-bit row hashes) per non-empty chunk; $1 the bounds
    (tables with a primary key)."""
    return (
        f"SELECT {spec.bucket()} AS chunk, count(*) AS n, sum({ROW_HASH}) AS h "  # noqa: S608
        f"FROM {spec.qname} AS t WHERE {where} GROUP BY 1"
    )


async def hash_table(conn: asyncpg.Connection, spec: ChunkSpec, only: Sequence[int] | None = None) -> TableHashes:
    """Hashes of every non-empty chunk of one table, or of the chunks `only` (the connection's text output must be
    fixed first)."""
    args: list[Any] = [list(spec.bounds)] if spec.column is not None else []
    where = "true"
    if only is not None and spec.column is not None:
        where, extra = chunk_filter(spec, only, first_param=2)
        args += extra
    rows = await conn.fetch(hash_sql(spec, where), *args)
    return {int(r["chunk"]): (int(r["n"]), int(r["h"]) & _MASK) for r in rows}


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


async def hash_tables(target: PgTarget, specs: Iterable[ChunkSpec], jobs: int = 2) -> dict[str, TableHashes]:
    """The chunk hashes of every table of `specs`, read in one snapshot by `jobs` connections (largest first)."""
    return (await hash_tables_at(target, specs, jobs))[0]


async def hash_tables_at(
    target: PgTarget, specs: Iterable[ChunkSpec], jobs: int = 2
) -> tuple[dict[str, TableHashes], int]:
    """`hash_tables`, and the snapshot's xmin horizon (the 32-bit xid below which every transaction had ended), for
    a later `rehash_changed`."""
    todo = list(specs)
    async with snapshot_connections(target, max(1, min(jobs, len(todo) or 1))) as conns:
        horizon = await snapshot_horizon(conns[0])
        found = await _each_table(conns, todo, lambda conn, spec: hash_table(conn, spec))
    return {spec.table: found[spec.table] for spec in todo}, horizon


async def snapshot_horizon(conn: asyncpg.Connection) -> int:
    """The xmin of the connection's snapshot, as a 64-bit transaction id (epoch included)."""
    return int(await conn.fetchval("SELECT txid_snapshot_xmin(txid_current_snapshot())"))


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


async def _each_table(
    conns: list[asyncpg.Connection],
    specs: list[ChunkSpec],
    work: Callable[[asyncpg.Connection, ChunkSpec], Awaitable[Any]],
) -> dict[str, Any]:
    """`work` for every table, the largest first, spread over `conns` (which share one snapshot)."""
    sizes = {
        str(r["relname"]): int(r["bytes"])
        for r in await conns[0].fetch(
            "SELECT c.relname, pg_table_size(c.oid) AS bytes FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public' WHERE c.relkind IN ('r', 'p')"
        )
    }
    queue = sorted(specs, key=lambda s: sizes.get(s.table, 0), reverse=True)
    found: dict[str, Any] = {}

    async def worker(conn: asyncpg.Connection) -> None:
        while queue:
            spec = queue.pop(0)
            found[spec.table] = await work(conn, spec)

    await asyncio.gather(*(worker(conn) for conn in conns))
    return found


async def changed_chunks(conn: asyncpg.Connection, spec: ChunkSpec, known: TableHashes, horizon: int) -> list[int]:
    """The chunks of one table that can differ from `known` (hashes taken in a snapshot of xmin `horizon`): a row
    version written by a transaction ≥ the horizon, or another row count (see the module). One scan without row
    text; the connection's snapshot decides what "now" is."""
    args: list[Any] = [list(spec.bounds)] if spec.column is not None else []
    cutoff = int(await conn.fetchval("SELECT age($1::text::xid)", str(horizon % (1 << 32))))
    args.append(cutoff)
    sql = (
        f"SELECT {spec.bucket()} AS chunk, count(*) AS n, bool_or(age(t.xmin) <= ${len(args)}) AS fresh "  # noqa: S608
        f"FROM {spec.qname} AS t GROUP BY 1"
    )
    now = {int(r["chunk"]): (int(r["n"]), bool(r["fresh"])) for r in await conn.fetch(sql, *args)}
    out = {n for n, (rows, fresh) in now.items() if fresh or rows != known.get(n, EMPTY)[0]}
    out.update(n for n, (rows, _) in known.items() if rows and n not in now)  # every row of the chunk gone
    return sorted(out)


async def rehash_changed(
    target: PgTarget,
    specs: Iterable[ChunkSpec],
    known: dict[str, TableHashes],
    horizon: int,
    jobs: int = 2,
    oids: dict[str, int] | None = None,
) -> tuple[dict[str, TableHashes], int]:
    """The chunk hashes of every table of `specs` now (one snapshot, `jobs` connections), computed from `known`
    (taken in a snapshot of xmin `horizon`, 64-bit, on the same database, whose tables had `oids`) by hashing again
    only the chunks that can have changed since (`changed_chunks`). A table `known` lacks, or whose oid changed, is
    hashed whole; so is everything when the horizon is not a recent past xid of this database. Also returns how
    many chunks were hashed again."""
    todo = list(specs)
    rehashed = 0
    usable = True
    current: dict[str, int] = {}

    async def work(conn: asyncpg.Connection, spec: ChunkSpec) -> TableHashes:
        nonlocal rehashed
        moved = oids is not None and oids.get(spec.table) != current.get(spec.table)
        if not usable or spec.table not in known or moved:
            rehashed += spec.chunks
            return await hash_table(conn, spec)
        before = known[spec.table]
        changed = await changed_chunks(conn, spec, before, horizon)
        if not changed:
            return dict(before)
        rehashed += len(changed)
        fresh = await hash_table(conn, spec, changed)
        merged = {n: h for n, h in before.items() if n not in changed}
        merged.update(fresh)
        return merged

    async with snapshot_connections(target, max(1, min(jobs, len(todo) or 1))) as conns:
        now = int(await conns[0].fetchval("SELECT txid_snapshot_xmax(txid_current_snapshot())"))
        usable = horizon <= now and now - horizon < XID_SAFE_DISTANCE
        current = await table_oids(conns[0])
        found = await _each_table(conns, todo, work)
    return {spec.table: found[spec.table] for spec in todo}, rehashed


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
    "ChunkSpec",
    "TableHashes",
    "changed_chunks",
    "chunk_filter",
    "copy_sequences",
    "copy_table",
    "differing",
    "hash_table",
    "hash_tables",
    "hash_tables_at",
    "plan_table",
    "plan_tables",
    "rehash_changed",
    "snapshot_connections",
    "snapshot_horizon",
    "table_oids",
]
