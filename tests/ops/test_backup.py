"""Backup and restore (issue 4, section 7): real data through the app, real PostgreSQL, Redis and SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import sqlite3
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import asgi_client, make_settings, running_app
from tests.support import ROOT, Services, create_database, login, new_user
from timetodo.core.schema import upgrade_async
from timetodo.core.settings import Settings
from timetodo.ops import backup
from timetodo.ops.adapters.files import scan_tree
from timetodo.ops.sources import DataSources

TIMETODO = ROOT / ".venv" / "bin" / "timetodo"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 40
NOTES = "notes for the backup test ✓\n".encode() * 500


# ----------------------------------------------------------------------------------------------------------- helpers


def redis_db(url: str, index: int) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{index}"


async def fresh_redis(url: str) -> aioredis.Redis:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    return client


async def sqlite_settings(tmp: Path, **extra: Any) -> Settings:
    settings = make_settings(tmp, **{"DATABASE_URL": f"sqlite:///{tmp / 'app.db'}", "REDIS_URL": None, **extra})
    await upgrade_async(settings.DATABASE_URL)
    return settings


async def populate(settings: Settings) -> dict[str, Any]:
    """Users, projects, tasks (one completed), a time entry and two attachments, all through the API."""
    async with running_app(settings) as app, asgi_client(app) as client:
        headers, tokens = await new_user(client)
        await new_user(client)
        project = (await client.post("/api/v1/projects", json={"name": "Home"}, headers=headers)).json()
        task_ids = []
        for i in range(6):
            resp = await client.post(
                "/api/v1/tasks", json={"title": f"task {i}", "project_id": project["id"]}, headers=headers
            )
            assert resp.status_code == 201, resp.text
            task_ids.append(resp.json()["id"])
        assert (await client.post(f"/api/v1/tasks/{task_ids[0]}/complete", headers=headers)).status_code == 200
        attachments = []
        for name, content, ctype in (("diagram.png", PNG, "image/png"), ("notes.txt", NOTES, "text/plain")):
            resp = await client.post(
                f"/api/v1/tasks/{task_ids[1]}/attachments", files={"file": (name, content, ctype)}, headers=headers
            )
            assert resp.status_code == 201, resp.text
            attachments.append(resp.json())
    # an upload in progress must not be archived
    incoming = settings.UPLOAD_DIR / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / "partial-upload").write_bytes(b"half of something")
    return {"email": tokens["user"]["email"], "task_ids": task_ids, "attachments": attachments}


async def check_app_serves_restored_data(settings: Settings, data: dict[str, Any]) -> None:
    """The restored installation works: the user logs in, sees the tasks, downloads the files, can write."""
    async with running_app(settings) as app, asgi_client(app) as client:
        resp = await login(client, data["email"])
        assert resp.status_code == 200, resp.text
        headers = {"Authorization": f"Bearer {resp.json()['access_token']}"}
        listed = await client.get("/api/v1/tasks", params={"limit": 100}, headers=headers)
        assert listed.status_code == 200, listed.text
        assert {t["id"] for t in listed.json()["results"]} >= set(data["task_ids"][1:])
        for att, content in zip(data["attachments"], (PNG, NOTES), strict=True):
            got = await client.get(f"/api/v1/attachments/{att['id']}", headers=headers)
            assert got.status_code == 200 and got.content == content
        created = await client.post("/api/v1/tasks", json={"title": "after restore"}, headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["id"] > max(data["task_ids"])  # sequences came back too


def sqlite_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        names = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'") if r[0][:7] != "sqlite_"
        ]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        conn.close()


async def pg_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        names = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return {n: await conn.fetchval(f'SELECT count(*) FROM public."{n}"') for n in names}
    finally:
        await conn.close()


async def pg_execute(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIMETODO), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def cli_env(settings: Settings, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DATA_DIR", "UPLOAD_DIR")}
    env.update(
        ENVIRONMENT="test",
        SECRET_KEY=settings.SECRET_KEY.get_secret_value(),
        DATA_DIR=str(settings.DATA_DIR),
        DATABASE_URL=database_url,
        LOG_LEVEL="WARNING",
        COLUMNS="200",
    )
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    return env


def one_line(text: str) -> str:
    return " ".join(text.split())


def rewrite_member(src: Path, dst: Path, name: str, change: Any) -> None:
    """Copy an archive, passing one member's bytes through `change` (the manifest is left as it was)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as tout:
        for member in tin.getmembers():
            stream = tin.extractfile(member)
            assert stream is not None
            data = stream.read()
            if member.name == name:
                data = change(data)
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


