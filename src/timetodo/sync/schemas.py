from __future__ import annotations

from pydantic import BaseModel, Field

from timetodo.tasks.schemas import ProjectOut, TaskOut
from timetodo.timer.schemas import TimeEntryOut


class Deleted(BaseModel):
    projects: list[int] = Field(default_factory=list)
    tasks: list[int] = Field(default_factory=list)
    time_entries: list[int] = Field(default_factory=list)


class SyncPage(BaseModel):
    """Rows created or changed since the token (their current state) and ids deleted since the token.

    Apply a page by upserting every row and removing every deleted id, then ask again with `token`; repeat while
    `has_more` is true. Without a token the first pages hold every live row (no tombstones)."""

    token: str
    has_more: bool
    projects: list[ProjectOut]
    tasks: list[TaskOut]
    time_entries: list[TimeEntryOut]
    deleted: Deleted
