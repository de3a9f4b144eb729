"""The proof: `timetodo migrate` moves a live deployment to a "new host" over real SSH with nothing lost.

Source: PostgreSQL A, Redis A (its own database index), an upload directory and `timetodo serve` A with real data.
Target: PostgreSQL B and Redis B (separate servers started by scripts/), reached over real SSH on 127.0.0.1
(scripts/sshd.sh), the app started there by the toolkit's process runtime. A fake Telegram Bot API (a real HTTP
server on 127.0.0.1) holds the webhook and pending updates. A client writes continuously, each write with a
unique title and Idempotency-Key, following the "current" host that the DNS hook switches — the way clients follow
a DNS change.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.migrate_world import World, Writer, make_world, stop_world, titles
from tests.e2e.server import TIMETODO
from tests.support import PASSWORD, Services

pytestmark = pytest.mark.slow

# Each phase of a test (before the migration, after it, after the rollback) lasts until every writer has this many
# writes acknowledged through the host it should reach then: a count instead of a fixed sleep.
WRITES_PER_PHASE = 20


@pytest.fixture(scope="module")
def world(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # the target app's account-state cache 1 s (default 5 s): the cutover waits for it before opening the target
    world = make_world(tmp_path_factory.mktemp("migrate"), services, target_env={"AUTH_STATE_CACHE_SECONDS": "1"})
    yield world
    stop_world(world)


def test_config_errors_stop_before_any_host_is_touched(world: World) -> None:
    bad = world.base / "bad.toml"
    bad.write_text(world.config.read_text().replace('runtime = "process"', 'runtime = "kubernetes"'))
    result = world.migrate("plan", config=bad)
    assert result.returncode == 2 and "target.runtime" in result.stderr, result.stderr
    assert not (world.base / "work").exists()
    result = world.migrate("plan", env={"MIG_SOURCE_DB": ""})
    assert result.returncode == 2 and "source.database_url_env" in result.stderr


def test_dry_run_prints_the_plan_and_changes_nothing(world: World) -> None:
    result = world.migrate("run", "--dry-run")
    assert result.returncode == 0, result.stderr
    for word in ("pg_dump", "pg_restore", "maintenance", "setWebhook", "rsync"):
        assert word in result.stderr, word
    assert world.state().get("steps", {}) == {}
    assert world.current.read_text() == world.source.url
    assert PASSWORD not in result.stderr and "target-redis-pw" not in result.stderr


def test_wrong_admin_password_refuses_cutover_before_freezing(world: World) -> None:
    result = world.migrate("cutover", env={"MIG_ADMIN_PASSWORD": "wrong password!"})
    assert result.returncode == 4, result.stderr
    assert "log in" in result.stderr
    with httpx.Client(base_url=world.source.url) as c:
        resp = c.post(
            "/api/v1/tasks", json={"title": "still writable"}, headers={"Authorization": f"Bearer {world.writer_token}"}
        )
    assert resp.status_code == 201  # nothing was frozen


def test_cutover_over_the_downtime_budget_stops_before_freezing(world: World) -> None:
    text = world.config.read_text().replace("downtime_budget_minutes = 5", "downtime_budget_minutes = 0.1")
    config = world.base / "tight-budget.toml"
    config.write_text(text.replace('work_dir = "work"', 'work_dir = "work-budget"'))
    result = world.migrate("cutover", config=config)
    assert result.returncode == 6, result.stderr
    assert "exceeds the budget" in result.stderr
    with httpx.Client(base_url=world.source.url) as c:
        status = c.get("/health/detailed").json()
    assert status["maintenance"] is False  # nothing was frozen


def test_migration_and_rollback_lose_nothing(world: World) -> None:
    old_address = world.base / "old-address"  # a client whose DNS never moves: it keeps using the source
    old_address.write_text(world.source.url)
    with (
        Writer(world.current, world.writer_token, "w") as writer,
        Writer(old_address, world.writer_token, "o") as old_writer,
    ):
        writer.wait_for_acks(world.source.url, WRITES_PER_PHASE)
        old_writer.wait_for_acks(world.source.url, WRITES_PER_PHASE)
        result = world.migrate("run", "--yes")
        assert result.returncode == 0, result.stdout + result.stderr
        # more writes, now on the target (the old-address client's through the source's forwarding)
        writer.wait_for_acks(world.target_url, WRITES_PER_PHASE, since=writer.mark())
        old_writer.wait_for_acks(world.source.url, WRITES_PER_PHASE, since=old_writer.mark())
    assert world.current.read_text() == world.target_url
    facts = world.state()["facts"]
    # the default strategy, delta: the freeze moved only the chunks that differed, and checked them by their hashes
    cutover = world.state()["steps"]["cutover"]["result"]
    assert cutover["strategy"] == "delta", cutover
    final_db = facts["cutover_phases"]["final_copy"]["result"]["db"]
    assert final_db["strategy"] == "delta" and final_db["problems"] == []
    assert final_db["chunks_copied"] < final_db["chunks"], final_db
    assert "final_copy" in cutover["in_freeze_seconds"] and "pre_pass" not in cutover["in_freeze_seconds"]
    # the target's app ran held (maintenance on in its database) and was opened, never stopped and started, and
    # the freeze re-hashed only the chunks written since the pre-pass
    assert "open_target" in cutover["in_freeze_seconds"], cutover["in_freeze_seconds"]
    assert not {"stop_target", "start_target"} & set(facts["cutover_phases"]), facts["cutover_phases"].keys()
    assert final_db["hashing"].startswith("changed chunks only"), final_db
    final_copy = facts["cutover_phases"]["final_copy"]["result"]
    # Redis: only the keys the source's key tracking reported since the pre-pass (validation compares every key)
    assert final_copy["redis"]["method"] == "key tracking", final_copy["redis"]
    assert facts["cutover_phases"]["pre_pass"]["result"]["redis"]["tracking"] is True
    assert final_copy["files"]["method"].startswith("listing against the pre-pass"), final_copy["files"]
    # the client on the old address saw errors only inside the write freeze: forwarding took over at the switch
    window = (facts["freeze_started_at"] - 0.5, facts["forwarding_started_at"] + 1.5)
    outside = [t for t in old_writer.failure_times if not window[0] <= t <= window[1]]
    assert outside == [], f"{len(outside)} failed requests outside the freeze {window}: {outside[:5]}"
    on_target_old = asyncio.run(titles(world.target_db, "o"))
    assert old_writer.acked and [uid for uid in old_writer.acked if on_target_old.get(uid) != 1] == []
    print(f"client-visible downtime on the old address: {old_writer.max_gap():.2f} s")
    assert writer.acked, "the writer never got a write through"
    on_target = asyncio.run(titles(world.target_db, "w"))
    missing = [uid for uid in writer.acked if on_target.get(uid) != 1]
    assert missing == [], f"{len(missing)} acknowledged writes missing or duplicated on the target: {missing[:5]}"
    assert any(host == world.target_url for host in writer.acked.values())

    report = json.loads((world.base / "work" / "migration_final_report.json").read_text())
    downtime = report["write_downtime_seconds"]
    assert downtime is not None and 0 < downtime < 300
    validation = json.loads((world.base / "work" / "migration_validation_report.json").read_text())
    assert validation["ok"] is True, validation
    # the canary account did a client's round trip on the target, the load mix ran on both hosts, and the canary
    # was deleted on the target with its file (on the frozen source it stays until a rollback replays the deletion)
    canary = facts["canary"]
    assert canary["removed"] and canary["check"]["ok"], canary
    load = validation["sections"]["load"]
    assert load["source"]["requests"] > 0 and load["target"]["requests"] > 0 and load["target"]["failures"] == 0
    assert validation["sections"]["canary"]["removed"] is True
    # uploads: every source file on the target with the same content (but the canary's)
    source_files = {
        p.relative_to(world.source_uploads): p.read_bytes()
        for p in world.source_uploads.rglob("*")
        if p.is_file() and ".incoming" not in p.parts and p.name != canary["sha256"]
    }
    assert len(source_files) >= 12
    assert not any(p.name == canary["sha256"] for p in world.target_uploads.rglob("*"))
    for rel, content in source_files.items():
        assert (world.target_uploads / rel).read_bytes() == content
    # Redis keys with their TTLs
    src, dst = redis.Redis.from_url(world.source_redis), redis.Redis.from_url(world.target_redis)
    assert dst.get("seed:plain:7") == src.get("seed:plain:7")
    assert 3000 < dst.ttl("seed:ttl:7") <= 3600 and dst.ttl("seed:plain:7") == -1
    assert dst.hgetall("seed:hash") == {b"a": b"1", b"b": b"2"}
    # the webhook points at the target, pending updates kept
    assert world.telegram.webhook_url == world.target_url + "/api/v1/telegram/webhook"
    assert len(world.telegram.pending_updates) == 3
    # the source is frozen and forwards its API to the target, which serves writes
    with httpx.Client() as c:
        auth = {"Authorization": f"Bearer {world.writer_token}"}
        via_source = c.post(world.source.url + "/api/v1/tasks", json={"title": "via-old-host"}, headers=auth)
        assert via_source.status_code == 201
        assert asyncio.run(titles(world.target_db, "via-old")) == {"via-old-host": 1}
        assert asyncio.run(titles(world.source_db, "via-old")) == {}
        assert (
            c.post(world.target_url + "/api/v1/tasks", json={"title": "post-migration"}, headers=auth).status_code
            == 201
        )

    # rollback: every write the target took comes back to the source
    with Writer(world.current, world.writer_token, "r") as writer2:
        writer2.wait_for_acks(world.target_url, WRITES_PER_PHASE)
        result = world.migrate("rollback", "--force")
        assert result.returncode == 0, result.stdout + result.stderr
        # the writer follows DNS back to the source
        writer2.wait_for_acks(world.source.url, WRITES_PER_PHASE, since=writer2.mark())
    assert world.current.read_text() == world.source.url
    carried = json.loads((world.base / "work" / "migration_rollback_report.json").read_text())
    on_target_only = [uid for uid, host in writer.acked.items() if host == world.target_url]
    assert carried["database"]["applied"]["tables"]["tasks"]["inserted"] >= len(on_target_only) > 0
    # found by the target's xid horizon recorded at the cutover: no table had to be compared row by row
    assert carried["database"]["compared_in_full"] == [], carried["database"]
    on_source = asyncio.run(titles(world.source_db, "w")) | asyncio.run(titles(world.source_db, "r"))
    acked = {**writer.acked, **writer2.acked}
    missing = [uid for uid in acked if on_source.get(uid) != 1]
    assert missing == [], f"{len(missing)} acknowledged writes missing or duplicated on the source: {missing[:5]}"
    assert asyncio.run(titles(world.source_db, "post")) == {"post-migration": 1}
    assert world.telegram.webhook_url == world.source.url + "/api/v1/telegram/webhook"
    assert len(world.telegram.pending_updates) == 3
    # the final report keeps the cutover and validation after the rollback, every step in the order it ran
    final = json.loads((world.base / "work" / "migration_final_report.json").read_text())
    ran = ["preflight", "backup", "prepare", "deploy", "sync", "cutover", "validate", "rollback"]
    steps = [(phase["step"], phase["status"]) for phase in final["phases"]]
    # (the module's earlier tests refused cutovers in this work directory: their attempts come first, as failed rows)
    assert [step for step, _ in steps[-len(ran) :]] == ran and {status for _, status in steps[-len(ran) :]} == {"done"}
    assert all(status == "failed" for _, status in steps[: -len(ran)]), steps
    assert final["write_downtime_seconds"] == pytest.approx(downtime)
    assert final["verification_ok"] is True and final["outcome"] == "rolled back to the source"
    page = (world.base / "work" / "migration_final_report.html").read_text()
    assert 'id="timeline"' in page and 'id="verification"' in page and final["write_freeze"] in page
    with httpx.Client() as c:
        assert (
            c.post(
                world.source.url + "/api/v1/tasks",
                json={"title": "back home"},
                headers={"Authorization": f"Bearer {world.writer_token}"},
            ).status_code
            == 201
        )


def _run_until_killed(world: World, config: Path, state_file: Path, condition: Any, output: Path) -> None:
    """`run --yes --resume` SIGKILLed as soon as `condition(state)` holds (its output in `output`)."""
    with output.open("w") as log:
        proc = subprocess.Popen(
            [TIMETODO, "migrate", "run", "--yes", "--resume", "--config", str(config)],
            env={**os.environ, **world.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=world.base,
            start_new_session=True,
        )
        killed = _kill_when(proc, state_file, condition)
    assert killed, f"the run ended before its kill point:\n{output.read_text()[-3000:]}"


def _kill_when(proc: subprocess.Popen[Any], state_file: Path, condition: Any, timeout: float = 300) -> bool:
    """SIGKILL the run (and everything it started) as soon as `condition(state)` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        if condition(state):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return True
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("the kill point was never reached")


