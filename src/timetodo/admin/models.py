from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from timetodo.core.database import Base, UTCDateTime, utcnow

APP_STATE_ID = 1


class AppState(Base):
    """A single row of instance-wide state shared by every app process (maintenance flag)."""

    __tablename__ = "app_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    maintenance_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    maintenance_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    maintenance_changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
