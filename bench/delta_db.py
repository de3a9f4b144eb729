"""The database part of the `delta` strategy's write freeze (issue 13), at `--mb` (1 GB by default).

Two PostgreSQL servers on loopback (scripts/postgres.sh: A the source, B the target, as in the migration tests);
`--mb` of tasks on A (the application's schema, bench/rollback.py's generator), streamed onto B the way sync does
(`adapters.postgres.stream`, which also gives the source's chunk hashes) and checked (`incremental.verify_copy`).
Then, as the cutover runs it:

    pre-pass   `delta_pass` with the source live and no baseline: both sides hashed whole, recorded as the
               baseline (each side's chunk hashes, xmin horizon, snapshot identity, table oids)
    writes     `--writes` single-statement writes on the source (60 % inserts, 30 % updates, 10 % deletes of
               random tasks: bench/rollback.py's `target_writes`), each its own transaction — the last seconds
               before the freeze

then, in the same run, the hashing stage of the in-freeze pass (both sides side by side, as `delta_pass` runs them),
`--rounds` times in rotating order, each from the same baseline on the same data:

    full       every chunk of both sides hashed (`hash_tables_at`): what the freeze cost before the baseline
    one scan   `rehash_changed` with one sequential scan per table per side (the big table on one connection),
               both sides scanned: the in-freeze pass before this change
    split      the same, a large table's scan split into heap block ranges over the `--jobs` connections of the
               snapshot (TID range scans)
    freeze     split, and the target's scan skipped when its snapshot identity is the baseline's (nothing was
               written to it since): what the freeze runs now

and last the whole in-freeze `delta_pass` (hashing, row comparison of the differing chunks, apply, sequences,
verification of the copied chunks), after which both sides are hashed whole and must be equal.

    uv run python bench/delta_db.py [--mb 1024] [--writes 500] [--rounds 2] [--jobs 2]
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

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.initial_copy import fresh, start_server  # noqa: E402
from bench.rollback import make_source, target_writes  # noqa: E402
from timetodo.ops.adapters.postgres import PgTarget, chunks  # noqa: E402
from timetodo.ops.adapters.postgres.stream import stream_database  # noqa: E402
from timetodo.ops.migrate import incremental  # noqa: E402
from timetodo.ops.migrate.incremental import EXCLUDE, Baseline, delta_pass, hash_both, verify_copy  # noqa: E402
from timetodo.ops.migrate.rollback.delta import table_infos, text_connection  # noqa: E402


async def hashing_stage(
    variant: str, source: str, target: str, specs: list[chunks.ChunkSpec], base: Baseline, jobs: int
) -> tuple[float, dict[str, Any]]:
    """One variant of the in-freeze hashing stage, both sides side by side; seconds and chunks hashed per side."""
    src, dst = PgTarget.from_url(source), PgTarget.from_url(target)
    split = chunks.SCAN_SPLIT_BYTES
    started = time.monotonic()
    try:
        if variant == "full":
            a, b = await asyncio.gather(
                chunks.hash_tables_at(src, specs, jobs), chunks.hash_tables_at(dst, specs, jobs)
            )
        else:
            if variant == "one scan":
                chunks.SCAN_SPLIT_BYTES = 1 << 62
            same = variant == "freeze"
            a, b = await asyncio.gather(
                chunks.rehash_changed(src, specs, base.source, base.source_horizon, jobs, base.source_oids),
                chunks.rehash_changed(
                    dst,
                    specs,
                    base.target,
                    base.target_horizon,
                    jobs,
                    base.target_oids,
                    snapshot=base.target_snapshot if same else "",
                ),
            )
    finally:
        chunks.SCAN_SPLIT_BYTES = split
    seconds = time.monotonic() - started
    differing = sum(len(chunks.differing(a.hashes[s.table], b.hashes[s.table])) for s in specs)
    return seconds, {
        "rehashed": {"source": a.rehashed, "target": b.rehashed},
        "target_scanned": b.scanned,
        "differing": differing,
    }


async def compare_stage(
    variant: str, source: str, target: str, specs: dict[str, chunks.ChunkSpec], base: Baseline, jobs: int
) -> tuple[float, dict[str, Any]]:
    """The in-freeze row comparison of the chunks that differ now, without applying: `all rows` reads every row of
    those chunks on both sides (the pass before this change), `since` only the source's rows written since the
    baseline's horizon plus the keys of chunks that lost rows (what the pass runs now). Seconds and the delta found."""
    src_t, dst_t = PgTarget.from_url(source), PgTarget.from_url(target)
    wanted = list(specs.values())
    a, b = await asyncio.gather(
        chunks.rehash_changed(src_t, wanted, base.source, base.source_horizon, jobs, base.source_oids),
        chunks.rehash_changed(dst_t, wanted, base.target, base.target_horizon, jobs, base.target_oids),
    )
    started = time.monotonic()
    found: dict[str, Any] = {}
    async with text_connection(src_t) as src, text_connection(dst_t) as dst:
        infos = await table_infos(src)
        async with (
            src.transaction(isolation="repeatable_read", readonly=True),
            dst.transaction(isolation="repeatable_read", readonly=True),
        ):
            for name, spec in specs.items():
                differ = chunks.differing(a.hashes[name], b.hashes[name])
                if not differ or not infos[name].key:
                    continue
                if variant == "all rows":
                    delta = await incremental._row_delta(src, dst, infos[name], spec, differ)
                else:
                    since = incremental._since_baseline(name, differ, base, a, b.hashes)
                    rows = {n: b.hashes[name].get(n, chunks.EMPTY)[0] for n in since}
                    delta, full = await incremental._row_delta_since(
                        src, dst, infos[name], spec, since, base.source_horizon, rows
                    )
                    assert not full and len(since) == len(differ), (len(since), len(differ), full)
                found[name] = {
                    "chunks": len(differ),
                    "inserted": sorted(map(repr, delta.inserted)),
                    "updated": sorted(map(repr, delta.updated)),
                    "deleted": sorted(map(repr, delta.deleted)),
                }
    return time.monotonic() - started, found


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base_dir = Path(tempfile.mkdtemp(prefix="ttd-bench-delta-"))
    try:
        a, b = start_server(base_dir / "a"), start_server(base_dir / "b")
        print(f"generating ~{args.mb} MB …", file=sys.stderr)
        source, size = await make_source(a, args.mb)
        target = await fresh(b, "delta_target")
        print("sync: stream + verify …", file=sys.stderr)
        started = time.monotonic()
        streamed = await stream_database(source, target, args.jobs, base_dir)
        copy_s = time.monotonic() - started
        specs = {n: s for n, s in streamed["specs"].items() if n not in EXCLUDE}
        checked = await verify_copy(target, specs, streamed["source_chunks"], args.jobs)
        print("pre-pass (hash both sides whole, record the baseline) …", file=sys.stderr)
        recorded: list[Baseline] = []
        started = time.monotonic()
        pre = await delta_pass(source, target, specs, jobs=args.jobs, record=recorded.append)
        pre_s = time.monotonic() - started
        baseline = recorded[-1]
        baseline_at = time.strftime("%H:%M:%S", time.gmtime())
        print(f"{args.writes} writes on the source …", file=sys.stderr)
        writes = await target_writes(source, args.writes)
        wanted = list(specs.values())
        variants = ["full", "one scan", "split", "freeze"]
        times: dict[str, list[float]] = {v: [] for v in variants}
        facts: dict[str, dict[str, Any]] = {}
        for n in range(args.rounds):
            for variant in variants[n % 4 :] + variants[: n % 4]:
                print(f"round {n + 1}: {variant} …", file=sys.stderr)
                seconds, found = await hashing_stage(variant, source, target, wanted, baseline, args.jobs)
                times[variant].append(seconds)
                facts[variant] = found
        compare_times: dict[str, list[float]] = {"all rows": [], "since": []}
        deltas: dict[str, Any] = {}
        for n in range(args.rounds):
            for variant in ["all rows", "since"] if n % 2 == 0 else ["since", "all rows"]:
                print(f"round {n + 1}: row comparison, {variant} …", file=sys.stderr)
                seconds, deltas[variant] = await compare_stage(variant, source, target, specs, baseline, args.jobs)
                compare_times[variant].append(seconds)
        if deltas["all rows"] != deltas["since"]:
            print("the two row comparisons found different deltas", file=sys.stderr)
            sys.exit(1)
        compare_med = {k: statistics.median(v) for k, v in compare_times.items()}
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        print("the in-freeze pass …", file=sys.stderr)
        started = time.monotonic()
        freeze = await delta_pass(source, target, specs, jobs=args.jobs, verify=True, baseline=baseline)
        freeze_s = time.monotonic() - started
        after = await hash_both(source, target, specs, args.jobs)
        conn = await asyncpg.connect(target)
        try:  # what took an xid on the target's server since the baseline (the snapshot identity then differs)
            vacuum = await conn.fetchrow(
                "SELECT last_autovacuum::text, last_autoanalyze::text, last_analyze::text FROM pg_stat_user_tables "
                "WHERE relname = 'tasks'"
            )
        finally:
            await conn.close()
        med = {k: statistics.median(v) for k, v in times.items()}
        return {
            "database_bytes": size,
            "chunks": sum(s.chunks for s in wanted),
            "jobs": args.jobs,
            "copy_seconds": round(copy_s, 2),
            "copy_check": {k: checked[k] for k in ("chunks_differing", "hash_seconds")},
            "pre_pass_seconds": round(pre_s, 2),
            "pre_pass_hash_seconds": pre["hash_seconds"],
            "writes": writes,
            "hashing_seconds": {k: round(v, 2) for k, v in med.items()},
            "hashing_all": {k: [round(x, 2) for x in v] for k, v in times.items()},
            "hashing_facts": facts,
            "vs_full": {k: round(v / med["full"], 3) for k, v in med.items()},
            "vs_one_scan": {k: round(v / med["one scan"], 3) for k, v in med.items()},
            "freeze_pass": {
                k: freeze[k]
                for k in (
                    "hash_seconds",
                    "compare_seconds",
                    "apply_seconds",
                    "after_apply_seconds",
                    "chunks_compared_since",
                    "rows_compared_since",
                    "seconds",
                    "chunks_copied",
                    "rows",
                    "chunks_rehashed",
                    "scanned",
                    "problems",
                )
                if k in freeze
            },
            "freeze_pass_wall_seconds": round(freeze_s, 2),
            "compare_seconds": {k: round(v, 2) for k, v in compare_med.items()},
            "compare_all": {k: [round(x, 2) for x in v] for k, v in compare_times.items()},
            "compare_since_vs_all_rows": round(compare_med["since"] / compare_med["all rows"], 3),
            "compare_found": {
                t: {k: (len(v) if isinstance(v, list) else v) for k, v in d.items()} for t, d in deltas["since"].items()
            },
            "uptime": uptime,
            "equal_after": after["chunks_differing"] == 0,
            "target_tasks_vacuum": dict(vacuum) if vacuum else {},
            "baseline_at": baseline_at,
        }
    finally:
        for server_dir in ("a", "b"):
            subprocess.run(
                ["bash", "scripts/postgres.sh", "stop", str(base_dir / server_dir)], cwd=ROOT, capture_output=True
            )
        shutil.rmtree(base_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    result = asyncio.run(main_async(parser.parse_args()))
    s, r = result["hashing_seconds"], result["vs_full"]
    print(f"database {result['database_bytes'] / 1e6:.0f} MB, {result['chunks']} chunks, writes {result['writes']}")
    for k in ("full", "one scan", "split", "freeze"):
        print(f"  {k:10s} {s[k]:7.2f} s   ({r[k]:.3f}× full, {result['vs_one_scan'][k]:.3f}× one scan)")
    c = result["compare_seconds"]
    print(
        f"  row comparison: all rows {c['all rows']:.2f} s, since {c['since']:.2f} s "
        f"({result['compare_since_vs_all_rows']:.3f}×)"
    )
    print(f"  in-freeze delta_pass: {result['freeze_pass']}")
    print(json.dumps(result))
    if not result["equal_after"] or result["freeze_pass"].get("problems"):
        print("the target does not equal the source after the in-freeze pass", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