def test_logical_strategy_migrates_and_rolls_back_losing_nothing(world: World) -> None:
    """strategy = "logical": the database follows the source through a subscription; the run is killed inside the
    freeze (fence passed, target opened, not yet switched) and `--resume` finishes it. Every
    acknowledged write exactly once on the target, no failed request outside the freeze, nothing of the replication
    left on either side, and after a rollback every target-side write back on the source."""
    config = world.base / "migration-logical.toml"
    text = world.config.read_text().replace('work_dir = "work"', 'work_dir = "work-logical"')
    config.write_text(text.replace('app_name = "timetodo"', 'app_name = "timetodo"\nstrategy = "logical"'))
    work = world.base / "work-logical"
    state_file = work / "state.json"

    def phase(name: str) -> Any:
        return lambda s: name in s.get("facts", {}).get("cutover_phases", {})

    old_address = world.base / "old-address-logical"
    old_address.write_text(world.source.url)
    with (
        Writer(world.current, world.writer_token, "lw") as writer,
        Writer(old_address, world.writer_token, "lo") as old_writer,
    ):
        writer.wait_for_acks(world.source.url, WRITES_PER_PHASE)
        old_writer.wait_for_acks(world.source.url, WRITES_PER_PHASE)
        _run_until_killed(world, config, state_file, phase("open_target"), world.base / "logical-killed-0.log")
        result = world.migrate("run", "--yes", "--resume", config=config)
        assert result.returncode == 0, result.stdout + result.stderr
        writer.wait_for_acks(world.target_url, WRITES_PER_PHASE, since=writer.mark())
        old_writer.wait_for_acks(world.source.url, WRITES_PER_PHASE, since=old_writer.mark())
    state = json.loads(state_file.read_text())
    facts, cutover = state["facts"], state["steps"]["cutover"]["result"]
    assert cutover["strategy"] == "logical" and facts["logical"]["usable"] is True, cutover
    assert state["steps"]["sync"]["result"]["db"]["strategy"] == "logical"
    catch_up = facts["cutover_phases"]["catch_up"]["result"]
    assert catch_up["problems"] == [] and catch_up["sequences"] > 0 and catch_up["fence_lsn"]
    print(f"logical: write freeze {facts['write_downtime_seconds']:.2f} s, in freeze {cutover['in_freeze_seconds']}")
    # nothing of the replication is left: no subscription on the target, no publication or slot on the source
    assert cutover["detached"]["source"]["publication"] == "dropped"
    assert asyncio.run(_replication_leftovers(world)) == (0, 0, 0)
    # the reverse stream: its slot on the target from before the target's first write until the rollback
    reverse = facts["logical"]["reverse"]
    assert reverse["usable"] is True and reverse["slot"] == "timetodo_migrate_reverse", reverse
    assert asyncio.run(_reverse_leftovers(world)) == (1, 1)
    assert world.current.read_text() == world.target_url
    window = (facts["freeze_started_at"] - 0.5, facts["forwarding_started_at"] + 1.5)
    # (the run killed inside the freeze left the source frozen until --resume: inside the window too)
    for writes in (writer, old_writer):
        outside = [t for t in writes.failure_times if not window[0] <= t <= window[1]]
        assert outside == [], f"{len(outside)} failed requests outside the freeze {window}: {outside[:5]}"
    for prefix, writes in (("lw", writer), ("lo", old_writer)):
        on_target = asyncio.run(titles(world.target_db, prefix))
        missing = [uid for uid in writes.acked if on_target.get(uid) != 1]
        assert writes.acked and missing == [], f"{prefix}: {len(missing)} missing or duplicated: {missing[:5]}"
    assert any(host == world.target_url for host in writer.acked.values())
    validation = json.loads((work / "migration_validation_report.json").read_text())
    assert validation["ok"] is True, validation

    # rollback: every write the target took is back on the source
    with Writer(world.current, world.writer_token, "lr") as writer2:
        writer2.wait_for_acks(world.target_url, WRITES_PER_PHASE)
        result = world.migrate("rollback", "--force", config=config)
        assert result.returncode == 0, result.stdout + result.stderr
        writer2.wait_for_acks(world.source.url, WRITES_PER_PHASE, since=writer2.mark())
    assert world.current.read_text() == world.source.url
    on_source = asyncio.run(titles(world.source_db, "lw")) | asyncio.run(titles(world.source_db, "lr"))
    acked = {**writer.acked, **writer2.acked}
    missing = [uid for uid in acked if on_source.get(uid) != 1]
    assert missing == [], f"{len(missing)} acknowledged writes missing or duplicated on the source: {missing[:5]}"
    assert asyncio.run(_replication_leftovers(world)) == (0, 0, 0)
    assert asyncio.run(_reverse_leftovers(world)) == (0, 0)  # no slot retaining the target's WAL
    carried = json.loads((world.base / "work-logical" / "migration_rollback_report.json").read_text())
    database = carried["database"]
    # carried from the reverse stream: it named every key the target wrote (the titles checked above)
    assert database["via"] == "reverse stream" and "reverse_stream_unusable" not in database, database
    on_target = sum(1 for host in acked.values() if host == world.target_url)
    assert database["stream"]["keys"] >= on_target > 0, database["stream"]
    assert database["applied"]["totals"]["inserted"] >= on_target, database["applied"]
    print(f"logical rollback: {carried['seconds']:.2f} s, database from the reverse stream {database['seconds']:.2f} s")


