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
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters.postgres import PgError, PgTarget, connect, quote_ident

Key = tuple[int | str, ...]
"""A primary key: one value per key column; integers as int, every other type as its PostgreSQL text."""

DEFAULT_EXCLUDE = ("alembic_version",)
CURSOR_BATCH = 2000
INT_TYPES = frozenset({20, 21, 23})  # int8, int2, int4: ordered natively, kept as int
_LIST_LIMIT = 20


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
        parts = [f"{table} {format_keys(keys)}" for table, keys in sorted(conflicts.items())]
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
        return ", ".join(f"{alias}.{c.q}" if c.typid in INT_TYPES else f"{alias}.{c.q}::text" for c in self.key)

    def key_order(self, alias: str = "t") -> str:
        return ", ".join(
            f"{alias}.{c.q}" if c.typid in INT_TYPES else f'{alias}.{c.q}::text COLLATE "C"' for c in self.key
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


def key_arrays(keys: Sequence[Key], width: int) -> list[list[str]]:
    arrays: list[list[str]] = [[] for _ in range(width)]
    for key in keys:
        if len(key) != width:
            raise DeltaError(f"a key of {len(key)} values for a primary key of {width} columns: {list(key)}")
        for i, value in enumerate(key):
            arrays[i].append(str(value))
    return arrays


def record_key(row: Any, width: int) -> Key:
    return tuple(row[i] for i in range(width))


def format_keys(keys: Sequence[Key]) -> str:
    shown = [k[0] if len(k) == 1 else list(k) for k in keys[:_LIST_LIMIT]]
    more = f" and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else ""
    return f"keys {json.dumps(shown, ensure_ascii=False)}{more}"


def chunks(items: Sequence[Key], size: int) -> Iterator[Sequence[Key]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def table_infos(conn: asyncpg.Connection) -> dict[str, TableInfo]:
    keys = await pg.primary_keys(conn)
    infos: dict[str, TableInfo] = {}
    for name, cols in (await pg.columns(conn)).items():
        own = tuple(Column(c.name, c.type, c.typid, c.generated) for c in cols)
        by_name = {c.name: c for c in own}
        infos[name] = TableInfo(name, own, tuple(by_name[c] for c in keys.get(name, [])))
    return infos


@contextlib.asynccontextmanager
async def text_connection(target: PgTarget) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(target)
    try:
        await pg.fix_text_output(conn)
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


def scrub(targets: Iterable[PgTarget], text: str) -> str:
    for target in targets:
        text = target.scrub(text)
    return text


def check_shapes(tables: Iterable[str], left: dict[str, TableInfo], right: dict[str, TableInfo], side: str) -> None:
    missing = [name for name in tables if name not in right]
    if missing:
        raise DeltaError(f"tables missing on the {side}: {', '.join(missing)} (the schemas differ)")
    differing = [name for name in tables if left[name].shape() != right[name].shape()]
    if differing:
        raise DeltaError(f"columns differ on the {side} for: {', '.join(differing)} (the schemas differ)")
