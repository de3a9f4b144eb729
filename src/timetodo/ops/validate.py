"""Validation of a migration: is the target an exact copy of the source, and does it serve as well?

Pure functions the migration steps call with URLs and paths; each returns a comparison with `ok`, `errors`,
`warnings` and `to_dict()`, and `ValidationReport` gathers them into `migration_validation_report.txt` / `.json`.

* `compare_databases` — every table of schema public: exact row counts, and content checksums per chunk of rows
  ordered by primary key (so a mismatch names a key range and the first/last differing key), tables without a
  primary key by an order-independent whole-table checksum (a warning); owned sequences on the target must be past
  max(column). The source is read in one REPEATABLE READ READ ONLY transaction, optionally on an exported snapshot.
* `compare_redis` — SCAN-based, in batches (memory bounded by the batch, not the key count): every source key on
  the target with the same type, value and TTL within a tolerance; keys only on the target; keys that expire during
  the run are counted, not reported as errors. Values are compared by a read-only Lua script that runs the
  type-specific reads and hashes on the server (one reply per batch), else DEBUG DIGEST-VALUE, else pipelined
  GET / HGETALL / LRANGE / SMEMBERS / ZRANGE / XRANGE hashed here — whichever both servers allow.
* `compare_files` — two `{relpath: sha256}` manifests, both ways.
* `compare_http` — the same authenticated GETs answered identically by both hosts, and p50/p95 latency of each
  measured in the same run by interleaving requests; the target must stay within 10 % of the source.
* `check_webhook` — the Telegram webhook points at the target with no delivery error since the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from timetodo.core.logging import mask_secrets
from timetodo.ops.postgres import PgError, PgTarget, connect, list_tables, mask_url, quote_ident
from timetodo.ops.telegram import TelegramClient, TelegramError

REPORT_TXT = "migration_validation_report.txt"
REPORT_JSON = "migration_validation_report.json"
MAX_NAMED = 20
"""At most this many keys / files / chunks are named one by one per kind of problem; the rest are counted."""
MAX_DETAILED_CHUNKS = 20
"""Per table, at most this many differing chunks are examined row by row to find the first/last differing key."""
LATENCY_FACTOR = 1.1
DEFAULT_SLACK_MS = 2.0


class Comparison(Protocol):
    @property
    def ok(self) -> bool: ...

    errors: list[str]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]: ...


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


def _fields(result: Any) -> dict[str, Any]:
    """`ok` and every field of a result dataclass (lists copied), for the JSON report."""
    return {"ok": result.ok} | {
        f.name: list(value) if isinstance(value := getattr(result, f.name), list) else value
        for f in dataclasses.fields(result)
    }


def _more(count: int, what: str) -> str:
    return f"... and {count} more {what}"


# ================================================================================================= PostgreSQL


Key = tuple[Any, ...]


@dataclass
class ChunkDifference:
    """One chunk of rows (ordered by primary key) whose content differs between source and target."""

    low: Key | None
    """Smallest key of the chunk seen on either side (or the chunk's lower bound when not examined)."""
    high: Key | None
    source_rows: int
    target_rows: int
    examined: bool = False
    """Rows were compared one by one: the counts and first/last key below are known."""
    changed: int = 0
    missing_on_target: int = 0
    extra_on_target: int = 0
    first_key: Key | None = None
    last_key: Key | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "low": _jsonable(self.low),
            "high": _jsonable(self.high),
            "source_rows": self.source_rows,
            "target_rows": self.target_rows,
            "examined": self.examined,
            "changed": self.changed,
            "missing_on_target": self.missing_on_target,
            "extra_on_target": self.extra_on_target,
            "first_key": _jsonable(self.first_key),
            "last_key": _jsonable(self.last_key),
        }


@dataclass
class TableComparison:
    name: str
    source_rows: int | None = None
    target_rows: int | None = None
    primary_key: list[str] | None = None
    chunks: int = 0
    differences: list[ChunkDifference] = field(default_factory=list)
    differing_chunks: int = 0
    content_equal: bool | None = None
    only_on: str | None = None
    """"source" or "target" when the table exists on one side only."""

    @property
    def ok(self) -> bool:
        return self.only_on is None and self.source_rows == self.target_rows and self.content_equal is True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "source_rows": self.source_rows,
            "target_rows": self.target_rows,
            "primary_key": self.primary_key,
            "chunks": self.chunks,
            "differing_chunks": self.differing_chunks,
            "differences": [diff.to_dict() for diff in self.differences],
            "content_equal": self.content_equal,
            "only_on": self.only_on,
        }


@dataclass
class SequenceCheck:
    """A sequence owned by a column, on the target. `last_value` must be ≥ max(column) (≤ min for a descending one),
    else the next inserts collide with copied rows (an error). When it equals max(column) without having been
    called, nextval() returns that very value: a warning, unless the source's sequence is in the same state (then it
    was not the migration that left it there)."""

    name: str
    table: str
    column: str
    last_value: int
    is_called: bool
    increment: int
    column_max: int | None
    """max(column), or min(column) for a descending sequence; None for an empty table."""
    source_last_value: int | None = None
    source_is_called: bool | None = None

    @property
    def next_value(self) -> int:
        return self.last_value + self.increment if self.is_called else self.last_value

    @property
    def ok(self) -> bool:
        if self.column_max is None:
            return True
        if self.increment < 0:
            return self.last_value <= self.column_max
        return self.last_value >= self.column_max

    @property
    def next_is_taken(self) -> bool:
        """nextval() would return a value the column already holds."""
        if self.column_max is None:
            return False
        if self.increment < 0:
            return self.next_value >= self.column_max
        return self.next_value <= self.column_max

    @property
    def same_as_source(self) -> bool:
        return (self.source_last_value, self.source_is_called) == (self.last_value, self.is_called)

    @property
    def status(self) -> str:
        if not self.ok:
            return "FAILED"
        return "warning" if self.next_is_taken and not self.same_as_source else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "table": self.table,
            "column": self.column,
            "last_value": self.last_value,
            "is_called": self.is_called,
            "next_value": self.next_value,
            "column_max": self.column_max,
            "source_last_value": self.source_last_value,
            "source_is_called": self.source_is_called,
            "ok": self.ok,
            "status": self.status,
        }


@dataclass
class DbComparison:
    source: str
    target: str
    chunk_rows: int
    snapshot: str | None = None
    tables: list[TableComparison] = field(default_factory=list)
    sequences: list[SequenceCheck] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def table(self, name: str) -> TableComparison:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "target": self.target,
            "chunk_rows": self.chunk_rows,
            "snapshot": self.snapshot,
            "tables": [table.to_dict() for table in self.tables],
            "sequences": [seq.to_dict() for seq in self.sequences],
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "elapsed": round(self.elapsed, 3),
        }


_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f]+(-[0-9A-Fa-f]+)+$")

_SESSION_SETTINGS = (
    # the text form of every row must not depend on the server's or the role's settings
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
)

_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attcollation <> 0
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_PRIMARY_KEY_SQL = """
SELECT a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = to_regclass($1) AND i.indisprimary
ORDER BY k.ord
"""

_COLLATION_SQL = "SELECT datcollate FROM pg_database WHERE datname = current_database()"

