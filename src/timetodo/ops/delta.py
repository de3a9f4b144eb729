"""Row-level delta between two PostgreSQL databases of the same schema, and its application to a third one.

Rollback of a migration (dump strategy): at cutover the final dump of the frozen source is also restored into a
*snapshot* database next to the target, so the snapshot equals the source at the moment of the switch. At rollback,
`compute_delta(target, snapshot)` finds the rows the target inserted, updated and deleted since the switch, and
`apply_delta(delta, target, source, snapshot_url=snapshot)` carries them back to the source in one transaction.

How the delta is found: for every table, `(primary key, md5 of the row's text)` is streamed from both sides with
server-side cursors, ordered by primary key, and the two ordered streams are merge-joined — memory stays bounded by
the cursor batch plus the changed keys. Integer key columns are ordered natively; every other key column is compared
as its text under the "C" collation (byte order, which is what Python's `str` ordering is for UTF-8), and a stream
that is not strictly increasing in Python's eyes is refused rather than trusted.

How it is applied (one transaction on the destination; nothing is committed unless everything succeeded):

1. with `snapshot_url`, every key about to change must still hold, on the destination, exactly the snapshot's row
   (or be absent on both): otherwise the destination was written after the snapshot and the whole apply is refused
   with the tables and keys, before anything is written (the rows are locked `FOR UPDATE` while checked);
2. deletes in tables that no foreign key references (they cannot cascade), which frees unique values that
   re-inserted rows may take again (an idempotency key purged and reused);
3. upserts, parents first (order computed from `pg_constraint`). The current rows are read as text (the exact
   output of each type under fixed session settings, as pg_dump's COPY does) and staged with `COPY` into a temporary
   table, then one `INSERT … SELECT … ORDER BY … ON CONFLICT (pk) DO UPDATE` per table converts them back to their
   column types. Foreign keys are checked at the end of that statement, so a self-reference (tasks.parent_id) may
   point at a row of the same statement in any order; unique indexes are checked row by row, so updated rows come
   before inserted ones (a stopped timer before the newly running one);
4. the other deletes, children first;
5. every sequence owned by a column moves up to max(its value, the same column's sequence on the current side,
   max(column) on the destination) — never down — so new ids never collide.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from timetodo.ops.postgres import PgError, PgTarget, connect, list_tables, mask_url, quote_ident

Key = tuple[int | str, ...]
"""A primary key: one value per key column; integers as int, every other type as its PostgreSQL text."""

DEFAULT_EXCLUDE = ("alembic_version",)
CURSOR_BATCH = 2000
_INT_TYPES = frozenset({20, 21, 23})  # int8, int2, int4: ordered natively, kept as int
_LIST_LIMIT = 20

# Fixed output settings on every session, so that a value prints the same on both sides and reads back exactly.
_SESSION_SQL = """
SET TimeZone TO 'UTC';
SET DateStyle TO 'ISO, YMD';
SET IntervalStyle TO 'postgres';
SET extra_float_digits TO 3;
SET bytea_output TO 'hex';
SET standard_conforming_strings TO on;
"""

_COLUMNS_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int8 AS typid,
       a.attgenerated <> '' AS generated
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname, a.attnum
"""

_PRIMARY_KEYS_SQL = """
SELECT c.relname, array_agg(a.attname::text ORDER BY k.ord) AS columns
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE con.contype = 'p'
GROUP BY c.relname
"""

_FOREIGN_KEYS_SQL = """
SELECT child.relname AS child, parent.relname AS parent
FROM pg_constraint con
JOIN pg_class child ON child.oid = con.conrelid
JOIN pg_namespace cn ON cn.oid = child.relnamespace AND cn.nspname = 'public'
JOIN pg_class parent ON parent.oid = con.confrelid
JOIN pg_namespace pn ON pn.oid = parent.relnamespace AND pn.nspname = 'public'
WHERE con.contype = 'f'
"""

