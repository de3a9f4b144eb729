"""Migration benchmark: a generated deployment moved with `timetodo migrate run` over loopback SSH.

Builds the same source/target pair as the end-to-end test (tests/e2e/migrate_world.py: PostgreSQL A + Redis A +
`timetodo serve` A, PostgreSQL B + Redis B behind sshd on 127.0.0.1), fills the source with `--db-mb` of tasks,
`--keys` Redis keys and `--files-mb` of uploads, then measures in the same run:

* baseline 1: `pg_dump -Fd -j2` + `pg_restore -j2` of the source into a scratch database on server B;
* baseline 2: a plain pipelined DUMP/RESTORE loop (one connection each side) into a scratch Redis database on B;
* `timetodo migrate run --yes` (backup, sync, cutover, validate …) once per strategy (`--strategies dump,delta,logical`),
  each under a steady writer (~50 writes/s, the end-to-end test's), each followed by `timetodo migrate rollback`
  so the next one starts from the source again: time per phase, the write freeze and the in-freeze seconds of each
  cutover phase, side by side;
* for `logical`, just before its rollback (after `--target-writes` rows updated on the target): the database part
  of a rollback found from the reverse stream vs by the row delta (xid horizon) vs by comparing every row, on the
  same target — read-only, then the rollback itself (from the reverse stream).

    uv run python bench/migrate.py [--db-mb 1024] [--keys 1000000] [--files-mb 1024] [--strategies dump,delta,logical]
                                   [--target-writes 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

from tests.e2e.migrate_world import World, Writer, make_world, plain, stop_world  # noqa: E402
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


def longest_gap(writer: Writer, start: float, end: float) -> float:
    """The longest time between two acknowledged writes of `writer` during `migrate run` (not its rollback)."""
    stamps = sorted(t for t in writer.last_ack if start <= t <= end)
    return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


async def rollback_paths(world: World, work: Path, target_writes: int) -> dict[str, Any]:
    """Strategy logical, before its rollback: `target_writes` rows updated on the target (one transaction), then the
    database part of a rollback found three ways on the same target (read-only): the reverse stream's keys looked up
    on both sides; the row delta by the target's xid horizon; every row compared."""
    from timetodo.ops.migrate.rollback import compute_delta, compute_delta_since
    from timetodo.ops.migrate.rollback.reverse import stream_delta

    facts = json.loads((work / "state.json").read_text())["facts"]
    target = plain(world.target_db)
    snapshot = target.rsplit("/", 1)[0] + "/" + facts["cutover_phases"]["snapshot"]["result"]["database"]
    exclude = ("alembic_version", "app_state")
    if target_writes:
        conn = await asyncpg.connect(target)
        try:
            await conn.execute(
                "UPDATE tasks SET title = title || ' (target)' WHERE id IN "
                "(SELECT id FROM tasks ORDER BY random() LIMIT $1)",
                target_writes,
            )
        finally:
            await conn.close()
    started = time.monotonic()
    streamed, changes = await stream_delta(target, plain(world.source_db), "timetodo_migrate", exclude)
    stream_seconds = time.monotonic() - started
    started = time.monotonic()
    since, full = await compute_delta_since(target, snapshot, int(facts["target_xid_horizon"]), exclude=exclude)
    since_seconds = time.monotonic() - started
    started = time.monotonic()
    every = await compute_delta(target, snapshot, exclude=exclude)
    every_seconds = time.monotonic() - started
    return {
        "target_writes": target_writes,
        "reverse_stream": {"seconds": stream_seconds, "rows": streamed.total, "stream": changes.to_dict()},
        "xid_horizon": {"seconds": since_seconds, "rows": since.total, "compared_in_full": full},
        "every_row": {"seconds": every_seconds, "rows": every.total},
    }


