"""The bot inside one app instance: takes updates (webhook or long polling), sends what the outbox holds, and
sends daily digests.

Guarantees:
* an update is processed by the instance that claimed its `update_id` (see `service.claim_update`), after the
  webhook has answered; `stop()` waits for updates in flight;
* an update the webhook accepted is not lost to a write freeze that begins before it runs (a migration's cutover:
  the webhook's maintenance check is a cached early answer, the guard inside the handler is the authoritative one).
  A handler refused by the guard has written nothing; the update is kept in memory and run again: here once
  maintenance ends, or — once this host forwards to a new one (after a migration's switch) — sent on to the new
  host's webhook as a *relayed* update (claimed there in a space of its own, so it runs there once). Kept in memory
  only: an instance that dies while frozen loses what it kept (logged at shutdown);
* a probe (`probe`, for `timetodo migrate validate`) runs inline and returns what the bot sent for it, with the
  message ids the Bot API gave;
* Redis keys (update claims, limiter) start with `tg:<bot id>` (`service.redis_prefix`);
* `health()` (the `telegram` entry of /health/detailed) reports getWebhookInfo — URL, pending updates, last delivery
  error — fetched at most once per `WEBHOOK_INFO_SECONDS` per instance and bounded by a timeout; informational: a
  failing webhook never makes the app unhealthy (restarting it would not fix Telegram's side);
* an outbox row is sent by the instance that claimed it (FOR UPDATE SKIP LOCKED / the SQLite write lock) and marked
  sent afterwards. If an instance dies between sending and marking, the row's lease expires and it is sent again
  (at-least-once only across a crash: a lost reminder is worse than a repeated one);
* sends pass the shared limiter; a 429 waits `retry_after` (then the row is retried later), a 403 "blocked"
  unlinks the chat, other failures retry with exponential backoff up to `MAX_ATTEMPTS`; all counted in /metrics;
* a digest is claimed once per user and local day (one UPDATE … WHERE digest_sent_on < today) and goes out through
  the outbox like a reminder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramAPIError, TelegramForbiddenError, TelegramNetworkError, TelegramRetryAfter
from aiogram.types import Update
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from timetodo.core.cache import Cache, RedisCache
from timetodo.core.database import Database, utcnow
from timetodo.core.errors import MaintenanceActive, NotFound
from timetodo.core.maintenance import APP_STATE_ID, AppState, guard_write
from timetodo.core.settings import Settings
from timetodo.tasks import service as tasks_service
from timetodo.telegram import bot as botmod
from timetodo.telegram import repository, service
from timetodo.telegram.limiter import MemoryLimiter, RedisLimiter, SendLimiter
from timetodo.telegram.models import TelegramOutbox
from timetodo.telegram.texts import t

log = logging.getLogger("timetodo.telegram")
LEASE = timedelta(minutes=5)
OUTBOX_BATCH = 200
MAX_ATTEMPTS = 6
SEND_CONCURRENCY = 16  # enough for 30 msg/s; each holds a Redis connection while reserving
DIGEST_INTERVAL = 30.0
WEBHOOK_INFO_SECONDS = 60.0
WEBHOOK_INFO_TIMEOUT = 3.0
RECENT_ERROR_SECONDS = 600.0  # a delivery error younger than this makes `webhook_ok` false (Telegram keeps the last)
DEFERRED_INTERVAL = 1.0  # seconds between looks at the app state while updates wait out a freeze
WEBHOOK_PATH = "/api/v1/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
RELAY_HEADER = "X-Timetodo-Relayed-Update"
UPDATE_CONCURRENCY = 16  # updates processed at once per instance (each holds a database connection)

MESSAGES = Counter(
    "timetodo_telegram_messages_total", "Bot messages from the outbox by kind and outcome", ["kind", "result"]
)
UPDATES = Counter("timetodo_telegram_updates_total", "Telegram updates by outcome", ["result"])
DEFERRED = Counter(
    "timetodo_telegram_deferred_updates_total",
    "Accepted updates refused by a write freeze, by what became of them",
    ["result"],
)
RETRIES = Counter("timetodo_telegram_retry_after_total", "429 answers waited out (retry_after)")
LATENESS = Histogram(
    "timetodo_telegram_reminder_lateness_seconds",
    "Seconds from a reminder's fire time to its message being sent",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
)


def create_limiter(settings: Settings, cache: Cache, prefix: str = "tg") -> SendLimiter:
    if isinstance(cache, RedisCache):
        return RedisLimiter(
            cache.client, settings.TELEGRAM_CHAT_RATE, settings.TELEGRAM_GLOBAL_RATE, prefix=f"{prefix}:rate"
        )
    return MemoryLimiter(settings.TELEGRAM_CHAT_RATE, settings.TELEGRAM_GLOBAL_RATE)


def _round_robin(rows: Sequence[TelegramOutbox]) -> list[TelegramOutbox]:
    """Interleave chats (first message of every chat, then the second, …) so that one busy chat does not hold back
    the others behind the limiter."""
    queues: OrderedDict[int, list[TelegramOutbox]] = OrderedDict()
    for row in rows:
        queues.setdefault(row.chat_id, []).append(row)
    ordered: list[TelegramOutbox] = []
    while queues:
        for chat_id in list(queues):
            ordered.append(queues[chat_id].pop(0))
            if not queues[chat_id]:
                del queues[chat_id]
    return ordered


class TelegramRuntime:
    def __init__(
        self,
        settings: Settings,
        maker: async_sessionmaker[AsyncSession],
        cache: Cache,
        publish: service.Publish,
    ) -> None:
        assert settings.TELEGRAM_BOT_TOKEN is not None
        self.settings = settings
        self.maker = maker
        self.cache = cache
        self.retry_after = settings.MAINTENANCE_RETRY_AFTER
        self.prefix = service.redis_prefix(settings.TELEGRAM_BOT_TOKEN.get_secret_value())
        self.limiter = create_limiter(settings, cache, self.prefix)
        self.bot: Bot = botmod.create_bot(
            settings.TELEGRAM_BOT_TOKEN.get_secret_value(), settings.TELEGRAM_API_BASE, self.limiter, RETRIES.inc
        )
        self.dispatcher: Dispatcher = botmod.create_dispatcher()
        self.ctx = botmod.BotContext(
            db=Database(maker.kw["bind"], maker), publish=publish, retry_after=self.retry_after
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._processing = asyncio.Semaphore(UPDATE_CONCURRENCY)
        self._loops: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._username: str | None = None
        self._deferred: dict[int, dict[str, Any]] = {}
        self._webhook_info: tuple[float, dict[str, Any]] | None = None
        self._webhook_lock = asyncio.Lock()
        self._deferred_wake = asyncio.Event()

    # lifecycle ---------------------------------------------------------------------------------------------------

    async def start(self, *, background: bool = True) -> None:
        if background:
            self._loops = [
                asyncio.create_task(self._setup(), name="telegram-setup"),
                asyncio.create_task(self._send_loop(), name="telegram-outbox"),
                asyncio.create_task(self._digest_loop(), name="telegram-digest"),
                asyncio.create_task(self._deferred_loop(), name="telegram-deferred"),
            ]

    async def stop(self) -> None:
        await self.drain(self.settings.GRACEFUL_SHUTDOWN_SECONDS)
        self._stopping.set()
        self._wake.set()  # every loop waits on one of these two: each then sees `_stopping` and ends
        self._deferred_wake.set()
        if self._loops:  # let a run in progress finish (cancelling asyncpg mid-connect leaks a future)
            await asyncio.wait(self._loops, timeout=5)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loop
        self._loops = []
        if self._deferred:
            DEFERRED.labels("lost").inc(len(self._deferred))
            log.error(
                "stopping with updates that waited out a write freeze: they are lost",
                extra={"update_ids": sorted(self._deferred)},
            )
        await self.bot.session.close()

    async def drain(self, wait_seconds: float = 30.0) -> None:
        """Wait for the updates in flight (tests call it to see a conversation's answers)."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=wait_seconds)

    async def _setup(self) -> None:
        """The command menu in both languages. Never setWebhook here: `timetodo telegram set-webhook` does that."""
        try:
            await self.bot.set_my_commands(botmod.bot_commands("en"))
            await self.bot.set_my_commands(botmod.bot_commands("ru"), language_code="ru")
        except (TelegramAPIError, OSError) as exc:
            log.warning("could not set the bot's commands: %s", type(exc).__name__)

    async def username(self) -> str:
        if self._username is None:
            self._username = (await self.bot.me()).username or ""
        return self._username

    async def health(self) -> dict[str, Any]:
        """getWebhookInfo, cached (see the module): `webhook_ok` when it points at PUBLIC_BASE_URL's webhook and its
        last delivery error, if any, is older than RECENT_ERROR_SECONDS."""
        async with self._webhook_lock:
            now = time.monotonic()
            if self._webhook_info is None or now - self._webhook_info[0] >= WEBHOOK_INFO_SECONDS:
                self._webhook_info = (now, await self._fetch_webhook_info())
            return dict(self._webhook_info[1])

    async def _fetch_webhook_info(self) -> dict[str, Any]:
        expected = self.settings.PUBLIC_BASE_URL.rstrip("/") + WEBHOOK_PATH
        report: dict[str, Any] = {"ok": True, "expected_url": expected, "checked_at": utcnow().isoformat()}
        try:
            info = await asyncio.wait_for(self.bot.get_webhook_info(), WEBHOOK_INFO_TIMEOUT)
        except (TimeoutError, TelegramAPIError, OSError) as exc:
            return report | {"webhook_ok": False, "error": f"getWebhookInfo failed: {type(exc).__name__}"}
        last_error = info.last_error_date
        recent_error = last_error is not None and last_error.timestamp() >= time.time() - RECENT_ERROR_SECONDS
        return report | {
            "webhook_ok": info.url == expected and not recent_error,
            "url": info.url,
            "pending_update_count": info.pending_update_count,
            "last_error_date": last_error.isoformat() if last_error else None,
            "last_error_message": info.last_error_message,
        }

    # updates ----------------------------------------------------------------------------------------------------

    async def claim(self, update_id: int, *, relayed: bool = False) -> bool:
        fresh = await service.claim_update(
            self.cache, self.maker, update_id, self.retry_after, prefix=self.prefix, relayed=relayed
        )
        UPDATES.labels("accepted" if fresh else "duplicate").inc()
        return fresh

    def spawn(self, update: dict[str, Any]) -> None:
        """Process a claimed webhook update in the background (a write freeze defers it, see the module)."""
        task = asyncio.create_task(self.process(update, deferrable=True))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def process(self, update: dict[str, Any] | Update, *, deferrable: bool = False) -> None:
        async with self._processing:
            await self._process(update, deferrable=deferrable)

    async def probe(self, update: dict[str, Any]) -> list[dict[str, Any]]:
        """Process `update` now and return every Bot API request the bot made for it, with the answer's message id
        (the bot really answered: the Bot API accepted the message)."""
        sent: list[dict[str, Any]] = []
        token = botmod.SENT.set(sent)
        try:
            await self.process(update)
        finally:
            botmod.SENT.reset(token)
        return sent

    async def _process(self, update: dict[str, Any] | Update, *, deferrable: bool = False) -> None:
        botmod.DEFERRABLE.set(deferrable)  # this task's own context (create_task copies it)
        try:
            parsed = update if isinstance(update, Update) else Update.model_validate(update, context={"bot": self.bot})
            await self.dispatcher.feed_update(self.bot, parsed, ctx=self.ctx)
        except MaintenanceActive:
            if deferrable and isinstance(update, dict):
                self._deferred[int(update["update_id"])] = update
                self._deferred_wake.set()
                DEFERRED.labels("kept").inc()
                log.info("update refused by a write freeze: kept", extra={"update_id": update["update_id"]})
            else:
                UPDATES.labels("failed").inc()
        except Exception:
            UPDATES.labels("failed").inc()
            log.exception("telegram update failed")

    async def _deferred_loop(self) -> None:
        while not self._stopping.is_set():
            if not self._deferred:
                self._deferred_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._deferred_wake.wait(), timeout=DIGEST_INTERVAL)
                continue
            try:
                await self.run_deferred()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("running deferred telegram updates failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=DEFERRED_INTERVAL)

    async def run_deferred(self) -> int:
        """One look at the shared app state: forwarding → relay the kept updates to the new host; no maintenance →
        run them here; still frozen → keep waiting. Returns how many left this instance."""
        if not self._deferred:
            return 0
        async with self.maker() as session:
            state = await session.get(AppState, APP_STATE_ID, populate_existing=True)
        if state is None:
            return 0
        done = 0
        if state.forward_to and (state.forward_until is None or state.forward_until > utcnow()):
            secret = self.settings.TELEGRAM_WEBHOOK_SECRET
            headers = {RELAY_HEADER: "1"} | ({SECRET_HEADER: secret.get_secret_value()} if secret else {})
            url = state.forward_to.rstrip("/") + WEBHOOK_PATH
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as http:
                for update_id, update in list(self._deferred.items()):
                    try:
                        response = await http.post(url, json=update, headers=headers)
                    except httpx.HTTPError as exc:
                        log.warning("relaying a deferred update failed: %s", type(exc).__name__)
                        break
                    if response.is_success:
                        del self._deferred[update_id]
                        DEFERRED.labels("relayed").inc()
                        done += 1
                    elif response.status_code != 503:
                        log.error(
                            "the new host refused a relayed update",
                            extra={"update_id": update_id, "status": response.status_code},
                        )
                        del self._deferred[update_id]
                        DEFERRED.labels("refused").inc()
                    else:
                        break
        elif not state.maintenance_enabled:
            for update_id in list(self._deferred):
                update = self._deferred.pop(update_id)
                DEFERRED.labels("run").inc()
                done += 1
                await self.process(update, deferrable=True)  # frozen again → kept again
        return done

    async def poll(self, stop: asyncio.Event | None = None) -> None:
        """Long polling for development (no public URL): getUpdates, claim, process — until `stop` is set."""
        offset: int | None = None
        while stop is None or not stop.is_set():
            updates = await self.bot.get_updates(offset=offset, timeout=20, allowed_updates=botmod.ALLOWED_UPDATES)
            for update in updates:
                offset = update.update_id + 1
                if await self.claim(update.update_id):
                    await self.process(update)

    # outbox ------------------------------------------------------------------------------------------------------

    async def enqueue_reminders(self, session: AsyncSession, fired: Sequence[dict[str, Any]]) -> None:
        """The scheduler's hook (inside its claiming transaction)."""
        await service.enqueue_reminders(session, fired)
        self._wake.set()

    async def _send_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sent = await self.send_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("telegram outbox run failed")
                sent = 0
            if sent < OUTBOX_BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.REMINDER_POLL_SECONDS)
                self._wake.clear()

    async def send_due(self) -> int:
        """Claim due outbox rows and send them; returns how many were claimed."""
        now = utcnow()
        async with self.maker() as session:
            try:
                await guard_write(session, self.retry_after)
            except MaintenanceActive:
                return 0
            rows = await repository.claim_outbox(session, now, now + LEASE, OUTBOX_BATCH)
            await session.commit()
        if not rows:
            return 0
        gate = asyncio.Semaphore(SEND_CONCURRENCY)

        async def one(row: TelegramOutbox) -> None:
            async with gate:
                await self._deliver(row)

        await asyncio.gather(*(one(row) for row in _round_robin(rows)))
        return len(rows)

    async def _render(self, row: TelegramOutbox) -> tuple[str, Any] | None:
        async with self.maker() as session:
            found = await service.chat_user(session, row.chat_id)
            if found is None or found[1].id != row.user_id:
                return None  # unlinked (or relinked elsewhere) since it was queued
            user = found[1]
            locale = user.locale
            if row.kind == "digest":
                rows = await botmod.fetch_list(self.ctx, user, "today")
                header = t(locale, "digest")
                text, markup = botmod.render_list(locale, header, rows, 0, "t")
                await service.remember_list(self.maker, row.chat_id, [r.id for r in rows], self.retry_after)
                return text, markup
            try:
                task = await tasks_service.get_task(session, user.id, int(row.task_id or 0))
            except NotFound:
                return None
            text = t(locale, "reminder", title=task.title)
            due = botmod._fmt_due(task)
            if due:
                text += "\n" + t(locale, "due", due=due)
            return text, botmod.reminder_keyboard(locale, task.id, int(row.reminder_id or 0))

    async def _finish(self, row: TelegramOutbox, state: str, **values: Any) -> None:
        async with self.maker() as session:
            await guard_write(session, self.retry_after)
            await repository.finish_outbox(session, row.id, state, **values)
            await session.commit()

    async def _deliver(self, row: TelegramOutbox) -> None:
        try:
            rendered = await self._render(row)
            if rendered is None:
                await self._finish(row, "failed", error="chat unlinked or task gone")
                MESSAGES.labels(row.kind, "dropped").inc()
                return
            text, markup = rendered
            await self.bot.send_message(row.chat_id, text, reply_markup=markup)
        except TelegramForbiddenError as exc:
            await self._finish(row, "failed", error=str(exc.message)[:300])
            async with self.maker() as session:
                await service.unlink_chat(session, row.chat_id, self.retry_after)
            MESSAGES.labels(row.kind, "blocked").inc()
            log.info("chat blocked the bot: unlinked", extra={"user_id": row.user_id})
            return
        except TelegramRetryAfter as exc:
            when = utcnow() + timedelta(seconds=exc.retry_after)
            await self._finish(row, "pending", next_attempt_at=when, error="retry after", attempts_delta=-1)
            MESSAGES.labels(row.kind, "retry_after").inc()
            return
        except (TimeoutError, TelegramNetworkError, TelegramAPIError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            if row.attempts >= MAX_ATTEMPTS:
                await self._finish(row, "failed", error=error)
                MESSAGES.labels(row.kind, "failed").inc()
            else:
                when = utcnow() + timedelta(seconds=2**row.attempts)
                await self._finish(row, "pending", next_attempt_at=when, error=error)
                MESSAGES.labels(row.kind, "retry").inc()
            return
        now = utcnow()
        await self._finish(row, "sent", sent_at=now)
        MESSAGES.labels(row.kind, "sent").inc()
        if row.kind == "reminder":
            LATENESS.observe(max(0.0, (now - row.due_at).total_seconds()))

    # digests -----------------------------------------------------------------------------------------------------

    async def _digest_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=DIGEST_INTERVAL)
                return
            try:
                if await self.queue_digests():
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("telegram digest run failed")

    async def queue_digests(self, now: datetime | None = None) -> int:
        """Queue today's digest of every user whose digest time has come (once per local day)."""
        now = now or utcnow()
        queued = 0
        async with self.maker() as session:
            candidates = await repository.digest_due(session)
        for link, user in candidates:
            local = now.astimezone(ZoneInfo(user.timezone))
            if link.digest_time is None or f"{local:%H:%M}" < link.digest_time:
                continue
            if link.digest_sent_on is not None and link.digest_sent_on >= local.date():
                continue
            async with self.maker() as session:
                try:
                    await guard_write(session, self.retry_after)
                except MaintenanceActive:
                    return queued
                if await repository.mark_digest(session, link.id, local.date()):
                    session.add(
                        TelegramOutbox(
                            kind="digest",
                            user_id=user.id,
                            chat_id=link.chat_id,
                            due_at=now,
                            state="pending",
                            attempts=0,
                            next_attempt_at=now,
                        )
                    )
                    queued += 1
                await session.commit()
        return queued
