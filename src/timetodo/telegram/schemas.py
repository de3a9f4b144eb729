from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class LinkOut(BaseModel):
    """A one-time link: open `url` on a device with Telegram, or send `command` to the bot."""

    url: str = Field(description="https://t.me/<bot>?start=<token>")
    token: str = Field(description="Single use, at most 64 characters")
    command: str = Field(description="The same link as a `/start <token>` message to copy")
    expires_at: datetime


class LinkStatus(BaseModel):
    linked: bool
    chat_id: int | None = None
    linked_at: datetime | None = None