_OWNED_SEQUENCES_SQL = """
SELECT t.relname AS table_name, a.attname AS column_name, format('%I.%I', sn.nspname, s.relname) AS sequence
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace AND tn.nspname = 'public'
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
ORDER BY 1, 2
"""


class DeltaError(PgError):
    """The delta could not be computed or applied; the message is safe to show (no password)."""


class NoPrimaryKey(DeltaError):
    """Tables without a primary key: their rows cannot be matched between two databases."""

    def __init__(self, tables: Sequence[str]) -> None:
        self.tables = list(tables)
        super().__init__(
            f"tables without a primary key cannot be compared row by row: {', '.join(self.tables)} "
            "(add a primary key, or leave them out with tables=[…])"
        )


class DeltaConflict(DeltaError):
    """The destination was written after the snapshot: applying would overwrite those writes."""

    def __init__(self, conflicts: dict[str, list[Key]]) -> None:
        self.conflicts = conflicts
        parts = [f"{table} {_format_keys(keys)}" for table, keys in sorted(conflicts.items())]
        super().__init__(
            "the destination changed after the cutover snapshot, for rows the delta would change: "
            + "; ".join(parts)
            + " — refusing to overwrite them; nothing was applied"
        )


# ------------------------------------------------------------------------------------------------------ the delta


