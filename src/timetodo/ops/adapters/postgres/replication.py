"""Native logical replication between two PostgreSQL servers, as the `logical` migration strategy uses it.

- `source_qualifies` says, reason by reason, why a source cannot publish (wal_level, role rights, tables without a
  primary key or replica identity, free replication slots / WAL senders) — nothing is changed.
- `publish` / `subscribe` create the publication (source) and the subscription with its initial copy (target),
  idempotently; `wait_ready` waits until every table is `r` in pg_subscription_rel and the lag is small.
- `wait_flushed` is the fence: every transaction the source committed before an LSN is applied on the target once
  the subscription's slot has confirmed that LSN (an idle, caught-up apply worker reports its received position).
  The subscription commits with `synchronous_commit = on` on the target: with the default (off) an applied
  transaction counts as flushed only once the target's WAL writer has flushed it, and the apply worker reports that
  on its next wake-up (up to 1 s later) — which made the fence take a second under load.
- `set_sequences` sets every sequence of the target to the source's value plus a safety gap.
- `drop_subscription` / `drop_publication` are idempotent and never leave a replication slot on the source: a slot
  left behind retains WAL until the source's disk is full.

Names are plain identifiers (`[a-z0-9_]`), chosen by the caller; every statement quotes them anyway.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from timetodo.ops.adapters.postgres.catalog import list_tables
from timetodo.ops.adapters.postgres.target import PgError, quote_ident

NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SEQUENCE_GAP = 1000
"""How far each target sequence is set past the source's value: ids handed out on the source in the instant between
the fence and the read of the sequence (none while it is frozen, but a sequence is not transactional) cannot collide."""

RENDER_NOTE = (
    "Render's managed PostgreSQL allows logical replication only on some plans and after a support ticket "
    "(Render enables wal_level = logical and the REPLICATION right for you)"
)


class ReplicationError(PgError):
    """Logical replication could not be set up or did not catch up."""


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(f"not a valid replication name: {name!r}")
    return name


def lsn_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass
class Qualification:
    """Whether a source can publish for a logical migration; `reasons` say why not, each with its fix."""

    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reasons": self.reasons, **self.details}


_NO_IDENTITY_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> ALL($1::text[])
  AND c.relreplident <> 'f'
  AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident))
ORDER BY c.relname
"""

_NOT_OWNED_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> ALL($1::text[])
  AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
