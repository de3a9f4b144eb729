"""Queries of the Telegram domain. Claims that must hold across instances are single statements or row locks:
`claim_outbox` takes rows with FOR UPDATE SKIP LOCKED on PostgreSQL; on SQLite the transaction holds the database
write lock (the caller's first statement is a write).

`PG_ADD_TASK` is `/add` on PostgreSQL in one statement (one implicit transaction, one round trip, see
`timetodo.core.rawdb`): the API's plain create (`tasks.repository.PG_CREATE_TASK`: maintenance guard, sync version,
insert, the task's API document) plus the lookup of the `#project` by name in the same snapshot.
`PG_LINK_OF_CHAT` reads a chat's link and user in one statement, outside any transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.auth.models import User
from timetodo.tasks import repository as tasks_repository
from timetodo.tasks.models import Project
from timetodo.telegram.models import TelegramLink, TelegramLinkToken, TelegramOutbox, TelegramUpdate


async def link_of_user(session: AsyncSession, user_id: int) -> TelegramLink | None:
    return (await session.execute(select(TelegramLink).where(TelegramLink.user_id == user_id))).scalar_one_or_none()


async def link_of_chat(session: AsyncSession, chat_id: int) -> tuple[TelegramLink, User] | None:
    row = (
        await session.execute(
            select(TelegramLink, User)
            .join(User, User.id == TelegramLink.user_id)
            .where(TelegramLink.chat_id == chat_id)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def links_of_users(session: AsyncSession, user_ids: Sequence[int]) -> dict[int, int]:
    """user id → chat id, for the linked ones."""
    if not user_ids:
        return {}
    rows = await session.execute(
        select(TelegramLink.user_id, TelegramLink.chat_id).where(TelegramLink.user_id.in_(set(user_ids)))
    )
    return {int(user_id): int(chat_id) for user_id, chat_id in rows}


async def delete_link_of_user(session: AsyncSession, user_id: int) -> bool:
    result = await session.execute(delete(TelegramLink).where(TelegramLink.user_id == user_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def delete_link_of_chat(session: AsyncSession, chat_id: int) -> bool:
    result = await session.execute(delete(TelegramLink).where(TelegramLink.chat_id == chat_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def use_token(session: AsyncSession, token_hash: str, now: datetime) -> int | None:
    """Mark the token used if it is unused and unexpired; returns its user id. One statement: two chats racing
    for one token cannot both win."""
    result = await session.execute(
        update(TelegramLinkToken)
        .where(
            TelegramLinkToken.token_hash == token_hash,
            TelegramLinkToken.used_at.is_(None),
            TelegramLinkToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(TelegramLinkToken.user_id)
    )
    user_id = result.scalar_one_or_none()
    return None if user_id is None else int(user_id)


async def prune_tokens(session: AsyncSession, user_id: int, now: datetime) -> None:
    """A new token replaces the user's older unused ones; expired ones go."""
    await session.execute(
        delete(TelegramLinkToken).where(
            or_(TelegramLinkToken.user_id == user_id, TelegramLinkToken.expires_at <= now),
            TelegramLinkToken.used_at.is_(None),
        )
    )


async def record_update(session: AsyncSession, update_id: int, now: datetime) -> bool:
    """Insert the update id; False when another instance (or a redelivery) recorded it first."""
    try:
        async with session.begin_nested():
            session.add(TelegramUpdate(update_id=update_id, received_at=now))
            await session.flush()
    except IntegrityError:
        return False
    return True


async def prune_updates(session: AsyncSession, before: datetime) -> None:
    await session.execute(delete(TelegramUpdate).where(TelegramUpdate.received_at < before))


async def claim_outbox(session: AsyncSession, now: datetime, lease_until: datetime, batch: int) -> list[TelegramOutbox]:
    """Take due rows (pending, or sending with an expired lease) for this instance until `lease_until`."""
    stmt = (
        select(TelegramOutbox)
        .where(
            or_(
                (TelegramOutbox.state == "pending") & (TelegramOutbox.next_attempt_at <= now),
                (TelegramOutbox.state == "sending") & (TelegramOutbox.lease_until <= now),
            )
        )
        .order_by(TelegramOutbox.next_attempt_at, TelegramOutbox.id)
        .limit(batch)
    )
    if session.get_bind().dialect.name != "sqlite":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = list((await session.execute(stmt)).scalars().all())
    for row in rows:
        row.state, row.lease_until, row.attempts = "sending", lease_until, row.attempts + 1
    return rows


