"""The newest verified backup in `/health/detailed` and `/metrics` (core/health.py `backup_status`).

The archive is a real one (`create_backup` + `verify_archive` on SQLite); the marker is written the way the compose
`backup` service writes it. The image test (tests/deploy/test_image.py) runs that service's own command.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import asgi_client, make_settings
from timetodo.core.health import BACKUP_MARKER, BACKUP_STALE_SECONDS, backup_status
from timetodo.core.schema import upgrade_async
from timetodo.main import create_app
from timetodo.ops.backup import create_backup, verify_archive
from timetodo.ops.sources import DataSources


def _gauge(text: str) -> float:
    match = re.search(r"^timetodo_backup_newest_verified_age_seconds(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


async def test_health_and_metrics_report_the_newest_verified_backup(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}", REDIS_URL=None)
    await upgrade_async(settings.DATABASE_URL)
    app = create_app(settings, configure_logs=False)
    backups = tmp_path / "backups"
    async with asgi_client(app, ip="127.0.0.1") as client:  # an operator: details and /metrics need loopback
        before = (await client.get("/health/detailed")).json()
        assert before["status"] == "ok", "no backup yet is not a failure"
        assert before["checks"]["backup"] == {"ok": True, "configured": False, "path": str(backups)}
        assert _gauge((await client.get("/metrics")).text) == -1

        created = await create_backup(DataSources.from_settings(settings), backups)
        assert created.path.parent == backups
        assert (await client.get("/health/detailed")).json()["checks"]["backup"]["configured"] is False, (
            "an archive nobody verified does not count"
        )
        assert verify_archive(created.path).ok
        (backups / BACKUP_MARKER).write_text(created.path.name + "\n")

        report = (await client.get("/health/detailed")).json()
        backup = report["checks"]["backup"]
        assert report["status"] == "ok"
        assert backup["newest_verified"] == created.path.name
        assert 0 <= backup["age_seconds"] < 120 and backup["stale"] is False
        assert datetime.fromisoformat(backup["created_at"]) == created.manifest.created_at
        assert 0 <= _gauge((await client.get("/metrics")).text) < 120

        created.path.unlink()
        gone = (await client.get("/health/detailed")).json()
        assert gone["status"] == "ok" and gone["checks"]["backup"]["error"] == f"{created.path.name} is gone"
        assert _gauge((await client.get("/metrics")).text) == -1


def test_backup_status_age_and_staleness(tmp_path: Path) -> None:
    name = "timetodo-20261127T033000Z-2.tar"
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / BACKUP_MARKER).write_text(name)
    taken = datetime(2026, 11, 27, 3, 30, tzinfo=UTC)
    fresh = backup_status(tmp_path, now=taken + timedelta(hours=1))
    assert fresh["age_seconds"] == 3600 and fresh["stale"] is False
    old = backup_status(tmp_path, now=taken + timedelta(seconds=BACKUP_STALE_SECONDS + 1))
    assert old["stale"] is True and old["ok"] is True
    (tmp_path / BACKUP_MARKER).write_text("../../etc/passwd")
    assert backup_status(tmp_path)["error"].endswith("not an archive name")
