"""The Telegram domain's logic, callable without a bot: linking chats, de-duplicating updates, the reminder outbox,
and the task/timer actions the bot performs — through the same services as the API, with the maintenance guard
first in every write transaction and the same live events afterwards.

Guarantees:
* a link token is 43 URL-safe characters (≤ 64, what a deep link's `start` parameter allows), stored as sha256,
  valid 10 minutes, used once (one UPDATE … WHERE used_at IS NULL);
* one chat per user and one user per chat (unique keys; linking a user again moves the link to the new chat);
* an `update_id` is handled by one instance once: `SET NX` in Redis, or a row in `telegram_updates` without Redis;
* a fired reminder gets one outbox row per firing, written in the transaction that claims the reminder.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from timetodo.auth import service as auth_service
from timetodo.auth.models import User
from timetodo.core import rawdb
from timetodo.core.cache import Cache
from timetodo.core.database import Database, utcnow
from timetodo.core.errors import Conflict, ErrorCode, MaintenanceActive
from timetodo.core.maintenance import guard_write
from timetodo.tasks import service as tasks_service
from timetodo.tasks.models import Project, Task, task_to_dict
from timetodo.tasks.repository import CREATE_COLUMNS
from timetodo.tasks.schemas import Due, ProjectIn, Recurrence, TaskIn, TaskOut, TaskUpdate
from timetodo.telegram import repository
from timetodo.telegram.models import TelegramLink, TelegramLinkToken, TelegramOutbox
from timetodo.telegram.parser import Parsed
from timetodo.timer import service as timer_service
from timetodo.timer.models import TimeEntry

LINK_TOKEN_TTL = timedelta(minutes=10)
UPDATE_CLAIM_SECONDS = 24 * 3600
Publish = Callable[[int, str, Any], Awaitable[None]]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# linking ------------------------------------------------------------------------------------------------------


async def create_link_token(session: AsyncSession, user_id: int, retry_after: int) -> tuple[str, datetime]:
    """A new one-time token for the user (older unused ones stop working)."""
    await guard_write(session, retry_after)
    now = utcnow()
    await repository.prune_tokens(session, user_id, now)
    token = secrets.token_urlsafe(32)
    expires = now + LINK_TOKEN_TTL
    session.add(TelegramLinkToken(token_hash=hash_token(token), user_id=user_id, created_at=now, expires_at=expires))
    await session.commit()
    return token, expires


@dataclass
class LinkResult:
    status: str  # linked | already | invalid | chat_taken
    user: User | None = None


async def link_chat(session: AsyncSession, token: str, chat_id: int, retry_after: int) -> LinkResult:
    """`/start <token>`: link the chat to the token's user. A chat linked to someone else stays as it is."""
    await guard_write(session, retry_after)
    if not 1 <= len(token) <= 64:
        return LinkResult("invalid")
    existing = await repository.link_of_chat(session, chat_id)
    now = utcnow()
    user_id = await repository.use_token(session, hash_token(token), now)
    if user_id is None:
        await session.rollback()
        return LinkResult("invalid")
    if existing is not None:
        if existing[0].user_id == user_id:
            await session.commit()  # the token is spent either way
            return LinkResult("already", existing[1])
        await session.rollback()  # the token stays usable for the chat it was meant for
        return LinkResult("chat_taken", existing[1])
    await repository.delete_link_of_user(session, user_id)  # one chat per user: the new chat replaces the old
    session.add(TelegramLink(user_id=user_id, chat_id=chat_id, linked_at=now, last_list=[]))
    try:
        await session.commit()
    except IntegrityError:  # the chat was linked by a concurrent /start
        await session.rollback()
        return LinkResult("chat_taken")
    return LinkResult("linked", await auth_service.get_user(session, user_id))


async def unlink_user(session: AsyncSession, user_id: int, retry_after: int) -> bool:
    await guard_write(session, retry_after)
    removed = await repository.delete_link_of_user(session, user_id)
    await session.commit()
    return removed


async def unlink_chat(session: AsyncSession, chat_id: int, retry_after: int) -> bool:
    await guard_write(session, retry_after)
    removed = await repository.delete_link_of_chat(session, chat_id)
    await session.commit()
    return removed