_OWNED_SEQUENCES_SQL = """
SELECT sn.nspname, s.relname, t.relname, a.attname, q.seqincrement
FROM pg_class s
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_sequence q ON q.seqrelid = s.oid
JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE s.relkind = 'S' AND tn.nspname = 'public'
ORDER BY t.relname, a.attname
"""


def _pg_target(url: str) -> PgTarget:
    """The URL as libpq/asyncpg understand it: SQLAlchemy's `?ssl=` becomes `sslmode=` (TLS is never dropped)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = {name for name, _ in query}
    if "ssl" in names and "sslmode" not in names:
        mapped = []
        for name, value in query:
            if name == "ssl":
                value = {"true": "require", "1": "require", "false": "disable", "0": "disable"}.get(value, value)
                name = "sslmode"
            mapped.append((name, value))
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(mapped), parts.fragment))
    return PgTarget.from_url(url)


@contextlib.asynccontextmanager
async def _reading(target: PgTarget, snapshot: str | None = None) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a REPEATABLE READ READ ONLY transaction (on `snapshot` when given), rolled back after."""
    conn = await connect(target)
    try:
        for statement in _SESSION_SETTINGS:
            await conn.execute(statement)
        tx = conn.transaction(isolation="repeatable_read", readonly=True)
        await tx.start()
        try:
            if snapshot is not None:
                await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            yield conn
        finally:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await tx.rollback()
    finally:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.close()


@dataclass
class _Shape:
    columns: list[tuple[str, str, bool]]
    """(name, type, collatable) in column order."""
    primary_key: list[str]


async def _shape(conn: asyncpg.Connection, table: str) -> _Shape:
    regclass = f"public.{quote_ident(table)}"
    columns = [(str(r[0]), str(r[1]), bool(r[2])) for r in await conn.fetch(_COLUMNS_SQL, regclass)]
    pk = [str(r[0]) for r in await conn.fetch(_PRIMARY_KEY_SQL, regclass)]
    return _Shape(columns, pk)


def _show_key(columns: Sequence[str], key: Key | None) -> str:
    if key is None:
        return "?"
    if len(columns) == 1:
        return str(key[0])
    return "(" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in key) + ")"


def _show_columns(columns: Sequence[str]) -> str:
    return columns[0] if len(columns) == 1 else "(" + ", ".join(columns) + ")"


def _sorted_keys(keys: Iterable[Key]) -> list[Key]:
    items = list(keys)
    try:
        return sorted(items)
    except TypeError:
        return items


class _TableSql:
    """The statements that compare one table, built once from its shape."""

    def __init__(self, table: str, columns: Sequence[str], key: Sequence[tuple[str, str]], force_c: set[str]) -> None:
        self.relation = f"public.{quote_ident(table)}"
        self.key_names = [name for name, _ in key]
        row = ", ".join(quote_ident(name) for name in columns)
        self.row_hash = f"md5(ROW({row})::text)"
        exprs = [quote_ident(name) + (' COLLATE "C"' if name in force_c else "") for name, _ in key]
        self.order = ", ".join(exprs)
        self.key_row = f"({self.order})"
        self.key_select = ", ".join(quote_ident(name) for name, _ in key)
        self.types = [type_ for _, type_ in key]

    def _params(self, start: int) -> str:
        return "(" + ", ".join(f"${start + i}::{type_}" for i, type_ in enumerate(self.types)) + ")"

    def where(self, low: Key | None, high: Key | None) -> tuple[str, list[Any]]:
        conds: list[str] = []
        args: list[Any] = []
        if low is not None:
            conds.append(f"{self.key_row} >= {self._params(len(args) + 1)}")
            args.extend(low)
        if high is not None:
            conds.append(f"{self.key_row} < {self._params(len(args) + 1)}")
            args.extend(high)
        return (" WHERE " + " AND ".join(conds)) if conds else "", args

    def bounds(self, chunk_rows: int) -> str:
        return (
            f"SELECT {self.key_select} FROM (SELECT {self.key_select}, row_number() OVER (ORDER BY {self.order}) AS rn "  # noqa: S608
            f"FROM {self.relation}) s WHERE (rn - 1) % {int(chunk_rows)} = 0 ORDER BY rn"
        )

    def chunk(self, where: str) -> str:
        return (
            f"SELECT count(*), md5(string_agg({self.row_hash}, '' ORDER BY {self.order})) "  # noqa: S608
            f"FROM {self.relation}{where}"
        )

    def rows(self, where: str) -> str:
        return f"SELECT {self.key_select}, {self.row_hash} FROM {self.relation}{where} ORDER BY {self.order}"  # noqa: S608


def _whole_table_sql(table: str, columns: Sequence[str]) -> str:
    """count and an order-independent checksum (sum of 64-bit row hashes) without sorting the table."""
    row = ", ".join(quote_ident(name) for name in columns)
    return (
        f"SELECT count(*), coalesce(sum(('x' || substr(md5(ROW({row})::text), 1, 16))::bit(64)::bigint), 0)::text "  # noqa: S608
        f"FROM public.{quote_ident(table)}"
    )


async def _examine_chunk(
    src: asyncpg.Connection, tgt: asyncpg.Connection, sql: _TableSql, low: Key | None, high: Key | None
) -> ChunkDifference:
    where, args = sql.where(low, high)
    query = sql.rows(where)
    src_rows, tgt_rows = await asyncio.gather(src.fetch(query, *args), tgt.fetch(query, *args))
    width = len(sql.key_names)
    source = {tuple(r[:width]): r[width] for r in src_rows}
    target = {tuple(r[:width]): r[width] for r in tgt_rows}
    missing = [k for k in source if k not in target]
    extra = [k for k in target if k not in source]
    changed = [k for k, h in source.items() if k in target and target[k] != h]
    differing = _sorted_keys([*missing, *extra, *changed])
    everything = _sorted_keys({*source, *target})
    return ChunkDifference(
        low=everything[0] if everything else low,
        high=everything[-1] if everything else high,
        source_rows=len(source),
        target_rows=len(target),
        examined=True,
        changed=len(changed),
        missing_on_target=len(missing),
        extra_on_target=len(extra),
        first_key=differing[0] if differing else None,
        last_key=differing[-1] if differing else None,
    )


def _chunk_message(table: str, keys: Sequence[str], diff: ChunkDifference) -> str:
    what = _show_columns(keys)
    if not diff.examined:
        low = "the start" if diff.low is None else _show_key(keys, diff.low)
        high = "the end" if diff.high is None else f"{_show_key(keys, diff.high)} (exclusive)"
        return (
            f"table {table}: rows with {what} from {low} to {high} differ "
            f"({diff.source_rows} rows on source, {diff.target_rows} on target)"
        )
    detail = (
        f"{diff.changed} changed, {diff.missing_on_target} missing on target, {diff.extra_on_target} extra on target"
    )
    if diff.first_key is not None:
        if diff.first_key == diff.last_key:
            detail += f"; differing {what} {_show_key(keys, diff.first_key)}"
        else:
            detail += (
                f"; first differing {what} {_show_key(keys, diff.first_key)}, last {_show_key(keys, diff.last_key)}"
            )
    return (
        f"table {table}: rows with {what} between {_show_key(keys, diff.low)} and {_show_key(keys, diff.high)} "
        f"differ ({detail})"
    )


