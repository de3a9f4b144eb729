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
"""

from __future__ import annotations

import asyncio
import contextlib
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
    todo = list(specs)
    async with snapshot_connections(target, max(1, min(jobs, len(todo) or 1))) as conns:
        sizes = {
            str(r["relname"]): int(r["bytes"])
            for r in await conns[0].fetch(
                "SELECT c.relname, pg_table_size(c.oid) AS bytes FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public' WHERE c.relkind IN ('r', 'p')"
            )
        }
        queue = sorted(todo, key=lambda s: sizes.get(s.table, 0), reverse=True)
        found: dict[str, TableHashes] = {}

        async def worker(conn: asyncpg.Connection) -> None:
            while queue:
                spec = queue.pop(0)
                found[spec.table] = await hash_table(conn, spec)

        await asyncio.gather(*(worker(conn) for conn in conns))
    return {spec.table: found[spec.table] for spec in todo}


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
    "chunk_filter",
    "copy_sequences",
    "copy_table",
    "differing",
    "hash_table",
    "hash_tables",
    "plan_table",
    "plan_tables",
    "snapshot_connections",
]
