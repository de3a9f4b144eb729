"""Maintenance (read-only) mode, shared by every instance through one row in the database.

Guarantee: once `set_maintenance(enabled=True)` has returned, no write transaction commits. Every write reads the
flag with `guard_write` as the first statement of its transaction, holding a lock that the flag change has to wait
for: on PostgreSQL a share lock on the row (`SELECT … FOR SHARE`), on SQLite the database write lock. Transactions
that started before the switch finish first; later ones read the new value and are refused.

`MaintenanceFlagCache` is only an optimisation (cheap early 503s); `guard_write` is the authoritative check. Tools
outside the app (backup restore, the migration toolkit) read and switch the flag of a database by its URL with
`read_flag` / `switch_maintenance` (or the admin HTTP API), never with SQL of their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Integer, String, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from timetodo.core.database import Base, UTCDateTime, utcnow
from timetodo.core.errors import DATABASE_UNAVAILABLE, MaintenanceActive
from timetodo.core.singleflight import SingleFlight

log = logging.getLogger("timetodo.maintenance")

APP_STATE_ID = 1


class AppState(Base):
    """A single row of instance-wide state shared by every app process (maintenance flag)."""

    __tablename__ = "app_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    maintenance_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    maintenance_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    maintenance_changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    # forwarding mode (timetodo.core.forwarding): the base URL every API request is proxied to, and until when
    forward_to: Mapped[str | None] = mapped_column(String(500), nullable=True)
    forward_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True)
class MaintenanceStatus:
    enabled: bool
    reason: str | None
    changed_at: datetime


async def get_status(session: AsyncSession) -> MaintenanceStatus:
    state = await session.get(AppState, APP_STATE_ID, populate_existing=True)
    if state is None:
        raise RuntimeError("app_state row is missing: run `timetodo db upgrade`")
    return MaintenanceStatus(state.maintenance_enabled, state.maintenance_reason, state.maintenance_changed_at)


async def update_app_state(session: AsyncSession, **values: Any) -> None:
    """Change the shared row and commit, waiting for every write transaction in flight — and never starved by them.

    PostgreSQL: an `UPDATE` alone waits for the row's share locks, but new writers can keep joining the existing
    share lock while it waits (row locks are not queued fairly), so under continuous writes it could wait forever.
    `LOCK TABLE … IN EXCLUSIVE MODE` first: it conflicts with the RowShareLock every guard's `FOR SHARE` holds, and
    the table lock queue is fair, so writers arriving after it queue behind it; plain reads of the row (the flag
    caches) are not blocked."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("LOCK TABLE app_state IN EXCLUSIVE MODE"))
    await session.execute(update(AppState).where(AppState.id == APP_STATE_ID).values(**values))
    await session.commit()


async def set_maintenance(session: AsyncSession, enabled: bool, reason: str | None = None) -> MaintenanceStatus:
    """Switch the flag and commit. Switching on waits for every write transaction in flight (see the module)."""
    await update_app_state(
        session, maintenance_enabled=enabled, maintenance_reason=reason, maintenance_changed_at=utcnow()
    )
    return await get_status(session)


async def flag_for_write(session: AsyncSession) -> bool:
    """Read the flag inside the caller's write transaction, holding a lock that `set_maintenance` must wait for."""
    if session.get_bind().dialect.name == "sqlite":
        # take the database write lock first (SQLite serialises writers anyway)
        await session.execute(text("UPDATE app_state SET id = id WHERE id = :id"), {"id": APP_STATE_ID})
        stmt = select(AppState.maintenance_enabled).where(AppState.id == APP_STATE_ID)
    else:
        stmt = select(AppState.maintenance_enabled).where(AppState.id == APP_STATE_ID).with_for_update(read=True)
    return bool((await session.execute(stmt)).scalar_one())


async def guard_write(session: AsyncSession, retry_after: int) -> None:
    """First statement of every write transaction: refuse it while maintenance is on."""
    if await flag_for_write(session):
        await session.rollback()
        raise MaintenanceActive(retry_after)


@asynccontextmanager
async def _session_for(database_url: str) -> AsyncIterator[AsyncSession]:
    """A session on the database at `database_url` (any form the app accepts), without a pool."""
    from timetodo.core.database import create_engine, create_sessionmaker
    from timetodo.core.settings import Settings, normalize_database_url

    engine = create_engine(Settings.model_construct(DATABASE_URL=normalize_database_url(database_url)), pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            yield session
    finally:
        await engine.dispose()


async def read_flag(database_url: str) -> bool | None:
    """The maintenance flag of the database at `database_url`; None when it has no app state (not migrated yet)."""
    async with _session_for(database_url) as session:
        connection = await session.connection()
        if not await connection.run_sync(lambda conn: inspect(conn).has_table(AppState.__tablename__)):
            return None
        state = await session.get(AppState, APP_STATE_ID)
        return None if state is None else bool(state.maintenance_enabled)


async def switch_maintenance(database_url: str, enabled: bool, reason: str | None = None) -> MaintenanceStatus:
    """`set_maintenance` on the database at `database_url` (for tools outside the app: restore, migration)."""
    async with _session_for(database_url) as session:
        return await set_maintenance(session, enabled, reason)


class MaintenanceFlagCache:
    """A per-process copy of the flag, refreshed at most every `ttl` seconds, for cheap early 503s."""

    def __init__(self, maker: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self._maker = maker
        self._ttl = ttl
        self._value = False
        self._checked = 0.0
        # the requests in flight when the copy expires share one read (`timetodo.core.singleflight`)
        self.refresh = SingleFlight(self._refresh)

    def set(self, enabled: bool) -> None:
        self._value = enabled
        self._checked = time.monotonic()

    async def _refresh(self) -> None:
        try:
            async with self._maker() as session:
                self.set((await get_status(session)).enabled)
        except DATABASE_UNAVAILABLE as exc:
            # the early answer only: every write's own guard reads the flag in its transaction
            log.warning("maintenance flag not refreshed: database unavailable", extra={"error": repr(exc)})

    async def enabled(self) -> bool:
        if time.monotonic() - self._checked >= self._ttl:
            await self.refresh()
        return self._value
