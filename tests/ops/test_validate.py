"""timetodo.ops.validate against real servers on 127.0.0.1: PostgreSQL 15 and Redis 7 (from tests/conftest.py),
HTTP servers in child processes, and the fake Telegram Bot API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from tests.fakes.telegram import FakeTelegram
from tests.support import Services, create_database, free_port
from timetodo.core.schema import upgrade_async
from timetodo.ops.adapters import redis as redis_ops
from timetodo.ops.adapters.files import scan_tree
from timetodo.ops.adapters.postgres import PgTarget, exported_snapshot
from timetodo.ops.adapters.telegram import TelegramClient
from timetodo.ops.migrate.validate import (
    REPORT_JSON,
    REPORT_TXT,
    ValidationReport,
    check_webhook,
    compare_databases,
    compare_files,
    compare_http,
    compare_redis,
    percentile,
)
from timetodo.ops.migrate.validate import redis as validate_redis

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TASKS = 3500
CHUNK = 1000
TOKEN = "123456789:AAHfakeTokenForTheTestsOnly_0123456789abc"
API_TOKEN = "api-token-for-the-validation-tests"


# ================================================================================================= PostgreSQL


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def fill(url: str) -> None:
    """Users, projects, a few thousand tasks (several chunks) and time entries, with NULLs, JSON and unicode."""
    conn = await asyncpg.connect(plain(url))
    try:
        await conn.execute(
            """
            INSERT INTO users (email, password_hash, timezone, locale, is_admin, is_active, created_at, updated_at)
            SELECT 'user' || g || '@example.com', 'hash-' || g, 'Europe/Moscow', 'ru', g = 1, true,
                   timestamptz '2024-01-01 10:00:00+00' + g * interval '1 hour', now()
            FROM generate_series(1, 5) g;
            INSERT INTO projects (owner_id, name, color, archived, created_at, updated_at)
            SELECT 1 + g % 5, 'Проект ' || g, CASE WHEN g % 2 = 0 THEN '#ff0000' END, g = 7, now(), now()
            FROM generate_series(1, 10) g;
            INSERT INTO tasks (owner_id, project_id, title, description, priority, labels, position, done,
                               due_date, estimate_minutes, created_at, updated_at)
            SELECT 1 + g % 5, CASE WHEN g % 3 = 0 THEN NULL ELSE 1 + g % 10 END, 'task ' || g || ' ✓',
                   repeat('описание ', g % 4), 1 + g % 4, json_build_array('l' || g % 7, 'x'), g, g % 9 = 0,
                   CASE WHEN g % 5 = 0 THEN date '2025-01-01' + g END, NULLIF(g % 120, 0),
                   timestamptz '2024-06-01 00:00:00+00' + g * interval '37 seconds', now()
            FROM generate_series(1, $1::int) g;
            """.replace("$1::int", str(TASKS))
        )
        await conn.execute(
            """
            INSERT INTO time_entries (owner_id, task_id, note, started_at, ended_at, created_at, updated_at)
            SELECT 1 + g % 5, g, 'work ' || g, timestamptz '2024-06-02 09:00:00+00' + g * interval '1 minute',
                   timestamptz '2024-06-02 09:00:30+00' + g * interval '1 minute', now(), now()
            FROM generate_series(1, 300) g
            """
        )
    finally:
        await conn.close()


def pg_dump(url: str) -> bytes:
    result = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--format=custom", f"--dbname={plain(url)}"], capture_output=True, check=True
    )
    return result.stdout


def pg_restore(url: str, dump: bytes) -> None:
    subprocess.run(
        [
            str(PG_BIN / "pg_restore"),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={plain(url)}",
        ],
        input=dump,
        capture_output=True,
        check=True,
    )


async def app_database(services: Services) -> str:
    url = await create_database(services.postgres_url)
    await upgrade_async(url)
    return url


async def copy_of(services: Services, dump: bytes) -> str:
    """A fresh database with the app schema, then the source's dump restored over it."""
    url = await app_database(services)
    pg_restore(url, dump)
    return url


