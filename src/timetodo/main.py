"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from timetodo import __version__
from timetodo.admin.router import router as admin_router
from timetodo.auth.router import router as auth_router
from timetodo.core import idempotency, rawdb
from timetodo.core.accounts import AccountStates
from timetodo.core.cache import create_cache
from timetodo.core.database import Database, create_engine, create_sessionmaker, pool_stats
from timetodo.core.errors import ERROR_RESPONSES, install_error_handlers
from timetodo.core.events import EventHub
from timetodo.core.forwarding import ForwardingCache, ForwardingMiddleware
from timetodo.core.fs import private_dir
from timetodo.core.health import router as health_router
from timetodo.core.idempotency import IdempotencyMiddleware
from timetodo.core.limits import BodyLimitMiddleware, ClientAddressMiddleware
from timetodo.core.logging import configure_logging
from timetodo.core.maintenance import MaintenanceFlagCache
from timetodo.core.metrics import DB_POOL, mark_worker_dead
from timetodo.core.middleware import RequestContextMiddleware
from timetodo.core.settings import Settings
from timetodo.files.router import router as files_router
from timetodo.realtime.router import close_all, going_away_on_signals
from timetodo.realtime.router import router as realtime_router
from timetodo.reminders.router import router as reminders_router
from timetodo.reminders.service import TaskReminders, scheduler_running
from timetodo.sync.router import router as sync_router
from timetodo.tasks import hooks as task_hooks
from timetodo.tasks.router import router as tasks_router
from timetodo.telegram.router import router as telegram_router
from timetodo.telegram.router import webhook_router as telegram_webhook_router
from timetodo.telegram.runtime import TelegramRuntime
from timetodo.timer.router import router as timer_router

log = logging.getLogger("timetodo")
POOL_GAUGE_INTERVAL = 2.0
REMINDERS = TaskReminders()


async def _export_pool_gauges(app: FastAPI) -> None:
    while True:
        for state, value in pool_stats(app.state.engine).items():
            DB_POOL.labels(state).set(value)
        await asyncio.sleep(POOL_GAUGE_INTERVAL)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    private_dir(settings.UPLOAD_DIR)
    gauges = asyncio.create_task(_export_pool_gauges(app))
    await app.state.events.start()
    telegram: TelegramRuntime | None = app.state.telegram
    if telegram is not None:
        await telegram.start()
    # everything alive after start-up (modules, the app, SQLAlchemy's caches: >100 000 objects) stays alive: move
    # it out of the collector's reach, so a full collection scans only what requests allocate (it took ~90 ms and
    # stalled every request in flight, which set the p99)
    gc.collect()
    gc.freeze()
    log.info(
        "Time to DO started",
        extra={
            "database": app.state.engine.dialect.name,
            "cache": app.state.cache.kind,
            "version": __version__,
        },
    )
    try:
        async with scheduler_running(
            app.state.sessionmaker,
            app.state.events.publish,
            settings.REMINDER_POLL_SECONDS,
            settings.MAINTENANCE_RETRY_AFTER,
            telegram.enqueue_reminders if telegram is not None else None,
        ):
            with going_away_on_signals(app.state.events):
                yield
    finally:
        if telegram is not None:
            await telegram.stop()
        await close_all(app.state.events)
        await app.state.events.stop()
        gauges.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gauges
        await app.state.cache.close()
        forward_client = getattr(app.state, "forward_client", None)
        if forward_client is not None:
            await forward_client.aclose()
        await rawdb.close(app.state.engine)
        await app.state.engine.dispose()
        mark_worker_dead(os.getpid())


def create_app(settings: Settings | None = None, *, configure_logs: bool = True) -> FastAPI:
    settings = settings or Settings()
    if configure_logs:
        configure_logging(settings.LOG_LEVEL, settings.LOG_FILE)
    app = FastAPI(
        title="Time to DO",
        version=__version__,
        description="Tasks, time tracking and reminders. Errors always come as `{error, detail}`.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        # no OpenTelemetry here (Prometheus metrics and the access log instead): FastAPI's native telemetry
        # otherwise looks up the global OTel providers on every request (≈ 3 µs, `os.environ` reads included)
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.engine = create_engine(settings)
    app.state.sessionmaker = create_sessionmaker(app.state.engine)
    app.state.database = Database(app.state.engine, app.state.sessionmaker)
    app.state.cache = create_cache(settings.REDIS_URL, settings.REDIS_POOL_SIZE)
    app.state.events = EventHub(app.state.cache)
    app.state.maintenance_cache = MaintenanceFlagCache(app.state.sessionmaker, settings.MAINTENANCE_CACHE_SECONDS)
    app.state.accounts = AccountStates(
        app.state.database, settings.AUTH_STATE_CACHE_SECONDS, frozen=app.state.maintenance_cache.enabled
    )
    app.state.forwarding = ForwardingCache(app.state.sessionmaker, settings.MAINTENANCE_CACHE_SECONDS)
    task_hooks.observe(REMINDERS)
    app.state.telegram = (
        TelegramRuntime(settings, app.state.sessionmaker, app.state.cache, app.state.events.publish)
        if settings.TELEGRAM_BOT_TOKEN is not None
        else None
    )
    app.state.health_reports = {"telegram": app.state.telegram.health} if app.state.telegram is not None else {}

    install_error_handlers(app)
    idempotency.install(app)
    # FastAPI tries routes in order on every request: the hot paths first (the bot's webhook, one route; then
    # tasks); no path of the routers moved ahead overlaps one of the later routers' paths
    app.include_router(telegram_webhook_router)
    app.include_router(tasks_router)
    app.include_router(health_router)
    app.include_router(auth_router)
    app.include_router(timer_router)
    app.include_router(files_router)
    app.include_router(reminders_router)
    app.include_router(sync_router)
    app.include_router(realtime_router)
    app.include_router(admin_router)
    app.include_router(telegram_router)

    if settings.CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    if settings.ALLOWED_HOSTS and "*" not in settings.ALLOWED_HOSTS:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.ALLOWED_HOSTS)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(
        BodyLimitMiddleware, json_limit=settings.MAX_JSON_BODY_KB * 1024, upload_limit=settings.max_upload_bytes
    )
    app.add_middleware(RequestContextMiddleware, force_https=settings.FORCE_HTTPS)
    # forwarded traffic bypasses everything local; it goes out with the client's real address (resolved outside it)
    app.add_middleware(ForwardingMiddleware)
    app.add_middleware(ClientAddressMiddleware, forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS)
    return app


def create_app_from_env() -> FastAPI:
    """Entry point for `uvicorn --factory timetodo.main:create_app_from_env` (and every worker of `serve`)."""
    return create_app(Settings())
