"""`/health` (liveness, no I/O) and `/health/detailed` (every dependency; 503 when one is down).

`/health/detailed` and `/metrics` also report the newest *verified* backup: the scheduled backup job (the `backup`
service of deploy/docker-compose.yml) names it in `$DATA_DIR/backups/.last-verified` after `timetodo backup verify`
accepted it. That report is informational: a missing or old backup never makes the service unhealthy (a fresh
install has none), it shows `stale` after BACKUP_STALE_SECONDS.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from timetodo import __version__
from timetodo.core.errors import ErrorCode, error_response
from timetodo.core.limits import is_loopback
from timetodo.core.maintenance import get_status as maintenance_status
from timetodo.core.metrics import render_latest, set_backup_age
from timetodo.core.schema import current_revision, head_revision

router = APIRouter(tags=["operations"])
MIN_FREE_BYTES = 200 * 1024 * 1024
CHECK_TIMEOUT = 5.0
BACKUP_MARKER = ".last-verified"
# Nightly backups: a day plus slack for a slow run before the newest one counts as stale.
BACKUP_STALE_SECONDS = 26 * 3600
# The archive names of timetodo.ops.backup (`timetodo-<UTC stamp>[-N].tar`); core does not import ops.
_ARCHIVE_NAME = re.compile(r"^timetodo-(\d{8}T\d{6}Z)(?:-\d+)?\.tar$")


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Cheap enough for a load balancer to call every second."""
    return {"status": "ok", "version": __version__}


async def _timed(coro: Any) -> tuple[bool, float, Any]:
    start = time.perf_counter()
    try:
        value = await asyncio.wait_for(coro, CHECK_TIMEOUT)
        return True, (time.perf_counter() - start) * 1000, value
    except Exception as exc:  # reported in the body, never raised
        return False, (time.perf_counter() - start) * 1000, f"{type(exc).__name__}: {exc}"[:300]


def backup_status(backup_dir: Path, now: datetime | None = None) -> dict[str, Any]:
    """The newest verified backup in `backup_dir` (named by the backup job's marker file) and its age.

    Always `ok` (see the module docstring); `configured` is false until the job has verified a first archive."""
    marker = backup_dir / BACKUP_MARKER
    try:
        name = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return {"ok": True, "configured": False, "path": str(backup_dir)}
    except OSError as exc:
        return {"ok": True, "configured": True, "path": str(backup_dir), "error": f"{marker}: {exc.strerror}"}
    match = _ARCHIVE_NAME.match(name)
    if match is None:
        return {"ok": True, "configured": True, "path": str(backup_dir), "error": f"{marker}: not an archive name"}
    if not (backup_dir / name).is_file():
        return {"ok": True, "configured": True, "path": str(backup_dir), "error": f"{name} is gone"}
    created = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    age = max(0, int(((now or datetime.now(UTC)) - created).total_seconds()))
    return {
        "ok": True,
        "configured": True,
        "path": str(backup_dir),
        "newest_verified": name,
        "created_at": created.isoformat(),
        "age_seconds": age,
        "stale": age > BACKUP_STALE_SECONDS,
    }


async def detailed_report(app: Any) -> tuple[bool, dict[str, Any]]:
    state = app.state
    settings = state.settings
    checks: dict[str, Any] = {}

    async def db_roundtrip() -> None:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    ok, ms, value = await _timed(db_roundtrip())
    checks["database"] = {"ok": ok, "latency_ms": round(ms, 2), "dialect": state.engine.dialect.name}
    if not ok:
        checks["database"]["error"] = value

    if state.cache.kind == "redis":
        ok, ms, value = await _timed(state.cache.ping())
        checks["redis"] = {"ok": ok, "latency_ms": round(ms, 2)}
        if not ok:
            checks["redis"]["error"] = value
    else:
        checks["redis"] = {
            "ok": True,
            "configured": False,
            "note": "in-process fallback, single process only",
        }

    disks = {}
    for name, path in (("data_dir", settings.DATA_DIR), ("upload_dir", settings.UPLOAD_DIR)):
        try:
            path.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(path).free
            disks[name] = {"ok": free >= MIN_FREE_BYTES, "path": str(path), "free_bytes": free}
        except OSError as exc:
            disks[name] = {"ok": False, "path": str(path), "error": str(exc)}
    checks["disk"] = {"ok": all(d["ok"] for d in disks.values()), **disks}

    ok, _ms, value = await _timed(current_revision(state.engine))
    head = head_revision()
    checks["migrations"] = {"ok": ok and value == head, "current": value if ok else None, "head": head}
    if not ok:
        checks["migrations"]["error"] = value

    async def read_flag() -> bool:
        async with state.sessionmaker() as session:
            return (await maintenance_status(session)).enabled

    ok, _ms, value = await _timed(read_flag())
    checks["maintenance"] = {"ok": ok, "enabled": bool(value) if ok else None}
    checks["backup"] = await asyncio.to_thread(backup_status, settings.DATA_DIR / "backups")
    # informational reports of domains (core imports none): name → coroutine function giving a check's dict
    for name, report in getattr(state, "health_reports", {}).items():
        ok, _ms, value = await _timed(report())
        checks[name] = value if ok else {"ok": True, "error": str(value)}

    healthy = all(c["ok"] for c in checks.values())
    return healthy, {
        "status": "ok" if healthy else "unhealthy",
        "version": __version__,
        "maintenance": checks["maintenance"].get("enabled"),
        "checks": checks,
    }


def operator(request: Request) -> bool:
    """An operator's request: `Authorization: Bearer METRICS_TOKEN` when that is set, else from a loopback address
    (behind nginx or Render the client is the real one, see `timetodo.core.limits`)."""
    token = request.app.state.settings.METRICS_TOKEN
    if token is not None:
        sent = request.headers.get("authorization", "")
        return hmac.compare_digest(sent.encode(), f"Bearer {token.get_secret_value()}".encode())
    return is_loopback(request.client.host if request.client else None)


@router.get("/health/detailed")
async def health_detailed(request: Request, response: Response) -> dict[str, Any]:
    """Database round trip, Redis ping, free disk, migrations at head, maintenance flag. 503 when any is down.
    Anyone gets `ok`/`failing` per check; the details (paths, free space, errors) only an operator (see
    `operator`: METRICS_TOKEN bearer, or loopback when no token is set)."""
    healthy, report = await detailed_report(request.app)
    if not healthy:
        response.status_code = 503
    if operator(request):
        return report
    return {
        "status": report["status"],
        "version": report["version"],
        "maintenance": report["maintenance"],
        "checks": {name: "ok" if check["ok"] else "failing" for name, check in report["checks"].items()},
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics, for operators only (METRICS_TOKEN bearer, or loopback when no token is set)."""
    if not operator(request):
        return error_response(403, ErrorCode.forbidden, "metrics are for operators: send the METRICS_TOKEN")
    backup = await asyncio.to_thread(backup_status, request.app.state.settings.DATA_DIR / "backups")
    set_backup_age(backup.get("age_seconds"))
    body, content_type = render_latest()
    return Response(body, media_type=content_type)
