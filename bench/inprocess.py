"""The app in this process, as `timetodo serve` builds it, for the benchmarks that measure it without a server
(`bench/asgi_cpu.py`, `bench/statements.py`)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from timetodo.core.schema import upgrade_async
from timetodo.core.settings import Settings
from timetodo.main import create_app


@asynccontextmanager
async def app_in_process(
    db_url: str, redis_url: str, *, log_level: str, configure_logs: bool = True
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """`create_app` on `db_url` (migrated first), its lifespan running, and an httpx client over ASGI (client address
    127.0.0.1); a scratch data directory removed at the end."""
    with tempfile.TemporaryDirectory(prefix="ttd-bench-app-") as scratch:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            DATA_DIR=Path(scratch),
            DATABASE_URL=db_url,
            REDIS_URL=redis_url,
            SECRET_KEY="bench-secret-key-that-is-long-enough-0123456789",
            LOG_LEVEL=log_level,
        )
        await upgrade_async(settings.DATABASE_URL)
        app = create_app(settings, configure_logs=configure_logs)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield app, client
