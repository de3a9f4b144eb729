"""Rollback benchmark (issue 13, item 5): what the target wrote since the switch, found and carried back, at 1 GB.

Generates `--mb` of tasks in a database with the application's schema (the source), copies it twice with
`CREATE DATABASE … TEMPLATE` (the cutover snapshot, and the target as the cutover left it), records the target's
transaction horizon as the cutover does, then makes `--writes` single-statement writes on the target (60 % inserts,
30 % updates of random existing tasks, 10 % deletes), and times in the same run:

    baseline   compute_delta(target, snapshot)               every row of both sides hashed and merge-joined
    fast       compute_delta_since(target, snapshot, horizon) rows written after the horizon by xmin, deletions
                                                             by counts per key range
    reverse    stream_delta(target, source): the keys the target wrote, read from a logical replication slot
               created on the target with the horizon (strategy logical's reverse stream), looked up on both sides
    apply      apply_delta(fast delta → source), in one transaction, checked against the snapshot
    check      compute_delta(target, source) must be empty   (the source now equals the target)

The three deltas must be equal (the benchmark exits 1 otherwise). Starts its own PostgreSQL (scripts/postgres.sh).

    uv run python bench/rollback.py [--mb 1024] [--writes 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import free_port  # noqa: E402

from bench.migrate import fill_database  # noqa: E402
from timetodo.core.schema import upgrade_async  # noqa: E402
from timetodo.ops.adapters.postgres import list_tables  # noqa: E402
from timetodo.ops.adapters.postgres import reverse as rev  # noqa: E402
from timetodo.ops.migrate.rollback import apply_delta, compute_delta, compute_delta_since, xid_horizon  # noqa: E402
from timetodo.ops.migrate.rollback.reverse import stream_delta  # noqa: E402


def with_db(server_url: str, name: str) -> str:
    return f"{server_url.rpartition('/')[0]}/{name}"


async def admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def make_source(server_url: str, mb: int) -> tuple[str, int]:
    await admin(server_url, "CREATE DATABASE bench_rb_source")
    url = with_db(server_url, "bench_rb_source")
    await upgrade_async(url.replace("postgresql://", "postgresql+asyncpg://"))
    conn = await asyncpg.connect(url)
    try:
        owner = int(
            await conn.fetchval(
                "INSERT INTO users (email, password_hash, timezone, locale, is_admin, is_active, created_at, "
                "updated_at) VALUES ('bench@example.com', 'x', 'UTC', 'en', false, true, now(), now()) RETURNING id"
            )
        )
    finally:
        await conn.close()
    size = await fill_database(url, owner, mb)
    return url, size


async def target_writes(url: str, count: int, seed: int = 7) -> dict[str, int]:
    """`count` single-statement writes, each its own transaction, as the app makes them."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(url)
    done = {"inserted": 0, "updated": 0, "deleted": 0}
    try:
        owner = int(await conn.fetchval("SELECT min(id) FROM users"))
        low, high = (int(v) for v in await conn.fetchrow("SELECT min(id), max(id) FROM tasks"))
        for n in range(count):
            kind = rng.random()
            if kind < 0.6:
                await conn.execute(
                    "INSERT INTO tasks (owner_id, title, description, priority, labels, position, done, created_at, "
                    "updated_at, sync_version) VALUES ($1, $2, 'on the target', 2, '[]', 0, false, now(), now(), 1)",
                    owner,
                    f"target write {n}",
                )
                done["inserted"] += 1
            elif kind < 0.9:
                status = await conn.execute(
                    "UPDATE tasks SET title = title || ' (edited)', updated_at = now() WHERE id = $1",
                    rng.randint(low, high),
                )
                done["updated"] += int(status.split()[-1])
            else:
                status = await conn.execute("DELETE FROM tasks WHERE id = $1", rng.randint(low, high))
                done["deleted"] += int(status.split()[-1])
    finally:
        await conn.close()
    return done


async def timed(coro: Any) -> tuple[Any, float]:
    started = time.monotonic()
    value = await coro
    return value, time.monotonic() - started


def as_sets(delta: Any) -> dict[str, tuple[set[Any], set[Any], set[Any]]]:
    return {n: (set(t.inserted), set(t.updated), set(t.deleted)) for n, t in delta.tables.items()}