async def chat_user(session: AsyncSession, chat_id: int) -> tuple[TelegramLink, User] | None:
    return await repository.link_of_chat(session, chat_id)


async def chat_user_now(db: Database, chat_id: int) -> tuple[TelegramLink, User] | None:
    """The chat's link and user as detached objects, read by one statement outside any transaction (PostgreSQL:
    straight on the pooled connection, `repository.PG_LINK_OF_CHAT`)."""
    if not db.postgres:
        async with db.sessionmaker() as session:
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            return await repository.link_of_chat(session, chat_id)
    row = await rawdb.fetchrow(db.engine, repository.PG_LINK_OF_CHAT, chat_id)
    if row is None:
        return None
    values = list(row)
    n = len(repository.LINK_COLUMNS)
    link = dict(zip(repository.LINK_COLUMNS, values[:n], strict=True))
    if isinstance(link["last_list"], str | bytes):
        link["last_list"] = orjson.loads(link["last_list"])
    user = dict(zip(repository.USER_COLUMNS, values[n:], strict=True))
    return TelegramLink(**link), User(**user)


# updates --------------------------------------------------------------------------------------------------------


RELAY_OFFSET = 1 << 52
"""Database claims of relayed updates (see `claim_update`) are stored as `update_id + RELAY_OFFSET`: Telegram's
update ids are far below it, and a probe's are negative."""


def redis_prefix(bot_token: str) -> str:
    """`tg:<bot id>`: every Redis key of a bot starts with it, so two bots on one Redis never share a claim or a
    limiter slot (the bot id is the token's public part before the colon, what getMe answers as `id`)."""
    return f"tg:{bot_token.split(':', 1)[0]}"


async def claim_update(
    cache: Cache,
    maker: async_sessionmaker[AsyncSession],
    update_id: int,
    retry_after: int,
    *,
    prefix: str = "tg",
    relayed: bool = False,
) -> bool:
    """True for the first instance to see this update id; later deliveries (or other instances) get False.
    Without Redis the claim is a database row, written under the maintenance guard (MaintenanceActive → the
    webhook answers 503 and Telegram delivers the update again later).

    `relayed`: an update that an old host accepted but could not run because it was frozen, sent on to this host
    by its runtime (see `TelegramRuntime`). It has a claim space of its own — the old host's claim of the same id
    arrives here with the copied Redis/database and must not make this host drop it."""
    if cache.kind == "redis":
        kind = "relay" if relayed else "update"
        return await cache.set_if_absent(f"{prefix}:{kind}:{update_id}", b"1", UPDATE_CLAIM_SECONDS)
    async with maker() as session:
        await guard_write(session, retry_after)
        now = utcnow()
        fresh = await repository.record_update(session, update_id + (RELAY_OFFSET if relayed else 0), now)
        if fresh and update_id % 100 == 0:
            await repository.prune_updates(session, now - timedelta(seconds=UPDATE_CLAIM_SECONDS))
        await session.commit()
        return fresh


# reminders → outbox ---------------------------------------------------------------------------------------------


async def enqueue_reminders(session: AsyncSession, fired: Sequence[dict[str, Any]]) -> None:
    """Called by the reminder scheduler inside the transaction that claims `fired`: one outbox row per fired
    reminder of a linked user. If that transaction rolls back, neither the claim nor the rows exist."""
    chats = await repository.links_of_users(session, [int(item["owner_id"]) for item in fired])
    now = utcnow()
    for item in fired:
        chat_id = chats.get(int(item["owner_id"]))
        if chat_id is None:
            continue
        session.add(
            TelegramOutbox(
                kind="reminder",
                user_id=int(item["owner_id"]),
                chat_id=chat_id,
                reminder_id=int(item["id"]),
                task_id=int(item["task_id"]),
                due_at=item["fire_at"] or now,
                state="pending",
                attempts=0,
                next_attempt_at=now,
            )
        )
    await session.flush()


# actions (the API's services, the API's events) -------------------------------------------------------------


def task_out(task: Task | Any) -> dict[str, Any]:
    return TaskOut.model_validate(task_to_dict(task)).model_dump(mode="json")