async def _compare_table(
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    result: DbComparison,
    table: str,
    chunk_rows: int,
    collations_differ: bool,
) -> TableComparison:
    report = TableComparison(table)
    src_shape, tgt_shape = await _shape(src, table), await _shape(tgt, table)
    tgt_columns = {name: type_ for name, type_, _ in tgt_shape.columns}
    src_names = [name for name, _, _ in src_shape.columns]
    missing_cols = [name for name in src_names if name not in tgt_columns]
    extra_cols = [name for name in tgt_columns if name not in src_names]
    if missing_cols or extra_cols:
        result.errors.append(
            f"table {table}: columns differ (missing on target: {', '.join(missing_cols) or '-'}; "
            f"extra on target: {', '.join(extra_cols) or '-'})"
        )
    for name, type_, _ in src_shape.columns:
        if name in tgt_columns and tgt_columns[name] != type_:
            result.warnings.append(f"table {table}: column {name} is {type_} on source, {tgt_columns[name]} on target")
    common = [name for name in src_names if name in tgt_columns]
    if src_shape.primary_key and tgt_shape.primary_key and src_shape.primary_key != tgt_shape.primary_key:
        result.errors.append(
            f"table {table}: primary key ({', '.join(src_shape.primary_key)}) on source, "
            f"({', '.join(tgt_shape.primary_key)}) on target"
        )

    count_sql = f"SELECT count(*) FROM public.{quote_ident(table)}"  # noqa: S608
    src_count, tgt_count = await asyncio.gather(src.fetchval(count_sql), tgt.fetchval(count_sql))
    report.source_rows, report.target_rows = int(src_count), int(tgt_count)
    if report.source_rows != report.target_rows:
        result.errors.append(f"table {table}: {report.source_rows} rows on source, {report.target_rows} on target")
    if not common:
        report.content_equal = not missing_cols and not extra_cols
        return report

    key = [c for c in src_shape.primary_key if c in tgt_columns]
    if not src_shape.primary_key or len(key) != len(src_shape.primary_key):
        result.warnings.append(
            f"table {table}: no primary key; compared by a whole-table checksum only (a difference cannot be located)"
        )
        query = _whole_table_sql(table, common)
        src_sum, tgt_sum = await asyncio.gather(src.fetchrow(query), tgt.fetchrow(query))
        report.chunks = 1
        report.content_equal = tuple(src_sum) == tuple(tgt_sum)
        if not report.content_equal:
            report.differing_chunks = 1
            result.errors.append(f"table {table} (no primary key): content differs")
        else:
            report.content_equal = not missing_cols and not extra_cols
        return report

    report.primary_key = key
    types = {name: (type_, collatable) for name, type_, collatable in src_shape.columns}
    force_c = {name for name in key if types[name][1] and collations_differ}
    sql = _TableSql(table, common, [(name, types[name][0]) for name in key], force_c)
    bounds = [tuple(r) for r in await src.fetch(sql.bounds(chunk_rows))]
    ranges: list[tuple[Key | None, Key | None]] = []
    for i in range(max(1, len(bounds))):
        low = bounds[i] if 0 < i < len(bounds) else None
        high = bounds[i + 1] if i + 1 < len(bounds) else None
        ranges.append((low, high))
    report.chunks = len(ranges)
    for low, high in ranges:
        where, args = sql.where(low, high)
        query = sql.chunk(where)
        src_row, tgt_row = await asyncio.gather(src.fetchrow(query, *args), tgt.fetchrow(query, *args))
        if tuple(src_row) == tuple(tgt_row):
            continue
        report.differing_chunks += 1
        # row by row only while that stays cheap: a target holding far more rows in the range is not fetched
        if report.differing_chunks <= MAX_DETAILED_CHUNKS and int(tgt_row[0]) <= 2 * chunk_rows:
            diff = await _examine_chunk(src, tgt, sql, low, high)
        else:
            diff = ChunkDifference(low, high, int(src_row[0]), int(tgt_row[0]))
        report.differences.append(diff)
        if report.differing_chunks <= MAX_NAMED:
            result.errors.append(_chunk_message(table, key, diff))
    if report.differing_chunks > MAX_NAMED:
        result.errors.append(f"table {table}: " + _more(report.differing_chunks - MAX_NAMED, "differing chunks"))
    report.content_equal = report.differing_chunks == 0 and not missing_cols and not extra_cols
    return report


async def _check_sequences(src: asyncpg.Connection, tgt: asyncpg.Connection, result: DbComparison) -> None:
    for schema, name, table, column, increment in await tgt.fetch(_OWNED_SEQUENCES_SQL):
        seq = f"{quote_ident(schema)}.{quote_ident(name)}"
        state_sql = f"SELECT last_value, is_called FROM {seq}"  # noqa: S608
        last_value, is_called = await tgt.fetchrow(state_sql)
        bound = "max" if increment > 0 else "min"
        col_value = await tgt.fetchval(
            f"SELECT {bound}({quote_ident(column)}) FROM public.{quote_ident(table)}"  # noqa: S608
        )
        check = SequenceCheck(
            name=str(name),
            table=str(table),
            column=str(column),
            last_value=int(last_value),
            is_called=bool(is_called),
            increment=int(increment),
            column_max=None if col_value is None else int(col_value),
        )
        if await src.fetchval("SELECT to_regclass($1)", seq) is not None:
            source_state = await src.fetchrow(state_sql)  # sequences are not transactional: the current value
            check.source_last_value, check.source_is_called = int(source_state[0]), bool(source_state[1])
        result.sequences.append(check)
        where = f"{bound}({check.table}.{check.column}) = {check.column_max}"
        if not check.ok:
            result.errors.append(
                f"sequence {check.name} on target: last value {check.last_value} is behind {where}; "
                f"fix with SELECT setval('{check.name}', {check.column_max})"
            )
        elif check.status == "warning":
            result.warnings.append(
                f"sequence {check.name} on target: nextval() would return {check.next_value}, already taken "
                f"({where}); fix with SELECT setval('{check.name}', {check.column_max})"
            )


