"""Abuse limits in the app (issue 10, item 5): bounded in-process limiter, operator-only metrics and details."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.conftest import asgi_client, make_settings, running_app
from timetodo.core.cache import MemoryCache


async def test_memory_limiter_is_bounded() -> None:
    cache = MemoryCache()
    cache.MAX_KEYS = 1000
    for n in range(5000):
        await cache.hit(f"rl:login:acct:{n}", 60)
    assert len(cache._values) <= 1000
    # recent keys still count
    assert (await cache.hit("rl:login:acct:4999", 60))[0] == 2


async def test_metrics_and_details_for_operators_only(app: FastAPI) -> None:
    async with asgi_client(app, ip="198.51.100.7") as public, asgi_client(app, ip="127.0.0.1") as local:
        assert (await public.get("/metrics")).status_code == 403
        assert (await local.get("/metrics")).status_code == 200
        summary = (await public.get("/health/detailed")).json()
        assert set(summary["checks"].values()) <= {"ok", "failing"}, summary
        assert "path" not in str(summary) and "free_bytes" not in str(summary)
        detailed = (await local.get("/health/detailed")).json()
        assert "free_bytes" in str(detailed["checks"]["disk"])


async def test_metrics_token(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'm.db'}", METRICS_TOKEN="s3cret-token")
    from timetodo.core.schema import upgrade_async

    await upgrade_async(settings.DATABASE_URL)
    async with running_app(settings) as app, asgi_client(app, ip="127.0.0.1") as local:
        assert (await local.get("/metrics")).status_code == 403  # a token is set: loopback is not enough
        ok = await local.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200


async def test_json_body_limit(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    resp = await client.post("/api/v1/tasks", json={"title": "t", "description": "d" * (2 * 1024 * 1024)}, headers=auth)
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"
