"""`migration_final_report.txt` / `.json` / `.html`: one report model (`model.build`) rendered three ways.

The steps in the order they ran (every attempt and the rollback their own rows), a timeline with the write freeze,
what moved and how fast, the verification table and the two sides. The HTML page is self-contained (inline CSS and
SVG, no script, no external resource), escapes every value and prints cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timetodo.ops.migrate.report.html import render_html
from timetodo.ops.migrate.report.model import Report, build, human_seconds
from timetodo.ops.migrate.report.text import render_text
from timetodo.ops.migrate.state import MigrationState

if TYPE_CHECKING:
    from timetodo.ops.migrate.config import MigrationConfig

__all__ = ["Report", "build", "human_seconds", "render_html", "render_text", "write_final_report"]

VALIDATION_JSON = "migration_validation_report.json"


def write_final_report(state: MigrationState, directory: Path, config: MigrationConfig | None = None) -> dict[str, Any]:
    """Write the three files into `directory`; the JSON's content is returned."""
    validation: dict[str, Any] | None = None
    try:
        validation = json.loads((directory / VALIDATION_JSON).read_text())
    except (OSError, ValueError):
        validation = None
    report = build(state, config=config, validation=validation)
    data = report.to_json()
    (directory / "migration_final_report.json").write_text(json.dumps(data, indent=2, default=str))
    (directory / "migration_final_report.txt").write_text(render_text(report))
    (directory / "migration_final_report.html").write_text(render_html(report))
    return data