async def compare_databases(
    source_url: str,
    target_url: str,
    *,
    chunk_rows: int = 5000,
    source_snapshot: str | None = None,
    exclude_tables: Collection[str] = (),
) -> DbComparison:
    """Compare every table of schema public on both databases (see the module docstring).

    `source_snapshot` (from `pg_export_snapshot()` in a transaction the caller keeps open) makes the source side
    read exactly what that snapshot saw, e.g. the state a dump was taken from.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    if source_snapshot is not None and not _SNAPSHOT_ID.match(source_snapshot):
        raise ValueError(f"malformed snapshot id {source_snapshot!r}")
    source, target = _pg_target(source_url), _pg_target(target_url)
    result = DbComparison(mask_url(source.dsn), mask_url(target.dsn), chunk_rows, source_snapshot)
    started = time.monotonic()
    try:
        async with _reading(source, source_snapshot) as src, _reading(target) as tgt:
            src_tables = set(await list_tables(src)) - set(exclude_tables)
            tgt_tables = set(await list_tables(tgt)) - set(exclude_tables)
            collations_differ = await src.fetchval(_COLLATION_SQL) != await tgt.fetchval(_COLLATION_SQL)
            if collations_differ:
                result.warnings.append('the databases use different collations: text keys are ordered by "C"')
            for table in sorted(src_tables | tgt_tables):
                if table not in tgt_tables or table not in src_tables:
                    side = "source" if table in src_tables else "target"
                    result.tables.append(TableComparison(table, only_on=side))
                    result.errors.append(f"table {table}: exists only on the {side}")
                    continue
                result.tables.append(await _compare_table(src, tgt, result, table, chunk_rows, collations_differ))
            await _check_sequences(src, tgt, result)
    except PgError as exc:
        result.errors.append(f"database comparison failed: {exc}")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        reason = source.scrub(target.scrub(str(exc) or type(exc).__name__))
        result.errors.append(f"database comparison failed: {reason}")
    result.elapsed = time.monotonic() - started
    return result


# ================================================================================================= Redis


@dataclass
class _KeyState:
    type: str
    pttl: int
    digest: bytes | None


@dataclass
class RedisComparison:
    source: str
    target: str
    method: str = "reads"
    """"digest" (DEBUG DIGEST-VALUE), "script" (Lua hashing on the server) or "reads" (reads hashed here)."""
    ttl_tolerance_ms: int = 5000
    source_keys: int = 0
    """DBSIZE of the source when the comparison started."""
    target_keys: int = 0
    compared: int = 0
    """Source keys found on the target and compared (type, value, TTL)."""
    target_scanned: int = 0
    missing_on_target: int = 0
    extra_on_target: int = 0
    type_differs: int = 0
    value_differs: int = 0
    ttl_differs: int = 0
    expired_during_run: int = 0
    """Keys that expired (or were deleted) while being compared: counted, never errors."""
    sample: int | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    _named: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    def problem(self, kind: str, message: str) -> None:
        """Record an error of `kind`, naming at most MAX_NAMED of them (the rest are summarised at the end)."""
        self._named[kind] = self._named.get(kind, 0) + 1
        if self._named[kind] <= MAX_NAMED:
            self.errors.append(message)

    def finish(self) -> None:
        for kind, count in self._named.items():
            if count > MAX_NAMED:
                self.errors.append(_more(count - MAX_NAMED, f"keys: {kind}"))
        self._named.clear()

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "target": self.target,
            "method": self.method,
            "ttl_tolerance_ms": self.ttl_tolerance_ms,
            "source_keys": self.source_keys,
            "target_keys": self.target_keys,
            "compared": self.compared,
            "target_scanned": self.target_scanned,
            "missing_on_target": self.missing_on_target,
            "extra_on_target": self.extra_on_target,
            "type_differs": self.type_differs,
            "value_differs": self.value_differs,
            "ttl_differs": self.ttl_differs,
            "expired_during_run": self.expired_during_run,
            "sample": self.sample,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "elapsed": round(self.elapsed, 3),
        }


def _show_redis_key(key: bytes) -> str:
    return repr(key.decode("utf-8", "backslashreplace"))


def _show_ttl(pttl: int) -> str:
    if pttl == -1:
        return "no expiry"
    return f"{pttl / 1000:.1f} s"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list | tuple) and value and not isinstance(value[0], list | tuple):
        return list(zip(value[0::2], value[1::2], strict=True))
    return [tuple(item) for item in value or []]


def _canonical(value: Any) -> bytes:
    """An unambiguous byte form of a decoded reply (length-prefixed), for hashing."""
    if value is None:
        return b"n"
    if isinstance(value, bytes):
        return b"b%d:" % len(value) + value
    if isinstance(value, str):
        return _canonical(value.encode())
    if isinstance(value, bool | int):
        return b"i%d;" % int(value)
    if isinstance(value, float):
        return b"f" + repr(value).encode() + b";"
    if isinstance(value, list | tuple):
        return b"l%d:" % len(value) + b"".join(_canonical(item) for item in value)
    raise TypeError(f"unexpected Redis reply type {type(value).__name__}")


def _value_digest(type_: str, reply: Any) -> bytes:
    """sha256 of a value read by `_queue_read`, normalised so that unordered types compare by content."""
    if type_ == "hash":
        value: Any = sorted(_pairs(reply))
    elif type_ == "set":
        value = sorted(reply or ())
    elif type_ == "zset":
        value = [(member, float(score)) for member, score in _pairs(reply)]
    elif type_ == "stream":
        value = [(entry_id, _pairs(fields)) for entry_id, fields in reply or []]
    elif type_ in ("string", "list"):
        value = reply
    else:  # module types: the DUMP payload without its trailer (RDB version + CRC64)
        value = reply[:-10] if isinstance(reply, bytes) else reply
    return hashlib.sha256(type_.encode() + b"\0" + _canonical(value)).digest()


def _queue_read(pipe: Any, type_: str, key: bytes) -> None:
    if type_ == "string":
        pipe.get(key)
    elif type_ == "hash":
        pipe.hgetall(key)
    elif type_ == "list":
        pipe.lrange(key, 0, -1)
    elif type_ == "set":
        pipe.smembers(key)
    elif type_ == "zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif type_ == "stream":
        pipe.xrange(key, "-", "+")
    else:
        pipe.dump(key)


async def _read_states(
    client: aioredis.Redis, keys: Sequence[bytes], types: Sequence[str] | None
) -> tuple[list[_KeyState], float]:
    """TYPE, PTTL and a value digest of `keys`, atomically (MULTI/EXEC), and the monotonic time of the read.

    With `types` (from the source), the value is read with the command for that type and hashed here; without,
    DEBUG DIGEST-VALUE gives the server's digest.
    """
    pipe = client.pipeline(transaction=True)
    for i, key in enumerate(keys):
        pipe.type(key)
        pipe.pttl(key)
        if types is not None and types[i] != "none":
            _queue_read(pipe, types[i], key)
    if types is None and keys:
        pipe.execute_command("DEBUG", "DIGEST-VALUE", *keys)
    before = time.monotonic()
    replies = await pipe.execute(raise_on_error=False)
    at = (before + time.monotonic()) / 2
    for reply in replies:
        if isinstance(reply, redis_errors.ConnectionError | redis_errors.TimeoutError):
            raise reply
    states: list[_KeyState] = []
    pos = 0
    digests = replies[-1] if types is None and keys else None
    if isinstance(digests, Exception):
        raise digests
    for i, _ in enumerate(keys):
        type_, pttl = _text(replies[pos]), replies[pos + 1]
        pos += 2
        digest: bytes | None = None
        if types is not None and types[i] != "none":
            reply = replies[pos]
            pos += 1
            if type_ == types[i] and not isinstance(reply, Exception):
                digest = _value_digest(type_, reply)
        elif digests is not None:
            digest = bytes(digests[i]) if isinstance(digests[i], bytes) else _text(digests[i]).encode()
        states.append(_KeyState(type_, int(pttl) if isinstance(pttl, int) else -2, digest))
    return states, at


async def _types(client: aioredis.Redis, keys: Sequence[bytes]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    return [_text(reply) for reply in await pipe.execute()]


async def _digest_allowed(client: aioredis.Redis) -> bool:
    try:
        await client.execute_command("DEBUG", "DIGEST-VALUE", "ttd:validate:probe")  # type: ignore[no-untyped-call]
    except redis_errors.ResponseError:
        return False
    return True


async def _scan(client: aioredis.Redis, batch: int, limit: int | None) -> AsyncIterator[list[bytes]]:
    """Batches of keys from SCAN (a key may, rarely, come twice), at most `limit` keys in all."""
    cursor = 0
    seen = 0
    while True:
        cursor, found = await client.scan(cursor=cursor, count=batch)
        keys = [k if isinstance(k, bytes) else str(k).encode() for k in found]
        if limit is not None:
            keys = keys[: max(0, limit - seen)]
        seen += len(keys)
        if keys:
            yield keys
        if cursor == 0 or (limit is not None and seen >= limit):
            return


def _compare_key(
    result: RedisComparison,
    key: bytes,
    src: _KeyState,
    tgt: _KeyState,
    elapsed_ms: float,
    tolerance: int,
    *,
    server_digest: bool = False,
) -> bool:
    """Compare one key's states, counting and naming problems. Returns True when the value must be compared again
    by reads: DEBUG DIGEST-VALUE covers whether a key expires, so it differs whenever only that differs."""
    name = _show_redis_key(key)
    recheck = False
    if src.type == "none" or src.pttl == -2:
        result.expired_during_run += 1  # gone from the source between SCAN and the read
        return False
    if tgt.type == "none" or tgt.pttl == -2:
        if 0 <= src.pttl <= tolerance + abs(elapsed_ms):
            result.expired_during_run += 1  # about to expire: the target's copy already has
            return False
        result.missing_on_target += 1
        result.problem("missing on target", f"key {name}: missing on target")
        return False
    result.compared += 1
    if src.type != tgt.type:
        result.type_differs += 1
        result.problem("type differs", f"key {name}: type {src.type} on source, {tgt.type} on target")
        return False
    if server_digest and src.digest != tgt.digest and (src.pttl == -1) != (tgt.pttl == -1):
        recheck = True
    elif src.digest is None or src.digest != tgt.digest:
        result.value_differs += 1
        result.problem("value differs", f"key {name}: value differs")
    if (src.pttl == -1) != (tgt.pttl == -1):
        result.ttl_differs += 1
        result.problem(
            "TTL differs", f"key {name}: TTL {_show_ttl(src.pttl)} on source, {_show_ttl(tgt.pttl)} on target"
        )
    elif src.pttl >= 0:
        expected = src.pttl - elapsed_ms  # the source's TTL as of the moment the target was read
        if abs(tgt.pttl - expected) > tolerance:
            result.ttl_differs += 1
            result.problem(
                "TTL differs",
                f"key {name}: TTL {_show_ttl(src.pttl)} on source, {_show_ttl(tgt.pttl)} on target "
                f"(tolerance {tolerance} ms)",
            )
    return recheck


async def _recheck_values(
    result: RedisComparison, src: aioredis.Redis, tgt: aioredis.Redis, keys: list[bytes], types: list[str]
) -> None:
    """Compare the values of `keys` by type-specific reads (their server digests differed along with their expiry)."""
    (src_states, _), (tgt_states, _) = await asyncio.gather(
        _read_states(src, keys, types), _read_states(tgt, keys, types)
    )
    for key, type_, s, t in zip(keys, types, src_states, tgt_states, strict=True):
        if "none" in (s.type, t.type) or s.type != type_:
            result.expired_during_run += 1
        elif s.digest is None or s.digest != t.digest:
            result.value_differs += 1
            result.problem("value differs", f"key {_show_redis_key(key)}: value differs")


_STATE_SCRIPT = """
local function xor_into(acc, h)
  for j = 1, 5 do
    acc[j] = bit.bxor(acc[j], tonumber(string.sub(h, j * 8 - 7, j * 8), 16))
  end
