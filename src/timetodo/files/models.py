from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from timetodo.core.database import Base, BigIntPK, UTCDateTime, utcnow

FILENAME_MAX = 255


class Attachment(Base):
    """A file attached to a task. The bytes live once per content hash under UPLOAD_DIR (deduplicated)."""

    __tablename__ = "attachments"
    __table_args__ = (
        Index("ix_attachments_owner_id_task_id", "owner_id", "task_id"),
        Index("ix_attachments_sha256", "sha256"),
        Index("ix_attachments_task_id", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False)
    filename: Mapped[str] = mapped_column(String(FILENAME_MAX), nullable=False)
    content_type: Mapped[str] = mapped_column(String(127), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
