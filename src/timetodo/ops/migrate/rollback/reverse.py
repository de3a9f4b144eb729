"""`carry_back_stream`: the rollback of a `logical` migration from its reverse stream — the keys the target wrote
since the switch, read from the target's logical replication slot (`adapters.postgres.reverse`) — instead of
searching the target for them.

The stream names keys, not values: each named key's final state is read from the stopped target and compared with
the source (frozen since the switch): present on the target only → inserted, on both but different → updated, on the
source only → deleted, equal → nothing to do (a row the subscription itself wrote before the switch). That delta goes
through `apply_delta` (one transaction on the source, refused when the source differs from the cutover snapshot for
any key it touches, sequences moved up), so the guarantees are those of the row-delta rollback; the cost is one read
of the slot plus a lookup per changed key, whatever the size of the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from timetodo.ops.adapters.postgres import PgTarget
from timetodo.ops.adapters.postgres import reverse as rev
from timetodo.ops.migrate.rollback.apply import _row_hashes, apply_delta
from timetodo.ops.migrate.rollback.delta import INT_TYPES, Delta, Key, TableDelta, chunks, table_infos, text_connection

BATCH = 2000


async def stream_delta(
    target_url: str, source_url: str, name: str, exclude: Iterable[str]
) -> tuple[Delta, rev.Changes]:
    """The delta of the target against the source, for the keys the reverse stream of migration `name` names."""
    skip = set(exclude)
    started = time.monotonic()
    async with text_connection(PgTarget.from_url(target_url)) as target:
        infos = await table_infos(target)
        specs = {
            table: rev.KeySpec(tuple(c.name for c in info.key), tuple(c.typid in INT_TYPES for c in info.key))
            for table, info in infos.items()
            if table not in skip and info.key
        }
        changes = await rev.changed_keys(target, name, specs)
        delta = Delta()
        async with text_connection(PgTarget.from_url(source_url)) as source:
            for table, keys in sorted(changes.tables.items()):
                info = infos[table]
                td = TableDelta(key_columns=[c.name for c in info.key])
                ordered: list[Key] = sorted(keys, key=lambda k: tuple(str(v) for v in k))
                for chunk in chunks(ordered, BATCH):
                    here, there = await asyncio.gather(
                        _row_hashes(target, info, chunk), _row_hashes(source, info, chunk)
                    )
                    for key in chunk:
                        mine, theirs = here.get(key), there.get(key)
                        if mine is not None and theirs is None:
                            td.inserted.append(key)
                        elif mine is not None and mine != theirs:
                            td.updated.append(key)
                        elif mine is None and theirs is not None:
                            td.deleted.append(key)
                delta.tables[table] = td
    delta.elapsed = time.monotonic() - started
    return delta, changes


async def carry_back_stream(
    target_url: str, source_url: str, name: str, *, snapshot_url: str | None, exclude: Iterable[str]
) -> dict[str, Any]:
    """Every row the target wrote since the switch, back on the source (raises `StreamUnusable` when the stream
    cannot tell, `DeltaError`/`DeltaConflict` as `apply_delta` does)."""
    started = time.monotonic()
    delta, changes = await stream_delta(target_url, source_url, name, exclude)
    applied = await apply_delta(delta, target_url, source_url, snapshot_url=snapshot_url)
    return {
        "via": "reverse stream",
        "stream": changes.to_dict(),
        "delta": delta.to_dict(),
        "applied": applied.to_dict(),
        "compared_in_full": [],
        "seconds": round(time.monotonic() - started, 3),
    }


__all__ = ["carry_back_stream", "stream_delta"]