end
local function unordered(items, step)
  local acc = {0, 0, 0, 0, 0}
  for j = 1, #items, step do
    local part = #items[j] .. ':' .. items[j]
    if step == 2 then part = part .. #items[j + 1] .. ':' .. items[j + 1] end
    xor_into(acc, redis.sha1hex(part))
  end
  local out = (#items / step) .. ':'
  for j = 1, 5 do out = out .. bit.tohex(acc[j], 8) end
  return out
end
local function ordered(items)
  local h = ''
  for j = 1, #items do h = redis.sha1hex(h .. #items[j] .. ':' .. items[j]) end
  return #items .. ':' .. h
end
local function digest(t, key)
  if t == 'string' then return redis.sha1hex(redis.call('GET', key)) end
  if t == 'list' then return ordered(redis.call('LRANGE', key, 0, -1)) end
  if t == 'set' then return unordered(redis.call('SMEMBERS', key), 1) end
  if t == 'hash' then return unordered(redis.call('HGETALL', key), 2) end
  if t == 'zset' then return ordered(redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')) end
  if t == 'stream' then
    local entries = redis.call('XRANGE', key, '-', '+')
    local h = ''
    for _, e in ipairs(entries) do h = redis.sha1hex(h .. e[1] .. '|' .. ordered(e[2])) end
    return #entries .. ':' .. h
  end
  local payload = redis.call('DUMP', key)
  return redis.sha1hex(string.sub(payload, 1, -11))
end
local mode = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  if mode == 'exists' then
    out[i] = redis.call('EXISTS', key)
  elseif mode == 'pttl' then
    out[i] = redis.call('PTTL', key)
  else
    local t = redis.call('TYPE', key)['ok']
    local d = '-'
    if t ~= 'none' then d = digest(t, key) end
    out[i] = t .. ' ' .. redis.call('PTTL', key) .. ' ' .. d
  end
end
return table.concat(out, string.char(10))
"""
"""One call per batch: "TYPE PTTL DIGEST" of every key, the digest of the value computed on the server (sha1
chained over ordered elements, XOR of per-element sha1 for hashes and sets, so neither iteration order nor locale
matters), or EXISTS / PTTL of every key; one line per key in a single reply (cheap to parse). Atomic like every
script; read-only."""

METHODS = ("digest", "script", "reads")


async def _script_states(script: Any, keys: Sequence[bytes]) -> tuple[list[_KeyState], float]:
    before = time.monotonic()
    reply = await script(keys=list(keys), args=["state"])
    at = (before + time.monotonic()) / 2
    states = []
    for line in _text(reply).split("\n") if keys else []:
        type_, pttl, digest = line.split(" ")
        states.append(_KeyState(type_, int(pttl), digest.encode()))
    return states, at


async def _states(
    client: aioredis.Redis, script: Any, method: str, keys: Sequence[bytes], types: Sequence[str] | None
) -> tuple[list[_KeyState], float]:
    if method == "script":
        return await _script_states(script, keys)
    return await _read_states(client, keys, types)


async def _per_key(client: aioredis.Redis, script: Any, method: str, command: str, keys: Sequence[bytes]) -> list[int]:
    """EXISTS or PTTL of every key (a script call, or a pipeline)."""
    if method == "script":
        reply = await script(keys=list(keys), args=[command.lower()])
        return [int(value) for value in _text(reply).split("\n")] if keys else []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command(command, key)
    return [int(value) for value in await pipe.execute()]


async def _script_allowed(script: Any) -> bool:
    try:
        await script(keys=[], args=["state"])
    except redis_errors.ResponseError as exc:
        if "user_script" in str(exc):  # the script itself failed: a bug to report, not a server restriction
            raise
        return False  # NOPERM, scripting disabled, unknown command
    return True


async def _choose_method(src: aioredis.Redis, tgt: aioredis.Redis, scripts: tuple[Any, Any]) -> str:
    """The script when both servers run it (exact and the fastest: one reply per batch), else DEBUG DIGEST-VALUE
    when both allow it, else reads."""
    if all(await asyncio.gather(*(_script_allowed(script) for script in scripts))):
        return "script"
    if all(await asyncio.gather(_digest_allowed(src), _digest_allowed(tgt))):
        return "digest"
    return "reads"


async def compare_redis(
    source_url: str,
    target_url: str,
    *,
    ttl_tolerance_ms: int = 5000,
    sample: int | None = None,
    batch: int = 500,
    method: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RedisComparison:
    """Compare every key of the source's database with the target's (see the module docstring).

    Values are compared by `method`: "script" (a read-only Lua script running the type-specific reads and hashing
    each value on the server), "digest" (DEBUG DIGEST-VALUE) or "reads" (GET / HGETALL / LRANGE / SMEMBERS /
    ZRANGE WITHSCORES / XRANGE in MULTI, hashed here); None picks the first both servers allow, in that order
    (managed Redis usually forbids DEBUG; the script is also ~5x faster than DIGEST-VALUE, which needs TYPE and PTTL
    per key beside it). `sample` compares
    only the first `sample` keys SCAN returns on each side. `on_progress(done, total)` is told after each batch of
    source keys.
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}")
    result = RedisComparison(mask_secrets(source_url), mask_secrets(target_url), ttl_tolerance_ms=ttl_tolerance_ms)
    result.sample = sample
    src = aioredis.Redis.from_url(source_url, socket_connect_timeout=5, socket_timeout=60)
    tgt = aioredis.Redis.from_url(target_url, socket_connect_timeout=5, socket_timeout=60)
    scripts = (src.register_script(_STATE_SCRIPT), tgt.register_script(_STATE_SCRIPT))
    started = time.monotonic()
    try:
        result.source_keys, result.target_keys = (int(n) for n in await asyncio.gather(src.dbsize(), tgt.dbsize()))
        method = method or await _choose_method(src, tgt, scripts)
        result.method = method
        done = 0
        async for keys in _scan(src, batch, sample):
            types = await _types(src, keys) if method == "reads" else None
            (src_states, src_at), (tgt_states, tgt_at) = await asyncio.gather(
                _states(src, scripts[0], method, keys, types), _states(tgt, scripts[1], method, keys, types)
            )
            elapsed_ms = (tgt_at - src_at) * 1000
            recheck: list[tuple[bytes, str]] = []
            for i, (key, s, t) in enumerate(zip(keys, src_states, tgt_states, strict=True)):
                if types is not None and s.type not in ("none", types[i]):
                    result.expired_during_run += 1  # replaced on the source between the two reads
                    continue
                if _compare_key(result, key, s, t, elapsed_ms, ttl_tolerance_ms, server_digest=method == "digest"):
                    recheck.append((key, s.type))
            if recheck:
                await _recheck_values(result, src, tgt, [k for k, _ in recheck], [t for _, t in recheck])
            done += len(keys)
            if on_progress is not None:
                on_progress(done, max(done, result.source_keys if sample is None else min(sample, result.source_keys)))
        async for keys in _scan(tgt, batch, sample):
            exists, pttls = await asyncio.gather(
                _per_key(src, scripts[0], method, "EXISTS", keys), _per_key(tgt, scripts[1], method, "PTTL", keys)
            )
            result.target_scanned += len(keys)
            for key, present, pttl in zip(keys, exists, pttls, strict=True):
                if present or pttl == -2:
                    continue
                if 0 <= pttl <= ttl_tolerance_ms:
                    result.expired_during_run += 1  # expired on the source, about to on the target
                    continue
                result.extra_on_target += 1
                result.problem("only on target", f"key {_show_redis_key(key)}: only on target")
        if result.missing_on_target or result.extra_on_target:
            result.errors.insert(
                0,
                f"key count: {result.source_keys} on source, {result.target_keys} on target "
                f"({result.missing_on_target} missing on target, {result.extra_on_target} only on target)",
            )
        elif result.source_keys != result.target_keys and sample is None:
            result.warnings.append(
                f"DBSIZE differs ({result.source_keys} on source, {result.target_keys} on target) although every "
                "key matched: keys expired or changed during the run"
            )
        if sample is not None:
            result.warnings.append(f"only a sample of {sample} keys per side was compared")
        if result.expired_during_run:
            result.warnings.append(f"{result.expired_during_run} keys expired while being compared (not errors)")
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        result.errors.append(f"Redis comparison failed: cannot reach Redis: {mask_secrets(str(exc))}")
    except redis_errors.RedisError as exc:
        result.errors.append(f"Redis comparison failed: {mask_secrets(str(exc))}")
    finally:
        result.finish()
        result.elapsed = time.monotonic() - started
        await asyncio.gather(src.aclose(), tgt.aclose(), return_exceptions=True)
    return result


# ================================================================================================= files


@dataclass
class FilesComparison:
    source_files: int
    target_files: int
    missing_on_target: list[str] = field(default_factory=list)
    extra_on_target: list[str] = field(default_factory=list)
    hash_differs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)


