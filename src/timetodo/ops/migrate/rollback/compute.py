"""`compute_delta(current, snapshot)`: the rows the current database inserted, updated and deleted since the snapshot,
found by merge-joining (primary key, row hash) streams ordered by key (see `rollback.delta`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable

import asyncpg

from timetodo.ops.adapters.postgres import PgTarget, list_tables, mask_url
from timetodo.ops.migrate.rollback.delta import (
    CURSOR_BATCH,
    DEFAULT_EXCLUDE,
    Delta,
    DeltaError,
    Key,
    NoPrimaryKey,
    TableDelta,
    TableInfo,
    check_shapes,
    record_key,
    scrub,
    table_infos,
    text_connection,
)


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
        key = record_key(row, width)
        if previous is not None and not previous < key:
            raise DeltaError(
                f"{info.name} on the {where}: keys are not in a strictly increasing order "
                f"({list(previous)} then {list(key)}); cannot merge"
            )
        previous = key
        yield key, str(row[width])


async def diff_table(
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


TableComparer = Callable[[asyncpg.Connection, asyncpg.Connection, TableInfo, int], Awaitable[TableDelta]]
"""How one table's delta is found: (current connection, snapshot connection, the table, cursor batch)."""


async def compute_delta(
    current_url: str,
    snapshot_url: str,
    *,
    tables: list[str] | None = None,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    batch: int = CURSOR_BATCH,
    compare: TableComparer = diff_table,
) -> Delta:
    """Rows inserted, updated and deleted in `current_url` relative to `snapshot_url`, by primary key.

    Every table of schema public except `exclude` (or exactly `tables`). Both sides are read in one repeatable-read
    snapshot each; each table's delta by `compare` (the merge of every row by default; `since` passes a faster
    one). Raises `NoPrimaryKey` (naming them) for tables without a primary key, `DeltaError` when the two schemas
    differ, `PgUnreachable` when a side cannot be reached.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    started = time.monotonic()
    cur_t, snap_t = PgTarget.from_url(current_url), PgTarget.from_url(snapshot_url)
    step = "reading the catalogs"
    try:
        async with (
            text_connection(cur_t) as current,
            text_connection(snap_t) as snapshot,
            current.transaction(isolation="repeatable_read", readonly=True),
            snapshot.transaction(isolation="repeatable_read", readonly=True),
        ):
            cur_info, snap_info = await table_infos(current), await table_infos(snapshot)
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
            check_shapes(names, cur_info, snap_info, "snapshot")
            mismatched = [n for n in names if cur_info[n].key != snap_info[n].key]
            if mismatched:
                raise DeltaError(f"primary keys differ on the snapshot for: {', '.join(mismatched)}")
            delta = Delta()
            for name in names:
                step = f"comparing {name}"
                delta.tables[name] = await compare(current, snapshot, cur_info[name], batch)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise DeltaError(
            f"computing the delta of {mask_url(cur_t.url)} against {mask_url(snap_t.url)} failed while {step}: "
            f"{scrub((cur_t, snap_t), str(exc))}"
        ) from None
    delta.elapsed = time.monotonic() - started
    return delta
