"""WebSocket fan-out benchmark: write on one instance → delivery on every socket of that user on two instances.

Starts PostgreSQL and Redis (scripts/), two `timetodo serve` processes sharing them, opens `--sockets` WebSockets
for `--users` users spread evenly over both instances, then performs `--writes` task creations (round-robin over the
users, always on instance A) and measures, for every socket of the writing user, the time from sending the POST to
receiving its `task.created` event. The baseline in the same run is the POST's own round trip (write → response):
fan-out cost = delivery latency minus what the write itself takes.

    uv run python bench/realtime.py [--sockets 1000] [--users 10] [--writes 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.server import ServerProcess, server_env  # noqa: E402
from tests.support import PASSWORD, Services, create_database  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def scenario(servers: list[ServerProcess], args: argparse.Namespace) -> dict[str, Any]:
    tokens: list[str] = []
    async with httpx.AsyncClient(base_url=servers[0].url, timeout=30) as c:
        for i in range(args.users):
            email = f"ws{i}@example.com"
            await c.post(
                "/api/v1/auth/register",
                json={"email": email, "password": PASSWORD},
                headers={"X-Forwarded-For": f"10.9.0.{i}"},
            )
            resp = await c.post(
                "/api/v1/auth/login",
                data={"username": email, "password": PASSWORD},
                headers={"X-Forwarded-For": f"10.9.0.{i}"},
            )
            tokens.append(resp.json()["access_token"])

    # task title → {socket index: receive time}
    received: dict[str, dict[int, float]] = defaultdict(dict)
    sockets: list[tuple[int, ClientConnection]] = []

    async def open_socket(index: int) -> None:
        user = index % args.users
        server = servers[(index // args.users) % 2]
        ws = await connect(server.url.replace("http://", "ws://") + "/api/v1/ws", open_timeout=60, ping_interval=None)
        await ws.send(json.dumps({"type": "auth", "token": tokens[user]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 60)) == {"type": "ready"}
        sockets.append((index, ws))

    started = time.perf_counter()
    for batch in range(0, args.sockets, 50):
        await asyncio.gather(*(open_socket(i) for i in range(batch, min(batch + 50, args.sockets))))
    connect_seconds = time.perf_counter() - started

    async def reader(index: int, ws: ClientConnection) -> None:
        async for raw in ws:
            now = time.perf_counter()
            message = json.loads(raw)
            if message["type"] == "task.created":
                received[message["data"]["title"]][index] = now

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in sockets]
    per_user = defaultdict(list)
    for i, _ws in sockets:
        per_user[i % args.users].append(i)

    sent_at: dict[str, float] = {}
    write_rtt: list[float] = []
    async with httpx.AsyncClient(base_url=servers[0].url, timeout=30) as c:
        for n in range(args.writes + 5):
            user = n % args.users
            title = f"w{n}"
            t0 = time.perf_counter()
            resp = await c.post(
                "/api/v1/tasks", json={"title": title}, headers={"Authorization": f"Bearer {tokens[user]}"}
            )
            rtt = time.perf_counter() - t0
            assert resp.status_code == 201, resp.text
            if n >= 5:  # the first writes warm up connections and caches
                sent_at[title] = t0
                write_rtt.append(rtt)
            await asyncio.sleep(args.interval)
    await asyncio.sleep(2)
    for task in readers:
        task.cancel()
    await asyncio.gather(*(ws.close() for _i, ws in sockets), return_exceptions=True)

    latencies: list[float] = []
    missing = 0
    for n in range(5, args.writes + 5):
        title = f"w{n}"
        expected = per_user[n % args.users]
        got = received.get(title, {})
        missing += sum(1 for i in expected if i not in got)
        latencies += [(got[i] - sent_at[title]) * 1000 for i in expected if i in got]
    return {
        "sockets": len(sockets),
        "connect_seconds": connect_seconds,
        "deliveries": len(latencies),
        "missing": missing,
        "delivery_p50_ms": percentile(latencies, 0.5),
        "delivery_p99_ms": percentile(latencies, 0.99),
        "delivery_max_ms": max(latencies),
        "write_rtt_p50_ms": statistics.median(write_rtt) * 1000,
        "write_rtt_p99_ms": percentile([x * 1000 for x in write_rtt], 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--writes", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.1, help="pause between writes (s)")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "out" / "realtime.json")
    args = parser.parse_args()

    services = Services.start() if not os.environ.get("TIMETODO_TEST_POSTGRES_URL") else None
    pg_url = services.postgres_url if services else os.environ["TIMETODO_TEST_POSTGRES_URL"]
    redis_url = services.redis_url if services else os.environ["TIMETODO_TEST_REDIS_URL"]
    work = Path(tempfile.mkdtemp(prefix="ttd-bench-ws-"))
    servers: list[ServerProcess] = []
    try:
        db_url = asyncio.run(create_database(pg_url))
        env = server_env(db_url, redis_url, work / "data") | {"LOG_LEVEL": "WARNING", "WS_PING_SECONDS": "60"}
        for _ in range(2):
            servers.append(ServerProcess(env, work))
            servers[-1].wait_ready()
        result = asyncio.run(scenario(servers, args))
    finally:
        for server in servers:
            server.stop()
        if services:
            services.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{result['sockets']} sockets, {args.users} users, 2 instances + Redis, {args.writes} writes on instance A")
    print(f"connect+auth all sockets: {result['connect_seconds']:.1f} s")
    print(
        f"write → delivery  p50 {result['delivery_p50_ms']:.1f} ms  p99 {result['delivery_p99_ms']:.1f} ms  "
        f"max {result['delivery_max_ms']:.1f} ms  ({result['deliveries']} deliveries, {result['missing']} missing)"
    )
    print(
        f"write round trip  p50 {result['write_rtt_p50_ms']:.1f} ms  p99 {result['write_rtt_p99_ms']:.1f} ms (baseline)"
    )
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(
        json.dumps({"args": vars(args) | {"json_out": str(args.json_out)}, "result": result}, indent=2)
    )


if __name__ == "__main__":
    main()
