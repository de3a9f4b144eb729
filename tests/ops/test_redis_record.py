"""The in-freeze Redis pass from a recorded digest set (`record_keys`, `copy_redis_since`) against a real Redis: exact
expiries, every kind of change found from the source alone, the eight cursor ranges covering the keyspace, the
record's file, the fallback signal, and the incremental wiring (resume, rollback record)."""

from __future__ import annotations

import asyncio
import secrets
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from timetodo.ops.adapters import redis as redisops
from timetodo.ops.migrate import incremental


def _fill(src: redis.Redis, n: int) -> None:
    pipe = src.pipeline(transaction=False)
    for i in range(n):
        if i % 3 == 0:
            pipe.set(f"k:{i}", f"v{i}", px=3_600_000 + i)
        else:
            pipe.set(f"k:{i}", f"v{i}")
    pipe.hset("hash", mapping={"a": "1", "b": "2"})
    pipe.rpush("list", "x", "y")
    pipe.set(b"bin:\xff\x00\n", b"\x00\x01")
    pipe.execute()


def _state(client: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key's DUMP payload without its footer and its exact absolute expiry."""
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
        pipe.pexpiretime(key)
    values = pipe.execute()
    return {key: (values[2 * i][:-10], int(values[2 * i + 1])) for i, key in enumerate(keys)}


def _changes(src: redis.Redis, n: int) -> set[bytes]:
    """A change of every kind, spread over the keyspace (so over all eight cursor ranges): the keys touched."""
    touched: set[bytes] = set()
    pipe = src.pipeline(transaction=False)
    for i in range(0, n, 97):
        pipe.set(f"k:{i}", "changed", keepttl=True)  # value only
        touched.add(f"k:{i}".encode())
    for i in range(3, n, 301):
        pipe.pexpire(f"k:{i}", 7_200_000)  # expiry only (on a key that had one, or none)
        touched.add(f"k:{i}".encode())
    for i in range(6, n, 499):
        pipe.persist(f"k:{i}")  # an expiry dropped
        touched.add(f"k:{i}".encode())
    for i in range(1, n, 211):
        pipe.delete(f"k:{i}")
        touched.add(f"k:{i}".encode())
    for i in range(40):
        pipe.set(f"new:{i}", "n", ex=600 if i % 2 else None)
        touched.add(f"new:{i}".encode())
    pipe.pexpire("k:2", 1)  # expires on its own
    pipe.hset("hash", "c", "3")
    pipe.set(b"bin:\xff\x00\n", b"\x02")
    pipe.execute()
    return touched | {b"k:2", b"hash", b"bin:\xff\x00\n"}


def test_copy_keeps_expiries_exact_and_a_record_finds_every_change_from_the_source(
    pair: tuple[str, str, redis.Redis, redis.Redis],
) -> None:
    source_url, target_url, src, dst = pair
    n = 12_000
    _fill(src, n)
    copied = asyncio.run(redisops.copy_redis(source_url, target_url, connections=3, batch=500, flush_target=True))
    assert copied.keys == n + 3
    assert _state(dst) == _state(src)  # expiries to the millisecond (PEXPIRETIME), not PTTL + this clock
    record = asyncio.run(redisops.record_keys(target_url, connections=3, batch=200))
    assert sorted(record.keys) == sorted(dst.keys()) and len(set(record.digests)) == n + 3

    before = _state(dst)
    touched = _changes(src, n)
    since = asyncio.run(redisops.copy_redis_since(source_url, target_url, record, connections=3, batch=150))
    after = _state(src)
    assert _state(dst) == after
    assert since.method == "scan script" and since.scanned >= len(after)
    differed = {key for key in set(before) | set(after) if before.get(key) != after.get(key)}
    moved_or_removed = set(since.moved_keys or []) | set(since.removed_keys or [])
    assert differed <= moved_or_removed <= touched  # all that differed, nothing untouched
    assert since.deleted == len(set(before) - set(after)) > 0 and since.changed > 100, since.to_dict()

    # nothing changed since that record of the target: nothing moves
    again = asyncio.run(redisops.record_keys(target_url, connections=2))
    nothing = asyncio.run(redisops.copy_redis_since(source_url, target_url, again, connections=2, batch=1000))
    assert (nothing.changed, nothing.deleted, nothing.bytes) == (0, 0, 0), nothing.to_dict()


def test_a_change_made_under_a_running_pass_before_its_batch_is_found(
    pair: tuple[str, str, redis.Redis, redis.Redis],
) -> None:
    """The freeze's case: the record is old, writes keep landing while the source is scanned. Every key written
    before the pass reads it must be found (a missed one would leave the target behind: this test fails then)."""
    source_url, target_url, src, dst = pair
    n = 20_000
    _fill(src, n)
    asyncio.run(redisops.copy_redis(source_url, target_url, flush_target=True))
    record = asyncio.run(redisops.record_keys(target_url))
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        client = redis.Redis.from_url(source_url)
        i = 0
        while not stop.is_set():
            key = f"k:{(i * 7919) % n}"
            client.set(key, f"w{i}")
            written.append(key)
            i += 1
        client.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        asyncio.run(redisops.copy_redis_since(source_url, target_url, record, connections=2, batch=100))
    finally:
        stop.set()
        thread.join()
    assert written
    # the writes during the pass: a second pass from the same record (the target only got closer) catches up,
    # and then the target equals the source exactly
    final = asyncio.run(redisops.copy_redis_since(source_url, target_url, record, connections=2, batch=100))
    assert _state(dst) == _state(src), final.to_dict()


def test_keys_the_record_holds_and_scan_never_returned_are_checked_one_by_one(
    pair: tuple[str, str, redis.Redis, redis.Redis],
) -> None:
    """A record can name keys the scan does not meet (gone on the source) — deleted on the target — or keys
    whose recorded digest is stale for a key the scan met changed (copied): both end equal."""
    source_url, target_url, src, dst = pair
    _fill(src, 500)
    asyncio.run(redisops.copy_redis(source_url, target_url, flush_target=True))
    record = asyncio.run(redisops.record_keys(target_url))
    dst.set("only:on-target", "x")  # what the record says the target holds includes it
    extra = asyncio.run(redisops.record_keys(target_url))
    src.delete("k:10", "k:11")
    since = asyncio.run(redisops.copy_redis_since(source_url, target_url, extra, also=[b"k:12"]))
    assert set(since.removed_keys or []) == {b"k:10", b"k:11", b"only:on-target"}
    assert b"k:12" in (since.moved_keys or [])
    assert _state(dst) == _state(src)
    assert len(record.digests) == 503


def test_the_record_file_round_trips_and_a_damaged_one_is_none(tmp_path: Path) -> None:
    record = redisops.KeyRecord([b"a" * 24, b"b" * 24], [b"k:1", b"\x00\xff\n weird"])
    path = tmp_path / "record.bin"
    record.save(path)
    loaded = redisops.KeyRecord.load(path)
    assert loaded is not None and (loaded.digests, loaded.keys) == (record.digests, record.keys)
    path.write_bytes(path.read_bytes()[:-3])
    assert redisops.KeyRecord.load(path) is None
    path.write_bytes(b"something else\n")
    assert redisops.KeyRecord.load(path) is None
    assert redisops.KeyRecord.load(tmp_path / "missing.bin") is None


def test_a_source_that_refuses_scripts_says_so(pair: tuple[str, str, redis.Redis, redis.Redis]) -> None:
    source_url, target_url, src, _ = pair
    password = secrets.token_hex(8)
    src.acl_setuser(
        "ttd-noscript-5", enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all", "-@scripting"]
    )
    parts = urlsplit(source_url)
    reader = urlunsplit(parts._replace(netloc=f"ttd-noscript-5:{password}@{parts.hostname}:{parts.port}"))
    try:
        src.set("a", "1")
        record = redisops.KeyRecord([], [])
        with pytest.raises(redisops.ScanScriptRefused):
            asyncio.run(redisops.copy_redis_since(reader, target_url, record))
    finally:
        src.acl_deluser("ttd-noscript-5")


class _Activity:
    async def __aenter__(self) -> Any:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _ctx(tmp_path: Path, source_url: str, target_url: str) -> Any:
    async def target_redis_url() -> str:
        return target_url

    return SimpleNamespace(
        work_dir=tmp_path,
        secrets=SimpleNamespace(source_redis_url=source_url),
        config=SimpleNamespace(parallel_jobs=1),
        target_redis_url=target_redis_url,
        activity=lambda *a, **k: _Activity(),
    )


def test_copy_keys_pre_pass_freeze_resume_and_the_rollback_record(
    pair: tuple[str, str, redis.Redis, redis.Redis], tmp_path: Path
) -> None:
    """The wiring: the pre-pass records the target; the freeze compares the source alone with it and notes the
    keys it touched; a second in-freeze pass (a resumed run) compares both sides instead (a key the first pass
    copied may have changed back, which the record would not show); the cutover record is the record without the
    touched keys, and a rollback from it brings the target's later writes — and deletions — back to the source."""
    source_url, target_url, src, dst = pair
    _fill(src, 3000)
    asyncio.run(redisops.copy_redis(source_url, target_url, flush_target=True))
    ctx = _ctx(tmp_path, source_url, target_url)
    src.set("k:5", "before the pre-pass")
    pre = asyncio.run(incremental.copy_keys(ctx, "pre-pass", live=True))
    assert pre["changed"] == 1 and pre["recorded"] == 3003
    src.set("k:7", "in the freeze")
    src.set("k:8", "flip")
    frozen = asyncio.run(incremental.copy_keys(ctx, "cutover", live=False))
    assert frozen["method"] == "scan script" and frozen["keys"] == 2, frozen
    assert _state(dst) == _state(src)
    src.set("k:8", "v8")  # back to the recorded value after the first in-freeze pass copied "flip"
    resumed = asyncio.run(incremental.copy_keys(ctx, "cutover", live=False))
    assert resumed["method"] == "both sides" and resumed["changed"] == 1
    assert _state(dst) == _state(src)
    assert incremental.cutover_record(ctx) is None  # two in-freeze passes: the touched keys are not known

    # a clean run: pre-pass, one in-freeze pass, then writes on the target and a rollback from the cutover record
    asyncio.run(incremental.copy_keys(ctx, "pre-pass", live=True))
    src.set("k:20", "in the freeze")
    asyncio.run(incremental.copy_keys(ctx, "cutover", live=False))
    found = incremental.cutover_record(ctx)
    assert found is not None and found[1] == [b"k:20"] and len(found[0].digests) == 3002
    dst.set("k:30", "written on the target")
    dst.delete("k:31", "k:20")
    dst.set("target:new", "1")
    back = asyncio.run(redisops.copy_redis_since(target_url, source_url, found[0], also=found[1]))
    assert set(back.moved_keys or []) == {b"k:30", b"target:new"}
    assert set(back.removed_keys or []) == {b"k:31", b"k:20"}
    assert _state(src) == _state(dst)
