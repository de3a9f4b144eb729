"""Reverse replication of the `logical` strategy: what the target changed after the switch, read from a logical
replication slot *on the target*, so a rollback carries exactly those rows back to the source.

Why a slot read by the toolkit rather than a subscription on the source: a subscription must be created by a
superuser (PostgreSQL ≤ 15) or a member of `pg_create_subscription` (16+), which managed sources such as Render do
not grant. The target is ours (the toolkit deploys its PostgreSQL with `wal_level = logical`), so the slot and its
publication live there, and the source only ever sees ordinary INSERT/UPDATE/DELETE from a normal role.

- `reverse_qualifies` says why a target cannot hold the slot (wal_level, role rights, free slots) — read-only.
- `start` creates the publication (the replicated tables) then the slot (`pgoutput`). Call it *before* the target
  takes its first write: every transaction that commits after `start` returns is decoded (creating a logical slot
  waits for the transactions running at that moment to end).
- `changed_keys` reads the slot without consuming it (`pg_logical_slot_peek_binary_changes`) up to the target's
  current WAL position, after forcing that WAL to disk (decoding through SQL stops at the flushed position, which
  lags behind with `synchronous_commit = off`). It returns, per table, the primary keys of every row inserted,
  updated (old and new key when the key changed) or deleted — not the values: the caller reads the rows' final
  state from the (stopped) target, which also covers TOASTed values pgoutput leaves out. A TRUNCATE, an unknown
  relation or a slot whose WAL was removed (`wal_status = lost`, see `max_slot_wal_keep_size`) raises
  `StreamUnusable` with the reason, so the caller can use the row delta instead.
- `drop` removes the slot and the publication, idempotently: a slot left behind retains the target's WAL until its
  disk is full (or, with `max_slot_wal_keep_size`, until PostgreSQL invalidates it).

The decoder implements the pgoutput protocol version 1 (PostgreSQL's "Logical Replication Message Formats"):
Begin/Commit/Origin/Type/Message are skipped; Relation maps an oid to its table and column names; Insert, Update and
Delete carry TupleData whose columns are NULL (`n`), unchanged TOAST (`u`) or text (`t` + length).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from timetodo.ops.adapters.postgres.target import PgError, quote_ident

Key = tuple[int | str, ...]


class StreamUnusable(PgError):
    """The reverse stream cannot say what the target changed; the reason is safe to show."""


@dataclass(frozen=True)
class KeySpec:
    """The primary key of one table: column names, and which of them are integers (kept as int)."""

    columns: tuple[str, ...]
    integer: tuple[bool, ...]


@dataclass
class Changes:
    """What `changed_keys` found: per table, the keys of rows the target wrote since `start`."""

    tables: dict[str, set[Key]] = field(default_factory=dict)
    messages: int = 0
    transactions: int = 0
    upto_lsn: str = ""
    seconds: float = 0.0

    @property
    def keys(self) -> int:
        return sum(len(k) for k in self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "messages": self.messages,
            "keys": self.keys,
            "tables": {name: len(keys) for name, keys in sorted(self.tables.items())},
            "upto_lsn": self.upto_lsn,
            "seconds": round(self.seconds, 3),
        }


def slot_name(name: str) -> str:
    """The slot and publication name of the reverse stream for the migration `name`."""
    return f"{name[:55]}_reverse"


async def reverse_qualifies(conn: asyncpg.Connection) -> list[str]:
    """Why the target's server cannot hold the reverse slot (empty: it can)."""
    reasons: list[str] = []
    wal_level = str(await conn.fetchval("SHOW wal_level"))
    if wal_level != "logical":
        reasons.append(
            f"the target's wal_level is {wal_level}, not logical (the toolkit's compose bundle sets it; "
            "set wal_level = logical on the target's PostgreSQL and restart it)"
        )
    role = await conn.fetchrow("SELECT rolname, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user")
    if not (role["rolsuper"] or role["rolreplication"]):
        reasons.append(f"the target's role {role['rolname']} has neither REPLICATION nor superuser")
    free = int(
        await conn.fetchval("SELECT current_setting('max_replication_slots')::int - count(*) FROM pg_replication_slots")
    )
    if free < 1:
        reasons.append("no free replication slot on the target (max_replication_slots)")
    return reasons