async def _replication_leftovers(world: World) -> tuple[int, int, int]:
    """(subscriptions on the target, publications, replication slots on the source) of the migration."""
    import asyncpg

    target, source = await asyncpg.connect(world.target_db), await asyncpg.connect(world.source_db)
    try:
        subs = await target.fetchval("SELECT count(*) FROM pg_subscription WHERE subname = 'timetodo_migrate'")
        pubs = await source.fetchval("SELECT count(*) FROM pg_publication WHERE pubname = 'timetodo_migrate'")
        slots = await source.fetchval(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'timetodo_migrate' "
            "OR slot_name LIKE 'pg\\_%\\_sync\\_%'"
        )
        return int(subs), int(pubs), int(slots)
    finally:
        await target.close()
        await source.close()


async def _reverse_leftovers(world: World) -> tuple[int, int]:
    """(the reverse stream's replication slots, its publications) on the target's server."""
    import asyncpg

    target = await asyncpg.connect(world.target_db)
    try:
        slots = await target.fetchval(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'timetodo_migrate_reverse'"
        )
        pubs = await target.fetchval("SELECT count(*) FROM pg_publication WHERE pubname = 'timetodo_migrate_reverse'")
        return int(slots), int(pubs)
    finally:
        await target.close()


def _run_killed_and_resumed(
    world: World, strategy: str, work: str, prefix: str, kill_points: list[Any]
) -> tuple[dict[str, str], dict[str, Any], Path]:
    """`run --resume` SIGKILLed at each kill point in turn (each a condition on the state file), then run to the end
    under a steady writer following DNS and one staying on the old address; returns the writes both had
    acknowledged, the final state and the config."""
    config = world.base / f"migration-{work}.toml"
    text = world.config.read_text().replace('work_dir = "work"', f'work_dir = "{work}"')
    config.write_text(text.replace('app_name = "timetodo"', f'app_name = "timetodo"\nstrategy = "{strategy}"'))
    state_file = world.base / work / "state.json"
    old_address = world.base / f"old-address-{work}"  # a client whose DNS never moves: it keeps using the source
    old_address.write_text(world.source.url)
    with (
        Writer(world.current, world.writer_token, prefix) as writer,
        Writer(old_address, world.writer_token, f"{prefix}o") as old_writer,
    ):
        for n, condition in enumerate(kill_points):
            _run_until_killed(world, config, state_file, condition, world.base / f"killed-{work}-{n}.log")
        frozen = world.migrate("status", config=config)
        assert "cutover" in frozen.stdout and "running" in frozen.stdout, frozen.stdout
        result = world.migrate("run", "--yes", "--resume", config=config)
        assert result.returncode == 0, result.stdout + result.stderr
        writer.wait_for_acks(world.target_url, WRITES_PER_PHASE, since=writer.mark())
        old_writer.wait_for_acks(world.source.url, WRITES_PER_PHASE, since=old_writer.mark())
    assert world.current.read_text() == world.target_url
    state = json.loads(state_file.read_text())
    # no failed request outside the freeze (a run killed inside it leaves the source frozen until --resume: inside)
    window = (state["facts"]["freeze_started_at"] - 0.5, state["facts"]["forwarding_started_at"] + 1.5)
    for writes in (writer, old_writer):
        outside = [t for t in writes.failure_times if not window[0] <= t <= window[1]]
        assert outside == [], f"{len(outside)} failed requests outside the freeze {window}: {outside[:5]}"
    for name, writes in ((prefix, writer), (f"{prefix}o", old_writer)):
        on_target = asyncio.run(titles(world.target_db, name))
        missing = [uid for uid in writes.acked if on_target.get(uid) != 1]
        assert writes.acked and missing == [], f"{name}: {len(missing)} missing or duplicated: {missing[:5]}"
    validation = json.loads((world.base / work / "migration_validation_report.json").read_text())
    assert validation["ok"] is True
    assert all(state["steps"][s]["status"] == "done" for s in ("preflight", "sync", "cutover", "validate"))
    assert state["steps"]["cutover"]["attempts"] >= 2
    return {**writer.acked, **old_writer.acked}, state, config