@dataclass
class TableDelta:
    """Keys of one table's rows inserted, updated and deleted on the current side since the snapshot."""

    key_columns: list[str]
    inserted: list[Key] = field(default_factory=list)
    updated: list[Key] = field(default_factory=list)
    deleted: list[Key] = field(default_factory=list)
    rows_current: int = 0
    rows_snapshot: int = 0

    @property
    def total(self) -> int:
        return len(self.inserted) + len(self.updated) + len(self.deleted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_columns": list(self.key_columns),
            "inserted": [list(k) for k in self.inserted],
            "updated": [list(k) for k in self.updated],
            "deleted": [list(k) for k in self.deleted],
            "rows_current": self.rows_current,
            "rows_snapshot": self.rows_snapshot,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableDelta:
        def keys(name: str) -> list[Key]:
            return [tuple(k) for k in data.get(name, [])]

        return cls(
            key_columns=[str(c) for c in data["key_columns"]],
            inserted=keys("inserted"),
            updated=keys("updated"),
            deleted=keys("deleted"),
            rows_current=int(data.get("rows_current", 0)),
            rows_snapshot=int(data.get("rows_snapshot", 0)),
        )


@dataclass
class Delta:
    """Per-table changes of the current side relative to the snapshot; `to_dict()` is JSON-serialisable."""

    tables: dict[str, TableDelta] = field(default_factory=dict)
    elapsed: float = field(default=0.0, compare=False)

    @property
    def inserted(self) -> int:
        return sum(len(t.inserted) for t in self.tables.values())

    @property
    def updated(self) -> int:
        return sum(len(t.updated) for t in self.tables.values())

    @property
    def deleted(self) -> int:
        return sum(len(t.deleted) for t in self.tables.values())

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.deleted

    @property
    def is_empty(self) -> bool:
        return self.total == 0

    @property
    def changed_tables(self) -> list[str]:
        return [name for name, t in self.tables.items() if t.total]

    def totals(self) -> dict[str, int]:
        return {"inserted": self.inserted, "updated": self.updated, "deleted": self.deleted, "rows": self.total}

    def to_dict(self) -> dict[str, Any]:
        return {
            "tables": {name: t.to_dict() for name, t in self.tables.items()},
            "totals": self.totals(),
            "elapsed_seconds": round(self.elapsed, 3),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Delta:
        tables = {str(name): TableDelta.from_dict(t) for name, t in data.get("tables", {}).items()}
        return cls(tables=tables, elapsed=float(data.get("elapsed_seconds", 0.0)))

    @classmethod
    def from_json(cls, text: str) -> Delta:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a delta is a JSON object")
        return cls.from_dict(data)

    def summary(self) -> str:
        head = (
            f"{self.inserted} inserted, {self.updated} updated, {self.deleted} deleted rows "
            f"in {len(self.changed_tables)} of {len(self.tables)} tables"
        )
        lines = [head]
        for name in self.changed_tables:
            t = self.tables[name]
            lines.append(f"  {name}: +{len(t.inserted)} ~{len(t.updated)} -{len(t.deleted)}")
        return "\n".join(lines)


@dataclass
class TableCounts:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass
class ApplyResult:
    """What `apply_delta` wrote: rows per table (as the destination counted them) and the sequences it moved."""

    tables: dict[str, TableCounts] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def inserted(self) -> int:
        return sum(c.inserted for c in self.tables.values())

    @property
    def updated(self) -> int:
        return sum(c.updated for c in self.tables.values())

    @property
    def deleted(self) -> int:
        return sum(c.deleted for c in self.tables.values())

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.deleted

    def to_dict(self) -> dict[str, Any]:
        return {
            "tables": {
                name: {"inserted": c.inserted, "updated": c.updated, "deleted": c.deleted}
                for name, c in self.tables.items()
            },
            "totals": {"inserted": self.inserted, "updated": self.updated, "deleted": self.deleted},
            "sequences": dict(self.sequences),
            "elapsed_seconds": round(self.elapsed, 3),
        }

    def summary(self) -> str:
        lines = [
            f"applied {self.inserted} inserted, {self.updated} updated, {self.deleted} deleted rows "
            f"in {sum(1 for c in self.tables.values() if c.total)} tables ({self.elapsed:.2f} s)"
        ]
        for name, c in self.tables.items():
            if c.total:
                lines.append(f"  {name}: +{c.inserted} ~{c.updated} -{c.deleted}")
        if self.sequences:
            lines.append("  sequences moved: " + ", ".join(f"{s}={v}" for s, v in self.sequences.items()))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    typid: int
    generated: bool

    @property
    def q(self) -> str:
        return quote_ident(self.name)


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[Column, ...]
    key: tuple[Column, ...]

    @property
    def qname(self) -> str:
        return f"public.{quote_ident(self.name)}"

    @property
    def writable(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if not c.generated)

    def shape(self) -> tuple[tuple[str, str], ...]:
        return tuple((c.name, c.type) for c in self.columns)

    # SQL fragments ----------------------------------------------------------------------------------------------

    def key_select(self, alias: str = "t") -> str:
        return ", ".join(f"{alias}.{c.q}" if c.typid in _INT_TYPES else f"{alias}.{c.q}::text" for c in self.key)

    def key_order(self, alias: str = "t") -> str:
        return ", ".join(
            f"{alias}.{c.q}" if c.typid in _INT_TYPES else f'{alias}.{c.q}::text COLLATE "C"' for c in self.key
        )

    def row_hash(self, alias: str = "t") -> str:
        return "md5(ROW(" + ", ".join(f"{alias}.{c.q}" for c in self.columns) + ")::text)"

    def keys_relation(self) -> str:
        """A relation `k(k0, k1, …)` of the keys passed as one text[] parameter per key column."""
        arrays = ", ".join(f"${i + 1}::text[]" for i in range(len(self.key)))
        names = ", ".join(f"k{i}" for i in range(len(self.key)))
        casts = ", ".join(f"u.k{i}::{c.type} AS k{i}" for i, c in enumerate(self.key))
        return f"(SELECT {casts} FROM unnest({arrays}) AS u({names}))"  # noqa: S608

    def key_join(self, alias: str = "t", keys: str = "k") -> str:
        return " AND ".join(f"{alias}.{c.q} = {keys}.k{i}" for i, c in enumerate(self.key))


def _key_arrays(keys: Sequence[Key], width: int) -> list[list[str]]:
    arrays: list[list[str]] = [[] for _ in range(width)]
    for key in keys:
        if len(key) != width:
            raise DeltaError(f"a key of {len(key)} values for a primary key of {width} columns: {list(key)}")
        for i, value in enumerate(key):
            arrays[i].append(str(value))
    return arrays


def _record_key(row: Any, width: int) -> Key:
    return tuple(row[i] for i in range(width))


def _format_keys(keys: Sequence[Key]) -> str:
    shown = [k[0] if len(k) == 1 else list(k) for k in keys[:_LIST_LIMIT]]
    more = f" and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else ""
    return f"keys {json.dumps(shown, ensure_ascii=False)}{more}"


def _chunks(items: Sequence[Key], size: int) -> Iterator[Sequence[Key]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _catalog(conn: asyncpg.Connection) -> dict[str, TableInfo]:
    columns: dict[str, list[Column]] = {}
    for row in await conn.fetch(_COLUMNS_SQL):
        columns.setdefault(str(row["relname"]), []).append(
            Column(str(row["attname"]), str(row["type"]), int(row["typid"]), bool(row["generated"]))
        )
    keys = {str(row["relname"]): [str(c) for c in row["columns"]] for row in await conn.fetch(_PRIMARY_KEYS_SQL)}
    infos: dict[str, TableInfo] = {}
    for name, cols in columns.items():
        by_name = {c.name: c for c in cols}
        key = tuple(by_name[c] for c in keys.get(name, []))
        infos[name] = TableInfo(name, tuple(cols), key)
    return infos


async def _session(conn: asyncpg.Connection) -> None:
    await conn.execute(_SESSION_SQL)


@contextlib.asynccontextmanager
async def _connection(target: PgTarget) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(target)
    try:
        await _session(conn)
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


def _scrub(targets: Iterable[PgTarget], text: str) -> str:
    for target in targets:
        text = target.scrub(text)
    return text


def _check_shapes(tables: Iterable[str], left: dict[str, TableInfo], right: dict[str, TableInfo], side: str) -> None:
    missing = [name for name in tables if name not in right]
    if missing:
        raise DeltaError(f"tables missing on the {side}: {', '.join(missing)} (the schemas differ)")
    differing = [name for name in tables if left[name].shape() != right[name].shape()]
    if differing:
        raise DeltaError(f"columns differ on the {side} for: {', '.join(differing)} (the schemas differ)")


# ---------------------------------------------------------------------------------------------- compute_delta


async def _hash_stream(
    conn: asyncpg.Connection, info: TableInfo, batch: int, where: str
) -> AsyncGenerator[tuple[Key, str], None]:
    width = len(info.key)
    sql = (
        f"SELECT {info.key_select()}, {info.row_hash()} FROM {info.qname} AS t "  # noqa: S608
        f"ORDER BY {info.key_order()}"
    )
    previous: Key | None = None
    async for row in conn.cursor(sql, prefetch=batch):
        key = _record_key(row, width)
        if previous is not None and not previous < key:
            raise DeltaError(
                f"{info.name} on the {where}: keys are not in a strictly increasing order "
                f"({list(previous)} then {list(key)}); cannot merge"
            )
        previous = key
        yield key, str(row[width])


async def _diff_table(
    current: asyncpg.Connection, snapshot: asyncpg.Connection, info: TableInfo, batch: int
) -> TableDelta:
    delta = TableDelta(key_columns=[c.name for c in info.key])
    ours = _hash_stream(current, info, batch, "current side")
    theirs = _hash_stream(snapshot, info, batch, "snapshot")
    try:
        a = await anext(ours, None)
        b = await anext(theirs, None)
        while a is not None or b is not None:
            if b is None or (a is not None and a[0] < b[0]):
                assert a is not None
                delta.inserted.append(a[0])
                delta.rows_current += 1
                a = await anext(ours, None)
            elif a is None or b[0] < a[0]:
                delta.deleted.append(b[0])
                delta.rows_snapshot += 1
                b = await anext(theirs, None)
            else:
                if a[1] != b[1]:
                    delta.updated.append(a[0])
                delta.rows_current += 1
                delta.rows_snapshot += 1
                a = await anext(ours, None)
                b = await anext(theirs, None)
    finally:
        await ours.aclose()
        await theirs.aclose()
    return delta


async def compute_delta(
    current_url: str,
    snapshot_url: str,
    *,
    tables: list[str] | None = None,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    batch: int = CURSOR_BATCH,
) -> Delta:
    """Rows inserted, updated and deleted in `current_url` relative to `snapshot_url`, by primary key.

    Every table of schema public except `exclude` (or exactly `tables`). Both sides are read in one repeatable-read
    snapshot each. Raises `NoPrimaryKey` (naming them) for tables without a primary key, `DeltaError` when the two
    schemas differ, `PgUnreachable` when a side cannot be reached.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    started = time.monotonic()
    cur_t, snap_t = PgTarget.from_url(current_url), PgTarget.from_url(snapshot_url)
    step = "reading the catalogs"
    try:
        async with (
            _connection(cur_t) as current,
            _connection(snap_t) as snapshot,
            current.transaction(isolation="repeatable_read", readonly=True),
            snapshot.transaction(isolation="repeatable_read", readonly=True),
        ):
            cur_info, snap_info = await _catalog(current), await _catalog(snapshot)
            if tables is None:
                skip = set(exclude)
                names = [name for name in await list_tables(current) if name not in skip]
                only_there = sorted(set(snap_info) - set(cur_info) - skip)
                if only_there:
                    raise DeltaError(
                        f"tables only in the snapshot: {', '.join(only_there)} (dropped on the current side?); "
                        "the schemas differ"
                    )
            else:
                names = list(dict.fromkeys(tables))
                unknown = [name for name in names if name not in cur_info]
                if unknown:
                    raise DeltaError(f"no such tables in schema public of {mask_url(cur_t.url)}: {', '.join(unknown)}")
            without_key = [name for name in names if not cur_info[name].key]
            if without_key:
                raise NoPrimaryKey(without_key)
            _check_shapes(names, cur_info, snap_info, "snapshot")
            mismatched = [n for n in names if cur_info[n].key != snap_info[n].key]
            if mismatched:
                raise DeltaError(f"primary keys differ on the snapshot for: {', '.join(mismatched)}")
            delta = Delta()
            for name in names:
                step = f"comparing {name}"
                delta.tables[name] = await _diff_table(current, snapshot, cur_info[name], batch)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise DeltaError(
            f"computing the delta of {mask_url(cur_t.url)} against {mask_url(snap_t.url)} failed while {step}: "
            f"{_scrub((cur_t, snap_t), str(exc))}"
        ) from None
    delta.elapsed = time.monotonic() - started
    return delta


# ------------------------------------------------------------------------------------------------ apply_delta


def _dependency_order(tables: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[str]:
    """Parents before children (Kahn's algorithm, ties by name); a cycle between tables is broken by name."""
    names = sorted(set(tables))
    wanted = set(names)
    parents: dict[str, set[str]] = {name: set() for name in names}
    for child, parent in edges:
        if child in wanted and parent in wanted and child != parent:
            parents[child].add(parent)
    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(names):
        ready = [n for n in names if n not in placed and parents[n] <= placed]
        if not ready:  # a cycle: take the first remaining table by name
            ready = [next(n for n in names if n not in placed)]
        for name in ready:
            order.append(name)
            placed.add(name)
    return order


async def _row_hashes(
    conn: asyncpg.Connection, info: TableInfo, keys: Sequence[Key], *, lock: bool = False
) -> dict[Key, str]:
    width = len(info.key)
    sql = (
        f"SELECT {info.key_select()}, {info.row_hash()} FROM {info.qname} AS t "  # noqa: S608
        f"JOIN {info.keys_relation()} AS k ON {info.key_join()}" + (" FOR UPDATE OF t" if lock else "")
    )
    rows = await conn.fetch(sql, *_key_arrays(keys, width))
    return {_record_key(row, width): str(row[width]) for row in rows}


async def _find_conflicts(
    dest: asyncpg.Connection, snap: asyncpg.Connection, info: TableInfo, td: TableDelta, batch: int
) -> list[Key]:
    conflicts: list[Key] = []
    for chunk in _chunks([*td.inserted, *td.updated, *td.deleted], batch):
        here = await _row_hashes(dest, info, chunk, lock=True)
        there = await _row_hashes(snap, info, chunk)
        conflicts.extend(key for key in chunk if here.get(key) != there.get(key))
    return conflicts


async def _existing_keys(conn: asyncpg.Connection, info: TableInfo, keys: Sequence[Key], batch: int) -> list[Key]:
    width = len(info.key)
    found: list[Key] = []
    sql = (
        f"SELECT {info.key_select()} FROM {info.qname} AS t "  # noqa: S608
        f"JOIN {info.keys_relation()} AS k ON {info.key_join()}"
    )
    for chunk in _chunks(keys, batch):
        found.extend(_record_key(row, width) for row in await conn.fetch(sql, *_key_arrays(chunk, width)))
    return found


async def _staged_rows(
    current: asyncpg.Connection, info: TableInfo, groups: Sequence[Sequence[Key]], batch: int
) -> AsyncIterator[tuple[Any, ...]]:
    """The current rows of `groups` (updated keys, then inserted keys) as (ordinal, text of each column)."""
    cols = info.writable
    sql = (
        f"SELECT {', '.join(f't.{c.q}::text' for c in cols)}, {info.key_select()} "  # noqa: S608
        f"FROM {info.qname} AS t JOIN {info.keys_relation()} AS k ON {info.key_join()} ORDER BY {info.key_order()}"
    )
    width = len(info.key)
    ordinal = 0
    for group in groups:
        for chunk in _chunks(group, batch):
            rows = await current.fetch(sql, *_key_arrays(chunk, width))
            if len(rows) != len(chunk):
                seen = {tuple(row[len(cols) + i] for i in range(width)) for row in rows}
                gone = [key for key in chunk if key not in seen]
                raise DeltaError(
                    f"{info.name}: rows of the delta no longer exist on the current side ({_format_keys(gone)}); "
                    "it changed after the delta was computed — compute it again"
                )
            for row in rows:
                ordinal += 1
                yield (ordinal, *(row[i] for i in range(len(cols))))


async def _upsert(
    current: asyncpg.Connection, dest: asyncpg.Connection, info: TableInfo, td: TableDelta, batch: int, n: int
) -> tuple[int, int]:
    """Stage the rows with COPY, then one INSERT … ON CONFLICT; returns (inserted, updated) as they happened."""
    cols = info.writable
    stage = f"_ttd_delta_stage_{n}"
    staged_cols = ["_ttd_n", *(f"c{i}" for i in range(len(cols)))]
    await dest.execute(
        f"CREATE TEMPORARY TABLE {stage} (_ttd_n bigint, "
        + ", ".join(f"c{i} text" for i in range(len(cols)))
        + ") ON COMMIT DROP"
    )
    await dest.copy_records_to_table(
        stage, records=_staged_rows(current, info, (td.updated, td.inserted), batch), columns=staged_cols
    )
    staged = int(await dest.fetchval(f"SELECT count(*) FROM {stage}"))  # noqa: S608
    by_name = {c.name: i for i, c in enumerate(cols)}
    key_match = " AND ".join(f"t.{c.q} = s.c{by_name[c.name]}::{c.type}" for c in info.key)
    existing = int(
        await dest.fetchval(f"SELECT count(*) FROM {stage} AS s JOIN {info.qname} AS t ON {key_match}")  # noqa: S608
    )
    key_names = {c.name for c in info.key}
    others = [c for c in cols if c.name not in key_names]
    conflict = "DO UPDATE SET " + ", ".join(f"{c.q} = EXCLUDED.{c.q}" for c in others) if others else "DO NOTHING"
    await dest.execute(
        f"INSERT INTO {info.qname} AS t ({', '.join(c.q for c in cols)}) OVERRIDING SYSTEM VALUE "  # noqa: S608
        f"SELECT {', '.join(f's.c{i}::{c.type}' for i, c in enumerate(cols))} FROM {stage} AS s ORDER BY s._ttd_n "
        f"ON CONFLICT ({', '.join(c.q for c in info.key)}) {conflict}"
    )
    await dest.execute(f"DROP TABLE {stage}")
    return staged - existing, existing


async def _delete(dest: asyncpg.Connection, info: TableInfo, keys: Sequence[Key], batch: int) -> int:
    sql = (
        f"DELETE FROM {info.qname} AS t USING {info.keys_relation()} AS k "  # noqa: S608
        f"WHERE {info.key_join()}"
    )
    deleted = 0
    for chunk in _chunks(keys, batch):
        status = await dest.execute(sql, *_key_arrays(chunk, len(info.key)))
        deleted += int(str(status).rsplit(" ", 1)[-1])
    return deleted


async def _used_value(conn: asyncpg.Connection, sequence: str) -> int | None:
    row = await conn.fetchrow(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608
    return int(row["last_value"]) if row is not None and row["is_called"] else None


async def _align_sequences(
    current: asyncpg.Connection, dest: asyncpg.Connection, infos: dict[str, TableInfo], tables: Iterable[str]
) -> dict[str, int]:
    wanted = set(tables)
    theirs = {
        (str(r["table_name"]), str(r["column_name"])): str(r["sequence"])
        for r in await current.fetch(_OWNED_SEQUENCES_SQL)
    }
    moved: dict[str, int] = {}
    for row in await dest.fetch(_OWNED_SEQUENCES_SQL):
        table, column, sequence = str(row["table_name"]), str(row["column_name"]), str(row["sequence"])
        if table not in wanted:
            continue
        candidates: list[int] = []
        if (table, column) in theirs and (value := await _used_value(current, theirs[(table, column)])) is not None:
            candidates.append(value)
        col = next((c for c in infos[table].columns if c.name == column), None)
        if col is not None and col.typid in _INT_TYPES:
            top = await dest.fetchval(f"SELECT max({col.q}) FROM public.{quote_ident(table)}")  # noqa: S608
            if top is not None:
                candidates.append(int(top))
        if not candidates:
            continue
        goal = max(candidates)
        used = await _used_value(dest, sequence)
        if used is None or goal > used:
            await dest.execute("SELECT setval($1::text::regclass, $2::bigint, true)", sequence, goal)
            moved[sequence] = goal
    return moved


async def apply_delta(
    delta: Delta,
    current_url: str,
    destination_url: str,
    *,
    batch: int = 500,
    snapshot_url: str | None = None,
) -> ApplyResult:
    """Carry the rows of `delta` from `current_url` to `destination_url`, in one transaction.

    Inserted and updated rows are read from `current_url` now (their current content) and upserted; deleted rows are
    deleted; sequences are moved up. With `snapshot_url`, any key about to change whose destination row differs from
    the snapshot's raises `DeltaConflict` (naming tables and keys) before anything is written. An empty delta is a
    no-op (no connection is made). On any error the destination is left exactly as it was.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    started = time.monotonic()
    result = ApplyResult()
    if delta.is_empty:
        return result
    cur_t, dst_t = PgTarget.from_url(current_url), PgTarget.from_url(destination_url)
    snap_t = PgTarget.from_url(snapshot_url) if snapshot_url is not None else None
    targets = [t for t in (cur_t, dst_t, snap_t) if t is not None]
    step = "reading the catalogs"
    try:
        async with contextlib.AsyncExitStack() as stack:
            current = await stack.enter_async_context(_connection(cur_t))
            dest = await stack.enter_async_context(_connection(dst_t))
            snap = await stack.enter_async_context(_connection(snap_t)) if snap_t is not None else None
            await stack.enter_async_context(current.transaction(isolation="repeatable_read", readonly=True))
            if snap is not None:
                await stack.enter_async_context(snap.transaction(isolation="repeatable_read", readonly=True))
            async with dest.transaction():
                await dest.execute("SET CONSTRAINTS ALL DEFERRED")  # only affects deferrable constraints
                cur_info, dst_info = await _catalog(current), await _catalog(dest)
                names = list(delta.tables)
                gone = [name for name in names if name not in cur_info]
                if gone:
                    raise DeltaError(f"tables missing on the current side: {', '.join(gone)}")
                _check_shapes(names, cur_info, dst_info, "destination")
                for name in names:
                    expected = [c.name for c in cur_info[name].key]
                    if not cur_info[name].key or delta.tables[name].key_columns != expected:
                        raise DeltaError(f"{name}: the delta's key columns are not the table's primary key")
                changed = [name for name in names if delta.tables[name].total]

                if snap is not None:
                    step = "checking the destination against the snapshot"
                    snap_info = await _catalog(snap)
                    _check_shapes(changed, cur_info, snap_info, "snapshot")
                    conflicts: dict[str, list[Key]] = {}
                    for name in changed:
                        found = await _find_conflicts(dest, snap, cur_info[name], delta.tables[name], batch)
                        if found:
                            conflicts[name] = found
                    if conflicts:
                        raise DeltaConflict(conflicts)

                for name in changed:
                    td = delta.tables[name]
                    step = f"checking {name} on the current side"
                    back = await _existing_keys(current, cur_info[name], td.deleted, batch)
                    if back:
                        raise DeltaError(
                            f"{name}: rows the delta deletes exist again on the current side ({_format_keys(back)});"
                            " it changed after the delta was computed — compute it again"
                        )

                edges = [(str(r["child"]), str(r["parent"])) for r in await dest.fetch(_FOREIGN_KEYS_SQL)]
                referenced = {parent for _child, parent in edges}
                order = _dependency_order(changed, edges)
                counts = {name: TableCounts() for name in order}

                for name in order:  # leaves first: their deletes cannot cascade and free unique values
                    if name not in referenced and delta.tables[name].deleted:
                        step = f"deleting from {name}"
                        counts[name].deleted += await _delete(dest, cur_info[name], delta.tables[name].deleted, batch)
                for n, name in enumerate(order):
                    td = delta.tables[name]
                    if td.inserted or td.updated:
                        step = f"upserting into {name}"
                        inserted, updated = await _upsert(current, dest, cur_info[name], td, batch, n)
                        counts[name].inserted += inserted
                        counts[name].updated += updated
                for name in reversed(order):
                    if name in referenced and delta.tables[name].deleted:
                        step = f"deleting from {name}"
                        counts[name].deleted += await _delete(dest, cur_info[name], delta.tables[name].deleted, batch)

                step = "moving the sequences"
                result.sequences = await _align_sequences(current, dest, dst_info, names)
                result.tables = counts
                step = "committing"
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        outcome = "the commit may not have happened" if step == "committing" else "nothing was committed"
        raise DeltaError(
            f"applying the delta to {mask_url(dst_t.url)} failed while {step}; {outcome}: "
            f"{_scrub(targets, str(exc) or type(exc).__name__)}"
        ) from None
    result.elapsed = time.monotonic() - started
    return result


__all__ = [
    "DEFAULT_EXCLUDE",
    "ApplyResult",
    "Delta",
    "DeltaConflict",
    "DeltaError",
    "Key",
    "NoPrimaryKey",
    "TableCounts",
    "TableDelta",
    "apply_delta",
    "compute_delta",
]
