from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from timetodo.core.database import Base, BigIntPK, TimestampMixin, UTCDateTime
from timetodo.core.tracking import SyncTracked

TITLE_MAX = 500
DESCRIPTION_MAX = 20000
PROJECT_NAME_MAX = 200
LABEL_MAX = 64
LABELS_MAX = 50


class Project(SyncTracked, TimestampMixin, Base):
    __tablename__ = "projects"
    __table_args__ = (
        Index("ix_projects_owner_id_id", "owner_id", "id"),
        Index("ix_projects_owner_id_sync_version", "owner_id", "sync_version"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(PROJECT_NAME_MAX), nullable=False)
    color: Mapped[str | None] = mapped_column(String(7), nullable=True)
    archived: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Task(SyncTracked, TimestampMixin, Base):
    """A task. `due_*` hold a date, or a wall-clock datetime with an IANA zone (None = floating).

    `due_utc` is derived (None for a date or a floating datetime) and serves filters and ordering.
    Recurrence, completions, reminders and time entries hang off this row in later migrations.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint("priority BETWEEN 1 AND 4", name="priority_range"),
        Index("ix_tasks_owner_id_id", "owner_id", "id"),
        Index("ix_tasks_owner_id_project_id", "owner_id", "project_id"),
        Index("ix_tasks_owner_id_sync_version", "owner_id", "sync_version"),
        Index("ix_tasks_parent_id", "parent_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), nullable=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=4)
    labels: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    position: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    estimate_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    due_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    due_datetime: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)
    due_timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    due_string: Mapped[str | None] = mapped_column(String(200), nullable=True)
    due_utc: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    recurrence_rule: Mapped[str | None] = mapped_column(String(500), nullable=True)
    recurrence_mode: Mapped[str | None] = mapped_column(String(20), nullable=True)
    recurrence_anchor: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)
    done: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TaskCompletion(Base):
    """One completion of a task; a recurring task gets one per occurrence."""

    __tablename__ = "task_completions"
    __table_args__ = (Index("ix_task_completions_task_id", "task_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    completed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    due_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    due_datetime: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)


def due_payload(task: Any) -> dict[str, Any] | None:
    """The API's `due` object from a Task or a Core row of the tasks table."""
    if task.due_date is None and task.due_datetime is None:
        return None
    due: dict[str, Any] = {}
    if task.due_datetime is not None:
        due["datetime"] = task.due_datetime.isoformat()
        due["timezone"] = task.due_timezone
    else:
        due["date"] = task.due_date.isoformat()
    if task.due_string:
        due["string"] = task.due_string
    if task.recurrence_rule:
        due["recurrence"] = {"rule": task.recurrence_rule, "mode": task.recurrence_mode}
    return due


def task_to_dict(task: Any) -> dict[str, Any]:
    """The API representation of a task (an ORM object or a Core row); the hot list path skips pydantic."""
    return {
        "id": task.id,
        "title": task.title,
        "description": task.description,
        "project_id": task.project_id,
        "parent_id": task.parent_id,
        "priority": task.priority,
        "labels": list(task.labels or ()),
        "position": task.position,
        "estimate_minutes": task.estimate_minutes,
        "due": due_payload(task),
        "done": task.done,
        "done_at": task.done_at,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
    }
