"""The catalog queries of the toolkit, written once: tables, exact row counts, primary keys, columns, foreign keys,
owned sequences, and the exported snapshot that pg_dump and the counts share.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from timetodo.ops.adapters.postgres.target import PgTarget, connect, quote_ident

_TABLES_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
"""


async def list_tables(conn: asyncpg.Connection) -> list[str]:
    """Tables of the public schema (partitioned tables once, not their partitions)."""
    return [str(row[0]) for row in await conn.fetch(_TABLES_SQL)]


async def count_rows(conn: asyncpg.Connection, tables: Iterable[str] | None = None) -> dict[str, int]:
    """Exact COUNT(*) of every table of the public schema (or of `tables`)."""
    names = await list_tables(conn) if tables is None else list(tables)
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = int(await conn.fetchval(f"SELECT count(*) FROM public.{quote_ident(name)}"))  # noqa: S608
    return counts


async def tables_with_rows(conn: asyncpg.Connection, ignore: Iterable[str] = ()) -> list[str]:
    """Tables (other than `ignore`) holding at least one row."""
    skip = set(ignore)
    found = []
    for name in await list_tables(conn):
        query = f"SELECT EXISTS (SELECT 1 FROM public.{quote_ident(name)})"  # noqa: S608
        if name not in skip and await conn.fetchval(query):
            found.append(name)
    return found


async def fetch_optional(conn: asyncpg.Connection, sql: str, table: str) -> Any:
    """Run `sql` when `table` exists in the public schema; None otherwise."""
    if await conn.fetchval("SELECT to_regclass($1)", f"public.{quote_ident(table)}") is None:
        return None
    return await conn.fetchval(sql)


async def drop_tables(conn: asyncpg.Connection, tables: Iterable[str]) -> None:
    for name in tables:
        await conn.execute(f"DROP TABLE IF EXISTS public.{quote_ident(name)} CASCADE")


@contextlib.asynccontextmanager
async def exported_snapshot(target: PgTarget) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A repeatable-read transaction whose snapshot pg_dump can share (`--snapshot`): counts taken on the yielded
    connection describe exactly the data pg_dump writes, even while the application keeps writing."""
    conn = await connect(target)
    try:
        tx = conn.transaction(isolation="repeatable_read", readonly=True)
        await tx.start()
        try:
            snapshot = str(await conn.fetchval("SELECT pg_export_snapshot()"))
            yield conn, snapshot
        finally:
            await tx.rollback()
    finally:
        await conn.close()


_PRIMARY_KEYS_SQL = """
SELECT c.relname, array_agg(a.attname::text ORDER BY k.ord) AS columns
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE con.contype = 'p' AND ($1::text IS NULL OR c.relname = $1)
GROUP BY c.relname
"""


async def primary_keys(conn: asyncpg.Connection, table: str | None = None) -> dict[str, list[str]]:
    """Primary-key columns, in key order, of every table of the public schema that has one (or of `table`)."""
    return {str(row["relname"]): [str(c) for c in row["columns"]] for row in await conn.fetch(_PRIMARY_KEYS_SQL, table)}


async def tables_without_primary_key(conn: asyncpg.Connection) -> list[str]:
    keyed = await primary_keys(conn)
    return [name for name in await list_tables(conn) if name not in keyed]


@dataclass(frozen=True)
class ColumnInfo:
    """A column of a public table, in column order."""

    table: str
    name: str
    type: str
    """`format_type` of the column, e.g. `character varying(200)`."""
    typid: int
    generated: bool
    collatable: bool


_COLUMNS_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int8 AS typid,
       a.attgenerated <> '' AS generated, a.attcollation <> 0 AS collatable
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND ($1::text IS NULL OR c.relname = $1)
ORDER BY c.relname, a.attnum
"""


async def columns(conn: asyncpg.Connection, table: str | None = None) -> dict[str, list[ColumnInfo]]:
    """The columns of every table of the public schema (or of `table`), in column order."""
    found: dict[str, list[ColumnInfo]] = {}
    for row in await conn.fetch(_COLUMNS_SQL, table):
        name = str(row["relname"])
        found.setdefault(name, []).append(
            ColumnInfo(
                name,
                str(row["attname"]),
                str(row["type"]),
                int(row["typid"]),
                bool(row["generated"]),
                bool(row["collatable"]),
            )
        )
    return found


_FOREIGN_KEYS_SQL = """
SELECT child.relname AS child, parent.relname AS parent
FROM pg_constraint con
JOIN pg_class child ON child.oid = con.conrelid
JOIN pg_namespace cn ON cn.oid = child.relnamespace AND cn.nspname = 'public'
JOIN pg_class parent ON parent.oid = con.confrelid
JOIN pg_namespace pn ON pn.oid = parent.relnamespace AND pn.nspname = 'public'
WHERE con.contype = 'f'
"""


async def foreign_keys(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(child, parent) of every foreign key between public tables."""
    return [(str(r["child"]), str(r["parent"])) for r in await conn.fetch(_FOREIGN_KEYS_SQL)]


@dataclass(frozen=True)
class OwnedSequence:
    """A sequence owned by a column of a public table (serial, identity)."""

    table: str
    column: str
    schema: str
    name: str
    qualified: str
    """`schema.name`, quoted as needed (`format('%I.%I')`)."""
    increment: int


_OWNED_SEQUENCES_SQL = """
SELECT t.relname AS table_name, a.attname AS column_name, sn.nspname AS schema, s.relname AS name,
       format('%I.%I', sn.nspname, s.relname) AS qualified, q.seqincrement AS increment
FROM pg_class s
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_sequence q ON q.seqrelid = s.oid
JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace AND tn.nspname = 'public'
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE s.relkind = 'S'
ORDER BY t.relname, a.attname
"""


async def owned_sequences(conn: asyncpg.Connection) -> list[OwnedSequence]:
    return [
        OwnedSequence(
            str(r["table_name"]),
            str(r["column_name"]),
            str(r["schema"]),
            str(r["name"]),
            str(r["qualified"]),
            int(r["increment"]),
        )
        for r in await conn.fetch(_OWNED_SEQUENCES_SQL)
    ]


FIXED_TEXT_OUTPUT = """
SET TimeZone TO 'UTC';
SET DateStyle TO 'ISO, YMD';
SET IntervalStyle TO 'postgres';
SET extra_float_digits TO 3;
SET bytea_output TO 'hex';
SET standard_conforming_strings TO on;
"""
"""Session settings under which every value prints the same on both sides and reads back exactly (as pg_dump's)."""


async def fix_text_output(conn: asyncpg.Connection) -> None:
    await conn.execute(FIXED_TEXT_OUTPUT)
