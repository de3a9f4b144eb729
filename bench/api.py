"""API benchmark: list-50-tasks and create-task on PostgreSQL vs a bare Starlette JSON endpoint.

Starts its own PostgreSQL (scripts/postgres.sh), one `timetodo serve` worker and one bare Starlette app served by
Uvicorn the same way (uvloop + httptools, 1 worker), loads 10 000 tasks for one user, then drives each endpoint
with wrk at a fixed concurrency and prints req/s, p50/p99 and the ratios to the bare endpoint.

    uv run python bench/api.py [--duration 10] [--connections 16] [--tasks 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.server import TIMETODO, ServerProcess, server_env  # noqa: E402
from tests.support import PASSWORD, Services, create_database, free_port  # noqa: E402

CREATE_LUA = """
wrk.method = "POST"
wrk.body = '{"title": "bench task", "priority": 2, "labels": ["bench"]}'
wrk.headers["Content-Type"] = "application/json"
"""


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True)
    return shutil.which("wrk") or "wrk"


def parse_wrk(output: str) -> dict[str, float]:
    def to_ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*", output)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def run_wrk(
    wrk: str, url: str, duration: int, connections: int, headers: dict[str, str], lua: Path | None
) -> dict[str, float]:
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    if lua:
        cmd += ["-s", str(lua)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    return parse_wrk(out)


async def load_tasks(db_url: str, owner_id: int, count: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        now = time.time()
        from datetime import UTC, datetime

        ts = datetime.fromtimestamp(now, UTC)
        rows = [
            (owner_id, f"task {i}", "", 1 + i % 4, json.dumps(["bench"] if i % 3 == 0 else []), i, False, ts, ts)
            for i in range(count)
        ]
        await conn.copy_records_to_table(
            "tasks",
            records=rows,
            columns=[
                "owner_id",
                "title",
                "description",
                "priority",
                "labels",
                "position",
                "done",
                "created_at",
                "updated_at",
            ],
        )
        await conn.execute("ANALYZE tasks")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "out" / "api.json")
    args = parser.parse_args()

    wrk = ensure_wrk()
    services = Services.start() if not os.environ.get("TIMETODO_TEST_POSTGRES_URL") else None
    pg_url = services.postgres_url if services else os.environ["TIMETODO_TEST_POSTGRES_URL"]
    redis_url = services.redis_url if services else os.environ.get("TIMETODO_TEST_REDIS_URL")
    work = Path(tempfile.mkdtemp(prefix="ttd-bench-"))
    db_url = asyncio.run(create_database(pg_url))
    env = server_env(db_url, redis_url, work / "data")
    env["LOG_LEVEL"] = "WARNING"
    api = ServerProcess(env, work)
    bare_port = free_port()
    bare_log = (work / "bare.log").open("wb")
    bare = subprocess.Popen(
        [
            Path(TIMETODO).with_name("uvicorn"),
            "bench.bare_app:app",
            "--port",
            str(bare_port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=bare_log,
        stderr=subprocess.STDOUT,
    )
    results: dict[str, dict[str, float]] = {}
    try:
        api.wait_ready()
        with httpx.Client(base_url=api.url) as c:
            c.post(
                "/api/v1/auth/register", json={"email": "bench@example.com", "password": PASSWORD}
            ).raise_for_status()
            tokens = c.post("/api/v1/auth/login", data={"username": "bench@example.com", "password": PASSWORD}).json()
            owner = c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()[
                "id"
            ]
        asyncio.run(load_tasks(db_url, owner, args.tasks))
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        for _ in range(50):
            try:
                if httpx.get(f"http://127.0.0.1:{bare_port}/bare").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        lua = work / "create.lua"
        lua.write_text(CREATE_LUA)
        # warm-up, then the measured runs; the baseline runs first and last to expose drift
        run_wrk(wrk, f"{api.url}/api/v1/tasks?limit=50", 2, args.connections, auth, None)
        results["bare"] = run_wrk(wrk, f"http://127.0.0.1:{bare_port}/bare", args.duration, args.connections, {}, None)
        results["list50"] = run_wrk(
            wrk, f"{api.url}/api/v1/tasks?limit=50", args.duration, args.connections, auth, None
        )
        results["create"] = run_wrk(wrk, f"{api.url}/api/v1/tasks", args.duration, args.connections, auth, lua)
        results["bare_again"] = run_wrk(
            wrk, f"http://127.0.0.1:{bare_port}/bare", args.duration, args.connections, {}, None
        )
    finally:
        api.stop()
        bare.terminate()
        bare.wait(10)
        if services:
            services.stop()
        shutil.rmtree(work, ignore_errors=True)

    base_rps = (results["bare"]["rps"] + results["bare_again"]["rps"]) / 2
    print(f"\nconcurrency {args.connections}, {args.duration}s per run, {args.tasks} tasks, 1 worker each\n")
    print(f"{'endpoint':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'vs bare':>10}{'non-2xx':>9}")
    for name, r in results.items():
        print(
            f"{name:<12}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['rps'] / base_rps:>10.1%}{r['non_2xx']:>9.0f}"
        )
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(
        json.dumps(
            {"args": vars(args) | {"json_out": str(args.json_out)}, "results": results, "bare_rps": base_rps}, indent=2
        )
    )


if __name__ == "__main__":
    main()
