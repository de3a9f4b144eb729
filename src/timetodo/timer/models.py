from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from timetodo.core.database import Base, BigIntPK, TimestampMixin, UTCDateTime
from timetodo.core.tracking import SyncTracked

NOTE_MAX = 1000


class TimeEntry(SyncTracked, TimestampMixin, Base):
    """A span of tracked time; `ended_at` is None while the timer runs (at most one running entry per user)."""

    __tablename__ = "time_entries"
    __table_args__ = (
        Index("ix_time_entries_owner_id_started_at", "owner_id", "started_at"),
        Index("ix_time_entries_owner_id_sync_version", "owner_id", "sync_version"),
        Index("ix_time_entries_task_id", "task_id"),
        Index(
            "uq_time_entries_one_running",
            "owner_id",
            unique=True,
            postgresql_where=text("ended_at IS NULL AND deleted_at IS NULL"),
            sqlite_where=text("ended_at IS NULL AND deleted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), nullable=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), nullable=True)
    note: Mapped[str] = mapped_column(String(NOTE_MAX), nullable=False, default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
