"""The delta strategy's copy (issue 13, item 1) against real PostgreSQL and Redis: chunk maps (key ranges + hashes),
the in-freeze pass that copies only differing chunks (inserts, updates, deletes, keys moving between chunks, a table
without a primary key, sequences, an empty table, rows on a chunk boundary), and the Redis pass that moves only the
keys changed since the first copy (new, changed, deleted, TTLs)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis

from tests.support import Services, create_database
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters.postgres import PgTarget, chunks, fix_text_output
from timetodo.ops.migrate.incremental import Baseline, SchemaDiffers, delta_pass, plan_specs
from timetodo.ops.migrate.report.model import copied

pytestmark = pytest.mark.slow

SCHEMA = """
CREATE TABLE items (id bigserial PRIMARY KEY, v text NOT NULL, n numeric, at timestamptz DEFAULT now());
CREATE TABLE children (id bigserial PRIMARY KEY, item_id bigint NOT NULL REFERENCES items ON DELETE CASCADE,
                       note text);
CREATE TABLE kv (k varchar(40) PRIMARY KEY, v int);
CREATE TABLE pairs (a int, b int, v text, PRIMARY KEY (a, b));
CREATE TABLE nopk (x int, y text);
CREATE TABLE empty (id serial PRIMARY KEY, v text);
CREATE TABLE app_state (id int PRIMARY KEY, maintenance boolean);
INSERT INTO items (v, n) SELECT 'item ' || g, g * 1.5 FROM generate_series(1, 1000) g;
INSERT INTO children (item_id, note) SELECT g, 'child of ' || g FROM generate_series(1, 1000, 7) g;
INSERT INTO kv SELECT 'key-' || lpad(g::text, 4, '0'), g FROM generate_series(1, 300) g;
INSERT INTO pairs SELECT g / 10, g % 10, 'p' || g FROM generate_series(1, 400) g;
INSERT INTO nopk SELECT g, 'row ' || g FROM generate_series(1, 50) g;
INSERT INTO app_state VALUES (1, false);
"""


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def clone(url: str) -> str:
    """CREATE DATABASE … TEMPLATE: the target after the first full copy."""
    name = f"ttd_{secrets.token_hex(6)}"
    base = plain(url).rpartition("/")[0]
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{plain(url).rpartition("/")[2]}"')
    finally:
        await conn.close()
    return f"{base}/{name}"


async def contents(url: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET TimeZone TO 'UTC'")
        out = {}
        for table in ("items", "children", "kv", "pairs", "nopk", "empty"):
            out[table] = [r[0] for r in await conn.fetch(f"SELECT t::text FROM {table} AS t ORDER BY 1")]
        for seq in ("items_id_seq", "children_id_seq", "empty_id_seq"):
            out[seq] = [str(tuple(await conn.fetchrow(f"SELECT last_value, is_called FROM {seq}")))]
        return out
    finally:
        await conn.close()


@pytest.fixture
async def pair(services: Services) -> tuple[str, str]:
    source = plain(await create_database(services.postgres_url))
    conn = await asyncpg.connect(source)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()
    return source, await clone(source)


async def test_chunk_boundaries_and_hashes(pair: tuple[str, str]) -> None:
    source, target = pair
    conn = await asyncpg.connect(source)
    try:
        await fix_text_output(conn)
        items = await chunks.plan_table(conn, "items", rows_per_chunk=100)
        assert items.column == "id" and items.bounds[:3] == ("101", "201", "301") and items.chunks == 10
        hashes = await chunks.hash_table(conn, items)
        # chunk 0 is every key below the first boundary; the boundary itself starts chunk 1
        assert hashes[0][0] == 100 and hashes[1][0] == 100 and set(hashes) == set(range(10))
        assert await chunks.hash_table(conn, items, only=[1]) == {1: hashes[1]}
        kv = await chunks.plan_table(conn, "kv", rows_per_chunk=64)
        assert kv.collatable and kv.bounds[0] == "key-0065"
        pairs = await chunks.plan_table(conn, "pairs", rows_per_chunk=35)
        assert pairs.column == "a" and len(set(pairs.bounds)) == len(pairs.bounds)  # first key column, deduplicated
        assert (await chunks.plan_table(conn, "nopk")).column is None
        assert (await chunks.plan_table(conn, "empty")).bounds == ()
        # planned from min/max and the row estimate (integer keys), or by reading the key (others)
        await conn.execute("ANALYZE")
        quick = await chunks.plan_table_quickly(conn, "items", rows_per_chunk=100)
        assert quick.bounds[:2] == ("101", "201") and quick.chunks == 10
        assert (await chunks.plan_table_quickly(conn, "kv", rows_per_chunk=64)).bounds == kv.bounds
        assert (await chunks.plan_table_quickly(conn, "empty")).bounds == ()
        assert await chunks.hash_table(conn, quick) == hashes  # same boundaries, same hashes
    finally:
        await conn.close()
    specs = await plan_specs(source)
    assert "app_state" not in specs
    conn = await asyncpg.connect(target)
    try:  # the same rows stored in another physical order: an update to the same value moves a row
        await conn.execute("UPDATE items SET v = v WHERE id % 3 = 0; UPDATE nopk SET y = y WHERE x % 2 = 0")
        moved = await conn.fetchval("SELECT count(*) FROM items WHERE ctid > (SELECT ctid FROM items WHERE id = 1000)")
        assert moved > 0
    finally:
        await conn.close()
    ours = await chunks.hash_tables(PgTarget.from_url(source), specs.values(), jobs=2)
    theirs = await chunks.hash_tables(PgTarget.from_url(target), specs.values(), jobs=1)
    assert ours == theirs  # a clone hashes the same, chunk for chunk, whatever the order rows are stored in
    # a chunk map saved without its columns (an older version's) looks them up and hashes the same
    bare = chunks.ChunkSpec.from_dict({**specs["items"].to_dict(), "columns": [], "order": []})
    assert (await chunks.hash_tables(PgTarget.from_url(target), [bare]))["items"] == ours["items"]
    conn = await asyncpg.connect(target)
    try:  # one value changed: that chunk's hash, and only it
        await conn.execute("UPDATE items SET n = n + 0.001 WHERE id = 555")
    finally:
        await conn.close()
    changed = await chunks.hash_tables(PgTarget.from_url(target), specs.values(), jobs=2)
    assert {t: chunks.differing(ours[t], changed[t]) for t in ours if ours[t] != changed[t]} == {"items": [0]}
    assert chunks.differing({0: (1, 5)}, {0: (1, 5), 2: (1, 7)}) == [2]
    assert chunks.differing({0: (1, 5), 1: (0, 0)}, {0: (1, 6)}) == [0]


@pytest.mark.parametrize("batch", [64, 2], ids=["one-query", "key-range-batches"])
async def test_delta_pass_copies_only_differing_chunks_and_makes_the_target_equal(
    pair: tuple[str, str], batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """…also when the rows of the differing chunks are read a few key ranges at a time (`key-range-batches`)."""
    monkeypatch.setattr(chunks, "MAX_RANGE_FILTERS", batch)
    source, target = pair
    conn = await asyncpg.connect(source)
    try:
        specs = {}
        for table in ("items", "children", "kv", "pairs", "nopk", "empty"):
            specs[table] = await chunks.plan_table(conn, table, rows_per_chunk=100)
        bound = int(specs["items"].bounds[4])  # 501: the first key of chunk 5
        await conn.execute(
            f"""
            INSERT INTO items (v) SELECT 'new ' || g FROM generate_series(1, 30) g;  -- past the last boundary
            UPDATE items SET v = 'updated on the boundary' WHERE id = {bound};
            UPDATE items SET n = NULL WHERE id = {bound - 1};                           -- last key of chunk 4
            DELETE FROM items WHERE id = 8;                                              -- cascades to children
            UPDATE items SET id = 5000 WHERE id = 250;                                   -- moves to the last chunk
            INSERT INTO items (id, v) VALUES (-5, 'below every boundary');
            INSERT INTO empty (v) VALUES ('first'), ('second');
            UPDATE kv SET v = -1 WHERE k = 'key-0200';
            DELETE FROM kv WHERE k = 'key-0001';
            INSERT INTO kv VALUES ('Zed', 1), ('ábc', 2);
            INSERT INTO pairs VALUES (100, 1, 'new pair');
            DELETE FROM pairs WHERE a = 3 AND b = 3;
            UPDATE nopk SET y = 'changed' WHERE x = 7;
            SELECT nextval('children_id_seq');                                           -- a sequence alone
            """
        )
    finally:
        await conn.close()
    before = await contents(target)
    result = await delta_pass(source, target, specs, jobs=2, verify=True)
    assert result["problems"] == []
    assert await contents(target) == await contents(source)
    assert await contents(target) != before
    # items: chunk 0 (id 8 deleted, -5 inserted), 2 (id 250 moved away), 4 and 5 (either side of the boundary),
    # 9 (the new rows and id 5000): 5 of its 10 chunks
    assert result["chunks_by_table"]["items"] == 5, result
    assert result["whole_tables"] == {"nopk": 50}
    assert result["deleted"] >= 1 + 1 + 1 + 1  # items 8, its child, kv key-0001, the pair (and id 250's old key)
    assert set(result["chunks_by_table"]) == {"items", "children", "kv", "pairs", "nopk", "empty"}
    assert result["sequences"] >= 1  # children: nextval without a row (the rows moved the others already)
    # app_state is deployment state: never carried
    conn = await asyncpg.connect(target)
    try:
        await conn.execute("UPDATE app_state SET maintenance = true")
    finally:
        await conn.close()
    again = await delta_pass(source, target, specs, jobs=1, verify=True)
    assert again["chunks_copied"] == 0 and again["rows"] == 0 and again["problems"] == []
    conn = await asyncpg.connect(target)
    try:
        assert await conn.fetchval("SELECT maintenance FROM app_state") is True
    finally:
        await conn.close()


async def test_delta_pass_refuses_schemas_that_differ(pair: tuple[str, str]) -> None:
    source, target = pair
    conn = await asyncpg.connect(target)
    try:
        await conn.execute("ALTER TABLE items ADD COLUMN extra int")
    finally:
        await conn.close()
    with pytest.raises(SchemaDiffers, match="items"):
        await delta_pass(source, target, await plan_specs(source))


# ================================================================================================= Redis


def _db(services: Services, index: int) -> str:
    return services.redis_url.rsplit("/", 1)[0] + f"/{index}"


def test_redis_delta_moves_only_changed_keys_and_keeps_ttls(services: Services) -> None:
    source_url, target_url = _db(services, 13), _db(services, 14)
    src, dst = redis.Redis.from_url(source_url), redis.Redis.from_url(target_url)
    try:
        src.flushdb()
        dst.flushdb()
        for i in range(3000):
            src.set(f"plain:{i}", f"v{i}")
        src.set("ttl:keep", "x", ex=3600)
        src.set("ttl:change", "x", ex=3600)
        src.set("ttl:drop", "x", ex=3600)
        src.hset("hash", mapping={"a": "1"})
        copied = asyncio.run(redisops.copy_redis(source_url, target_url, flush_target=True))
        assert copied.keys == 3004
        dst.set("stray:on-target-only", "1")
        src.set("plain:5", "changed")
        src.hset("hash", "b", "2")
        src.delete("plain:9")
        src.set("new:ttl", "n", ex=600)
        src.expire("ttl:change", 100)
        src.persist("ttl:drop")
        src.expire("plain:10", 50)
        delta = asyncio.run(redisops.copy_redis_delta(source_url, target_url, connections=2, batch=256))
        assert (delta.new, delta.changed, delta.deleted) == (1, 5, 2), delta.to_dict()
        assert delta.scanned == 3004
        assert sorted(dst.keys()) == sorted(src.keys())
        for key in src.scan_iter(count=1000):
            assert dst.dump(key) == src.dump(key), key
        # the same absolute expiry as the source's (PEXPIRETIME), however long the pass took on a loaded machine
        for key in ("new:ttl", "ttl:change", "plain:10", "ttl:keep"):
            assert dst.pexpiretime(key) == src.pexpiretime(key) > 0, key
        assert dst.ttl("ttl:drop") == -1
        nothing = asyncio.run(redisops.copy_redis_delta(source_url, target_url))
        assert (nothing.new, nothing.changed, nothing.deleted) == (0, 0, 0), nothing.to_dict()
    finally:
        src.flushdb()
        dst.flushdb()
        src.close()
        dst.close()


def test_the_report_says_what_a_delta_pass_moved() -> None:
    result = {
        "db": {"strategy": "delta", "chunks": 5000, "chunks_copied": 3, "rows": 41, "seconds": 2.5},
        "redis": {"keys": 7, "scanned": 100_000, "deleted": 2, "bytes": 900, "seconds": 1.5},
        "files": {"files": 1, "bytes": 2000, "seconds": 0.5},
    }
    moved = {m.what: m for m in copied(result)}
    db = moved["database delta (3 of 5,000 chunks)"]
    assert (db.amount, db.unit, db.seconds) == (41, "rows", 2.5)
    assert moved["Redis delta (100,000 keys compared, 2 deleted)"].amount == 7
    tracked = {"method": "key tracking", "keys": 5, "scanned": 6, "deleted": 1, "seconds": 0.01}
    assert [m.what for m in copied({"redis": tracked})] == ["Redis delta (key tracking named 6 keys, 1 deleted)"]
    lost = {"method": "scan script", "keys": 5, "scanned": 9, "deleted": 0, "tracking_lost": "SWAPDB ran"}
    assert (
        copied({"redis": lost})[0].what == "Redis delta (9 keys compared, 0 deleted; key tracking not used: SWAPDB ran)"
    )
    abandoned = copied({"db": {"strategy": "delta", "abandoned": "a row vanished"}})
    assert abandoned[0].what.startswith("database delta (abandoned")


# ======================================================================== the in-freeze pass from a baseline


@pytest.mark.parametrize("split", [False, True], ids=["one-scan", "block-ranges"])
async def test_a_baseline_rehashes_only_chunks_written_since_and_misses_nothing(
    pair: tuple[str, str], split: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-pass records both sides' hashes and xmin horizons; the next pass re-hashes only chunks holding rows
    written since (or whose row count changed) — on both sides: a stray write on the target is found too — and the
    target ends equal to the source. Rows frozen by VACUUM FREEZE (old xids) do not hide anything. With
    `block-ranges`, every table's scan is split into heap block ranges over the pass's connections: the same."""
    if split:
        monkeypatch.setattr(chunks, "SCAN_SPLIT_BYTES", 0)
    source, target = pair
    for url in (source, target):
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("VACUUM FREEZE")
        finally:
            await conn.close()
    conn = await asyncpg.connect(source)
    try:
        specs = {t: await chunks.plan_table(conn, t, rows_per_chunk=100) for t in ("items", "children", "kv", "nopk")}
    finally:
        await conn.close()
    recorded: list[Baseline] = []
    first = await delta_pass(source, target, specs, jobs=2, verify=True, record=recorded.append)
    assert first["chunks_copied"] == 0 and first["hashing"] == "every chunk" and len(recorded) == 1
    baseline = recorded[0]
    conn = await asyncpg.connect(source)
    try:
        await conn.execute(
            """
            UPDATE items SET v = 'changed' WHERE id = 150;            -- chunk 1
            DELETE FROM items WHERE id = 420;                          -- chunk 4: a delete leaves no row behind
            INSERT INTO items (id, v) VALUES (-1, 'new below');        -- chunk 0
            UPDATE kv SET v = 0 WHERE k = 'key-0100';
            UPDATE nopk SET y = 'changed again' WHERE x = 3;
            """
        )
    finally:
        await conn.close()
    conn = await asyncpg.connect(target)
    try:  # a stray write on the target after the pre-pass: found by the target's own xmin scan
        await conn.execute("UPDATE items SET v = 'stray' WHERE id = 777; DELETE FROM kv WHERE k = 'key-0250'")
    finally:
        await conn.close()
    total = first["chunks"]  # the tables the specs lack (pairs, empty) are planned by the pass
    result = await delta_pass(source, target, specs, jobs=2, verify=True, baseline=baseline)
    assert result["problems"] == [] and result["hashing"].startswith("changed chunks only")
    assert await contents(target) == await contents(source)
    rehashed = result["chunks_rehashed"]
    assert 4 <= rehashed["source"] < total and 2 <= rehashed["target"] < total, rehashed
    assert result["chunks_by_table"]["items"] == 4  # chunks 0, 1, 4 (source) and 7 (the stray write)
    # again from the same baseline: the pass's own writes are newer than the horizon, re-hashed and found equal
    again = await delta_pass(source, target, specs, jobs=1, verify=True, baseline=baseline)
    assert again["chunks_copied"] == 0 and again["problems"] == []
    # a horizon that is not a past xid of that database (another database's baseline): everything is hashed
    ahead = Baseline(
        baseline.specs,
        baseline.source,
        baseline.source_horizon + 10_000_000,
        baseline.target,
        baseline.target_horizon,
        baseline.source_oids,
        baseline.target_oids,
    )
    whole = await delta_pass(source, target, specs, jobs=1, baseline=ahead)
    assert whole["chunks_rehashed"]["source"] == total and whole["chunks_copied"] == 0


