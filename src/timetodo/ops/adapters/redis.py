"""Redis adapters: copy every key of one database out (SCAN + pipelined DUMP/PTTL) and back (pipelined RESTORE);
copy every key between two servers (`copy_redis`), and afterwards only what changed since (`copy_redis_delta`,
which compares both sides and can record a digest per key; then `copy_redis_changes`, which compares only the
source with those digests — on the server, by a read-only Lua script — and moves what changed). The cheapest
pass: `record_keys` digests every key of a database nobody writes (the held target) on its server, and
`copy_redis_since` later scans only the other side, on its server, eight cursor ranges side by side, with no
argument per key, and moves what the record does not hold — the in-freeze pass (when key tracking cannot name the
changed keys: then `copy_redis_keys` moves just those, see `redis_tracking`) and the rollback.

Between servers, expiries travel as absolute times read with PEXPIRETIME where the reader has it (Redis ≥ 7,
Valkey): the copy's expiry is the source's to the millisecond (PTTL + this machine's clock drifted by the time a
loaded pipeline took: seconds, under load).

The stream format is one JSON object per line, binary-safe: `{"k": base64 key, "t": ttl ms (0 = none), "v": base64
DUMP payload}`. The TTL is the one remaining when the key was dumped; RESTORE gives it back relative to the restore.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis as sync_redis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from timetodo.core.logging import mask_secrets
from timetodo.ops.errors import EXIT_UNREACHABLE, OpsError
from timetodo.ops.sources import allow_list_hint, closed_before_login

BATCH = 1000
_T = TypeVar("_T")


class RedisOpError(OpsError):
    """A Redis command failed; the message is safe to show."""


class RedisUnreachable(RedisOpError):
    """The server could not be reached or refused the login."""

    exit_code = EXIT_UNREACHABLE


@dataclass
class DumpStats:
    keys: int = 0
    skipped: int = 0
    """Keys SCAN returned that were gone (expired or deleted) before DUMP or PTTL reached them."""
    bytes: int = 0


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=60)


def _unreachable(url: str, exc: Exception) -> RedisUnreachable:
    return RedisUnreachable(
        f"cannot reach Redis at {mask_secrets(url)}: {mask_secrets(str(exc))}",
        allow_list_hint(url) if closed_before_login(exc) else "",
    )


_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


def encode_entry(key: bytes, ttl_ms: int, payload: bytes) -> bytes:
    return orjson.dumps({"k": base64.b64encode(key).decode(), "t": ttl_ms, "v": base64.b64encode(payload).decode()})


def decode_entry(line: bytes) -> tuple[bytes, int, bytes]:
    """(key, ttl ms with 0 = no expiry, DUMP payload); ValueError on a malformed line."""
    try:
        obj = orjson.loads(line)
        key, ttl, payload = base64.b64decode(obj["k"], validate=True), int(obj["t"]), base64.b64decode(obj["v"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed Redis entry: {exc}") from None
    if ttl < 0:
        raise ValueError("malformed Redis entry: negative TTL")
    return key, ttl, payload


async def dump_keys(
    url: str,
    write: Callable[[bytes], Any],
    *,
    batch: int = BATCH,
    on_keys: Callable[[int, int | None], None] | None = None,
) -> DumpStats:
    """Write every key of the URL's database as lines through `write`. `on_keys(done, total)` reports progress."""
    client = _client(url)
    stats = DumpStats()
    seen: set[bytes] = set()
    try:
        try:
            total = int(await client.dbsize())
        except _CONNECTION_ERRORS as exc:
            raise _unreachable(url, exc) from None
        cursor = 0
        while True:
            cursor, found = await client.scan(cursor=cursor, count=batch)
            keys = [k if isinstance(k, bytes) else k.encode() for k in found if k not in seen]  # may repeat keys
            seen.update(keys)
            if keys:
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.dump(key)
                    pipe.pttl(key)
                results = await pipe.execute()
                for key, payload, pttl in zip(keys, results[0::2], results[1::2], strict=True):
                    if payload is None or pttl == -2:
                        stats.skipped += 1
                        continue
                    ttl = int(pttl) if pttl > 0 else (1 if pttl == 0 else 0)  # 0 left ≠ no expiry
                    line = encode_entry(key, ttl, payload) + b"\n"
                    write(line)
                    stats.keys += 1
                    stats.bytes += len(line)
                if on_keys is not None:
                    on_keys(stats.keys + stats.skipped, max(total, stats.keys + stats.skipped))
            if cursor == 0:
                break
    except redis_errors.RedisError as exc:
        if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
            raise _unreachable(url, exc) from None
        raise RedisOpError(f"Redis dump failed: {mask_secrets(str(exc))}") from None
    finally:
        await client.aclose()
    return stats


def _batches(lines: Iterable[bytes], size: int) -> Iterator[list[tuple[bytes, int, bytes]]]:
    chunk: list[tuple[bytes, int, bytes]] = []
    for line in lines:
        if not line.strip():
            continue
        chunk.append(decode_entry(line))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def restore_keys(
    url: str,
    lines: Iterable[bytes],
    *,
    batch: int = BATCH,
    on_keys: Callable[[int], None] | None = None,
) -> list[bytes]:
    """RESTORE … REPLACE every entry into the URL's database, pipelined; returns the keys restored."""
    client = _client(url)
    restored: list[bytes] = []
    try:
        for entries in _batches(lines, batch):
            pipe = client.pipeline(transaction=False)
            for key, ttl, payload in entries:
                pipe.restore(key, ttl, payload, replace=True)
            await pipe.execute()
            restored.extend(key for key, _, _ in entries)
            if on_keys is not None:
                on_keys(len(restored))
    except _CONNECTION_ERRORS as exc:
        raise _unreachable(url, exc) from None
    except redis_errors.RedisError as exc:
        raise RedisOpError(f"Redis restore failed: {mask_secrets(str(exc))}") from None
    finally:
        await client.aclose()
    return restored


