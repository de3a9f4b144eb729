"""`ValidationReport`: the comparisons gathered into `migration_validation_report.txt` / `.json` (written atomically)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from timetodo.ops.migrate.validate.canary import CanaryCheck
from timetodo.ops.migrate.validate.common import REPORT_JSON, REPORT_TXT, Comparison, jsonable
from timetodo.ops.migrate.validate.database import DbComparison
from timetodo.ops.migrate.validate.files import FilesComparison
from timetodo.ops.migrate.validate.http import HttpComparison
from timetodo.ops.migrate.validate.load import LoadComparison
from timetodo.ops.migrate.validate.redis import RedisComparison
from timetodo.ops.migrate.validate.webhook import WebhookCheck


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(re.fullmatch(r"-?[\d.,]+( ms| s)?|-", row[i]) for row in cells[1:]) and len(cells) > 1
        for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        parts = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric, strict=True)]
        return "  " + "  ".join(parts).rstrip()

    out = [line(cells[0]), "  " + "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells[1:])
    return out


def _status(ok: bool | None) -> str:
    return "skipped" if ok is None else ("ok" if ok else "FAILED")


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


@dataclass
class ValidationReport:
    """The result of `timetodo migrate validate`: every comparison that was run (None = not run)."""

    database: DbComparison | None = None
    redis: RedisComparison | None = None
    files: FilesComparison | None = None
    http: HttpComparison | None = None
    webhook: WebhookCheck | None = None
    canary: CanaryCheck | None = None
    load: LoadComparison | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def sections(self) -> list[tuple[str, Comparison | None]]:
        return [
            ("database", self.database),
            ("redis", self.redis),
            ("files", self.files),
            ("http", self.http),
            ("webhook", self.webhook),
            ("canary", self.canary),
            ("load", self.load),
        ]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[str]:
        return [f"{name}: {message}" for name, section in self.sections() if section for message in section.errors]

    @property
    def warnings(self) -> list[str]:
        found = [f"{name}: {message}" for name, section in self.sections() if section for message in section.warnings]
        if all(section is None for _, section in self.sections()):
            found.append("nothing was validated")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "errors": self.errors,
            "warnings": self.warnings,
            "sections": {
                name: None if section is None else jsonable(section.to_dict()) for name, section in self.sections()
            },
        }

    def to_text(self) -> str:
        out = [
            "Time to DO — migration validation report",
            f"started {_iso(self.started_at)}, finished {_iso(self.finished_at) or '-'}",
            f"result: {'OK' if self.ok else 'FAILED'} ({len(self.errors)} errors, {len(self.warnings)} warnings)",
            "",
            "Summary",
        ]
        out += _table(
            ["section", "status", "errors", "warnings"],
            [
                (
                    name,
                    _status(None if s is None else s.ok),
                    "-" if s is None else len(s.errors),
                    "-" if s is None else len(s.warnings),
                )
                for name, s in self.sections()
            ],
        )
        out += self._database_text() + self._redis_text() + self._files_text() + self._http_text()
        out += self._webhook_text() + self._canary_text() + self._load_text()
        for title, messages in (("Errors", self.errors), ("Warnings", self.warnings)):
            if messages:
                out += ["", title] + [f"  - {message}" for message in messages]
        return "\n".join(out) + "\n"

    def _database_text(self) -> list[str]:
        db = self.database
        if db is None:
            return []
        out = ["", f"Database: {_status(db.ok)}  ({db.source} -> {db.target}; chunks of {db.chunk_rows} rows"]
        out[-1] += f"; snapshot {db.snapshot})" if db.snapshot else ")"
        out += _table(
            ["table", "primary key", "source rows", "target rows", "chunks", "differing", "status"],
            [
                (
                    t.name,
                    ", ".join(t.primary_key) if t.primary_key else ("-" if t.only_on else "(none)"),
                    t.source_rows,
                    t.target_rows,
                    t.chunks,
                    t.differing_chunks,
                    f"only on {t.only_on}" if t.only_on else _status(t.ok),
                )
                for t in db.tables
            ],
        )
        if db.sequences:
            out += ["", "  Sequences (target)"]
            out += _table(
                ["sequence", "column", "next value", "column max", "status"],
                [(s.name, f"{s.table}.{s.column}", s.next_value, s.column_max, s.status) for s in db.sequences],
            )
        return out

    def _redis_text(self) -> list[str]:
        r = self.redis
        if r is None:
            return []
        out = [
            "",
            f"Redis: {_status(r.ok)}  ({r.source} -> {r.target}; values by {r.method}; "
            f"TTL tolerance {r.ttl_tolerance_ms} ms)",
        ]
        out += _table(
            ["check", "count"],
            [
                ("keys on source (DBSIZE)", r.source_keys),
                ("keys on target (DBSIZE)", r.target_keys),
                ("source keys compared", r.compared),
                ("target keys scanned", r.target_scanned),
                ("missing on target", r.missing_on_target),
                ("only on target", r.extra_on_target),
                ("type differs", r.type_differs),
                ("value differs", r.value_differs),
                ("TTL differs", r.ttl_differs),
                ("expired during the run", r.expired_during_run),
            ],
        )
        return out

    def _files_text(self) -> list[str]:
        f = self.files
        if f is None:
            return []
        out = ["", f"Files: {_status(f.ok)}"]
        out += _table(
            ["check", "count"],
            [
                ("files on source", f.source_files),
                ("files on target", f.target_files),
                ("missing on target", len(f.missing_on_target)),
                ("only on target", len(f.extra_on_target)),
                ("sha256 differs", len(f.hash_differs)),
            ],
        )
        return out

    def _http_text(self) -> list[str]:
        h = self.http
        if h is None:
            return []
        out = ["", f"HTTP: {_status(h.ok)}  ({h.source} vs {h.target}; {h.rounds} interleaved rounds)"]
        out += _table(
            ["GET", "source", "target", "identical"],
            [(p.path, p.source_status, p.target_status, "yes" if p.identical else "NO") for p in h.paths],
        )
        out += [""]
        out += _table(
            ["latency (ms)", "p50", "p95"],
            [
                ("source", _ms(h.source_p50_ms), _ms(h.source_p95_ms)),
                ("target", _ms(h.target_p50_ms), _ms(h.target_p95_ms)),
                ("budget", _ms(h.budget_p50_ms), _ms(h.budget_p95_ms)),
            ],
        )
        within = h.target_within_budget
        verdict = "unknown" if within is None else ("yes" if within else "NO")
        out.append(f"  target within budget: {verdict} — {h.budget_rule}")
        return out

    def _webhook_text(self) -> list[str]:
        w = self.webhook
        if w is None:
            return []
        out = ["", f"Telegram webhook: {_status(w.ok)}"]
        out += _table(
            ["expected", "actual", "pending updates", "error since switch"],
            [(w.expected_url, w.url or "(none)", w.pending_update_count, w.last_error or "none")],
        )
        return out

    def _canary_text(self) -> list[str]:
        c = self.canary
        if c is None:
            return []
        out = [
            "",
            f"Canary account on the target: {_status(c.ok)}  (removed afterwards: {'yes' if c.removed else 'NO'})",
        ]
        out += _table(
            ["step", "status", "ms", "detail"], [(s["step"], _status(s["ok"]), s["ms"], s["detail"]) for s in c.steps]
        )
        return out

    def _load_text(self) -> list[str]:
        load = self.load
        if load is None:
            return []
        out = [
            "",
            f"Load: {_status(load.ok)}  (the same read/write mix; source before the freeze, target after the switch)",
        ]
        rows: list[tuple[Any, ...]] = []
        for label, fig in (("source", load.source), ("target", load.target)):
            if fig is None:
                rows.append((label, None, None, None, None, None, None))
                continue
            rows.append(
                (
                    label,
                    fig.connections,
                    fig.requests,
                    f"{fig.throughput:.0f}",
                    _ms(fig.p50_ms),
                    _ms(fig.p95_ms),
                    _ms(fig.p99_ms),
                )
            )
        out += _table(["host", "connections", "requests", "per s", "p50 ms", "p95 ms", "p99 ms"], rows)
        return out

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write `migration_validation_report.txt` and `.json` into `directory` (atomically); returns both paths."""
        if self.finished_at is None:
            self.finished_at = time.time()
        directory.mkdir(parents=True, exist_ok=True)
        text_path, json_path = directory / REPORT_TXT, directory / REPORT_JSON
        _write_atomic(text_path, self.to_text())
        _write_atomic(json_path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return text_path, json_path


def _iso(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
