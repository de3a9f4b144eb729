"""Tables of the Telegram bot: chat links, one-time link tokens, handled updates, and the outbox of messages the
bot owes (reminders, digests).

Guarantees carried by the schema: one chat per user and one user per chat (two unique keys); a link token is
stored only as its sha256 and used once (`used_at`); an `update_id` is recorded once (primary key); a reminder has at
most one outbox row per firing (unique `reminder_id, due_at`), written in the transaction that claims the reminder.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, BigInteger, Date, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from timetodo.core.database import Base, BigIntPK, UTCDateTime, utcnow


class TelegramLink(Base):
    """A Telegram chat linked to a user."""

    __tablename__ = "telegram_links"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, unique=True)
    chat_id: Mapped[int] = mapped_column(BigInteger, nullable=False, unique=True)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    # task ids of the last list shown in the chat, so that `/done 3` means the third line of that list
    last_list: Mapped[list[int]] = mapped_column(JSON, nullable=False, default=list)
    digest_time: Mapped[str | None] = mapped_column(String(5), nullable=True)  # "HH:MM" in the user's zone
    digest_sent_on: Mapped[date | None] = mapped_column(Date, nullable=True)


class TelegramLinkToken(Base):
    """A one-time deep-link token (stored hashed) that links the chat which sends `/start <token>`."""

    __tablename__ = "telegram_link_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TelegramUpdate(Base):
    """An update already taken by some instance (de-duplication without Redis); pruned after a day."""

    __tablename__ = "telegram_updates"

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False, index=True)


OUTBOX_STATES = ("pending", "sending", "sent", "failed")


class TelegramOutbox(Base):
    """A message the bot owes a chat. Senders claim rows (FOR UPDATE SKIP LOCKED / the SQLite write lock), so each
    row is sent by one instance; `attempts` and `next_attempt_at` drive retries with backoff."""

    __tablename__ = "telegram_outbox"
    __table_args__ = (
        Index("ix_telegram_outbox_state_next_attempt_at", "state", "next_attempt_at"),
        # a reminder fires again after a snooze (a new fire_at): one row per firing, never two
        UniqueConstraint("reminder_id", "due_at", name="uq_telegram_outbox_reminder_id_due_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # reminder | digest
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    chat_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reminder_id: Mapped[int | None] = mapped_column(ForeignKey("reminders.id", ondelete="CASCADE"), nullable=True)
    task_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)  # when it should have gone out
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
