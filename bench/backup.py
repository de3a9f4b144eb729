"""Backup benchmark: `timetodo backup create + verify + restore` vs plain `pg_dump -Fc` + `pg_restore`.

Generates about `--mb` MB in a fresh PostgreSQL database (the application's schema, migrated; one user and project
made through the API; a tasks table grown with INSERT … SELECT generate_series, text titles and descriptions), then
times in the same run, on the same data:

    baseline  pg_dump --format=custom --file=F  +  pg_restore --no-owner --dbname=<new empty database> F
    timetodo  timetodo backup create  +  timetodo backup verify ARCHIVE  +  timetodo backup restore ARCHIVE
              (restore verifies again, restores into a new empty database and re-counts every table)

and prints the ratio timetodo / baseline (target ≤ 1.15×). Rounds alternate which side goes first.
Starts its own PostgreSQL (scripts/postgres.sh) unless `--database-url` names a server to use (its role must be
allowed to create databases; the benchmark drops what it creates).

    uv run python bench/backup.py [--mb 1024] [--rounds 1] [--database-url postgresql://user:pw@127.0.0.1:5432/db]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import free_port, new_user  # noqa: E402

from timetodo.ops.adapters.postgres import PgTarget, mask_url, tool  # noqa: E402

TIMETODO = ROOT / ".venv" / "bin" / "timetodo"
BATCH_ROWS = 200_000


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def database_url(server_url: str, name: str) -> str:
    base, _, _ = plain(server_url).rpartition("/")
    return f"{base}/{name}"


async def admin(server_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(plain(server_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_db(server_url: str, prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(4)}"
    await admin(server_url, f'CREATE DATABASE "{name}"')
    return database_url(server_url, name)


async def drop_db(server_url: str, url: str) -> None:
    name = url.rpartition("/")[2].split("?")[0]
    await admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def generate(url: str, megabytes: int, workdir: Path) -> dict[str, Any]:
    """Migrate, make a user/project/task through the API, then clone the task until the database is big enough."""
    import asyncpg
    from tests.conftest import asgi_client, make_settings, running_app

    from timetodo.core.schema import upgrade_async

    settings = make_settings(workdir / "gen", DATABASE_URL=url, REDIS_URL=None)
    await upgrade_async(settings.DATABASE_URL)
    async with running_app(settings) as app, asgi_client(app) as client:
        headers, _ = await new_user(client)
        project = (await client.post("/api/v1/projects", json={"name": "Bench"}, headers=headers)).json()
        seed = await client.post(
            "/api/v1/tasks",
            json={"title": "seed", "project_id": project["id"], "labels": ["bench", "backup"], "priority": 2},
            headers=headers,
        )
        assert seed.status_code == 201, seed.text
        seed_id = seed.json()["id"]

    conn = await asyncpg.connect(plain(url))
    try:
        columns = [
            r[0]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = 'tasks' AND column_name <> 'id' ORDER BY ordinal_position"
            )
        ]
        overrides = {
            "title": "'Task ' || g || ': ' || md5(g::text)",
            # ids and notes: roughly as compressible as real task text (pg_dump's zlib gets about 2-3×)
            "description": "substr(md5(g::text) || ' follow up with the team about the quarterly plan; ' || "
            "md5((g * 31)::text) || ' ' || md5((g * 7)::text) || ' see ticket ' || md5((g * 13)::text), "
            "1, 80 + (g % 160))",
            "position": "g",
            "priority": "1 + g % 4",
            "done": "g % 3 = 0",
        }
        select = ", ".join(overrides.get(c, f't."{c}"') for c in columns)
        insert = ", ".join(f'"{c}"' for c in columns)
        target = megabytes * 1024 * 1024
        start, started = 1, time.monotonic()
        while await conn.fetchval("SELECT pg_database_size(current_database())") < target:
            await conn.execute(
                f"INSERT INTO tasks ({insert}) SELECT {select} FROM tasks t, "
                f"generate_series({start}, {start + BATCH_ROWS - 1}) g WHERE t.id = {seed_id}"
            )
            start += BATCH_ROWS
        await conn.execute("VACUUM ANALYZE")
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
        rows = await conn.fetchval("SELECT count(*) FROM tasks")
    finally:
        await conn.close()
    return {"bytes": int(size), "task_rows": int(rows), "seconds": time.monotonic() - started}


def timed(args: list[str], env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{Path(args[0]).name} {args[1:3]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def timetodo_env(workdir: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "UPLOAD_DIR")}
    env.update(
        ENVIRONMENT="test",
        DATA_DIR=str(workdir / "data"),
        DATABASE_URL=url,
        SECRET_KEY="bench-secret-key-that-is-long-enough-0123456789",
        LOG_LEVEL="WARNING",
    )
    return env


async def baseline_round(server_url: str, source_url: str, workdir: Path) -> dict[str, float]:
    source = PgTarget.from_url(source_url)
    dump_file = workdir / "baseline.pgdump"
    dump_s = timed([tool("pg_dump"), "--format=custom", f"--file={dump_file}", f"--dbname={source.url}"], source.env())
    target_url = await create_db(server_url, "bench_base_dst")
    try:
        target = PgTarget.from_url(target_url)
        restore_s = timed([tool("pg_restore"), "--no-owner", f"--dbname={target.url}", str(dump_file)], target.env())
    finally:
        await drop_db(server_url, target_url)
    size = dump_file.stat().st_size
    dump_file.unlink()
    return {"dump": dump_s, "restore": restore_s, "total": dump_s + restore_s, "bytes": size}


async def timetodo_round(server_url: str, source_url: str, workdir: Path) -> dict[str, float]:
    folder = workdir / "archives"
    shutil.rmtree(folder, ignore_errors=True)
    create_s = timed([str(TIMETODO), "backup", "create", "--to", str(folder)], timetodo_env(workdir, source_url))
    archive = next(folder.glob("timetodo-*.tar"))
    verify_s = timed([str(TIMETODO), "backup", "verify", str(archive)], timetodo_env(workdir, source_url))
    target_url = await create_db(server_url, "bench_ttd_dst")
    try:
        restore_s = timed([str(TIMETODO), "backup", "restore", str(archive)], timetodo_env(workdir, target_url))
    finally:
        await drop_db(server_url, target_url)
    size = archive.stat().st_size
    shutil.rmtree(folder, ignore_errors=True)
    total = create_s + verify_s + restore_s
    return {"create": create_s, "verify": verify_s, "restore": restore_s, "total": total, "bytes": size}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ttd-bench-backup-"))
    workdir.chmod(0o755)
    pg_dir = workdir / "pg"
    started_pg = False
    try:
        if args.database_url:
            server_url = plain(args.database_url)
        else:
            out = subprocess.run(
                ["bash", "scripts/postgres.sh", "start", str(pg_dir), str(free_port())],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            server_url, started_pg = out.stdout.strip().splitlines()[-1], True
        print(f"server: {mask_url(server_url)}", file=sys.stderr)
        source_url = await create_db(server_url, "bench_src")
        try:
            print(f"generating ~{args.mb} MB …", file=sys.stderr)
            data = await generate(source_url, args.mb, workdir)
            print(
                f"generated {data['bytes'] / 1e6:.0f} MB ({data['task_rows']:,} tasks) in {data['seconds']:.1f}s",
                file=sys.stderr,
            )
            baseline: list[dict[str, float]] = []
            ours: list[dict[str, float]] = []
            for i in range(args.rounds):
                order = ("baseline", "timetodo") if i % 2 == 0 else ("timetodo", "baseline")
                for side in order:
                    if side == "baseline":
                        baseline.append(await baseline_round(server_url, source_url, workdir))
                        print(f"round {i + 1} baseline: {baseline[-1]}", file=sys.stderr)
                    else:
                        ours.append(await timetodo_round(server_url, source_url, workdir))
                        print(f"round {i + 1} timetodo: {ours[-1]}", file=sys.stderr)
        finally:
            await drop_db(server_url, source_url)
    finally:
        if started_pg:
            subprocess.run(["bash", "scripts/postgres.sh", "stop", str(pg_dir)], cwd=ROOT, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    result = {
        "database_mb": round(data["bytes"] / 1e6),
        "task_rows": data["task_rows"],
        "rounds": args.rounds,
        "baseline": {k: round(median(baseline, k), 2) for k in ("dump", "restore", "total")},
        "timetodo": {k: round(median(ours, k), 2) for k in ("create", "verify", "restore", "total")},
        "dump_mb": round(median(baseline, "bytes") / 1e6, 1),
        "archive_mb": round(median(ours, "bytes") / 1e6, 1),
    }
    result["ratio"] = round(result["timetodo"]["total"] / result["baseline"]["total"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024, help="database size to generate (default 1024)")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per side (median reported)")
    parser.add_argument("--database-url", help="use this PostgreSQL server instead of starting one")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    b, t = result["baseline"], result["timetodo"]
    print(f"database {result['database_mb']} MB, {result['task_rows']:,} tasks; median of {result['rounds']} round(s)")
    print(f"  pg_dump -Fc      {b['dump']:7.2f} s   ({result['dump_mb']} MB)")
    print(f"  pg_restore       {b['restore']:7.2f} s")
    print(f"  baseline total   {b['total']:7.2f} s")
    print(f"  backup create    {t['create']:7.2f} s   ({result['archive_mb']} MB)")
    print(f"  backup verify    {t['verify']:7.2f} s")
    print(f"  backup restore   {t['restore']:7.2f} s   (verifies again, restores, re-counts)")
    print(f"  timetodo total   {t['total']:7.2f} s")
    print(f"  ratio            {result['ratio']:.3f}×   (target ≤ 1.15×)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