# ----------------------------------------------------------------------------------------------------- round trips


async def test_round_trip_sqlite(tmp_path: Path) -> None:
    source = await sqlite_settings(tmp_path / "src")
    data = await populate(source)
    events: list[backup.ProgressUpdate] = []

    created = await backup.create_backup(
        DataSources.from_settings(source), tmp_path / "backups", progress=events.append
    )

    assert created.path.parent == tmp_path / "backups" and backup.ARCHIVE_RE.match(created.path.name)
    assert not list((tmp_path / "backups").glob(".*")), "no temporary files left behind"
    manifest = created.manifest
    assert manifest.database.kind == "sqlite" and manifest.app_version and manifest.alembic_revision
    source_db = tmp_path / "src" / "app.db"
    assert manifest.counts.tables == sqlite_counts(source_db)
    assert manifest.counts.tables["users"] == 2 and manifest.counts.tables["tasks"] == 6
    assert manifest.counts.tables["attachments"] == 2 and manifest.counts.tables["alembic_version"] == 1
    assert manifest.counts.redis_keys is None and backup.REDIS_PART not in manifest.parts
    source_files = scan_tree(source.UPLOAD_DIR)
    assert manifest.files == source_files and len(source_files) == 2
    assert all(".incoming" not in rel for rel in manifest.files)
    assert {hashlib.sha256(PNG).hexdigest(), hashlib.sha256(NOTES).hexdigest()} == set(manifest.files.values())
    with tarfile.open(created.path) as tf:
        names = tf.getnames()
    assert names[0] == backup.SQLITE_PART and names[-1] == backup.MANIFEST_NAME
    assert {e.part for e in events} >= {"database", "uploads"}
    last = {e.part: e for e in events}
    assert last["uploads"].done == last["uploads"].total == len(PNG) + len(NOTES)

    verified = backup.verify_archive(created.path)
    assert verified.ok, verified.problems

    target = make_settings(tmp_path / "dst", DATABASE_URL=f"sqlite:///{tmp_path / 'dst' / 'app.db'}", REDIS_URL=None)
    restored = await backup.restore_backup(DataSources.from_settings(target), created.path)

    assert restored.ok, [c for c in restored.checks if not c.ok]
    assert sqlite_counts(tmp_path / "dst" / "app.db") == sqlite_counts(source_db)
    assert scan_tree(target.UPLOAD_DIR) == source_files
    assert restored.maintenance_on is False and restored.extra_files == 0 and not restored.schema_behind
    assert {c.item for c in restored.checks} >= {"rows users", "rows tasks", "files"}
    await check_app_serves_restored_data(target, data)