async def count_present(url: str, keys: Iterable[bytes], *, batch: int = BATCH) -> int:
    """How many of `keys` exist in the URL's database."""
    client = _client(url)
    present = 0
    todo = list(keys)
    try:
        for start in range(0, len(todo), batch):
            present += int(await client.exists(*todo[start : start + batch]))
    except _CONNECTION_ERRORS as exc:
        raise _unreachable(url, exc) from None
    finally:
        await client.aclose()
    return present


async def key_count(url: str) -> int:
    client = _client(url)
    try:
        return int(await client.dbsize())
    except _CONNECTION_ERRORS as exc:
        raise _unreachable(url, exc) from None
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------------------- copying between servers

log = logging.getLogger("timetodo.ops.copy")
Progress = Callable[[int, int | None], None]


class RedisCopy:
    keys: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "skipped": self.skipped, "seconds": round(self.seconds, 3)}


async def copy_redis(
    source_url: str,
    target_url: str,
    *,
    connections: int = 2,
    batch: int = 1000,
    flush_target: bool = False,
    progress: Progress | None = None,
) -> RedisCopy:
    """Every key of the source's database onto the target's: SCAN, then DUMP + PTTL and RESTORE … ABSTTL REPLACE
    in pipelined batches over `connections` connection pairs (threads). Keys gone between SCAN and DUMP are skipped
    and counted; the absolute expiry keeps TTLs exact however long the copy takes."""
    return await _in_thread(
        _copy_redis_sync,
        source_url,
        target_url,
        connections,
        batch,
        flush_target,
        progress,
        refused_hint=RESTORE_HINT_SOURCE,
    )


class _Copier:
    """The synchronous client (with hiredis) in threads: on a busy 2-core host it moves about twice the keys per
    second of the asyncio client, and the sockets' waits overlap across threads. One (source, target) client pair
    per thread; every client is closed at the end."""

    def __init__(self, source_url: str, target_url: str, progress: Progress | None) -> None:
        self.source_url, self.target_url, self.progress = source_url, target_url, progress
        self.result = RedisCopy()
        self.total: int | None = None
        self.lock = threading.Lock()
        self.local = threading.local()
        self.clients: list[sync_redis.Redis] = []
        self.seen: set[bytes] = set()
        self.exact = False
        """PEXPIRETIME on the reading side (Redis ≥ 7, Valkey): expiries are read as the server's absolute time,
        so the copy's is the source's to the millisecond (else PTTL + this machine's clock, a few ms off)."""

    def probe_exact(self, *clients: sync_redis.Redis) -> None:
        """`exact` when every one of `clients` knows PEXPIRETIME."""
        try:
            for client in clients:
                client.pexpiretime("ttd:probe:pexpiretime")
            self.exact = True
        except redis_errors.ResponseError:
            self.exact = False

    def read(self, client: sync_redis.Redis, keys: list[bytes]) -> list[tuple[bytes | None, int]]:
        """Per key (DUMP payload or None when gone, absolute expiry in ms or 0 for none), pipelined."""
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
            if self.exact:
                pipe.pexpiretime(key)  # type: ignore[arg-type]  # bytes keys work (redis-py's stub says str)
            else:
                pipe.pttl(key)
        values = pipe.execute()
        now_ms = int(time.time() * 1000)
        out: list[tuple[bytes | None, int]] = []
        for payload, when in zip(values[0::2], values[1::2], strict=True):
            when = int(when)
            if payload is None or when == -2:
                out.append((None, 0))
            elif self.exact:
                out.append((payload, max(when, 0)))
            else:
                out.append((payload, _expiry(when, now_ms)))
        return out

    @staticmethod
    def restore(pipe: Any, key: bytes, payload: bytes, expiry: int) -> None:
        if expiry > 0:
            pipe.restore(key, expiry, payload, replace=True, absttl=True)
        else:
            pipe.restore(key, 0, payload, replace=True)

    def client(self, url: str, timeout: float = 60) -> sync_redis.Redis:
        client = sync_redis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=timeout)
        with self.lock:
            self.clients.append(client)
        return client

    def pair(self) -> tuple[sync_redis.Redis, sync_redis.Redis]:
        if not hasattr(self.local, "pair"):
            self.local.pair = (self.client(self.source_url), self.client(self.target_url))
        return self.local.pair  # type: ignore[no-any-return]

    def move(self, keys: list[bytes]) -> None:
        src, dst = self.pair()
        out = dst.pipeline(transaction=False)
        moved = skipped = 0
        for key, (payload, expiry) in zip(keys, self.read(src, keys), strict=True):
            if payload is None:
                skipped += 1
            else:
                self.restore(out, key, payload, expiry)
                moved += 1
        if moved:
            out.execute()
        with self.lock:
            self.result.keys += moved
            self.result.skipped += skipped
            if self.progress is not None:
                self.progress(self.result.keys + self.result.skipped, self.total)

    def run(self, connections: int, batch: int, flush_target: bool) -> None:
        scan_client = self.client(self.source_url)
        self.probe_exact(scan_client, self.client(self.target_url))
        self.total = int(scan_client.dbsize())
        if flush_target:
            self.client(self.target_url, timeout=300).flushdb()
        with ThreadPoolExecutor(max_workers=connections) as pool:
            pending: set[Future[None]] = set()
            seen = self.seen
            chunk: list[bytes] = []
            for key in scan_client.scan_iter(count=batch):
                if key in seen:  # SCAN may return a key twice
                    continue
                seen.add(key)
                chunk.append(key)
                if len(chunk) == batch:
                    pending.add(pool.submit(self.move, chunk))
                    chunk = []
                    if len(pending) >= connections * 2:  # bounded memory: wait for the oldest batches
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            future.result()
            if chunk:
                pending.add(pool.submit(self.move, chunk))
            for future in pending:
                future.result()

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _copy_redis_sync(
    source_url: str, target_url: str, connections: int, batch: int, flush_target: bool, progress: Progress | None
) -> RedisCopy:
    copier = _Copier(source_url, target_url, progress)
    copier.result.seconds = _timed_run(copier, lambda: copier.run(connections, batch, flush_target))
    return copier.result


