"""`compare_redis`: SCAN-based, in batches (memory bounded by the batch, not the key count): every source key on the
target with the same type, value and TTL within a tolerance; keys only on the target; keys that expire during the
run are counted, not reported as errors. Values are compared by a read-only Lua script that runs the type-specific
reads and hashes on the server (one reply per batch), else DEBUG DIGEST-VALUE, else pipelined GET / HGETALL /
LRANGE / SMEMBERS / ZRANGE / XRANGE hashed here — whichever both servers allow.

Keys the target writes itself once it serves (`TARGET_OWN_KEYS`: the Telegram bot's update claims and send-limiter
slots, short-lived de-duplication state rather than data) are not errors when only the target has them: they are
counted in `target_own_keys`. The app's rate-limit counters (`HOST_COUNTERS`) are each host's own traffic, not data:
they are counted in `host_counters` and never compared (a login on the frozen source after the final copy — a
client's during the freeze, a resumed migration run's own — changes the source's counters only).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from timetodo.core.logging import mask_secrets
from timetodo.ops.migrate.validate.common import MAX_NAMED, more

TARGET_OWN_KEYS = re.compile(rb"^tg:\d+:(?:update|relay|rate):")
HOST_COUNTERS = re.compile(rb"^rl:")
"""`rl:login:ip:…`, `rl:login:acct:…`, `rl:register:ip:…` (timetodo.auth.service): per-host rate-limit windows."""
"""`tg:<bot id>:update:<id>` / `:relay:<id>` (see timetodo.telegram.service.claim_update) and `:rate:…` (the
limiter): after the switch the target's bot claims the updates Telegram delivers to it."""


@dataclass
class _KeyState:
    type: str
    pttl: int
    digest: bytes | None


@dataclass
class RedisComparison:
    source: str
    target: str
    method: str = "reads"
    """"digest" (DEBUG DIGEST-VALUE), "script" (Lua hashing on the server) or "reads" (reads hashed here)."""
    ttl_tolerance_ms: int = 5000
    source_keys: int = 0
    """DBSIZE of the source when the comparison started."""
    target_keys: int = 0
    compared: int = 0
    """Source keys found on the target and compared (type, value, TTL)."""
    target_scanned: int = 0
    missing_on_target: int = 0
    extra_on_target: int = 0
    type_differs: int = 0
    value_differs: int = 0
    ttl_differs: int = 0
    expired_during_run: int = 0
    """Keys that expired (or were deleted) while being compared: counted, never errors."""
    target_own_keys: int = 0
    """Keys only on the target that the target wrote itself (`TARGET_OWN_KEYS`): counted, never errors."""
    host_counters: int = 0
    """Rate-limit counters (`HOST_COUNTERS`) seen on either side: counted, never compared."""
    sample: int | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    _named: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    def problem(self, kind: str, message: str) -> None:
        """Record an error of `kind`, naming at most MAX_NAMED of them (the rest are summarised at the end)."""
        self._named[kind] = self._named.get(kind, 0) + 1
        if self._named[kind] <= MAX_NAMED:
            self.errors.append(message)

    def finish(self) -> None:
        for kind, count in self._named.items():
            if count > MAX_NAMED:
                self.errors.append(more(count - MAX_NAMED, f"keys: {kind}"))
        self._named.clear()

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "target": self.target,
            "method": self.method,
            "ttl_tolerance_ms": self.ttl_tolerance_ms,
            "source_keys": self.source_keys,
            "target_keys": self.target_keys,
            "compared": self.compared,
            "target_scanned": self.target_scanned,
            "missing_on_target": self.missing_on_target,
            "extra_on_target": self.extra_on_target,
            "type_differs": self.type_differs,
            "value_differs": self.value_differs,
            "ttl_differs": self.ttl_differs,
            "expired_during_run": self.expired_during_run,
            "sample": self.sample,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "elapsed": round(self.elapsed, 3),
        }


def _show_redis_key(key: bytes) -> str:
    return repr(key.decode("utf-8", "backslashreplace"))


def _show_ttl(pttl: int) -> str:
    if pttl == -1:
        return "no expiry"
    return f"{pttl / 1000:.1f} s"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list | tuple) and value and not isinstance(value[0], list | tuple):
        return list(zip(value[0::2], value[1::2], strict=True))
    return [tuple(item) for item in value or []]


