from __future__ import annotations

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.admin.models import APP_STATE_ID, AppState
from timetodo.core.database import utcnow


async def get_state(session: AsyncSession) -> AppState:
    state = await session.get(AppState, APP_STATE_ID, populate_existing=True)
    if state is None:
        raise RuntimeError("app_state row is missing: run `timetodo db upgrade`")
    return state


async def lock_flag_for_write(session: AsyncSession) -> bool:
    """Read the maintenance flag inside the caller's write transaction, holding a lock that `set_flag` must wait for.

    PostgreSQL: a share lock on the row; `set_flag`'s UPDATE waits until every transaction holding it has ended, and
    later ones read the new value. SQLite: take the database write lock first (writers are serialised there anyway).
    """
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(text("UPDATE app_state SET id = id WHERE id = :id"), {"id": APP_STATE_ID})
        stmt = select(AppState.maintenance_enabled).where(AppState.id == APP_STATE_ID)
    else:
        stmt = select(AppState.maintenance_enabled).where(AppState.id == APP_STATE_ID).with_for_update(read=True)
    return bool((await session.execute(stmt)).scalar_one())


async def set_flag(session: AsyncSession, enabled: bool, reason: str | None) -> None:
    await session.execute(
        update(AppState)
        .where(AppState.id == APP_STATE_ID)
        .values(maintenance_enabled=enabled, maintenance_reason=reason, maintenance_changed_at=utcnow())
    )