async def find_or_create_project(session: AsyncSession, user_id: int, name: str) -> tuple[Project, bool]:
    project = await repository.project_named(session, user_id, name)
    if project is not None:
        return project, False
    project = await tasks_service.create_project(session, user_id, ProjectIn(name=name))
    return project, True


@dataclass(frozen=True)
class AddedTask:
    """What the reply to `/add` shows of the task it created."""

    id: int
    title: str
    due_date: date | None
    due_datetime: datetime | None
    recurrence_rule: str | None


def _task_in(user: User, parsed: Parsed) -> TaskIn:
    """The API's input model (its validation) for what `/add` understood."""
    due: Due | None = None
    if parsed.due_date is not None:
        recurrence = Recurrence(rule=parsed.rule) if parsed.rule else None
        if parsed.due_datetime is not None:
            due = Due(datetime=parsed.due_datetime, timezone=user.timezone, recurrence=recurrence)
        else:
            due = Due(date=parsed.due_date, recurrence=recurrence)
    return TaskIn(title=parsed.title, priority=parsed.priority or 4, due=due)


async def _add_task_pg(
    db: Database, user_id: int, project: str | None, data: TaskIn, retry_after: int
) -> tuple[AddedTask, bytes, str | None] | None:
    """`/add` in one statement (`repository.PG_ADD_TASK`): the task, its JSON and the project's name; None when the
    named project does not exist yet (nothing was written)."""
    columns = tasks_service.due_columns(data.due)
    values: dict[str, Any] = {
        "title": data.title,
        "description": data.description,
        "priority": data.priority,
        "labels": orjson.dumps(list(dict.fromkeys(data.labels))).decode(),
        "position": data.position,
        "estimate_minutes": data.estimate_minutes,
        **columns,
    }
    args = [user_id, *(values[name] for name in CREATE_COLUMNS), utcnow(), project.lower() if project else None]
    row = await rawdb.fetchrow(db.engine, repository.PG_ADD_TASK, *args, write=True)
    if row is None:
        raise RuntimeError("app_state row is missing: run `timetodo db upgrade`")
    maintenance, task_id, body, _project_id, project_name = row
    if maintenance:
        raise MaintenanceActive(retry_after)
    if task_id is None:
        return None
    task = AddedTask(int(task_id), data.title, columns["due_date"], columns["due_datetime"], columns["recurrence_rule"])
    return task, str(body).encode(), project_name


async def add_task(
    db: Database, publish: Publish, user: User, parsed: Parsed, retry_after: int
) -> tuple[AddedTask, str | None, bool]:
    """Create the task `/add` understood (and its project when missing: `created`); publishes `task.created` as
    POST /tasks does (POST /projects publishes nothing). Returns the task, the project's name, `created`.

    PostgreSQL: one statement when the project exists or none was named (guard, project lookup, insert — see
    `repository.PG_ADD_TASK`); otherwise (a new project, or SQLite) a session: the guard, the project (created,
    committed), the guard again, the task through `tasks.service.create_task`."""
    data = _task_in(user, parsed)
    if db.postgres:
        done = await _add_task_pg(db, user.id, parsed.project, data, retry_after)
        if done is not None:
            task, body, project_name = done
            await publish(user.id, "task.created", orjson.Fragment(body))
            return task, project_name, False
    async with db.sessionmaker() as session:
        await guard_write(session, retry_after)
        project, created = None, False
        if parsed.project:
            project, created = await find_or_create_project(session, user.id, parsed.project)
            if created:  # create_project committed: the task's insert is a new transaction, guarded again
                await guard_write(session, retry_after)
            data.project_id = project.id
        created_task = await tasks_service.create_task(session, user.id, data)
        out = task_out(created_task)
    await publish(user.id, "task.created", out)
    added = AddedTask(
        created_task.id,
        created_task.title,
        created_task.due_date,
        created_task.due_datetime,
        created_task.recurrence_rule,
    )
    return added, project.name if project is not None else None, created