async def execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(plain(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def source_db(services: Services) -> str:
    url = await app_database(services)
    await fill(url)
    return url


@pytest.fixture(scope="module")
def source_dump(source_db: str) -> bytes:
    return pg_dump(source_db)


@pytest.fixture
async def target_db(services: Services, source_dump: bytes) -> str:
    return await copy_of(services, source_dump)


async def test_identical_databases_are_ok(source_db: str, target_db: str) -> None:
    result = await compare_databases(source_db, target_db, chunk_rows=CHUNK)

    assert result.ok, result.errors
    assert result.errors == [] and result.warnings == []
    tasks = result.table("tasks")
    assert tasks.source_rows == tasks.target_rows == TASKS
    assert tasks.chunks == 4 and tasks.differing_chunks == 0 and tasks.content_equal is True
    assert tasks.primary_key == ["id"]
    assert result.table("users").source_rows == 5
    assert result.table("time_entries").target_rows == 300
    assert result.table("alembic_version").primary_key == ["version_num"]
    sequences = {seq.name: seq for seq in result.sequences}
    assert sequences["tasks_id_seq"].column_max == TASKS and sequences["tasks_id_seq"].next_value == TASKS + 1
    assert all(seq.ok for seq in result.sequences) and len(sequences) >= 9
    assert json.loads(json.dumps(result.to_dict()))["tables"]


async def test_changed_title_names_table_and_key_range(source_db: str, target_db: str) -> None:
    await execute(target_db, "UPDATE tasks SET title = 'edited on the target' WHERE id = 2345")

    result = await compare_databases(source_db, target_db, chunk_rows=CHUNK)

    assert not result.ok
    tasks = result.table("tasks")
    assert tasks.source_rows == tasks.target_rows == TASKS  # same count, different content
    assert tasks.differing_chunks == 1 and not tasks.ok
    [diff] = tasks.differences
    assert diff.low is not None and diff.high is not None
    assert diff.low[0] <= 2345 <= diff.high[0] and diff.high[0] - diff.low[0] < CHUNK
    assert diff.changed == 1 and diff.missing_on_target == diff.extra_on_target == 0
    assert diff.first_key == diff.last_key == (2345,)
    [message] = [m for m in result.errors if m.startswith("table tasks:")]
    match = re.search(r"rows with id between (\d+) and (\d+) differ", message)
    assert match, message
    assert int(match.group(1)) <= 2345 <= int(match.group(2))
    assert "differing id 2345" in message
    assert all(t.ok for t in result.tables if t.name != "tasks")


async def test_deleted_row_is_a_count_mismatch(source_db: str, target_db: str) -> None:
    await execute(target_db, "DELETE FROM time_entries WHERE task_id = 1500", "DELETE FROM tasks WHERE id = 1500")

    result = await compare_databases(source_db, target_db, chunk_rows=CHUNK)

    assert f"table tasks: {TASKS} rows on source, {TASKS - 1} on target" in result.errors
    assert "table time_entries: 300 rows on source, 299 on target" not in result.errors  # task 1500 has no entry
    [diff] = result.table("tasks").differences
    assert diff.missing_on_target == 1 and diff.first_key == (1500,)
    assert any("tasks" in m and "1 missing on target" in m and "differing id 1500" in m for m in result.errors)


async def test_sequence_behind_the_data_is_named(source_db: str, target_db: str) -> None:
    await execute(target_db, "SELECT setval('tasks_id_seq', 10)", "SELECT setval('projects_id_seq', 10, false)")

    result = await compare_databases(source_db, target_db, chunk_rows=CHUNK)

    assert not result.ok
    assert len(result.errors) == 1, result.errors
    assert result.errors[0].startswith(
        f"sequence tasks_id_seq on target: last value 10 is behind max(tasks.id) = {TASKS}"
    )
    # setval(..., false): nextval() returns 10 itself, which is taken; the source's sequence is fine
    assert any(w.startswith("sequence projects_id_seq on target: nextval() would return 10") for w in result.warnings)
    states = {seq.name: seq.status for seq in result.sequences}
    assert states["tasks_id_seq"] == "FAILED" and states["projects_id_seq"] == "warning"
    assert states["app_state_id_seq"] == "ok"  # same state as on the source: not the migration's doing
    assert all(t.ok for t in result.tables)  # the rows themselves are fine


async def test_table_without_primary_key_is_a_warning_then_compared(
    services: Services, source_dump: bytes, target_db: str
) -> None:
    source = await copy_of(services, source_dump)  # a private source: this test adds a table to it
    for url in (source, target_db):
        await execute(
            url,
            "CREATE TABLE audit_log (at timestamptz NOT NULL, note text)",
            "INSERT INTO audit_log SELECT timestamptz '2024-01-01' + g * interval '1 s', 'n' || g "
            "FROM generate_series(1, 2500) g",
        )

    same = await compare_databases(source, target_db, chunk_rows=CHUNK)
    assert same.ok, same.errors
    assert any("audit_log" in w and "no primary key" in w for w in same.warnings)
    assert same.table("audit_log").primary_key is None and same.table("audit_log").content_equal is True

    await execute(target_db, "UPDATE audit_log SET note = 'changed' WHERE note = 'n1234'")
    changed = await compare_databases(source, target_db, chunk_rows=CHUNK)
    assert "table audit_log (no primary key): content differs" in changed.errors
    assert not changed.table("audit_log").ok


async def test_composite_primary_key_names_the_key_range(
    services: Services, source_dump: bytes, target_db: str
) -> None:
    source = await copy_of(services, source_dump)
    for url in (source, target_db):
        await execute(
            url,
            "CREATE TABLE daily_stats (user_id bigint, day date, label text, minutes int, PRIMARY KEY (user_id, day))",
            "INSERT INTO daily_stats SELECT u, date '2024-01-01' + d, 'Ünïcode ' || d, u * d "
            "FROM generate_series(1, 5) u, generate_series(0, 599) d",
        )
    assert (await compare_databases(source, target_db, chunk_rows=CHUNK)).ok

    await execute(target_db, "UPDATE daily_stats SET minutes = -1 WHERE user_id = 3 AND day = date '2024-03-01'")
    result = await compare_databases(source, target_db, chunk_rows=CHUNK)

    stats = result.table("daily_stats")
    assert stats.primary_key == ["user_id", "day"] and stats.chunks == 3 and stats.differing_chunks == 1
    [message] = result.errors
    assert message.startswith("table daily_stats: rows with (user_id, day) between (")
    assert "differing (user_id, day) (3, 2024-03-01)" in message
    [diff] = stats.differences
    assert diff.low is not None and diff.high is not None and diff.low <= (3, date(2024, 3, 1)) <= diff.high


async def test_table_on_one_side_only(source_db: str, target_db: str) -> None:
    await execute(target_db, "CREATE TABLE stray (id int PRIMARY KEY)")
    result = await compare_databases(source_db, target_db, chunk_rows=CHUNK)
    assert result.errors == ["table stray: exists only on the target"]
    assert result.table("stray").only_on == "target"
    assert (await compare_databases(source_db, target_db, chunk_rows=CHUNK, exclude_tables={"stray"})).ok


async def test_source_snapshot_makes_the_comparison_consistent(
    services: Services, source_dump: bytes, target_db: str
) -> None:
    source = await copy_of(services, source_dump)
    async with exported_snapshot(PgTarget.from_url(source)) as (_conn, snapshot):
        await execute(  # a write the application makes after the snapshot was taken
            source,
            "INSERT INTO tasks (owner_id, title, description, priority, labels, position, done, created_at, "
            "updated_at) VALUES (1, 'late write', '', 4, '[]', 0, false, now(), now())",
        )
        on_snapshot = await compare_databases(source, target_db, chunk_rows=CHUNK, source_snapshot=snapshot)
        live = await compare_databases(source, target_db, chunk_rows=CHUNK)

    assert on_snapshot.ok, on_snapshot.errors
    assert on_snapshot.snapshot == snapshot
    assert f"table tasks: {TASKS + 1} rows on source, {TASKS} on target" in live.errors


async def test_passwords_never_appear_in_messages(services: Services, source_db: str) -> None:
    secret = "s3cret-Pa55word"
    unreachable = f"postgresql+asyncpg://timetodo:{secret}@127.0.0.1:{free_port()}/nothing?sslmode=disable"
    result = await compare_databases(source_db, unreachable)
    assert not result.ok
    assert "cannot connect" in result.errors[0]
    dumped = json.dumps(result.to_dict())
    assert secret not in dumped and "***" in result.target
    assert "?sslmode=disable" in result.target
    with pytest.raises(ValueError, match="snapshot"):
        await compare_databases(source_db, source_db, source_snapshot="x'; DROP TABLE tasks; --")


# ================================================================================================= Redis


def redis_db(url: str, index: int) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{index}"


@pytest.fixture(scope="module")
def debug_redis() -> Iterator[str]:
    """A Redis that allows DEBUG (for the DIGEST-VALUE path); managed services usually do not."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class RedisPair:
    source: str
    target: str
    method: str
    """The method the comparison must use."""
    forced: str | None
    """What to pass as `method=` (None: let compare_redis pick)."""


@pytest.fixture(params=["script", "reads", "digest"])
async def redis_pair(request: pytest.FixtureRequest, services: Services) -> AsyncIterator[RedisPair]:
    """DB 9 and 10 of the test Redis (DEBUG forbidden, like managed Redis): the Lua script is picked, or reads are
    forced; or DB 1 and 2 of a Redis that allows DEBUG, with DIGEST-VALUE forced."""
    if request.param == "digest":
        base = request.getfixturevalue("debug_redis")
        urls = redis_db(base, 1), redis_db(base, 2)
    else:
        urls = redis_db(services.redis_url, 9), redis_db(services.redis_url, 10)
    for url in urls:
        client = aioredis.Redis.from_url(url)
        await client.flushdb()
        await client.aclose()
    yield RedisPair(urls[0], urls[1], request.param, None if request.param == "script" else request.param)
    for url in urls:
        client = aioredis.Redis.from_url(url)
        await client.flushdb()
        await client.aclose()


async def test_redis_method_is_what_both_servers_allow(debug_redis: str) -> None:
    """ACL users standing in for managed Redis: scripting forbidden → DEBUG DIGEST-VALUE; both → reads."""
    admin = aioredis.Redis.from_url(debug_redis)
    port = debug_redis.rsplit(":", 1)[1].split("/")[0]
    await admin.execute_command("ACL", "SETUSER", "noscript", "on", ">pw-noscript", "~*", "+@all", "-@scripting")
    await admin.execute_command("ACL", "SETUSER", "locked", "on", ">pw-locked", "~*", "+@all", "-@scripting", "-debug")
    await admin.aclose()
    urls = {user: f"redis://{user}:pw-{user}@127.0.0.1:{port}/{n}" for n, user in ((3, "noscript"), (4, "locked"))}
    full = redis_db(debug_redis, 5)
    for url in (*urls.values(), full):
        client = aioredis.Redis.from_url(url)
        await client.set("k", "v")
        await client.aclose()
    results = {
        "script": await compare_redis(full, redis_db(debug_redis, 6)),  # DB 6 is empty
        "digest": await compare_redis(urls["noscript"], urls["noscript"]),
        "reads": await compare_redis(urls["noscript"], urls["locked"]),
    }
    assert {name: result.method for name, result in results.items()} == {n: n for n in results}
    assert results["digest"].ok and results["reads"].ok and results["reads"].compared == 1
    assert results["script"].errors[-1] == "key 'k': missing on target"
    with pytest.raises(ValueError, match="method"):
        await compare_redis(full, full, method="magic")


async def fill_redis(url: str, plain_keys: int = 200) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(plain_keys):
            pipe.set(f"cache:{i}", f"value {i}")
            if i % 3 == 0:
                pipe.pexpire(f"cache:{i}", 600_000 + i)
        pipe.set("session:abc", "token", ex=3600)
        pipe.set("ttl:off", "x", ex=3600)
        pipe.set("ttl:near", "x", ex=3600)
        pipe.set("ttl:persisted", "x", ex=3600)
        pipe.set(b"bin:\xff\x00key", b"\x00\x01\xfe")
        pipe.set("str:changed", "original")
        pipe.hset("hash:user:1", mapping={"name": "Ann", "tz": "UTC", "n": "1"})
        pipe.hset("hash:big", mapping={f"field{i}": f"v{i}" for i in range(600)})
        pipe.hset("hash:missing", mapping={"a": "1"})
        pipe.rpush("list:queue", *[f"job{i}" for i in range(50)])
        pipe.rpush("list:wrongtype", "a", "b")
        pipe.sadd("set:tags", *[f"tag{i}" for i in range(40)])
        pipe.zadd("zset:scores", {f"m{i}": i * 1.5 for i in range(30)})
        pipe.expire("zset:scores", 7200)
        pipe.xadd("stream:events", {"type": "created", "id": "1"})
        pipe.xadd("stream:events", {"type": "done", "id": "1"})
        await pipe.execute()
    finally:
        await client.aclose()


async def copy_redis(source: str, target: str) -> None:
    lines: list[bytes] = []
    await redis_ops.dump_keys(source, lines.append)
    await redis_ops.restore_keys(target, lines)


async def test_identical_redis_with_ttls_is_ok(redis_pair: RedisPair) -> None:
    source, target = redis_pair.source, redis_pair.target
    await fill_redis(source)
    await copy_redis(source, target)
    # same content written in another order: hashes and sets compare by content, not by iteration order
    tgt = aioredis.Redis.from_url(target)
    await tgt.delete("hash:big")
    await tgt.hset("hash:big", mapping={f"field{i}": f"v{i}" for i in reversed(range(600))})
    await tgt.aclose()

    result = await compare_redis(source, target, batch=64, method=redis_pair.forced)

    assert result.ok, result.errors
    assert result.method == redis_pair.method
    assert result.source_keys == result.target_keys == 214
    assert result.compared == 214 and result.target_scanned == 214
    assert result.missing_on_target == result.extra_on_target == result.value_differs == result.ttl_differs == 0
    assert result.warnings == []

    sampled = await compare_redis(source, target, sample=10, method=redis_pair.forced)
    assert sampled.ok and sampled.compared == 10
    assert any("sample of 10" in w for w in sampled.warnings)


async def test_redis_keys_the_targets_bot_wrote_after_the_switch_are_not_errors(redis_pair: RedisPair) -> None:
    """After the switch the target's bot claims the updates Telegram delivers (tg:<bot id>:update:…) and reserves
    limiter slots: counted, not "only on target" errors; any other key only on the target still is one."""
    source, target = redis_pair.source, redis_pair.target
    await fill_redis(source, plain_keys=5)
    await copy_redis(source, target)
    tgt = aioredis.Redis.from_url(target)
    try:
        await tgt.set("tg:123456:update:901", "1", ex=3600)
        await tgt.set("tg:123456:relay:902", "1", ex=3600)
        await tgt.set("tg:123456:rate:chat:5", "1", ex=60)
        await tgt.set("tg:notabot:update:1", "1")
    finally:
        await tgt.aclose()
    result = await compare_redis(source, target, method=redis_pair.forced)
    assert result.target_own_keys == 3
    assert result.extra_on_target == 1 and result.errors[1:] == ["key 'tg:notabot:update:1': only on target"]
    assert any("bot's update claims" in w for w in result.warnings)


async def test_redis_rate_limit_counters_are_each_hosts_own(redis_pair: RedisPair) -> None:
    """A login on the frozen source after the final copy (a client's during the freeze, a resumed run's own) moves
    its rate-limit counters only: counted, never compared; any other value that differs still is an error."""
    source, target = redis_pair.source, redis_pair.target
    await fill_redis(source, plain_keys=5)
    src = aioredis.Redis.from_url(source)
    try:
        await src.set("rl:login:ip:127.0.0.1", "1", ex=60)
        await src.set("plain:different", "a")
        await copy_redis(source, target)
        await src.incr("rl:login:ip:127.0.0.1")
        await src.set("rl:login:acct:abc", "1", ex=60)
        await src.set("plain:different", "b")
    finally:
        await src.aclose()
    tgt = aioredis.Redis.from_url(target)
    try:
        await tgt.set("rl:register:ip:10.0.0.1", "1", ex=60)
    finally:
        await tgt.aclose()
    result = await compare_redis(source, target, method=redis_pair.forced)
    assert result.host_counters == 3
    assert result.missing_on_target == result.extra_on_target == 0
    assert result.value_differs == 1 and any("plain:different" in e for e in result.errors), result.errors


async def test_redis_differences_are_each_named(redis_pair: RedisPair) -> None:
    source, target = redis_pair.source, redis_pair.target
    await fill_redis(source)
    await copy_redis(source, target)
    tgt = aioredis.Redis.from_url(target)
    src = aioredis.Redis.from_url(source)
    try:
        await tgt.set("str:changed", "changed on target", keepttl=True)
        await tgt.delete("hash:missing")
        await tgt.delete("list:wrongtype")
        await tgt.set("list:wrongtype", "now a string")
        await tgt.pexpire("ttl:off", await src.pttl("ttl:off") + 60_000)
        await tgt.pexpire("ttl:near", await src.pttl("ttl:near") + 1_000)  # within the 5 s tolerance
        await tgt.persist("ttl:persisted")
        await tgt.set("extra:only-on-target", "1")
    finally:
        await tgt.aclose()
        await src.aclose()

    result = await compare_redis(source, target, method=redis_pair.forced)
    assert result.method == redis_pair.method

    errors = "\n".join(result.errors)
    assert not result.ok
    assert "key 'str:changed': value differs" in result.errors
    assert "key 'hash:missing': missing on target" in result.errors
    assert "key 'list:wrongtype': type list on source, string on target" in result.errors
    ttl_off = re.compile(
        r"key 'ttl:off': TTL 3[56]\d\d\.\d s on source, 36[56]\d\.\d s on target \(tolerance 5000 ms\)"
    )
    assert sum(bool(ttl_off.fullmatch(m)) for m in result.errors) == 1, result.errors
    persisted = re.compile(r"key 'ttl:persisted': TTL 3[56]\d\d\.\d s on source, no expiry on target")
    assert sum(bool(persisted.fullmatch(m)) for m in result.errors) == 1, result.errors
    assert "key 'extra:only-on-target': only on target" in result.errors
    assert "ttl:near" not in errors
    assert result.value_differs == 1 and result.missing_on_target == 1 and result.type_differs == 1
    assert result.ttl_differs == 2 and result.extra_on_target == 1
    assert result.errors[0].startswith("key count: 214 on source, 214 on target (1 missing on target, 1 only on")
    assert len(result.errors) == 7


async def test_redis_keys_expiring_during_the_run_are_not_errors(
    redis_pair: RedisPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = redis_pair.source, redis_pair.target
    await fill_redis(source, plain_keys=3000)
    src = aioredis.Redis.from_url(source)
    pipe = src.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"volatile:{i}", "v", px=120_000)
    await pipe.execute()
    await src.aclose()
    await copy_redis(source, target)
    # expired on the target already, about to expire on the source (and the other way round)
    src_sync, tgt_sync = redis.Redis.from_url(source), redis.Redis.from_url(target)
    src_sync.set("expiring:source-side", "v", px=120_000)
    tgt_sync.set("expiring:target-side", "v", px=120_000)

    # the worst moment for an expiry: SCAN has just returned the key, its reads have not run yet
    real_scan = validate_redis._scan

    async def scan_then_expire(client: Any, batch: int, limit: int | None) -> AsyncIterator[list[bytes]]:
        async for keys in real_scan(client, batch, limit):
            # expired right after SCAN returned them (a fixed TTL would race a busy machine's clock instead)
            volatile = [key for key in keys if key.startswith((b"volatile:", b"expiring:"))]
            tgt_sync.pexpire("expiring:target-side", 1)  # gone from the target before its own scan: not "extra"
            if volatile:
                for side in (src_sync, tgt_sync):
                    side.pexpire(volatile[0], 1)  # make sure both sides hold the key until now
                    for key in volatile:
                        side.pexpire(key, 1)
                time.sleep(0.01)
            yield keys

    monkeypatch.setattr(validate_redis, "_scan", scan_then_expire)
    progress: list[tuple[int, int]] = []
    try:
        result = await compare_redis(
            source, target, batch=100, method=redis_pair.forced, on_progress=lambda d, t: progress.append((d, t))
        )
    finally:
        src_sync.close()
        tgt_sync.close()

    assert result.ok, result.errors
    assert result.expired_during_run >= 301  # 300 volatile keys + the one expiring on the source
    assert result.compared >= 3014 and result.missing_on_target == result.extra_on_target == 0
    assert any("expired while being compared" in w for w in result.warnings)
    assert len(progress) > 5 and [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert progress[-1][0] == progress[-1][1] >= 3315  # 3014 + 300 volatile + expiring:source-side


async def test_unreachable_redis_is_an_error_without_password(services: Services) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    result = await compare_redis(redis_db(services.redis_url, 9), url)
    assert not result.ok and "cannot reach Redis" in result.errors[0]
    assert "hunter2-secret" not in json.dumps(result.to_dict())


# ================================================================================================= files


def test_files_compared_both_ways(tmp_path: Path) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    for root in (src, tgt):
        (root / "2024" / "05").mkdir(parents=True)
        (root / "2024" / "05" / "a.png").write_bytes(b"\x89PNG" + bytes(range(200)))
        (root / "notes.txt").write_text("notes ✓")
        (root / "b.bin").write_bytes(b"\x00" * 1000)
    assert compare_files(scan_tree(src), scan_tree(tgt)).ok

    (src / "only-source.txt").write_text("lost")
    (tgt / "only-target.txt").write_text("stray")
    (tgt / "b.bin").write_bytes(b"\x00" * 999 + b"\x01")
    result = compare_files(scan_tree(src), scan_tree(tgt))

    assert not result.ok
    assert result.missing_on_target == ["only-source.txt"]
    assert result.extra_on_target == ["only-target.txt"]
    assert result.hash_differs == ["b.bin"]
    assert result.errors == [
        "file only-source.txt: missing on target",
        "file only-target.txt: only on target",
        "file b.bin: sha256 differs",
    ]
    assert result.source_files == result.target_files == 4


def test_many_file_differences_are_summarised() -> None:
    source = {f"f{i:03}": "a" * 64 for i in range(100)}
    result = compare_files(source, {})
    assert len(result.missing_on_target) == 100
    assert len(result.errors) == 21 and result.errors[-1] == "... and 80 more files missing on target"


# ================================================================================================= HTTP

SERVER = r"""
import json, sys, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

delay = float(sys.argv[1]) / 1000
token = sys.argv[2]
overrides = json.loads(sys.argv[3])
BODIES = {
    "/api/v1/tasks?limit=50": {"items": [{"id": i, "title": f"task {i}", "labels": ["a"]} for i in range(50)],
                               "next_cursor": None},
    "/api/v1/projects": {"items": [{"id": 1, "name": "Home"}, {"id": 2, "name": "Work"}]},
    "/api/v1/auth/me": {"id": 1, "email": "ann@example.com", "timezone": "UTC"},
}
BODIES.update(overrides)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stalls

    def do_GET(self):
        if self.headers.get("Authorization") != f"Bearer {token}":
            status, body = 401, {"detail": "Not authenticated"}
        elif self.path in BODIES:
            status, body = 200, BODIES[self.path]
        else:
            status, body = 404, {"detail": "Not Found"}
        if delay:
            time.sleep(delay)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Request-ID", uuid.uuid4().hex)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

PATHS = ["/api/v1/tasks?limit=50", "/api/v1/projects", "/api/v1/auth/me"]


class ApiServer:
    """A small JSON API in a child process (so its latency does not share the test's GIL)."""

    def __init__(self, delay_ms: float = 0, overrides: dict[str, Any] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(delay_ms), API_TOKEN, json.dumps(overrides or {})],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def test_identical_hosts_answer_alike_and_within_budget() -> None:
    verdicts = []
    with ApiServer() as source, ApiServer() as target:
        for _ in range(3):  # a loaded CI machine may add a few ms to one run's p95; identical hosts pass in one of 3
            result = await compare_http(source.url, target.url, API_TOKEN, PATHS, rounds=30)
            assert [(p.path, p.source_status, p.target_status, p.identical) for p in result.paths] == [
                (path, 200, 200, True) for path in PATHS
            ]
            assert result.samples == 30 * len(PATHS)
            assert result.source_p50_ms is not None and result.source_p95_ms is not None
            assert 0 < result.source_p50_ms <= result.source_p95_ms
            verdicts.append(result.target_within_budget)
            if result.target_within_budget:
                break

    assert verdicts[-1] is True, result.errors
    assert result.ok, result.errors
    assert "2 ms" in result.budget_rule and "1.1" in result.budget_rule


async def test_differing_body_names_the_path() -> None:
    changed = {"/api/v1/projects": {"items": [{"id": 1, "name": "Home"}, {"id": 2, "name": "Job"}]}}
    with ApiServer() as source, ApiServer(overrides=changed) as target:
        result = await compare_http(source.url, target.url, API_TOKEN, PATHS, rounds=3)

    assert not result.ok
    assert [m for m in result.errors if not m.startswith("latency")] == [
        "GET /api/v1/projects: answered differently (JSON bodies differ at $.items[1].name)"
    ]
    assert [p.identical for p in result.paths] == [True, False, True]


async def test_slow_target_is_outside_the_latency_budget() -> None:
    with ApiServer() as source, ApiServer(delay_ms=30) as target:
        result = await compare_http(source.url, target.url, API_TOKEN, PATHS[:2], rounds=10)

    assert result.target_within_budget is False and result.far_outside_noise is True
    assert result.target_p50_ms is not None and result.source_p50_ms is not None
    assert result.target_p50_ms >= 30 > result.source_p50_ms
    assert all(p.identical for p in result.paths)  # same answers, only slower
    assert len(result.errors) == 1 and result.errors[0].startswith("latency: target p50")


async def test_a_slightly_slower_target_is_a_warning_not_an_error() -> None:
    """Over the ×1.1 budget but within the noise of a busy host (median < 2 × source + 10 ms): reported, not failed."""
    with ApiServer() as source, ApiServer(delay_ms=4) as target:
        result = await compare_http(source.url, target.url, API_TOKEN, PATHS[:2], rounds=10)

    assert result.target_within_budget is False and result.far_outside_noise is False
    assert result.ok and result.errors == []
    assert len(result.warnings) == 1 and result.warnings[0].startswith("latency: target p50")


async def test_wrong_token_and_dead_target() -> None:
    with ApiServer() as source, ApiServer() as target:
        unauthenticated = await compare_http(source.url, target.url, "wrong-token", PATHS[:1], rounds=2)
    assert [(p.source_status, p.target_status) for p in unauthenticated.paths] == [(401, 401)]
    assert any("both hosts answered 401" in w for w in unauthenticated.warnings)

    with ApiServer() as source:
        dead = f"http://127.0.0.1:{free_port()}"
        result = await compare_http(source.url, dead, API_TOKEN, PATHS[:1], rounds=2)
    assert not result.ok
    assert result.errors[0].startswith("GET /api/v1/tasks?limit=50: no answer from the target")
    assert API_TOKEN not in json.dumps(result.to_dict())


def test_percentile() -> None:
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(1, 101))), 95) == pytest.approx(95.05)


