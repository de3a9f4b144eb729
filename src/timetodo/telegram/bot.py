"""The bot itself: aiogram 3 handlers that turn messages and button presses into calls of the domain services.

Handlers are thin: they parse the command, call `timetodo.telegram.service` (which calls the API's own task,
timer and auth services under the maintenance guard and publishes the same live events) and answer in the user's
language. Every outgoing request passes `LimitedRetries` (the shared send-rate limiter; waits and retries on 429).

Callback data is `<version>:<action>:<argument>` (≤ 64 bytes); a press on a button of another version answers
"this button has expired". A press is accepted only from the chat the button was sent to, acting as that chat's
user, so a task of someone else is "not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, ClassVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest, TelegramNetworkError, TelegramRetryAfter
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import (
    BotCommand,
    CallbackQuery,
    ErrorEvent,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)
from aiohttp import ClientError, ClientTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from timetodo.auth import service as auth_service
from timetodo.auth.models import User
from timetodo.auth.schemas import UserUpdate
from timetodo.core.database import Database, utcnow
from timetodo.core.errors import AppError, InvalidInput, MaintenanceActive, NotFound
from timetodo.core.maintenance import guard_write
from timetodo.reminders import service as reminders_service
from timetodo.tasks import service as tasks_service
from timetodo.telegram import service
from timetodo.telegram.limiter import SendLimiter
from timetodo.telegram.models import TelegramLink
from timetodo.telegram.parser import parse
from timetodo.telegram.texts import COMMANDS, LOCALES, locale_of, t
from timetodo.timer import service as timer_service

log = logging.getLogger("timetodo.telegram")
CALLBACK_VERSION = "1"
MAX_INPUT = 1000  # characters of /add input; longer messages are refused whole
PAGE_SIZE = 10
LIST_LIMIT = 100
SEND_RETRIES = 3
LIST_KINDS = {"t": "today", "o": "overdue", "w": "week", "a": "all"}

SENT: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("telegram_sent", default=None)
"""When set (a probe, see `TelegramRuntime.probe`), every request the bot makes while handling the update is
recorded here with what the Bot API answered: `{"method", "chat_id", "message_id"}`."""
DEFERRABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("telegram_deferrable", default=False)
"""When true (an update that came through the webhook), a `MaintenanceActive` raised by a handler is not answered
with "maintenance" but propagates to the runtime, which keeps the update and runs it later (see runtime)."""


# callback data --------------------------------------------------------------------------------------------------


def encode(action: str, argument: str | int) -> str:
    data = f"{CALLBACK_VERSION}:{action}:{argument}"
    if len(data.encode()) > 64:
        raise ValueError("callback data over 64 bytes")
    return data


def decode(data: str | None) -> tuple[str, str] | None:
    """(action, argument), or None for malformed data or another version (an old button)."""
    parts = (data or "").split(":", 2)
    if len(parts) != 3 or parts[0] != CALLBACK_VERSION or not parts[1]:
        return None
    return parts[1], parts[2]


def task_ids_of(markup: InlineKeyboardMarkup | None) -> set[int]:
    ids = set()
    for row in markup.inline_keyboard if markup else []:
        for button in row:
            found = decode(button.callback_data)
            if found and found[0] in ("d", "tm", "h1", "nd", "st", "o") and found[1].isdigit():
                ids.add(int(found[1]))
    return ids


# the context every handler gets ------------------------------------------------------------------------------


@dataclass
class BotContext:
    db: Database
    publish: service.Publish
    retry_after: int

    @property
    def maker(self) -> async_sessionmaker[AsyncSession]:
        return self.db.sessionmaker

    async def linked(self, chat_id: int) -> tuple[TelegramLink, User] | None:
        """The chat's link and user, read outside a transaction (one statement; a single SELECT is consistent by
        itself). The objects are detached copies: a write re-reads what it changes."""
        return await service.chat_user_now(self.db, chat_id)


def _message_locale(message: Message | CallbackQuery) -> str:
    user = message.from_user
    return locale_of(user.language_code if user else None)


def _zone(user: User) -> ZoneInfo:
    return ZoneInfo(user.timezone)


def _fmt_due(row: Any) -> str:
    if row.due_datetime is not None:
        return f"{row.due_datetime:%Y-%m-%d %H:%M}"
    if row.due_date is not None:
        return f"{row.due_date:%Y-%m-%d}"
    return ""


def _fmt_duration(seconds: int) -> str:
    hours, rest = divmod(max(0, seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min"


def task_keyboard(locale: str, task_id: int) -> InlineKeyboardMarkup:
    """Buttons under one task (the reply to /add): fix the due date, complete, start a timer."""
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(text=t(locale, "btn_tomorrow"), callback_data=encode("tm", task_id)),
                InlineKeyboardButton(text=t(locale, "btn_plus_hour"), callback_data=encode("h1", task_id)),
                InlineKeyboardButton(text=t(locale, "btn_no_due"), callback_data=encode("nd", task_id)),
            ],
            [
                InlineKeyboardButton(text=t(locale, "btn_done"), callback_data=encode("d", task_id)),
                InlineKeyboardButton(text=t(locale, "btn_timer"), callback_data=encode("st", task_id)),
            ],
        ]
    )


def reminder_keyboard(locale: str, task_id: int, reminder_id: int) -> InlineKeyboardMarkup:
    """✅ Done · ⏰ +15 min · +1 h · Tomorrow · ▶ Start timer (SPEC 2.3)."""
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(text=t(locale, "btn_done"), callback_data=encode("d", task_id)),
                InlineKeyboardButton(text=t(locale, "btn_plus_15"), callback_data=encode("r15", reminder_id)),
                InlineKeyboardButton(text=t(locale, "btn_plus_hour"), callback_data=encode("r60", reminder_id)),
                InlineKeyboardButton(text=t(locale, "btn_tomorrow"), callback_data=encode("rtm", reminder_id)),
            ],
            [InlineKeyboardButton(text=t(locale, "btn_timer"), callback_data=encode("st", task_id))],
        ]
    )


# lists ---------------------------------------------------------------------------------------------------------


async def fetch_list(ctx: BotContext, user: User, kind: str, project_id: int | None = None) -> list[Any]:
    """Open tasks of a list kind, soonest first (overdue ones first in `today`)."""
    today = utcnow().astimezone(_zone(user)).date()
    async with ctx.maker() as session:
        if kind == "today":
            rows, _ = await tasks_service.list_tasks(session, user.id, None, LIST_LIMIT, done=False, overdue=True)
            more, _ = await tasks_service.list_tasks(session, user.id, None, LIST_LIMIT, done=False, today=True)
            seen = {row.id for row in rows}
            rows = list(rows) + [row for row in more if row.id not in seen]
        elif kind == "overdue":
            rows, _ = await tasks_service.list_tasks(session, user.id, None, LIST_LIMIT, done=False, overdue=True)
        elif kind == "week":
            rows, _ = await tasks_service.list_tasks(
                session, user.id, None, LIST_LIMIT, done=False, due_after=today, due_before=today + timedelta(days=6)
            )
        else:
            rows, _ = await tasks_service.list_tasks(
                session, user.id, None, LIST_LIMIT, done=False, project_id=project_id
            )

    def key(row: Any) -> tuple[date, time, int]:
        moment = row.due_datetime
        return (row.due_date or date.max, moment.time() if moment else time.max, row.id)

    return sorted(rows, key=key)


def render_list(
    locale: str, header: str, rows: list[Any], page: int, list_arg: str
) -> tuple[str, InlineKeyboardMarkup | None]:
    if not rows:
        return f"{header}\n{t(locale, 'no_tasks')}", None
    start = page * PAGE_SIZE
    lines, keyboard = [header], []
    for number, row in enumerate(rows[start : start + PAGE_SIZE], start=start + 1):
        due = _fmt_due(row)
        priority = f" !{row.priority}" if row.priority and row.priority < 4 else ""
        lines.append(f"{number}. {row.title}{priority}" + (f" · {due}" if due else ""))
        keyboard.append(
            [
                InlineKeyboardButton(text=f"✅ {number}", callback_data=encode("d", row.id)),
                InlineKeyboardButton(text=f"📅 {number}", callback_data=encode("tm", row.id)),
                InlineKeyboardButton(text=f"+1h {number}", callback_data=encode("h1", row.id)),
                InlineKeyboardButton(text=f"▶ {number}", callback_data=encode("st", row.id)),
                InlineKeyboardButton(text=f"🔎 {number}", callback_data=encode("o", row.id)),
            ]
        )
    if start + PAGE_SIZE < len(rows):
        keyboard.append(
            [InlineKeyboardButton(text=t(locale, "btn_more"), callback_data=encode("l", f"{list_arg}.{page + 1}"))]
        )
        lines.append(t(locale, "page", page=page + 1))
    return "\n".join(lines), InlineKeyboardMarkup(inline_keyboard=keyboard)


async def task_card(ctx: BotContext, user: User, task_id: int) -> tuple[str, InlineKeyboardMarkup]:
    """The "Open" button: one task in full (title, due, repeat, project, priority, description) with its buttons."""
    locale = user.locale
    async with ctx.maker() as session:
        task = await tasks_service.get_task(session, user.id, task_id)
        project = await tasks_service.get_project(session, user.id, task.project_id) if task.project_id else None
    lines = [("✅ " if task.done else "") + task.title]
    if task.due_date is not None:
        lines.append(t(locale, "due", due=_fmt_due(task)))
    if task.recurrence_rule:
        lines.append(t(locale, "repeats", rule=task.recurrence_rule))
    if project is not None:
        lines.append(t(locale, "project", name=project.name))
    if task.priority and task.priority < 4:
        lines.append(t(locale, "priority", p=task.priority))
    if task.description:
        description = task.description if len(task.description) <= 1500 else task.description[:1500] + "…"
        lines += ["", description]
    return "\n".join(lines), task_keyboard(locale, task.id)


async def _list_header(ctx: BotContext, user: User, locale: str, list_arg: str) -> tuple[str, str, int | None]:
    """(header, kind, project id) of a list argument: t/o/w/a or p<project id>."""
    if list_arg.startswith("p") and list_arg[1:].isdigit():
        async with ctx.maker() as session:
            project = await tasks_service.get_project(session, user.id, int(list_arg[1:]))
        return t(locale, "list_project", name=project.name), "all", project.id
    kind = LIST_KINDS.get(list_arg, "all")
    return t(locale, f"list_{kind}"), kind, None


async def show_list(message: Message, ctx: BotContext, link: TelegramLink, user: User, list_arg: str) -> None:
    locale = user.locale
    header, kind, project_id = await _list_header(ctx, user, locale, list_arg)
    rows = await fetch_list(ctx, user, kind, project_id)
    await service.remember_list(ctx.maker, link.chat_id, [row.id for row in rows], ctx.retry_after)
    text, markup = render_list(locale, header, rows, 0, list_arg)
    await message.answer(text, reply_markup=markup)


# handlers ------------------------------------------------------------------------------------------------------

Handler = Callable[[Message, BotContext, TelegramLink, User, CommandObject | None], Awaitable[None]]
LINKED_COMMANDS: list[tuple[str, Handler]] = []


def linked_command(name: str) -> Callable[[Handler], Handler]:
    """A handler of a command that needs a linked chat (unlinked chats get the explanation); registered by
    `create_dispatcher`."""

    def register(handler: Handler) -> Handler:
        LINKED_COMMANDS.append((name, handler))
        return handler

    return register


def _linked_runner(handler: Handler) -> Callable[..., Awaitable[None]]:
    async def run(message: Message, ctx: BotContext, command: CommandObject | None = None) -> None:
        found = await ctx.linked(message.chat.id)
        if found is None:
            await message.answer(t(_message_locale(message), "unlinked"))
            return
        await handler(message, ctx, found[0], found[1], command)

    return run


async def on_start(message: Message, ctx: BotContext, command: CommandObject) -> None:
    locale = _message_locale(message)
    token = (command.args or "").strip()
    if not token:
        found = await ctx.linked(message.chat.id)
        if found is None:
            await message.answer(t(locale, "unlinked"))
        else:
            await message.answer(t(found[1].locale, "already_linked", email=found[1].email))
        return
    async with ctx.maker() as session:
        result = await service.link_chat(session, token, message.chat.id, ctx.retry_after)
    if result.status == "linked" and result.user is not None:
        await message.answer(t(result.user.locale, "linked", email=result.user.email))
    elif result.status == "already" and result.user is not None:
        await message.answer(t(result.user.locale, "already_linked", email=result.user.email))
    elif result.status == "chat_taken":
        await message.answer(t(locale, "chat_taken"))
    else:
        await message.answer(t(locale, "link_invalid"))


async def on_help(message: Message, ctx: BotContext) -> None:
    found = await ctx.linked(message.chat.id)
    locale = found[1].locale if found else _message_locale(message)
    await message.answer(t(locale, "help"))


@linked_command("unlink")
async def on_unlink(message: Message, ctx: BotContext, link: TelegramLink, user: User, _: CommandObject | None) -> None:
    async with ctx.maker() as session:
        await service.unlink_chat(session, message.chat.id, ctx.retry_after)
    await message.answer(t(user.locale, "unlinked_done"))


async def add_text(message: Message, ctx: BotContext, user: User, text: str) -> None:
    locale = user.locale
    text = text.strip()
    if not text:
        await message.answer(t(locale, "add_usage"))
        return
    if len(text) > MAX_INPUT:
        await message.answer(t(locale, "too_long", length=len(text), limit=MAX_INPUT))
        return
    parsed = parse(text, utcnow().astimezone(_zone(user)))
    task, project, created = await service.add_task(ctx.db, ctx.publish, user, parsed, ctx.retry_after)
    lines = [t(locale, "added", title=task.title)]
    if task.due_date is not None:
        lines.append(t(locale, "due", due=_fmt_due(task)))
    if task.recurrence_rule:
        lines.append(t(locale, "repeats", rule=task.recurrence_rule))
    if project is not None:
        lines.append(t(locale, "project_created" if created else "project", name=project))
    if parsed.priority:
        lines.append(t(locale, "priority", p=parsed.priority))
    await message.answer("\n".join(lines), reply_markup=task_keyboard(locale, task.id))


@linked_command("add")
async def on_add(message: Message, ctx: BotContext, link: TelegramLink, user: User, cmd: CommandObject | None) -> None:
    await add_text(message, ctx, user, (cmd.args if cmd else "") or "")


@linked_command("today")
async def on_today(message: Message, ctx: BotContext, link: TelegramLink, user: User, _: CommandObject | None) -> None:
    await show_list(message, ctx, link, user, "t")


@linked_command("overdue")
async def on_overdue(
    message: Message, ctx: BotContext, link: TelegramLink, user: User, _: CommandObject | None
) -> None:
    await show_list(message, ctx, link, user, "o")


@linked_command("week")
async def on_week(message: Message, ctx: BotContext, link: TelegramLink, user: User, _: CommandObject | None) -> None:
    await show_list(message, ctx, link, user, "w")


@linked_command("list")
async def on_list(message: Message, ctx: BotContext, link: TelegramLink, user: User, cmd: CommandObject | None) -> None:
    name = ((cmd.args if cmd else "") or "").strip().lstrip("#")
    if not name:
        await show_list(message, ctx, link, user, "a")
        return
    async with ctx.maker() as session:
        from timetodo.telegram import repository

        project = await repository.project_named(session, user.id, name)
    if project is None:
        await message.answer(t(user.locale, "no_project", name=name))
        return
    await show_list(message, ctx, link, user, f"p{project.id}")


def _task_of_number(link: TelegramLink, argument: str) -> int | None:
    if not argument.isdigit() or not 1 <= int(argument) <= len(link.last_list or []):
        return None
    return int(link.last_list[int(argument) - 1])


@linked_command("done")
async def on_done(message: Message, ctx: BotContext, link: TelegramLink, user: User, cmd: CommandObject | None) -> None:
    locale = user.locale
    argument = ((cmd.args if cmd else "") or "").strip()
    task_id: int | None = None
    if not argument and message.reply_to_message is not None:
        ids = task_ids_of(message.reply_to_message.reply_markup)
        task_id = ids.pop() if len(ids) == 1 else None
        if task_id is None:
            await message.answer(t(locale, "done_usage"))
            return
    elif not argument:
        await message.answer(t(locale, "done_usage"))
        return
    else:
        task_id = _task_of_number(link, argument.lstrip("#"))
        if task_id is None:
            await message.answer(t(locale, "no_such_number", n=argument[:20]))
            return
    await message.answer(await complete(ctx, user, task_id))


async def complete(ctx: BotContext, user: User, task_id: int) -> str:
    task = await service.complete_task(ctx.maker, ctx.publish, user.id, task_id, ctx.retry_after)
    text = t(user.locale, "completed", title=task.title)
    if not task.done:  # a recurring task moved on
        text += "\n" + t(user.locale, "next_due", due=_fmt_due(task))
    return text


@linked_command("timer")
async def on_timer(
    message: Message, ctx: BotContext, link: TelegramLink, user: User, cmd: CommandObject | None
) -> None:
    locale = user.locale
    words = ((cmd.args if cmd else "") or "").split()
    if not words:
        async with ctx.maker() as session:
            entry = await timer_service.get_running(session, user.id)
            if entry is None:
                await message.answer(t(locale, "timer_idle"))
                return
            title = t(locale, "no_title")
            if entry.task_id is not None:
                title = (await tasks_service.get_task(session, user.id, entry.task_id)).title
            seconds = timer_service.entry_out(entry).duration_seconds
        await message.answer(t(locale, "timer_running", title=title, duration=_fmt_duration(seconds)))
        return
    if words[0].lower() == "stop":
        stopped = await service.stop_timer(ctx.maker, ctx.publish, user.id, ctx.retry_after)
        if stopped is None:
            await message.answer(t(locale, "timer_idle"))
            return
        title = t(locale, "no_title")
        if stopped.task_id is not None:
            async with ctx.maker() as session:
                title = (await tasks_service.get_task(session, user.id, stopped.task_id)).title
        seconds = timer_service.entry_out(stopped).duration_seconds
        await message.answer(t(locale, "timer_stopped", title=title, duration=_fmt_duration(seconds)))
        return
    if words[0].lower() == "start" and len(words) == 2:
        task_id = _task_of_number(link, words[1].lstrip("#"))
        if task_id is None:
            await message.answer(t(locale, "no_such_number", n=words[1][:20]))
            return
        _, _, title = await service.start_timer(ctx.maker, ctx.publish, user.id, task_id, ctx.retry_after)
        await message.answer(t(locale, "timer_started", title=title))
        return
    await message.answer(t(locale, "timer_usage"))


@linked_command("report")
async def on_report(
    message: Message, ctx: BotContext, link: TelegramLink, user: User, cmd: CommandObject | None
) -> None:
    locale = user.locale
    period = ((cmd.args if cmd else "") or "week").strip().lower()
    today = utcnow().astimezone(_zone(user)).date()
    if period in ("week", "неделя"):
        start = today - timedelta(days=today.weekday())
    elif period in ("month", "месяц"):
        start = today.replace(day=1)
    else:
        await message.answer(t(locale, "report_usage"))
        return
    async with ctx.maker() as session:
        report = await timer_service.time_report(session, user.id, start, today, "task")
    lines = [
        t(locale, "report", start=start.isoformat(), end=today.isoformat(), total=_fmt_duration(report.total_seconds))
    ]
    for group in sorted(report.groups, key=lambda g: -g.seconds)[:15]:
        if group.seconds:
            lines.append(f"• {group.label}: {_fmt_duration(group.seconds)}")
    await message.answer("\n".join(lines))


@linked_command("tz")
async def on_tz(message: Message, ctx: BotContext, link: TelegramLink, user: User, cmd: CommandObject | None) -> None:
    zone = ((cmd.args if cmd else "") or "").strip()
    if not zone:
        await message.answer(t(user.locale, "tz_usage", zone=user.timezone))
        return
    try:
        ZoneInfo(zone)
        data = UserUpdate(timezone=zone)
    except (ZoneInfoNotFoundError, ValueError):
        await message.answer(t(user.locale, "tz_invalid", zone=zone[:64]))
        return
    async with ctx.maker() as session:
        await guard_write(session, ctx.retry_after)
        updated = await auth_service.update_me(session, user.id, data)
    await message.answer(t(user.locale, "tz_set", zone=updated.timezone))


@linked_command("lang")
async def on_lang(message: Message, ctx: BotContext, link: TelegramLink, user: User, cmd: CommandObject | None) -> None:
    locale = ((cmd.args if cmd else "") or "").strip().lower()
    if locale not in LOCALES:
        await message.answer(t(user.locale, "lang_usage"))
        return
    async with ctx.maker() as session:
        await guard_write(session, ctx.retry_after)
        await auth_service.update_me(session, user.id, UserUpdate(locale=locale))
    await message.answer(t(locale, "lang_set"))


@linked_command("digest")
async def on_digest(
    message: Message, ctx: BotContext, link: TelegramLink, user: User, cmd: CommandObject | None
) -> None:
    argument = ((cmd.args if cmd else "") or "").strip().lower()
    if argument in ("off", "выкл"):
        await service.update_link(ctx.maker, link.chat_id, ctx.retry_after, digest_time=None)
        await message.answer(t(user.locale, "digest_off"))
        return
    try:
        at = datetime.strptime(argument, "%H:%M").time()
    except ValueError:
        await message.answer(t(user.locale, "digest_usage"))
        return
    await service.update_link(ctx.maker, link.chat_id, ctx.retry_after, digest_time=f"{at:%H:%M}", digest_sent_on=None)
    await message.answer(t(user.locale, "digest_set", time=f"{at:%H:%M}"))


async def on_ping(message: Message, ctx: BotContext) -> None:
    """Not in the menu: `timetodo migrate validate` sends it (from the operator's probe chat) to check that the bot
    answers on a new host — the database is read (the chat's link) and a message goes out through the Bot API."""
    found = await ctx.linked(message.chat.id)
    await message.answer(t(found[1].locale if found else _message_locale(message), "pong"))


async def on_unknown(message: Message, ctx: BotContext) -> None:
    found = await ctx.linked(message.chat.id)
    await message.answer(t(found[1].locale if found else _message_locale(message), "unknown_command"))


async def on_text(message: Message, ctx: BotContext) -> None:
    """Plain text in a private chat = /add."""
    found = await ctx.linked(message.chat.id)
    if found is None:
        await message.answer(t(_message_locale(message), "unlinked"))
        return
    await add_text(message, ctx, found[1], message.text or "")


# buttons -------------------------------------------------------------------------------------------------------


async def on_button(query: CallbackQuery, ctx: BotContext) -> None:
    decoded = decode(query.data)
    message = query.message if isinstance(query.message, Message) else None
    if decoded is None or message is None:
        await query.answer(t(_message_locale(query), "expired_button"), show_alert=True)
        return
    found = await ctx.linked(message.chat.id)
    if found is None:
        await query.answer(t(_message_locale(query), "unlinked"), show_alert=True)
        return
    link, user = found
    locale = user.locale
    action, argument = decoded
    if action == "l":
        list_arg, _, page = argument.partition(".")
        header, kind, project_id = await _list_header(ctx, user, locale, list_arg)
        rows = await fetch_list(ctx, user, kind, project_id)
        text, markup = render_list(locale, header, rows, int(page) if page.isdigit() else 0, list_arg)
        await service.remember_list(ctx.maker, link.chat_id, [row.id for row in rows], ctx.retry_after)
        await message.edit_text(text, reply_markup=markup)
        await query.answer()
        return
    if not argument.isdigit():
        await query.answer(t(locale, "expired_button"), show_alert=True)
        return
    ident = int(argument)
    if action == "o":
        text, markup = await task_card(ctx, user, ident)
        await message.answer(text, reply_markup=markup)
        await query.answer()
        return
    if action == "d":
        answer = await complete(ctx, user, ident)
    elif action in ("tm", "h1", "nd"):
        task = await service.move_due(
            ctx.maker,
            ctx.publish,
            user,
            ident,
            ctx.retry_after,
            days=1 if action == "tm" else 0,
            hours=1 if action == "h1" else 0,
            clear=action == "nd",
        )
        answer = t(locale, "moved", title=task.title, due=_fmt_due(task) or "—")
    elif action == "st":
        _, _, title = await service.start_timer(ctx.maker, ctx.publish, user.id, ident, ctx.retry_after)
        answer = t(locale, "timer_started", title=title)
    elif action in ("r15", "r60", "rtm"):
        minutes = {"r15": 15, "r60": 60, "rtm": 24 * 60}[action]
        async with ctx.maker() as session:
            await guard_write(session, ctx.retry_after)
            reminder = await reminders_service.snooze(session, user.id, ident, minutes)
            fire_at = reminder.fire_at
        local = fire_at.astimezone(_zone(user)) if fire_at else None
        answer = t(locale, "snoozed", time=f"{local:%Y-%m-%d %H:%M}" if local else "—")
    else:
        await query.answer(t(locale, "expired_button"), show_alert=True)
        return
    await query.answer(answer[:200])
    if len(task_ids_of(message.reply_markup)) == 1 and message.text:  # a single-task message: show the outcome
        keep = None if action == "d" else message.reply_markup
        with contextlib.suppress(TelegramBadRequest):
            await message.edit_text(f"{message.text}\n\n{answer}", reply_markup=keep)


# errors: a clear answer, nothing changed ----------------------------------------------------------------------


async def on_error(event: ErrorEvent, ctx: BotContext) -> bool:
    update, exc = event.update, event.exception
    message = update.message or (update.callback_query.message if update.callback_query else None)
    chat_id = message.chat.id if message is not None else None
    locale = "en"
    if chat_id is not None:
        found = await ctx.linked(chat_id)
        locale = (
            found[1].locale
            if found
            else locale_of(getattr(getattr(update.message, "from_user", None), "language_code", None))
        )
    if isinstance(exc, MaintenanceActive):
        if DEFERRABLE.get():
            raise exc  # the runtime keeps the update for later: nothing was written (the guard comes first)
        text = t(locale, "maintenance")
    elif isinstance(exc, NotFound):
        text = t(locale, "not_found")
    elif isinstance(exc, InvalidInput):
        details = exc.detail if isinstance(exc.detail, list) else [exc.detail]
        text = t(
            locale, "invalid", detail="; ".join(str(d.get("message", d) if isinstance(d, dict) else d) for d in details)
        )
    elif isinstance(exc, AppError):
        text = t(locale, "invalid", detail=str(exc.detail))
    else:
        log.error("telegram update failed", exc_info=exc, extra={"update_id": update.update_id})
        return False
    if update.callback_query is not None:
        await update.callback_query.answer(text[:200], show_alert=True)
    elif update.message is not None:
        await update.message.answer(text)
    return True


# the bot, its dispatcher and its request middleware -----------------------------------------------------------


class LimitedRetries(BaseRequestMiddleware):
    """Every request that sends to a chat waits for the shared limiter; a 429 waits `retry_after` and retries."""

    def __init__(self, limiter: SendLimiter, on_retry: Callable[[], None] | None = None) -> None:
        self.limiter = limiter
        self.on_retry = on_retry

    async def __call__(
        self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot, method: TelegramMethod[TelegramType]
    ) -> Response[TelegramType]:
        chat_id = getattr(method, "chat_id", None)
        for attempt in range(SEND_RETRIES + 1):
            if isinstance(chat_id, int):
                await self.limiter.acquire(chat_id)
            try:
                response = await make_request(bot, method)
            except TelegramRetryAfter as exc:
                if attempt == SEND_RETRIES:
                    raise
                if self.on_retry is not None:
                    self.on_retry()
                await asyncio.sleep(exc.retry_after)
                continue
            sent = SENT.get()
            if sent is not None:
                sent.append(
                    {
                        "method": type(method).__name__,
                        "chat_id": chat_id,
                        # a middleware gets the method's result itself (a Message for sendMessage)
                        "message_id": getattr(response, "message_id", None),
                    }
                )
            return response
        raise AssertionError("unreachable")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class _Session(AiohttpSession):
    """aiogram's aiohttp session with two savings on every request (a third of the cost of a reply in
    `bench/telegram.py`'s profile):

    * a request without a file goes as `application/json` (one of the Bot API's documented encodings; nested objects
      as objects) instead of aiogram's multipart form; one with a file goes as aiogram sends it;
    * the `Response[<result type>]` models aiogram parses answers with are kept alive: pydantic caches parametrised
      models only weakly, so once the garbage collector had taken one, the next answer built the class anew."""

    _response_types: ClassVar[dict[Any, Any]] = {}

    def check_response(
        self, bot: Bot, method: TelegramMethod[TelegramType], status_code: int, content: str
    ) -> Response[TelegramType]:
        returning = method.__returning__
        if returning not in self._response_types:
            self._response_types[returning] = Response[returning]  # type: ignore[valid-type]
        return super().check_response(bot, method, status_code, content)

    def json_body(self, bot: Bot, method: TelegramMethod[TelegramType]) -> bytes | None:
        """The request as a JSON object, or None when it uploads a file. Fields are dropped as aiogram's form drops
        them (None and empty strings)."""
        files: dict[str, Any] = {}
        body = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            if prepared is not None and prepared != "":
                body[key] = prepared
        return None if files else orjson.dumps(body)

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 (aiogram's signature)
    ) -> TelegramType:
        body = self.json_body(bot, method)
        if body is None:
            return await super().make_request(bot, method, timeout)
        session = await self.create_session()
        url = self.api.api_url(token=bot.token, method=method.__api_method__)
        try:
            async with session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=ClientTimeout(total=self.timeout if timeout is None else timeout),
            ) as response:
                raw = await response.text()
        except TimeoutError as exc:  # as aiogram's own session reports these
            raise TelegramNetworkError(method=method, message="Request timeout error") from exc
        except ClientError as exc:
            raise TelegramNetworkError(method=method, message=f"{type(exc).__name__}: {exc}") from exc
        result = self.check_response(bot=bot, method=method, status_code=response.status, content=raw)
        return cast(TelegramType, result.result)


def create_bot(token: str, api_base: str, limiter: SendLimiter, on_retry: Callable[[], None] | None = None) -> Bot:
    """aiogram's Bot on its aiohttp session, pointed at `api_base` (TELEGRAM_API_BASE)."""
    session = _Session(api=TelegramAPIServer.from_base(api_base), json_loads=orjson.loads, json_dumps=_dumps)
    session.middleware(LimitedRetries(limiter, on_retry))
    return Bot(token=token, session=session)


def create_dispatcher() -> Dispatcher:
    """A dispatcher with a router of its own (a router belongs to one dispatcher; tests run several apps)."""
    router = Router(name="timetodo")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_ping, Command("ping"))
    for name, handler in LINKED_COMMANDS:
        router.message.register(_linked_runner(handler), Command(name))
    router.message.register(on_unknown, F.text.startswith("/"))
    router.message.register(on_text, F.text, F.chat.type == "private")
    router.callback_query.register(on_button)
    router.errors.register(on_error)
    dispatcher = Dispatcher(disable_fsm=True)  # no conversation state: every command is one message
    dispatcher.include_router(router)
    return dispatcher


def bot_commands(locale: str) -> list[BotCommand]:
    return [BotCommand(command=name, description=t(locale, f"cmd_{name}")) for name in COMMANDS]


ALLOWED_UPDATES = ["message", "callback_query"]
