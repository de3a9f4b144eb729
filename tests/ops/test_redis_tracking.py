"""`redis_tracking.KeyWatch` against a real Redis: every kind of write is reported (and nothing untouched), every
acknowledged write of concurrent writers is in the set once `changed` returns, and each way a watch can miss a change
(a flush, SWAPDB, a reset of the statistics, its connections killed, too many changes) ends in `WatchLost` — never in
a set that lacks a key. Then the in-freeze wiring (`incremental.copy_keys`): the freeze copies only the keys the
watch reported, under a writer that runs through the pre-pass, and falls back to the scan when the watch is lost."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.ops.conftest import redis_db as _db
from tests.ops.test_redis_record import _ctx, _fill, _state
from tests.support import Services
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters.redis_tracking import KeyWatch, WatchLost, WatchRefused
from timetodo.ops.migrate import incremental


@pytest.fixture
def src(services: Services) -> Iterator[tuple[str, redis.Redis]]:
    url = _db(services, 7)
    client = redis.Redis.from_url(url)
    client.flushdb()  # before any watch starts (a flush during one loses it)
    try:
        yield url, client
    finally:
        client.flushdb()
        client.close()


def test_every_kind_of_write_is_reported_and_nothing_untouched(
    src: tuple[str, redis.Redis], services: Services
) -> None:
    url, r = src
    other = redis.Redis.from_url(_db(services, 8))
    r.set("counter", 1)
    r.set("untouched", 1)
    r.set("expires", 1, px=150)
    r.set("lazy", 1, px=100)
    r.hset("hash", "f", "v")

    async def scenario() -> set[bytes]:
        watch = await KeyWatch.start(url)
        try:
            r.set("plain", 1)
            r.incr("counter")
            r.rename("hash", "renamed")  # both names
            r.copy("plain", "copied")
            other.set("elsewhere", 1)
            other.move("elsewhere", 7)
            r.eval("redis.call('SET', KEYS[1], 'x')", 1, "by-script")
            pipe = r.pipeline(transaction=True)
            pipe.lpush("in-multi", 1)
            pipe.sadd("set", 1)
            pipe.execute()
            r.sunionstore("union", ["set"])
            r.xadd("stream", {"a": 1})
            r.setrange("ranged", 0, "abc")
            r.pexpire("plain", 100_000)
            r.restore("restored", 0, r.dump("counter"), replace=True)
            r.expire("absent", 10)  # no such key: nothing changes
            r.get("untouched")  # a read
            await asyncio.sleep(0.4)  # "expires" goes by the server's active expiry
            r.get("lazy")  # "lazy" (if not expired actively already) on access
            return await watch.changed()
        finally:
            await watch.close()

    found = asyncio.run(scenario())
    other.close()
    wanted = {b"plain", b"counter", b"hash", b"renamed", b"copied", b"elsewhere", b"by-script", b"in-multi"}
    wanted |= {b"set", b"union", b"stream", b"ranged", b"restored", b"expires", b"lazy"}
    assert found == wanted


def test_a_watch_idle_for_longer_than_the_socket_timeout_goes_on(src: tuple[str, redis.Redis]) -> None:
    url, r = src

    async def scenario() -> set[bytes]:
        watch = await KeyWatch.start(url, socket_timeout=0.2)
        try:
            await asyncio.sleep(0.6)  # no write at all for a while (a pre-pass over a quiet source)
            r.set("late", 1)
            return await watch.changed()
        finally:
            await watch.close()

    assert asyncio.run(scenario()) == {b"late"}


def test_every_acknowledged_write_of_concurrent_writers_is_reported(src: tuple[str, redis.Redis]) -> None:
    url, _ = src
    written: list[set[bytes]] = [set() for _ in range(4)]

    def writer(index: int, stop: threading.Event) -> None:
        client = redis.Redis.from_url(url)
        n = 0
        while not stop.is_set() and n < 20_000:
            key = f"w{index}:{n}".encode()
            client.set(key, n)
            written[index].add(key)  # acknowledged
            n += 1
        client.close()

    async def scenario() -> set[bytes]:
        watch = await KeyWatch.start(url)
        read = watch.subscriber.read_response
        stop = threading.Event()
        lagged = []

        async def lagging_read(*args: object, **kwargs: object) -> object:
            reply = await read(*args, **kwargs)
            if stop.is_set() and not lagged:  # the subscriber's link lags just as the writers stop
                lagged.append(True)
                await asyncio.sleep(0.5)
            return reply

        watch.subscriber.read_response = lagging_read
        threads = [threading.Thread(target=writer, args=(i, stop)) for i in range(4)]
        for thread in threads:
            thread.start()
        await asyncio.sleep(0.8)
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        try:
            return await watch.changed()  # right after the last acknowledgement
        finally:
            await watch.close()

    found = asyncio.run(scenario())
    every = set().union(*written)
    assert len(every) > 1000 and every == found


def _flush(r: redis.Redis, services: Services) -> None:
    redis.Redis.from_url(_db(services, 9)).flushdb()  # another database's flush: names do not say which


def _swapdb(r: redis.Redis, services: Services) -> None:
    r.swapdb(9, 10)


def _resetstat(r: redis.Redis, services: Services) -> None:
    r.config_resetstat()


@pytest.mark.parametrize(
    ("what", "reason"),
    [
        (_flush, "flushed"),
        (_swapdb, "SWAPDB"),
        (_resetstat, "reset"),
        ("subscriber", "connection failed"),
        ("tracker killed", "checks failed"),
        ("tracking off", "no longer on"),
        ("limit", "more than 50 keys"),
        ("stopped", "stopped"),
    ],
)
def test_a_watch_that_cannot_prove_it_saw_every_change_is_lost(
    src: tuple[str, redis.Redis], services: Services, what: object, reason: str
) -> None:
    url, r = src

    async def scenario() -> None:
        watch = await KeyWatch.start(url, limit=50)
        try:
            r.set("before", 1)
            if callable(what):
                what(r, services)
            elif what == "subscriber":
                r.client_kill_filter(_id=watch.subscriber_id)
            elif what == "tracker killed":
                tracker_id = int(await watch._command(watch.tracker, "CLIENT", "ID"))
                r.client_kill_filter(_id=tracker_id)
            elif what == "tracking off":  # as a reconnected tracking client would be
                await watch._command(watch.tracker, "CLIENT", "TRACKING", "off")
            elif what == "limit":
                r.mset({f"many:{i}": i for i in range(60)})
            elif what == "stopped":
                assert watch.reader is not None
                watch.reader.cancel()
            await asyncio.sleep(0.05)
            with pytest.raises(WatchLost, match=reason):
                await watch.changed()
        finally:
            await watch.close()

    asyncio.run(scenario())


def test_a_user_without_the_client_command_is_refused(src: tuple[str, redis.Redis]) -> None:
    url, r = src
    user, password = f"ttd-notrack-{secrets.token_hex(4)}", secrets.token_hex(12)
    r.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"], commands=["+@all", "-client"]
    )
    try:
        parts = urlsplit(url)
        limited = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))
        with pytest.raises(WatchRefused, match="refused key tracking"):
            asyncio.run(KeyWatch.start(limited))
    finally:
        r.acl_deluser(user)


# ---------------------------------------------------------------------------------------- the in-freeze wiring


def test_the_freeze_copies_only_what_tracking_reported_under_a_writer_through_the_pre_pass(
    pair: tuple[str, str, redis.Redis, redis.Redis], tmp_path: Path
) -> None:
    source_url, target_url, src_client, dst = pair
    _fill(src_client, 20_000)
    asyncio.run(redisops.copy_redis(source_url, target_url, flush_target=True))
    ctx = _ctx(tmp_path, source_url, target_url)
    acknowledged: set[bytes] = set()

    def writer(stop: threading.Event) -> None:
        client = redis.Redis.from_url(source_url)
        i = 0
        while not stop.is_set() and i < 50_000:
            key = f"k:{(i * 7919) % 20_000}".encode()
            if i % 5 == 0:
                client.delete(key)
            else:
                client.set(key, f"w{i}", keepttl=True)
            acknowledged.add(key)
            i += 1
        client.close()

    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        stop = threading.Event()
        thread = threading.Thread(target=writer, args=(stop,))
        thread.start()  # writes before, during and after the pre-pass: the freeze starts when it stops
        try:
            pre = await incremental.copy_keys(ctx, "pre-pass", live=True)
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)
        frozen = await incremental.copy_keys(ctx, "cutover", live=False)
        return pre, frozen

    pre, frozen = asyncio.run(scenario())
    assert pre["tracking"] is True
    assert frozen["method"] == "key tracking", frozen
    assert _state(dst) == _state(src_client)
    found = incremental.cutover_record(ctx)
    assert found is not None and set(found[1]) <= acknowledged  # only written keys were touched
    assert 0 < int(str(frozen["scanned"])) <= len(acknowledged) < 20_000


def test_a_lost_watch_falls_back_to_the_scan_and_says_why(
    pair: tuple[str, str, redis.Redis, redis.Redis], tmp_path: Path
) -> None:
    source_url, target_url, src_client, dst = pair
    _fill(src_client, 2000)
    asyncio.run(redisops.copy_redis(source_url, target_url, flush_target=True))
    ctx = _ctx(tmp_path, source_url, target_url)

    async def scenario() -> dict[str, object]:
        await incremental.copy_keys(ctx, "pre-pass", live=True)
        src_client.set("k:3", "changed")
        src_client.client_kill_filter(_id=incremental._WATCHES[str(tmp_path)].subscriber_id)
        src_client.set("k:4", "changed after the watch broke")
        return await incremental.copy_keys(ctx, "cutover", live=False)

    frozen = asyncio.run(scenario())
    assert frozen["method"] == "scan script" and "connection failed" in str(frozen["tracking_lost"]), frozen
    assert frozen["keys"] == 2
    assert _state(dst) == _state(src_client)