async def start(conn: asyncpg.Connection, name: str, tables: Sequence[str]) -> dict[str, Any]:
    """The publication of `tables` and the slot, both named `slot_name(name)`, created anew on the target."""
    slot = slot_name(name)
    await drop(conn, name)
    listed = ", ".join(f"public.{quote_ident(t)}" for t in tables)
    started = time.monotonic()
    await conn.execute(f"CREATE PUBLICATION {quote_ident(slot)} FOR TABLE {listed}")
    row = await conn.fetchrow("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", slot)
    return {
        "slot": slot,
        "lsn": str(row["lsn"]),
        "tables": len(tables),
        "seconds": round(time.monotonic() - started, 3),
    }


async def drop(conn: asyncpg.Connection, name: str) -> dict[str, Any]:
    """The slot and the publication of the reverse stream gone from the target. Idempotent."""
    slot = slot_name(name)
    dropped = False
    pid = await conn.fetchval("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot)
    if pid is not None:
        await conn.execute("SELECT pg_terminate_backend($1, 5000)", pid)
    if await conn.fetchval("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", slot):
        await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
        dropped = True
    await conn.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(slot)}")
    return {"slot": slot, "slot_dropped": dropped}


async def leftovers(conn: asyncpg.Connection, name: str) -> dict[str, Any]:
    """The reverse stream's slot and publication, if they exist on this server (for checks and tests)."""
    slot = slot_name(name)
    row = await conn.fetchrow(
        "SELECT wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained "
        "FROM pg_replication_slots WHERE slot_name = $1",
        slot,
    )
    publication = bool(await conn.fetchval("SELECT 1 FROM pg_publication WHERE pubname = $1", slot))
    return {
        "slot": slot if row is not None else None,
        "publication": publication,
        "retained_bytes": int(row["retained"] or 0) if row is not None else 0,
        "wal_status": str(row["wal_status"]) if row is not None else None,
    }


