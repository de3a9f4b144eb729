from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from timetodo.admin import service
from timetodo.auth.schemas import RegisterIn, UserOut
from timetodo.auth.service import create_user as create_user_account
from timetodo.auth.service import get_user
from timetodo.core import forwarding, maintenance
from timetodo.core.deps import API_PREFIX, SessionDep, SettingsDep, UserIdDep, WriteSessionDep
from timetodo.core.errors import Forbidden

router = APIRouter(prefix=f"{API_PREFIX}/admin", tags=["admin"])


class MaintenanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool
    reason: str | None = Field(None, max_length=500)


class UserCreateIn(RegisterIn):
    is_admin: bool = False


class MaintenanceOut(BaseModel):
    enabled: bool
    reason: str | None
    changed_at: datetime


class ForwardingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(max_length=500, description="Base URL of the new host, e.g. https://api.example.com")
    minutes: int | None = Field(None, ge=1, le=7 * 24 * 60, description="End by itself after this long")

    @field_validator("target")
    @classmethod
    def _url(cls, value: str) -> str:
        return forwarding.normalise_target(value)


class ForwardingOut(BaseModel):
    target: str | None
    until: datetime | None
    active: bool


def _forwarding_out(state: forwarding.Forwarding) -> ForwardingOut:
    return ForwardingOut(target=state.target, until=state.until, active=state.active())


async def require_admin(user_id: UserIdDep, session: SessionDep) -> int:
    user = await get_user(session, user_id)
    if not user.is_admin:
        raise Forbidden("Admins only")
    return user_id


AdminDep = Annotated[int, Depends(require_admin)]


@router.get("/maintenance", response_model=MaintenanceOut)
async def get_maintenance(_admin: AdminDep, session: SessionDep) -> object:
    return await maintenance.get_status(session)


@router.put("/maintenance", response_model=MaintenanceOut)
async def put_maintenance(data: MaintenanceIn, request: Request, _admin: AdminDep, session: SessionDep) -> object:
    """Turn read-only mode on or off for every instance. When this returns with `enabled: true`, no later write
    commits anywhere."""
    status = await maintenance.set_maintenance(session, data.enabled, data.reason)
    request.app.state.maintenance_cache.set(status.enabled)
    return status


@router.get("/forwarding", response_model=ForwardingOut)
async def get_forwarding(_admin: AdminDep, session: SessionDep) -> object:
    return _forwarding_out(await forwarding.get_forwarding(session))


@router.put("/forwarding", response_model=ForwardingOut)
async def put_forwarding(data: ForwardingIn, request: Request, _admin: AdminDep, session: SessionDep) -> object:
    """Proxy every API request and WebSocket of every instance to `target` (after a migration's switch).
    This host's `/api/v1/admin/…`, health and metrics stay local."""
    state = await forwarding.set_forwarding(session, data.target, data.minutes)
    request.app.state.forwarding.set(state)
    return _forwarding_out(state)


@router.delete("/forwarding", response_model=ForwardingOut)
async def delete_forwarding(request: Request, _admin: AdminDep, session: SessionDep) -> object:
    """End forwarding: this host answers for itself again (within MAINTENANCE_CACHE_SECONDS on every instance)."""
    state = await forwarding.set_forwarding(session, None)
    request.app.state.forwarding.set(state)
    return _forwarding_out(state)


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def create_user(data: UserCreateIn, _admin: AdminDep, session: WriteSessionDep) -> object:
    """Create an account (no registration limits apply; the e-mail must be free)."""
    return await create_user_account(
        session, data.email, data.password, timezone=data.timezone, locale=data.locale, is_admin=data.is_admin
    )


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(
    user_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    request: Request,
    admin: AdminDep,
    session: WriteSessionDep,
    settings: SettingsDep,
) -> Response:
    """Delete an account and everything it owns (tasks, projects, time entries, files no one else stores, sessions,
    the Telegram link). Refused while maintenance mode is on, like every write."""
    await service.delete_user(session, settings, request.app.state.accounts, user_id, acting_admin=admin)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
