"""Initial database copy (issue 13): the toolkit's `sync` copy against `pgcopydb clone` and a plain
`pg_dump -Fd -j2 | pg_restore -j2`, on the same generated database, in the same run.

Two PostgreSQL servers (scripts/postgres.sh: A the source, B the target, as in the migration tests, on loopback);
`--mb` of tasks on A (the application's schema). Each round, into a fresh database on B, in turn:

    pg_dump+pg_restore  pg_dump -Fd -j2 into a directory, then pg_restore -j2 (the baseline)
    pgcopydb clone      Debian's pgcopydb (COPY streamed table by table, indexes built in parallel), --table-jobs 2
                        --index-jobs 2
    timetodo dump       the dump path (adapters.postgres: pg_dump -Fd -j2, pg_restore --clean -j2)
    timetodo stream     the streaming copy `timetodo migrate sync` runs (adapters.postgres.stream: schema, then
                        COPY piped source → target chunk by chunk in key order in 2 streams, large tables split
                        into groups of chunks, indexes after), hashing every chunk's bytes on the way
    timetodo verify     the check sync runs right after it (incremental.verify_copy): every chunk of the target
                        read by COPY and hashed the same way, compared with the stream's — a full content check
    md5 verify (before) the check as it was, in the same round on the same copy: key ranges planned on the source,
                        every range of both sides hashed on the server (rows, Σ md5 of the row text), compared

The order of the three copies rotates between rounds; the median of `--rounds` is reported, with ratios to the
baseline and to pgcopydb. Targets (issue 13): copy ≤ 1.0× of each; copy + verification ≤ 1.25× of pgcopydb.

    uv run python bench/initial_copy.py [--mb 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from tests.support import free_port  # noqa: E402

from bench.rollback import admin, make_source, with_db  # noqa: E402
from timetodo.ops.adapters import postgres as pg  # noqa: E402
from timetodo.ops.adapters.postgres import tool  # noqa: E402
from timetodo.ops.adapters.postgres.chunks import ChunkSpec, snapshot_connections  # noqa: E402
from timetodo.ops.adapters.postgres.stream import stream_database  # noqa: E402
from timetodo.ops.adapters.postgres.target import PgTarget  # noqa: E402
from timetodo.ops.migrate.incremental import plan_specs, verify_copy  # noqa: E402

JOBS = 2


def start_server(base: Path) -> str:
    out = subprocess.run(
        ["bash", "scripts/postgres.sh", "start", str(base), str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1].replace("postgresql+asyncpg://", "postgresql://")


def run(cmd: list[str]) -> float:
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {result.stderr[-2000:]}")
    return time.monotonic() - started


async def fresh(server: str, name: str) -> str:
    await admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin(server, f'CREATE DATABASE "{name}"')
    return with_db(server, name)


async def baseline(source: str, server_b: str, work: Path) -> float:
    target = await fresh(server_b, "copy_baseline")
    out = work / "baseline-dump"
    shutil.rmtree(out, ignore_errors=True)
    seconds = run([tool("pg_dump"), "-Fd", f"-j{JOBS}", "--no-owner", "--no-privileges", "-f", str(out), source])
    seconds += run([tool("pg_restore"), f"-j{JOBS}", "--no-owner", "--no-privileges", "-d", target, str(out)])
    return seconds


async def pgcopydb(source: str, server_b: str, work: Path) -> float:
    target = await fresh(server_b, "copy_pgcopydb")
    out = work / "pgcopydb"
    shutil.rmtree(out, ignore_errors=True)
    return run(
        [
            "pgcopydb", "clone", "--source", source, "--target", target, "--dir", str(out),
            "--table-jobs", str(JOBS), "--index-jobs", str(JOBS), "--no-owner", "--no-acl", "--notice",
        ]
    )  # fmt: skip


async def dumped(source: str, server_b: str, work: Path) -> float:
    target = await fresh(server_b, "copy_timetodo_dump")
    started = time.monotonic()
    await pg.dump_database(source, work / "timetodo-dump", JOBS)
    await pg.restore_database(target, work / "timetodo-dump", JOBS)
    return time.monotonic() - started


async def md5_hashes(url: str, specs: dict[str, ChunkSpec]) -> dict[str, dict[int, tuple[int, int]]]:
    """The verification before issue 13's rework: per chunk (rows, Σ first 64 bits of md5(row text)), one hash
    aggregate per table on the server, `JOBS` connections in one snapshot."""
    found: dict[str, dict[int, tuple[int, int]]] = {}
    todo = list(specs.values())
    async with snapshot_connections(PgTarget.from_url(url), JOBS) as conns:

        async def worker(conn: object) -> None:
            while todo:
                spec = todo.pop(0)
                sql = (
                    f"SELECT {spec.bucket()} AS c, count(*) AS n, "
                    f"sum(('x' || left(md5(t::text), 16))::bit(64)::bigint) AS h FROM {spec.qname} AS t GROUP BY 1"
                )
                args = [list(spec.bounds)] if spec.column is not None else []
                rows = await conn.fetch(sql, *args)  # type: ignore[attr-defined]
                found[spec.table] = {int(r["c"]): (int(r["n"]), int(r["h"])) for r in rows}

        await asyncio.gather(*(worker(c) for c in conns))
    return found


async def md5_verify(source: str, target: str) -> dict[str, Any]:
    specs = await plan_specs(source)
    ours, theirs = await asyncio.gather(md5_hashes(source, specs), md5_hashes(target, specs))
    return {"chunks_differing": sum(ours[n] != theirs[n] for n in specs)}


async def ours(source: str, server_b: str, work: Path) -> tuple[float, float, float]:
    target = await fresh(server_b, "copy_timetodo")
    started = time.monotonic()
    streamed = await stream_database(source, target, JOBS, work)
    copied = time.monotonic() - started
    started = time.monotonic()
    checked = await verify_copy(target, streamed["specs"], streamed["source_chunks"], JOBS)
    verify = time.monotonic() - started
    started = time.monotonic()
    before = await md5_verify(source, target)
    old = time.monotonic() - started
    if checked.get("chunks_differing") or before["chunks_differing"]:
        raise SystemExit(f"the copy differs from the source: {checked} {before}")
    return copied, verify, old


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="ttd-bench-copy-"))
    a = b = None
    try:
        a, b = start_server(base / "a"), start_server(base / "b")
        print(f"generating ~{args.mb} MB …", file=sys.stderr)
        source, size = await make_source(a, args.mb)
        times: dict[str, list[float]] = {k: [] for k in ("baseline", "pgcopydb", "dump", "copy", "verify", "md5")}
        sides = ["baseline", "pgcopydb", "dump", "ours"]
        for n in range(args.rounds):
            order = sides[n % len(sides) :] + sides[: n % len(sides)]
            for side in order:
                print(f"round {n + 1}: {side} …", file=sys.stderr)
                if side == "baseline":
                    times["baseline"].append(await baseline(source, b, base))
                elif side == "pgcopydb":
                    times["pgcopydb"].append(await pgcopydb(source, b, base))
                elif side == "dump":
                    times["dump"].append(await dumped(source, b, base))
                else:
                    copied, verify, old = await ours(source, b, base)
                    times["copy"].append(copied)
                    times["verify"].append(verify)
                    times["md5"].append(old)
        med = {k: statistics.median(v) for k, v in times.items()}
        return {
            "database_bytes": size,
            "rounds": args.rounds,
            "seconds": {k: round(v, 2) for k, v in med.items()},
            "all": {k: [round(x, 2) for x in v] for k, v in times.items()},
            "copy_vs_baseline": round(med["copy"] / med["baseline"], 3),
            "dump_vs_baseline": round(med["dump"] / med["baseline"], 3),
            "copy_vs_pgcopydb": round(med["copy"] / med["pgcopydb"], 3),
            "copy_and_verify_vs_pgcopydb": round((med["copy"] + med["verify"]) / med["pgcopydb"], 3),
            "copy_and_md5_verify_vs_pgcopydb": round((med["copy"] + med["md5"]) / med["pgcopydb"], 3),
        }
    finally:
        for server_dir in ("a", "b"):
            subprocess.run(
                ["bash", "scripts/postgres.sh", "stop", str(base / server_dir)], cwd=ROOT, capture_output=True
            )
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    result = asyncio.run(main_async(parser.parse_args()))
    s = result["seconds"]
    print(f"database {result['database_bytes'] / 1e6:.0f} MB, median of {result['rounds']} round(s)")
    print(f"  pg_dump -Fd -j2 + pg_restore -j2   {s['baseline']:7.2f} s")
    print(f"  pgcopydb clone                      {s['pgcopydb']:7.2f} s")
    print(f"  timetodo dump path                  {s['dump']:7.2f} s   ({result['dump_vs_baseline']:.3f}× baseline)")
    print(f"  timetodo stream (sync)              {s['copy']:7.2f} s   ({result['copy_vs_baseline']:.3f}× baseline, "
          f"{result['copy_vs_pgcopydb']:.3f}× pgcopydb)")  # fmt: skip
    print(f"  timetodo verify (target hashed)     {s['verify']:7.2f} s   (copy + verify "
          f"{result['copy_and_verify_vs_pgcopydb']:.3f}× pgcopydb)")  # fmt: skip
    print(f"  before: md5 aggregate, both sides   {s['md5']:7.2f} s   (copy + it "
          f"{result['copy_and_md5_verify_vs_pgcopydb']:.3f}× pgcopydb)")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
