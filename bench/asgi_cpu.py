"""CPU time per request of the hot endpoints, in one process, without an HTTP server or client: the app's own cost
(routing, auth, middleware, the database driver's client side, logging, metrics), steady enough to compare two
versions of the code on a shared machine (process CPU time, not wall time; `--concurrency` requests in flight).

`uv run python -u bench/asgi_cpu.py [--requests 3000] [--concurrency 8] [--profile out.prof]`: starts PostgreSQL
and Redis (tests/support.py), migrates a fresh database, runs `create_app` (access log on, to stdout), and calls the
ASGI app directly with list and create requests; prints CPU µs per request (the median of `--repeat` batches).
`--profile PREFIX` writes cProfiles (CPU time) of the batches to PREFIX.list and PREFIX.create.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import Services, create_database, new_user  # noqa: E402

from bench.inprocess import app_in_process  # noqa: E402


def scope_of(method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: Any, scope: dict[str, Any], body: bytes) -> int:
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def batch(app: Any, make: Callable[[], tuple[dict[str, Any], bytes]], n: int, concurrency: int) -> float:
    """CPU seconds per request over `n` requests, `concurrency` at a time."""
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            scope, body = make()
            status = await call(app, scope, body)
            if status >= 300:
                raise RuntimeError(f"{scope['method']} {scope['path']}: {status}")

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - start) / n


async def floor_batches(
    args: argparse.Namespace, db_url: str, user_ids: list[bytes], body: bytes, results: dict[str, list[float]]
) -> None:
    """The same batches on the floor app (bench/floor_app.py), in this process."""
    import os

    from bench import floor_app

    os.environ.update(floor_app.statements(), FLOOR_DSN=db_url.replace("postgresql+asyncpg://", "postgresql://"))
    i = 0

    def user() -> tuple[bytes, bytes]:
        nonlocal i
        i += 1
        return (b"x-user", user_ids[i % len(user_ids)])

    def list_request() -> tuple[dict[str, Any], bytes]:
        return scope_of("GET", "/floor-list", b"", [(b"host", b"t"), user()]), b""

    def create_request() -> tuple[dict[str, Any], bytes]:
        headers = [(b"host", b"t"), user(), (b"content-type", b"application/json")]
        return scope_of("POST", "/floor-create", b"", headers), body

    async with floor_app.lifespan(floor_app.app):
        await batch(floor_app.app, list_request, 200, args.concurrency)
        for _ in range(args.repeat):
            results.setdefault("floor-list", []).append(
                await batch(floor_app.app, list_request, args.requests, args.concurrency)
            )
            results.setdefault("floor-create", []).append(
                await batch(floor_app.app, create_request, args.requests // 3, args.concurrency)
            )


async def run(args: argparse.Namespace) -> None:
    services = Services.start()
    try:
        db_url = await create_database(services.postgres_url)
        async with app_in_process(db_url, services.redis_url, log_level="INFO") as (app, client):
            users = [await new_user(client) for _ in range(4)]
            auths = [(b"authorization", h["Authorization"].encode()) for h, _ in users]
            body = orjson.dumps({"title": "bench", "labels": ["a", "b"], "priority": 2, "description": "x" * 40})
            i = 0

            def rotate() -> tuple[bytes, bytes]:
                nonlocal i
                i += 1
                return auths[i % len(auths)]

            def list_request() -> tuple[dict[str, Any], bytes]:
                return scope_of("GET", "/api/v1/tasks", b"limit=50", [(b"host", b"t"), rotate()]), b""

            def create_request() -> tuple[dict[str, Any], bytes]:
                headers = [(b"host", b"t"), rotate(), (b"content-type", b"application/json")]
                headers.append((b"content-length", str(len(body)).encode()))
                return scope_of("POST", "/api/v1/tasks", b"", headers), body

            for _ in range(60):  # every user has more than a page; pools open, statements prepared
                await batch(app, create_request, 10, 4)
            await batch(app, list_request, 200, args.concurrency)
            results: dict[str, list[float]] = {"list": [], "create": []}
            profilers = {name: cProfile.Profile(time.process_time) for name in results} if args.profile else {}
            requests = {"list": (list_request, args.requests), "create": (create_request, args.requests // 3)}
            for _ in range(args.repeat):
                for name, (make, n) in requests.items():
                    if profilers:
                        profilers[name].enable()
                    results[name].append(await batch(app, make, n, args.concurrency))
                    if profilers:
                        profilers[name].disable()
            if args.floor:
                await floor_batches(args, db_url, [str(t["user"]["id"]).encode() for _, t in users], body, results)
            for name, values in results.items():
                print(
                    f"{name:12} CPU µs/request: median {statistics.median(values) * 1e6:7.1f}  "
                    f"(batches: {', '.join(f'{v * 1e6:.0f}' for v in values)})",
                    file=sys.stderr,
                )
            for name, profiler in profilers.items():
                profiler.dump_stats(f"{args.profile}.{name}")
    finally:
        services.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--floor", action="store_true", help="also the floor app (bench/floor_app.py), in process")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
