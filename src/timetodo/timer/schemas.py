from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from timetodo.core.validators import Id, Instant
from timetodo.timer.models import NOTE_MAX

Note = Annotated[str, StringConstraints(max_length=NOTE_MAX)]


AwareDatetime = Instant


class TimerStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: Id | None = None
    project_id: Id | None = None
    note: Note = ""


class TimeEntryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: Id | None = None
    project_id: Id | None = None
    note: Note = ""
    started_at: AwareDatetime
    ended_at: AwareDatetime

    @model_validator(mode="after")
    def _order(self) -> TimeEntryIn:
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self


class TimeEntryUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: Id | None = None
    project_id: Id | None = None
    note: Note | None = None
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None


class TimeEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int | None
    project_id: int | None
    note: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    duration_seconds: int
    running: bool


class TimerOut(BaseModel):
    running: TimeEntryOut | None


GroupBy = Literal["day", "task", "project"]


class ReportGroup(BaseModel):
    key: str | int | None
    label: str
    seconds: int
    estimate_minutes: int | None = None


class TimeReport(BaseModel):
    date_from: dt.date
    date_to: dt.date
    timezone: str
    group_by: GroupBy
    total_seconds: int
    groups: list[ReportGroup]