RESTORE_HINT_SOURCE = (
    "the target Redis must be the same engine and at least the source's version (RESTORE of DUMP payloads)"
)
RESTORE_HINT_READER = (
    "the writing Redis must be the same engine and at least the reader's version (RESTORE of DUMP payloads)"
)


async def _in_thread(fn: Callable[..., _T], *args: Any, refused_hint: str = "") -> _T:
    """`fn(*args)` in a thread, its Redis errors as the toolkit's: unreachable (exit code 3) or refused."""
    try:
        return await asyncio.to_thread(fn, *args)
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise RedisUnreachable(f"Redis unreachable: {mask_secrets(str(exc))}", "check the Redis URLs") from None
    except redis_errors.ResponseError as exc:
        raise RedisOpError(f"Redis refused a command: {mask_secrets(str(exc))}", refused_hint) from None


def _timed_run(copier: _Copier, run: Callable[[], None]) -> float:
    """`run()` (a pass of `copier`), the copier's clients closed however it ends: the seconds it took."""
    started = time.monotonic()
    try:
        run()
    finally:
        copier.close()
    return time.monotonic() - started


# ------------------------------------------------------------------------------------- the delta since a first copy

TTL_TOLERANCE_MS = 1000
"""Two expiries closer than this are the same one (the first copy set the target's with ABSTTL, to the millisecond)."""

KeyDigests = dict[bytes, tuple[str, int]]
"""Per key: (the first 16 hex digits of the sha1 of its DUMP payload, its absolute expiry in ms by the source
server's clock, or 0)."""

DIGEST_HEX = 16


def payload_digest(payload: bytes) -> str:
    return hashlib.sha1(payload, usedforsecurity=False).hexdigest()[:DIGEST_HEX]