async def test_round_trip_postgres_and_redis(services: Services, tmp_path: Path) -> None:
    source_url = await create_database(services.postgres_url)
    source = make_settings(tmp_path / "src", DATABASE_URL=source_url, REDIS_URL=redis_db(services.redis_url, 5))
    await upgrade_async(source.DATABASE_URL)
    src_redis = await fresh_redis(redis_db(services.redis_url, 5))
    dst_redis = await fresh_redis(redis_db(services.redis_url, 6))
    try:
        data = await populate(source)
        await src_redis.set("plain", "no expiry")
        await src_redis.set(b"bin\x00\xff\xfekey", b"\x00\x01\x02\xff binary value")
        await src_redis.set("expiring", "soon", px=600_000)
        await src_redis.hset("a-hash", mapping={"f1": "v1", "f2": "v2"})
        await src_redis.rpush("a-list", "x", "y", "z")
        await src_redis.zadd("a-zset", {"m1": 1.5, "m2": 2.5})
        await src_redis.expire("a-zset", 3600)
        source_keys = set(await src_redis.keys("*"))
        assert len(source_keys) >= 6

        created = await backup.create_backup(DataSources.from_settings(source), tmp_path / "backups")
        manifest = created.manifest
        assert manifest.database.kind == "postgresql" and backup.PG_PART in manifest.parts
        assert manifest.counts.tables == await pg_counts(source_url)
        assert manifest.counts.tables["users"] == 2 and manifest.counts.tables["attachments"] == 2
        assert manifest.counts.redis_keys == len(source_keys) and manifest.counts.redis_skipped == 0
        assert manifest.files == scan_tree(source.UPLOAD_DIR)
        assert backup.verify_archive(created.path).ok

        # into a fresh, empty (not even migrated) database, another Redis database and a new upload folder
        target_url = await create_database(services.postgres_url)
        target = make_settings(tmp_path / "dst", DATABASE_URL=target_url, REDIS_URL=redis_db(services.redis_url, 6))
        restored = await backup.restore_backup(DataSources.from_settings(target), created.path)

        assert restored.ok, [c for c in restored.checks if not c.ok]
        assert await pg_counts(target_url) == await pg_counts(source_url)
        assert scan_tree(target.UPLOAD_DIR) == scan_tree(source.UPLOAD_DIR)
        assert set(await dst_redis.keys("*")) == source_keys
        assert await dst_redis.get("plain") == b"no expiry"
        assert await dst_redis.get(b"bin\x00\xff\xfekey") == b"\x00\x01\x02\xff binary value"
        assert await dst_redis.hgetall("a-hash") == {b"f1": b"v1", b"f2": b"v2"}
        assert await dst_redis.lrange("a-list", 0, -1) == [b"x", b"y", b"z"]
        assert await dst_redis.zrange("a-zset", 0, -1, withscores=True) == [(b"m1", 1.5), (b"m2", 2.5)]
        assert await dst_redis.pttl("plain") == -1 and await dst_redis.pttl("a-hash") == -1
        assert 540_000 < await dst_redis.pttl("expiring") <= 600_000  # the remaining TTL, approximately
        assert 3_500_000 < await dst_redis.pttl("a-zset") <= 3_600_000
        assert next(c for c in restored.checks if c.item == "redis keys").actual == str(len(source_keys))
        await check_app_serves_restored_data(target, data)
    finally:
        await src_redis.flushdb()
        await dst_redis.flushdb()
        await src_redis.aclose()
        await dst_redis.aclose()


