"""The `logical` strategy's replication (issue 13, item 2) between two real PostgreSQL servers (the suite's, and a
second one started by scripts/postgres.sh, both with wal_level = logical): the source's qualification and its
reasons, publication + subscription with the initial copy, the fence (the slot's confirmed LSN), sequences with a
gap, and a cleanup that leaves no publication, subscription or replication slot behind — also when one side is
gone, and when run twice."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support import ROOT, Services, create_database, free_port, run_script
from timetodo.ops.adapters.postgres import replication as repl

pytestmark = pytest.mark.slow

SCHEMA = """
CREATE TABLE items (id bigserial PRIMARY KEY, v text NOT NULL, n numeric);
CREATE TABLE kv (k varchar(40) PRIMARY KEY, v int);
CREATE TABLE app_state (id int PRIMARY KEY, maintenance boolean);
CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO items (v, n) SELECT 'item ' || g, g * 1.5 FROM generate_series(1, 2000) g;
INSERT INTO kv SELECT 'key-' || g, g FROM generate_series(1, 300) g;
INSERT INTO app_state VALUES (1, false);
INSERT INTO alembic_version VALUES ('abc');
"""
TARGET_SCHEMA = """
CREATE TABLE items (id bigserial PRIMARY KEY, v text NOT NULL, n numeric);
CREATE TABLE kv (k varchar(40) PRIMARY KEY, v int);
CREATE TABLE app_state (id int PRIMARY KEY, maintenance boolean);
CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO app_state VALUES (1, true);
"""
EXCLUDE = ("app_state", "alembic_version")


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="module")
def second_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second PostgreSQL server (the target's): a subscription cannot create its slot on its own server."""
    directory: Path = tmp_path_factory.mktemp("pg-target")
    url = run_script("scripts/postgres.sh", "start", str(directory / "pg"), str(free_port()))
    yield url
    subprocess.run(["bash", "scripts/postgres.sh", "stop", str(directory / "pg")], cwd=ROOT, timeout=60, check=False)


@pytest.fixture
async def pair(services: Services, second_server: str) -> AsyncIterator[tuple[str, str, str]]:
    source = plain(await create_database(services.postgres_url))
    target = plain(await create_database(second_server))
    name = f"t_{secrets.token_hex(4)}"
    for url, sql in ((source, SCHEMA), (target, TARGET_SCHEMA)):
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    yield source, target, name
    # whatever a failed test left: never a slot on the suite's server
    t = await asyncpg.connect(target)
    try:
        await repl.drop_subscription(t, name)
    finally:
        await t.close()
    s = await asyncpg.connect(source)
    try:
        await repl.drop_publication(s, name)
    finally:
        await s.close()


async def rows(url: str, table: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch(f"SELECT t::text FROM {table} AS t ORDER BY 1")]
    finally:
        await conn.close()


async def test_a_superuser_source_qualifies_and_a_plain_role_is_told_why_not(pair: tuple[str, str, str]) -> None:
    source, _target, _name = pair
    conn = await asyncpg.connect(source)
    role = f"plain_{secrets.token_hex(3)}"
    try:
        verdict = await repl.source_qualifies(conn, source, EXCLUDE)
        assert verdict.ok, verdict.reasons
        assert verdict.details["wal_level"] == "logical" and verdict.details["free_slots"] >= 1
        await conn.execute("CREATE TABLE loose (x int)")  # no primary key, no replica identity
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        await conn.execute(f"REVOKE CREATE ON DATABASE {source.rsplit('/', 1)[1]} FROM PUBLIC")
        await conn.execute(f"SET ROLE {role}")
        # a Render host name: the reason says a plan and a support ticket are needed there
        verdict = await repl.source_qualifies(
            conn, "postgresql://u@dpg-abc123-a.oregon-postgres.render.com/db", EXCLUDE
        )
        await conn.execute("RESET ROLE")
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
        await conn.close()
    text = " | ".join(verdict.reasons)
    assert not verdict.ok
    assert f"role {role} has neither REPLICATION nor superuser" in text and "support ticket" in text
    assert "may not create a publication" in text
    assert "does not own" in text and "items" in text
    assert "without a primary key or replica identity: loose" in text
    conn = await asyncpg.connect(source)
    try:
        await conn.execute("ALTER TABLE loose REPLICA IDENTITY FULL")
        assert (await repl.source_qualifies(conn, source, EXCLUDE)).ok
    finally:
        await conn.close()


