"""`migration_final_report.txt` / `.json` / `.html`: each phase's start and end, what moved, the write downtime."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from timetodo.ops.migrate.state import MigrationState


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts))) if ts else "—"


def summary(state: MigrationState) -> dict[str, Any]:
    steps = state.data.get("steps", {})
    phases = []
    for name, step in steps.items():
        started, ended = step.get("started_at"), step.get("ended_at")
        phases.append(
            {
                "step": name,
                "status": step.get("status"),
                "started_at": started,
                "ended_at": ended,
                "seconds": round(float(ended) - float(started), 3) if started and ended else None,
                "result": step.get("result"),
                "error": step.get("error"),
            }
        )
    facts = state.facts
    return {
        "generated_at": time.time(),
        "phases": phases,
        "write_downtime_seconds": facts.write_downtime_seconds,
        "freeze_started_at": facts.freeze_started_at,
        "switched_at": facts.switched_at,
        "cutover_phases": facts.to_json().get("cutover_phases", {}),
    }


def write_final_report(state: MigrationState, directory: Path) -> dict[str, Any]:
    data = summary(state)
    (directory / "migration_final_report.json").write_text(json.dumps(data, indent=2, default=str))
    lines = ["Time to DO — migration report", "=" * 40, ""]
    for phase in data["phases"]:
        seconds = f"{phase['seconds']:.1f} s" if phase["seconds"] is not None else ""
        lines.append(
            f"{phase['step']:<10} {phase['status']:<8} {_when(phase['started_at'])} → "
            f"{_when(phase['ended_at'])}  {seconds}"
        )
        if phase["error"]:
            lines.append(f"           error: {phase['error']}")
        result = phase["result"] or {}
        for key in ("db", "redis", "files", "rows", "keys", "bytes", "write_downtime_seconds"):
            if key in result:
                lines.append(f"           {key}: {json.dumps(result[key], default=str)[:300]}")
    lines.append("")
    downtime = data["write_downtime_seconds"]
    lines.append(f"measured write downtime: {downtime:.2f} s" if downtime is not None else "no cutover yet")
    (directory / "migration_final_report.txt").write_text("\n".join(lines) + "\n")
    rows = "".join(
        f"<tr><td>{html.escape(p['step'])}</td><td>{html.escape(str(p['status']))}</td>"
        f"<td>{_when(p['started_at'])}</td><td>{_when(p['ended_at'])}</td><td>{p['seconds'] or ''}</td></tr>"
        for p in data["phases"]
    )
    page = (
        "<!doctype html><meta charset=utf-8><title>Migration report</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
        "<h1>Migration report</h1><table><tr><th>step</th><th>status</th><th>start</th><th>end</th><th>s</th></tr>"
        f"{rows}</table><p>Measured write downtime: <b>{downtime if downtime is not None else '—'}</b> s</p>"
    )
    (directory / "migration_final_report.html").write_text(page)
    return data
