"""Access tokens follow the account, without a database round trip on the hot path.

An access token is a JWT carrying the user id and the account's `token_version` when it was issued. A request is
accepted only while the account exists, is active and still has that version. Each process keeps the (active,
version) of the users it has seen for `AUTH_STATE_CACHE_SECONDS` (default 5 s), so a busy user costs one primary-key
lookup per process every few seconds. Deactivation, deletion, a password change and "log out everywhere" bump the
version (or remove the row) in the database and forget the local copy at once; other instances follow within the
cache time. WebSockets re-check on every ping and are closed when the token expired or the account changed.

While the process sees maintenance mode on (`frozen`, the maintenance flag cache) it caches nothing and forgets what
it had: a database in maintenance may be replaced under the app (a restore, a migration's final copy onto a held
target), and once the flag is off again every state it caches was read after that.

`core` imports no domain, so the users table is read with plain SQL here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Integer, column, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from timetodo.core.database import UTCDateTime
from timetodo.core.errors import ErrorCode, Unauthorized

MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class AccountState:
    active: bool
    token_version: int
    created_at: float  # epoch seconds: a token issued before the account existed is another account's (SQLite
    # reuses the id of a deleted last row)


_STATE_SQL = text("SELECT is_active, token_version, created_at FROM users WHERE id = :id").columns(
    column("is_active", Boolean()), column("token_version", Integer()), column("created_at", UTCDateTime())
)


class AccountStates:
    def __init__(
        self,
        maker: async_sessionmaker[AsyncSession],
        ttl: float,
        frozen: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._maker = maker
        self._ttl = ttl
        self._frozen = frozen
        self._entries: OrderedDict[int, tuple[AccountState, float]] = OrderedDict()

    async def get(self, user_id: int) -> AccountState | None:
        frozen = self._frozen is not None and await self._frozen()
        if frozen:
            self._entries.clear()  # read while frozen: nothing kept (see the module)
        now = time.monotonic()
        cached = self._entries.get(user_id)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        async with self._maker() as session:
            row = (await session.execute(_STATE_SQL, {"id": user_id})).first()
        if row is None:
            self._entries.pop(user_id, None)
            return None  # not cached: the id may be taken by a new account (SQLite reuses the last id)
        state = AccountState(bool(row[0]), int(row[1]), row[2].timestamp())
        if frozen:
            return state
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
