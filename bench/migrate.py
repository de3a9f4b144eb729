"""Migration benchmark: a generated deployment moved with `timetodo migrate run` over loopback SSH.

Builds the same source/target pair as the end-to-end test (tests/e2e/migrate_world.py: PostgreSQL A + Redis A +
`timetodo serve` A, PostgreSQL B + Redis B behind sshd on 127.0.0.1), fills the source with `--db-mb` of tasks,
`--keys` Redis keys and `--files-mb` of uploads, then measures in the same run:

* baseline 1: `pg_dump -Fd -j2` + `pg_restore -j2` of the source into a scratch database on server B;
* baseline 2: a plain pipelined DUMP/RESTORE loop (one connection each side) into a scratch Redis database on B;
* `timetodo migrate run --yes` (backup, sync, cutover, validate …): time per phase, the write downtime.

    uv run python bench/migrate.py [--db-mb 1024] [--keys 1000000] [--files-mb 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.migrate_world import World, make_world, plain, stop_world  # noqa: E402
from tests.support import PASSWORD, Services  # noqa: E402

from timetodo.ops.adapters.postgres import PgTarget, tool  # noqa: E402


async def fill_database(url: str, owner: int, mb: int) -> int:
    conn = await asyncpg.connect(url)
    try:
        rows = mb * 1024 * 1024 // 520  # ≈ 520 bytes per row with its index entries
        for start in range(0, rows, 200_000):
            await conn.execute(
                "INSERT INTO tasks (owner_id, title, description, priority, labels, position, done, created_at, "
                "updated_at, sync_version) SELECT $1, 'bench ' || g, repeat(md5(g::text), 12), 1 + g % 4, '[]', g, "
                "false, now(), now(), 1 FROM generate_series($2::int, $3::int) g",
                owner,
                start,
                min(rows, start + 200_000) - 1,
            )
        await conn.execute("ANALYZE")
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


def fill_redis(url: str, keys: int) -> None:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for n in range(keys):
        if n % 3 == 0:
            pipe.set(f"bench:{n}", os.urandom(32), ex=7200)
        else:
            pipe.set(f"bench:{n}", os.urandom(32))
        if n % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    client.close()


def fill_files(root: Path, mb: int) -> None:
    for _ in range(mb):
        name = os.urandom(32).hex()
        path = root / name[:2] / name[2:4] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1024 * 1024))


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.monotonic() - started


def baseline_pg(source_url: str, target_server_url: str, work: Path) -> dict[str, float]:
    src, dst_admin = PgTarget.from_url(source_url), PgTarget.from_url(target_server_url)
    scratch = target_server_url.rsplit("/", 1)[0] + "/bench_baseline"
    subprocess.run(
        [tool("psql"), f"--dbname={dst_admin.url}", "-qc", "DROP DATABASE IF EXISTS bench_baseline"],
        env=dst_admin.env(),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [tool("psql"), f"--dbname={dst_admin.url}", "-qc", "CREATE DATABASE bench_baseline"],
        env=dst_admin.env(),
        check=True,
        capture_output=True,
    )
    out = work / "baseline-dump"
    dump = run([tool("pg_dump"), "-Fd", "-j2", "-f", str(out), f"--dbname={src.url}"], src.env())
    target = PgTarget.from_url(scratch)
    restore = run([tool("pg_restore"), "-j2", "--no-owner", f"--dbname={target.url}", str(out)], target.env())
    shutil.rmtree(out)
    return {"dump": dump, "restore": restore}


def baseline_redis(source_url: str, target_url: str) -> float:
    """One connection each side: SCAN, pipelined DUMP+PTTL, pipelined RESTORE REPLACE."""
    src, dst = redis.Redis.from_url(source_url), redis.Redis.from_url(target_url)
    dst.flushdb()
    started = time.monotonic()
    for batch in _batches(src.scan_iter(count=1000), 1000):
        pipe = src.pipeline(transaction=False)
        for key in batch:
            pipe.dump(key)
            pipe.pttl(key)
        values = pipe.execute()
        out = dst.pipeline(transaction=False)
        for key, payload, ttl in zip(batch, values[0::2], values[1::2], strict=True):
            if payload is not None:
                out.restore(key, max(int(ttl), 0), payload, replace=True)
        out.execute()
    seconds = time.monotonic() - started
    dst.flushdb()
    return seconds


def _batches(items: Any, size: int) -> Any:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-mb", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--files-mb", type=int, default=1024)
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "out" / "migrate.json")
    args = parser.parse_args()

    services = Services.start()
    base = Path(tempfile.mkdtemp(prefix="ttd-bench-migrate-"))
    world: World | None = None
    try:
        world = make_world(base, services, budget_minutes=60, seed=False)
        with httpx.Client(base_url=world.source.url) as c:
            c.post("/api/v1/auth/register", json={"email": "bench@example.com", "password": PASSWORD})
            token = c.post("/api/v1/auth/login", data={"username": "bench@example.com", "password": PASSWORD})
            me = c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"})
        print("generating data …", flush=True)
        db_bytes = asyncio.run(fill_database(world.source_db, me.json()["id"], args.db_mb))
        fill_redis(world.source_redis, args.keys)
        fill_files(world.source_uploads, args.files_mb)

        pg = baseline_pg(world.source_db, plain(world.target_db), base)
        scratch_redis = world.target_redis.rsplit("/", 1)[0] + "/5"
        redis_loop = baseline_redis(world.source_redis, scratch_redis)

        started = time.monotonic()
        result = world.migrate("run", "--yes", timeout=7200)
        total = time.monotonic() - started
        if result.returncode != 0:
            raise SystemExit(result.stdout + result.stderr)
        report = json.loads((base / "work" / "migration_final_report.json").read_text())
    finally:
        if world is not None:
            stop_world(world)
        services.stop()
        shutil.rmtree(base, ignore_errors=True)

    phases = {p["step"]: p for p in report["phases"]}
    sync = phases["sync"]["result"]
    sync_db = sync["db"]["dump_seconds"] + sync["db"]["restore_seconds"]
    print(f"\nsource: {db_bytes / 1e6:,.0f} MB database, {args.keys:,} Redis keys, {args.files_mb:,} MB of files\n")
    print(f"{'phase':<12}{'seconds':>10}")
    for name, phase in phases.items():
        print(f"{name:<12}{phase['seconds'] or 0:>10.1f}")
    print(f"{'total':<12}{total:>10.1f}\n")
    base_pg = pg["dump"] + pg["restore"]
    redis_s = float(sync["redis"].get("seconds", 0))
    wall = float(sync.get("wall_seconds", 0))
    print(
        f"sync copy, database + Redis + files side by side: {wall:.1f} s wall vs the two baselines run one after "
        f"the other {base_pg + redis_loop:.1f} s → {wall / (base_pg + redis_loop):.2f}×"
    )
    print(f"  database (dump + restore): {sync_db:.1f} s vs pg_dump -Fd -j2 + pg_restore -j2 alone {base_pg:.1f} s")
    print(f"  Redis: {redis_s:.1f} s vs a plain pipelined DUMP/RESTORE loop alone {redis_loop:.1f} s")
    print(f"  files (rsync over SSH via staging): {float(sync['files']['seconds']):.1f} s")
    print(f"measured write downtime: {report['write_downtime_seconds']:.1f} s")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "report": report,
                "baseline_pg": pg,
                "baseline_redis_seconds": redis_loop,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
