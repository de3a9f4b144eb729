"""`compare_databases`: every table of schema public, source against target: exact row counts, and content checksums
per chunk of rows ordered by primary key (so a mismatch names a key range and the first/last differing key), tables
without a primary key by an order-independent whole-table checksum (a warning); owned sequences on the target must be
past max(column). The source is read in one REPEATABLE READ READ ONLY transaction, optionally on an exported snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters.postgres import PgError, PgTarget, connect, list_tables, mask_url, quote_ident
from timetodo.ops.migrate.validate.common import MAX_DETAILED_CHUNKS, MAX_NAMED, jsonable, more

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
            "low": jsonable(self.low),
            "high": jsonable(self.high),
            "source_rows": self.source_rows,
            "target_rows": self.target_rows,
            "examined": self.examined,
            "changed": self.changed,
            "missing_on_target": self.missing_on_target,
            "extra_on_target": self.extra_on_target,
            "first_key": jsonable(self.first_key),
            "last_key": jsonable(self.last_key),
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


_COLLATION_SQL = "SELECT datcollate FROM pg_database WHERE datname = current_database()"


@contextlib.asynccontextmanager
async def _reading(target: PgTarget, snapshot: str | None = None) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a REPEATABLE READ READ ONLY transaction (on `snapshot` when given), rolled back after."""
    conn = await connect(target)
    try:
        await pg.fix_text_output(conn)  # the text form of every row must not depend on the server's settings
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
    columns = (await pg.columns(conn, table)).get(table, [])
    key = (await pg.primary_keys(conn, table)).get(table, [])
    return _Shape([(c.name, c.type, c.collatable) for c in columns], key)


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


def _compare_shapes(result: DbComparison, table: str, src_shape: _Shape, tgt_shape: _Shape) -> tuple[list[str], bool]:
    """(columns on both sides in source order, whether the column sets are equal); differences reported."""
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
    if src_shape.primary_key and tgt_shape.primary_key and src_shape.primary_key != tgt_shape.primary_key:
        result.errors.append(
            f"table {table}: primary key ({', '.join(src_shape.primary_key)}) on source, "
            f"({', '.join(tgt_shape.primary_key)}) on target"
        )
    return [name for name in src_names if name in tgt_columns], not missing_cols and not extra_cols


async def _compare_whole(
    src: asyncpg.Connection, tgt: asyncpg.Connection, result: DbComparison, report: TableComparison, common: list[str]
) -> bool:
    """A table without a primary key: one order-independent checksum per side. Whether they are equal."""
    table = report.name
    result.warnings.append(
        f"table {table}: no primary key; compared by a whole-table checksum only (a difference cannot be located)"
    )
    query = _whole_table_sql(table, common)
    src_sum, tgt_sum = await asyncio.gather(src.fetchrow(query), tgt.fetchrow(query))
    report.chunks = 1
    if tuple(src_sum) != tuple(tgt_sum):
        report.differing_chunks = 1
        result.errors.append(f"table {table} (no primary key): content differs")
        return False
    return True


async def _compare_chunks(
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    result: DbComparison,
    report: TableComparison,
    sql: _TableSql,
    chunk_rows: int,
) -> None:
    """Checksums per chunk of rows ordered by primary key; a differing chunk is examined row by row while cheap."""
    table, key = report.name, sql.key_names
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
        result.errors.append(f"table {table}: " + more(report.differing_chunks - MAX_NAMED, "differing chunks"))


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
    common, same_columns = _compare_shapes(result, table, src_shape, tgt_shape)
    count_sql = f"SELECT count(*) FROM public.{quote_ident(table)}"  # noqa: S608
    src_count, tgt_count = await asyncio.gather(src.fetchval(count_sql), tgt.fetchval(count_sql))
    report.source_rows, report.target_rows = int(src_count), int(tgt_count)
    if report.source_rows != report.target_rows:
        result.errors.append(f"table {table}: {report.source_rows} rows on source, {report.target_rows} on target")
    if not common:
        report.content_equal = same_columns
        return report
    key = [c for c in src_shape.primary_key if c in common]
    if not src_shape.primary_key or len(key) != len(src_shape.primary_key):
        report.content_equal = await _compare_whole(src, tgt, result, report, common) and same_columns
        return report
    report.primary_key = key
    types = {name: (type_, collatable) for name, type_, collatable in src_shape.columns}
    force_c = {name for name in key if types[name][1] and collations_differ}
    sql = _TableSql(table, common, [(name, types[name][0]) for name in key], force_c)
    await _compare_chunks(src, tgt, result, report, sql, chunk_rows)
    report.content_equal = report.differing_chunks == 0 and same_columns
    return report


async def _check_sequences(src: asyncpg.Connection, tgt: asyncpg.Connection, result: DbComparison) -> None:
    for owned in await pg.owned_sequences(tgt):
        name, table, column, increment = owned.name, owned.table, owned.column, owned.increment
        seq = f"{quote_ident(owned.schema)}.{quote_ident(name)}"
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
    source, target = PgTarget.from_url(source_url), PgTarget.from_url(target_url)
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