def _done(step: str) -> Any:
    return lambda s: s.get("steps", {}).get(step, {}).get("status") == "done"


def _frozen(s: dict[str, Any]) -> bool:
    return s.get("facts", {}).get("freeze_started_at") is not None


def test_killed_runs_resume_to_the_same_end_state(world: World) -> None:
    """`run` killed with SIGKILL after every step and once in the middle of the cutover's final copy (source
    frozen); each time `run --resume` continues, and the end state is the same: every acknowledged write exactly once
    on the target, validation passes. This run uses the `dump` strategy (the other tests cover the default, delta);
    then a rollback of the resumed cutover brings every target-side write back."""
    kill_points = [_done(step) for step in ("preflight", "backup", "prepare", "deploy", "sync")] + [_frozen]
    acked_before, _state, config = _run_killed_and_resumed(world, "dump", "work-resume", "k", kill_points)
    # the final report: every attempt a row, in the order they ran; the killed cutover stays as an interrupted row
    phases = json.loads((world.base / "work-resume" / "migration_final_report.json").read_text())["phases"]
    assert [p["started_at"] for p in phases] == sorted(p["started_at"] for p in phases)
    cutovers = [(p["attempt"], p["status"]) for p in phases if p["step"] == "cutover"]
    assert len(cutovers) >= 2 and cutovers[-1] == (len(cutovers), "done"), cutovers
    assert {status for _, status in cutovers[:-1]} == {"interrupted"}, cutovers
    assert [p["attempt"] for p in phases if p["step"] == "preflight"] == list(range(1, len(kill_points) + 2))

    with Writer(world.current, world.writer_token, "kr") as after:
        after.wait_for_acks(world.target_url, WRITES_PER_PHASE)
        back = world.migrate("rollback", "--force", config=config)
        assert back.returncode == 0, back.stdout + back.stderr
    assert world.current.read_text() == world.source.url
    carried = json.loads((world.base / "work-resume" / "migration_rollback_report.json").read_text())
    assert carried["database"]["compared_in_full"] == [], carried["database"]
    on_source = {
        name: n for prefix in ("k", "ko", "kr") for name, n in asyncio.run(titles(world.source_db, prefix)).items()
    }
    acked = {**acked_before, **after.acked}
    assert acked and [uid for uid in acked if on_source.get(uid) != 1] == []


