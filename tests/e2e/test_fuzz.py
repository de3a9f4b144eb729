"""Property-based API fuzz (issue 10, item 3): schemathesis against the app's own OpenAPI on a real `timetodo serve`,
SQLite and PostgreSQL, as an authenticated user, coverage + fuzzing + stateful phases: no request ends in a 5xx.

Bounded: FUZZ_SECONDS per backend (`--max-time`); set TIMETODO_FUZZ_SECONDS for a longer hunt. Operations that
end the fuzzing user's own session (log out everywhere, password change) and the admin API are left out; they
have their own tests.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess, server_env
from tests.support import PASSWORD, Services, create_database, unique_email

pytestmark = pytest.mark.slow

FUZZ_SECONDS = int(os.environ.get("TIMETODO_FUZZ_SECONDS", "20"))
ST = str(Path(sys.executable).parent / "st")
EXCLUDED = r"/admin/|/auth/logout-all|/users/me/password"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_api_fuzz_finds_no_server_error(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        env = server_env(f"sqlite:///{tmp_path / 'data' / 'fuzz.db'}", None, tmp_path / "data")
    else:
        services: Services = request.getfixturevalue("services")
        db_url = asyncio.run(create_database(services.postgres_url))
        env = server_env(db_url, None, tmp_path / "data")
    env["LOGIN_ATTEMPTS_PER_MINUTE"] = "1000"
    env["LOG_LEVEL"] = "WARNING"
    server = ServerProcess(env, tmp_path)
    try:
        server.wait_ready()
        email = unique_email("fuzz")
        with httpx.Client(base_url=server.url) as c:
            assert c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
            token = c.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD}).json()
        result = subprocess.run(
            [
                ST,
                "run",
                f"{server.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {token['access_token']}",
                "--checks",
                "not_a_server_error",
                "--phases",
                "coverage,fuzzing,stateful",
                "--max-examples",
                "25",
                "--max-time",
                str(FUZZ_SECONDS),
                "--exclude-path-regex",
                EXCLUDED,
                "--generation-database",
                "none",
                "--request-timeout",
                "30",
                "--no-color",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=FUZZ_SECONDS + 120,
            check=False,
        )
        log = server.log()
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Test cases:" in result.stdout and " passed" in result.stdout, result.stdout[-3000:]
    assert "unhandled error" not in log, log
