"""Maintenance (read-only) mode, shared by every instance through the database.

Guarantee: once `set_maintenance(enabled=True)` has returned, no write transaction commits. Every write takes
`lock_flag_for_write` first, in its own transaction, and the flag change has to wait for those to finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from timetodo.admin import repository
from timetodo.core.errors import MaintenanceActive


@dataclass(frozen=True)
class MaintenanceStatus:
    enabled: bool
    reason: str | None
    changed_at: datetime


async def get_status(session: AsyncSession) -> MaintenanceStatus:
    state = await repository.get_state(session)
    return MaintenanceStatus(state.maintenance_enabled, state.maintenance_reason, state.maintenance_changed_at)


async def set_maintenance(session: AsyncSession, enabled: bool, reason: str | None = None) -> MaintenanceStatus:
    await repository.set_flag(session, enabled, reason)
    await session.commit()
    return await get_status(session)


async def guard_write(session: AsyncSession, retry_after: int) -> None:
    """First statement of every write transaction: refuse it while maintenance is on."""
    if await repository.lock_flag_for_write(session):
        await session.rollback()
        raise MaintenanceActive(retry_after)


class MaintenanceFlagCache:
    """A per-process copy of the flag, refreshed at most every `ttl` seconds, for cheap early 503s.

    Only an optimisation: the authoritative check is `guard_write` inside each write transaction.
    """

    def __init__(self, maker: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self._maker = maker
        self._ttl = ttl
        self._value = False
        self._checked = 0.0

    def set(self, enabled: bool) -> None:
        self._value = enabled
        self._checked = time.monotonic()

    async def enabled(self) -> bool:
        if time.monotonic() - self._checked >= self._ttl:
            async with self._maker() as session:
                self.set((await get_status(session)).enabled)
        return self._value