ORDER BY c.relname
"""


def is_render(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host.endswith(".render.com") or host.startswith("dpg-")


async def source_qualifies(conn: asyncpg.Connection, url: str, exclude: Iterable[str] = ()) -> Qualification:
    """Everything the source needs for `publish` and a subscription to it, checked read-only."""
    result = Qualification()
    skip = list(exclude)
    wal_level = str(await conn.fetchval("SHOW wal_level"))
    role = await conn.fetchrow("SELECT rolname, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user")
    can_create = bool(await conn.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')"))
    senders = int(await conn.fetchval("SHOW max_wal_senders"))
    slots = int(await conn.fetchval("SHOW max_replication_slots"))
    used = int(await conn.fetchval("SELECT count(*) FROM pg_replication_slots"))
    no_identity = [str(r[0]) for r in await conn.fetch(_NO_IDENTITY_SQL, skip)]
    not_owned = [] if role["rolsuper"] else [str(r[0]) for r in await conn.fetch(_NOT_OWNED_SQL, skip)]
    result.details = {
        "wal_level": wal_level,
        "role": str(role["rolname"]),
        "superuser": bool(role["rolsuper"]),
        "replication": bool(role["rolreplication"]),
        "free_slots": slots - used,
        "max_wal_senders": senders,
    }
    render = f"; {RENDER_NOTE}" if is_render(url) else ""
    if wal_level != "logical":
        result.reasons.append(f"wal_level is {wal_level}, not logical: set wal_level = logical and restart{render}")
    if not (role["rolsuper"] or role["rolreplication"]):
        result.reasons.append(
            f"role {role['rolname']} has neither REPLICATION nor superuser: ALTER ROLE {role['rolname']} "
            f"REPLICATION (as a superuser){render}"
        )
    if not (role["rolsuper"] or can_create):
        result.reasons.append(f"role {role['rolname']} may not create a publication (CREATE on the database)")
    if not_owned:
        result.reasons.append(
            f"role {role['rolname']} does not own {', '.join(not_owned[:10])}: a publication needs the tables' owner"
        )
    if no_identity:
        result.reasons.append(
            f"tables without a primary key or replica identity: {', '.join(no_identity[:10])} (their updates and "
            "deletes cannot be replicated): add a primary key, or ALTER TABLE … REPLICA IDENTITY FULL"
        )
    if slots - used < 1 or senders < 1:
        result.reasons.append(
            f"no free replication slot or WAL sender (max_replication_slots {slots}, {used} used; "
            f"max_wal_senders {senders}): raise them and restart"
        )
    return result


async def publish(conn: asyncpg.Connection, name: str, exclude: Iterable[str] = ()) -> list[str]:
    """The publication `name` of every table of schema public but `exclude` (created, or its table list set)."""
    check_name(name)
    skip = set(exclude)
    tables = [t for t in await list_tables(conn) if t not in skip]
    if not tables:
        raise ReplicationError("the source has no tables to publish")
    listed = ", ".join(f"public.{quote_ident(t)}" for t in tables)
    exists = await conn.fetchval("SELECT 1 FROM pg_publication WHERE pubname = $1", name)
    verb = (
        f"ALTER PUBLICATION {quote_ident(name)} SET TABLE"
        if exists
        else f"CREATE PUBLICATION {quote_ident(name)} FOR TABLE"
    )
    await conn.execute(f"{verb} {listed}")
    return tables


def _conninfo(url: str) -> str:
    """`url` as a quoted CONNECTION string; a connect_timeout of 10 s unless it names one (an unreachable source
    must fail CREATE / DROP SUBSCRIPTION, not hang them)."""
    if "connect_timeout=" not in url:
        url += ("&" if "?" in url else "?") + "connect_timeout=10"
    return "'" + url.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def subscribe(conn: asyncpg.Connection, name: str, source_url: str, *, copy_data: bool = True) -> bool:
    """The subscription `name` on the target to the publication `name` of `source_url` (as the target's server
    reaches it), its slot named `name` on the source, with the initial copy. False when it existed already."""
    check_name(name)
    if await conn.fetchval("SELECT 1 FROM pg_subscription WHERE subname = $1", name):
        return False
    try:
        await conn.execute(
            f"CREATE SUBSCRIPTION {quote_ident(name)} CONNECTION {_conninfo(source_url)} "
            f"PUBLICATION {quote_ident(name)} WITH (slot_name = {quote_ident(name)}, synchronous_commit = 'on', "
            f"copy_data = {'true' if copy_data else 'false'})"
        )
    except asyncpg.PostgresError as exc:
        password = urlsplit(source_url).password
        message = str(exc).replace(password, "***") if password else str(exc)
        raise ReplicationError(f"the target cannot subscribe to the source: {message}") from None
    return True


async def table_states(conn: asyncpg.Connection, name: str) -> dict[str, str]:
    """pg_subscription_rel of subscription `name`: table → state (i init, d data copy, f finished, s sync, r ready)."""
    rows = await conn.fetch(
        "SELECT c.relname, r.srsubstate::text FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid "
        "JOIN pg_class c ON c.oid = r.srrelid WHERE s.subname = $1",
        name,
    )
    return {str(r[0]): str(r[1]) for r in rows}


async def current_lsn(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))


async def fence_lsn(conn: asyncpg.Connection) -> str:
    """The source's WAL position past every transaction committed so far, flushed to disk.

    The *insert* position, not `pg_current_wal_lsn()` (the write position): with `synchronous_commit = off` a
    transaction is visible once its commit record is inserted, before the WAL writer writes it. And a walsender
    sends only flushed WAL, which with asynchronous commits lags by up to three `wal_writer_delay`s: a transaction
    that writes a logical decoding message (skipped by pgoutput; allowed to a REPLICATION role) and commits
    synchronously flushes everything before it at once. Without that right the fence just waits for the WAL writer.
    """
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = on")
            await conn.execute("SELECT pg_logical_emit_message(true, 'timetodo-migrate', 'fence')")
    except asyncpg.PostgresError:
        pass
    return str(await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text"))


async def confirmed_lsn(conn: asyncpg.Connection, slot: str) -> str | None:
    value = await conn.fetchval("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot)
    return None if value is None else str(value)


async def lag_bytes(source: asyncpg.Connection, slot: str) -> int | None:
    value = await source.fetchval(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots "
        "WHERE slot_name = $1",
        slot,
    )
    return None if value is None else int(value)


async def _worker_error(target: asyncpg.Connection, name: str) -> str | None:
    alive = await target.fetchval(
        "SELECT count(*) FROM pg_stat_subscription s WHERE s.subname = $1 AND s.pid IS NOT NULL", name
    )
    enabled = await target.fetchval("SELECT subenabled FROM pg_subscription WHERE subname = $1", name)
    if enabled is None:
        return f"subscription {name} does not exist on the target"
    if not enabled:
        return f"subscription {name} is disabled on the target"
    return None if alive else "no apply worker is running (see the target's PostgreSQL log)"


async def wait_ready(
    source: asyncpg.Connection,
    target: asyncpg.Connection,
    name: str,
    *,
    max_lag: int = 16 * 1024 * 1024,
    limit_seconds: float = 24 * 3600,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Until every table is ready and the slot lags at most `max_lag` bytes. ReplicationError after `limit_seconds` with
    the tables still copying (and the apply worker's state)."""
    started = time.monotonic()
    quiet_since = time.monotonic()
    while True:
        states = await table_states(target, name)
        ready = sum(1 for s in states.values() if s == "r")
        if progress is not None:
            progress(ready, len(states))
        lag = await lag_bytes(source, name)
        if states and ready == len(states) and lag is not None and lag <= max_lag:
            return {"tables": len(states), "lag_bytes": lag, "seconds": round(time.monotonic() - started, 3)}
        if await _worker_error(target, name) is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 30:
            raise ReplicationError(f"logical replication stalled: {await _worker_error(target, name)}")
        if time.monotonic() - started > limit_seconds:
            waiting = sorted(t for t, s in states.items() if s != "r")
            raise ReplicationError(
                f"the subscription did not catch up in {limit_seconds:.0f} s (tables not ready: {', '.join(waiting[:10])}; "
                f"lag {lag} bytes)"
            )
        await asyncio.sleep(0.2)