async def test_the_target_is_not_scanned_when_its_snapshot_is_the_baselines(pair: tuple[str, str]) -> None:
    """A snapshot with the baseline's identity (xmin, xmax, in-progress xids, server start) sees the same rows: the
    pass reuses the baseline's hashes without a scan. Any write since — here one row on the target — changes the
    identity: the scan runs and finds the chunk."""
    _, target = pair
    conn = await asyncpg.connect(target)
    try:
        spec = await chunks.plan_table(conn, "items", rows_per_chunk=100)
    finally:
        await conn.close()
    db = PgTarget.from_url(target)
    for _ in range(5):  # another database of the server (or autovacuum's ANALYZE) may take an xid meanwhile
        base = await chunks.hash_tables_at(db, [spec], jobs=2)
        again = await chunks.rehash_changed(db, [spec], base.hashes, base.horizon, 2, base.oids, base.snapshot)
        if again.snapshot == base.snapshot:
            break
    assert again.snapshot == base.snapshot, "the server never stayed idle for a moment"
    assert not again.scanned and again.rehashed == 0 and again.hashes == base.hashes
    conn = await asyncpg.connect(target)
    try:
        await conn.execute("UPDATE items SET v = 'written on the target' WHERE id = 250")
    finally:
        await conn.close()
    after = await chunks.rehash_changed(db, [spec], base.hashes, base.horizon, 2, base.oids, base.snapshot)
    assert after.scanned and after.snapshot != base.snapshot
    assert chunks.differing(base.hashes["items"], after.hashes["items"]) == [2]
    assert after.hashes == (await chunks.hash_tables_at(db, [spec])).hashes