@dataclass
class RedisDelta:
    """What `copy_redis_delta` found and did: keys compared on the source, keys restored because they were new or
    changed (value or expiry), keys deleted on the target because the source no longer has them."""

    scanned: int = 0
    new: int = 0
    changed: int = 0
    deleted: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0
    method: str = "both sides"
    """How keys were compared: "both sides" (DUMP of each), "script" (source digests on the server against the
    record), "dump" (source DUMPs hashed here against the record)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "keys": self.new + self.changed,
            "scanned": self.scanned,
            "new": self.new,
            "changed": self.changed,
            "deleted": self.deleted,
            "skipped": self.skipped,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


def _expiry(pttl: int, now_ms: int) -> int:
    """Absolute expiry in ms (0: none)."""
    return now_ms + max(int(pttl), 1) if pttl >= 0 else 0


def _same_expiry(a: int, b: int) -> bool:
    return (a == 0) == (b == 0) and abs(a - b) <= TTL_TOLERANCE_MS


class _ComparingCopier(_Copier):
    """What the two comparing passes share: their tally and the deletion of keys the source no longer has."""

    delta: RedisDelta

    def tally(self, keys: int, new: int, changed: int, skipped: int, moved_bytes: int) -> None:
        """Count one batch (under the lock) and report progress."""
        self.delta.scanned += keys
        self.delta.new += new
        self.delta.changed += changed
        self.delta.skipped += skipped
        self.delta.bytes += moved_bytes
        if self.progress is not None:
            self.progress(self.delta.scanned, self.total)

    def remove(self, keys: list[bytes]) -> None:
        """Delete on the target those of `keys` the source does not have."""
        src, dst = self.pair()
        pipe = src.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        gone = [key for key, present in zip(keys, pipe.execute(), strict=True) if not present]
        if gone:
            deleted = int(dst.delete(*gone))
            with self.lock:
                self.delta.deleted += deleted


class _DeltaCopier(_ComparingCopier):
    """A second pass after `copy_redis`: every source key's DUMP and expiry compared with the target's (pipelined,
    `connections` threads), the new and changed ones restored (ABSTTL REPLACE), then the target's keys the source
    no longer has deleted."""

    def __init__(
        self, source_url: str, target_url: str, progress: Progress | None, record: KeyDigests | None = None
    ) -> None:
        super().__init__(source_url, target_url, progress)
        self.delta = RedisDelta()
        self.record = record

    def move(self, keys: list[bytes]) -> None:
        src, dst = self.pair()
        source_ms = _server_ms(src.time()) if self.record is not None and not self.exact else 0
        ours, theirs = self.read(src, keys), self.read(dst, keys)
        out = dst.pipeline(transaction=False)
        new = changed = skipped = moved_bytes = 0
        vanished: list[bytes] = []
        record: KeyDigests | None = {} if self.record is not None else None
        for key, (payload, expiry), (other, other_expiry) in zip(keys, ours, theirs, strict=True):
            if payload is None:
                skipped += 1  # gone on the source meanwhile (expired, deleted): gone on the target too
                vanished.append(key)
                continue
            if record is not None:  # what the target holds after this pass; expiries on the source's clock
                shift = 0 if self.exact or not expiry else source_ms - int(time.time() * 1000)
                record[key] = (payload_digest(payload), expiry + shift if expiry else 0)
            # with PEXPIRETIME both expiries are exact: an expiry a few ms off (an older copy) is corrected
            same = expiry == other_expiry if self.exact else _same_expiry(expiry, other_expiry)
            if other is not None and other == payload and same:
                continue
            if other is None:
                new += 1
            else:
                changed += 1
            moved_bytes += len(payload)
            self.restore(out, key, payload, expiry)
        if new or changed:
            out.execute()
        if vanished:
            self.remove(vanished)
        with self.lock:
            if record is not None and self.record is not None:
                self.record.update(record)
            self.tally(len(keys), new, changed, skipped, moved_bytes)

    def run_delta(self, connections: int, batch: int) -> None:
        self.run(connections, batch, flush_target=False)
        seen = self.seen
        target_scan = self.client(self.target_url)
        with ThreadPoolExecutor(max_workers=connections) as pool:
            futures: list[Future[None]] = []
            chunk: list[bytes] = []
            for key in target_scan.scan_iter(count=batch):
                if key in seen:
                    continue
                chunk.append(key)
                if len(chunk) == batch:
                    futures.append(pool.submit(self.remove, chunk))
                    chunk = []
            if chunk:
                futures.append(pool.submit(self.remove, chunk))
            for future in futures:
                future.result()


def _copy_delta_sync(
    source_url: str,
    target_url: str,
    connections: int,
    batch: int,
    progress: Progress | None,
    record: KeyDigests | None = None,
) -> RedisDelta:
    copier = _DeltaCopier(source_url, target_url, progress, record)
    copier.delta.seconds = _timed_run(copier, lambda: copier.run_delta(connections, batch))
    return copier.delta


async def copy_redis_delta(
    source_url: str,
    target_url: str,
    *,
    connections: int = 2,
    batch: int = 1000,
    progress: Progress | None = None,
    record: KeyDigests | None = None,
) -> RedisDelta:
    """Make the target's database equal to the source's again after a `copy_redis`, moving only the differences:
    keys new or changed on the source (value or expiry) are restored with their absolute expiry, keys the source
    no longer has are deleted on the target. No keyspace notifications needed (managed Redis lacks them): a second
    SCAN compares the DUMP payloads and expiries of both sides, pipelined over `connections` threads. `record`
    (filled): every source key's digest and expiry as this pass saw it — what the target holds afterwards — for a
    later `copy_redis_changes`."""
    return await _in_thread(_copy_delta_sync, source_url, target_url, connections, batch, progress, record)


# ---------------------------------------------------------------- the changes since a recorded pass, source side only

_CHANGES_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local tolerance = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local want = ARGV[2 * i]
  local pttl = redis.call('PTTL', key)
  if pttl == -2 then
    if want ~= '' then out[#out + 1] = i .. ' gone' end
  elseif want == '' then
    out[#out + 1] = i .. ' new'
  else
    local expiry = tonumber(ARGV[2 * i + 1])
    local current = 0
    if pttl >= 0 then current = now + pttl end
    if (expiry == 0) ~= (current == 0) or math.abs(expiry - current) > tolerance
        or string.sub(redis.sha1hex(redis.call('DUMP', key)), 1, DIGEST_HEX) ~= want then
      out[#out + 1] = i .. ' changed'
    end
  end
end
return out
""".replace("DIGEST_HEX", str(DIGEST_HEX))
"""Read-only, one call per SCAN batch: ARGV = the expiry tolerance (ms), then per key its recorded digest ("" when
unknown) and absolute expiry (ms by the server's clock, 0: none). Returns "i new|changed|gone" for the keys that
differ only: the values never leave the server, and a batch that did not change answers an empty list. Expiries
are compared on the server's own clock (TIME), so neither the client's clock nor a slow round trip matters."""