async def finish_outbox(
    session: AsyncSession,
    row_id: int,
    state: str,
    *,
    sent_at: datetime | None = None,
    next_attempt_at: datetime | None = None,
    error: str | None = None,
    attempts_delta: int = 0,
) -> None:
    values: dict[str, object] = {"state": state, "lease_until": None, "last_error": error}
    if sent_at is not None:
        values["sent_at"] = sent_at
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    if attempts_delta:
        values["attempts"] = TelegramOutbox.attempts + attempts_delta
    await session.execute(update(TelegramOutbox).where(TelegramOutbox.id == row_id).values(**values))


async def digest_due(session: AsyncSession) -> Sequence[tuple[TelegramLink, User]]:
    rows = await session.execute(
        select(TelegramLink, User)
        .join(User, User.id == TelegramLink.user_id)
        .where(TelegramLink.digest_time.is_not(None))
    )
    return [(row[0], row[1]) for row in rows]


async def mark_digest(session: AsyncSession, link_id: int, day: date) -> bool:
    """Claim today's digest of a link: one statement, so one instance wins."""
    result = await session.execute(
        update(TelegramLink)
        .where(
            TelegramLink.id == link_id,
            or_(TelegramLink.digest_sent_on.is_(None), TelegramLink.digest_sent_on < day),
        )
        .values(digest_sent_on=day)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def project_named(session: AsyncSession, owner_id: int, name: str) -> Project | None:
    """The user's live project with this name (case-insensitive), oldest first."""
    result = await session.execute(
        select(Project)
        .where(Project.owner_id == owner_id, Project.deleted_at.is_(None), func.lower(Project.name) == name.lower())
        .order_by(Project.id)
        .limit(1)
    )
    return result.scalar_one_or_none()


# PostgreSQL one-round-trip paths --------------------------------------------------------------------------------

LINK_COLUMNS = ("id", "user_id", "chat_id", "linked_at", "last_list", "digest_time", "digest_sent_on")
USER_COLUMNS = ("id", "email", "timezone", "locale", "is_admin", "is_active", "sync_version", "token_version")
PG_LINK_OF_CHAT = (
    f"SELECT {', '.join(f'l.{c}' for c in LINK_COLUMNS)}, {', '.join(f'u.{c}' for c in USER_COLUMNS)} "  # noqa: S608
    "FROM telegram_links AS l JOIN users AS u ON u.id = l.user_id WHERE l.chat_id = $1"
)

# $1 the owner, $2… the columns of a plain create (tasks.repository.CREATE_COLUMNS), then now, then the project's
# name in lower case (NULL: no project)
_N = len(tasks_repository.CREATE_COLUMNS)
_NOW = f"${_N + 2}"
_PROJECT = f"${_N + 3}::text"
# The task is inserted only when maintenance is off and, if a project was named, the owner has a live project of
# that name (the oldest, as `project_named`); the answer is (maintenance_enabled, the task's id, its JSON, the
# project's id, the project's name). A named project that does not exist yet: nothing inserted, project id NULL.
PG_ADD_TASK = (
    "WITH guard AS (SELECT maintenance_enabled AS m FROM app_state WHERE id = 1 FOR SHARE), "  # noqa: S608
    f"proj AS (SELECT id, name FROM projects WHERE owner_id = $1 AND deleted_at IS NULL AND lower(name) = {_PROJECT} "
    "ORDER BY id LIMIT 1), "
    f"ins AS (INSERT INTO tasks (owner_id, project_id, {', '.join(tasks_repository.CREATE_COLUMNS)}, done, "
    "created_at, updated_at, sync_version) "
    f"SELECT $1, (SELECT proj.id FROM proj), {', '.join(f'${i + 2}' for i in range(_N))}, false, {_NOW}, {_NOW}, "
    f"ttd_sync_next_version($1) FROM guard WHERE NOT guard.m AND ({_PROJECT} IS NULL OR EXISTS (SELECT 1 FROM proj)) "
    f"RETURNING tasks.id, {tasks_repository.TASK_JSON}::text AS j) "
    "SELECT guard.m, (SELECT ins.id FROM ins), (SELECT ins.j FROM ins), (SELECT proj.id FROM proj), "
    "(SELECT proj.name FROM proj) FROM guard"
)
