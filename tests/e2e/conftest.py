from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.e2e.server import ServerProcess, server_env
from tests.support import Services, create_database


@pytest.fixture(scope="session")
def pg_env(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    db_url = asyncio.run(create_database(services.postgres_url))
    return server_env(db_url, services.redis_url, tmp_path_factory.mktemp("e2e-data"))


@pytest.fixture(scope="session")
def two_servers(pg_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    workdir = tmp_path_factory.mktemp("e2e")
    first = ServerProcess(pg_env, workdir)
    first.wait_ready()  # the first one applies migrations
    second = ServerProcess(pg_env, workdir)
    second.wait_ready()
    yield [first, second]
    for server in (first, second):
        assert server.stop() == 0, server.log()
