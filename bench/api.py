"""API benchmark: list-50-tasks and create-task on PostgreSQL + Redis vs a bare Starlette endpoint serving the same
50-task JSON page, every server on 2 workers, driven by wrk.

`--users` users (default 100) with `--tasks-per-user` tasks each (default 10 000): list reads one user's first page
per request, rotating over every user's token; create writes as the users in turn. Each of `--rounds` rounds runs
bare, list and create back to back (interleaved, so drift hits all three alike); the median round of each endpoint
is reported: req/s, p50, p99 and the ratio to bare. While wrk runs, the server's established connections are
counted per worker process (`ss`): a run where one worker held more than 3/4 of them is logged and run again (at
most twice) — keep-alive connections pinned to one worker halve throughput and say nothing about the code.

    uv run python bench/api.py [--duration 10] [--connections 32] [--users 100] [--tasks-per-user 10000]
    uv run --with py-spy python bench/api.py --profile     # also: py-spy top frames of the busiest worker (list)

Starts its own PostgreSQL and Redis (scripts/postgres.sh, scripts/redis.sh) unless TIMETODO_TEST_POSTGRES_URL /
TIMETODO_TEST_REDIS_URL are set; bounded in time; stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.server import TIMETODO, ServerProcess, server_env  # noqa: E402
from tests.support import PASSWORD, Services, create_database, free_port  # noqa: E402

WORKERS = 2
IMBALANCE = 0.75
MAX_RERUNS = 2
CREATE_BODY = '{"title": "bench task", "priority": 2, "labels": ["bench"]}'


def ensure_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True)
    return shutil.which(name) or name


# wrk ------------------------------------------------------------------------------------------------------------


def rotating_lua(tokens: list[str], method: str, path: str, body: str | None) -> str:
    """A wrk script sending each request as the next user in turn."""
    listed = ",\n".join(f'  "{t}"' for t in tokens)
    body_arg = f", {json.dumps(body)}" if body else ""
    content_type = ', ["Content-Type"] = "application/json"' if body else ""
    return f"""
local tokens = {{
{listed}
}}
local i = 0
request = function()
  i = i + 1
  local headers = {{["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1]{content_type}}}
  return wrk.format("{method}", "{path}", headers{body_arg})
end
"""


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


def connections_per_worker(port: int) -> dict[int, int]:
    """Established server-side connections on `port`, counted by the process that owns them."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=False
    ).stdout
    counts: collections.Counter[int] = collections.Counter()
    for pid in re.findall(r"pid=(\d+)", out):
        counts[int(pid)] += 1
    return dict(counts)


def run_wrk(wrk: str, url: str, duration: int, connections: int, lua: Path | None, port: int) -> dict[str, float]:
    """One wrk run; the connection spread over the workers is sampled halfway through."""
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if lua:
        cmd += ["-s", str(lua)]
    spread: dict[int, int] = {}

    def sample() -> None:
        time.sleep(min(2.0, duration / 2))
        spread.update(connections_per_worker(port))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    sampler.join()
    result = parse_wrk(out)
    total = sum(spread.values())
    result["busiest_worker_share"] = max(spread.values()) / total if total else 0.0
    result["busiest_worker_pid"] = float(max(spread, key=lambda pid: spread[pid])) if spread else 0.0
    return result


def balanced_run(
    wrk: str, name: str, url: str, args: argparse.Namespace, lua: Path | None, port: int
) -> dict[str, float]:
    for attempt in range(MAX_RERUNS + 1):
        result = run_wrk(wrk, url, args.duration, args.connections, lua, port)
        if result["busiest_worker_share"] <= IMBALANCE:
            return result
        share = result["busiest_worker_share"]
        print(f"  {name}: one worker held {share:.0%} of the connections (run {attempt + 1}); running it again")
    result["imbalanced"] = 1.0
    return result


# data -----------------------------------------------------------------------------------------------------------


async def load_tasks(db_url: str, owner_ids: list[int], per_user: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        ts = datetime.now(UTC)
        columns = ["owner_id", "title", "description", "priority", "labels", "position", "done"]
        columns += ["created_at", "updated_at"]
        for owner in owner_ids:
            rows = [
                (owner, f"task {i}", "", 1 + i % 4, json.dumps(["bench"] if i % 3 == 0 else []), i, False, ts, ts)
                for i in range(per_user)
            ]
            await conn.copy_records_to_table("tasks", records=rows, columns=columns)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def make_users(url: str, count: int) -> tuple[list[str], list[int]]:
    tokens, ids = [], []
    with httpx.Client(base_url=url, timeout=60) as c:
        for n in range(count):
            email = f"bench{n}@example.com"
            c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}).raise_for_status()
            resp = c.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
            resp.raise_for_status()
            token = resp.json()["access_token"]
            tokens.append(token)
            ids.append(c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).json()["id"])
    return tokens, ids


# profile --------------------------------------------------------------------------------------------------------