async def wait_flushed(source: asyncpg.Connection, slot: str, lsn: str, *, limit_seconds: float = 30) -> float:
    """Until the subscription's slot confirmed `lsn`: every transaction committed on the source before it is
    applied on the target. Seconds waited; ReplicationError after `limit_seconds`."""
    started = time.monotonic()
    wanted = lsn_int(lsn)
    while True:
        confirmed = await confirmed_lsn(source, slot)
        if confirmed is not None and lsn_int(confirmed) >= wanted:
            return time.monotonic() - started
        if time.monotonic() - started > limit_seconds:
            raise ReplicationError(
                f"the target did not confirm the source's LSN {lsn} within {limit_seconds:.0f} s (confirmed: {confirmed})"
            )
        await asyncio.sleep(0.005)


_SEQUENCES_SQL = """
SELECT format('%I.%I', n.nspname, c.relname) AS qualified FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname = 'public' ORDER BY 1
"""


async def set_sequences(
    source: asyncpg.Connection, target: asyncpg.Connection, gap: int = SEQUENCE_GAP
) -> dict[str, int]:
    """Every sequence of schema public on the target: the source's next value plus `gap` (sequences are not
    replicated). Descending sequences move down by `gap`. Returns name → the value set."""
    mine, source_rows = await asyncio.gather(
        target.fetch(_SEQUENCES_SQL),
        source.fetch(
            "SELECT format('%I.%I', schemaname, sequencename) AS qualified, last_value, increment_by, min_value, "
            "max_value, start_value FROM pg_sequences WHERE schemaname = 'public'"
        ),
    )
    theirs = {str(r[0]) for r in mine}
    wanted: dict[str, int] = {}
    for row in source_rows:
        name = str(row["qualified"])
        if name not in theirs:
            continue
        step = int(row["increment_by"])
        last = row["last_value"]
        base = int(last) if last is not None else int(row["start_value"]) - step
        value = base + gap * (1 if step > 0 else -1)
        value = max(int(row["min_value"]), min(int(row["max_value"]), value))
        wanted[name] = value
    if wanted:
        names, values = list(wanted), list(wanted.values())
        await target.execute(
            "SELECT setval(n::regclass, v, true) FROM unnest($1::text[], $2::bigint[]) AS u(n, v)", names, values
        )
    return wanted


