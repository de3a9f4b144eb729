"""API benchmark: list-50-tasks and create-task on PostgreSQL + Redis vs a bare Starlette endpoint serving the same
50-task JSON page and vs the "floor" — the same database work done by the least code any Python app needs —, every
server on 2 workers, driven by wrk.

`--users` users (default 100) with `--tasks-per-user` tasks each (default 10 000): list reads one user's first page
per request, rotating over every user's token; create writes as the users in turn. Each of `--rounds` rounds runs
bare, list, floor-list, create and floor-create back to back (interleaved, so drift hits them all alike); the median
round of each endpoint is reported: req/s, p50, p99, the ratio to bare and, for our endpoints, the ratio to their
floor (also per round, and with the CPU per request of both). While wrk runs, the server's established connections
are counted per worker process (`ss`): a run where one worker held more than 3/4 of them is logged and run again (at
most twice) — keep-alive connections pinned to one worker halve throughput and say nothing about the code.

The floor (`bench/floor_app.py`, on by default, `--no-floor` to skip): a minimal Starlette app under uvicorn served
exactly as the bare one (uvloop + httptools, a listening socket per worker), an asyncpg pool per worker, on the first
target's database (the same data and users). `floor-list` runs our list statement (the same SQL text,
`repository.pg_task_list`) for the user named in the `X-User` header (rotated by the wrk script as our tokens are)
and serialises the rows with orjson into the same document; `floor-create` runs one INSERT of the columns our create
writes, RETURNING the task's document as ours does. No auth, no middleware, no maintenance guard, no sync version.
Before the rounds the floor is checked to answer our list page byte for byte and the same created document. Our
endpoints as a share of their floor say what our own code costs; the floor as a share of bare is what the
database round trip costs any Python app on this stack.

Several API targets can run side by side in the same run (each with its own database holding the same data, its
endpoints interleaved with the others' in every round): this checkout, `--baseline-src DIR` (another source tree —
e.g. `git archive main src | tar -x -C /tmp/main` then `--baseline-src /tmp/main/src` — served by the same
`timetodo` command with PYTHONPATH pointing at it) and `--servers reuseport,shared,granian` (this checkout under
`timetodo serve --reuse-port` — a listening socket per worker —, `--shared-socket` — uvicorn's one socket —, and
under Granian, which needs `uv run --with granian`).

Where the machine's CPU goes during each run is measured from /proc (utime + stime deltas, in cores): wrk, the API
workers, PostgreSQL's backends, Redis, and the whole machine (other users of a shared machine included).

    uv run python bench/api.py [--duration 10] [--connections 32] [--users 100] [--tasks-per-user 10000]
    uv run --with py-spy python bench/api.py --profile     # also: py-spy top frames of the busiest worker
                                                           # of each endpoint, the floor's included

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
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
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


def rotating_lua(
    tokens: list[str], method: str, path: str, body: str | None, header: str = "Authorization", prefix: str = "Bearer "
) -> str:
    """A wrk script sending each request as the next user in turn (`header: prefix + token`; the floor sends the
    user's id in `X-User`)."""
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
  local headers = {{["{header}"] = "{prefix}" .. tokens[(i % #tokens) + 1]{content_type}}}
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


# CPU accounting (/proc) -------------------------------------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()  # [state, ppid, …]: utime is [11], stime [12]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _ticks(pids: list[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def _machine_busy() -> int:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


class CpuGroups:
    """Named groups of processes whose CPU time is compared between two snapshots (in cores)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, int]] = {}
        self._machine = 0
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {name: _ticks(pids) for name, pids in self.groups.items()}
        self._machine = _machine_busy()

    def stop(self) -> dict[str, float]:
        """Cores used per group; a process that ended (or started) between the snapshots is left out."""
        elapsed = time.monotonic() - self._t0
        used = {}
        for name, pids in self.groups.items():
            now, before = _ticks(pids), self._start[name]
            used[f"cpu_{name}"] = sum(now[pid] - before[pid] for pid in now if pid in before) / TICKS / elapsed
        used["cpu_machine"] = (_machine_busy() - self._machine) / TICKS / elapsed
        return used


def run_wrk(
    wrk: str, url: str, duration: int, connections: int, lua: Path | None, port: int, cpu: dict[str, list[int]]
) -> dict[str, float]:
    """One wrk run; the connection spread over the workers is sampled early, CPU use between 1 s and the end."""
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if lua:
        cmd += ["-s", str(lua)]
    spread: dict[int, int] = {}
    used: dict[str, float] = {}
    proc = subprocess.Popen([*cmd, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    groups = CpuGroups({"wrk": [proc.pid], **cpu})

    def sample() -> None:
        time.sleep(1.0)
        groups.start()
        time.sleep(min(1.0, duration / 2))
        spread.update(connections_per_worker(port))
        time.sleep(max(0.5, duration - 2.5))
        used.update(groups.stop())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=duration + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {err}")
    sampler.join()
    result = parse_wrk(out) | used
    total = sum(spread.values())
    result["busiest_worker_share"] = max(spread.values()) / total if total else 0.0
    result["busiest_worker_pid"] = float(max(spread, key=lambda pid: spread[pid])) if spread else 0.0
    return result


def balanced_run(
    wrk: str, name: str, url: str, args: argparse.Namespace, lua: Path | None, port: int, cpu: dict[str, list[int]]
) -> dict[str, float]:
    for attempt in range(MAX_RERUNS + 1):
        result = run_wrk(wrk, url, args.duration, args.connections, lua, port, cpu)
        if result["busiest_worker_share"] <= IMBALANCE:
            result["reruns"] = float(attempt)
            return result
        share = result["busiest_worker_share"]
        print(f"  {name}: one worker held {share:.0%} of the connections (run {attempt + 1}); running it again")
    result["imbalanced"] = 1.0
    result["reruns"] = float(MAX_RERUNS)
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


async def clone_users(db_url: str, first: int, count: int) -> list[int]:
    """`count` more accounts copied from the registered one (same password hash): registering each through the
    API would cost two argon2 hashes apiece, minutes on a busy 2-core machine."""
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        columns = [
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'users' "
                "AND column_name NOT IN ('id', 'email') ORDER BY ordinal_position"
            )
        ]
        listed = ", ".join(columns)
        rows = await conn.fetch(
            f"INSERT INTO users ({listed}, email) SELECT {listed}, 'bench' || g || '@example.com' "
            "FROM users, generate_series(1, $2) AS g WHERE users.id = $1 ORDER BY g RETURNING id",
            first,
            count,
        )
        return [int(r["id"]) for r in rows]
    finally:
        await conn.close()


def make_users(url: str, db_url: str, secret: str, count: int) -> tuple[list[str], list[int]]:
    """One account registered and logged in through the API, the others cloned in the database; every token minted
    as the API does (`timetodo.core.security.create_access_token`, version 0)."""
    from datetime import timedelta

    from timetodo.core.security import create_access_token

    with httpx.Client(base_url=url, timeout=60) as c:
        email = "bench0@example.com"
        c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}).raise_for_status()
        resp = c.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
        resp.raise_for_status()
        token = resp.json()["access_token"]
        first = c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).json()["id"]
    ids = [first, *asyncio.run(clone_users(db_url, first, count - 1))]
    tokens = [token] + [create_access_token(secret, i, timedelta(hours=4)) for i in ids[1:]]
    return tokens, ids


# profile --------------------------------------------------------------------------------------------------------


def package_of(frame: str) -> str:
    """The top-level package (or stdlib module) of a py-spy frame `func (path/file.py:line)`: "asyncpg", "timetodo"."""
    location = frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]
    if not location:
        return "(native)"
    head = location.split("/", 1)[0]
    return head.removesuffix(".py")


Profile = tuple[list[tuple[str, float, float]], dict[str, float]]


def profile_worker(pid: int, seconds: int, out: Path) -> Profile:
    """py-spy samples of one worker: (frame, self share, inclusive share), the top 15 by self time; and the self
    share of each package (`package_of` the sample's innermost frame: where the CPU went, layer by layer)."""
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
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        packages[package_of(frames[-1])] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return [], {}
    top = [(frame, n / total, inclusive[frame] / total) for frame, n in own.most_common(15)]
    return top, {package: n / total for package, n in packages.most_common()}


# main -----------------------------------------------------------------------------------------------------------


def start_bare(port: int, payload: Path, log: Path) -> subprocess.Popen[bytes]:
    """The bare endpoint under uvicorn with a listening socket per worker, as `timetodo serve` (with uvicorn's shared
    socket one worker often held nearly all the connections: the bare figure, hence every ratio, was noise)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bare_app", str(port), str(WORKERS)],
        cwd=ROOT,
        env={**os.environ, "BARE_PAYLOAD": str(payload)},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def start_floor(port: int, db_url: str, log: Path) -> subprocess.Popen[bytes]:
    """The floor endpoints (`bench.floor_app`) on the API's database, served exactly as the bare endpoint."""
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    return subprocess.Popen(
        [sys.executable, "-m", "bench.floor_app", str(port), str(WORKERS), dsn],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_answer(url: str, **request: object) -> httpx.Response:
    """The first answer of a server that is starting (connection refused meanwhile), at most 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.request(url=url, timeout=10, **request)  # type: ignore[arg-type]
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def check_floor(url: str, target: Target, page: bytes) -> None:
    """The floor answers what our endpoints answer: the same list page, byte for byte, and a created task with the
    same document as ours (but its id and times)."""
    floor_page = wait_answer(f"{url}/floor-list", method="GET", headers={"X-User": str(target.ids[0])})
    if floor_page.content != page:
        raise RuntimeError(f"floor-list differs from our list page:\n{floor_page.text[:300]}\n{page[:300]!r}")
    ours = httpx.post(
        f"{target.server.url}/api/v1/tasks",
        content=CREATE_BODY,
        headers={"Authorization": f"Bearer {target.tokens[0]}", "Content-Type": "application/json"},
    )
    floor = httpx.post(f"{url}/floor-create", content=CREATE_BODY, headers={"X-User": str(target.ids[0])})
    if ours.status_code != 201 or floor.status_code != 201:
        raise RuntimeError(f"create: ours {ours.status_code} {ours.text[:200]}, floor {floor.status_code} {floor.text}")
    varying = {"id", "created_at", "updated_at"}
    mine, theirs = ours.json(), floor.json()
    if list(mine) != list(theirs) or {k: v for k, v in mine.items() if k not in varying} != {
        k: v for k, v in theirs.items() if k not in varying
    }:
        raise RuntimeError(f"floor-create differs from our create:\n{floor.text}\n{ours.text}")


class GranianServer(ServerProcess):
    """The app under Granian (`uv run --with granian python bench/api.py --servers granian`): same factory, workers,
    uvloop; migrations applied first with `timetodo db upgrade`; Granian's own access log off (the app logs)."""

    def __init__(self, env: dict[str, str], workdir: Path, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"granian-{self.port}.log"
        self.workdir = workdir
        prom = workdir / "prometheus"
        prom.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **env, "PROMETHEUS_MULTIPROC_DIR": str(prom)}
        subprocess.run([TIMETODO, "db", "upgrade"], env=full_env, cwd=workdir, check=True, capture_output=True)
        granian = Path(sys.executable).with_name("granian")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(granian),
                *("--interface", "asgi", "--factory", "--host", "127.0.0.1", "--port", str(self.port)),
                *("--workers", str(workers), "--loop", "uvloop", "--no-access-log", "--log-level", "warning"),
                "timetodo.main:create_app_from_env",
            ],
            env=full_env,
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )


SERVE_ARGS = {"reuseport": ["--reuse-port"], "shared": ["--shared-socket"]}


@dataclass
class Target:
    """One API server under test: its own database (same data as the others), users, wrk scripts."""

    name: str
    server: ServerProcess
    db_url: str
    tokens: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    list_lua: Path | None = None
    create_lua: Path | None = None


def floor_of(name: str) -> str | None:
    """The floor run an API run is compared with: "branch list" → "floor-list"."""
    endpoint = name.rpartition(" ")[2]
    return f"floor-{endpoint}" if " " in name and endpoint in ("list", "create") else None


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    medians = {name: sorted(runs, key=lambda r: r["rps"])[len(runs) // 2] for name, runs in results.items()}
    bare = medians["bare"]["rps"]

    def vs_floor(name: str) -> str:
        floor = floor_of(name)
        return f"{medians[name]['rps'] / medians[floor]['rps']:>9.1%}" if floor in medians else f"{'':>9}"

    print(
        f"\n{args.users} users × {args.tasks_per_user} tasks, {WORKERS} workers each, wrk -t1 -c{args.connections} "
        f"-d{args.duration}s, median of {args.rounds} interleaved rounds\n"
    )
    print(
        f"{'run':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'vs bare':>9}{'vs floor':>9}{'non-2xx':>8}"
        f"  cores: {'wrk':>5}{'app':>6}{'pg':>6}{'redis':>6}{'all':>6}  CPU ms/req: {'app':>5}{'pg':>6}"
        "  rounds (req/s)"
    )
    for name, r in medians.items():
        rounds = " / ".join(f"{run['rps']:.0f}" for run in results[name])
        print(
            f"{name:<20}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['rps'] / bare:>9.1%}{vs_floor(name)}"
            f"{r['non_2xx']:>8.0f}         {r.get('cpu_wrk', 0):>5.2f}{r.get('cpu_workers', 0):>6.2f}"
            f"{r.get('cpu_postgres', 0):>6.2f}{r.get('cpu_redis', 0):>6.2f}{r.get('cpu_machine', 0):>6.2f}"
            f"             {1000 * r.get('cpu_workers', 0) / r['rps']:>5.2f}{1000 * r.get('cpu_postgres', 0) / r['rps']:>6.2f}"
            f"  {rounds}"
        )
    print("(CPU ms/req: the cores used over the requests served — the figure that holds on a shared machine)")
    compared = [(name, floor) for name in medians if (floor := floor_of(name)) in medians]
    if compared:
        print("\nours vs the floor (the same database work, no auth/middleware/guards: bench/floor_app.py):")
    for name, floor in compared:
        ours, least = medians[name], medians[floor]
        per_round = " / ".join(
            f"{a['rps'] / b['rps']:.0%}" for a, b in zip(results[name], results[floor], strict=False)
        )

        def per_req(r: dict[str, float], group: str) -> float:
            return 1000 * r.get(f"cpu_{group}", 0) / r["rps"]

        print(
            f"  {name}: {ours['rps'] / least['rps']:.1%} of {floor}'s req/s (rounds: {per_round}); "
            f"p99 {ours['p99_ms']:.1f} vs {least['p99_ms']:.1f} ms; CPU ms/req app {per_req(ours, 'workers'):.2f} vs "
            f"{per_req(least, 'workers'):.2f}, pg {per_req(ours, 'postgres'):.2f} vs {per_req(least, 'postgres'):.2f}"
        )
    print("\ntargets: list-50 ≥ 15 % of bare with p99 < 25 ms, create ≥ 8 % of bare with p99 < 50 ms")
    return medians


def report_packages(by_package: dict[str, dict[str, float]], medians: dict[str, dict[str, float]]) -> None:
    """App CPU per request split by the package the profile found it in: each package's py-spy self share times the
    workers' CPU ms/req of the endpoint's median round — ours next to its floor says which layers cost the difference.
    ("asyncio": the event loop's own time, uvloop's C code included; "(native)": frames py-spy could not name.)
    py-spy samples a thread that can run, not only one that runs: on a machine with more runnable processes than
    cores, time spent waiting for a core is charged where the thread was preempted (often the socket write that woke
    wrk, `RequestResponseCycle.send`) — trust the split on a quiet machine; the total is /proc's, load-proof."""
    runs = list(by_package)
    totals: collections.Counter[str] = collections.Counter()
    per_req = {key: 1000 * medians[key].get("cpu_workers", 0) / medians[key]["rps"] for key in runs}
    for key in runs:
        for package, share in by_package[key].items():
            totals[package] += share * per_req[key]
    shown = [package for package, _ in totals.most_common(14)]
    print("\napp CPU ms/req by package (py-spy self share × the median round's CPU ms/req of the workers)")
    print(f"  {'package':<20}" + "".join(f"{key:>15}" for key in runs))
    for package in shown:
        print(f"  {package:<20}" + "".join(f"{by_package[key].get(package, 0) * per_req[key]:>15.3f}" for key in runs))
    rest = {key: sum(v for p, v in by_package[key].items() if p not in shown) * per_req[key] for key in runs}
    print(f"  {'(the rest)':<20}" + "".join(f"{rest[key]:>15.3f}" for key in runs))
    print(f"  {'total':<20}" + "".join(f"{per_req[key]:>15.3f}" for key in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--tasks-per-user", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="another source tree (its `src`) to run side by side")
    parser.add_argument(
        "--servers", default="", help="this checkout served several ways, side by side: reuseport, shared, granian"
    )
    parser.add_argument("--endpoints", default="list,create", help="comma-separated: list, create")
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the floor endpoints (bench/floor_app.py) on the first target's database (default: on)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy top frames of the busiest worker")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "out" / "api.json")
    args = parser.parse_args()
    endpoints = [e for e in args.endpoints.split(",") if e]
    load = {"start": os.getloadavg()}  # the machine may be shared: say how busy it was

    wrk = ensure_tool("wrk", "wrk")
    ensure_tool("ss", "iproute2")
    services = Services.start() if not os.environ.get("TIMETODO_TEST_POSTGRES_URL") else None
    pg_url = services.postgres_url if services else os.environ["TIMETODO_TEST_POSTGRES_URL"]
    redis_url = services.redis_url if services else os.environ.get("TIMETODO_TEST_REDIS_URL")
    cpu_fixed: dict[str, list[int]] = {}
    if services is not None and services.base_dir is not None:
        postmaster = int((services.base_dir / "pg" / "data" / "postmaster.pid").read_text().split()[0])
        cpu_fixed["redis"] = [int((services.base_dir / "redis" / "redis.pid").read_text().strip())]
    work = Path(tempfile.mkdtemp(prefix="ttd-bench-"))
    env_base = {
        "LOG_LEVEL": "INFO",  # the default: every request writes its access-log line, as in production
        "ACCESS_TOKEN_TTL_MINUTES": "240",
        "LOGIN_ATTEMPTS_PER_MINUTE": "1000",
        "REGISTRATIONS_PER_HOUR": "100000",
    }
    env_base_secret = server_env("", None, work)["SECRET_KEY"]
    specs: list[tuple[str, dict[str, str], list[str]]] = []
    if args.baseline_src:
        specs.append(("baseline", {"PYTHONPATH": str(args.baseline_src.resolve())}, []))
    for served in [s for s in args.servers.split(",") if s] or ["branch"]:
        specs.append((served, {}, SERVE_ARGS.get(served, [])))
    targets: list[Target] = []
    bare_port = free_port()
    bare: subprocess.Popen[bytes] | None = None
    floor: subprocess.Popen[bytes] | None = None
    floor_port = free_port()
    floor_lua: dict[str, Path] = {}
    results: dict[str, list[dict[str, float]]] = {"bare": []}
    profiles: dict[str, list[tuple[str, float, float]]] = {}
    by_package: dict[str, dict[str, float]] = {}
    try:
        for name, extra_env, serve_args in specs:
            db_url = asyncio.run(create_database(pg_url))
            env = server_env(db_url, redis_url, work / name / "data") | env_base | extra_env
            (work / name).mkdir(parents=True, exist_ok=True)
            server: ServerProcess = (
                GranianServer(env, work / name, WORKERS)
                if name == "granian"
                else ServerProcess(env, work / name, workers=WORKERS, args=serve_args)
            )
            targets.append(Target(name, server, db_url))
        for target in targets:
            target.server.wait_ready(timeout=300)  # 1 s idle, 30 s+ on a busy shared machine
            tokens, ids = make_users(target.server.url, target.db_url, env_base_secret, args.users)
            target.tokens, target.ids = tokens, ids
            asyncio.run(load_tasks(target.db_url, ids, args.tasks_per_user))
            target.list_lua, target.create_lua = work / f"{target.name}-list.lua", work / f"{target.name}-create.lua"
            target.list_lua.write_text(rotating_lua(tokens, "GET", "/api/v1/tasks?limit=50", None))
            target.create_lua.write_text(rotating_lua(tokens, "POST", "/api/v1/tasks", CREATE_BODY))
        first = targets[0]
        page = httpx.get(
            f"{first.server.url}/api/v1/tasks?limit=50", headers={"Authorization": f"Bearer {first.tokens[0]}"}
        )
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
        bare_url = f"http://127.0.0.1:{bare_port}/bare"
        floor_url = f"http://127.0.0.1:{floor_port}"
        if args.floor:  # on the first target's database: the same data, the same users
            floor = start_floor(floor_port, first.db_url, work / "floor.log")
            check_floor(floor_url, first, page.content)
            user_ids = [str(i) for i in first.ids]
            for endpoint, method, body in (("list", "GET", None), ("create", "POST", CREATE_BODY)):
                floor_lua[endpoint] = work / f"floor-{endpoint}.lua"
                lua_text = rotating_lua(user_ids, method, f"/floor-{endpoint}", body, header="X-User", prefix="")
                floor_lua[endpoint].write_text(lua_text)

        def cpu_of(server_pid: int) -> dict[str, list[int]]:
            groups = {"workers": children_of(server_pid), **cpu_fixed}
            if services is not None:
                groups["postgres"] = children_of(postmaster)
            return groups

        for target in targets:  # warm-up
            run_wrk(wrk, f"{target.server.url}/api/v1/tasks", 3, args.connections, target.list_lua, 0, {})
        if floor is not None:
            run_wrk(wrk, f"{floor_url}/floor-list", 3, args.connections, floor_lua["list"], 0, {})
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}")
            results["bare"].append(balanced_run(wrk, "bare", bare_url, args, None, bare_port, cpu_of(bare.pid)))
            for endpoint in endpoints:
                for target in targets:
                    lua = target.list_lua if endpoint == "list" else target.create_lua
                    key = f"{target.name} {endpoint}"
                    url = f"{target.server.url}/api/v1/tasks"
                    cpu = cpu_of(target.server.proc.pid)
                    results.setdefault(key, []).append(balanced_run(wrk, key, url, args, lua, target.server.port, cpu))
                if floor is not None:
                    key, url = f"floor-{endpoint}", f"{floor_url}/floor-{endpoint}"
                    results.setdefault(key, []).append(
                        balanced_run(wrk, key, url, args, floor_lua[endpoint], floor_port, cpu_of(floor.pid))
                    )
        if args.profile:
            profiled: list[tuple[str, str, Path | None, int]] = []  # (key, url, wrk script, port)
            for endpoint in endpoints:
                for target in targets:
                    lua = target.list_lua if endpoint == "list" else target.create_lua
                    url = f"{target.server.url}/api/v1/tasks"
                    profiled.append((f"{target.name} {endpoint}", url, lua, target.server.port))
                if floor is not None:
                    url = f"{floor_url}/floor-{endpoint}"
                    profiled.append((f"floor-{endpoint}", url, floor_lua[endpoint], floor_port))
            for key, url, lua, port in profiled:
                pid = int(results[key][-1]["busiest_worker_pid"])
                out: list[Profile] = []
                spy = threading.Thread(
                    target=lambda p=pid, o=out, k=key: o.append(
                        profile_worker(p, args.duration, work / k.replace(" ", "-"))
                    )
                )
                spy.start()
                run_wrk(wrk, url, args.duration + 2, args.connections, lua, port, {})
                spy.join()
                profiles[key], by_package[key] = out[0] if out else ([], {})
    finally:
        for target in targets:
            target.server.stop()
        for started in (bare, floor):
            if started is not None:
                started.terminate()
                started.wait(10)
        if services:
            services.stop()
        shutil.rmtree(work, ignore_errors=True)

    load["end"] = os.getloadavg()
    medians = report(results, args)
    print(
        "load average (1/5/15 min): " + ", ".join(f"{k} {' / '.join(f'{v:.1f}' for v in vs)}" for k, vs in load.items())
    )
    for key, profile in profiles.items():
        print(f"\npy-spy, busiest worker under {key}: self% / inclusive%  frame")
        for frame, own, incl in profile:
            print(f"  {own:6.1%} {incl:7.1%}  {frame}")
    if by_package:
        report_packages(by_package, medians)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "rounds": results,
                "medians": medians,
                "profiles": profiles,
                "profile_packages": by_package,
                "load_average": load,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