def _server_ms(reply: Any) -> int:
    """TIME's reply as milliseconds."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


class _ChangesCopier(_ComparingCopier):
    """`copy_redis_changes`: the source's keys compared with recorded digests (a Lua script per SCAN batch, or DUMP
    and a local sha1 where scripts are refused), the new and changed ones copied, the vanished ones deleted."""

    def __init__(self, source_url: str, target_url: str, recorded: KeyDigests, progress: Progress | None) -> None:
        super().__init__(source_url, target_url, progress)
        self.recorded = recorded
        self.delta = RedisDelta()
        self.unseen: set[bytes] = set(recorded)
        self.method = "script"
        self.script: Any = None

    def compare(self, keys: list[bytes]) -> list[tuple[bytes, str]]:
        """(key, "new" | "changed" | "gone") for the keys of a batch that differ from the record."""
        src, _ = self.pair()
        wanted = [self.recorded.get(key) for key in keys]
        if self.method == "script":
            args: list[Any] = [TTL_TOLERANCE_MS]
            for w in wanted:
                args += ("", 0) if w is None else w
            try:
                reply = self.script(keys=keys, args=args, client=src)
            except redis_errors.ResponseError as exc:
                if "user_script" in str(exc) or "ERR Error running script" in str(exc):
                    raise
                with self.lock:
                    self.method = "dump"  # NOPERM, scripting disabled: compare here
                log.info("Redis scripts refused: the source's keys are compared here", extra={"error": str(exc)})
                return self.compare(keys)
            out = []
            for item in reply:
                index, what = (item.decode() if isinstance(item, bytes) else str(item)).split(" ")
                out.append((keys[int(index) - 1], what))
            return out
        pipe = src.pipeline(transaction=False)
        pipe.time()
        for key in keys:
            pipe.dump(key)
            pipe.pttl(key)
        values = pipe.execute()
        now_ms = _server_ms(values[0])
        values = values[1:]
        out = []
        for key, want, payload, pttl in zip(keys, wanted, values[0::2], values[1::2], strict=True):
            if payload is None or pttl == -2:
                if want is not None:
                    out.append((key, "gone"))
            elif want is None:
                out.append((key, "new"))
            elif payload_digest(payload) != want[0] or not _same_expiry(_expiry(int(pttl), now_ms), want[1]):
                out.append((key, "changed"))
        return out

    def move(self, keys: list[bytes]) -> None:
        found = self.compare(keys)
        copy = [key for key, what in found if what != "gone"]
        gone = [key for key, what in found if what == "gone"]
        src, dst = self.pair()
        new = sum(1 for _, what in found if what == "new")
        moved_bytes = skipped = 0
        if copy:
            out = dst.pipeline(transaction=False)
            for key, (payload, expiry) in zip(copy, self.read(src, copy), strict=True):
                if payload is None:
                    skipped += 1
                    gone.append(key)
                    continue
                moved_bytes += len(payload)
                self.restore(out, key, payload, expiry)
            out.execute()
        if gone:
            self.remove(gone)
        with self.lock:
            self.unseen.difference_update(keys)
            self.tally(len(keys), new, len(copy) - new, skipped, moved_bytes)

    def run_changes(self, connections: int, batch: int) -> None:
        self.script = self.client(self.source_url).register_script(_CHANGES_SCRIPT)
        self.run(connections, batch, flush_target=False)
        # recorded keys SCAN never returned were gone for part of the scan at least: deleted where the source lacks them
        left = sorted(self.unseen)
        with ThreadPoolExecutor(max_workers=connections) as pool:
            for future in [pool.submit(self.remove, left[i : i + batch]) for i in range(0, len(left), batch)]:
                future.result()


def _copy_changes_sync(
    source_url: str, target_url: str, recorded: KeyDigests, connections: int, batch: int, progress: Progress | None
) -> RedisDelta:
    copier = _ChangesCopier(source_url, target_url, recorded, progress)
    copier.delta.seconds = _timed_run(copier, lambda: copier.run_changes(connections, batch))
    copier.delta.method = copier.method
    return copier.delta


async def copy_redis_changes(
    source_url: str,
    target_url: str,
    recorded: KeyDigests,
    *,
    connections: int = 2,
    batch: int = 1000,
    progress: Progress | None = None,
) -> RedisDelta:
    """After a `copy_redis_delta` that filled `recorded` (the target has held exactly those keys since; nothing else
    writes it): make the target equal to the source again by reading only the source. Every source key's DUMP
    digest and expiry is compared with the record on the server (a read-only Lua script per SCAN batch, pipelined
    over `connections` threads; where EVAL is refused, DUMP + a local sha1), the new and changed keys are copied
    (RESTORE … ABSTTL REPLACE), recorded keys the source no longer has are deleted on the target. Half the reads of
    `copy_redis_delta`, and the values of unchanged keys never leave the server."""
    return await _in_thread(_copy_changes_sync, source_url, target_url, recorded, connections, batch, progress)


def save_digests(path: Any, recorded: KeyDigests) -> None:
    """Write `recorded` atomically (one JSON object; keys as latin-1 text, which maps bytes one to one)."""
    data = {key.decode("latin-1"): [digest, expiry] for key, (digest, expiry) in recorded.items()}
    tmp = path.with_suffix(".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(orjson.dumps(data))
    tmp.replace(path)


def load_digests(path: Any) -> KeyDigests | None:
    """The digests `save_digests` wrote; None when the file is missing or unreadable."""
    try:
        data = orjson.loads(path.read_bytes())
        return {str(key).encode("latin-1"): (str(v[0]), int(v[1])) for key, v in data.items()}
    except (OSError, orjson.JSONDecodeError, AttributeError, TypeError, ValueError, IndexError):
        return None


# ------------------------------------------------------- digests by a server-side SCAN: the cheap in-freeze pass

SCAN_DIGEST_HEX = 24
"""96 bits per key: two keys of a million share a digest with a probability of about 10⁻¹⁷."""
_GONE = b"-" * SCAN_DIGEST_HEX

_SCAN_SCRIPT = """
local found = redis.call('SCAN', ARGV[1], 'COUNT', ARGV[2])
local keys = found[2]
local out = {}
for i, key in ipairs(keys) do
  local payload = redis.call('DUMP', key)
  if payload then
    out[i] = string.sub(redis.sha1hex(key .. '\\0' .. string.sub(payload, 1, -11) .. '\\0'
      .. redis.call('PEXPIRETIME', key)), 1, HEX)
  else
    out[i] = GONE
  end
