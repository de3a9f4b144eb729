"""The state file of a migration: which steps are done, with their results, so `--resume` continues after a crash.

Written atomically (temporary file + rename + fsync) after every change; one run at a time (a lock file with the
owner's PID).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEPS = ("preflight", "backup", "prepare", "deploy", "sync", "cutover", "validate")


class StateError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass
class MigrationState:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, work_dir: Path) -> MigrationState:
        path = work_dir / "state.json"
        if path.exists():
            try:
                return cls(path, json.loads(path.read_text()))
            except json.JSONDecodeError as exc:
                raise StateError(f"{path} is not valid JSON: {exc}", "restore it or move it away") from None
        return cls(path, {"version": 1, "created_at": time.time(), "steps": {}, "facts": {}})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump(self.data, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    # steps ----------------------------------------------------------------------------------------------------------
    def step(self, name: str) -> dict[str, Any]:
        steps: dict[str, dict[str, Any]] = self.data.setdefault("steps", {})
        return steps.setdefault(name, {"status": "pending"})

    def is_done(self, name: str) -> bool:
        step = self.data.get("steps", {}).get(name)
        return bool(step) and step.get("status") == "done"

    def start(self, name: str) -> None:
        step = self.step(name)
        step.update(status="running", started_at=time.time(), attempts=int(step.get("attempts", 0)) + 1)
        step.pop("error", None)
        self.save()

    def finish(self, name: str, result: dict[str, Any] | None = None) -> None:
        step = self.step(name)
        step.update(status="done", ended_at=time.time(), result=result or {})
        self.save()

    def fail(self, name: str, error: str) -> None:
        step = self.step(name)
        step.update(status="failed", ended_at=time.time(), error=error)
        self.save()

    def unfinished(self) -> list[str]:
        """Steps a killed run left behind (a failed step recorded its error and simply runs again)."""
        return [name for name, step in self.data.get("steps", {}).items() if step.get("status") == "running"]

    # facts: values later steps and rollback need (cutover times, webhook before the switch, …) ---------------------
    @property
    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = self.data.setdefault("facts", {})
        return facts

    def remember(self, **values: Any) -> None:
        self.facts.update(values)
        self.save()


class RunLock:
    """One `timetodo migrate` at a time per work directory."""

    def __init__(self, work_dir: Path) -> None:
        self.path = work_dir / "migrate.lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            try:
                pid = int(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise StateError(
                    f"another timetodo migrate (PID {pid}) is running in this work directory",
                    "wait for it, or stop it first",
                ) from None
            self.path.unlink(missing_ok=True)  # stale: its process is gone (crash, kill -9)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
