from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from timetodo.core.deps import API_PREFIX, SessionDep, UserIdDep
from timetodo.sync import service
from timetodo.sync.schemas import Deleted, SyncPage
from timetodo.tasks.models import task_to_dict
from timetodo.tasks.schemas import ProjectOut, TaskOut
from timetodo.timer.service import entry_out

router = APIRouter(prefix=API_PREFIX, tags=["sync"])


@router.get("/sync", response_model=SyncPage)
async def sync(
    user_id: UserIdDep,
    session: SessionDep,
    token: Annotated[str | None, Query(max_length=200, description="`token` of the previous answer")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_LIMIT)] = service.DEFAULT_LIMIT,
) -> SyncPage:
    """Everything that changed since `token`: created/updated rows in their current state, deleted ids
    (tombstones), and the token to ask with next. Repeat while `has_more`. No token: a full copy of live rows."""
    changes = await service.changes_since(session, user_id, token, limit)
    return SyncPage(
        token=service.encode_token(changes.version),
        has_more=changes.has_more,
        projects=[ProjectOut.model_validate(p) for p in changes.rows.get("projects", [])],
        tasks=[TaskOut.model_validate(task_to_dict(t)) for t in changes.rows.get("tasks", [])],
        time_entries=[entry_out(e) for e in changes.rows.get("time_entries", [])],
        deleted=Deleted(**changes.deleted),
    )