def profile_worker(pid: int, seconds: int, out: Path) -> list[tuple[str, float, float]]:
    """py-spy samples of one worker: (frame, self share, inclusive share), the top 15 by self time."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    raw = out.with_suffix(".raw")
    options = ["--duration", str(seconds), "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking"]
    subprocess.run(
        [py_spy, "record", "--pid", str(pid), *options],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return [(frame, n / total, inclusive[frame] / total) for frame, n in own.most_common(15)] if total else []


# main -----------------------------------------------------------------------------------------------------------


def start_bare(port: int, payload: Path, log: Path) -> subprocess.Popen[bytes]:
    served = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    return subprocess.Popen(
        [
            Path(TIMETODO).with_name("uvicorn"),
            "bench.bare_app:app",
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
            *served,
        ],
        cwd=ROOT,
        env={**os.environ, "BARE_PAYLOAD": str(payload)},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    medians = {name: sorted(runs, key=lambda r: r["rps"])[len(runs) // 2] for name, runs in results.items()}
    bare = medians["bare"]["rps"]
    print(
        f"\n{args.users} users × {args.tasks_per_user} tasks, {WORKERS} workers each, wrk -t1 -c{args.connections} "
        f"-d{args.duration}s, median of {args.rounds} interleaved rounds\n"
    )
    print(f"{'endpoint':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'vs bare':>9}{'non-2xx':>9}  rounds (req/s)")
    for name, r in medians.items():
        rounds = " / ".join(f"{run['rps']:.0f}" for run in results[name])
        print(
            f"{name:<10}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['rps'] / bare:>9.1%}"
            f"{r['non_2xx']:>9.0f}  {rounds}"
        )
    print(
        f"\ntargets: list-50 ≥ 15 % of bare with p99 < 25 ms, create ≥ 8 % of bare with p99 < 50 ms; "
        f"median req/s ratio to bare of every round: list {statistics.median(r['rps'] for r in results['list']) / bare:.1%}"
    )
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--tasks-per-user", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy top frames of the busiest worker under list")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "out" / "api.json")
    args = parser.parse_args()

    wrk = ensure_tool("wrk", "wrk")
    ensure_tool("ss", "iproute2")
    services = Services.start() if not os.environ.get("TIMETODO_TEST_POSTGRES_URL") else None
    pg_url = services.postgres_url if services else os.environ["TIMETODO_TEST_POSTGRES_URL"]
    redis_url = services.redis_url if services else os.environ.get("TIMETODO_TEST_REDIS_URL")
    work = Path(tempfile.mkdtemp(prefix="ttd-bench-"))
    db_url = asyncio.run(create_database(pg_url))
    env = server_env(db_url, redis_url, work / "data")
    env |= {
        "LOG_LEVEL": "WARNING",
        "ACCESS_TOKEN_TTL_MINUTES": "240",
        "LOGIN_ATTEMPTS_PER_MINUTE": "1000",
        "REGISTRATIONS_PER_HOUR": "100000",
    }
    api = ServerProcess(env, work, workers=WORKERS)
    bare_port = free_port()
    bare: subprocess.Popen[bytes] | None = None
    results: dict[str, list[dict[str, float]]] = {"bare": [], "list": [], "create": []}
    profile: list[tuple[str, float, float]] = []
    try:
        api.wait_ready(timeout=300)  # workers import the app in 1 s idle, 30 s+ on a busy shared machine
        tokens, ids = make_users(api.url, args.users)
        asyncio.run(load_tasks(db_url, ids, args.tasks_per_user))
        page = httpx.get(f"{api.url}/api/v1/tasks?limit=50", headers={"Authorization": f"Bearer {tokens[0]}"})
        page.raise_for_status()
        payload = work / "page.json"
        payload.write_bytes(page.content)
        bare = start_bare(bare_port, payload, work / "bare.log")
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{bare_port}/bare").content == page.content:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        list_lua, create_lua = work / "list.lua", work / "create.lua"
        list_lua.write_text(rotating_lua(tokens, "GET", "/api/v1/tasks?limit=50", None))
        create_lua.write_text(rotating_lua(tokens, "POST", "/api/v1/tasks", CREATE_BODY))
        bare_url, api_url = f"http://127.0.0.1:{bare_port}/bare", f"{api.url}/api/v1/tasks"
        run_wrk(wrk, api_url, 3, args.connections, list_lua, api.port)  # warm-up
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}")
            results["bare"].append(balanced_run(wrk, "bare", bare_url, args, None, bare_port))
            results["list"].append(balanced_run(wrk, "list", api_url, args, list_lua, api.port))
            results["create"].append(balanced_run(wrk, "create", api_url, args, create_lua, api.port))
        if args.profile:
            pid = int(results["list"][-1]["busiest_worker_pid"])
            spy = threading.Thread(target=lambda: profile.extend(profile_worker(pid, args.duration, work / "p")))
            spy.start()
            run_wrk(wrk, api_url, args.duration + 2, args.connections, list_lua, api.port)
            spy.join()
    finally:
        api.stop()
        if bare is not None:
            bare.terminate()
            bare.wait(10)
        if services:
            services.stop()
        shutil.rmtree(work, ignore_errors=True)

    medians = report(results, args)
    if profile:
        print("\npy-spy, busiest worker under list-50: self% / inclusive%  frame")
        for frame, own, incl in profile:
            print(f"  {own:6.1%} {incl:7.1%}  {frame}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "rounds": results,
                "medians": medians,
                "profile": profile,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