end
return {found[1], keys, table.concat(out)}
""".replace("HEX", str(SCAN_DIGEST_HEX)).replace("GONE", repr(_GONE.decode()))
"""Read-only, no per-key argument: ARGV = a SCAN cursor and COUNT. Does that SCAN step on the server and answers
{next cursor, the keys, one string of a fixed-width digest per key}: the sha1 of the key's name, its DUMP payload
without the 10-byte footer (RDB version + CRC, so two servers of different minor versions agree) and its absolute
expiry (PEXPIRETIME, exact to the millisecond, -1 for none: Redis ≥ 7.0 / Valkey). A key gone between SCAN and DUMP
answers dashes. The client compares the digests with a recorded set in C (set membership): unchanged keys cost no
Python work beyond slicing."""


class ScanScriptRefused(RedisOpError):
    """The server refused the digest script (scripting not allowed for this user, or no PEXPIRETIME: Redis < 7)."""


@dataclass
class KeyRecord:
    """Every key of one Redis database and its digest (`_SCAN_SCRIPT`), read while nothing else wrote it: parallel
    lists, `digests[i]` belongs to `keys[i]`. The set of digests is what a later pass compares with."""

    digests: list[bytes]
    keys: list[bytes]
    _set: set[bytes] | None = None

    def digest_set(self) -> set[bytes]:
        if self._set is None:
            self._set = set(self.digests)
        return self._set

    def keys_of(self, digests: set[bytes]) -> list[bytes]:
        return [key for digest, key in zip(self.digests, self.keys, strict=True) if digest in digests]

    def save(self, path: Any) -> None:
        """Atomically, binary: a header line (count), the digests back to back, then each key length-prefixed."""
        tmp = path.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as out:
            out.write(f"ttd-redis-record 1 {len(self.digests)}\n".encode())
            out.write(b"".join(self.digests))
            out.write(b"".join(len(key).to_bytes(4, "big") + key for key in self.keys))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Any) -> KeyRecord | None:
        """What `save` wrote; None when the file is missing, truncated or not one."""
        try:
            data = path.read_bytes()
            header, _, rest = data.partition(b"\n")
            magic, version, count_text = header.split(b" ")
            count = int(count_text)
            if magic != b"ttd-redis-record" or version != b"1":
                return None
            width = SCAN_DIGEST_HEX
            digests = [rest[i : i + width] for i in range(0, count * width, width)]
            keys: list[bytes] = []
            at = count * width
            for _ in range(count):
                size = int.from_bytes(rest[at : at + 4], "big")
                keys.append(rest[at + 4 : at + 4 + size])
                at += 4 + size
            if len(digests) != count or len(keys) != count or at != len(rest) or any(len(d) != width for d in digests):
                return None
            return cls(digests, keys)
        except (OSError, ValueError):
            return None


_RECORDS: dict[str, KeyRecord] = {}
"""Records this process made or loaded, by file path: the in-freeze pass then skips reading the file."""


def save_record(path: Any, record: KeyRecord) -> None:
    record.save(path)
    _RECORDS[str(path)] = record


def forget_record(path: Any) -> None:
    _RECORDS.pop(str(path), None)


def load_record(path: Any) -> KeyRecord | None:
    found = _RECORDS.get(str(path))
    if found is None and (found := KeyRecord.load(path)) is not None:
        _RECORDS[str(path)] = found
    return found


PARTITIONS = 8
"""SCAN's cursor visits the hash table's buckets in reverse-binary order, so the cursors whose low three bits are
j (read backwards) start the j-th eighth of every full iteration, whatever the table's size: eight independent
ranges, run side by side over the connections, ending when the cursor leaves its range (or wraps to 0). A step
that crosses into the next range returns some of its keys twice (harmless: a digest is compared, a key copied
again); a database of fewer than `PARTITIONS * 4` batches is one range (a step there would cross several)."""


def _reverse_bits(value: int, bits: int) -> int:
    return int(format(value, f"0{bits}b")[::-1], 2)


_PARTITION_BITS = PARTITIONS.bit_length() - 1


class _DigestScanner:
    """Runs `_SCAN_SCRIPT` over the PARTITIONS cursor ranges on `connections` threads, each batch handed to
    `on_batch(keys, digests)` (from the thread that read it)."""

    def __init__(self, url: str, connections: int, batch: int) -> None:
        self.url, self.connections, self.batch = url, connections, batch
        self.local = threading.local()
        self.lock = threading.Lock()
        self.clients: list[sync_redis.Redis] = []
        self.script: Any = None

    def client(self) -> sync_redis.Redis:
        if not hasattr(self.local, "client"):
            client = sync_redis.Redis.from_url(self.url, socket_connect_timeout=10, socket_timeout=60)
            with self.lock:
                self.clients.append(client)
            self.local.client = client
        return self.local.client  # type: ignore[no-any-return]

    def partition(self, j: int, bits: int, on_batch: Callable[[list[bytes], list[bytes]], None]) -> None:
        start = _reverse_bits(j, bits) if bits else 0
        mask = (1 << bits) - 1
        cursor = start
        client = self.client()
        while True:
            try:
                next_cursor, keys, blob = self.script(args=[cursor, self.batch], client=client)
            except redis_errors.NoScriptError:
                raise
            except redis_errors.ResponseError as exc:
                raise ScanScriptRefused(f"the digest script was refused: {mask_secrets(str(exc))}") from None
            width = SCAN_DIGEST_HEX
            on_batch(keys, [blob[i : i + width] for i in range(0, len(blob), width)])
            cursor = int(next_cursor)
            if cursor == 0 or (cursor & mask) != start:
                return

    def run(self, on_batch: Callable[[list[bytes], list[bytes]], None]) -> None:
        first = self.client()
        try:
            self.script = first.register_script(_SCAN_SCRIPT)
        except redis_errors.ResponseError as exc:
            raise ScanScriptRefused(f"the digest script was refused: {mask_secrets(str(exc))}") from None
        try:
            with ThreadPoolExecutor(max_workers=self.connections) as pool:
                bits = _PARTITION_BITS if int(first.dbsize()) > PARTITIONS * 4 * self.batch else 0
                for future in [pool.submit(self.partition, j, bits, on_batch) for j in range(1 << bits)]:
                    future.result()
        finally:
            for client in self.clients:
                client.close()


def _scan_record_sync(url: str, connections: int, batch: int) -> KeyRecord:
    digests: list[bytes] = []
    keys: list[bytes] = []
    seen: set[bytes] = set()
    lock = threading.Lock()

    def on_batch(found: list[bytes], found_digests: list[bytes]) -> None:
        with lock:
            for key, digest in zip(found, found_digests, strict=True):
                if digest != _GONE and key not in seen:  # SCAN may return a key twice
                    seen.add(key)
                    keys.append(key)
                    digests.append(digest)

    _DigestScanner(url, connections, batch).run(on_batch)
    return KeyRecord(digests, keys)


async def record_keys(url: str, *, connections: int = 2, batch: int = 1000) -> KeyRecord:
    """Every key's digest (`_SCAN_SCRIPT`) of the URL's database, read on the server. Meant for a database nothing
    else writes meanwhile (the held target after a copy): the record then says exactly what it holds."""
    try:
        return await asyncio.to_thread(_scan_record_sync, url, connections, batch)
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise _unreachable(url, exc) from None
    except redis_errors.ResponseError as exc:
        raise RedisOpError(f"Redis refused a command: {mask_secrets(str(exc))}") from None


@dataclass
class RecordedChanges(RedisDelta):
    """`copy_redis_since`'s tally: `changed` counts the keys restored on the writer (new or changed: the record does
    not say which), `deleted` those the reader lacked; `moved_keys` and `removed_keys` name them."""

    moved_keys: list[bytes] | None = None
    removed_keys: list[bytes] | None = None


class _NamedCopier(_Copier):
    """Makes named keys on the writer what they are on the reader now, and tallies which were restored or deleted
    (a key met more than once counts once, as it ended)."""

    def __init__(self, reader: str, writer: str, progress: Progress | None, method: str) -> None:
        super().__init__(reader, writer, progress)
        self.moved: set[bytes] = set()
        self.removed: set[bytes] = set()
        self.delta = RecordedChanges(method=method)

    def sync_keys(self, keys: list[bytes]) -> tuple[int, int]:
        """Make each of `keys` on the writer what it is on the reader now (RESTORE … ABSTTL REPLACE, or DEL when
        the reader has none): (restored, deleted)."""
        src, dst = self.pair()
        out = dst.pipeline(transaction=False)
        moved: list[bytes] = []
        gone: list[bytes] = []
        size = 0
        for key, (payload, expiry) in zip(keys, self.read(src, keys), strict=True):
            if payload is None:
                gone.append(key)
            else:
                moved.append(key)
                size += len(payload)
                self.restore(out, key, payload, expiry)
        if moved:
            out.execute()
        deleted = int(dst.delete(*gone)) if gone else 0
        with self.lock:
            self.delta.bytes += size
            self.moved.update(moved)
            self.moved.difference_update(gone)
            self.removed.update(gone)
            self.removed.difference_update(moved)
        return len(moved), deleted

    def sync_all(self, keys: list[bytes], connections: int, batch: int) -> None:
        """`sync_keys` over `keys` in batches on `connections` threads."""
        batches = [keys[start : start + batch] for start in range(0, len(keys), batch)]
        if len(batches) <= 1:
            for one in batches:
                self.sync_keys(one)
        else:
            with ThreadPoolExecutor(max_workers=connections) as pool:
                for future in [pool.submit(self.sync_keys, one) for one in batches]:
                    future.result()

    def finish(self) -> None:
        self.delta.moved_keys, self.delta.removed_keys = sorted(self.moved), sorted(self.removed)
        self.delta.changed, self.delta.deleted = len(self.moved), len(self.removed)


class _SinceCopier(_NamedCopier):
    """`copy_redis_since`: the reader's digests by `_DigestScanner`; the keys whose digest the record lacks copied,
    the recorded keys not seen deleted (or copied, when the reader has them after all)."""

    def __init__(
        self, reader: str, writer: str, record: KeyRecord, progress: Progress | None, also: Iterable[bytes] = ()
    ) -> None:
        super().__init__(reader, writer, progress, "scan script")
        self.record = record
        self.also = list(also)
        self.known = record.digest_set()
        self.seen: set[bytes] = set()

    def on_batch(self, keys: list[bytes], digests: list[bytes]) -> None:
        known = self.known
        odd = [i for i, digest in enumerate(digests) if digest not in known]
        with self.lock:
            self.seen.update(digests)
            self.delta.scanned += len(keys)
            if self.progress is not None:
                self.progress(self.delta.scanned, self.total)
        if odd:
            self.sync_keys([keys[i] for i in odd])

    def run_since(self, connections: int, batch: int) -> None:
        self.total = len(self.record.digests)
        self.probe_exact(self.client(self.source_url))
        _DigestScanner(self.source_url, connections, batch).run(self.on_batch)
        # recorded digests no pass saw: the key changed (then seen under its new digest and copied already: copying
        # again is harmless), was deleted or expired, or was gone for part of the scan: made equal to the reader now
        missing = self.known - self.seen
        left = self.record.keys_of(missing) if missing else []
        left += self.also
        for start in range(0, len(left), batch):
            self.sync_keys(left[start : start + batch])
        # a key met more than once (a step crossing ranges, a key changing again) is counted once, as it ended
        self.finish()


def _copy_since_sync(
    reader: str,
    writer: str,
    record: KeyRecord,
    connections: int,
    batch: int,
    progress: Progress | None,
    also: Iterable[bytes],
) -> RecordedChanges:
    copier = _SinceCopier(reader, writer, record, progress, also)
    copier.delta.seconds = _timed_run(copier, lambda: copier.run_since(connections, batch))
    return copier.delta


async def copy_redis_since(
    reader_url: str,
    writer_url: str,
    record: KeyRecord,
    *,
    connections: int = 2,
    batch: int = 1000,
    progress: Progress | None = None,
    also: Iterable[bytes] = (),
) -> RecordedChanges:
    """Make the writer's database equal to the reader's, given `record`: what the writer holds (a `record_keys` of
    it, or of the reader when the two were equal). Only the reader is scanned, on its server (`_SCAN_SCRIPT`, the
    eight cursor ranges over `connections` threads, no argument per key); every key whose digest the record lacks
    — new, changed in value or expiry — is copied (RESTORE … ABSTTL REPLACE), every recorded digest the scan did not
    meet is looked up by its key and made equal (copied, or deleted on the writer when the reader lacks it: deleted
    or expired). Nothing is missed: a key present for the whole scan is returned by SCAN with its current digest,
    which either is in the record (the writer holds that value and expiry) or is copied; a recorded key not met is
    checked one by one, and so is every key of `also`. `ScanScriptRefused` when the reader refuses the script (the
    caller falls back)."""
    return await _in_thread(
        _copy_since_sync,
        reader_url,
        writer_url,
        record,
        connections,
        batch,
        progress,
        also,
        refused_hint=RESTORE_HINT_READER,
    )


def _copy_keys_sync(
    reader: str, writer: str, keys: list[bytes], connections: int, batch: int, method: str
) -> RecordedChanges:
    copier = _NamedCopier(reader, writer, None, method)

    def run() -> None:
        copier.probe_exact(copier.client(reader))
        copier.sync_all(keys, connections, batch)
        copier.finish()

    copier.delta.seconds = _timed_run(copier, run)
    copier.delta.scanned = len(keys)
    return copier.delta


async def copy_redis_keys(
    reader_url: str,
    writer_url: str,
    keys: Iterable[bytes],
    *,
    connections: int = 2,
    batch: int = 1000,
    method: str = "named keys",
) -> RecordedChanges:
    """Make exactly `keys` on the writer what they are on the reader now: each restored with its absolute expiry
    (RESTORE … ABSTTL REPLACE) or deleted on the writer when the reader has none — for a caller that knows which
    keys can differ (`redis_tracking.KeyWatch`). Nothing else is read."""
    return await _in_thread(_copy_keys_sync, reader_url, writer_url, sorted(set(keys)), connections, batch, method)


async def redis_version(url: str) -> tuple[str, str]:
    """(engine, version) from INFO server, e.g. ("redis", "7.0.15") or ("valkey", "8.0.1")."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=10)
    try:
        info = await client.info("server")
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise _unreachable(url, exc) from None
    finally:
        await client.aclose()
    if "valkey_version" in info:
        return "valkey", str(info["valkey_version"])
    return "redis", str(info.get("redis_version", "0"))


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def image_for(engine: str, version: str) -> str:
    """The compose target's Redis image for a source of this engine and version: the same engine at the same major
    (its tag follows the newest minor, which reads every payload of that major); Redis older than 7 gets
    `redis:7-alpine`, which reads them too. Valkey 8 (a new Render Key Value) → `valkey/valkey:8-alpine`."""
    numbers = version_tuple(version)
    major = numbers[0] if numbers else 7
    if engine == "valkey":
        return f"valkey/valkey:{major}-alpine"
    return f"redis:{max(major, 7)}-alpine"


