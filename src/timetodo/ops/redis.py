"""Redis adapters: copy every key of one database out (SCAN + pipelined DUMP/PTTL) and back (pipelined RESTORE).

The stream format is one JSON object per line, binary-safe: `{"k": base64 key, "t": ttl ms (0 = none), "v": base64
DUMP payload}`. The TTL is the one remaining when the key was dumped; RESTORE gives it back relative to the restore.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from timetodo.core.logging import mask_secrets

BATCH = 1000


class RedisOpError(RuntimeError):
    """A Redis command failed; the message is safe to show."""


class RedisUnreachable(RedisOpError):
    """The server could not be reached or refused the login."""


@dataclass
class DumpStats:
    keys: int = 0
    skipped: int = 0
    """Keys SCAN returned that were gone (expired or deleted) before DUMP or PTTL reached them."""
    bytes: int = 0


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=60)


def _unreachable(url: str, exc: Exception) -> RedisUnreachable:
    return RedisUnreachable(f"cannot reach Redis at {mask_secrets(url)}: {mask_secrets(str(exc))}")


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