async def complete_task(
    maker: async_sessionmaker[AsyncSession], publish: Publish, user_id: int, task_id: int, retry_after: int
) -> Task:
    async with maker() as session:
        await guard_write(session, retry_after)
        task = await tasks_service.set_done(session, user_id, task_id, True)
        out = task_out(task)
    await publish(user_id, "task.completed", out)
    return task


async def move_due(
    maker: async_sessionmaker[AsyncSession],
    publish: Publish,
    user: User,
    task_id: int,
    retry_after: int,
    *,
    days: int = 0,
    hours: int = 0,
    clear: bool = False,
) -> Task:
    """Tomorrow (+1 day, keeping the time; today when there was no due), +1 h (from the due, or from now), or no date.
    The recurrence is kept."""
    from zoneinfo import ZoneInfo

    async with maker() as session:
        await guard_write(session, retry_after)
        task = await tasks_service.get_task(session, user.id, task_id)
        recurrence = (
            Recurrence(rule=task.recurrence_rule, mode=task.recurrence_mode or "from_due")
            if task.recurrence_rule
            else None
        )
        zone = ZoneInfo(user.timezone)
        local_now = utcnow().astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
        due: Due | None
        if clear:
            due = None
        elif hours:
            base = task.due_datetime if task.due_datetime is not None else local_now
            due = Due(
                datetime=max(base, local_now) + timedelta(hours=hours),
                timezone=task.due_timezone or user.timezone,
                recurrence=recurrence,
            )
        elif task.due_datetime is not None:
            base_day = max(task.due_datetime.date(), local_now.date())
            due = Due(
                datetime=datetime.combine(base_day + timedelta(days=days), task.due_datetime.time()),
                timezone=task.due_timezone,
                recurrence=recurrence,
            )
        else:
            base_day = max(task.due_date or local_now.date(), local_now.date())
            due = Due(date=base_day + timedelta(days=days), recurrence=recurrence)
        data = TaskUpdate(due=due)
        task = await tasks_service.update_task(session, user.id, task_id, data)
        out = task_out(task)
    await publish(user.id, "task.updated", out)
    return task


async def start_timer(
    maker: async_sessionmaker[AsyncSession], publish: Publish, user_id: int, task_id: int, retry_after: int
) -> tuple[TimeEntry, TimeEntry | None, str]:
    async with maker() as session:
        await guard_write(session, retry_after)
        entry, stopped = await timer_service.start_timer(session, user_id, task_id, None, "")
        started_out = timer_service.entry_out(entry).model_dump(mode="json")
        stopped_out = timer_service.entry_out(stopped).model_dump(mode="json") if stopped is not None else None
        title = (await tasks_service.get_task(session, user_id, task_id)).title
    if stopped_out is not None:
        await publish(user_id, "time_entry.stopped", stopped_out)
    await publish(user_id, "time_entry.started", started_out)
    return entry, stopped, title


async def stop_timer(
    maker: async_sessionmaker[AsyncSession], publish: Publish, user_id: int, retry_after: int
) -> TimeEntry | None:
    async with maker() as session:
        await guard_write(session, retry_after)
        try:
            entry = await timer_service.stop_timer(session, user_id)
        except Conflict as exc:
            if exc.code == ErrorCode.timer_not_running:
                return None
            raise
        out = timer_service.entry_out(entry).model_dump(mode="json")
    await publish(user_id, "time_entry.stopped", out)
    return entry


async def remember_list(
    maker: async_sessionmaker[AsyncSession], chat_id: int, task_ids: list[int], retry_after: int
) -> bool:
    """Store the numbering of the list just shown (for `/done n`). In maintenance the list is still shown; False."""
    async with maker() as session:
        try:
            await guard_write(session, retry_after)
        except MaintenanceActive:
            return False
        found = await repository.link_of_chat(session, chat_id)
        if found is None:
            return False
        found[0].last_list = task_ids
        await session.commit()
        return True


async def update_link(maker: async_sessionmaker[AsyncSession], chat_id: int, retry_after: int, **values: Any) -> None:
    async with maker() as session:
        await guard_write(session, retry_after)
        found = await repository.link_of_chat(session, chat_id)
        if found is not None:
            for key, value in values.items():
                setattr(found[0], key, value)
            await session.commit()