def image_version(image: str) -> tuple[str, str] | None:
    """(engine, version) an image reference promises, the tag's missing parts taken as the newest:
    `valkey/valkey:8-alpine` → ("valkey", "8.99"), `redis:7.2` → ("redis", "7.2.99"); None when the name is neither
    engine or the tag names no version (`latest`, a digest)."""
    last = image.rsplit("/", 1)[-1]
    name, _, tag = last.partition(":")
    engine = "valkey" if "valkey" in name else "redis" if "redis" in name else None
    numbers = re.match(r"(\d+)(?:\.(\d+))?", tag.split("@", 1)[0])
    if engine is None or numbers is None:
        return None
    major, minor = numbers.group(1), numbers.group(2)
    return engine, f"{major}.{minor}.99" if minor is not None else f"{major}.99"


def restore_compatible(source_engine: str, source_version: str, target_engine: str, target_version: str) -> bool:
    """Can the target RESTORE the source's DUMP payloads? A payload carries its RDB version, which only an equal or
    newer server reads: same engine needs major.minor ≥ the source's. Valkey forked Redis 7.2 (both report their
    Redis-compatible version in INFO): across the two, payloads of Redis ≤ 7.2 are fine, later ones (RDB 12+) not."""
    source, target = version_tuple(source_version)[:2], version_tuple(target_version)[:2]
    if target < source:
        return False
    if source_engine == target_engine:
        return True
    return {source_engine, target_engine} == {"redis", "valkey"} and source <= (7, 2)