def migrate_with(
    world: World, base: Path, strategy: str, token: str, *, skip_backup: bool, target_writes: int = 0
) -> dict[str, Any]:
    """One `migrate run` with `strategy` under the steady writer, then a rollback; the final report and timings."""
    config = base / f"migration-{strategy}.toml"
    text = world.config.read_text().replace('work_dir = "work"', f'work_dir = "work-{strategy}"')
    config.write_text(text.replace('app_name = "timetodo"', f'app_name = "timetodo"\nstrategy = "{strategy}"'))
    flags = ["--skip-backup"] if skip_backup else []
    # a second writer keeps using the old address after the switch (a client whose DNS has not moved yet): what it
    # sees is the client-visible downtime (forwarding should make it the freeze and nothing more)
    old_address = base / f"old-address-{strategy}"
    old_address.write_text(world.current.read_text())
    with (
        Writer(world.current, token, f"bench-{strategy}") as writer,
        Writer(old_address, token, f"old-{strategy}") as stale,
    ):
        started = time.monotonic()
        result = world.migrate("run", "--yes", *flags, config=config, timeout=7200)
        total = time.monotonic() - started
        validation = "passed"
        if result.returncode == 5:  # validation failed: the freeze figures still stand; the run is marked
            validation = "FAILED: " + (result.stdout + result.stderr).strip()[-600:]
            print(f"  validation failed ({strategy}); figures kept, marked", flush=True)
        elif result.returncode != 0:
            raise SystemExit(result.stdout + result.stderr)
        paths = None
        if strategy == "logical":
            paths = asyncio.run(rollback_paths(world, base / f"work-{strategy}", target_writes))
        rollback_started = time.monotonic()
        back = world.migrate("rollback", "--force", config=config, timeout=7200)
        rollback = time.monotonic() - rollback_started
        if back.returncode != 0:
            raise SystemExit(back.stdout + back.stderr)
    work = base / f"work-{strategy}"
    report_file = work / "migration_final_report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {"phases": []}
    rolled_back = json.loads((work / "migration_rollback_report.json").read_text())
    state = json.loads((work / "state.json").read_text())
    cutover = next(run for run in reversed(state["history"]) if run["step"] == "cutover" and run["status"] == "done")
    return {
        "strategy": strategy,
        "total_seconds": total,
        "rollback_seconds": rollback,
        "rollback_database": {k: v for k, v in rolled_back.get("database", {}).items() if k != "delta"},
        "rollback_paths": paths,
        "write_freeze_seconds": cutover["result"]["write_downtime_seconds"],
        "in_freeze_seconds": cutover["result"].get("in_freeze_seconds", {}),
        "final_copy": cutover["result"]["phases"].get("final_copy", {}).get("result"),
        "pre_pass": cutover["result"]["phases"].get("pre_pass", {}).get("result"),
        "catch_up": cutover["result"]["phases"].get("catch_up", {}).get("result"),
        "writes_acked": len(writer.acked) + len(stale.acked),
        "longest_gap_seconds": longest_gap(writer, started, started + total),
        "old_address_longest_gap_seconds": longest_gap(stale, started, started + total),
        "old_address_failures": stale.failures,
        "validation": validation,
        "report": report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-mb", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--files-mb", type=int, default=1024)
    parser.add_argument("--strategies", default="dump,delta,logical", help="comma-separated, run in this order")
    parser.add_argument("--skip-backup", action="store_true", help="pass --skip-backup to every run")
    parser.add_argument(
        "--target-writes", type=int, default=0, help="logical: rows updated on the target before its rollback"
    )
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "out" / "migrate.json")
    args = parser.parse_args()
    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]

    services = Services.start()
    base = Path(tempfile.mkdtemp(prefix="ttd-bench-migrate-"))
    world: World | None = None
    runs: list[dict[str, Any]] = []
    try:
        world = make_world(base, services, budget_minutes=60, seed=False)
        with httpx.Client(base_url=world.source.url) as c:
            c.post("/api/v1/auth/register", json={"email": "bench@example.com", "password": PASSWORD})
            login = c.post("/api/v1/auth/login", data={"username": "bench@example.com", "password": PASSWORD})
            token = login.json()["access_token"]
            me = c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        print("generating data …", flush=True)
        db_bytes = asyncio.run(fill_database(world.source_db, me.json()["id"], args.db_mb))
        fill_redis(world.source_redis, args.keys)
        fill_files(world.source_uploads, args.files_mb)

        pg = baseline_pg(world.source_db, plain(world.target_db), base)
        scratch_redis = world.target_redis.rsplit("/", 1)[0] + "/5"
        redis_loop = baseline_redis(world.source_redis, scratch_redis)
        for strategy in strategies:
            print(f"migrating with strategy {strategy} …", flush=True)
            # a fresh access token for each run's writer: the first one expires during a long 1 GB run (the
            # writer then had every write refused: 0 acknowledged)
            with httpx.Client(base_url=world.source.url) as c:
                login = c.post("/api/v1/auth/login", data={"username": "bench@example.com", "password": PASSWORD})
                token = login.json()["access_token"]
            runs.append(
                migrate_with(
                    world, base, strategy, token, skip_backup=args.skip_backup, target_writes=args.target_writes
                )
            )
    finally:
        if world is not None:
            stop_world(world)
        services.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"\nsource: {db_bytes / 1e6:,.0f} MB database, {args.keys:,} Redis keys, {args.files_mb:,} MB of files\n")
    base_pg = pg["dump"] + pg["restore"]
    for run in runs:
        phases = {p["step"]: p for p in run["report"]["phases"] if p.get("parent") is None}
        print(f"strategy {run['strategy']}: {run['writes_acked']:,} writes acknowledged during run + rollback")
        print(f"  {'phase':<12}{'seconds':>10}")
        for name, phase in phases.items():
            print(f"  {name:<12}{phase['seconds'] or 0:>10.1f}")
        print(f"  {'total':<12}{run['total_seconds']:>10.1f}")
        print(f"  validation: {run['validation']}")
        sync = phases["sync"]["result"] if "sync" in phases else {"redis": {}, "db": {"seconds": 0}}
        redis_s = float(sync["redis"].get("seconds", 0))
        wall = float(sync.get("wall_seconds", 0))
        db = sync["db"]
        sync_db = float(db["seconds"]) if "seconds" in db else db["dump_seconds"] + db["restore_seconds"]
        print(
            f"  sync copy side by side: {wall:.1f} s wall vs the two baselines one after the other "
            f"{base_pg + redis_loop:.1f} s → {wall / (base_pg + redis_loop):.2f}×; database {sync_db:.1f} s vs "
            f"pg_dump -Fd -j2 + pg_restore -j2 {base_pg:.1f} s; Redis {redis_s:.1f} s vs loop {redis_loop:.1f} s"
        )
        freeze = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in run["in_freeze_seconds"].items())
        print(f"  write freeze: {run['write_freeze_seconds']:.2f} s ({freeze})")
        print(
            f"  longest wait for an acknowledged write: {run['longest_gap_seconds']:.2f} s following DNS, "
            f"{run['old_address_longest_gap_seconds']:.2f} s on the old address "
            f"({run['old_address_failures']} refused or failed attempts there, retried)"
        )
        copy = run["final_copy"] or {}
        db = copy.get("db") or {}
        if db.get("strategy") == "delta":
            keys = copy.get("redis") or {}
            print(
                f"  in-freeze database: {db['chunks_copied']} of {db['chunks']} chunks, {db['rows']} rows "
                f"(hash {db['hash_seconds']:.2f} s — {db.get('hashing')}, re-hashed {db.get('chunks_rehashed')}; "
                f"compare {db['compare_seconds']:.2f} s, apply {db['apply_seconds']:.2f} s, all {db['seconds']:.2f} s); "
                f"Redis ({keys.get('method')}): {keys.get('keys')} keys of {keys.get('scanned')} "
                f"({float(keys.get('seconds') or 0):.2f} s); files {float((copy.get('files') or {}).get('seconds') or 0):.2f} s"
            )
        catch_up = run.get("catch_up") or {}
        if catch_up.get("strategy") == "logical":
            print(
                f"  in-freeze database: fence confirmed in {catch_up.get('fence_seconds')} s, "
                f"{catch_up.get('sequences')} sequences set (+{catch_up.get('sequence_gap')})"
            )
        print(f"  rollback: {run['rollback_seconds']:.1f} s")
        database = run.get("rollback_database") or {}
        if database:
            unusable = database.get("reverse_stream_unusable")
            print(
                f"  rollback database via {database.get('via')}: {float(database.get('seconds') or 0):.2f} s, "
                f"{(database.get('applied') or {}).get('totals')}"
                + (f" (reverse stream unusable: {unusable})" if unusable else "")
            )
        paths = run.get("rollback_paths")
        if paths:
            rs, xh, ev = paths["reverse_stream"], paths["xid_horizon"], paths["every_row"]
            print(
                f"  finding the target's writes ({paths['target_writes']} rows updated on it + the writer's): "
                f"reverse stream {rs['seconds']:.2f} s ({rs['rows']} rows, {rs['stream']['keys']} keys named) vs "
                f"xid horizon {xh['seconds']:.2f} s ({xh['rows']} rows) = {rs['seconds'] / max(xh['seconds'], 1e-9):.2f}× "
                f"vs every row {ev['seconds']:.2f} s ({ev['rows']} rows) = {rs['seconds'] / max(ev['seconds'], 1e-9):.2f}×"
            )
    by = {run["strategy"]: run["write_freeze_seconds"] for run in runs}
    for name in ("delta", "logical"):
        if "dump" in by and name in by:
            ratio = by[name] / by["dump"]
            print(f"\nwrite freeze {name} / dump: {by[name]:.2f} s / {by['dump']:.2f} s = {ratio:.2f}×")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "runs": runs,
                "baseline_pg": pg,
                "baseline_redis_seconds": redis_loop,
            },
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
