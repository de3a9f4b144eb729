"""Pure rules of the migration toolkit (the flows around them are tested end to end in tests/e2e/test_migrate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from timetodo.ops.adapters.redis import restore_compatible


@pytest.mark.parametrize(
    ("source", "target", "ok"),
    [
        (("redis", "7.0.15"), ("redis", "7.0.15"), True),
        (("redis", "7.0.15"), ("redis", "7.2.4"), True),
        (("redis", "7.2.4"), ("redis", "7.0.15"), False),  # a target too old for the payloads
        (("redis", "6.2.14"), ("redis", "5.0.7"), False),
        (("redis", "7.2.4"), ("valkey", "8.0.1"), True),
        (("redis", "7.4.1"), ("valkey", "8.0.1"), False),  # RDB 12 payloads: Redis only
        (("valkey", "8.0.1"), ("redis", "7.0.15"), False),
    ],
)
def test_target_redis_must_read_the_sources_dump_payloads(
    source: tuple[str, str], target: tuple[str, str], ok: bool
) -> None:
    assert restore_compatible(*source, *target) is ok


async def test_migrate_plan_is_the_steps_own_plans_in_order(tmp_path: Path) -> None:
    """`migrate plan` cannot drift from the steps: it prints each step's `plan()`, in the order the steps run."""
    import io

    from rich.console import Console

    from timetodo.ops.migrate.config import load_config, load_secrets
    from timetodo.ops.migrate.context import Context
    from timetodo.ops.migrate.run import print_plan, step_module
    from timetodo.ops.migrate.state import STEPS, MigrationState

    example = Path(__file__).resolve().parents[2] / "migration.example.toml"
    config_path = tmp_path / "migration.toml"
    config_path.write_text(example.read_text())
    config = load_config(config_path)
    env = {
        "SOURCE_ADMIN_PASSWORD": "pw",
        "SOURCE_DATABASE_URL": "postgresql://app:pw@db.example.com:5432/app",
        "SOURCE_REDIS_URL": "redis://redis.example.com:6379/0",
        "TARGET_DATABASE_URL": "postgresql://timetodo:pw@127.0.0.1:5432/timetodo",
        "TARGET_REDIS_URL": "redis://127.0.0.1:6379/0",
        "TELEGRAM_BOT_TOKEN": "123:abc",
        "TELEGRAM_WEBHOOK_SECRET": "hook-secret",
    }
    out = io.StringIO()
    ctx = Context(
        config,
        load_secrets(config, env),
        config.work_dir,
        MigrationState.load(config.work_dir),
        Console(file=out, width=400),
    )
    await print_plan(ctx)
    printed = out.getvalue()
    position = 0
    for step in STEPS:
        lines = await step_module(step).plan(ctx)
        assert lines, step
        for host, command in lines:
            found = printed.find(command, position)
            assert found >= 0, (step, command)
            assert host in printed
            position = found
    assert not config.work_dir.exists()  # planning touched nothing


def test_an_unexpected_failure_leaves_its_traceback_in_the_log_with_secrets_masked(tmp_path: Path) -> None:
    import json
    import logging

    from timetodo.ops.migrate.journal import Journal

    log = logging.getLogger("timetodo.ops.migrate")
    with Journal(tmp_path, ["s3cret-password"]):
        try:
            raise RuntimeError("could not reach postgresql://app:s3cret-password@db.example.com/app")
        except RuntimeError:
            log.error("sync: unexpected failure", exc_info=True)
    human = (tmp_path / "migration.log").read_text()
    lines = [json.loads(line) for line in (tmp_path / "migration.jsonl").read_text().splitlines()]
    assert "Traceback (most recent call last)" in human and "RuntimeError: could not reach" in human
    assert "Traceback" in lines[-1]["traceback"] and lines[-1]["msg"] == "sync: unexpected failure"
    assert "s3cret-password" not in human + json.dumps(lines)
