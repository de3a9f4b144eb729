"""`timetodo migrate backup` writes the one backup format: an archive `timetodo backup verify` and `restore` accept,
whose row counts describe exactly the dump even while the source keeps taking writes (they are taken in the
snapshot pg_dump dumps)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from rich.console import Console

from tests.support import Services, create_database
from timetodo.core.schema import upgrade_async
from timetodo.ops import backup
from timetodo.ops.migrate import backup as backup_step
from timetodo.ops.migrate.config import load_config, load_secrets
from timetodo.ops.migrate.context import Context
from timetodo.ops.migrate.state import MigrationState
from timetodo.ops.sources import DataSources

pytestmark = pytest.mark.slow
TIMETODO = Path(sys.executable).parent / "timetodo"
SEED_ROWS = 300_000


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def migration_context(base: Path, source_url: str, uploads: Path) -> Context:
    (base / "migration.toml").write_text(
        f"""
work_dir = "work"

[source]
api_url = "http://127.0.0.1:9"
admin_token_env = "T_ADMIN_TOKEN"
database_url_env = "T_SOURCE_DB"
uploads = {{ path = "{uploads}" }}

[target]
host = "127.0.0.1"
public_url = "http://127.0.0.1:9"
database_url_env = "T_TARGET_DB"
"""
    )
    config = load_config(base / "migration.toml")
    env = {"T_ADMIN_TOKEN": "unused", "T_SOURCE_DB": plain(source_url), "T_TARGET_DB": plain(source_url)}
    secrets = load_secrets(config, env)
    console = Console(file=io.StringIO(), force_terminal=False)
    return Context(config, secrets, config.work_dir, MigrationState.load(config.work_dir), console)


async def keep_writing(url: str, stop: asyncio.Event, written: list[int]) -> None:
    conn = await asyncpg.connect(plain(url))
    try:
        while not stop.is_set():
            await conn.execute("INSERT INTO ticks (note) VALUES ('written during the backup')")
            written[0] += 1
    finally:
        await conn.close()


async def count(url: str, table: str) -> int:
    conn = await asyncpg.connect(plain(url))
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def test_migrate_backup_is_the_one_archive_format_with_counts_of_the_dump(
    services: Services, tmp_path: Path
) -> None:
    source_url = await create_database(services.postgres_url)
    await upgrade_async(source_url)
    conn = await asyncpg.connect(plain(source_url))
    try:
        await conn.execute("CREATE TABLE ticks (id bigserial PRIMARY KEY, note text NOT NULL)")
        # enough rows that pg_dump takes a while: the writer keeps inserting while it runs
        await conn.execute(f"INSERT INTO ticks (note) SELECT 'seed ' || g FROM generate_series(1, {SEED_ROWS}) g")
    finally:
        await conn.close()
    uploads = tmp_path / "uploads"
    (uploads / "ab").mkdir(parents=True)
    (uploads / "ab" / "abcdef").write_bytes(b"an uploaded file")
    ctx = migration_context(tmp_path, source_url, uploads)

    stop, written = asyncio.Event(), [0]
    writer = asyncio.create_task(keep_writing(source_url, stop, written))
    try:
        while written[0] < 50:  # the writer is running before the backup starts
            await asyncio.sleep(0.01)
        result = await backup_step.run(ctx)
        before_stop = written[0]
    finally:
        stop.set()
        await writer
        await ctx.close()

    archive = Path(result["archive"])
    assert archive.parent == tmp_path / "work" / "backups" and archive.name.endswith(".tar")
    manifest = backup.read_manifest(archive)
    dumped = manifest.counts.tables["ticks"]
    # writes went on after the snapshot: counting after the dump would have disagreed with it
    assert SEED_ROWS + 50 <= dumped < SEED_ROWS + before_stop <= await count(source_url, "ticks")
    assert manifest.files == {"ab/abcdef": hashlib.sha256(b"an uploaded file").hexdigest()}
    assert result["rows"] == manifest.total_rows and result["files"] == 1

    verified = backup.verify_archive(archive)
    assert verified.ok, verified.problems
    cli = subprocess.run(
        [str(TIMETODO), "backup", "verify", str(archive)], capture_output=True, text=True, timeout=120, check=False
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr

    target_url = await create_database(services.postgres_url)
    restored = await backup.restore_backup(DataSources(target_url, None, tmp_path / "restored-uploads"), archive)
    assert restored.ok, [c for c in restored.checks if not c.ok]  # every table re-counted equals the manifest
    assert await count(target_url, "ticks") == dumped
    assert (tmp_path / "restored-uploads" / "ab" / "abcdef").read_bytes() == b"an uploaded file"