def test_killed_delta_cutover_resumes_to_the_same_end_state(world: World) -> None:
    """The delta strategy's own phases killed and resumed: once the target is held, after the pre-pass (source
    live), in the middle of the final pass (source frozen), once the target is opened but not switched, and after
    the switch before the snapshot; the end state is the same."""

    def phase(name: str) -> Any:
        return lambda s: name in s.get("facts", {}).get("cutover_phases", {})

    kill_points = [phase("hold_target"), phase("pre_pass"), _frozen, phase("open_target")]
    kill_points.append(lambda s: s.get("facts", {}).get("switched_at") is not None)
    _acked, state, _config = _run_killed_and_resumed(world, "delta", "work-delta-resume", "d", kill_points)
    final_db = state["facts"]["cutover_phases"]["final_copy"]["result"]["db"]
    assert final_db["strategy"] == "delta" and final_db["problems"] == []
    assert state["facts"]["target_xid_horizon"] > 0


def _plan(world: World, config_text: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    config = world.config
    if config_text is not None:
        config = world.base / "plan-variant.toml"
        config.write_text(config_text.replace('work_dir = "work"', 'work_dir = "work-plan"'))
    return world.migrate("plan", config=config, env=env, timeout=180)


def test_preflight_blocks_an_unreachable_database(world: World) -> None:
    dead = "postgresql://timetodo:nope@127.0.0.1:1/timetodo"
    result = _plan(world, MIG_SOURCE_DB=dead)
    assert result.returncode == 4, result.stderr
    assert "source database" in result.stderr and "nope" not in result.stderr


def test_preflight_blocks_a_pg_dump_older_than_the_server(world: World, tmp_path: Path) -> None:
    """An old client is simulated by a `pg_dump` that reports version 9.6 (no old PostgreSQL on this machine)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pg_dump").write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    (fake / "pg_dump").chmod(0o755)
    result = _plan(world, TIMETODO_PG_BIN=str(fake))
    assert result.returncode == 4, result.stderr
    assert "pg_dump 9 < server 15" in result.stderr and "postgresql-client-15" in result.stderr


def test_preflight_blocks_a_target_disk_that_is_too_small(world: World, tmp_path: Path) -> None:
    """A real small file system (tmpfs of 1 MB) as the target's app directory."""
    small = tmp_path / "small-disk"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root or no mount permission)")
    try:
        text = world.config.read_text().replace(f'app_dir = "{world.base / "target-app"}"', f'app_dir = "{small}"')
        result = _plan(world, text)
        assert result.returncode == 4, result.stderr
        assert "target free disk" in result.stderr and "grow the disk" in result.stderr
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_unknown_target_host_key_is_refused_before_anything_happens(world: World, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    text = world.config.read_text()
    known = next(line.split('"')[1] for line in text.splitlines() if line.startswith("known_hosts ="))
    result = _plan(world, text.replace(f'known_hosts = "{known}"', f'known_hosts = "{empty}"'))
    assert result.returncode == 4, result.stderr
    assert "host key" in result.stderr.lower() and "--accept-new-host-key" in result.stderr


def test_logical_falls_back_to_delta_when_the_source_does_not_qualify(world: World) -> None:
    """A source role without REPLICATION that owns none of the tables: preflight says why (each reason) and the
    migration uses delta, recorded in the state; with a qualifying role the plan subscribes."""
    import asyncpg

    role = "ttd_no_replication"
    base = world.source_db.rpartition("@")[2]

    async def make_role() -> None:
        conn = await asyncpg.connect(world.source_db)
        try:
            await conn.execute(f"DROP ROLE IF EXISTS {role}")
            await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-no-repl'")
        finally:
            await conn.close()

    asyncio.run(make_role())
    text = world.config.read_text().replace('app_name = "timetodo"', 'app_name = "timetodo"\nstrategy = "logical"')
    config = world.base / "plan-logical.toml"
    config.write_text(text.replace('work_dir = "work"', 'work_dir = "work-plan-logical"'))
    weak = {"MIG_SOURCE_DB": f"postgresql://{role}:pw-no-repl@{base}"}
    result = world.migrate("plan", config=config, env=weak)  # the plan is printed first, then preflight runs
    assert result.returncode == 0, result.stderr
    out = " ".join((result.stdout + result.stderr).split())
    assert "logical replication │ warning" in out and "pw-no-repl" not in out, out
    state_file = world.base / "work-plan-logical" / "state.json"
    facts = json.loads(state_file.read_text())["facts"]
    reason = facts["logical"]["reason"]
    assert facts["logical"]["fallback"] == "delta", facts["logical"]
    assert f"role {role} has neither REPLICATION nor superuser" in reason and "does not own" in reason
    result = world.migrate("plan", config=config, env=weak)  # the recorded fallback: the delta plan
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0 and "hashes" in out and "SUBSCRIPTION" not in out, out
    # the suite's role qualifies: preflight decides again (until sync has run) and the migration replicates
    result = world.migrate("plan", config=config)
    assert result.returncode == 0, result.stderr
    logical = json.loads(state_file.read_text())["facts"]["logical"]
    assert logical["usable"] is True and "fallback" not in logical, logical