def _canonical(value: Any) -> bytes:
    """An unambiguous byte form of a decoded reply (length-prefixed), for hashing."""
    if value is None:
        return b"n"
    if isinstance(value, bytes):
        return b"b%d:" % len(value) + value
    if isinstance(value, str):
        return _canonical(value.encode())
    if isinstance(value, bool | int):
        return b"i%d;" % int(value)
    if isinstance(value, float):
        return b"f" + repr(value).encode() + b";"
    if isinstance(value, list | tuple):
        return b"l%d:" % len(value) + b"".join(_canonical(item) for item in value)
    raise TypeError(f"unexpected Redis reply type {type(value).__name__}")


def _value_digest(type_: str, reply: Any) -> bytes:
    """sha256 of a value read by `_queue_read`, normalised so that unordered types compare by content."""
    if type_ == "hash":
        value: Any = sorted(_pairs(reply))
    elif type_ == "set":
        value = sorted(reply or ())
    elif type_ == "zset":
        value = [(member, float(score)) for member, score in _pairs(reply)]
    elif type_ == "stream":
        value = [(entry_id, _pairs(fields)) for entry_id, fields in reply or []]
    elif type_ in ("string", "list"):
        value = reply
    else:  # module types: the DUMP payload without its trailer (RDB version + CRC64)
        value = reply[:-10] if isinstance(reply, bytes) else reply
    return hashlib.sha256(type_.encode() + b"\0" + _canonical(value)).digest()


def _queue_read(pipe: Any, type_: str, key: bytes) -> None:
    if type_ == "string":
        pipe.get(key)
    elif type_ == "hash":
        pipe.hgetall(key)
    elif type_ == "list":
        pipe.lrange(key, 0, -1)
    elif type_ == "set":
        pipe.smembers(key)
    elif type_ == "zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif type_ == "stream":
        pipe.xrange(key, "-", "+")
    else:
        pipe.dump(key)


async def _read_states(
    client: aioredis.Redis, keys: Sequence[bytes], types: Sequence[str] | None
) -> tuple[list[_KeyState], float]:
    """TYPE, PTTL and a value digest of `keys`, atomically (MULTI/EXEC), and the monotonic time of the read.

    With `types` (from the source), the value is read with the command for that type and hashed here; without,
    DEBUG DIGEST-VALUE gives the server's digest.
    """
    pipe = client.pipeline(transaction=True)
    for i, key in enumerate(keys):
        pipe.type(key)
        pipe.pttl(key)
        if types is not None and types[i] != "none":
            _queue_read(pipe, types[i], key)
    if types is None and keys:
        pipe.execute_command("DEBUG", "DIGEST-VALUE", *keys)
    before = time.monotonic()
    replies = await pipe.execute(raise_on_error=False)
    at = (before + time.monotonic()) / 2
    for reply in replies:
        if isinstance(reply, redis_errors.ConnectionError | redis_errors.TimeoutError):
            raise reply
    states: list[_KeyState] = []
    pos = 0
    digests = replies[-1] if types is None and keys else None
    if isinstance(digests, Exception):
        raise digests
    for i, _ in enumerate(keys):
        type_, pttl = _text(replies[pos]), replies[pos + 1]
        pos += 2
        digest: bytes | None = None
        if types is not None and types[i] != "none":
            reply = replies[pos]
            pos += 1
            if type_ == types[i] and not isinstance(reply, Exception):
                digest = _value_digest(type_, reply)
        elif digests is not None:
            digest = bytes(digests[i]) if isinstance(digests[i], bytes) else _text(digests[i]).encode()
        states.append(_KeyState(type_, int(pttl) if isinstance(pttl, int) else -2, digest))
    return states, at


