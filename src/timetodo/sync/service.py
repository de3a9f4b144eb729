"""`GET /sync`: everything that changed since a token, in pages that never skip a change (see tracking.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.core.errors import AppError, ErrorCode
from timetodo.core.pagination import decode_opaque, encode_opaque
from timetodo.core.tracking import watermark
from timetodo.tasks.models import Project, Task
from timetodo.timer.models import TimeEntry

TRACKED: dict[str, Any] = {"projects": Project, "tasks": Task, "time_entries": TimeEntry}
DEFAULT_LIMIT = 500
MAX_LIMIT = 2000


class InvalidSyncToken(AppError):
    """The sync token is not one this server issued; start over without a token."""

    status_code = 422
    code = ErrorCode.invalid_sync_token


class SyncResetRequired(AppError):
    """The token is ahead of this server's data (restored from an older backup?); sync again without a token."""

    status_code = 410
    code = ErrorCode.sync_reset_required


def encode_token(version: int) -> str:
    return encode_opaque("v", version)


def decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        return decode_opaque(token, "v")
    except ValueError:
        raise InvalidSyncToken() from None


@dataclass
class Changes:
    version: int
    has_more: bool
    rows: dict[str, list[Any]] = field(default_factory=dict)
    deleted: dict[str, list[int]] = field(default_factory=dict)


async def changes_since(session: AsyncSession, owner_id: int, token: str | None, limit: int = DEFAULT_LIMIT) -> Changes:
    """Rows of the owner with `since < sync_version <= cutoff`, where the cutoff is the version of the `limit`-th
    change at or below the owner's watermark (a page may run past `limit` to keep one transaction's changes
    together).

    Every transaction that stamped a version at or below the watermark has ended (`timetodo.core.tracking`), so
    every row up to it is visible: the cutoff can be computed first and the rows read by later statements. A row
    changed again meanwhile carries a newer version and comes in a later page with its newest state."""
    since = decode_token(token)
    initial = since == 0
    current = await watermark(session, owner_id)
    if since > current:
        raise SyncResetRequired()

    versions: list[int] = []
    for model in TRACKED.values():
        stmt = select(model.sync_version).where(
            model.owner_id == owner_id, model.sync_version > since, model.sync_version <= current
        )
        if initial:
            stmt = stmt.where(model.deleted_at.is_(None))
        versions += (await session.execute(stmt.order_by(model.sync_version).limit(limit + 1))).scalars().all()
    versions.sort()
    if not versions:
        # nothing new up to the watermark: the same token (changes above it, in flight when it was read, come next)
        return Changes(version=since, has_more=False)
    cutoff = versions[min(limit, len(versions)) - 1]

    result = Changes(version=cutoff, has_more=versions[-1] > cutoff)
    for name, model in TRACKED.items():
        stmt = select(model).where(model.owner_id == owner_id, model.sync_version > since, model.sync_version <= cutoff)
        if initial:
            stmt = stmt.where(model.deleted_at.is_(None))
        found = (await session.execute(stmt.order_by(model.id))).scalars().all()
        result.rows[name] = [row for row in found if row.deleted_at is None]
        result.deleted[name] = [row.id for row in found if row.deleted_at is not None]
    if not result.has_more:
        # other tables may hold changes past this table's first `limit + 1`
        for model in TRACKED.values():
            probe = select(model.id).where(model.owner_id == owner_id, model.sync_version > cutoff)
            if initial:
                probe = probe.where(model.deleted_at.is_(None))
            if (await session.execute(probe.limit(1))).first() is not None:
                result.has_more = True
                break
    return result
