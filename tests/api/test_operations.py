from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import asgi_client, make_settings, running_app
from tests.support import PASSWORD, login, new_user, register
from timetodo.auth.service import set_admin
from timetodo.core.maintenance import set_maintenance
from timetodo.core.settings import Settings


async def test_health(client: httpx.AsyncClient) -> None:
    resp = await client.get("/health")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"


async def test_health_detailed(app: FastAPI, backend: str) -> None:
    async with asgi_client(app, ip="127.0.0.1") as operator:  # details for operators only (test_limits.py)
        resp = await operator.get("/health/detailed")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    checks = body["checks"]
    assert body["status"] == "ok" and body["maintenance"] is False
    assert checks["database"]["ok"] and checks["database"]["dialect"] == (
        "sqlite" if backend == "sqlite" else "postgresql"
    )
    assert checks["migrations"]["current"] == checks["migrations"]["head"]
    assert checks["disk"]["upload_dir"]["free_bytes"] > 0
    assert checks["redis"].get("configured", True) is (backend == "postgres")


async def test_health_detailed_503_when_database_down(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, DATABASE_URL="postgresql://nobody:x@127.0.0.1:1/none")
    app = FastAPI()
    from timetodo.main import create_app

    app = create_app(settings, configure_logs=False)
    async with asgi_client(app, ip="127.0.0.1") as c:
        resp = await c.get("/health/detailed")
        assert resp.status_code == 503
        assert resp.json()["checks"]["database"]["ok"] is False
        assert (await c.get("/health")).status_code == 200


async def test_database_down_is_503_with_retry_after_not_500(tmp_path: Path) -> None:
    """A request that cannot reach the database (server down, restarting, pool exhausted) gets 503 + Retry-After:
    nothing was committed and a retry may succeed — not a 500."""
    from datetime import timedelta

    from timetodo.core.security import create_access_token
    from timetodo.main import create_app

    settings = make_settings(tmp_path, DATABASE_URL="postgresql://nobody:x@127.0.0.1:1/none")
    app = create_app(settings, configure_logs=False)
    token = create_access_token(settings.SECRET_KEY.get_secret_value(), 1, timedelta(minutes=5))
    async with asgi_client(app) as c:
        for method, path, body in (
            ("GET", "/api/v1/tasks", None),
            ("POST", "/api/v1/tasks", {"title": "x"}),
            ("POST", "/api/v1/auth/login", None),
        ):
            if path.endswith("login"):
                resp = await c.post(path, data={"username": "a@example.com", "password": "whatever-long"})
            else:
                resp = await c.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 503, (path, resp.status_code, resp.text)
            assert resp.json()["error"] == "service_unavailable" and int(resp.headers["Retry-After"]) > 0


async def test_request_id_and_security_headers(client: httpx.AsyncClient) -> None:
    resp = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in resp.headers
    generated = await client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["X-Request-ID"] != "bad id with spaces" and len(generated.headers["X-Request-ID"]) == 32


async def test_hsts_over_https(app: FastAPI) -> None:
    async with asgi_client(app, base_url="https://testserver") as c:
        resp = await c.get("/health")
        assert resp.headers["Strict-Transport-Security"].startswith("max-age=")


