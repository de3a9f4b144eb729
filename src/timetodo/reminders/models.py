from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from timetodo.core.database import Base, BigIntPK, TimestampMixin, UTCDateTime

STATES = ("scheduled", "sent", "snoozed", "dismissed")


class Reminder(TimestampMixin, Base):
    """A reminder of a task: at an absolute instant, or `minutes_before` the task's due (recomputed when the due
    moves). `fire_at` is when the scheduler fires it next; firing claims it atomically (exactly once)."""

    __tablename__ = "reminders"
    __table_args__ = (
        Index("ix_reminders_state_fire_at", "state", "fire_at"),
        Index("ix_reminders_owner_id_task_id", "owner_id", "task_id"),
        Index("ix_reminders_task_id", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False)
    remind_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    minutes_before: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="scheduled")
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