async def drop_subscription(conn: asyncpg.Connection, name: str) -> dict[str, Any]:
    """The subscription `name` gone from the target, its data kept. The slot on the source is dropped with it when
    the target reaches the source; when it does not, the subscription is detached from its slot first (the caller
    then drops the slot on the source with `drop_publication`). Idempotent."""
    check_name(name)
    if not await conn.fetchval("SELECT 1 FROM pg_subscription WHERE subname = $1", name):
        return {"subscription": "absent"}
    await conn.execute(f"ALTER SUBSCRIPTION {quote_ident(name)} DISABLE")
    try:
        await conn.execute(f"DROP SUBSCRIPTION {quote_ident(name)}")
        return {"subscription": "dropped", "slot": "dropped with it"}
    except asyncpg.PostgresError as exc:
        await conn.execute(f"ALTER SUBSCRIPTION {quote_ident(name)} SET (slot_name = NONE)")
        await conn.execute(f"DROP SUBSCRIPTION {quote_ident(name)}")
        return {"subscription": "dropped", "slot": f"left on the source ({type(exc).__name__})"}


async def drop_publication(conn: asyncpg.Connection, name: str, subscription_oid: int | None = None) -> dict[str, Any]:
    """The publication `name` and every replication slot of ours on the source: the slot `name` and the table-sync
    slots of subscription `subscription_oid` (`pg_<oid>_sync_…`). A slot still in use has its WAL sender ended
    first. Idempotent."""
    check_name(name)
    patterns = [name]
    dropped: list[str] = []
    rows = await conn.fetch(
        "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = current_database()"
    )
    for row in rows:
        slot = str(row["slot_name"])
        ours = slot in patterns or (subscription_oid is not None and slot.startswith(f"pg_{subscription_oid}_sync_"))
        if not ours:
            continue
        if await _drop_slot(conn, slot):
            dropped.append(slot)
    await conn.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(name)}")
    return {"publication": "dropped", "slots_dropped": dropped}


async def _drop_slot(conn: asyncpg.Connection, slot: str, attempts: int = 100) -> bool:
    """Drop `slot`, ending the WAL sender that uses it first (a subscriber reconnects: try again at once)."""
    for _ in range(attempts):
        pid = await conn.fetchval("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot)
        if pid is not None:
            await conn.execute("SELECT pg_terminate_backend($1, 5000)", pid)
        try:
            await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
            return True
        except asyncpg.UndefinedObjectError:
            return False
        except asyncpg.ObjectInUseError:
            await asyncio.sleep(0.05)
    raise ReplicationError(f"replication slot {slot} stays in use: stop the subscriber and drop it by hand")


async def leftovers(source: asyncpg.Connection, name: str) -> dict[str, Any]:
    """What of ours still exists on the source (for checks and tests): the publication and slots named `name`."""
    publication = bool(await source.fetchval("SELECT 1 FROM pg_publication WHERE pubname = $1", name))
    slots = [
        str(r[0]) for r in await source.fetch("SELECT slot_name FROM pg_replication_slots WHERE slot_name = $1", name)
    ]
    return {"publication": publication, "slots": slots}


async def subscription_oid(conn: asyncpg.Connection, name: str) -> int | None:
    value = await conn.fetchval("SELECT oid::bigint FROM pg_subscription WHERE subname = $1", name)
    return None if value is None else int(value)


__all__ = [
    "RENDER_NOTE",
    "SEQUENCE_GAP",
    "Qualification",
    "ReplicationError",
    "confirmed_lsn",
    "current_lsn",
    "drop_publication",
    "drop_subscription",
    "fence_lsn",
    "is_render",
    "lag_bytes",
    "leftovers",
    "lsn_int",
    "publish",
    "set_sequences",
    "source_qualifies",
    "subscribe",
    "subscription_oid",
    "table_states",
    "wait_flushed",
    "wait_ready",
]