async def test_error_envelope_everywhere(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    resp = await client.put("/api/v1/tasks")
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"


async def test_openapi_documents_error_codes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    enum = spec["components"]["schemas"]["ErrorCode"]["enum"]
    assert {"validation_error", "not_found", "maintenance", "rate_limited", "invalid_cursor"} <= set(enum)
    login_op = spec["paths"]["/api/v1/auth/login"]["post"]
    assert "application/x-www-form-urlencoded" in login_op["requestBody"]["content"]
    assert (
        spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"]
        == "/api/v1/auth/login"
    )


async def test_metrics_use_route_templates(app: FastAPI, client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for task_id in (101, 102, 103):
        await client.get(f"/api/v1/tasks/{task_id}", headers=auth)
    async with asgi_client(app, ip="127.0.0.1") as operator:
        text = (await operator.get("/metrics")).text
    assert 'route="/api/v1/tasks/{task_id}",status="404"' in text
    assert "/api/v1/tasks/101" not in text
    assert "timetodo_http_request_duration_seconds_bucket" in text
    assert "timetodo_db_pool_connections" in text


async def test_logs_hold_no_passwords_or_tokens(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    from timetodo.core.logging import JsonFormatter

    caplog.set_level(logging.INFO)
    async with asgi_client(app) as c:
        user = await register(c)
        tokens = (await login(c, user["email"])).json()
        await c.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        await c.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})  # reuse → warning
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert any('"route":"/api/v1/auth/login"' in line for line in lines)
    joined = "\n".join(lines)
    assert PASSWORD not in joined
    assert tokens["refresh_token"].split(".")[1] not in joined
    assert tokens["access_token"] not in joined
    for line in lines:
        json.loads(line)


def test_mask_secrets() -> None:
    from timetodo.core.logging import mask_secrets

    text = mask_secrets("connect postgresql://app:s3cr3t@db:5432/x password=hunter2 Bearer abc.def.ghi")
    assert "s3cr3t" not in text and "hunter2" not in text and "abc.def.ghi" not in text
    assert "postgresql://app:***@db:5432/x" in text


async def _make_admin(app: FastAPI, client: httpx.AsyncClient) -> dict[str, str]:
    headers, tokens = await new_user(client)
    async with app.state.sessionmaker() as session:
        await set_admin(session, tokens["user"]["email"], True)
    return headers


async def test_maintenance_mode(app: FastAPI, client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    admin_headers, admin_tokens = await new_user(client)
    async with app.state.sessionmaker() as session:
        await set_admin(session, admin_tokens["user"]["email"], True)
    admin = admin_headers
    resp = await client.put("/api/v1/admin/maintenance", json={"enabled": True}, headers=auth)
    assert resp.status_code == 403 and resp.json()["error"] == "forbidden"
    task = (await client.post("/api/v1/tasks", json={"title": "before"}, headers=auth)).json()
    _, tokens = await new_user(client)
    try:
        resp = await client.put("/api/v1/admin/maintenance", json={"enabled": True, "reason": "move"}, headers=admin)
        assert resp.status_code == 200 and resp.json()["enabled"] is True
        writes = [
            ("POST", "/api/v1/tasks", {"title": "during"}),
            ("PATCH", f"/api/v1/tasks/{task['id']}", {"title": "changed"}),
            ("POST", f"/api/v1/tasks/{task['id']}/complete", None),
            ("DELETE", f"/api/v1/tasks/{task['id']}", None),
            ("POST", "/api/v1/auth/register", {"email": "new@example.com", "password": PASSWORD}),
        ]
        for method, url, body in writes:
            resp = await client.request(method, url, json=body, headers=auth)
            assert resp.status_code == 503, (method, url, resp.text)
            assert resp.json()["error"] == "maintenance"
            assert int(resp.headers["Retry-After"]) > 0
        # reads, refresh of an existing session, health keep working
        assert (await client.get(f"/api/v1/tasks/{task['id']}", headers=auth)).json()["title"] == "before"
        refreshed = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 200
        # logging in writes a session: refused, except for admins, who get an access token and no refresh token
        # (nothing written) so that they can still reach the admin API
        resp = await login(client, tokens["user"]["email"])
        assert resp.status_code == 503 and resp.json()["error"] == "maintenance"
        resp = await login(client, admin_tokens["user"]["email"])
        assert resp.status_code == 200 and resp.json()["refresh_token"] is None
        fresh_admin = {"Authorization": f"Bearer {resp.json()['access_token']}"}
        assert (await client.get("/api/v1/admin/maintenance", headers=fresh_admin)).json()["enabled"] is True
        detailed = (await client.get("/health/detailed")).json()
        assert detailed["maintenance"] is True and detailed["status"] == "ok"
        # the authoritative check holds even when the per-process cache still says "off"
        app.state.maintenance_cache.set(False)
        app.state.maintenance_cache._ttl = 3600
        resp = await client.post("/api/v1/tasks", json={"title": "sneaky"}, headers=auth)
        assert resp.status_code == 503 and resp.json()["error"] == "maintenance"
    finally:
        app.state.maintenance_cache._ttl = 0
        resp = await client.put("/api/v1/admin/maintenance", json={"enabled": False}, headers=admin)
        assert resp.json()["enabled"] is False
    titles = [t["title"] for t in (await client.get("/api/v1/tasks", headers=auth)).json()["results"]]
    assert titles == ["before"]
    assert (await client.post("/api/v1/tasks", json={"title": "after"}, headers=auth)).status_code == 201


async def test_a_cached_maintenance_on_is_read_again_within_off_within(app: FastAPI) -> None:
    """A migration opens its held target (maintenance off in the database) and sends clients there after
    `OFF_WITHIN`, not `MAINTENANCE_CACHE_SECONDS`: a process that cached "on" must see "off" by then, however long
    its cache keeps an "off" (a cached "off" is still kept for the whole ttl: `guard_write` is the real check)."""
    from timetodo.core.maintenance import OFF_WITHIN, MaintenanceFlagCache

    cache = MaintenanceFlagCache(app.state.sessionmaker, ttl=3600.0)
    async with app.state.sessionmaker() as session:
        await set_maintenance(session, True, "test")
    try:
        assert await cache.enabled() is True
        async with app.state.sessionmaker() as session:
            await set_maintenance(session, False, None)
        await asyncio.sleep(OFF_WITHIN * 1.5)
        assert await cache.enabled() is False  # with the 1 h ttl alone this stays True
        async with app.state.sessionmaker() as session:
            await set_maintenance(session, True, "test")
        assert await cache.enabled() is False  # an "off" is kept: early 503s only, the guard refuses the writes
    finally:
        async with app.state.sessionmaker() as session:
            await set_maintenance(session, False, None)


async def test_maintenance_on_waits_for_inflight_writes(app: FastAPI, settings: Settings, backend: str) -> None:
    """Concurrent writers through the service layer: nothing commits after set_maintenance(True) returns."""
    from timetodo.core.errors import MaintenanceActive
    from timetodo.core.maintenance import guard_write
    from timetodo.tasks.models import Task

    async with asgi_client(app) as c:
        _, tokens = await new_user(c)
    owner = tokens["user"]["id"]
    maker = app.state.sessionmaker
    stop = asyncio.Event()
    counts = {"ok": 0, "refused": 0}

    async def writer() -> None:
        while not stop.is_set():
            async with maker() as session:
                try:
                    await guard_write(session, 5)
                    session.add(Task(owner_id=owner, title="w", labels=[]))
                    await asyncio.sleep(0.005)  # keep the transaction open a moment
                    await session.commit()
                    counts["ok"] += 1
                except MaintenanceActive:
                    counts["refused"] += 1
                    await asyncio.sleep(0.005)

    async def count_tasks() -> int:
        from sqlalchemy import func, select

        async with maker() as session:
            return int((await session.execute(select(func.count()).where(Task.owner_id == owner))).scalar_one())

    writers = [asyncio.create_task(writer()) for _ in range(4)]
    try:
        await asyncio.sleep(0.3)
        async with maker() as session:
            # must not be starved by the writers that keep coming (it once waited forever on PostgreSQL)
            await asyncio.wait_for(set_maintenance(session, True), 20)
        frozen = await count_tasks()
        await asyncio.sleep(0.3)
        assert await count_tasks() == frozen
        assert counts["refused"] > 0 and counts["ok"] > 0
    finally:
        stop.set()
        await asyncio.gather(*writers)
        async with maker() as session:
            await set_maintenance(session, False)


def test_production_refuses_default_secret(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from timetodo.core.settings import describe_settings_error

    for secret in (None, "change-me-please-change-me-please-00", "short"):
        kwargs = {"SECRET_KEY": secret} if secret else {}
        with pytest.raises(ValidationError) as err:
            Settings(_env_file=None, ENVIRONMENT="production", DATA_DIR=tmp_path, **kwargs)  # type: ignore[call-arg]
        assert "SECRET_KEY" in describe_settings_error(err.value)
    ok = Settings(_env_file=None, ENVIRONMENT="production", DATA_DIR=tmp_path, SECRET_KEY="k" * 40)  # type: ignore[call-arg]
    assert ok.ENVIRONMENT == "production"


def test_settings_parse_render_style_values(tmp_path: Path) -> None:
    s = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DATA_DIR=tmp_path,
        DATABASE_URL="postgres://u:p@db.internal:5432/app?sslmode=require",
        ALLOWED_HOSTS='["a.example.com", "b.example.com"]',
        CORS_ORIGINS="https://a.example.com,https://b.example.com",
    )
    assert s.DATABASE_URL.startswith("postgresql+asyncpg://u:p@db.internal:5432/app")
    assert s.ALLOWED_HOSTS == ["a.example.com", "b.example.com"]
    assert s.CORS_ORIGINS == ["https://a.example.com", "https://b.example.com"]
    default = Settings(_env_file=None, DATA_DIR=tmp_path)  # type: ignore[call-arg]
    assert default.is_sqlite and default.REDIS_URL is None and tmp_path / "uploads" == default.UPLOAD_DIR


async def test_trusted_hosts_and_cors(tmp_path: Path, settings: Settings) -> None:
    strict = settings.model_copy(
        update={"ALLOWED_HOSTS": ["api.example.com"], "CORS_ORIGINS": ["https://app.example.com"]}
    )
    async with running_app(strict) as app:
        async with asgi_client(app, base_url="http://evil.example.com") as c:
            assert (await c.get("/health")).status_code == 400
        async with asgi_client(app, base_url="http://api.example.com") as c:
            resp = await c.get("/health", headers={"Origin": "https://app.example.com"})
            assert resp.status_code == 200
            assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
            resp = await c.get("/health", headers={"Origin": "https://other.example.com"})
            assert "access-control-allow-origin" not in resp.headers