async def test_subscription_copies_follows_fences_and_cleans_up_without_leftovers(pair: tuple[str, str, str]) -> None:
    source, target, name = pair
    src, tgt = await asyncpg.connect(source), await asyncpg.connect(target)
    try:
        assert await repl.publish(src, name, EXCLUDE) == ["items", "kv"]
        assert await repl.subscribe(tgt, name, source) is True
        assert await repl.subscribe(tgt, name, source) is False  # idempotent
        seen: list[tuple[int, int]] = []
        ready = await repl.wait_ready(src, tgt, name, progress=lambda done, total: seen.append((done, total)))
        assert ready["tables"] == 2 and seen[-1] == (2, 2)
        assert await repl.table_states(tgt, name) == {"items": "r", "kv": "r"}
        # writes on the live source, then the fence: everything committed before it is on the target
        await src.execute("INSERT INTO items (v) SELECT 'late ' || g FROM generate_series(1, 500) g")
        await src.execute("UPDATE kv SET v = -v WHERE v % 3 = 0; DELETE FROM items WHERE id % 10 = 0")
        await src.execute("UPDATE app_state SET maintenance = true")  # deployment state: never replicated
        fence = await repl.fence_lsn(src)
        waited = await repl.wait_flushed(src, name, fence)
        assert waited < 30
        for table in ("items", "kv"):
            assert await rows(target, table) == await rows(source, table), table
        assert await tgt.fetchval("SELECT maintenance FROM app_state") is True  # the target's own (held)
        assert await tgt.fetchval("SELECT count(*) FROM alembic_version") == 0  # not published
        # sequences: the source's value plus the gap
        source_last = int(await src.fetchval("SELECT last_value FROM items_id_seq"))
        assert source_last == 2500
        moved = await repl.set_sequences(src, tgt)
        assert moved == {"public.items_id_seq": source_last + repl.SEQUENCE_GAP}
        assert int(await tgt.fetchval("SELECT nextval('items_id_seq')")) == source_last + repl.SEQUENCE_GAP + 1
        # detach: the subscription goes (the data stays), then the publication and every slot on the source
        oid = await repl.subscription_oid(tgt, name)
        assert (await repl.drop_subscription(tgt, name))["subscription"] == "dropped"
        assert await repl.drop_subscription(tgt, name) == {"subscription": "absent"}
        await repl.drop_publication(src, name, oid)
        await repl.drop_publication(src, name, oid)  # idempotent
        assert await repl.leftovers(src, name) == {"publication": False, "slots": []}
        assert not await src.fetchval(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 OR slot_name LIKE $2", name, f"pg_{oid}_%"
        )
        # independent now: a write on the source no longer reaches the target, whose rows stay
        await src.execute("INSERT INTO kv VALUES ('after', 1)")
        await asyncio.sleep(0.5)
        assert await tgt.fetchval("SELECT count(*) FROM kv WHERE k = 'after'") == 0
        assert await tgt.fetchval("SELECT count(*) FROM items") == 2250
    finally:
        await src.close()
        await tgt.close()


async def test_cleanup_from_the_source_alone_ends_the_stream_and_drops_the_slot(pair: tuple[str, str, str]) -> None:
    """The target is gone (or unreachable): the source's side alone removes the active slot (its WAL sender ended
    first); the target's subscription, should it come back, is then dropped without its slot."""
    source, target, name = pair
    src, tgt = await asyncpg.connect(source), await asyncpg.connect(target)
    try:
        await repl.publish(src, name, EXCLUDE)
        await repl.subscribe(tgt, name, source)
        await repl.wait_ready(src, tgt, name)
        assert await src.fetchval("SELECT active FROM pg_replication_slots WHERE slot_name = $1", name) is True
        result = await repl.drop_publication(src, name, await repl.subscription_oid(tgt, name))
        assert name in result["slots_dropped"]
        assert await repl.leftovers(src, name) == {"publication": False, "slots": []}
        dropped = await repl.drop_subscription(tgt, name)
        assert dropped["subscription"] == "dropped" and "left on the source" in dropped["slot"]
        assert not await tgt.fetchval("SELECT count(*) FROM pg_subscription WHERE subname = $1", name)
        assert not await src.fetchval("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", name)
    finally:
        await src.close()
        await tgt.close()


