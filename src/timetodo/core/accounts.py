"""Access tokens follow the account, without a database round trip on the hot path.

An access token is a JWT carrying the user id and the account's `token_version` when it was issued. A request is
accepted only while the account exists, is active and still has that version. Each process keeps the (active,
version) of the users it has seen for `AUTH_STATE_CACHE_SECONDS` (default 5 s), so a busy user costs one primary-key
lookup per process every few seconds. Deactivation, deletion, a password change and "log out everywhere" bump the
version (or remove the row) in the database and forget the local copy at once; other instances follow within the
cache time. WebSockets re-check on every ping and are closed when the token expired or the account changed.

On PostgreSQL the lookup is one statement on the raw pool (`timetodo.core.rawdb`: no BEGIN/ROLLBACK around it); on
SQLite a session. A verified token's claims are kept too (`AccountStates.claims`, at most `MAX_TOKENS`): the signature
of the same token string is not checked again, but its expiry is, on every request.

`core` imports no domain, so the users table is read with plain SQL here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Integer, column, text

from timetodo.core import rawdb
from timetodo.core.database import Database, UTCDateTime
from timetodo.core.errors import ErrorCode, Unauthorized
from timetodo.core.security import decode_access_token

MAX_ENTRIES = 100_000
MAX_TOKENS = 10_000


@dataclass(frozen=True)
class AccountState:
    active: bool
    token_version: int
    created_at: float  # epoch seconds: a token issued before the account existed is another account's (SQLite
    # reuses the id of a deleted last row)


_STATE_SQL = text("SELECT is_active, token_version, created_at FROM users WHERE id = :id").columns(
    column("is_active", Boolean()), column("token_version", Integer()), column("created_at", UTCDateTime())
)
_PG_STATE_SQL = "SELECT is_active, token_version, created_at FROM users WHERE id = $1"


class AccountStates:
    def __init__(self, db: Database, ttl: float) -> None:
        self._db = db
        self._ttl = ttl
        self._entries: OrderedDict[int, tuple[AccountState, float]] = OrderedDict()
        self._tokens: dict[str, dict[str, Any]] = {}

    def claims(self, secret: str, token: str) -> dict[str, Any]:
        """The claims of a valid access token (`decode_access_token`), its signature checked once per process."""
        payload = self._tokens.get(token)
        if payload is not None and payload["exp"] > time.time():
            return payload
        payload = decode_access_token(secret, token)  # raises 401 (expired, invalid)
        if not isinstance(payload.get("exp"), int | float):
            return payload
        if len(self._tokens) >= MAX_TOKENS:
            self._tokens.clear()  # cheap and rare: every entry is re-verified on its next use
        self._tokens[token] = payload
        return payload

    async def _read(self, user_id: int) -> tuple[Any, ...] | None:
        if self._db.postgres:
            record = await rawdb.fetchrow(self._db.engine, _PG_STATE_SQL, user_id)
            return None if record is None else tuple(record)
        async with self._db.sessionmaker() as session:
            row = (await session.execute(_STATE_SQL, {"id": user_id})).first()
        return None if row is None else tuple(row)

    async def get(self, user_id: int) -> AccountState | None:
        now = time.monotonic()
        cached = self._entries.get(user_id)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        row = await self._read(user_id)
        if row is None:
            self._entries.pop(user_id, None)
            return None  # not cached: the id may be taken by a new account (SQLite reuses the last id)
        state = AccountState(bool(row[0]), int(row[1]), row[2].timestamp())
        self._entries[user_id] = (state, now)
        self._entries.move_to_end(user_id)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return state

    def forget(self, user_id: int) -> None:
        self._entries.pop(user_id, None)

    async def check(self, payload: dict[str, Any]) -> int:
        """The user id of a decoded access token whose account still accepts it; 401 otherwise."""
        try:
            user_id = int(payload["sub"])
            version = int(payload.get("ver", 0))
        except (TypeError, ValueError, KeyError) as exc:
            raise Unauthorized("The access token is invalid", code=ErrorCode.invalid_token) from exc
        state = await self.get(user_id)
        issued = float(payload.get("iat", 0))
        if state is None or not state.active or state.token_version != version or issued < int(state.created_at):
            raise Unauthorized(
                "This session has ended (account disabled, password changed or logged out everywhere); log in again",
                code=ErrorCode.invalid_token,
            )
        return user_id