def compare_files(source: dict[str, str], target: dict[str, str]) -> FilesComparison:
    """Two `{relative path: sha256}` manifests (`timetodo.ops.files.scan_tree`), compared both ways."""
    result = FilesComparison(len(source), len(target))
    result.missing_on_target = sorted(path for path in source if path not in target)
    result.extra_on_target = sorted(path for path in target if path not in source)
    result.hash_differs = sorted(path for path, sha in source.items() if path in target and target[path] != sha)
    for paths, what in (
        (result.missing_on_target, "missing on target"),
        (result.extra_on_target, "only on target"),
        (result.hash_differs, "sha256 differs"),
    ):
        for path in paths[:MAX_NAMED]:
            result.errors.append(f"file {path}: {what}")
        if len(paths) > MAX_NAMED:
            result.errors.append(_more(len(paths) - MAX_NAMED, f"files {what}"))
    return result


# ================================================================================================= HTTP


@dataclass
class PathResult:
    path: str
    source_status: int | None = None
    target_status: int | None = None
    identical: bool = False
    difference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "source_status": self.source_status,
            "target_status": self.target_status,
            "identical": self.identical,
            "difference": self.difference,
        }


@dataclass
class HttpComparison:
    source: str
    target: str
    rounds: int
    slack_ms: float = DEFAULT_SLACK_MS
    paths: list[PathResult] = field(default_factory=list)
    source_p50_ms: float | None = None
    source_p95_ms: float | None = None
    target_p50_ms: float | None = None
    target_p95_ms: float | None = None
    samples: int = 0
    """Timed requests per host."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def budget_ms(self, source_ms: float | None) -> float | None:
        """What the target may take: the source's time × 1.1, but never less than the source's + slack_ms."""
        if source_ms is None:
            return None
        return max(source_ms * LATENCY_FACTOR, source_ms + self.slack_ms)

    @property
    def budget_p50_ms(self) -> float | None:
        return self.budget_ms(self.source_p50_ms)

    @property
    def budget_p95_ms(self) -> float | None:
        return self.budget_ms(self.source_p95_ms)

    @property
    def target_within_budget(self) -> bool | None:
        """target p50/p95 ≤ source p50/p95 × 1.1 (with an absolute slack of `slack_ms` for loopback noise);
        None when either host could not be timed."""
        if None in (self.target_p50_ms, self.target_p95_ms, self.budget_p50_ms, self.budget_p95_ms):
            return None
        assert self.target_p50_ms is not None and self.target_p95_ms is not None
        assert self.budget_p50_ms is not None and self.budget_p95_ms is not None
        return self.target_p50_ms <= self.budget_p50_ms and self.target_p95_ms <= self.budget_p95_ms

    @property
    def budget_rule(self) -> str:
        return (
            f"target p50 and p95 must be ≤ the source's × {LATENCY_FACTOR} "
            f"(or ≤ the source's + {self.slack_ms:g} ms when that is larger: sub-millisecond loopback noise)"
        )

    def to_dict(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "ok": self.ok,
            "source": self.source,
            "target": self.target,
            "rounds": self.rounds,
            "samples": self.samples,
            "paths": [path.to_dict() for path in self.paths],
            "source_p50_ms": rounded(self.source_p50_ms),
            "source_p95_ms": rounded(self.source_p95_ms),
            "target_p50_ms": rounded(self.target_p50_ms),
            "target_p95_ms": rounded(self.target_p95_ms),
            "budget_p50_ms": rounded(self.budget_p50_ms),
            "budget_p95_ms": rounded(self.budget_p95_ms),
            "slack_ms": self.slack_ms,
            "budget_rule": self.budget_rule,
            "target_within_budget": self.target_within_budget,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _strip(value: Any, ignore: Collection[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [_strip(item, ignore) for item in value]
    return value


def _first_difference(a: Any, b: Any, where: str = "$") -> str | None:
    """JSON path of the first place where two decoded JSON documents differ (None when equal)."""
    if type(a) is not type(b):
        return where
    if isinstance(a, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{where}.{key}"
            found = _first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None if len(a) == len(b) else f"{where} (length {len(a)} vs {len(b)})"
    return None if a == b else where


def _body_difference(source: httpx.Response, target: httpx.Response, ignore: Collection[str]) -> str | None:
    try:
        a, b = source.json(), target.json()
    except ValueError:
        return None if source.content == target.content else "bodies differ (not JSON)"
    where = _first_difference(_strip(a, ignore), _strip(b, ignore))
    return None if where is None else f"JSON bodies differ at {where}"


async def compare_http(
    source_api: str,
    target_api: str,
    token: str,
    paths: list[str],
    *,
    rounds: int = 20,
    request_timeout: float = 10.0,
    slack_ms: float = DEFAULT_SLACK_MS,
    ignore_json_keys: Collection[str] = (),
) -> HttpComparison:
    """GET every path on both hosts with `Authorization: Bearer <token>`: status and JSON body must be identical
    (headers are not compared; `ignore_json_keys` drops volatile fields), and the target's latency must be within
    budget (`HttpComparison.budget_rule`).

    One untimed warm-up request per host and path opens the connections; then `rounds` rounds, each requesting
    every path from both hosts back to back (source first on even rounds, target first on odd ones), so both are
    measured under the same conditions. Responses of every round are compared.
    """
    result = HttpComparison(mask_secrets(source_api), mask_secrets(target_api), rounds, slack_ms)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    bases = (source_api.rstrip("/"), target_api.rstrip("/"))
    times: tuple[list[float], list[float]] = ([], [])
    by_path = {path: PathResult(path) for path in paths}
    result.paths = list(by_path.values())
    failures: dict[tuple[str, int], str] = {}

    def mask(text: str) -> str:
        return mask_secrets(text.replace(token, "***")) if token else mask_secrets(text)

    async def fetch(client: httpx.AsyncClient, side: int, path: str, timed: bool) -> httpx.Response | None:
        url = bases[side] + (path if path.startswith("/") else "/" + path)
        started = time.perf_counter()
        try:
            response = await client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            failures.setdefault((path, side), mask(str(exc) or type(exc).__name__))
            return None
        if timed:
            times[side].append((time.perf_counter() - started) * 1000)
        return response

    def record(path: str, source: httpx.Response | None, target: httpx.Response | None) -> None:
        entry = by_path[path]
        if source is None or target is None:
            return
        if entry.source_status is None:
            entry.source_status, entry.target_status = source.status_code, target.status_code
            entry.identical = True
        if not entry.identical:
            return
        if source.status_code != target.status_code:
            entry.identical = False
            entry.source_status, entry.target_status = source.status_code, target.status_code
            entry.difference = f"status {source.status_code} on source, {target.status_code} on target"
        else:
            difference = _body_difference(source, target, ignore_json_keys)
            if difference is not None:
                entry.identical, entry.difference = False, difference

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with (
        httpx.AsyncClient(timeout=request_timeout, limits=limits, follow_redirects=False) as src,
        httpx.AsyncClient(timeout=request_timeout, limits=limits, follow_redirects=False) as tgt,
    ):
        clients = (src, tgt)
        for round_ in range(rounds + 1):
            timed = round_ > 0
            order = (0, 1) if round_ % 2 == 0 else (1, 0)
            for path in paths:
                answers: dict[int, httpx.Response | None] = {}
                for side in order:
                    answers[side] = await fetch(clients[side], side, path, timed)
                record(path, answers[0], answers[1])

    for (path, side), reason in sorted(failures.items()):
        result.errors.append(f"GET {path}: no answer from the {('source', 'target')[side]}: {reason}")
    for entry in result.paths:
        if entry.source_status is not None and not entry.identical:
            result.errors.append(f"GET {entry.path}: answered differently ({entry.difference})")
        elif entry.source_status is not None and entry.source_status >= 400:
            result.warnings.append(f"GET {entry.path}: both hosts answered {entry.source_status}")
    result.samples = min(len(times[0]), len(times[1]))
    if times[0]:
        result.source_p50_ms, result.source_p95_ms = percentile(times[0], 50), percentile(times[0], 95)
    if times[1]:
        result.target_p50_ms, result.target_p95_ms = percentile(times[1], 50), percentile(times[1], 95)
    within = result.target_within_budget
    if within is False:
        result.errors.append(
            f"latency: target p50 {result.target_p50_ms:.1f} ms / p95 {result.target_p95_ms:.1f} ms exceeds the "
            f"budget p50 {result.budget_p50_ms:.1f} ms / p95 {result.budget_p95_ms:.1f} ms "
            f"(source p50 {result.source_p50_ms:.1f} ms / p95 {result.source_p95_ms:.1f} ms; {result.budget_rule})"
        )
    elif within is None and paths:
        result.errors.append("latency: could not be measured on both hosts")
    if not paths:
        result.warnings.append("no paths to compare")
    return result


# ================================================================================================= webhook


@dataclass
class WebhookCheck:
    expected_url: str
    since: float
    url: str | None = None
    pending_update_count: int | None = None
    last_error_date: int | None = None
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)


async def check_webhook(client: TelegramClient, expected_url: str, since: float) -> WebhookCheck:
    """getWebhookInfo: the webhook is `expected_url` and no delivery failed at or after unix time `since`."""
    result = WebhookCheck(mask_secrets(expected_url), since)
    try:
        info = await client.get_webhook_info()
    except TelegramError as exc:
        result.errors.append(f"webhook: {exc}")
        return result
    result.url = mask_secrets(info.url)
    result.pending_update_count = info.pending_update_count
    result.last_error_date = info.last_error_date
    error = info.error_since(since)
    result.last_error = error
    if info.url != expected_url:
        result.errors.append(f"webhook points at {result.url or 'nothing'!r}, expected {result.expected_url!r}")
    if error is not None:
        result.errors.append(f"webhook delivery failed since the switch: {mask_secrets(error)}")
    return result


# ================================================================================================= report


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(re.fullmatch(r"-?[\d.,]+( ms| s)?|-", row[i]) for row in cells[1:]) and len(cells) > 1
        for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        parts = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric, strict=True)]
        return "  " + "  ".join(parts).rstrip()

    out = [line(cells[0]), "  " + "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells[1:])
    return out


def _status(ok: bool | None) -> str:
    return "skipped" if ok is None else ("ok" if ok else "FAILED")


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


@dataclass
class ValidationReport:
    """The result of `timetodo migrate validate`: every comparison that was run (None = not run)."""

    database: DbComparison | None = None
    redis: RedisComparison | None = None
    files: FilesComparison | None = None
    http: HttpComparison | None = None
    webhook: WebhookCheck | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def sections(self) -> list[tuple[str, Comparison | None]]:
        return [
            ("database", self.database),
            ("redis", self.redis),
            ("files", self.files),
            ("http", self.http),
            ("webhook", self.webhook),
        ]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[str]:
        return [f"{name}: {message}" for name, section in self.sections() if section for message in section.errors]

    @property
    def warnings(self) -> list[str]:
        found = [f"{name}: {message}" for name, section in self.sections() if section for message in section.warnings]
        if all(section is None for _, section in self.sections()):
            found.append("nothing was validated")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "errors": self.errors,
            "warnings": self.warnings,
            "sections": {
                name: None if section is None else _jsonable(section.to_dict()) for name, section in self.sections()
            },
        }

    def to_text(self) -> str:
        out = [
            "Time to DO — migration validation report",
            f"started {_iso(self.started_at)}, finished {_iso(self.finished_at) or '-'}",
            f"result: {'OK' if self.ok else 'FAILED'} ({len(self.errors)} errors, {len(self.warnings)} warnings)",
            "",
            "Summary",
        ]
        out += _table(
            ["section", "status", "errors", "warnings"],
            [
                (
                    name,
                    _status(None if s is None else s.ok),
                    "-" if s is None else len(s.errors),
                    "-" if s is None else len(s.warnings),
                )
                for name, s in self.sections()
            ],
        )
        out += self._database_text() + self._redis_text() + self._files_text() + self._http_text()
        out += self._webhook_text()
        for title, messages in (("Errors", self.errors), ("Warnings", self.warnings)):
            if messages:
                out += ["", title] + [f"  - {message}" for message in messages]
        return "\n".join(out) + "\n"

    def _database_text(self) -> list[str]:
        db = self.database
        if db is None:
            return []
        out = ["", f"Database: {_status(db.ok)}  ({db.source} -> {db.target}; chunks of {db.chunk_rows} rows"]
        out[-1] += f"; snapshot {db.snapshot})" if db.snapshot else ")"
        out += _table(
            ["table", "primary key", "source rows", "target rows", "chunks", "differing", "status"],
            [
                (
                    t.name,
                    ", ".join(t.primary_key) if t.primary_key else ("-" if t.only_on else "(none)"),
                    t.source_rows,
                    t.target_rows,
                    t.chunks,
                    t.differing_chunks,
                    f"only on {t.only_on}" if t.only_on else _status(t.ok),
                )
                for t in db.tables
            ],
        )
        if db.sequences:
            out += ["", "  Sequences (target)"]
            out += _table(
                ["sequence", "column", "next value", "column max", "status"],
                [(s.name, f"{s.table}.{s.column}", s.next_value, s.column_max, s.status) for s in db.sequences],
            )
        return out

    def _redis_text(self) -> list[str]:
        r = self.redis
        if r is None:
            return []
        out = [
            "",
            f"Redis: {_status(r.ok)}  ({r.source} -> {r.target}; values by {r.method}; "
            f"TTL tolerance {r.ttl_tolerance_ms} ms)",
        ]
        out += _table(
            ["check", "count"],
            [
                ("keys on source (DBSIZE)", r.source_keys),
                ("keys on target (DBSIZE)", r.target_keys),
                ("source keys compared", r.compared),
                ("target keys scanned", r.target_scanned),
                ("missing on target", r.missing_on_target),
                ("only on target", r.extra_on_target),
                ("type differs", r.type_differs),
                ("value differs", r.value_differs),
                ("TTL differs", r.ttl_differs),
                ("expired during the run", r.expired_during_run),
            ],
        )
        return out

    def _files_text(self) -> list[str]:
        f = self.files
        if f is None:
            return []
        out = ["", f"Files: {_status(f.ok)}"]
        out += _table(
            ["check", "count"],
            [
                ("files on source", f.source_files),
                ("files on target", f.target_files),
                ("missing on target", len(f.missing_on_target)),
                ("only on target", len(f.extra_on_target)),
                ("sha256 differs", len(f.hash_differs)),
            ],
        )
        return out

    def _http_text(self) -> list[str]:
        h = self.http
        if h is None:
            return []
        out = ["", f"HTTP: {_status(h.ok)}  ({h.source} vs {h.target}; {h.rounds} interleaved rounds)"]
        out += _table(
            ["GET", "source", "target", "identical"],
            [(p.path, p.source_status, p.target_status, "yes" if p.identical else "NO") for p in h.paths],
        )
        out += [""]
        out += _table(
            ["latency (ms)", "p50", "p95"],
            [
                ("source", _ms(h.source_p50_ms), _ms(h.source_p95_ms)),
                ("target", _ms(h.target_p50_ms), _ms(h.target_p95_ms)),
                ("budget", _ms(h.budget_p50_ms), _ms(h.budget_p95_ms)),
            ],
        )
        within = h.target_within_budget
        verdict = "unknown" if within is None else ("yes" if within else "NO")
        out.append(f"  target within budget: {verdict} — {h.budget_rule}")
        return out

    def _webhook_text(self) -> list[str]:
        w = self.webhook
        if w is None:
            return []
        out = ["", f"Telegram webhook: {_status(w.ok)}"]
        out += _table(
            ["expected", "actual", "pending updates", "error since switch"],
            [(w.expected_url, w.url or "(none)", w.pending_update_count, w.last_error or "none")],
        )
        return out

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write `migration_validation_report.txt` and `.json` into `directory` (atomically); returns both paths."""
        if self.finished_at is None:
            self.finished_at = time.time()
        directory.mkdir(parents=True, exist_ok=True)
        text_path, json_path = directory / REPORT_TXT, directory / REPORT_JSON
        _write_atomic(text_path, self.to_text())
        _write_atomic(json_path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return text_path, json_path


def _iso(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