# ================================================================================================= webhook


async def test_webhook_check() -> None:
    target_hook = "http://127.0.0.1:8443/api/v1/telegram/webhook"
    with FakeTelegram(TOKEN) as tg:
        api_base = tg.base_url
        tg.enqueue_update({"message": {"text": "pending"}})
        async with TelegramClient(TOKEN, api_base=tg.base_url) as client:
            tg.record_error("Wrong response from the webhook: 502 Bad Gateway", when=int(time.time()) - 60)
            since = time.time()
            await client.set_webhook(target_hook)

            good = await check_webhook(client, target_hook, since)
            assert good.ok, good.errors
            assert good.url == target_hook and good.pending_update_count == 1 and good.last_error is None

            elsewhere = await check_webhook(client, "http://127.0.0.1:9999/other", since)
            assert not elsewhere.ok and "expected" in elsewhere.errors[0]

            tg.record_error("Connection refused")
            failing = await check_webhook(client, target_hook, since)
            assert failing.errors == ["webhook delivery failed since the switch: Connection refused"]

    broken = await check_webhook(TelegramClient(TOKEN, api_base=api_base, retries=0), target_hook, since)
    assert not broken.ok and TOKEN not in json.dumps(broken.to_dict())


# ================================================================================================= report


async def test_report_writes_text_and_json(tmp_path: Path, services: Services, source_db: str, target_db: str) -> None:
    with FakeTelegram(TOKEN) as tg:
        async with TelegramClient(TOKEN, api_base=tg.base_url) as client:
            since = time.time()
            await client.set_webhook("http://127.0.0.1:8443/hook")
            webhook = await check_webhook(client, "http://127.0.0.1:8443/hook", since)
    redis_source, redis_target = redis_db(services.redis_url, 11), redis_db(services.redis_url, 12)
    for url in (redis_source, redis_target):
        client = aioredis.Redis.from_url(url)
        await client.flushdb()
        await client.set("session:1", "x", ex=600)
        await client.aclose()
    with ApiServer() as source_api, ApiServer() as target_api:
        http = await compare_http(source_api.url, target_api.url, API_TOKEN, PATHS[:1], rounds=5)
    report = ValidationReport(
        database=await compare_databases(source_db, target_db, chunk_rows=CHUNK),
        redis=await compare_redis(redis_source, redis_target),
        files=compare_files({"a.txt": "1" * 64, "b.txt": "2" * 64}, {"a.txt": "1" * 64}),
        http=http,
        webhook=webhook,
    )

    text_path, json_path = report.write(tmp_path / "reports")

    assert text_path == tmp_path / "reports" / REPORT_TXT and json_path == tmp_path / "reports" / REPORT_JSON
    data = json.loads(json_path.read_text())
    assert data["ok"] is False and report.ok is False
    assert "files: file b.txt: missing on target" in data["errors"]
    assert data["errors"] == report.errors
    assert all(m.startswith(("files: ", "http: latency")) for m in report.errors)  # loopback noise may fail http
    assert data["sections"]["database"]["ok"] is True and data["sections"]["redis"]["ok"] is True
    assert data["sections"]["http"]["paths"][0]["identical"] is True
    assert {t["name"] for t in data["sections"]["database"]["tables"]} >= {"users", "tasks", "projects"}
    text = text_path.read_text()
    assert "result: FAILED" in text
    assert re.search(r"^\s+tasks\s+id\s+3500\s+3500\s+4\s+0\s+ok$", text, re.M), text
    assert re.search(r"^\s+redis\s+ok\s+0\s+0$", text, re.M), text
    assert re.search(r"^\s+source keys compared\s+1$", text, re.M), text
    assert re.search(r"^\s+/api/v1/tasks\?limit=50\s+200\s+200\s+yes$", text, re.M), text
    assert "target within budget:" in text and "2 ms" in text
    assert "Files: FAILED" in text and "Telegram webhook: ok" in text
    assert "  - files: file b.txt: missing on target" in text
    assert "timetodo:timetodo@" not in text and services.redis_url not in text  # passwords are masked

    fine = ValidationReport(files=compare_files({"a": "1"}, {"a": "1"}))
    fine.write(tmp_path)
    assert json.loads((tmp_path / REPORT_JSON).read_text())["ok"] is True
    assert re.search(r"^\s+database\s+skipped", (tmp_path / REPORT_TXT).read_text(), re.M)
    assert ValidationReport().warnings == ["nothing was validated"]
