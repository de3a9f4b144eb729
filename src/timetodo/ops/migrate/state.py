"""The state file of a migration: which steps are done, with their results, so `--resume` continues after a crash,
and the run history: one `StepRun` per attempt of a step, in the order they started, appended and never rewritten
once ended (a rollback or a resume adds rows; the final report is built from them).

Written atomically (temporary file + rename + fsync) after every change; one run at a time (a lock file with the
owner's PID).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from timetodo.ops.errors import EXIT_REFUSED, OpsError

STEPS = ("preflight", "backup", "prepare", "deploy", "sync", "cutover", "validate")


class StateError(OpsError):
    """The state file cannot be used (unreadable: EXIT_ERROR), or another run holds the work directory (EXIT_REFUSED)."""


class CutoverPhase(BaseModel):
    """One phase of the cutover, done: skipped when a resumed run meets it again."""

    started_at: float
    ended_at: float
    result: Any = None


class StepRun(BaseModel):
    """One attempt of one step. `interrupted`: the run was killed during it (found `running` by the next attempt).
    `facts`: the facts as they were when the attempt ended (a later rollback forgets the cutover's; this keeps them)."""

    step: str
    attempt: int
    status: Literal["running", "done", "failed", "interrupted"] = "running"
    started_at: float
    ended_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    facts: dict[str, Any] = {}

    @property
    def seconds(self) -> float | None:
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)


class Facts(BaseModel):
    """What one step learns and a later one (or rollback) needs. Unset facts are left out of the state file."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # preflight
    source_pg_major: int | None = None
    source_version: str | None = None
    db_bytes: int | None = None
    tables_without_pk: list[str] | None = None
    source_redis: str | None = None
    target_redis_image: str | None = None
    # strategy "logical": preflight's verdict on the source, the fallback to delta and why, the names replication
    # uses and what cleanup removed (ops/migrate/logical.py)
    logical: dict[str, Any] | None = None
    # cutover, before the freeze: the canary account (ops/migrate/canary.py) and the source under the load mix
    canary: dict[str, Any] | None = None
    keys: int | None = None
    files_bytes: int | None = None
    files: int | None = None
    target_free_bytes: int | None = None
    # cutover
    freeze_started_at: float | None = None
    cutover_phases: dict[str, CutoverPhase] = {}
    writes_switched_at: float | None = None
    webhook_before: str | None = None
    forwarding_started_at: float | None = None  # the source proxies its API to the target from then on
    forwarding_ended_at: float | None = None  # `migrate finish`, or a rollback
    switched_at: float | None = None
    # the target's transaction horizon after the verified final copy (rollback finds the target's writes by it)
    target_xid_horizon: int | None = None
    write_downtime_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)


@dataclass
class MigrationState:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)
    facts: Facts = field(default_factory=Facts)
    history: list[StepRun] = field(default_factory=list)

    @classmethod
    def load(cls, work_dir: Path) -> MigrationState:
        path = work_dir / "state.json"
        if path.exists():
            try:
                data = json.loads(path.read_text())
                history = [StepRun.model_validate(run) for run in data.get("history", [])]
                return cls(path, data, Facts.model_validate(data.get("facts", {})), history)
            except json.JSONDecodeError as exc:
                raise StateError(f"{path} is not valid JSON: {exc}", "restore it or move it away") from None
            except ValidationError as exc:
                raise StateError(
                    f"{path}: unexpected facts: {exc.errors()[0]['msg']}", "restore it or move it away"
                ) from None
        return cls(path, {"version": 1, "created_at": time.time(), "steps": {}, "facts": {}})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data["facts"] = self.facts.to_json()
        self.data["history"] = [run.model_dump(mode="json", exclude_none=True) for run in self.history]
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
        now = time.time()
        step.update(status="running", started_at=now, attempts=int(step.get("attempts", 0)) + 1)
        step.pop("error", None)
        for run in self.history:  # a killed run left its attempt open: it ended, unfinished, before this one
            if run.status == "running":
                run.status = "interrupted"
        attempt = 1 + sum(1 for run in self.history if run.step == name)
        self.history.append(StepRun(step=name, attempt=attempt, started_at=now))
        self.save()

    def _end(self, name: str, status: Literal["done", "failed"], **values: Any) -> None:
        now = time.time()
        step = self.step(name)
        step.update(status=status, ended_at=now, **values)
        run = self._open_run(name)
        run.status, run.ended_at, run.facts = status, now, self.facts.to_json()
        run.result, run.error = values.get("result"), values.get("error")
        self.save()

    def _open_run(self, name: str) -> StepRun:
        for run in reversed(self.history):
            if run.step == name and run.status == "running":
                return run
        # a state file from before the history (or a step ended without start()): record it after the fact
        started = float(self.step(name).get("started_at") or time.time())
        attempt = 1 + sum(1 for run in self.history if run.step == name)
        self.history.append(StepRun(step=name, attempt=attempt, started_at=started))
        return self.history[-1]

    def finish(self, name: str, result: dict[str, Any] | None = None) -> None:
        self._end(name, "done", result=result or {})

    def fail(self, name: str, error: str) -> None:
        self._end(name, "failed", error=error)

    def unfinished(self) -> list[str]:
        """Steps a killed run left behind (a failed step recorded its error and simply runs again)."""
        return [name for name, step in self.data.get("steps", {}).items() if step.get("status") == "running"]

    # facts: values later steps and rollback need (cutover times, webhook before the switch, …) ---------------------
    def remember(self, **values: Any) -> None:
        for name, value in values.items():
            setattr(self.facts, name, value)
        self.save()

    def forget(self, *names: str) -> None:
        """Unset facts (an aborted cutover, a rollback) and save."""
        for name in names:
            setattr(self.facts, name, {} if name == "cutover_phases" else None)
        self.save()

    def result(self, step: str) -> dict[str, Any] | None:
        """The recorded result of a done step."""
        if not self.is_done(step):
            return None
        result: dict[str, Any] | None = self.data["steps"][step].get("result")
        return result


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
                    EXIT_REFUSED,
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
