from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from timetodo.core.validators import Instant


class ReminderIn(BaseModel):
    """Either `remind_at` (an instant with offset) or `minutes_before` the task's due."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["remind_at"], "not": {"required": ["minutes_before"]}},
                {"required": ["minutes_before"], "not": {"required": ["remind_at"]}},
            ]
        },
    )

    remind_at: Instant | None = None
    minutes_before: Annotated[int, Field(ge=0, le=60 * 24 * 365)] | None = None

    @model_validator(mode="after")
    def _one(self) -> ReminderIn:
        if (self.remind_at is None) == (self.minutes_before is None):
            raise ValueError("give exactly one of 'remind_at' or 'minutes_before'")
        return self


class SnoozeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    minutes: Annotated[int, Field(ge=1, le=60 * 24 * 30)]


class ReminderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int
    remind_at: dt.datetime | None
    minutes_before: int | None
    fire_at: dt.datetime | None
    state: str
    sent_at: dt.datetime | None
