"""Render as it really is, at the edges a user meets first (issue 12, item 6): its IP allow list closes connections
from addresses not on it (accepted, then closed before the protocol's greeting — reproduced by a real TCP server on
127.0.0.1 that does exactly that), and a new Key Value is Valkey 8, which the target's Redis image must follow."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from tests.support import UNREACHABLE_MIGRATION_SECRETS, Services, free_port
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.errors import StepError
from timetodo.ops.migrate import preflight
from timetodo.ops.migrate.config import load_config, load_secrets
from timetodo.ops.migrate.context import Context
from timetodo.ops.migrate.data import connect
from timetodo.ops.migrate.deploy import env_text
from timetodo.ops.migrate.state import MigrationState
from timetodo.ops.sources import allow_list_hint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def edge_port() -> AsyncIterator[int]:
    """A port where connections are accepted and closed before any reply: an allow list's edge."""

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(8), 0.5)  # the client's SSLRequest / startup, unanswered
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("query", ["", "?sslmode=require", "?sslmode=disable"])
async def test_database_closed_before_login_is_named_as_an_allow_list(edge_port: int, query: str) -> None:
    url = f"postgresql://app:secret-pw@127.0.0.1:{edge_port}/app{query}"
    with pytest.raises(StepError) as caught:
        await connect(url)
    assert "allow list" in caught.value.hint, caught.value.hint
    assert "secret-pw" not in str(caught.value) + caught.value.hint


async def test_redis_closed_before_login_is_named_as_an_allow_list(edge_port: int) -> None:
    for url in (f"redis://:secret-pw@127.0.0.1:{edge_port}/0", f"rediss://127.0.0.1:{edge_port}/0"):
        with pytest.raises(redisops.RedisUnreachable) as caught:
            await redisops.redis_version(url)
        assert "allow list" in caught.value.hint, (url, caught.value.hint)


async def test_other_connection_failures_are_not_blamed_on_an_allow_list(services: Services) -> None:
    """Nothing listening (refused) and a wrong password (the server answered) keep their own messages."""
    with pytest.raises(pg.PgUnreachable) as refused:
        await pg.connect(pg.PgTarget.from_url(f"postgresql://app:pw@127.0.0.1:{free_port()}/app"))
    assert refused.value.hint == ""
    wrong = "postgresql://nobody:wrong@" + services.postgres_url.split("@", 1)[1]
    with pytest.raises(pg.PgUnreachable) as denied:
        await pg.connect(pg.PgTarget.from_url(wrong))
    assert denied.value.hint == "", denied.value.hint
    with pytest.raises(redisops.RedisUnreachable) as no_redis:
        await redisops.redis_version(f"redis://127.0.0.1:{free_port()}/0")
    assert no_redis.value.hint == ""


def test_the_hint_names_renders_setting_for_a_render_host() -> None:
    render = allow_list_hint("postgresql://app@dpg-abc123-a.oregon-postgres.render.com/app")
    assert "Inbound IP rules" in render and "ipAllowList" in render
    other = allow_list_hint("postgresql://app@db.example.org/app")
    assert "allow list or firewall" in other and "Render" not in other


@pytest.mark.parametrize(
    ("engine", "version", "image"),
    [
        ("valkey", "8.0.2", "valkey/valkey:8-alpine"),
        ("redis", "7.2.4", "redis:7-alpine"),
        ("redis", "7.4.1", "redis:7-alpine"),
        ("redis", "6.2.14", "redis:7-alpine"),
    ],
)
def test_the_target_redis_image_follows_the_source(engine: str, version: str, image: str) -> None:
    assert redisops.image_for(engine, version) == image
    promised = redisops.image_version(image)
    assert promised is not None and redisops.restore_compatible(engine, version, *promised)


def _context(tmp_path: Path, env_lines: str) -> Context:
    env_file = tmp_path / "target.env"
    env_file.write_text("SECRET_KEY=x\n" + env_lines)
    text = (ROOT / "migration.example.toml").read_text()
    assert 'env_file = "deploy/.env"' in text
    config_path = tmp_path / "migration.toml"
    config_path.write_text(text.replace('env_file = "deploy/.env"', f'env_file = "{env_file}"'))
    config = load_config(config_path)
    return Context(
        config,
        load_secrets(config, dict(UNREACHABLE_MIGRATION_SECRETS)),
        tmp_path / "work",
        MigrationState.load(tmp_path / "work"),
        Console(file=io.StringIO(), width=200),
    )


async def test_preflight_chooses_valkey_for_a_valkey_source_and_deploy_writes_it(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "")
    assert ctx.config.target.runtime == "compose"
    checks = preflight.Checks(facts={"source_redis": "valkey 8.0.2"})
    await preflight._target_redis(ctx, checks)
    row = next(r for r in checks.rows if r["check"] == "target Redis image")
    assert row["status"] == "ok" and "valkey/valkey:8-alpine" in row["detail"]
    ctx.state.remember(**checks.facts)
    assert "\nREDIS_IMAGE=valkey/valkey:8-alpine\n" in env_text(ctx)


async def test_preflight_blocks_a_redis_image_that_cannot_read_the_sources_keys(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "REDIS_IMAGE=redis:7-alpine\n")
    checks = preflight.Checks(facts={"source_redis": "valkey 8.0.2"})
    await preflight._target_redis(ctx, checks)
    row = next(r for r in checks.rows if r["check"] == "target Redis image")
    assert row["status"] == "blocker", row
    assert "REDIS_IMAGE=valkey/valkey:8-alpine" in row["fix"]
    # what the operator wrote is kept as written
    ctx.state.remember(**{k: v for k, v in checks.facts.items() if k != "source_redis"})
    assert env_text(ctx).count("REDIS_IMAGE=") == 1