async def test_a_chunk_that_only_lost_rows_is_found_without_any_new_row(pair: tuple[str, str]) -> None:
    source, _ = pair
    conn = await asyncpg.connect(source)
    try:
        await fix_text_output(conn)
        spec = await chunks.plan_table(conn, "items", rows_per_chunk=100)
        async with conn.transaction(isolation="repeatable_read"):
            known = await chunks.hash_table(conn, spec)
            horizon = await chunks.snapshot_horizon(conn)
        assert await chunks.changed_chunks(conn, spec, known, horizon) == []
        await conn.execute("DELETE FROM children; DELETE FROM items WHERE id BETWEEN 301 AND 400")  # all of chunk 3
        await conn.execute("DELETE FROM items WHERE id = 650")
        assert await chunks.changed_chunks(conn, spec, known, horizon) == [3, 6]
    finally:
        await conn.close()


def test_redis_changes_against_recorded_digests_read_only_the_source(services: Services, tmp_path: Path) -> None:
    """The pre-pass (`copy_redis_delta` with `record`) notes what the target holds; `copy_redis_changes` then finds
    new, changed (value or expiry) and deleted keys from the source alone — by the Lua script, and by DUMP for a
    user the server refuses scripts to (an ACL without @scripting) — and leaves the target equal to the source."""
    source_url, target_url = _db(services, 11), _db(services, 12)
    src, dst = redis.Redis.from_url(source_url), redis.Redis.from_url(target_url)
    password = secrets.token_hex(8)
    src.acl_setuser(
        "ttd-noscript", enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all", "-@scripting"]
    )
    parts = urlsplit(source_url)
    no_scripts = urlunsplit(parts._replace(netloc=f"ttd-noscript:{password}@{parts.hostname}:{parts.port}"))
    try:
        for method, reader in (("script", source_url), ("dump", no_scripts)):
            src.flushdb()
            dst.flushdb()
            for i in range(2500):
                src.set(f"plain:{i}", f"v{i}")
            src.set("ttl:change", "x", ex=3600)
            src.hset("hash", mapping={"a": "1"})
            src.set(b"bin:\xff\x00", b"\x01\x02")
            asyncio.run(redisops.copy_redis(source_url, target_url, flush_target=True))
            recorded: redisops.KeyDigests = {}
            pre = asyncio.run(redisops.copy_redis_delta(source_url, target_url, batch=300, record=recorded))
            assert pre.new + pre.changed == 0 and len(recorded) == 2503
            redisops.save_digests(tmp_path / "digests.json", recorded)
            assert redisops.load_digests(tmp_path / "digests.json") == recorded
            src.set("plain:5", "changed")
            src.hset("hash", "b", "2")
            src.delete("plain:9")
            src.set("new:key", "n", ex=600)
            src.expire("ttl:change", 100)
            src.set(b"bin:\xff\x00", b"\x03")
            changes = asyncio.run(redisops.copy_redis_changes(reader, target_url, recorded, connections=2, batch=400))
            assert (changes.new, changes.changed, changes.deleted) == (1, 4, 1), changes.to_dict()
            assert changes.method == method and changes.scanned == 2503
            assert sorted(dst.keys()) == sorted(src.keys())
            for key in src.scan_iter(count=1000):
                assert dst.dump(key) == src.dump(key), key
            for key in ("ttl:change", "new:key"):  # the source's absolute expiry, however long the pass took
                assert abs(dst.pexpiretime(key) - src.pexpiretime(key)) < 1000 and dst.pexpiretime(key) > 0, key
            nothing = asyncio.run(redisops.copy_redis_changes(source_url, target_url, recorded))
            # the record stays the pre-pass's: a resumed pass copies the same keys again, and nothing else
            assert (nothing.new, nothing.changed, nothing.deleted) == (1, 4, 0), nothing.to_dict()
    finally:
        src.acl_deluser("ttd-noscript")
        src.flushdb()
        dst.flushdb()
        src.close()
        dst.close()