async def run(args: argparse.Namespace, server_url: str) -> dict[str, Any]:
    print(f"generating ~{args.mb} MB …", file=sys.stderr)
    source, size = await make_source(server_url, args.mb)
    await admin(server_url, "CREATE DATABASE bench_rb_snapshot TEMPLATE bench_rb_source")
    await admin(server_url, "CREATE DATABASE bench_rb_target TEMPLATE bench_rb_source")
    snapshot, target = with_db(server_url, "bench_rb_snapshot"), with_db(server_url, "bench_rb_target")
    exclude = ("alembic_version", "app_state")
    conn = await asyncpg.connect(target)
    try:  # the reverse stream, as the logical cutover starts it: with the horizon, before the target's first write
        await rev.start(conn, "bench_rb", [t for t in await list_tables(conn) if t not in exclude])
    finally:
        await conn.close()
    horizon = await xid_horizon(target)
    print(f"{args.writes} writes on the target …", file=sys.stderr)
    writes, write_s = await timed(target_writes(target, args.writes))
    print("full comparison (baseline) …", file=sys.stderr)
    full, full_s = await timed(compute_delta(target, snapshot, exclude=exclude))
    print("since the horizon …", file=sys.stderr)
    (fast, compared_in_full), fast_s = await timed(compute_delta_since(target, snapshot, horizon, exclude=exclude))
    print("from the reverse stream …", file=sys.stderr)
    (streamed, changes), stream_s = await timed(stream_delta(target, source, "bench_rb", exclude))
    same = (
        as_sets(full)
        == as_sets(fast)
        == {n: t for n, t in as_sets(streamed).items() if any(t)}
        | {n: t for n, t in as_sets(fast).items() if not any(t)}
    )
    print("apply to the source …", file=sys.stderr)
    applied, apply_s = await timed(apply_delta(fast, target, source, snapshot_url=snapshot))
    left, check_s = await timed(compute_delta(target, source, exclude=exclude))
    return {
        "database_bytes": size,
        "writes": writes,
        "write_seconds": round(write_s, 2),
        "delta": fast.totals(),
        "full_seconds": round(full_s, 2),
        "since_seconds": round(fast_s, 2),
        "ratio": round(fast_s / full_s, 4),
        "stream_seconds": round(stream_s, 2),
        "stream_read_seconds": round(changes.seconds, 2),
        "stream_ratio_to_since": round(stream_s / fast_s, 4),
        "compared_in_full": compared_in_full,
        "apply_seconds": round(apply_s, 2),
        "applied": applied.to_dict().get("totals", {}),
        "check_seconds": round(check_s, 2),
        "equal_deltas": same,
        "source_equals_target": left.is_empty,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--writes", type=int, default=10_000)
    args = parser.parse_args()
    pg_dir = Path(tempfile.mkdtemp(prefix="ttd-bench-rollback-"))
    try:
        out = subprocess.run(
            ["bash", "scripts/postgres.sh", "start", str(pg_dir), str(free_port())],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        server_url = out.stdout.strip().splitlines()[-1].replace("postgresql+asyncpg://", "postgresql://")
        result = asyncio.run(run(args, server_url))
    finally:
        subprocess.run(["bash", "scripts/postgres.sh", "stop", str(pg_dir)], cwd=ROOT, capture_output=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
    mb = result["database_bytes"] / 1e6
    w = result["writes"]
    print(
        f"database {mb:.0f} MB; on the target: {w['inserted']} inserts, {w['updated']} updates, {w['deleted']} deletes"
    )
    print(f"  delta: {result['delta']}")
    print(f"  full comparison (baseline)   {result['full_seconds']:8.2f} s")
    print(f"  since the horizon            {result['since_seconds']:8.2f} s   ({result['ratio']:.3f}× of the baseline)")
    print(
        f"  from the reverse stream      {result['stream_seconds']:8.2f} s   ({result['stream_ratio_to_since']:.3f}× of "
        f"since the horizon; the slot read {result['stream_read_seconds']:.2f} s)"
    )
    print(f"  apply to the source          {result['apply_seconds']:8.2f} s")
    print(f"  check: source == target      {result['check_seconds']:8.2f} s   {result['source_equals_target']}")
    print(json.dumps(result))
    if not (result["equal_deltas"] and result["source_equals_target"]):
        print("the two deltas differ, or the source does not equal the target", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