async def test_cli_round_trip_refusals_and_retention(services: Services, tmp_path: Path) -> None:
    source_url = await create_database(services.postgres_url)
    source = make_settings(tmp_path / "src", DATABASE_URL=source_url, REDIS_URL=redis_db(services.redis_url, 7))
    await upgrade_async(source.DATABASE_URL)
    src_redis = await fresh_redis(redis_db(services.redis_url, 7))
    dst_redis = await fresh_redis(redis_db(services.redis_url, 8))
    try:
        await populate(source)
        await src_redis.set("session:abc", "x", ex=900)
        env = cli_env(source, source_url)
        folder = tmp_path / "archives"

        runs = [cli("backup", "create", "--to", str(folder), "--keep", "2", env=env, cwd=tmp_path) for _ in range(3)]
        for run in runs:
            assert run.returncode == 0, run.stderr
            assert "created " in run.stdout and "rows in" in run.stdout
        archives = backup.archives_in(folder)  # oldest first (a plain sort puts "…Z-2.tar" before "…Z.tar")
        assert len(archives) == 2 and len(list(folder.glob("timetodo-*.tar"))) == 2, "--keep 2 leaves the two newest"
        assert "removed old archive" in runs[2].stdout
        assert str(archives[-1]) in runs[2].stdout
        newest = archives[-1]

        listed = cli("backup", "list", str(folder), env=env, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.strip().splitlines()
        assert [ln.split("\t")[0] for ln in lines] == [newest.name, archives[0].name]
        assert "postgresql" in lines[0] and " keys" in lines[0] and "2 files" in lines[0]

        verified = cli("backup", "verify", str(newest), env=env, cwd=tmp_path)
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.startswith("ok: ") and "postgresql" in verified.stdout

        target_url = await create_database(services.postgres_url)
        target = make_settings(tmp_path / "dst", DATABASE_URL=target_url, REDIS_URL=redis_db(services.redis_url, 8))
        target_env = cli_env(target, target_url)
        restored = cli("backup", "restore", str(newest), env=target_env, cwd=tmp_path)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "everything matches the manifest" in restored.stdout and "DIFFERS" not in restored.stdout
        assert "rows tasks" in restored.stdout and "redis keys" in restored.stdout
        assert await pg_counts(target_url) == await pg_counts(source_url)
        assert await dst_redis.get("session:abc") == b"x"

        # now the target has data: refused without --force, and nothing changes
        marker = "UPDATE tasks SET title = 'changed after restore' WHERE id = (SELECT min(id) FROM tasks)"
        await pg_execute(target_url, marker)
        before = await pg_counts(target_url)
        refused = cli("backup", "restore", str(newest), env=target_env, cwd=tmp_path)
        assert refused.returncode == 4, refused.stderr
        assert "already has data" in one_line(refused.stderr) and "--force" in one_line(refused.stderr)
        assert await pg_counts(target_url) == before
        assert await pg_execute(target_url, "SELECT count(*) FROM tasks WHERE title = 'changed after restore'") == 1

        # --force while the service may be writing (maintenance off): refused too
        forced = cli("backup", "restore", str(newest), "--force", env=target_env, cwd=tmp_path)
        assert forced.returncode == 4, forced.stderr
        assert "maintenance mode is off" in one_line(forced.stderr)
        assert "timetodo maintenance on" in one_line(forced.stderr)
        assert await pg_execute(target_url, "SELECT count(*) FROM tasks WHERE title = 'changed after restore'") == 1

        # with maintenance on, --force replaces the data; maintenance stays on, with a hint to turn it off
        assert cli("maintenance", "on", env=target_env, cwd=tmp_path).returncode == 0
        replaced = cli("backup", "restore", str(newest), "--force", env=target_env, cwd=tmp_path)
        assert replaced.returncode == 0, replaced.stdout + replaced.stderr
        assert "timetodo maintenance off" in one_line(replaced.stdout)
        assert await pg_execute(target_url, "SELECT count(*) FROM tasks WHERE title = 'changed after restore'") == 0
        assert await pg_execute(target_url, "SELECT maintenance_enabled FROM app_state WHERE id = 1") is True
        assert await pg_counts(target_url) == await pg_counts(source_url)
    finally:
        await src_redis.flushdb()
        await dst_redis.flushdb()
        await src_redis.aclose()
        await dst_redis.aclose()


# ------------------------------------------------------------------------------------------------------- bad input


@pytest.fixture
async def sqlite_archive(tmp_path: Path) -> Path:
    source = await sqlite_settings(tmp_path / "src")
    await populate(source)
    return (await backup.create_backup(DataSources.from_settings(source), tmp_path / "backups")).path


async def test_truncated_or_corrupt_archive_is_named(sqlite_archive: Path, tmp_path: Path) -> None:
    full = sqlite_archive.read_bytes()
    with tarfile.open(sqlite_archive) as tf:
        members = tf.getmembers()
    manifest_end = members[-1].offset_data + members[-1].size + (-members[-1].size % 512)
    cuts = {
        "in the database part": members[0].offset_data + 1000,
        "before the manifest": members[-1].offset,
        "before the end marker": manifest_end,
        "empty": 0,
    }
    for label, cut in cuts.items():
        broken = tmp_path / f"cut-{cut}.tar"
        broken.write_bytes(full[:cut])
        result = backup.verify_archive(broken)
        assert not result.ok, label
        first = result.problems[0]
        assert first.part == "archive", (label, result.problems)
        assert "truncated" in first.message, (label, first.message)

    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(4096))
    result = backup.verify_archive(garbage)
    assert not result.ok and result.problems[0].part == "archive"

    # the CLI: one error line naming the part, exit 1
    broken = tmp_path / f"cut-{cuts['in the database part']}.tar"
    run = cli("backup", "verify", str(broken), env={**os.environ, "COLUMNS": "200"}, cwd=tmp_path)
    assert run.returncode == 1
    first_line = run.stderr.strip().splitlines()[0]
    assert first_line.startswith("error: archive:") and "truncated" in first_line

    # a restore of it is refused before anything is touched
    target = make_settings(tmp_path / "dst", DATABASE_URL=f"sqlite:///{tmp_path / 'dst' / 'app.db'}", REDIS_URL=None)
    with pytest.raises(backup.ArchiveCorrupt) as exc:
        await backup.restore_backup(DataSources.from_settings(target), broken)
    assert exc.value.part == "archive" and "nothing was restored" in exc.value.message
    assert not (tmp_path / "dst" / "app.db").exists()


