"""Rollback's row-level delta (issue 5, item 10) against real PostgreSQL: compute what the target wrote since the
cutover snapshot, carry it back to the source, and refuse when the source was written after the snapshot."""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support import Services, create_database
from timetodo.core.schema import upgrade_async
from timetodo.models import Base
from timetodo.ops.adapters.postgres import PgError
from timetodo.ops.migrate.rollback import (
    Delta,
    DeltaConflict,
    DeltaError,
    NoPrimaryKey,
    apply_delta,
    compute_delta,
    compute_delta_since,
    xid_horizon,
)

pytestmark = pytest.mark.slow
PG_BIN = Path("/usr/lib/postgresql/15/bin")
T0 = datetime(2026, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
ALL_BYTES = bytes(range(256))
TRICKY = "quote ' double \" backslash \\ tab\t newline\n unicode é ✓ 🚀"


# ----------------------------------------------------------------------------------------------------------- helpers


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(plain(url))
    await conn.execute("SET TimeZone TO 'UTC'")
    return conn


def db_name(url: str) -> str:
    return url.rpartition("/")[2]


async def clone_template(url: str) -> str:
    """CREATE DATABASE … TEMPLATE: an exact copy (no connection may be open on `url`)."""
    name = f"ttd_{secrets.token_hex(6)}"
    base = url.rpartition("/")[0]
    conn = await asyncpg.connect(plain(f"{base}/postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{db_name(url)}"')
    finally:
        await conn.close()
    return f"{base}/{name}"


async def clone_dump(url: str) -> str:
    """pg_dump -Fc | pg_restore into a fresh database: how the cutover snapshot is made."""
    copy = await create_database(url)
    pipeline = (
        f"{PG_BIN / 'pg_dump'} -Fc --dbname='{plain(url)}' | "
        f"{PG_BIN / 'pg_restore'} --no-owner --exit-on-error --dbname='{plain(copy)}'"
    )
    result = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return copy


async def insert(conn: asyncpg.Connection, table: str, **values: Any) -> int:
    columns = ", ".join(f'"{name}"' for name in values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    return int(
        await conn.fetchval(f'INSERT INTO "{table}" ({columns}) VALUES ({params}) RETURNING id', *values.values())
    )


async def add_user(conn: asyncpg.Connection, email: str) -> int:
    return await insert(
        conn, "users", email=email, password_hash="$argon2id$" + TRICKY, timezone="Europe/Paris", locale="fr",
        is_admin=False, is_active=True, created_at=T0, updated_at=T0,
    )  # fmt: skip


async def add_project(conn: asyncpg.Connection, owner: int, name: str) -> int:
    return await insert(
        conn, "projects", owner_id=owner, name=name, color="#aabbcc", archived=False, created_at=T0, updated_at=T0
    )


async def add_task(
    conn: asyncpg.Connection,
    owner: int,
    title: str,
    project: int | None = None,
    parent: int | None = None,
    **extra: Any,
) -> int:
    values: dict[str, Any] = {
        "owner_id": owner, "project_id": project, "parent_id": parent, "title": title, "description": TRICKY,
        "priority": 2, "labels": json.dumps(["été", "a\"b"]), "position": 1, "done": False,
        "created_at": T0, "updated_at": T0,
    }  # fmt: skip
    values.update(extra)
    return await insert(conn, "tasks", **values)


async def add_time_entry(
    conn: asyncpg.Connection, owner: int, task: int | None, project: int | None, ended: datetime | None
) -> int:
    return await insert(
        conn, "time_entries", owner_id=owner, task_id=task, project_id=project, note=TRICKY,
        started_at=T0 - timedelta(hours=1), ended_at=ended, created_at=T0, updated_at=T0,
    )  # fmt: skip


async def add_attachment(conn: asyncpg.Connection, owner: int, task: int, filename: str) -> int:
    return await insert(
        conn, "attachments", owner_id=owner, task_id=task, filename=filename, content_type="image/png",
        size=1234, sha256="ab" * 32, created_at=T0,
    )  # fmt: skip


async def add_reminder(conn: asyncpg.Connection, owner: int, task: int) -> int:
    return await insert(
        conn, "reminders", owner_id=owner, task_id=task, remind_at=T0 + timedelta(days=1), fire_at=T0 + timedelta(days=1),
        state="scheduled", created_at=T0, updated_at=T0,
    )  # fmt: skip


async def add_completion(conn: asyncpg.Connection, owner: int, task: int) -> int:
    return await insert(conn, "task_completions", owner_id=owner, task_id=task, completed_at=T0, due_date=T0.date())


async def add_token(conn: asyncpg.Connection, user: int, family: str) -> int:
    return await insert(
        conn, "refresh_tokens", user_id=user, family_id=family, token_hash=secrets.token_hex(32), created_at=T0,
        expires_at=T0 + timedelta(days=30),
    )  # fmt: skip


async def add_idempotency_key(conn: asyncpg.Connection, key: str, body: bytes) -> int:
    return await insert(
        conn, "idempotency_keys", scope="POST /api/v1/tasks user=1", key=key, fingerprint="f" * 64, status_code=201,
        content_type="application/json", body=body, created_at=T0, expires_at=T0 + timedelta(hours=24),
    )  # fmt: skip


@dataclass
class Seed:
    """Ids of the rows the source starts with."""

    ids: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.ids[name]


async def populate(url: str) -> Seed:
    seed = Seed()
    ids = seed.ids
    conn = await connect(url)
    try:
        ids["alice"] = await add_user(conn, "alice@example.com")
        ids["bob"] = await add_user(conn, "bob@example.com")
        ids["carol"] = await add_user(conn, "carol@example.com")
        ids["tok_alice_1"] = await add_token(conn, ids["alice"], "fam-a")
        ids["tok_alice_2"] = await add_token(conn, ids["alice"], "fam-a")
        ids["tok_bob"] = await add_token(conn, ids["bob"], "fam-b")
        ids["home"] = await add_project(conn, ids["alice"], "Home")
        ids["work"] = await add_project(conn, ids["alice"], "Work")
        ids["garden"] = await add_project(conn, ids["bob"], "Garden")
        ids["t_home"] = await add_task(conn, ids["alice"], "home " + TRICKY, ids["home"], due_utc=T0)
        ids["s1"] = await add_task(conn, ids["alice"], "sub 1", ids["home"], ids["t_home"])
        ids["s2"] = await add_task(conn, ids["alice"], "sub 2", ids["home"], ids["t_home"])
        ids["s3"] = await add_task(conn, ids["alice"], "sub of sub 2", ids["home"], ids["s2"])
        ids["t_work1"] = await add_task(conn, ids["alice"], "work 1", ids["work"])
        ids["t_work2"] = await add_task(conn, ids["alice"], "work 2", ids["work"], estimate_minutes=45)
        ids["w2_sub"] = await add_task(conn, ids["alice"], "work 2 sub", ids["work"], ids["t_work2"])
        ids["b1"] = await add_task(conn, ids["bob"], "bob 1", ids["garden"], due_date=T0.date())
        ids["c_done"] = await add_task(conn, ids["carol"], "carol", done=True, done_at=T0)
        ids["comp_home"] = await add_completion(conn, ids["alice"], ids["t_home"])
        ids["entry_done"] = await add_time_entry(conn, ids["alice"], ids["t_home"], ids["home"], T0)
        ids["entry_running"] = await add_time_entry(conn, ids["alice"], ids["t_work1"], ids["work"], None)
        ids["entry_bob"] = await add_time_entry(conn, ids["bob"], ids["b1"], ids["garden"], T0)
        ids["att_s1"] = await add_attachment(conn, ids["alice"], ids["s1"], "s1.png")
        ids["att_s3"] = await add_attachment(conn, ids["alice"], ids["s3"], "s3.png")
        ids["att_w2"] = await add_attachment(conn, ids["alice"], ids["t_work2"], "w2.png")
        ids["rem_home"] = await add_reminder(conn, ids["alice"], ids["t_home"])
        ids["rem_s2"] = await add_reminder(conn, ids["alice"], ids["s2"])
        ids["idem_k1"] = await add_idempotency_key(conn, "k1", ALL_BYTES)
        ids["idem_k2"] = await add_idempotency_key(conn, "k2", b"")
    finally:
        await conn.close()
    return seed


@pytest.fixture(scope="module")
async def template(services: Services) -> tuple[str, Seed]:
    """A database with the app schema and real rows; every test clones it (never writes to it)."""
    url = await create_database(services.postgres_url)
    await upgrade_async(url)
    return url, await populate(url)


@dataclass
class Trio:
    source: str
    snapshot: str
    target: str
    seed: Seed


@pytest.fixture
async def trio(template: tuple[str, Seed]) -> Trio:
    """source = the template; snapshot = its dump restored; target = an exact copy (the cutover's end state)."""
    url, seed = template
    source = await clone_template(url)
    return Trio(source, await clone_dump(source), await clone_template(source), seed)


async def primary_keys(conn: asyncpg.Connection) -> dict[str, list[str]]:
    rows = await conn.fetch(
        """
        SELECT c.relname, array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)) AS cols
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
        WHERE i.indisprimary GROUP BY c.relname
        """
    )
    return {str(r["relname"]): list(r["cols"]) for r in rows}


async def snapshot_of(url: str) -> dict[str, Any]:
    """Every table's rows ordered by primary key (Python values and exact text), and every sequence's state."""
    conn = await connect(url)
    try:
        state: dict[str, Any] = {"rows": {}, "text": {}, "sequences": {}}
        for table, cols in (await primary_keys(conn)).items():
            order = ", ".join(f'"{c}"' for c in cols)
            state["rows"][table] = [tuple(r) for r in await conn.fetch(f'SELECT * FROM "{table}" ORDER BY {order}')]
            state["text"][table] = [r[0] for r in await conn.fetch(f'SELECT t::text FROM "{table}" t ORDER BY {order}')]
        for row in await conn.fetch("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"):
            name = row[0]
            seq = await conn.fetchrow(f'SELECT last_value, is_called FROM "{name}"')
            state["sequences"][name] = (seq["last_value"], seq["is_called"])
        return state
    finally:
        await conn.close()


async def rows_by_key(url: str) -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    conn = await connect(url)
    try:
        found: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
        for table, cols in (await primary_keys(conn)).items():
            records = await conn.fetch(f'SELECT * FROM "{table}"')
            found[table] = {tuple(r[c] for c in cols): tuple(r) for r in records}
        return found
    finally:
        await conn.close()


async def expected_delta(current: str, snapshot: str) -> dict[str, dict[str, set[tuple[Any, ...]]]]:
    """The oracle: both databases loaded whole into Python and compared row by row."""
    ours, theirs = await rows_by_key(current), await rows_by_key(snapshot)
    expected = {}
    for table in ours:
        if table == "alembic_version":
            continue
        a, b = ours[table], theirs[table]
        expected[table] = {
            "inserted": set(a) - set(b),
            "deleted": set(b) - set(a),
            "updated": {k for k in set(a) & set(b) if a[k] != b[k]},
        }
    return expected


def as_sets(delta: Delta) -> dict[str, dict[str, set[tuple[Any, ...]]]]:
    return {
        name: {"inserted": set(t.inserted), "deleted": set(t.deleted), "updated": set(t.updated)}
        for name, t in delta.tables.items()
    }


def keys(*ids: int) -> set[tuple[Any, ...]]:
    return {(i,) for i in ids}


async def write_after_cutover(url: str, seed: Seed) -> dict[str, int]:
    """What users do on the target after the switch; returns the new ids."""
    new: dict[str, int] = {}
    conn = await connect(url)
    try:
        async with conn.transaction():
            # a new user with a project, a task tree and everything hanging off it
            new["dave"] = dave = await add_user(conn, "dave@example.com")
            new["tok_dave"] = await add_token(conn, dave, "fam-d")
            new["p_new"] = await add_project(conn, dave, "New ✓")
            new["n1"] = await add_task(conn, dave, "n1", new["p_new"], labels=json.dumps({"nested": [1, 2.5, None]}))
            new["n2"] = await add_task(conn, dave, "n2", new["p_new"], new["n1"])
            new["n3"] = await add_task(conn, dave, "n3", new["p_new"], new["n2"], done=True, done_at=T0)
            new["rem_n1"] = await add_reminder(conn, dave, new["n1"])
            new["att_n2"] = await add_attachment(conn, dave, new["n2"], "n2.png")
            new["comp_n3"] = await add_completion(conn, dave, new["n3"])
            new["entry_dave"] = await add_time_entry(conn, dave, new["n1"], new["p_new"], T0 + timedelta(minutes=5))
            # an existing task re-parented under a task created after the switch (a forward reference)
            new["a_new"] = await add_task(conn, seed["alice"], "alice new parent")
            await conn.execute("UPDATE tasks SET parent_id = $1 WHERE id = $2", new["a_new"], seed["t_work1"])
            # updates: title, done, JSON labels, timestamps
            await conn.execute(
                "UPDATE tasks SET title = $1, done = true, done_at = $2, labels = $3, updated_at = $2 WHERE id = $4",
                "home (done) " + TRICKY, T0 + timedelta(microseconds=1), json.dumps(["x", {"y": "é"}]), seed["t_home"],
            )  # fmt: skip
            await conn.execute("UPDATE tasks SET due_utc = NULL, due_date = NULL WHERE id = $1", seed["b1"])
            await conn.execute("UPDATE users SET sync_version = sync_version + 7 WHERE id = $1", seed["alice"])
            # the running timer stopped and a new one started (a unique partial index: one running per user)
            await conn.execute("UPDATE time_entries SET ended_at = $1 WHERE id = $2", T0, seed["entry_running"])
            new["entry_running_2"] = await add_time_entry(conn, seed["alice"], None, None, None)
            # deletes: a subtask (cascading to its subtask, attachment, reminder) and a project (SET NULL)
            await conn.execute("DELETE FROM tasks WHERE id = $1", seed["s2"])
            await conn.execute("DELETE FROM projects WHERE id = $1", seed["work"])
            # an account deleted: its tasks cascade (children must be deleted before parents to count them)
            await conn.execute("DELETE FROM users WHERE id = $1", seed["carol"])
            # a refresh token hard-deleted
            await conn.execute("DELETE FROM refresh_tokens WHERE id = $1", seed["tok_alice_1"])
            # an idempotency key purged and the same (scope, key) used again: a unique constraint freed and retaken
            await conn.execute("DELETE FROM idempotency_keys WHERE id = $1", seed["idem_k1"])
            new["idem_k1_again"] = await add_idempotency_key(conn, "k1", ALL_BYTES[::-1])
    finally:
        await conn.close()
    return new


# ------------------------------------------------------------------------------------------------------------- tests


async def test_delta_carries_every_write_back_to_the_source(trio: Trio) -> None:
    seed = trio.seed
    new = await write_after_cutover(trio.target, seed)

    delta = await compute_delta(trio.target, trio.snapshot)

    # the exact key sets, by hand …
    got = as_sets(delta)
    assert "alembic_version" not in got
    assert got["users"] == {
        "inserted": keys(new["dave"]),
        "updated": keys(seed["alice"]),
        "deleted": keys(seed["carol"]),
    }
    assert got["projects"] == {"inserted": keys(new["p_new"]), "updated": set(), "deleted": keys(seed["work"])}
    assert got["tasks"] == {
        "inserted": keys(new["n1"], new["n2"], new["n3"], new["a_new"]),
        # t_work1 re-parented and lost its project, t_work2 and its subtask lost their project (SET NULL)
        "updated": keys(seed["t_home"], seed["b1"], seed["t_work1"], seed["t_work2"], seed["w2_sub"]),
        "deleted": keys(seed["s2"], seed["s3"], seed["c_done"]),
    }
    assert got["time_entries"] == {
        "inserted": keys(new["entry_dave"], new["entry_running_2"]),
        "updated": keys(seed["entry_running"]),
        "deleted": set(),
    }
    assert got["refresh_tokens"] == {
        "inserted": keys(new["tok_dave"]),
        "updated": set(),
        "deleted": keys(seed["tok_alice_1"]),
    }
    assert got["attachments"] == {"inserted": keys(new["att_n2"]), "updated": set(), "deleted": keys(seed["att_s3"])}
    assert got["reminders"] == {"inserted": keys(new["rem_n1"]), "updated": set(), "deleted": keys(seed["rem_s2"])}
    assert got["task_completions"] == {"inserted": keys(new["comp_n3"]), "updated": set(), "deleted": set()}
    assert got["idempotency_keys"] == {
        "inserted": keys(new["idem_k1_again"]),
        "updated": set(),
        "deleted": keys(seed["idem_k1"]),
    }
    assert got["app_state"] == {"inserted": set(), "updated": set(), "deleted": set()}
    # … and by the oracle that loads both databases whole
    assert got == await expected_delta(trio.target, trio.snapshot)
    assert (delta.inserted, delta.updated, delta.deleted) == (13, 7, 9)
    assert delta.tables["tasks"].rows_current == 10 and delta.tables["tasks"].rows_snapshot == 9
    assert delta.tables["tasks"].key_columns == ["id"]

    # the delta survives JSON (it is saved with the rollback report); apply the reloaded copy
    saved = json.dumps(delta.to_dict())
    reloaded = Delta.from_json(saved)
    assert reloaded == delta
    assert json.loads(saved)["totals"] == {"inserted": 13, "updated": 7, "deleted": 9, "rows": 29}
    summary = delta.summary()
    assert f"13 inserted, 7 updated, 9 deleted rows in 9 of {len(Base.metadata.tables)} tables" in summary
    assert "tasks: +4 ~5 -3" in summary

    target_before = await snapshot_of(trio.target)
    result = await apply_delta(reloaded, trio.target, trio.source, snapshot_url=trio.snapshot, batch=2)

    for table, counts in result.to_dict()["tables"].items():
        t = delta.tables[table]
        assert counts == {"inserted": len(t.inserted), "updated": len(t.updated), "deleted": len(t.deleted)}, table
    assert (result.inserted, result.updated, result.deleted) == (13, 7, 9)
    assert "applied 13 inserted, 7 updated, 9 deleted rows" in result.summary()

    # every table of the source now equals the target, value by value and in exact text
    source = await snapshot_of(trio.source)
    assert source["rows"].keys() == target_before["rows"].keys()
    for table in target_before["rows"]:
        assert source["rows"][table] == target_before["rows"][table], table
        assert source["text"][table] == target_before["text"][table], table
    # the target was only read
    assert await snapshot_of(trio.target) == target_before

    # sequences: the source's are at least the target's, and a new row on the source takes a fresh id
    assert target_before["sequences"]["tasks_id_seq"] == (new["a_new"], True)
    for name, (value, _called) in target_before["sequences"].items():
        assert source["sequences"][name][0] >= value, name
    assert "public.tasks_id_seq" in result.sequences
    conn = await connect(trio.source)
    try:
        fresh = await add_task(conn, seed["bob"], "written on the source after the rollback")
        fresh_user = await add_user(conn, "erin@example.com")
    finally:
        await conn.close()
    assert fresh > max(k[0] for k in (await rows_by_key(trio.target))["tasks"])
    assert fresh_user > new["dave"]

    # nothing left to carry: the source equals the target (apart from the two rows just written)
    again = await compute_delta(trio.target, trio.source)
    assert as_sets(again)["tasks"]["deleted"] == keys(fresh)
    assert as_sets(again)["users"]["deleted"] == keys(fresh_user)
    assert again.total == 2


async def test_source_written_after_the_snapshot_is_refused(trio: Trio) -> None:
    seed = trio.seed
    conn = await connect(trio.target)
    try:
        await conn.execute("UPDATE tasks SET title = 'target title' WHERE id = $1", seed["t_home"])
        await conn.execute("UPDATE tasks SET title = 'target only' WHERE id = $1", seed["b1"])
        target_project = await add_project(conn, seed["bob"], "made on the target")
        await conn.execute("DELETE FROM refresh_tokens WHERE id = $1", seed["tok_bob"])
    finally:
        await conn.close()
    delta = await compute_delta(trio.target, trio.snapshot)
    assert delta.total == 4

    # the source accepted writes after the freeze, on rows the delta also touches
    conn = await connect(trio.source)
    try:
        await conn.execute("UPDATE tasks SET title = 'late source title' WHERE id = $1", seed["t_home"])
        late_project = await add_project(conn, seed["carol"], "made on the source after the freeze")
        await conn.execute("UPDATE refresh_tokens SET revoked_at = $1 WHERE id = $2", T0, seed["tok_bob"])
        await conn.execute("UPDATE users SET locale = 'de' WHERE id = $1", seed["carol"])  # not in the delta
    finally:
        await conn.close()
    assert late_project == target_project  # both took the same id from identical sequences
    before = await snapshot_of(trio.source)

    with pytest.raises(DeltaConflict) as info:
        await apply_delta(delta, trio.target, trio.source, snapshot_url=trio.snapshot)

    assert info.value.conflicts == {
        "tasks": [(seed["t_home"],)],
        "projects": [(target_project,)],
        "refresh_tokens": [(seed["tok_bob"],)],
    }
    message = str(info.value)
    assert f"tasks keys [{seed['t_home']}]" in message
    assert f"projects keys [{target_project}]" in message
    assert "nothing was applied" in message
    # nothing changed on the source: rows, text and sequences
    assert await snapshot_of(trio.source) == before


async def test_a_failure_mid_apply_rolls_everything_back(trio: Trio) -> None:
    """Users and projects are upserted before tasks; a task the source refuses undoes them all."""
    seed = trio.seed
    new = await write_after_cutover(trio.target, seed)
    delta = await compute_delta(trio.target, trio.snapshot)
    conn = await connect(trio.source)
    try:
        await conn.execute("ALTER TABLE tasks ADD CONSTRAINT no_n2 CHECK (title <> 'n2')")
    finally:
        await conn.close()
    before = await snapshot_of(trio.source)

    with pytest.raises(DeltaError, match=r"upserting into tasks; nothing was committed: .*no_n2") as info:
        await apply_delta(delta, trio.target, trio.source)

    assert "timetodo@" in str(info.value) and ":timetodo@" not in str(info.value)  # URL shown, password not
    after = await snapshot_of(trio.source)
    assert after["rows"] == before["rows"]
    assert new["dave"] not in {r[0] for r in after["rows"]["users"]}
    assert seed["idem_k1"] in {r[0] for r in after["rows"]["idempotency_keys"]}  # the leaf delete undone too


async def test_current_side_changed_after_the_delta_was_computed(trio: Trio) -> None:
    new = await write_after_cutover(trio.target, trio.seed)
    delta = await compute_delta(trio.target, trio.snapshot)
    conn = await connect(trio.target)
    try:
        await conn.execute("DELETE FROM tasks WHERE id = $1", new["n3"])
    finally:
        await conn.close()
    before = await snapshot_of(trio.source)

    with pytest.raises(DeltaError, match=rf"tasks: rows of the delta no longer exist .*keys \[{new['n3']}\]"):
        await apply_delta(delta, trio.target, trio.source, snapshot_url=trio.snapshot)

    assert await snapshot_of(trio.source) == before


async def test_empty_delta_is_a_no_op(trio: Trio) -> None:
    before = await snapshot_of(trio.source)

    delta = await compute_delta(trio.target, trio.snapshot)

    assert delta.is_empty and delta.total == 0
    assert delta.changed_tables == []
    counts = {name: len(rows) for name, rows in before["rows"].items() if name != "alembic_version"}
    assert set(delta.tables) == set(counts)
    for name, t in delta.tables.items():
        assert (t.rows_current, t.rows_snapshot) == (counts[name], counts[name]), name
    assert "0 inserted, 0 updated, 0 deleted rows in 0 of" in delta.summary()
    # nothing to apply: not even a connection is made (the current side's URL points nowhere)
    result = await apply_delta(
        delta, "postgresql://nobody:pw@127.0.0.1:1/none", trio.source, snapshot_url=trio.snapshot
    )
    assert result.total == 0 and result.tables == {} and result.sequences == {}
    assert await snapshot_of(trio.source) == before


async def test_table_without_primary_key_is_refused(trio: Trio) -> None:
    for url in (trio.target, trio.snapshot):
        conn = await connect(url)
        try:
            await conn.execute("CREATE TABLE audit_log (at timestamptz, message text)")
            await conn.execute("CREATE TABLE audit_log_2 (message text)")
        finally:
            await conn.close()

    with pytest.raises(NoPrimaryKey) as info:
        await compute_delta(trio.target, trio.snapshot)

    assert info.value.tables == ["audit_log", "audit_log_2"]
    assert "without a primary key" in str(info.value)
    assert "audit_log, audit_log_2" in str(info.value)
    with pytest.raises(NoPrimaryKey, match="audit_log_2"):
        await compute_delta(trio.target, trio.snapshot, tables=["users", "audit_log_2"])
    # the other tables can still be compared when named
    delta = await compute_delta(trio.target, trio.snapshot, tables=["users", "tasks"])
    assert list(delta.tables) == ["users", "tasks"] and delta.is_empty
    with pytest.raises(DeltaError, match=r"no such tables in schema public .*: nope"):
        await compute_delta(trio.target, trio.snapshot, tables=["users", "nope"])


async def test_schemas_that_differ_are_refused(trio: Trio) -> None:
    conn = await connect(trio.snapshot)
    try:
        await conn.execute("CREATE TABLE only_in_snapshot (id int PRIMARY KEY)")
    finally:
        await conn.close()
    with pytest.raises(DeltaError, match="tables only in the snapshot: only_in_snapshot"):
        await compute_delta(trio.target, trio.snapshot)

    conn = await connect(trio.target)
    try:
        await conn.execute("ALTER TABLE projects ADD COLUMN icon text")
    finally:
        await conn.close()
    with pytest.raises(DeltaError, match="columns differ on the snapshot for: projects"):
        await compute_delta(trio.target, trio.snapshot, tables=["users", "projects"])
    # the tables whose schema did not change can still be compared
    assert (await compute_delta(trio.target, trio.snapshot, tables=["users", "tasks"])).is_empty


async def test_composite_text_keys_and_exact_types(services: Services) -> None:
    """A two-column key with text ordered byte-wise (not by locale), a composite foreign key, and types whose text
    must round-trip exactly: jsonb, bytea, numeric, interval with months, float8, timestamps, arrays, uuid, char(n)."""
    source = await create_database(services.postgres_url)
    conn = await connect(source)
    try:
        await conn.execute(
            """
            CREATE TABLE odd (
                region text COLLATE "und-x-icu", n int, payload jsonb, blob bytea, amount numeric(12, 4), span interval, ratio float8,
                at timestamptz, local_at timestamp, tags text[], uid uuid, flag boolean, code char(5), note varchar(20),
                PRIMARY KEY (region, n)
            );
            CREATE TABLE odd_child (
                id bigserial PRIMARY KEY, region text, n int, label text,
                FOREIGN KEY (region, n) REFERENCES odd ON DELETE CASCADE
            );
            """
        )
        row = (
            'INSERT INTO odd VALUES ($1, $2, \'{"k": [1, 2.50, null], "é": "✓"}\', $3, 12345678.1234,'
            " '1 mon 2 days 03:04:05.123456', 0.1, '2026-01-02 03:04:05.678901+05:30', '1999-12-31 23:59:59.999999',"
            " ARRAY['a', 'b c', NULL, 'd\"e'], '6f1c1e4e-3f5b-4c52-9a3b-1c2d3e4f5a6b', true, 'ab', 'x')"
        )
        for region, n in [("a", 1), ("B", 1), ("Z", 3), ("a", 2), ("é", 2), ("o'q", 1), ("a", 10)]:
            await conn.execute(row, region, n, ALL_BYTES)
        await conn.execute("INSERT INTO odd_child (region, n, label) VALUES ('a', 1, 'one'), ('Z', 3, 'three')")
    finally:
        await conn.close()
    snapshot, target = await clone_dump(source), await clone_template(source)

    conn = await connect(target)
    try:
        await conn.execute(row, "Ä", 1, b"\x00")
        await conn.execute(row, "b", 5, None)
        await conn.execute(
            "UPDATE odd SET span = '-1 year 2 mons -3 days 04:05:06', ratio = 0.1 + 0.2, amount = -0.0001,"
            " tags = '{}', at = 'infinity', payload = '[]', code = 'xyz', flag = NULL WHERE region = 'a' AND n = 2"
        )
        await conn.execute("UPDATE odd SET blob = '\\x00ff'::bytea WHERE region = 'é'")
        await conn.execute("DELETE FROM odd WHERE region = 'Z'")  # cascades to its child
        await conn.execute("INSERT INTO odd_child (region, n, label) VALUES ('Ä', 1, 'new')")
    finally:
        await conn.close()

    delta = await compute_delta(target, snapshot, batch=3)

    assert delta.tables["odd"].key_columns == ["region", "n"]
    assert set(delta.tables["odd"].inserted) == {("Ä", 1), ("b", 5)}
    assert set(delta.tables["odd"].updated) == {("a", 2), ("é", 2)}
    assert set(delta.tables["odd"].deleted) == {("Z", 3)}
    assert as_sets(delta) == await expected_delta(target, snapshot)
    assert Delta.from_json(delta.to_json()) == delta

    result = await apply_delta(Delta.from_json(delta.to_json()), target, source, snapshot_url=snapshot, batch=1)

    assert result.tables["odd"].inserted == 2 and result.tables["odd"].updated == 2
    assert result.tables["odd"].deleted == 1 and result.tables["odd_child"].deleted == 1
    got, want = await snapshot_of(source), await snapshot_of(target)
    assert got["rows"] == want["rows"]
    assert got["text"] == want["text"]
    assert got["sequences"]["odd_child_id_seq"][0] >= want["sequences"]["odd_child_id_seq"][0]
    assert (await compute_delta(target, source)).is_empty


async def test_passwords_never_appear_in_errors(services: Services) -> None:
    url = await create_database(services.postgres_url)
    wrong = url.replace("timetodo:timetodo@", "timetodo:Sup3r-s3cret-pw@")
    assert wrong != url

    with pytest.raises(PgError) as info:
        await compute_delta(wrong, url)

    assert "Sup3r-s3cret-pw" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


# ------------------------------------------------------------------------------------ the fast path: since a horizon


async def vacuum_freeze(url: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute("VACUUM (FREEZE)")
    finally:
        await conn.close()


async def test_delta_since_the_horizon_equals_the_full_comparison(trio: Trio) -> None:
    """Rollback's fast path (issue 13, item 5): the rows written after the horizon found by their xmin, deletions by
    counts — the same delta as the full merge of every row, and nothing compared the full way. A freeze of every
    row (VACUUM FREEZE, as autovacuum does on a busy target) does not hide a change."""
    horizon = await xid_horizon(trio.target)  # the cutover records it after the final copy
    await write_after_cutover(trio.target, trio.seed)
    await vacuum_freeze(trio.target)

    fast, compared_in_full = await compute_delta_since(trio.target, trio.snapshot, horizon, batch=2)
    full = await compute_delta(trio.target, trio.snapshot)

    assert compared_in_full == []
    assert as_sets(fast) == as_sets(full) == await expected_delta(trio.target, trio.snapshot)
    assert {n: (t.rows_current, t.rows_snapshot) for n, t in fast.tables.items()} == {
        n: (t.rows_current, t.rows_snapshot) for n, t in full.tables.items()
    }
    result = await apply_delta(fast, trio.target, trio.source, snapshot_url=trio.snapshot)
    assert (result.inserted, result.updated, result.deleted) == (13, 7, 9)
    assert (await compute_delta(trio.target, trio.source)).is_empty


async def test_delta_since_finds_deletions_in_a_large_table_by_key_range(services: Services) -> None:
    """Deletions leave no row to find: counts per key range (text keys ordered byte-wise, a composite key) say which
    ranges lost rows, and only those are merge-joined. A key changed by an UPDATE is a deletion plus an insertion."""
    source = await create_database(services.postgres_url)
    conn = await connect(source)
    try:
        await conn.execute(
            'CREATE TABLE items (region text COLLATE "und-x-icu", n int, v text, PRIMARY KEY (region, n));'
            "INSERT INTO items SELECT chr(65 + i % 40) || (i / 40)::text, i % 3, md5(i::text)"
            " FROM generate_series(1, 9000) AS i;"
            "CREATE TABLE numbered (id bigint PRIMARY KEY, v text);"
            "INSERT INTO numbered SELECT i * 3, md5(i::text) FROM generate_series(1, 9000) AS i"
        )
    finally:
        await conn.close()
    snapshot, target = await clone_dump(source), await clone_template(source)
    horizon = await xid_horizon(target)
    conn = await connect(target)
    try:
        await conn.execute("DELETE FROM items WHERE region IN ('A1', 'Z100', 'g224')")  # three key ranges
        await conn.execute("UPDATE items SET v = 'changed' WHERE region = 'M50'")
        await conn.execute("UPDATE items SET region = 'é-moved' WHERE region = 'C30' AND n = 2")
        await conn.execute("INSERT INTO items VALUES ('Ä', 1, 'new'), ('a', 7, 'new')")
        # integer keys: ranges by arithmetic from the smallest key on either side (a new one below all others)
        await conn.execute("DELETE FROM numbered WHERE id IN (3, 6000, 26997, 27000)")
        await conn.execute("UPDATE numbered SET id = 100000 WHERE id = 9000")
        await conn.execute("INSERT INTO numbered VALUES (-5, 'below'), (4, 'between')")
    finally:
        await conn.close()

    fast, compared_in_full = await compute_delta_since(target, snapshot, horizon, batch=7)

    assert compared_in_full == []
    expected = await expected_delta(target, snapshot)
    assert as_sets(fast)["items"] == expected["items"]
    assert len(fast.tables["items"].deleted) == len(expected["items"]["deleted"]) >= 4
    assert ("é-moved", 2) in fast.tables["items"].inserted and ("C30", 2) in fast.tables["items"].deleted
    assert (
        as_sets(fast)["numbered"]
        == expected["numbered"]
        == {
            "inserted": keys(-5, 4, 100000),
            "updated": set(),
            "deleted": keys(3, 6000, 26997, 27000, 9000),
        }
    )


async def test_a_write_before_the_horizon_makes_the_table_compared_in_full(services: Services) -> None:
    """A row the snapshot lacks but older than the horizon breaks the fast path's precondition: the counts do not add
    up, and that table is compared the full way — the delta is still exact."""
    source = await create_database(services.postgres_url)
    conn = await connect(source)
    try:
        await conn.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO a SELECT generate_series(1, 50); INSERT INTO b SELECT generate_series(1, 50)")
    finally:
        await conn.close()
    snapshot, target = await clone_dump(source), await clone_template(source)
    conn = await connect(target)
    try:
        await conn.execute("INSERT INTO a VALUES (1000)")  # before the horizon: the precondition broken
        horizon = await xid_horizon(target)
        await conn.execute("INSERT INTO b VALUES (1000)")
    finally:
        await conn.close()

    fast, compared_in_full = await compute_delta_since(target, snapshot, horizon)

    assert compared_in_full == ["a"]
    assert as_sets(fast) == await expected_delta(target, snapshot)
    assert fast.tables["a"].inserted == [(1000,)] and fast.tables["b"].inserted == [(1000,)]


async def test_a_sequence_whose_column_holds_only_values_below_its_minimum(trio: Trio) -> None:
    """users.sync_version owns sync_version_seq (minimum 1) and is 0 for an account that never wrote: a rollback
    that carries back only such an account must not try to move the sequence below its minimum."""
    conn = await connect(trio.source)
    try:
        await conn.execute("UPDATE users SET sync_version = 0")
    finally:
        await conn.close()
    snapshot, target = await clone_dump(trio.source), await clone_template(trio.source)
    conn = await connect(target)
    try:
        new = await add_user(conn, "new-on-the-target@example.com")
    finally:
        await conn.close()

    delta = await compute_delta(target, snapshot)
    result = await apply_delta(delta, target, trio.source, snapshot_url=snapshot)

    assert result.tables["users"].inserted == 1 and delta.tables["users"].inserted == [(new,)]
    assert (await compute_delta(target, trio.source)).is_empty
