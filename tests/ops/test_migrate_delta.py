"""The delta strategy's copy (issue 13, item 1) against real PostgreSQL and Redis: chunk maps (key ranges + hashes),
the in-freeze pass that copies only differing chunks (inserts, updates, deletes, keys moving between chunks, a table
without a primary key, sequences, an empty table, rows on a chunk boundary), and the Redis pass that moves only the
keys changed since the first copy (new, changed, deleted, TTLs)."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest
import redis

from tests.support import Services, create_database
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters.postgres import PgTarget, chunks, fix_text_output
from timetodo.ops.migrate.incremental import SchemaDiffers, delta_pass, plan_specs
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
    finally:
        await conn.close()
    specs = await plan_specs(source)
    assert "app_state" not in specs
    ours = await chunks.hash_tables(PgTarget.from_url(source), specs.values(), jobs=2)
    theirs = await chunks.hash_tables(PgTarget.from_url(target), specs.values(), jobs=1)
    assert ours == theirs  # a clone hashes the same, chunk for chunk
    assert chunks.differing({0: (1, 5)}, {0: (1, 5), 2: (1, 7)}) == [2]
    assert chunks.differing({0: (1, 5), 1: (0, 0)}, {0: (1, 6)}) == [0]


async def test_delta_pass_copies_only_differing_chunks_and_makes_the_target_equal(pair: tuple[str, str]) -> None:
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
        assert 590 < dst.ttl("new:ttl") <= 600 and 90 < dst.ttl("ttl:change") <= 100
        assert dst.ttl("ttl:drop") == -1 and 40 < dst.ttl("plain:10") <= 50 and dst.ttl("ttl:keep") > 3500
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
    abandoned = copied({"db": {"strategy": "delta", "abandoned": "a row vanished"}})
    assert abandoned[0].what.startswith("database delta (abandoned")