# -------------------------------------------------------------------------------------------------------- decoding
class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def int16(self) -> int:
        (value,) = struct.unpack_from("!h", self.data, self.pos)
        self.pos += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from("!i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> str:
        end = self.data.index(0, self.pos)
        value = self.data[self.pos : end].decode()
        self.pos = end + 1
        return value

    def skip(self, n: int) -> None:
        self.pos += n

    def tuple_data(self) -> list[str | None]:
        """TupleData: text of each column, None for NULL and for an unchanged TOAST value."""
        values: list[str | None] = []
        for _ in range(self.int16()):
            kind = self.byte()
            if kind == ord("t"):
                length = self.int32()
                values.append(self.data[self.pos : self.pos + length].decode())
                self.pos += length
            elif kind in (ord("n"), ord("u")):
                values.append(None)
            else:
                raise StreamUnusable(f"pgoutput: unknown column kind {chr(kind)!r}")
        return values


@dataclass
class Decoder:
    """Turns pgoutput messages into the keys they touch (see the module docstring)."""

    keys: Mapping[str, KeySpec]
    relations: dict[int, tuple[str, dict[str, int]]] = field(default_factory=dict)
    changes: Changes = field(default_factory=Changes)

    def _key(self, oid: int, values: list[str | None]) -> tuple[str, Key | None]:
        if oid not in self.relations:
            raise StreamUnusable(f"pgoutput: a change for relation {oid} before its description")
        table, positions = self.relations[oid]
        spec = self.keys.get(table)
        if spec is None:
            raise StreamUnusable(f"the target changed {table}, a table without a primary key on the source's side")
        picked: list[int | str] = []
        for column, integer in zip(spec.columns, spec.integer, strict=True):
            index = positions.get(column)
            value = values[index] if index is not None and index < len(values) else None
            if value is None:
                return table, None  # no key in this tuple (an old tuple without the key): the new one has it
            picked.append(int(value) if integer else value)
        return table, tuple(picked)

    def _add(self, oid: int, values: list[str | None], *, required: bool) -> None:
        table, key = self._key(oid, values)
        if key is None:
            if required:
                raise StreamUnusable(f"pgoutput: a change of {table} without its primary key")
            return
        self.changes.tables.setdefault(table, set()).add(key)

    def feed(self, data: bytes) -> None:
        self.changes.messages += 1
        reader = _Reader(data)
        kind = chr(reader.byte())
        if kind == "R":
            oid = reader.int32()
            namespace, table = reader.string(), reader.string()
            reader.skip(1)  # replica identity setting
            positions: dict[str, int] = {}
            for i in range(reader.int16()):
                reader.skip(1)  # flags
                positions[reader.string()] = i
                reader.skip(8)  # type oid, type modifier
            if namespace != "public":
                raise StreamUnusable(f"pgoutput: a change in schema {namespace}")
            self.relations[oid] = (table, positions)
        elif kind == "I":
            oid = reader.int32()
            reader.skip(1)  # 'N'
            self._add(oid, reader.tuple_data(), required=True)
        elif kind == "U":
            oid = reader.int32()
            marker = chr(reader.byte())
            if marker in "KO":  # the old key (the key changed, or REPLICA IDENTITY FULL)
                self._add(oid, reader.tuple_data(), required=False)
                marker = chr(reader.byte())
            if marker != "N":
                raise StreamUnusable(f"pgoutput: an update without its new tuple ({marker!r})")
            self._add(oid, reader.tuple_data(), required=True)
        elif kind == "D":
            oid = reader.int32()
            reader.skip(1)  # 'K' or 'O'
            self._add(oid, reader.tuple_data(), required=True)
        elif kind == "T":
            raise StreamUnusable("the target truncated a table: the stream does not name the rows it removed")
        elif kind == "B":
            self.changes.transactions += 1
        # C (commit), O (origin), Y (type), M (message): nothing to track


async def changed_keys(
    conn: asyncpg.Connection, name: str, keys: Mapping[str, KeySpec], *, batch: int = 5000
) -> Changes:
    """Every key the target wrote since `start`, read without consuming the slot (see the module docstring)."""
    slot = slot_name(name)
    started = time.monotonic()
    row = await conn.fetchrow("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", slot)
    if row is None:
        raise StreamUnusable(f"the replication slot {slot} does not exist on the target")
    if row["wal_status"] == "lost":
        raise StreamUnusable(
            f"the replication slot {slot} lost WAL it needed (the target's max_slot_wal_keep_size was exceeded)"
        )
    # decoding through SQL stops at the flushed WAL: a synchronous commit of a transaction that wrote WAL (a logical
    # decoding message, which pgoutput skips) flushes everything written before it
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = on")
        await conn.execute("SELECT pg_logical_emit_message(true, 'timetodo-migrate', 'rollback')")
    upto = str(await conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))
    decoder = Decoder(keys)
    try:
        async with conn.transaction(readonly=True):
            cursor = conn.cursor(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL, "
                "'proto_version', '1', 'publication_names', $3)",
                slot,
                upto,
                slot,
                prefetch=batch,
            )
            async for record in cursor:
                decoder.feed(bytes(record[0]))
    except asyncpg.PostgresError as exc:
        raise StreamUnusable(f"decoding the slot {slot} failed: {exc}") from None
    except (IndexError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise StreamUnusable(f"pgoutput: a message could not be decoded ({type(exc).__name__}: {exc})") from None
    decoder.changes.upto_lsn = upto
    decoder.changes.seconds = time.monotonic() - started
    return decoder.changes


__all__ = [
    "Changes",
    "Decoder",
    "KeySpec",
    "StreamUnusable",
    "changed_keys",
    "drop",
    "leftovers",
    "reverse_qualifies",
    "slot_name",
    "start",
]