async def test_a_pre_pass_that_wrote_to_the_target_records_its_hashes_again(pair: tuple[str, str]) -> None:
    """The pre-pass records the target's hashes again after writing to it: the next pass re-hashes nothing there
    (the chunks it wrote are already in the baseline), and the baseline still proves the target equal."""
    source, target = pair
    conn = await asyncpg.connect(source)
    try:
        specs = {t: await chunks.plan_table(conn, t, rows_per_chunk=100) for t in ("items", "kv")}
        await conn.execute("UPDATE items SET v = 'before the pre-pass' WHERE id IN (5, 505); DELETE FROM kv")
    finally:
        await conn.close()
    recorded: list[Baseline] = []
    pre = await delta_pass(source, target, specs, jobs=2, record=recorded.append)
    assert pre["chunks_copied"] == 5 and len(recorded) == 2  # items chunks 0 and 5, kv's three
    before, after = recorded
    assert before.target != before.source and after.target == after.source
    assert after.target_horizon > before.target_horizon and after.target_snapshot != before.target_snapshot
    final = await delta_pass(source, target, specs, jobs=2, verify=True, baseline=after)
    assert final["chunks_copied"] == 0 and final["problems"] == []
    assert final["chunks_rehashed"]["target"] == 0, final


async def test_the_in_freeze_pass_compares_only_rows_written_since_and_misses_nothing(pair: tuple[str, str]) -> None:
    """From a baseline where both sides were equal, the pass reads only the source's rows written since its horizon
    (looked up by key on the target) and finds deletes by row counts: a row updated back to the value it had before
    the pre-pass copied a newer one, a delete + re-insert of the same key (other content, and the same content), an
    insert into a chunk that lost another row (the count unchanged), a chunk that only lost a row, keys of text and
    of two columns — all with the rows written since frozen by VACUUM FREEZE before the pass."""
    source, target = pair
    conn = await asyncpg.connect(source)
    try:
        specs = {t: await chunks.plan_table(conn, t, rows_per_chunk=100) for t in ("items", "kv", "pairs")}
        await conn.execute("UPDATE items SET v = 'copied by the pre-pass' WHERE id = 10")
    finally:
        await conn.close()
    recorded: list[Baseline] = []
    pre = await delta_pass(source, target, specs, jobs=2, record=recorded.append)
    assert pre["chunks_copied"] == 1
    baseline = recorded[-1]
    assert baseline.source == baseline.target
    conn = await asyncpg.connect(source)
    try:
        await conn.execute(
            """
            UPDATE items SET v = 'item 10' WHERE id = 10;                         -- back to its old value
            DELETE FROM children WHERE item_id IN (22, 29, 120);
            DELETE FROM items WHERE id = 20; INSERT INTO items (id, v) VALUES (20, 'reborn');
            DELETE FROM items WHERE id = 21; INSERT INTO items (id, v, n, at)
                SELECT 21, 'item 21', 31.5, at FROM items WHERE id = 22;          -- the same content again
            DELETE FROM items WHERE id = 22; INSERT INTO items (id, v) VALUES (-3, 'new, chunk 0');
            DELETE FROM items WHERE id = 120;                                     -- chunk 1 only lost a row
            DELETE FROM kv WHERE k = 'key-0150'; INSERT INTO kv VALUES ('key-0150x', 7);
            UPDATE pairs SET v = 'changed' WHERE a = 20 AND b = 3;
            """
        )
        await conn.execute("VACUUM FREEZE")  # the rows written since carry frozen xmins now
    finally:
        await conn.close()
    result = await delta_pass(source, target, specs, jobs=2, verify=True, baseline=baseline)
    assert result["problems"] == []
    assert await contents(target) == await contents(source)
    # every differing chunk was compared by the rows written since (all tables here have a primary key but nopk,
    # which is not written), reading a few rows rather than the chunks' hundreds
    assert result["chunks_compared_since"] == result["chunks_copied"] >= 4, result
    assert 0 < result["rows_compared_since"] <= 12, result
