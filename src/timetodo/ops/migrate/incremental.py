"""The `delta` strategy's copy: after a first full copy, make the target equal to the source again by moving only
what differs — database chunks (see `adapters.postgres.chunks`), Redis keys, uploads — side by side.

Guarantees:

- **Exact when the source is frozen.** `delta_pass` hashes every chunk of every table on both sides (each side in one
  snapshot, in parallel), compares the rows of the chunks whose hashes differ by primary key, and carries the
  inserted, updated and deleted rows to the target in one transaction (`rollback.apply_delta`: deletes that cannot
  cascade first, upserts parents first, the other deletes children first — a row deleted on the target is always
  one the source no longer has, so `ON DELETE CASCADE` removes only rows the source lost too). Tables without a
  primary key are replaced whole when their hash differs; then every sequence takes the source's exact state. With
  `verify`, the copied chunks are hashed again on the target and must equal the source's: the pass returns the
  problems it found (none when the databases are equal).
- **Harmless when the source is live** (`live`: the pre-pass before the freeze): a row changing under the pass
  makes it stop with nothing of its transaction committed, or copy a state the next pass corrects; the in-freeze
  pass is what makes the target exact.
- **Only what can have changed is hashed again.** The pre-pass records a `Baseline`: the chunk hashes of both sides
  and each snapshot's xmin horizon and identity — the target's taken again after the pre-pass has written to it
  (re-hashing just the chunks it wrote, before the freeze). The in-freeze pass then re-hashes, on each side, only
  the chunks holding a row version written since its horizon or whose row count changed (`chunks.rehash_changed`,
  which proves it never misses a change; a large table's scan split by heap block ranges over `parallel_jobs`
  connections), and takes the baseline's hashes for the others: the freeze costs a scan without row text on the
  source, not a hashing pass. The target is checked the same way — its app is kept from writing, but the pass does
  not rely on it: its scan is skipped only when its snapshot has the baseline's identity, which proves nothing was
  written to it since (`chunks.snapshot_identity`). Without a baseline matching the chunk specs, both sides are
  hashed whole.
- **Only rows that can differ are compared.** In a differing chunk whose hashes were equal on both sides in the
  baseline and whose target hash is still the baseline's (the target unchanged there), every source row not written
  since the source's horizon is a baseline row, hence on the target, equal. So only the source's rows written since
  (`age(xmin)`, exact after VACUUM FREEZE: the row keeps its xid) are read and looked up by key on the target
  (`rollback.since.hashes_by_key`), and the rows the source lost are found by counts: target rows outside those
  keys minus source rows outside them; a chunk that lost rows has its keys (no row text) compared
  (`_row_delta_since`). Any other differing chunk, or one whose counts do not add up, has all its rows compared.
- **The first copy is verified in full** (`verify_copy`, after sync's stream): every chunk of the target hashed
  and compared with the source's hashes the stream computed from the rows it sent — one definition of a chunk's
  hash (`chunks.ChunkHasher`) for the stream, the passes and their verification.
- **Redis: only the keys that changed** (`copy_keys`, shared with `logical`). Before it reads a key, the pre-pass
  starts a watch on the source (`redis_tracking.KeyWatch`: the server's key tracking names every key modified from
  then on), compares both sides key by key (`copy_redis_delta`), then digests every key of the target on its server
  (`record_keys`): the record of what the target holds. In the freeze the watch proves it received every change
  acknowledged before (a barrier through the same connection, tracking still on, no flush/SWAPDB/DEBUG/RESETSTAT,
  same server) and only the keys it names are made equal on the target (`copy_redis_keys`): a key it does not name
  was not modified since before the pre-pass read it, so the target holds it as the source does. Where the watch
  cannot prove that (refused, lost — the reason is in the result — or a run resumed in a new process), the source
  alone is scanned on its server against the record (`copy_redis_since`: no argument per key, cursor ranges side
  by side). Either way the keys the pass touched are noted; a rollback compares the target with the record minus
  those keys. The target's Redis is written by nothing else meanwhile: its app is held (maintenance), and writes
  Redis only when serving clients, which reach it only after the switch; validation then compares every key of
  both sides. Without a record (a lost work directory, a Redis refusing the script), or in a second in-freeze pass
  (a resumed run), the key-by-key comparisons.
- **Uploads** (`data.copy_changed_files`): one listing of the source in the freeze, compared with the pre-pass's
  listings of both sides; only changed files travel (one hop).
- `app_state` (maintenance, forwarding) is deployment state: each side keeps its own.
- Idempotent: a pass killed at any point is simply run again (it compares; the baseline only says which chunks
  cannot have changed since it was taken, which stays true whatever was written after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters import redis_tracking
from timetodo.ops.adapters.postgres import PgTarget, chunks, mask_url
from timetodo.ops.migrate.data import copy_changed_files
from timetodo.ops.migrate.rollback.apply import apply_delta
from timetodo.ops.migrate.rollback.delta import (
    Delta,
    DeltaError,
    Key,
    TableDelta,
    TableInfo,
    check_shapes,
    record_key,
    scrub,
    table_infos,
    text_connection,
)
from timetodo.ops.migrate.rollback.since import hashes_by_key

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context

log = logging.getLogger("timetodo.ops.migrate")
EXCLUDE = ("app_state",)
"""Deployment state (maintenance flag, forwarding target): never carried from one side to the other."""


class SchemaDiffers(DeltaError):
    """The two databases do not have the same tables and columns: the delta cannot be used (the dump strategy can)."""


def map_path(ctx: Context) -> Path:
    return ctx.work_dir / "delta" / "chunks.json"


def baseline_path(ctx: Context) -> Path:
    return ctx.work_dir / "delta" / "baseline.json"


def digests_path(ctx: Context) -> Path:
    """The Redis key digests the pre-pass recorded (what the target holds since)."""
    return ctx.work_dir / "delta" / "redis-digests.json"


def specs_digest(specs: dict[str, chunks.ChunkSpec]) -> str:
    text = json.dumps({name: spec.to_dict() for name, spec in sorted(specs.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _hashes_to_json(hashes: dict[str, chunks.TableHashes]) -> dict[str, dict[str, list[int]]]:
    return {table: {str(n): [rows, h] for n, (rows, h) in found.items()} for table, found in hashes.items()}


def _hashes_from_json(data: dict[str, dict[str, list[int]]]) -> dict[str, chunks.TableHashes]:
    return {table: {int(n): (int(v[0]), int(v[1])) for n, v in found.items()} for table, found in data.items()}


@dataclass
class Baseline:
    """The chunk hashes of both sides as a pass found them, each with its snapshot's xmin horizon, for the chunk
    specs of digest `specs`."""

    specs: str
    source: dict[str, chunks.TableHashes]
    source_horizon: int
    target: dict[str, chunks.TableHashes]
    target_horizon: int
    source_oids: dict[str, int]
    target_oids: dict[str, int]
    source_snapshot: str = ""
    target_snapshot: str = ""
    """Each side's snapshot identity (`chunks.snapshot_identity`): unchanged later means nothing to scan."""

    @classmethod
    def of(cls, specs: str, source: chunks.Hashed, target: chunks.Hashed) -> Baseline:
        return cls(
            specs,
            source.hashes,
            source.horizon,
            target.hashes,
            target.horizon,
            source.oids,
            target.oids,
            source.snapshot,
            target.snapshot,
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        data = {
            "specs": self.specs,
            "source": _hashes_to_json(self.source),
            "source_horizon": self.source_horizon,
            "target": _hashes_to_json(self.target),
            "target_horizon": self.target_horizon,
            "source_oids": self.source_oids,
            "target_oids": self.target_oids,
            "source_snapshot": self.source_snapshot,
            "target_snapshot": self.target_snapshot,
        }
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Baseline | None:
        """The saved baseline; None when there is none or it cannot be read (the pass then hashes everything)."""
        try:
            data = json.loads(path.read_text())
            return cls(
                specs=str(data["specs"]),
                source=_hashes_from_json(data["source"]),
                source_horizon=int(data["source_horizon"]),
                target=_hashes_from_json(data["target"]),
                target_horizon=int(data["target_horizon"]),
                source_oids={str(k): int(v) for k, v in data["source_oids"].items()},
                target_oids={str(k): int(v) for k, v in data["target_oids"].items()},
                source_snapshot=str(data.get("source_snapshot", "")),
                target_snapshot=str(data.get("target_snapshot", "")),
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None


def save_specs(path: Path, specs: dict[str, chunks.ChunkSpec]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({name: spec.to_dict() for name, spec in specs.items()}))
    tmp.replace(path)


def load_specs(path: Path) -> dict[str, chunks.ChunkSpec] | None:
    if not path.exists():
        return None
    return {name: chunks.ChunkSpec.from_dict(data) for name, data in json.loads(path.read_text()).items()}


async def plan_specs(source_url: str) -> dict[str, chunks.ChunkSpec]:
    """The chunk spec of every table of the source (boundaries from its keys now)."""
    async with text_connection(PgTarget.from_url(source_url)) as conn:
        return await chunks.plan_tables(conn, exclude=EXCLUDE)


async def _rows_of(
    conn: asyncpg.Connection, info: TableInfo, spec: chunks.ChunkSpec, wanted: list[int]
) -> dict[Key, str]:
    """Key → row hash of every row of chunks `wanted`, read by key ranges (`chunks.MAX_RANGE_FILTERS` at a time:
    index range scans, never the whole table)."""
    width = len(info.key)
    found: dict[Key, str] = {}
    for first in range(0, len(wanted), chunks.MAX_RANGE_FILTERS):
        where, args = chunks.chunk_filter(spec, wanted[first : first + chunks.MAX_RANGE_FILTERS])
        sql = f"SELECT {info.key_select()}, {info.row_hash()} FROM {info.qname} AS t WHERE {where}"  # noqa: S608
        found.update((record_key(row, width), str(row[width])) for row in await conn.fetch(sql, *args))
    return found


async def _row_delta(
    source: asyncpg.Connection, target: asyncpg.Connection, info: TableInfo, spec: chunks.ChunkSpec, wanted: list[int]
) -> TableDelta:
    """The rows of chunks `wanted` the target must insert, update and delete to equal the source's."""
    ours, theirs = await asyncio.gather(_rows_of(source, info, spec, wanted), _rows_of(target, info, spec, wanted))
    delta = TableDelta(key_columns=[c.name for c in info.key], rows_current=len(ours), rows_snapshot=len(theirs))
    for key in sorted(ours, key=repr):
        if key not in theirs:
            delta.inserted.append(key)
        elif ours[key] != theirs[key]:
            delta.updated.append(key)
    delta.deleted = sorted((key for key in theirs if key not in ours), key=repr)
    return delta


async def _fresh_rows(
    conn: asyncpg.Connection, info: TableInfo, spec: chunks.ChunkSpec, wanted: list[int], horizon: int
) -> dict[Key, tuple[str, int]]:
    """Key → row hash of the rows of chunks `wanted` written by a transaction ≥ `horizon` (64-bit; `age()` of the row
    and of the horizon in one statement, as `chunks.rehash_changed` decides it)."""
    width = len(info.key)
    found: dict[Key, tuple[str, int]] = {}
    for first in range(0, len(wanted), chunks.MAX_RANGE_FILTERS):
        where, args = chunks.chunk_filter(spec, wanted[first : first + chunks.MAX_RANGE_FILTERS], first_param=3)
        sql = (
            f"SELECT {info.key_select()}, {info.row_hash()}, {spec.bucket('t', 1)} FROM {info.qname} AS t "  # noqa: S608
            f"WHERE ({where}) AND age(t.xmin) <= age($2::text::xid)"
        )
        rows = await conn.fetch(sql, list(spec.bounds), str(horizon % (1 << 32)), *args)
        found.update((record_key(row, width), (str(row[width]), int(row[width + 1]))) for row in rows)
    return found


async def _chunk_rows(conn: asyncpg.Connection, spec: chunks.ChunkSpec, wanted: list[int]) -> dict[int, int]:
    """Rows per chunk of `wanted` (a count by index range, no row text)."""
    found: dict[int, int] = {}
    for first in range(0, len(wanted), chunks.MAX_RANGE_FILTERS):
        where, args = chunks.chunk_filter(spec, wanted[first : first + chunks.MAX_RANGE_FILTERS], first_param=2)
        sql = f"SELECT {spec.bucket('t', 1)} AS c, count(*) AS n FROM {spec.qname} AS t WHERE {where} GROUP BY 1"  # noqa: S608
        found.update((int(r["c"]), int(r["n"])) for r in await conn.fetch(sql, list(spec.bounds), *args))
    return found


async def _keys_of(conn: asyncpg.Connection, info: TableInfo, spec: chunks.ChunkSpec, wanted: list[int]) -> set[Key]:
    width = len(info.key)
    found: set[Key] = set()
    for first in range(0, len(wanted), chunks.MAX_RANGE_FILTERS):
        where, args = chunks.chunk_filter(spec, wanted[first : first + chunks.MAX_RANGE_FILTERS])
        sql = f"SELECT {info.key_select()} FROM {info.qname} AS t WHERE {where}"  # noqa: S608
        found.update(record_key(row, width) for row in await conn.fetch(sql, *args))
    return found


async def _row_delta_since(
    source: asyncpg.Connection,
    target: asyncpg.Connection,
    info: TableInfo,
    spec: chunks.ChunkSpec,
    wanted: list[int],
    horizon: int,
    target_rows: dict[int, int],
) -> tuple[TableDelta, list[int]]:
    """The delta of chunks `wanted` whose target content is the source's as of the baseline (the target's chunk hash
    now = its baseline hash = the source's baseline hash, taken in a snapshot of xmin `horizon`), reading only the rows
    that can differ: every source row not written since the horizon is a baseline row, so it is on the target too,
    equal. So the candidates are the source's rows written since (looked up by key on the target: absent → insert,
    another hash → update) and the target's rows the source lost: per chunk, target rows outside the candidates' keys
    minus source rows outside them; a chunk that lost rows has its keys (no row text) compared on both sides.
    Also the chunks that did not add up (a source row older than the horizon the target lacks) — compared in full."""
    fresh = await _fresh_rows(source, info, spec, wanted, horizon)
    src_rows = await _chunk_rows(source, spec, wanted)
    there: dict[Key, str] = {}
    keys = list(fresh)
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        there.update(await hashes_by_key(target, info, part))
    delta = TableDelta(key_columns=[c.name for c in info.key])
    for key in sorted(fresh, key=repr):
        if key not in there:
            delta.inserted.append(key)
        elif there[key] != fresh[key][0]:
            delta.updated.append(key)
    in_chunk: dict[int, tuple[int, int]] = {}  # per chunk: (fresh source rows, of their keys on the target)
    for key, (_, n) in fresh.items():
        a, b = in_chunk.get(n, (0, 0))
        in_chunk[n] = (a + 1, b + (key in there))
    lost: list[int] = []
    full: list[int] = []
    for n in wanted:
        src_fresh, on_target = in_chunk.get(n, (0, 0))
        missing = (target_rows.get(n, 0) - on_target) - (src_rows.get(n, 0) - src_fresh)
        if missing > 0:
            lost.append(n)
        elif missing < 0:
            full.append(n)
    if lost:
        ours, theirs = await asyncio.gather(_keys_of(source, info, spec, lost), _keys_of(target, info, spec, lost))
        delta.deleted = sorted(theirs - ours, key=repr)
    return delta, full


def _since_baseline(
    name: str,
    found: list[int],
    baseline: Baseline | None,
    source: chunks.Hashed,
    target: dict[str, chunks.TableHashes],
) -> list[int]:
    """The chunks of `found` whose rows can be compared by `_row_delta_since`: the source's and the target's hashes
    were equal in the baseline and the target's is still that one, on the same tables (oids), with a horizon that is
    a recent past xid of the source."""
    if baseline is None or not baseline.source_horizon <= source.horizon < baseline.source_horizon + XID_SAFE:
        return []
    if baseline.source_oids.get(name) != source.oids.get(name) or name not in baseline.source:
        return []
    was_src, was_dst, now_dst = baseline.source[name], baseline.target.get(name, {}), target[name]
    empty = chunks.EMPTY
    return [n for n in found if was_src.get(n, empty) == was_dst.get(n, empty) == now_dst.get(n, empty)]


XID_SAFE = chunks.XID_SAFE_DISTANCE


def _merged(info: TableInfo, parts: list[TableDelta]) -> TableDelta:
    out = TableDelta(key_columns=[c.name for c in info.key])
    for part in parts:
        out.inserted += part.inserted
        out.updated += part.updated
        out.deleted += part.deleted
        out.rows_current += part.rows_current
        out.rows_snapshot += part.rows_snapshot
    out.inserted.sort(key=repr)
    out.updated.sort(key=repr)
    out.deleted.sort(key=repr)
    return out


async def delta_pass(
    source_url: str,
    target_url: str,
    specs: dict[str, chunks.ChunkSpec],
    *,
    jobs: int = 2,
    verify: bool = False,
    baseline: Baseline | None = None,
    record: Callable[[Baseline], None] | None = None,
) -> dict[str, Any]:
    """Make the target's database equal to the source's by copying only the differing chunks (see the module
    docstring). Returns what it compared, moved and how long each part took; `problems` when `verify` found any.
    `baseline`: hashes of both sides from an earlier pass over the same specs — only chunks that can have changed
    since are hashed again; `record`: called with this pass's hashes of both sides (before anything is copied)."""
    started = time.monotonic()
    src_t, dst_t = PgTarget.from_url(source_url), PgTarget.from_url(target_url)
    async with text_connection(src_t) as src, text_connection(dst_t) as dst:
        src_info, dst_info = await table_infos(src), await table_infos(dst)
        names = [name for name in src_info if name not in EXCLUDE]
        try:
            check_shapes(names, src_info, dst_info, "target")
        except DeltaError as exc:
            raise SchemaDiffers(str(exc)) from None
        extra = sorted(set(dst_info) - set(src_info) - set(EXCLUDE))
        if extra:
            raise SchemaDiffers(f"tables only on the target: {', '.join(extra)}")
    missing = [name for name in names if name not in specs]
    specs = {**specs, **{name: spec for name, spec in (await plan_specs(source_url)).items() if name in missing}}
    wanted = [specs[name] for name in names]
    digest = specs_digest(specs)
    rehashed: dict[str, int] | None = None
    scanned: dict[str, bool] = {}
    if baseline is not None and baseline.specs == digest:
        src_hashed, dst_hashed = await asyncio.gather(
            chunks.rehash_changed(
                src_t,
                wanted,
                baseline.source,
                baseline.source_horizon,
                jobs,
                oids=baseline.source_oids,
                snapshot=baseline.source_snapshot,
            ),
            chunks.rehash_changed(
                dst_t,
                wanted,
                baseline.target,
                baseline.target_horizon,
                jobs,
                oids=baseline.target_oids,
                snapshot=baseline.target_snapshot,
            ),
        )
        rehashed = {"source": src_hashed.rehashed, "target": dst_hashed.rehashed}
        scanned = {"source": src_hashed.scanned, "target": dst_hashed.scanned}
    else:
        src_hashed, dst_hashed = await asyncio.gather(
            chunks.hash_tables_at(src_t, wanted, jobs), chunks.hash_tables_at(dst_t, wanted, jobs)
        )
    ours, theirs = src_hashed.hashes, dst_hashed.hashes
    if record is not None:
        record(Baseline.of(digest, src_hashed, dst_hashed))
    hashed = time.monotonic()
    differing = {name: chunks.differing(ours[name], theirs[name]) for name in names}
    differing = {name: found for name, found in differing.items() if found}
    delta = Delta()
    whole: list[str] = []
    step = "comparing rows"
    rows_since = chunks_since = 0
    try:
        async with (
            text_connection(src_t) as src,
            text_connection(dst_t) as dst,
            src.transaction(isolation="repeatable_read", readonly=True),
            dst.transaction(isolation="repeatable_read", readonly=True),
        ):
            for name, found in differing.items():
                if specs[name].column is None or not src_info[name].key:
                    whole.append(name)
                    continue
                info, spec = src_info[name], specs[name]
                since = _since_baseline(name, found, baseline if rehashed is not None else None, src_hashed, theirs)
                parts: list[TableDelta] = []
                if since:
                    target_rows = {n: theirs[name].get(n, chunks.EMPTY)[0] for n in since}
                    assert baseline is not None
                    fast, full = await _row_delta_since(
                        src, dst, info, spec, since, baseline.source_horizon, target_rows
                    )
                    parts.append(fast)
                    rows_since += fast.total
                    chunks_since += len(since) - len(full)
                    found = sorted({*(n for n in found if n not in since), *full})
                if found:
                    parts.append(await _row_delta(src, dst, info, spec, found))
                delta.tables[name] = _merged(info, parts)
        compared = time.monotonic()
        step = "applying the rows"
        applied = await apply_delta(delta, source_url, target_url)
        apply_ended = time.monotonic()
        step = "copying whole tables and sequences"
        whole_rows: dict[str, int] = {}
        async with text_connection(src_t) as src, text_connection(dst_t) as dst:
            async with src.transaction(isolation="repeatable_read", readonly=True), dst.transaction():
                for name in whole:
                    whole_rows[name] = await chunks.copy_table(src, dst, name)
                sequences = await chunks.copy_sequences(src, dst)
            problems: list[str] = []
            if record is not None and differing:
                # the target as this pass left it, recorded for the next pass: only the chunks it wrote (and any
                # other write since) are hashed again — outside the freeze — so that when nothing writes to the
                # target afterwards, the next pass finds its snapshot unchanged and scans nothing there
                try:  # not needed for correctness: on failure the baseline recorded above stays (a target scan)
                    after = await chunks.rehash_changed(
                        dst_t,
                        wanted,
                        theirs,
                        dst_hashed.horizon,
                        jobs,
                        oids=dst_hashed.oids,
                        snapshot=dst_hashed.snapshot,
                    )
                    record(Baseline.of(digest, src_hashed, after))
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    log.warning(f"the target's hashes were not recorded again: {scrub((src_t, dst_t), str(exc))}")
            if verify:
                step = "verifying the copied chunks"
                for name, found in differing.items():
                    now = await chunks.hash_table(dst, specs[name], found)
                    expected = {n: ours[name][n] for n in found if n in ours[name]}
                    if now != expected:
                        problems.append(f"{name}: {len(chunks.differing(now, expected))} chunks still differ")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise DeltaError(
            f"the delta copy to {mask_url(dst_t.url)} failed while {step}: {scrub((src_t, dst_t), str(exc))}"
        ) from None
    ended = time.monotonic()
    totals = applied.to_dict()["totals"]
    return {
        "strategy": "delta",
        "tables": len(names),
        "chunks": sum(specs[name].chunks for name in names),
        "chunks_copied": sum(len(found) for found in differing.values()),
        "rows": sum(totals.values()) + sum(whole_rows.values()),
        "rows_source": sum(n for table in ours.values() for n, _ in table.values()),
        **totals,
        "whole_tables": whole_rows,
        "sequences": len(sequences),
        "chunks_by_table": {name: len(found) for name, found in sorted(differing.items())},
        "hashing": "changed chunks only (xmin + row counts)" if rehashed is not None else "every chunk",
        **({"chunks_rehashed": rehashed} if rehashed is not None else {}),
        **({"scanned": scanned} if scanned else {}),
        "chunks_compared_since": chunks_since,
        "rows_compared_since": rows_since,
        "hash_seconds": round(hashed - started, 3),
        "compare_seconds": round(compared - hashed, 3),
        "apply_seconds": round(apply_ended - compared, 3),
        "after_apply_seconds": round(ended - apply_ended, 3),
        "seconds": round(ended - started, 3),
        "problems": problems,
    }


async def hash_both(source_url: str, target_url: str, specs: dict[str, chunks.ChunkSpec], jobs: int) -> dict[str, Any]:
    """One hashing pass of both sides (the chunk map after a copy that did not hash the source itself)."""
    started = time.monotonic()
    ours, theirs = await asyncio.gather(
        chunks.hash_tables(PgTarget.from_url(source_url), specs.values(), jobs),
        chunks.hash_tables(PgTarget.from_url(target_url), specs.values(), jobs),
    )
    return {
        "tables": len(specs),
        "chunks": sum(spec.chunks for spec in specs.values()),
        "chunks_differing": sum(len(chunks.differing(ours[n], theirs[n])) for n in specs),
        "hash_seconds": round(time.monotonic() - started, 3),
    }


async def verify_copy(
    target_url: str, specs: dict[str, chunks.ChunkSpec], source: chunks.Hashed, jobs: int
) -> dict[str, Any]:
    """The streamed copy checked in full: every chunk of the target hashed (`jobs` connections, one snapshot) and
    compared with the source's hashes the stream computed from the rows it sent (`adapters.postgres.stream`) —
    the same definition of a chunk's hash on both sides, every row's content included."""
    started = time.monotonic()
    wanted = {name: spec for name, spec in specs.items() if name not in EXCLUDE}
    target = await chunks.hash_tables_at(PgTarget.from_url(target_url), wanted.values(), jobs)
    differing = {n: chunks.differing(source.hashes.get(n, {}), target.hashes[n]) for n in wanted}
    return {
        "tables": len(wanted),
        "chunks": sum(spec.chunks for spec in wanted.values()),
        "chunks_differing": sum(len(found) for found in differing.values()),
        "tables_differing": sorted(n for n, found in differing.items() if found),
        "hash_seconds": round(time.monotonic() - started, 3),
        "hashed": "target only (the source's hashes came with the stream)",
    }


def stream_hashes_path(ctx: Context) -> Path:
    """The source's chunk hashes the sync stream computed, with the chunk map they belong to."""
    return ctx.work_dir / "delta" / "stream-source.json"


def save_stream_hashes(ctx: Context, specs: dict[str, chunks.ChunkSpec], source: chunks.Hashed) -> None:
    """What the stream of sync found on the source, kept for `chunk_map` (which runs after the target's upgrade)."""
    specs = {name: spec for name, spec in specs.items() if name not in EXCLUDE}
    save_specs(map_path(ctx), specs)
    path = stream_hashes_path(ctx)
    tmp = path.with_suffix(".tmp")
    data = {"specs": specs_digest(specs), "hashes": _hashes_to_json(source.hashes), "horizon": source.horizon}
    tmp.write_text(json.dumps({**data, "snapshot": source.snapshot, "oids": source.oids}))
    tmp.replace(path)


def load_stream_hashes(ctx: Context) -> tuple[dict[str, chunks.ChunkSpec], chunks.Hashed] | None:
    specs = load_specs(map_path(ctx))
    try:
        data = json.loads(stream_hashes_path(ctx).read_text())
        if specs is None or data["specs"] != specs_digest(specs):
            return None
        found = _hashes_from_json(data["hashes"])
        return specs, chunks.Hashed(found, int(data["horizon"]), str(data["snapshot"]), dict(data["oids"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def copy_delta(ctx: Context, label: str, *, live: bool) -> dict[str, Any]:
    """Database (chunks), Redis (changed keys) and uploads (rsync) from the source onto the target, side by side;
    the target's app is stopped meanwhile. `live`: the source still takes writes (the pre-pass)."""
    target_db = await ctx.target_db_url()
    jobs = ctx.config.parallel_jobs
    started = time.monotonic()
    specs = load_specs(map_path(ctx))
    if specs is None or live:
        # before the freeze the boundaries are planned again from the source's keys (an index-only scan per
        # table), so tables that grew since sync keep chunks of about ROWS_PER_CHUNK rows; the freeze reuses them
        specs = await plan_specs(ctx.secrets.source_database_url)
        save_specs(map_path(ctx), specs)

    # the pre-pass hashes both sides whole and records that as the baseline; the in-freeze pass re-hashes only the
    # chunks changed since (a missing or unreadable baseline: both sides whole again)
    baseline = None if live else Baseline.load(baseline_path(ctx))

    def record(found: Baseline) -> None:
        found.save(baseline_path(ctx))

    async def database() -> dict[str, Any]:
        what = "hash both sides" if baseline is None else "re-hash the chunks changed since the pre-pass"
        async with ctx.activity(f"{label}: database chunks ({what}, copy what differs)"):
            try:
                return await delta_pass(
                    ctx.secrets.source_database_url,
                    target_db,
                    specs,
                    jobs=jobs,
                    verify=not live,
                    baseline=baseline,
                    record=record if live else None,
                )
            except SchemaDiffers:
                raise
            except DeltaError as exc:
                if not live:
                    raise
                # the source changed under the pass: nothing of it was committed; the in-freeze pass copies it
                log.warning(f"{label}: database pre-pass abandoned: {exc}")
                return {"strategy": "delta", "abandoned": str(exc)}

    db, redis_result, files = await asyncio.gather(
        database(), copy_keys(ctx, label, live=live), copy_changed_files(ctx, live=live)
    )
    return {"db": db, "redis": redis_result, "files": files, "wall_seconds": round(time.monotonic() - started, 3)}


async def chunk_map(ctx: Context) -> dict[str, Any]:
    """After the first copy (sync): the copy verified in full — the target hashed and compared with the source's
    hashes its stream computed (`verify_copy`); without them (a copy by dump), the chunks planned from the source
    and both sides hashed."""
    streamed = load_stream_hashes(ctx)
    if streamed is not None:
        async with ctx.activity("sync: chunk map (hash the target, compare with the stream's hashes)"):
            found = await verify_copy(await ctx.target_db_url(), *streamed, ctx.config.parallel_jobs)
        if found["chunks_differing"]:
            log.warning(f"sync: {found['chunks_differing']} chunks differ after the copy (the cutover copies them)")
        return found
    async with ctx.activity("sync: chunk map (hash both sides)"):
        specs = await plan_specs(ctx.secrets.source_database_url)
        save_specs(map_path(ctx), specs)
        with contextlib.suppress(DeltaError):
            return await hash_both(
                ctx.secrets.source_database_url, await ctx.target_db_url(), specs, ctx.config.parallel_jobs
            )
    return {"tables": len(specs)}


# ------------------------------------------------------------------------------------------------ Redis (delta, logical)


def record_path(ctx: Context) -> Path:
    """The digests of every key the target holds after the pre-pass (`redisops.record_keys` of the target)."""
    return ctx.work_dir / "delta" / "redis-record.bin"


def freeze_started_path(ctx: Context) -> Path:
    """Written before the in-freeze Redis pass: a second in-freeze pass (a resumed run) does not trust the record."""
    return ctx.work_dir / "delta" / "redis-freeze-started"


def freeze_touched_path(ctx: Context) -> Path:
    """The keys the in-freeze pass wrote or deleted on the target: the record minus these is what the target held at
    the switch (what a rollback compares the target with)."""
    return ctx.work_dir / "delta" / "redis-freeze-touched.bin"


def _save_keys(path: Path, keys: list[bytes]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(len(key).to_bytes(4, "big") + key for key in keys))
    tmp.replace(path)


def _load_keys(path: Path) -> set[bytes] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    keys: set[bytes] = set()
    at = 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        keys.add(data[at + 4 : at + 4 + size])
        at += 4 + size
    return keys


def cutover_record(ctx: Context) -> tuple[redisops.KeyRecord, list[bytes]] | None:
    """What the target's Redis held at the switch, digest by digest — the pre-pass record without the keys the
    in-freeze pass wrote or deleted — and those keys; None when that is not known (no record; the in-freeze pass
    fell back, or ran more than once)."""
    record = redisops.load_record(record_path(ctx))
    touched = _load_keys(freeze_touched_path(ctx))
    if record is None or touched is None:
        return None
    kept = [(d, k) for d, k in zip(record.digests, record.keys, strict=True) if k not in touched]
    return redisops.KeyRecord([d for d, _ in kept], [k for _, k in kept]), sorted(touched)


_WATCHES: dict[str, redis_tracking.KeyWatch] = {}
"""The key watch this process's pre-pass started, by work directory: the in-freeze pass asks it which keys changed (a
resumed run in a new process has none, and compares every key)."""


async def _watch_keys(ctx: Context, source_redis: str) -> dict[str, Any]:
    """Start watching which of the source's keys change (`redis_tracking.KeyWatch`), replacing an earlier watch."""
    old = _WATCHES.pop(str(ctx.work_dir), None)
    if old is not None:
        await old.close()
    try:
        _WATCHES[str(ctx.work_dir)] = await redis_tracking.KeyWatch.start(source_redis)
    except redis_tracking.WatchRefused as exc:
        log.info(f"no Redis key tracking on the source ({exc}): the freeze compares every key")
        return {"tracking": False, "tracking_refused": str(exc)}
    return {"tracking": True}


async def copy_keys(ctx: Context, label: str, *, live: bool) -> dict[str, Any]:
    """The Redis part of the `delta` and `logical` copies.

    `live` (the pre-pass, source still writable): a watch of the source's changed keys started, both sides compared
    key by key (`copy_redis_delta`), then the target — which nothing else writes — is digested on its server
    (`record_keys`): the record of what it holds. In the freeze: the keys the watch reports copied, or (no watch,
    or one that cannot prove it saw every change) only the source is scanned, on its server, and compared with that record (`copy_redis_since`:
    no argument per key, eight cursor ranges side by side); the keys it wrote or deleted are noted for a rollback.
    Falls back to the per-key comparisons (`copy_redis_changes`, then `copy_redis_delta`) where the source refuses
    the digest script (Redis < 7, scripting not allowed), and to both sides when an in-freeze pass already ran (a
    resumed run: keys it copied may have changed back since, which the record would not show)."""
    target_redis = await ctx.target_redis_url()
    source_redis = ctx.secrets.source_redis_url
    if not (source_redis and target_redis):
        return {}
    connections = ctx.config.parallel_jobs * 2
    started, touched = freeze_started_path(ctx), freeze_touched_path(ctx)
    if live:
        for path in (record_path(ctx), started, touched):
            await asyncio.to_thread(path.unlink, missing_ok=True)
        redisops.forget_record(record_path(ctx))
        watching = await _watch_keys(ctx, source_redis)  # before the pass reads a key
        old: redisops.KeyDigests = {}
        async with ctx.activity(f"{label}: Redis keys changed since the copy (SCAN + DUMP compare)") as progress:
            moved = await redisops.copy_redis_delta(
                source_redis, target_redis, connections=connections, progress=progress, record=old
            )
        await asyncio.to_thread(redisops.save_digests, digests_path(ctx), old)
        result = {**moved.to_dict(), **watching}
        try:
            async with ctx.activity(f"{label}: Redis digests of the target (what the freeze compares with)"):
                target_record = await redisops.record_keys(target_redis, connections=connections)
        except redisops.ScanScriptRefused as exc:
            log.info(f"{label}: no digest record of the target's Redis ({exc}); the freeze compares key by key")
            return result
        await asyncio.to_thread(redisops.save_record, record_path(ctx), target_record)
        return {**result, "recorded": len(target_record.digests)}
    resumed = started.exists()
    await asyncio.to_thread(touched.unlink, missing_ok=True)
    record = None if resumed else redisops.load_record(record_path(ctx))
    started.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(started.write_text, str(time.time()))
    watch = _WATCHES.pop(str(ctx.work_dir), None)
    lost = ""
    if watch is not None:
        try:
            if not resumed:
                names = await watch.changed()
                async with ctx.activity(f"{label}: {len(names)} Redis keys changed since the pre-pass (key tracking)"):
                    tracked = await redisops.copy_redis_keys(
                        source_redis, target_redis, names, connections=connections, method="key tracking"
                    )
                keys = (tracked.moved_keys or []) + (tracked.removed_keys or [])
                await asyncio.to_thread(_save_keys, touched, keys)
                return tracked.to_dict()
        except redis_tracking.WatchLost as exc:
            lost = str(exc)
            log.info(f"{label}: Redis key tracking cannot prove it saw every change ({lost}): every key is compared")
        finally:
            await watch.close()
    if record is not None:
        try:
            async with ctx.activity(f"{label}: Redis keys changed since the pre-pass (digests on the source)") as p:
                since = await redisops.copy_redis_since(
                    source_redis, target_redis, record, connections=connections, progress=p
                )
        except redisops.ScanScriptRefused as exc:
            log.info(f"{label}: the source refused the digest script ({exc}): key by key")
        else:
            await asyncio.to_thread(_save_keys, touched, (since.moved_keys or []) + (since.removed_keys or []))
            return {**since.to_dict(), **({"tracking_lost": lost} if lost else {})}
    recorded = None if resumed else await asyncio.to_thread(redisops.load_digests, digests_path(ctx))
    if recorded is not None:
        async with ctx.activity(f"{label}: Redis keys changed since the pre-pass (digests on the source)") as p:
            changes = await redisops.copy_redis_changes(
                source_redis, target_redis, recorded, connections=connections, progress=p
            )
        return changes.to_dict()
    async with ctx.activity(f"{label}: Redis keys changed since the copy (SCAN + DUMP compare)") as progress:
        both = await redisops.copy_redis_delta(source_redis, target_redis, connections=connections, progress=progress)
    return both.to_dict()
