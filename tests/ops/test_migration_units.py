"""Pure rules of the migration toolkit (the flows around them are tested end to end in tests/e2e/test_migrate.py)."""

from __future__ import annotations

import pytest

from timetodo.ops.migration.copy import restore_compatible


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
