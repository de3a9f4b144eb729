"""The in-freeze Redis pass alone, old vs new in the same run: `copy_redis_changes` (a Lua script per SCAN batch
with the recorded digest and expiry of every key as arguments, compared on the server) against `copy_redis_since`
(the SCAN inside the script, no argument per key, eight cursor ranges side by side, compared here as a set).

A private `redis-server` on 127.0.0.1 (database 0 the source, 1 the target), `--keys` keys (a third with a TTL),
copied, both records taken (as the pre-pass does), then per round `--changes` keys written on the source and each
pass run once, the order alternating between rounds; the target is checked equal to the source after each pass.

    uv run python bench/redis_freeze.py [--keys 1000000] [--changes 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from timetodo.ops.adapters import redis as redisops


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill(client: redis.Redis, keys: int) -> None:
    pipe = client.pipeline(transaction=False)
    for n in range(keys):
        pipe.set(f"bench:{n}", os.urandom(32), ex=7200 if n % 3 == 0 else None)
        if n % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def change(client: redis.Redis, keys: int, count: int, round_no: int) -> None:
    pipe = client.pipeline(transaction=False)
    step = max(1, keys // count)
    for n in range(round_no, keys, step):
        pipe.set(f"bench:{n}", os.urandom(32), keepttl=True)
    pipe.execute()


def equal(src: redis.Redis, dst: redis.Redis, sample: int = 20_000) -> bool:
    keys = [k for _, k in zip(range(sample), src.scan_iter(count=1000), strict=False)]
    return all(src.dump(k) == dst.dump(k) for k in keys) and src.dbsize() == dst.dbsize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="ttd-bench-redis-freeze-"))
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        source_url, target_url = f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/1"
        src, dst = redis.Redis.from_url(source_url), redis.Redis.from_url(target_url)
        for _ in range(50):
            try:
                src.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        fill(src, args.keys)
        asyncio.run(redisops.copy_redis(source_url, target_url, connections=args.connections, flush_target=True))
        old: redisops.KeyDigests = {}
        asyncio.run(redisops.copy_redis_delta(source_url, target_url, connections=args.connections, record=old))
        started = time.monotonic()
        record = asyncio.run(redisops.record_keys(target_url, connections=args.connections))
        print(f"record of the target (pre-pass, not in the freeze): {time.monotonic() - started:.2f} s")
        load = os.getloadavg()[0]
        times: dict[str, list[float]] = {"old": [], "new": []}
        for round_no in range(args.rounds):
            change(src, args.keys, args.changes, round_no + 1)
            order = ["old", "new"] if round_no % 2 == 0 else ["new", "old"]
            for name in order:
                started = time.monotonic()
                if name == "old":
                    moved = asyncio.run(
                        redisops.copy_redis_changes(source_url, target_url, old, connections=args.connections)
                    )
                else:
                    moved = asyncio.run(
                        redisops.copy_redis_since(source_url, target_url, record, connections=args.connections)
                    )
                seconds = time.monotonic() - started
                times[name].append(seconds)
                print(
                    f"round {round_no + 1} {name}: {seconds:.2f} s, {moved.to_dict()['keys']} keys moved, "
                    f"equal: {equal(src, dst)}"
                )
        best_old, best_new = min(times["old"]), min(times["new"])
        print(f"\n{args.keys:,} keys, {args.changes:,} changed per round, load {load:.1f} → {os.getloadavg()[0]:.1f}")
        print(f"in-freeze Redis pass: old {best_old:.2f} s, new {best_new:.2f} s → {best_new / best_old:.2f}×")
        src.close()
        dst.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
