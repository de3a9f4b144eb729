from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from timetodo.core.validators import Id, SafeDate, TimeZoneName, WallClock
from timetodo.tasks.models import DESCRIPTION_MAX, LABEL_MAX, LABELS_MAX, PROJECT_NAME_MAX, TITLE_MAX

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX)]
ProjectName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=PROJECT_NAME_MAX)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=LABEL_MAX)]
Color = Annotated[str, StringConstraints(pattern=r"^#[0-9a-fA-F]{6}$")]
Priority = Annotated[int, Field(ge=1, le=4, description="1 (highest) … 4 (lowest, default)")]
Position = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Estimate = Annotated[int, Field(ge=0, le=100_000)]


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ProjectName
    color: Color | None = None
    archived: bool = False


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ProjectName | None = None
    color: Color | None = None
    archived: bool | None = None


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    color: str | None
    archived: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class Recurrence(BaseModel):
    """An RRULE subset: FREQ=DAILY|WEEKLY(+BYDAY)|MONTHLY(+BYMONTHDAY)|YEARLY, INTERVAL, UNTIL or COUNT."""

    model_config = ConfigDict(extra="forbid")

    rule: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    mode: Literal["from_due", "from_completion"] = "from_due"

    @field_validator("rule")
    @classmethod
    def _valid(cls, value: str) -> str:
        from timetodo.tasks.recurrence import RuleError, parse_rule

        try:
            parse_rule(value)
        except RuleError as exc:
            raise ValueError(f"invalid recurrence rule: {exc}") from exc
        return value.strip().removeprefix("RRULE:").upper()


class Due(BaseModel):
    """A date (`{"date": "2026-11-23"}`) or a wall-clock datetime with a time zone (null = floating)."""

    # exactly one of `date` / `datetime`; `timezone` only with `datetime` (the validator below, stated in the schema)
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["date"], "not": {"anyOf": [{"required": ["datetime"]}, {"required": ["timezone"]}]}},
                {"required": ["datetime"], "not": {"required": ["date"]}},
            ]
        },
    )

    date: SafeDate | None = None
    datetime: WallClock | None = None
    timezone: TimeZoneName | None = None
    string: Annotated[str, StringConstraints(max_length=200)] | None = None
    recurrence: Recurrence | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Due:
        if (self.date is None) == (self.datetime is None):
            raise ValueError("give exactly one of 'date' or 'datetime'")
        if self.date is not None and self.timezone is not None:
            raise ValueError("'timezone' goes with 'datetime', not with 'date'")
        if self.datetime is not None and self.datetime.tzinfo is not None:
            # An offset was given: keep the instant, expressed as wall-clock time in the named zone (or UTC).
            from zoneinfo import ZoneInfo

            zone = ZoneInfo(self.timezone or "UTC")
            self.datetime = self.datetime.astimezone(zone).replace(tzinfo=None)
            self.timezone = self.timezone or "UTC"
        return self


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    description: Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)] = ""
    project_id: Id | None = None
    parent_id: Id | None = None
    priority: Priority = 4
    labels: Annotated[list[Label], Field(max_length=LABELS_MAX)] = []
    position: Position = 0
    estimate_minutes: Estimate | None = None
    due: Due | None = None


class TaskUpdate(BaseModel):
    """Only the fields sent are changed; send `null` to clear `due`, `project_id`, `parent_id`, `estimate_minutes`."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    description: Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)] | None = None
    project_id: Id | None = None
    parent_id: Id | None = None
    priority: Priority | None = None
    labels: Annotated[list[Label], Field(max_length=LABELS_MAX)] | None = None
    position: Position | None = None
    estimate_minutes: Estimate | None = None
    due: Due | None = None

    @model_validator(mode="after")
    def _not_null(self) -> TaskUpdate:
        for name in ("title", "description", "priority", "labels", "position"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"'{name}' cannot be null")
        return self


class TaskOut(BaseModel):
    id: int
    title: str
    description: str
    project_id: Id | None
    parent_id: int | None
    priority: int
    labels: list[str]
    position: int
    estimate_minutes: int | None
    due: dict[str, Any] | None
    done: bool
    done_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class CompletionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    completed_at: dt.datetime
    due_date: dt.date | None
    due_datetime: dt.datetime | None


class TaskFilters(BaseModel):
    """The filters of `GET /tasks` (they combine with AND and work with cursor pagination). Parsed from the query
    string only when one is sent (`timetodo.tasks.router.task_filters`): a plain page request pays for none."""

    project_id: Id | None = None
    parent_id: Id | None = None
    done: bool | None = None
    q: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="Search in title and description"
    )
    label: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    due_before: dt.date | None = Field(None, description="Due on or before this date")
    due_after: dt.date | None = Field(None, description="Due on or after this date")
    overdue: bool = Field(False, description="Open tasks past due, in your time zone")
    today: bool = Field(False, description="Due today in your time zone")


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI `parameters` (in: query, optional) for the fields of `model`, as FastAPI would document them."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    params = []
    for name, prop in schema["properties"].items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params
