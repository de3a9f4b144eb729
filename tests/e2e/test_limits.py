"""Abuse limits on a real `timetodo serve` configured like Render (FORWARDED_ALLOW_IPS="*"): spoofed
X-Forwarded-For entries do not dodge the login limit, registration is limited per address, and the app itself caps
JSON bodies (issue 10, item 5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess, server_env
from tests.support import PASSWORD, unique_email

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def render_like(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("limits")
    env = server_env(f"sqlite:///{tmp / 'data' / 'l.db'}", None, tmp / "data")
    env.update({"FORWARDED_ALLOW_IPS": "*", "REGISTRATIONS_PER_HOUR": "3", "MAX_JSON_BODY_KB": "64"})
    server = ServerProcess(env, tmp)
    server.wait_ready()
    yield server
    assert server.stop() == 0


def test_spoofed_forwarded_for_does_not_dodge_the_login_limit(render_like: ServerProcess) -> None:
    """The proxy appends the address it saw (here 203.0.113.9); the client rotates what it writes to the left. Other
    e-mails each time, so only the per-address limit (5 a minute) can trip (before: all 8 reached the password
    check)."""
    statuses = []
    for n in range(8):
        resp = httpx.post(
            f"{render_like.url}/api/v1/auth/login",
            data={"username": unique_email(), "password": "wrong-password"},
            headers={"X-Forwarded-For": f"198.51.100.{n}, 203.0.113.9"},
        )
        statuses.append(resp.status_code)
    assert statuses == [401] * 5 + [429] * 3, statuses


def test_registration_is_limited_per_address(render_like: ServerProcess) -> None:
    statuses = []
    for n in range(4):
        resp = httpx.post(
            f"{render_like.url}/api/v1/auth/register",
            json={"email": unique_email(), "password": PASSWORD},
            headers={"X-Forwarded-For": f"198.51.100.{n}, 203.0.113.77"},
        )
        statuses.append(resp.status_code)
    assert statuses == [201, 201, 201, 429], statuses


def test_json_body_limit_in_the_app(render_like: ServerProcess) -> None:
    big = {"email": unique_email(), "password": "x" * (100 * 1024)}
    resp = httpx.post(f"{render_like.url}/api/v1/auth/register", json=big)
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"title": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}'

    resp = httpx.post(f"{render_like.url}/api/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"
