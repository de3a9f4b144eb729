from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from timetodo.auth.service import get_user
from timetodo.core import maintenance
from timetodo.core.deps import API_PREFIX, SessionDep, UserIdDep
from timetodo.core.errors import Forbidden

router = APIRouter(prefix=f"{API_PREFIX}/admin", tags=["admin"])


class MaintenanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool
    reason: str | None = Field(None, max_length=500)


class MaintenanceOut(BaseModel):
    enabled: bool
    reason: str | None
    changed_at: datetime


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