async def test_a_target_that_cannot_reach_the_source_is_refused_with_the_reason(pair: tuple[str, str, str]) -> None:
    source, target, name = pair
    src, tgt = await asyncpg.connect(source), await asyncpg.connect(target)
    unreachable = f"postgresql://timetodo:secret-pw@127.0.0.1:{free_port()}/nowhere"
    try:
        await repl.publish(src, name, EXCLUDE)
        with pytest.raises(repl.ReplicationError) as caught:
            await repl.subscribe(tgt, name, unreachable)
        assert "cannot subscribe" in str(caught.value) and "secret-pw" not in str(caught.value)
        assert not await tgt.fetchval("SELECT count(*) FROM pg_subscription WHERE subname = $1", name)
    finally:
        await src.close()
        await tgt.close()


def test_render_hosts_and_lsns() -> None:
    assert repl.is_render("postgresql://u@dpg-cabc-a.frankfurt-postgres.render.com/app")
    assert not repl.is_render("postgresql://u@127.0.0.1/app")
    assert repl.lsn_int("0/10") == 16 and repl.lsn_int("1/0") == 1 << 32
    with pytest.raises(ValueError):
        repl.check_name("bad-name; DROP")


def test_the_report_names_the_logical_copy() -> None:
    from timetodo.ops.migrate.report.model import copied

    moved = copied({"db": {"strategy": "logical", "tables": 3, "bytes": 4096, "seconds": 1.5}, "redis": {}})
    assert len(moved) == 1 and "logical replication" in moved[0].what and "3 tables" in moved[0].what
    assert moved[0].bytes == 4096 and moved[0].seconds == 1.5