async def _types(client: aioredis.Redis, keys: Sequence[bytes]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    return [_text(reply) for reply in await pipe.execute()]


async def _digest_allowed(client: aioredis.Redis) -> bool:
    try:
        await client.execute_command("DEBUG", "DIGEST-VALUE", "ttd:validate:probe")  # type: ignore[no-untyped-call]
    except redis_errors.ResponseError:
        return False
    return True


async def _scan(client: aioredis.Redis, batch: int, limit: int | None) -> AsyncIterator[list[bytes]]:
    """Batches of keys from SCAN (a key may, rarely, come twice), at most `limit` keys in all."""
    cursor = 0
    seen = 0
    while True:
        cursor, found = await client.scan(cursor=cursor, count=batch)
        keys = [k if isinstance(k, bytes) else str(k).encode() for k in found]
        if limit is not None:
            keys = keys[: max(0, limit - seen)]
        seen += len(keys)
        if keys:
            yield keys
        if cursor == 0 or (limit is not None and seen >= limit):
            return


def _compare_key(
    result: RedisComparison,
    key: bytes,
    src: _KeyState,
    tgt: _KeyState,
    elapsed_ms: float,
    tolerance: int,
    *,
    server_digest: bool = False,
) -> bool:
    """Compare one key's states, counting and naming problems. Returns True when the value must be compared again
    by reads: DEBUG DIGEST-VALUE covers whether a key expires, so it differs whenever only that differs."""
    name = _show_redis_key(key)
    recheck = False
    if src.type == "none" or src.pttl == -2:
        result.expired_during_run += 1  # gone from the source between SCAN and the read
        return False
    if tgt.type == "none" or tgt.pttl == -2:
        if 0 <= src.pttl <= tolerance + abs(elapsed_ms):
            result.expired_during_run += 1  # about to expire: the target's copy already has
            return False
        result.missing_on_target += 1
        result.problem("missing on target", f"key {name}: missing on target")
        return False
    result.compared += 1
    if src.type != tgt.type:
        result.type_differs += 1
        result.problem("type differs", f"key {name}: type {src.type} on source, {tgt.type} on target")
        return False
    if server_digest and src.digest != tgt.digest and (src.pttl == -1) != (tgt.pttl == -1):
        recheck = True
    elif src.digest is None or src.digest != tgt.digest:
        result.value_differs += 1
        result.problem("value differs", f"key {name}: value differs")
    if (src.pttl == -1) != (tgt.pttl == -1):
        result.ttl_differs += 1
        result.problem(
            "TTL differs", f"key {name}: TTL {_show_ttl(src.pttl)} on source, {_show_ttl(tgt.pttl)} on target"
        )
    elif src.pttl >= 0:
        expected = src.pttl - elapsed_ms  # the source's TTL as of the moment the target was read
        if abs(tgt.pttl - expected) > tolerance:
            result.ttl_differs += 1
            result.problem(
                "TTL differs",
                f"key {name}: TTL {_show_ttl(src.pttl)} on source, {_show_ttl(tgt.pttl)} on target "
                f"(tolerance {tolerance} ms)",
            )
    return recheck


async def _recheck_values(
    result: RedisComparison, src: aioredis.Redis, tgt: aioredis.Redis, keys: list[bytes], types: list[str]
) -> None:
    """Compare the values of `keys` by type-specific reads (their server digests differed along with their expiry)."""
    (src_states, _), (tgt_states, _) = await asyncio.gather(
        _read_states(src, keys, types), _read_states(tgt, keys, types)
    )
    for key, type_, s, t in zip(keys, types, src_states, tgt_states, strict=True):
        if "none" in (s.type, t.type) or s.type != type_:
            result.expired_during_run += 1
        elif s.digest is None or s.digest != t.digest:
            result.value_differs += 1
            result.problem("value differs", f"key {_show_redis_key(key)}: value differs")


_STATE_SCRIPT = """
local function xor_into(acc, h)
  for j = 1, 5 do
    acc[j] = bit.bxor(acc[j], tonumber(string.sub(h, j * 8 - 7, j * 8), 16))
  end
end
local function unordered(items, step)
  local acc = {0, 0, 0, 0, 0}
  for j = 1, #items, step do
    local part = #items[j] .. ':' .. items[j]
    if step == 2 then part = part .. #items[j + 1] .. ':' .. items[j + 1] end
    xor_into(acc, redis.sha1hex(part))
  end
  local out = (#items / step) .. ':'
  for j = 1, 5 do out = out .. bit.tohex(acc[j], 8) end
  return out
end
local function ordered(items)
  local h = ''
  for j = 1, #items do h = redis.sha1hex(h .. #items[j] .. ':' .. items[j]) end
  return #items .. ':' .. h
end
local function digest(t, key)
  if t == 'string' then return redis.sha1hex(redis.call('GET', key)) end
  if t == 'list' then return ordered(redis.call('LRANGE', key, 0, -1)) end
  if t == 'set' then return unordered(redis.call('SMEMBERS', key), 1) end
  if t == 'hash' then return unordered(redis.call('HGETALL', key), 2) end
  if t == 'zset' then return ordered(redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')) end
  if t == 'stream' then
    local entries = redis.call('XRANGE', key, '-', '+')
    local h = ''
    for _, e in ipairs(entries) do h = redis.sha1hex(h .. e[1] .. '|' .. ordered(e[2])) end
    return #entries .. ':' .. h
  end
  local payload = redis.call('DUMP', key)
  return redis.sha1hex(string.sub(payload, 1, -11))
end
local mode = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  if mode == 'exists' then
    out[i] = redis.call('EXISTS', key)
  elseif mode == 'pttl' then
    out[i] = redis.call('PTTL', key)
  else
    local t = redis.call('TYPE', key)['ok']
    local d = '-'
    if t ~= 'none' then d = digest(t, key) end
    out[i] = t .. ' ' .. redis.call('PTTL', key) .. ' ' .. d
  end
end
return table.concat(out, string.char(10))
"""
"""One call per batch: "TYPE PTTL DIGEST" of every key, the digest of the value computed on the server (sha1
chained over ordered elements, XOR of per-element sha1 for hashes and sets, so neither iteration order nor locale
matters), or EXISTS / PTTL of every key; one line per key in a single reply (cheap to parse). Atomic like every
script; read-only."""

METHODS = ("digest", "script", "reads")


async def _script_states(script: Any, keys: Sequence[bytes]) -> tuple[list[_KeyState], float]:
    before = time.monotonic()
    reply = await script(keys=list(keys), args=["state"])
    at = (before + time.monotonic()) / 2
    states = []
    for line in _text(reply).split("\n") if keys else []:
        type_, pttl, digest = line.split(" ")
        states.append(_KeyState(type_, int(pttl), digest.encode()))
    return states, at


async def _states(
    client: aioredis.Redis, script: Any, method: str, keys: Sequence[bytes], types: Sequence[str] | None
) -> tuple[list[_KeyState], float]:
    if method == "script":
        return await _script_states(script, keys)
    return await _read_states(client, keys, types)


async def _per_key(client: aioredis.Redis, script: Any, method: str, command: str, keys: Sequence[bytes]) -> list[int]:
    """EXISTS or PTTL of every key (a script call, or a pipeline)."""
    if method == "script":
        reply = await script(keys=list(keys), args=[command.lower()])
        return [int(value) for value in _text(reply).split("\n")] if keys else []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command(command, key)
    return [int(value) for value in await pipe.execute()]


async def _script_allowed(script: Any) -> bool:
    try:
        await script(keys=[], args=["state"])
    except redis_errors.ResponseError as exc:
        if "user_script" in str(exc):  # the script itself failed: a bug to report, not a server restriction
            raise
        return False  # NOPERM, scripting disabled, unknown command
    return True


async def _choose_method(src: aioredis.Redis, tgt: aioredis.Redis, scripts: tuple[Any, Any]) -> str:
    """The script when both servers run it (exact and the fastest: one reply per batch), else DEBUG DIGEST-VALUE
    when both allow it, else reads."""
    if all(await asyncio.gather(*(_script_allowed(script) for script in scripts))):
        return "script"
    if all(await asyncio.gather(_digest_allowed(src), _digest_allowed(tgt))):
        return "digest"
    return "reads"


Clients = tuple[aioredis.Redis, aioredis.Redis]


async def _source_pass(
    result: RedisComparison,
    clients: Clients,
    scripts: tuple[Any, Any],
    method: str,
    batch: int,
    sample: int | None,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Every source key (SCAN, in batches) against the target: type, value, TTL."""
    src, tgt = clients
    ttl_tolerance_ms = result.ttl_tolerance_ms
    done = 0
    async for keys in _scan(src, batch, sample):
        types = await _types(src, keys) if method == "reads" else None
        (src_states, src_at), (tgt_states, tgt_at) = await asyncio.gather(
            _states(src, scripts[0], method, keys, types), _states(tgt, scripts[1], method, keys, types)
        )
        elapsed_ms = (tgt_at - src_at) * 1000
        recheck: list[tuple[bytes, str]] = []
        for i, (key, s, t) in enumerate(zip(keys, src_states, tgt_states, strict=True)):
            if HOST_COUNTERS.match(key):
                result.host_counters += 1
                continue
            if types is not None and s.type not in ("none", types[i]):
                result.expired_during_run += 1  # replaced on the source between the two reads
                continue
            if _compare_key(result, key, s, t, elapsed_ms, ttl_tolerance_ms, server_digest=method == "digest"):
                recheck.append((key, s.type))
        if recheck:
            await _recheck_values(result, src, tgt, [k for k, _ in recheck], [t for _, t in recheck])
        done += len(keys)
        if on_progress is not None:
            on_progress(done, max(done, result.source_keys if sample is None else min(sample, result.source_keys)))


async def _target_pass(
    result: RedisComparison, clients: Clients, scripts: tuple[Any, Any], method: str, batch: int, sample: int | None
) -> None:
    """Keys only on the target (a key expiring on both sides meanwhile is not one)."""
    src, tgt = clients
    ttl_tolerance_ms = result.ttl_tolerance_ms
    async for keys in _scan(tgt, batch, sample):
        exists, pttls = await asyncio.gather(
            _per_key(src, scripts[0], method, "EXISTS", keys), _per_key(tgt, scripts[1], method, "PTTL", keys)
        )
        result.target_scanned += len(keys)
        for key, present, pttl in zip(keys, exists, pttls, strict=True):
            if present or pttl == -2:
                continue
            if 0 <= pttl <= ttl_tolerance_ms:
                result.expired_during_run += 1  # expired on the source, about to on the target
                continue
            if TARGET_OWN_KEYS.match(key):
                result.target_own_keys += 1
                continue
            if HOST_COUNTERS.match(key):
                result.host_counters += 1
                continue
            result.extra_on_target += 1
            result.problem("only on target", f"key {_show_redis_key(key)}: only on target")


def _summarize(result: RedisComparison, sample: int | None) -> None:
    if result.missing_on_target or result.extra_on_target:
        result.errors.insert(
            0,
            f"key count: {result.source_keys} on source, {result.target_keys} on target "
            f"({result.missing_on_target} missing on target, {result.extra_on_target} only on target)",
        )
    elif result.source_keys != result.target_keys and sample is None:
        result.warnings.append(
            f"DBSIZE differs ({result.source_keys} on source, {result.target_keys} on target) although every "
            "key matched: keys expired or changed during the run"
        )
    if sample is not None:
        result.warnings.append(f"only a sample of {sample} keys per side was compared")
    if result.target_own_keys:
        result.warnings.append(
            f"{result.target_own_keys} keys only on the target are its own bot's update claims / limiter slots "
            "(not errors)"
        )
    if result.expired_during_run:
        result.warnings.append(f"{result.expired_during_run} keys expired while being compared (not errors)")


async def compare_redis(
    source_url: str,
    target_url: str,
    *,
    ttl_tolerance_ms: int = 5000,
    sample: int | None = None,
    batch: int = 500,
    method: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RedisComparison:
    """Compare every key of the source's database with the target's (see the module docstring).

    Values are compared by `method`: "script" (a read-only Lua script running the type-specific reads and hashing
    each value on the server), "digest" (DEBUG DIGEST-VALUE) or "reads" (GET / HGETALL / LRANGE / SMEMBERS /
    ZRANGE WITHSCORES / XRANGE in MULTI, hashed here); None picks the first both servers allow, in that order
    (managed Redis usually forbids DEBUG; the script is also ~5x faster than DIGEST-VALUE, which needs TYPE and PTTL
    per key beside it). `sample` compares
    only the first `sample` keys SCAN returns on each side. `on_progress(done, total)` is told after each batch of
    source keys.
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}")
    result = RedisComparison(mask_secrets(source_url), mask_secrets(target_url), ttl_tolerance_ms=ttl_tolerance_ms)
    result.sample = sample
    src = aioredis.Redis.from_url(source_url, socket_connect_timeout=5, socket_timeout=60)
    tgt = aioredis.Redis.from_url(target_url, socket_connect_timeout=5, socket_timeout=60)
    scripts = (src.register_script(_STATE_SCRIPT), tgt.register_script(_STATE_SCRIPT))
    started = time.monotonic()
    try:
        result.source_keys, result.target_keys = (int(n) for n in await asyncio.gather(src.dbsize(), tgt.dbsize()))
        method = method or await _choose_method(src, tgt, scripts)
        result.method = method
        await _source_pass(result, (src, tgt), scripts, method, batch, sample, on_progress)
        await _target_pass(result, (src, tgt), scripts, method, batch, sample)
        _summarize(result, sample)
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        result.errors.append(f"Redis comparison failed: cannot reach Redis: {mask_secrets(str(exc))}")
    except redis_errors.RedisError as exc:
        result.errors.append(f"Redis comparison failed: {mask_secrets(str(exc))}")
    finally:
        result.finish()
        result.elapsed = time.monotonic() - started
        await asyncio.gather(src.aclose(), tgt.aclose(), return_exceptions=True)
    return result
