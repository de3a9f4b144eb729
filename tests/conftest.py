from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support import Services, create_database, new_user, next_client_ip
from timetodo.core import security
from timetodo.core.schema import upgrade_async
from timetodo.core.settings import Settings
from timetodo.main import create_app

BACKENDS = ["sqlite", "postgres"]

# argon2id at its lowest cost for the users the suite makes, here and in every `timetodo` process it starts (they
# inherit this environment): ~1 ms instead of ~0.2 s per register/login (timetodo.core.security). The test that
# measures the hashing cost itself (test_unknown_email_costs_as_much_as_wrong_password) switches it back.
os.environ.setdefault(security.FAST_HASH_ENV, "1")  # TIMETODO_TEST_FAST_PASSWORD_HASH=0: the real cost


@pytest.fixture(scope="session")
def debian12_rootfs() -> Path:
    """A Debian 12 root filesystem tarball made by debootstrap (scripts/rootfs.sh): built once, cached by the
    script's hash, shared by every test that needs a real operating system. Skips when it cannot be built here
    (not root, no debootstrap, Debian's mirror unreachable); any other failure of the script fails."""
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("scripts/rootfs.sh needs root and debootstrap (scripts/test.sh installs it)")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        ["bash", str(root / "scripts" / "rootfs.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        if re.search(r"Failed getting release file|Could not resolve|Temporary failure resolving", result.stderr):
            pytest.skip(f"Debian's package mirror is unreachable from here: {result.stderr.strip()[-300:]}")
        pytest.fail(f"scripts/rootfs.sh failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    started = Services.start()
    yield started
    started.stop()


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ENVIRONMENT": "test",
        "DATA_DIR": tmp,
        "SECRET_KEY": "test-secret-key-that-is-long-enough-0123456789",
        "LOG_LEVEL": "WARNING",
        "MAINTENANCE_CACHE_SECONDS": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def backend_settings(backend: str, tmp: Path, services_factory: Any, **overrides: Any) -> Settings:
    if backend == "sqlite":
        settings = make_settings(tmp, DATABASE_URL=f"sqlite:///{tmp / 'test.db'}", REDIS_URL=None, **overrides)
    else:
        services: Services = services_factory()
        db_url = await create_database(services.postgres_url)
        settings = make_settings(tmp, DATABASE_URL=db_url, REDIS_URL=services.redis_url, **overrides)
    await upgrade_async(settings.DATABASE_URL)
    return settings


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
async def settings(backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Settings:
    tmp = tmp_path_factory.mktemp(f"app-{backend}")
    return await backend_settings(backend, tmp, lambda: request.getfixturevalue("services"))


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings, configure_logs=False)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(settings) as application:
        yield application


def asgi_client(app: FastAPI, ip: str | None = None, base_url: str = "http://testserver") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip or next_client_ip(), 40000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
async def auth(client: httpx.AsyncClient) -> dict[str, str]:
    headers, _ = await new_user(client)
    return headers


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