async def test_reverse_stream_carries_every_target_write_back_and_leaves_no_slot(
    pair: tuple[str, str, str],
) -> None:
    """The switch as the `logical` strategy does it: the target in sync through the subscription, the fence, the
    reverse slot created on the target *before* its first write, the subscription dropped; then the target writes
    (inserts, updates — one changing a key, one of a TOASTed column left unchanged —, deletes, a text key) and the
    rollback reads only the slot: the source ends up equal to the target, the rows written before the slot are not
    in the stream, and neither side keeps a slot or a publication."""
    from timetodo.ops.adapters.postgres import reverse as rev
    from timetodo.ops.migrate.rollback.reverse import carry_back_stream, stream_delta

    source, target, name = pair
    src, tgt = await asyncpg.connect(source), await asyncpg.connect(target)
    try:
        await src.execute("ALTER TABLE items ADD COLUMN big text")
        await tgt.execute("ALTER TABLE items ADD COLUMN big text")
        await src.execute("UPDATE items SET big = repeat('x', 200000) WHERE id = 7")  # TOASTed
        await repl.publish(src, name, EXCLUDE)
        await repl.subscribe(tgt, name, source)
        await repl.wait_ready(src, tgt, name)
        await repl.wait_flushed(src, name, await repl.fence_lsn(src))
        await repl.set_sequences(src, tgt)
        assert await rev.reverse_qualifies(tgt) == []
        started = await rev.start(tgt, name, ["items", "kv"])
        assert started["slot"] == rev.slot_name(name)
        await repl.drop_subscription(tgt, name)
        await repl.drop_publication(src, name)
        # the target serves: its writes after the slot
        await tgt.execute("INSERT INTO items (v) SELECT 'target ' || g FROM generate_series(1, 50) g")
        await tgt.execute("UPDATE items SET v = 'changed', n = 2 WHERE id IN (3, 5)")
        await tgt.execute("UPDATE items SET n = 42 WHERE id = 7")  # the TOASTed column is not in the stream
        await tgt.execute("UPDATE items SET id = 100000 WHERE id = 9")  # a key change: 9 gone, 100000 new
        await tgt.execute("DELETE FROM items WHERE id BETWEEN 20 AND 29")
        await tgt.execute("UPDATE items SET v = 'same' WHERE id = 11; UPDATE items SET v = 'item 11' WHERE id = 11")
        await tgt.execute("INSERT INTO kv VALUES ('it''s new', 1); DELETE FROM kv WHERE k = 'key-5'")
        await tgt.execute("UPDATE kv SET v = 0 WHERE k = 'key-6'")
        await tgt.execute("UPDATE app_state SET maintenance = false")  # not published: never carried
        delta, changes = await stream_delta(target, source, name, EXCLUDE)
        assert set(changes.tables) == {"items", "kv"}
        items = delta.tables["items"]
        assert len(items.inserted) == 51 and (100000,) in items.inserted
        assert sorted(items.updated) == [(3,), (5,), (7,)]  # 11 was changed back: equal, not carried
        assert sorted(items.deleted) == [(9,), *((i,) for i in range(20, 30))]
        assert delta.tables["kv"].inserted == [("it's new",)] and delta.tables["kv"].deleted == [("key-5",)]
        assert delta.tables["kv"].updated == [("key-6",)]
        carried = await carry_back_stream(target, source, name, snapshot_url=None, exclude=EXCLUDE)
        assert carried["via"] == "reverse stream" and carried["applied"]["totals"]["inserted"] == 52
        for table in ("items", "kv"):
            assert await rows(source, table) == await rows(target, table), table
        assert await src.fetchval("SELECT length(big) FROM items WHERE id = 7") == 200000
        assert await src.fetchval("SELECT maintenance FROM app_state") is False  # the source's own, untouched
        # new ids on the source do not collide with the target's
        assert int(await src.fetchval("SELECT nextval('items_id_seq')")) > int(
            await tgt.fetchval("SELECT max(id) FROM items WHERE id < 100000")
        )
        # a TRUNCATE cannot be carried key by key: the stream says so (the rollback then uses the row delta)
        await tgt.execute("TRUNCATE kv")
        with pytest.raises(rev.StreamUnusable, match="truncated"):
            await stream_delta(target, source, name, EXCLUDE)
        assert (await rev.drop(tgt, name))["slot_dropped"] is True
        assert (await rev.drop(tgt, name))["slot_dropped"] is False  # idempotent
        assert await rev.leftovers(tgt, name) == {
            "slot": None,
            "publication": False,
            "retained_bytes": 0,
            "wal_status": None,
        }
        with pytest.raises(rev.StreamUnusable, match="does not exist"):
            await stream_delta(target, source, name, EXCLUDE)
        assert not await src.fetchval("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE $1", f"{name}%")
    finally:
        await src.close()
        await tgt.close()


@pytest.mark.parametrize(
    ("recorded", "reason"),
    [
        ({}, "no reverse stream was started"),
        ({"reverse": {"usable": False, "reason": "the target's wal_level is replica"}}, "wal_level is replica"),
        ({"reverse": {"usable": True, "slot": "x_reverse", "dropped_at": 1.0}}, "dropped already"),
    ],
)
async def test_a_rollback_without_a_usable_reverse_stream_is_told_why(recorded: dict, reason: str) -> None:
    """The rollback then uses the row delta and reports this reason (`database.reverse_stream_unusable`)."""
    from types import SimpleNamespace

    from timetodo.ops.adapters.postgres.reverse import StreamUnusable
    from timetodo.ops.migrate import logical

    ctx: Any = SimpleNamespace(state=SimpleNamespace(facts=SimpleNamespace(logical={"requested": True, **recorded})))
    with pytest.raises(StreamUnusable, match=reason):
        await logical.carry_back(ctx, None, EXCLUDE)


def test_the_report_says_how_the_rows_came_back() -> None:
    from timetodo.ops.migrate.report.model import carried_back

    applied = {"totals": {"inserted": 3, "updated": 1, "deleted": 1}, "elapsed_seconds": 0.5}
    streamed = carried_back({"database": {"via": "reverse stream", "applied": applied}})
    assert streamed[0].what == "database rows back (reverse stream)" and streamed[0].amount == 5
    fallback = carried_back(
        {
            "database": {
                "via": "row delta",
                "reverse_stream_unusable": "the target truncated a table",
                "applied": applied,
            }
        }
    )
    assert fallback[0].what == "database rows back (row delta; reverse stream not usable: the target truncated a table)"
    assert carried_back({"database": {"applied": applied}})[0].what == "database rows back"  # older reports