async def test_part_not_matching_manifest_hash_is_named(sqlite_archive: Path, tmp_path: Path) -> None:
    def flip(data: bytes) -> bytes:
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]

    edited_db = tmp_path / "edited-db.tar"
    rewrite_member(sqlite_archive, edited_db, backup.SQLITE_PART, flip)
    result = backup.verify_archive(edited_db)
    assert not result.ok
    assert any(p.part == backup.SQLITE_PART and "sha256 mismatch" in p.message for p in result.problems)

    manifest = backup.read_manifest(sqlite_archive)
    rel = next(iter(manifest.files))
    edited_file = tmp_path / "edited-upload.tar"
    rewrite_member(sqlite_archive, edited_file, f"uploads/{rel}", flip)
    result = backup.verify_archive(edited_file)
    assert [str(p) for p in result.problems] == [f"uploads/{rel}: sha256 mismatch with the manifest"]

    longer = tmp_path / "longer-db.tar"
    rewrite_member(sqlite_archive, longer, backup.SQLITE_PART, lambda d: d + b"\0" * 4096)
    result = backup.verify_archive(longer)
    assert any(p.part == backup.SQLITE_PART and "size mismatch" in p.message for p in result.problems)

    bad_manifest = tmp_path / "bad-manifest.tar"
    rewrite_member(sqlite_archive, bad_manifest, backup.MANIFEST_NAME, lambda d: d[:-20])
    result = backup.verify_archive(bad_manifest)
    assert result.problems[0].part == backup.MANIFEST_NAME and "does not parse" in result.problems[0].message

    run = cli("backup", "verify", str(edited_db), env={**os.environ, "COLUMNS": "200"}, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.startswith(f"error: {backup.SQLITE_PART}: sha256 mismatch")

    target = make_settings(tmp_path / "dst", DATABASE_URL=f"sqlite:///{tmp_path / 'dst' / 'app.db'}", REDIS_URL=None)
    with pytest.raises(backup.ArchiveCorrupt):
        await backup.restore_backup(DataSources.from_settings(target), edited_file)
    assert not target.UPLOAD_DIR.exists() and not (tmp_path / "dst" / "app.db").exists()


async def test_pgdump_part_is_checked_with_pg_restore(services: Services, tmp_path: Path) -> None:
    source_url = await create_database(services.postgres_url)
    source = make_settings(tmp_path / "src", DATABASE_URL=source_url, REDIS_URL=None)
    await upgrade_async(source.DATABASE_URL)
    await populate(source)
    # a dump of several read chunks (pg_restore --list stops reading early; the rest must still be hashed)
    await pg_execute(
        source_url,
        "UPDATE tasks SET description = (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 250000)) "
        "WHERE id = (SELECT min(id) FROM tasks)",
    )
    created = await backup.create_backup(DataSources.from_settings(source), tmp_path / "backups")
    archive = created.path
    assert created.manifest.parts[backup.PG_PART].size > 3 * 1024 * 1024
    assert backup.verify_archive(archive).ok

    # a dump that is not a dump, with the manifest updated to match it: the hashes agree, pg_restore does not
    manifest = backup.read_manifest(archive)
    junk = b"PGDMP but not really" + os.urandom(2048)
    manifest.parts[backup.PG_PART] = backup.PartInfo(sha256=hashlib.sha256(junk).hexdigest(), size=len(junk))
    forged = tmp_path / "forged.tar"
    rewrite_member(archive, forged, backup.PG_PART, lambda _d: junk)
    rewrite_member(forged, tmp_path / "forged2.tar", backup.MANIFEST_NAME, lambda _d: manifest.to_json())
    result = backup.verify_archive(tmp_path / "forged2.tar")
    assert [p.part for p in result.problems] == [backup.PG_PART]
    assert "pg_restore cannot read it" in result.problems[0].message


async def test_restore_into_database_with_data(tmp_path: Path, sqlite_archive: Path) -> None:
    target = await sqlite_settings(tmp_path / "dst")
    async with running_app(target) as app, asgi_client(app) as client:
        headers, _ = await new_user(client)
        resp = await client.post("/api/v1/tasks", json={"title": "precious local task"}, headers=headers)
        assert resp.status_code == 201
    db = tmp_path / "dst" / "app.db"
    before = sqlite_counts(db)

    with pytest.raises(backup.RestoreRefused) as refused:
        await backup.restore_backup(DataSources.from_settings(target), sqlite_archive)
    assert "already has data" in refused.value.message and refused.value.hint and "--force" in refused.value.hint
    assert sqlite_counts(db) == before

    with pytest.raises(backup.RestoreRefused) as refused:
        await backup.restore_backup(DataSources.from_settings(target), sqlite_archive, force=True)
    assert "maintenance mode is off" in refused.value.message
    assert refused.value.hint and "timetodo maintenance on" in refused.value.hint
    assert sqlite_counts(db) == before

    from timetodo.core.database import create_engine, create_sessionmaker
    from timetodo.core.maintenance import set_maintenance

    engine = create_engine(target, pooled=False)
    async with create_sessionmaker(engine)() as session:
        await set_maintenance(session, True, "restoring")
    await engine.dispose()

    result = await backup.restore_backup(DataSources.from_settings(target), sqlite_archive, force=True)
    assert result.ok and result.maintenance_on is True
    conn = sqlite3.connect(db)
    titles = {r[0] for r in conn.execute("SELECT title FROM tasks")}
    conn.close()
    assert "precious local task" not in titles and len(titles) == 6
    assert sqlite_counts(db) == backup.read_manifest(sqlite_archive).counts.tables


async def test_retention_and_listing(tmp_path: Path) -> None:
    source = await sqlite_settings(tmp_path / "src")
    folder = tmp_path / "backups"
    folder.mkdir()
    (folder / "unrelated.tar").write_bytes(b"not ours")
    (folder / ".timetodo-20000101T000000Z.tar.partial").write_bytes(b"a crashed run")
    results = []
    for _ in range(4):
        results.append(await backup.create_backup(DataSources.from_settings(source), folder, keep=2))
    names = [r.path.name for r in results]
    assert len(set(names)) == 4, "archives made within one second still get distinct names"
    assert sorted(p.name for p in folder.glob("timetodo-*.tar")) == sorted(names[-2:])
    assert [p.name for p in results[-1].removed] == [names[1]]
    assert (folder / "unrelated.tar").exists() and (folder / ".timetodo-20000101T000000Z.tar.partial").exists()
    listed = backup.list_archives(folder)
    assert [i.path.name for i in listed] == [names[3], names[2]]
    assert all(i.manifest is not None and i.manifest.database.kind == "sqlite" for i in listed)
    with pytest.raises(backup.BackupConfigError):
        await backup.create_backup(DataSources.from_settings(source), folder, keep=0)


async def test_unreachable_services_are_reported_without_secrets(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, DATABASE_URL="postgresql://someone:s3cr3t-pw@127.0.0.1:1/nothing", REDIS_URL=None
    )
    with pytest.raises(backup.Unreachable) as exc:
        await backup.create_backup(DataSources.from_settings(settings), tmp_path / "backups")
    assert "s3cr3t-pw" not in str(exc.value) and "127.0.0.1" in str(exc.value)
    assert not list((tmp_path / "backups").iterdir()), "nothing left behind"

    sqlite_ok = await sqlite_settings(tmp_path / "s", REDIS_URL="redis://:r3dis-pw@127.0.0.1:1/0")
    with pytest.raises(backup.Unreachable) as exc:
        await backup.create_backup(DataSources.from_settings(sqlite_ok), tmp_path / "backups")
    assert exc.value.part == "redis" and "r3dis-pw" not in str(exc.value)
    assert not list((tmp_path / "backups").iterdir())


async def test_sqlite_backup_is_consistent_while_the_app_writes(tmp_path: Path) -> None:
    source = await sqlite_settings(tmp_path / "src")
    db = tmp_path / "src" / "app.db"
    stop = asyncio.Event()
    written = [0]

    async def writer() -> None:
        async with running_app(source) as app, asgi_client(app) as client:
            headers, _ = await new_user(client)
            while not stop.is_set():
                resp = await client.post("/api/v1/tasks", json={"title": f"t{written[0]}"}, headers=headers)
                assert resp.status_code == 201
                written[0] += 1

    async def until(count: int) -> None:
        for _ in range(600):
            if written[0] >= count or task.done():
                return
            await asyncio.sleep(0.05)

    task = asyncio.create_task(writer())
    await until(10)
    created = await backup.create_backup(DataSources.from_settings(source), tmp_path / "backups")
    await until(written[0] + 10)
    stop.set()
    await task
    # taken mid-stream: some tasks before, more after
    assert written[0] > created.manifest.counts.tables["tasks"] >= 10
    target = make_settings(tmp_path / "dst", DATABASE_URL=f"sqlite:///{tmp_path / 'dst' / 'app.db'}", REDIS_URL=None)
    result = await backup.restore_backup(DataSources.from_settings(target), created.path)
    assert result.ok
    assert sqlite_counts(tmp_path / "dst" / "app.db")["tasks"] == created.manifest.counts.tables["tasks"]
    assert sqlite_counts(db)["tasks"] == written[0]


async def test_archives_and_restored_files_are_private(tmp_path: Path) -> None:
    """Archives 0600 in a 0700 folder; restored uploads 0600 in 0700 folders — whatever the umask."""
    source = await sqlite_settings(tmp_path / "src")
    await populate(source)
    old_umask = os.umask(0o022)
    try:
        created = await backup.create_backup(DataSources.from_settings(source), tmp_path / "backups")
        target = make_settings(
            tmp_path / "dst", DATABASE_URL=f"sqlite:///{tmp_path / 'dst' / 'app.db'}", REDIS_URL=None
        )
        restored = await backup.restore_backup(DataSources.from_settings(target), created.path)
    finally:
        os.umask(old_umask)
    assert restored.ok
    assert stat.S_IMODE(created.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "backups").stat().st_mode) == 0o700
    restored_paths = [p for p in target.UPLOAD_DIR.rglob("*") if ".incoming" not in p.parts]
    assert any(p.is_file() for p in restored_paths)
    for path in [target.UPLOAD_DIR, *restored_paths]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o600 if path.is_file() else 0o700), path
