"""`apply_delta(delta, current, destination, snapshot_url=…)`: carry a delta to the destination in one transaction,
refusing when the destination changed after the snapshot (see `rollback.delta` for the order and the guarantees).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg

from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters.postgres import PgTarget, mask_url, quote_ident
from timetodo.ops.migrate.rollback.delta import (
    INT_TYPES,
    ApplyResult,
    Delta,
    DeltaConflict,
    DeltaError,
    Key,
    TableCounts,
    TableDelta,
    TableInfo,
    check_shapes,
    chunks,
    format_keys,
    key_arrays,
    record_key,
    scrub,
    table_infos,
    text_connection,
)


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
    rows = await conn.fetch(sql, *key_arrays(keys, width))
    return {record_key(row, width): str(row[width]) for row in rows}


async def _find_conflicts(
    dest: asyncpg.Connection, snap: asyncpg.Connection, info: TableInfo, td: TableDelta, batch: int
) -> list[Key]:
    conflicts: list[Key] = []
    for chunk in chunks([*td.inserted, *td.updated, *td.deleted], batch):
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
    for chunk in chunks(keys, batch):
        found.extend(record_key(row, width) for row in await conn.fetch(sql, *key_arrays(chunk, width)))
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
        for chunk in chunks(group, batch):
            rows = await current.fetch(sql, *key_arrays(chunk, width))
            if len(rows) != len(chunk):
                seen = {tuple(row[len(cols) + i] for i in range(width)) for row in rows}
                gone = [key for key in chunk if key not in seen]
                raise DeltaError(
                    f"{info.name}: rows of the delta no longer exist on the current side ({format_keys(gone)}); "
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
    for chunk in chunks(keys, batch):
        status = await dest.execute(sql, *key_arrays(chunk, len(info.key)))
        deleted += int(str(status).rsplit(" ", 1)[-1])
    return deleted


async def _used_value(conn: asyncpg.Connection, sequence: str) -> int | None:
    row = await conn.fetchrow(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608
    return int(row["last_value"]) if row is not None and row["is_called"] else None


async def _align_sequences(
    current: asyncpg.Connection, dest: asyncpg.Connection, infos: dict[str, TableInfo], tables: Iterable[str]
) -> dict[str, int]:
    wanted = set(tables)
    theirs = {(s.table, s.column): s.qualified for s in await pg.owned_sequences(current)}
    moved: dict[str, int] = {}
    for owned in await pg.owned_sequences(dest):
        table, column, sequence = owned.table, owned.column, owned.qualified
        if table not in wanted:
            continue
        candidates: list[int] = []
        if (table, column) in theirs and (value := await _used_value(current, theirs[(table, column)])) is not None:
            candidates.append(value)
        col = next((c for c in infos[table].columns if c.name == column), None)
        if col is not None and col.typid in INT_TYPES:
            top = await dest.fetchval(f"SELECT max({col.q}) FROM public.{quote_ident(table)}")  # noqa: S608
            if top is not None:
                candidates.append(int(top))
        if not candidates:
            continue
        goal = max(candidates)
        # a column may hold values below its sequence's minimum (users.sync_version is 0 until an account writes):
        # the sequence then already lies above every value in use
        lowest = int(
            await dest.fetchval("SELECT seqmin FROM pg_sequence WHERE seqrelid = $1::text::regclass", sequence)
        )
        used = await _used_value(dest, sequence)
        if goal >= lowest and (used is None or goal > used):
            await dest.execute("SELECT setval($1::text::regclass, $2::bigint, true)", sequence, goal)
            moved[sequence] = goal
    return moved


class _Apply:
    """One application of a delta; `step` says what it was doing when something failed."""

    def __init__(self, delta: Delta, batch: int, current: asyncpg.Connection, dest: asyncpg.Connection) -> None:
        self.delta, self.batch, self.current, self.dest = delta, batch, current, dest
        self.step = "reading the catalogs"
        self.cur_info: dict[str, TableInfo] = {}
        self.dst_info: dict[str, TableInfo] = {}

    async def changed_tables(self) -> list[str]:
        """The delta's tables with changes, after checking both catalogs hold them with the delta's key columns."""
        self.cur_info, self.dst_info = await table_infos(self.current), await table_infos(self.dest)
        names = list(self.delta.tables)
        gone = [name for name in names if name not in self.cur_info]
        if gone:
            raise DeltaError(f"tables missing on the current side: {', '.join(gone)}")
        check_shapes(names, self.cur_info, self.dst_info, "destination")
        for name in names:
            expected = [c.name for c in self.cur_info[name].key]
            if not self.cur_info[name].key or self.delta.tables[name].key_columns != expected:
                raise DeltaError(f"{name}: the delta's key columns are not the table's primary key")
        return [name for name in names if self.delta.tables[name].total]

    async def check_snapshot(self, snap: asyncpg.Connection, changed: list[str]) -> None:
        """DeltaConflict when the destination changed after the snapshot for any key the delta touches."""
        self.step = "checking the destination against the snapshot"
        check_shapes(changed, self.cur_info, await table_infos(snap), "snapshot")
        conflicts: dict[str, list[Key]] = {}
        for name in changed:
            found = await _find_conflicts(self.dest, snap, self.cur_info[name], self.delta.tables[name], self.batch)
            if found:
                conflicts[name] = found
        if conflicts:
            raise DeltaConflict(conflicts)

    async def check_current(self, changed: list[str]) -> None:
        """Rows the delta deletes must still be gone on the current side (else the delta is stale)."""
        for name in changed:
            self.step = f"checking {name} on the current side"
            back = await _existing_keys(self.current, self.cur_info[name], self.delta.tables[name].deleted, self.batch)
            if back:
                raise DeltaError(
                    f"{name}: rows the delta deletes exist again on the current side ({format_keys(back)});"
                    " it changed after the delta was computed — compute it again"
                )

    async def _delete(self, name: str) -> int:
        self.step = f"deleting from {name}"
        return await _delete(self.dest, self.cur_info[name], self.delta.tables[name].deleted, self.batch)

    async def write(self, changed: list[str]) -> dict[str, TableCounts]:
        """Deletes in unreferenced tables, upserts parents first, the other deletes children first."""
        edges = await pg.foreign_keys(self.dest)
        referenced = {parent for _child, parent in edges}
        order = _dependency_order(changed, edges)
        counts = {name: TableCounts() for name in order}
        for name in order:  # leaves first: their deletes cannot cascade and free unique values
            if name not in referenced and self.delta.tables[name].deleted:
                counts[name].deleted += await self._delete(name)
        for n, name in enumerate(order):
            td = self.delta.tables[name]
            if td.inserted or td.updated:
                self.step = f"upserting into {name}"
                inserted, updated = await _upsert(self.current, self.dest, self.cur_info[name], td, self.batch, n)
                counts[name].inserted += inserted
                counts[name].updated += updated
        for name in reversed(order):
            if name in referenced and self.delta.tables[name].deleted:
                counts[name].deleted += await self._delete(name)
        return counts


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
    apply: _Apply | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            current = await stack.enter_async_context(text_connection(cur_t))
            dest = await stack.enter_async_context(text_connection(dst_t))
            snap = await stack.enter_async_context(text_connection(snap_t)) if snap_t is not None else None
            await stack.enter_async_context(current.transaction(isolation="repeatable_read", readonly=True))
            if snap is not None:
                await stack.enter_async_context(snap.transaction(isolation="repeatable_read", readonly=True))
            apply = _Apply(delta, batch, current, dest)
            async with dest.transaction():
                await dest.execute("SET CONSTRAINTS ALL DEFERRED")  # only affects deferrable constraints
                changed = await apply.changed_tables()
                if snap is not None:
                    await apply.check_snapshot(snap, changed)
                await apply.check_current(changed)
                result.tables = await apply.write(changed)
                apply.step = "moving the sequences"
                result.sequences = await _align_sequences(current, dest, apply.dst_info, list(delta.tables))
                apply.step = "committing"
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        step = apply.step if apply is not None else "reading the catalogs"
        outcome = "the commit may not have happened" if step == "committing" else "nothing was committed"
        raise DeltaError(
            f"applying the delta to {mask_url(dst_t.url)} failed while {step}; {outcome}: "
            f"{scrub(targets, str(exc) or type(exc).__name__)}"
        ) from None
    result.elapsed = time.monotonic() - started
    return result
