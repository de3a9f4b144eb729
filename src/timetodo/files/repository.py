from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.files.models import Attachment


async def lock_blob(session: AsyncSession, sha256: str) -> None:
    """Serialise writers of one content hash (upload vs delete of the same bytes) on PostgreSQL.
    SQLite has a single writer already."""
    if session.get_bind().dialect.name != "sqlite":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": int(sha256[:15], 16)})


async def used_bytes(session: AsyncSession, owner_id: int) -> int:
    result = await session.execute(
        select(func.coalesce(func.sum(Attachment.size), 0)).where(
            Attachment.owner_id == owner_id, Attachment.deleted_at.is_(None)
        )
    )
    return int(result.scalar_one())


async def get(session: AsyncSession, owner_id: int, attachment_id: int) -> Attachment | None:
    result = await session.execute(
        select(Attachment).where(
            Attachment.id == attachment_id, Attachment.owner_id == owner_id, Attachment.deleted_at.is_(None)
        )
    )
    return result.scalar_one_or_none()


async def list_for_task(session: AsyncSession, owner_id: int, task_id: int) -> Sequence[Attachment]:
    result = await session.execute(
        select(Attachment)
        .where(Attachment.owner_id == owner_id, Attachment.task_id == task_id, Attachment.deleted_at.is_(None))
        .order_by(Attachment.id)
    )
    return result.scalars().all()


async def hash_in_use(session: AsyncSession, sha256: str) -> bool:
    result = await session.execute(
        select(Attachment.id).where(Attachment.sha256 == sha256, Attachment.deleted_at.is_(None)).limit(1)
    )
    return result.first() is not None


async def live_hashes(session: AsyncSession) -> dict[str, int]:
    """sha256 → expected size of every live attachment."""
    result = await session.execute(
        select(Attachment.sha256, func.max(Attachment.size))
        .where(Attachment.deleted_at.is_(None))
        .group_by(Attachment.sha256)
    )
    return {row[0]: int(row[1]) for row in result}
