"""The final report's facts, gathered once from the state file's run history (and the validation report, the
configuration when known), then rendered three ways (`text`, `html`, JSON): the three always carry the same facts.

Guarantees: the steps appear in the order they ran, every attempt and the rollback a row of its own (nothing a later
rollback or resume did erases an earlier row); durations are rounded for people (`3.9 s`, `2 min 14 s`) with the
exact seconds kept in the JSON; nothing here touches a host.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from timetodo.ops.migrate.state import MigrationState, StepRun

if TYPE_CHECKING:
    from timetodo.ops.migrate.config import MigrationConfig


class Transfer(BaseModel):
    """One kind of data moved by a phase: how much, and how fast when its duration is known."""

    what: str  # "database", "Redis", "uploads", "rows back"
    amount: int | None = None
    unit: str = ""  # "rows", "keys", "files"
    bytes: int | None = None
    seconds: float | None = None

    @property
    def rate(self) -> str:
        if not self.seconds or self.seconds <= 0:
            return ""
        if self.bytes:
            return f"{human_bytes(self.bytes / self.seconds)}/s"
        if self.amount:
            return f"{self.amount / self.seconds:,.0f} {self.unit}/s"
        return ""

    @property
    def label(self) -> str:
        parts = []
        if self.amount is not None:
            parts.append(f"{self.amount:,} {self.unit}".strip())
        if self.bytes is not None:
            parts.append(human_bytes(self.bytes))
        return ", ".join(parts) or "—"


class Row(BaseModel):
    """One attempt of a step, or one phase inside the cutover (`parent` set)."""

    step: str
    attempt: int = 1
    status: str
    started_at: float
    ended_at: float | None = None
    seconds: float | None = None
    parent: str | None = None
    error: str | None = None
    moved: list[Transfer] = []
    result: dict[str, Any] | None = None
    """The step's raw result (JSON only: for scripts such as bench/migrate.py; the renderings show `moved`)."""


class Window(BaseModel):
    """A span on the timeline: the write freeze, the forwarding window."""

    label: str
    started_at: float
    ended_at: float | None = None


class Check(BaseModel):
    """One line of the verification table."""

    section: str
    check: str
    status: str  # "ok", "FAILED", "warning", "skipped"
    figures: str = ""


class Side(BaseModel):
    """Where an installation runs, as far as the report knows."""

    role: str
    address: str | None = None
    host: str | None = None
    image: str | None = None
    version: str | None = None
    details: dict[str, str] = {}


class Report(BaseModel):
    generated_at: float
    outcome: str
    started_at: float | None = None
    ended_at: float | None = None
    rows: list[Row] = []
    freeze: Window | None = None
    forwarding: Window | None = None
    """The window in which the source forwards clients' requests to the target: drawn when a cutover recorded the
    facts `forwarding_started_at` (set at the switch) and `forwarding_ended_at` (`migrate finish`, or a rollback)."""
    write_freeze_seconds: float | None = None
    verification: list[Check] = []
    verification_ok: bool | None = None
    sides: list[Side] = []

    @property
    def write_freeze(self) -> str:
        return human_seconds(self.write_freeze_seconds)

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["write_freeze"] = self.write_freeze
        # kept for the readers of the first format
        data["write_downtime_seconds"] = self.write_freeze_seconds
        data["phases"] = [row for row in data["rows"] if row["parent"] is None]
        for row, model in zip(data["rows"], self.rows, strict=True):
            for item, transfer in zip(row["moved"], model.moved, strict=True):
                item["label"], item["rate"] = transfer.label, transfer.rate
        return data


# formatting ----------------------------------------------------------------------------------------------------------
def human_seconds(seconds: float | None) -> str:
    """`0.42 s`, `3.9 s`, `42 s`, `2 min 14 s`, `1 h 05 min`; `—` when unknown."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"  # pragma: no cover


def clock(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "—"


# what moved ----------------------------------------------------------------------------------------------------------
def _num(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _sec(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _keys(what: str, redis: dict[str, Any]) -> Transfer:
    return Transfer(
        what=what,
        amount=_num(redis.get("keys")),
        unit="keys",
        bytes=_num(redis.get("bytes")),
        seconds=_sec(redis.get("seconds")),
    )


def _files(what: str, files: dict[str, Any]) -> Transfer:
    return Transfer(
        what=what,
        amount=_num(files.get("files")),
        unit="files",
        bytes=_num(files.get("bytes")),
        seconds=_sec(files.get("seconds")),
    )


def copied(result: dict[str, Any] | None) -> list[Transfer]:
    """What a copy (sync, the cutover's final copy) moved: the database dump, the Redis keys, the uploads."""
    if not isinstance(result, dict):
        return []
    out: list[Transfer] = []
    db = result.get("db")
    if isinstance(db, dict) and db.get("strategy") == "delta":
        what = f"database delta ({_num(db.get('chunks_copied')) or 0:,} of {_num(db.get('chunks')) or 0:,} chunks)"
        if db.get("abandoned"):
            what = "database delta (abandoned: the in-freeze pass copies it)"
        out.append(Transfer(what=what, amount=_num(db.get("rows")), unit="rows", seconds=_sec(db.get("seconds"))))
    elif isinstance(db, dict) and db.get("strategy") == "logical":
        what = f"database (logical replication: schema, then the subscription's copy of {_num(db.get('tables')) or 0} tables)"
        out.append(Transfer(what=what, bytes=_num(db.get("bytes")), seconds=_sec(db.get("seconds"))))
    elif isinstance(db, dict) and db.get("method") == "stream":
        out.append(
            Transfer(what="database (streamed COPY)", bytes=_num(db.get("bytes")), seconds=_sec(db.get("seconds")))
        )
    elif isinstance(db, dict) and db:
        seconds = (_sec(db.get("dump_seconds")) or 0) + (_sec(db.get("restore_seconds")) or 0)
        out.append(Transfer(what="database (dump + restore)", bytes=_num(db.get("bytes")), seconds=seconds or None))
    redis = result.get("redis")
    if isinstance(redis, dict) and "scanned" in redis:
        scanned, deleted = _num(redis.get("scanned")) or 0, _num(redis.get("deleted")) or 0
        if redis.get("method") == "key tracking":
            compared = f"key tracking named {scanned:,} keys, {deleted:,} deleted"
        else:
            compared = f"{scanned:,} keys compared, {deleted:,} deleted"
        if redis.get("tracking_lost"):
            compared += f"; key tracking not used: {redis['tracking_lost']}"
        out.append(_keys(f"Redis delta ({compared})", redis))
    elif isinstance(redis, dict) and redis:
        out.append(_keys("Redis", redis))
    files = result.get("files")
    if isinstance(files, dict) and files and "skipped" not in files:
        out.append(_files("uploads", files))
    return out


def carried_back(result: dict[str, Any] | None) -> list[Transfer]:
    """What a rollback carried back to the source: row changes, Redis keys, uploads."""
    if not isinstance(result, dict):
        return []
    out: list[Transfer] = []
    database = result.get("database")
    if isinstance(database, dict):
        applied = database.get("applied") or {}
        totals = applied.get("totals") or {}
        rows = sum(_num(totals.get(k)) or 0 for k in ("inserted", "updated", "deleted"))
        seconds = (_sec((database.get("delta") or {}).get("elapsed_seconds")) or 0) + (
            _sec(applied.get("elapsed_seconds")) or 0
        )
        how = str(database.get("via") or "")
        if database.get("reverse_stream_unusable"):
            how += f"; reverse stream not usable: {database['reverse_stream_unusable']}"
        what = f"database rows back ({how})" if how else "database rows back"
        out.append(Transfer(what=what, amount=rows, unit="rows", seconds=seconds or None))
    redis = result.get("redis")
    if isinstance(redis, dict) and redis:
        out.append(_keys("Redis back", redis))
    files = result.get("files")
    if isinstance(files, dict) and isinstance(files.get("pushed"), dict):
        out.append(_files("uploads back", files["pushed"]))
    return out


def _moved(run: StepRun) -> list[Transfer]:
    if run.step == "sync":
        return copied(run.result)
    if run.step == "rollback":
        return carried_back(run.result)
    if run.step == "backup" and isinstance(run.result, dict):
        r = run.result
        return [
            Transfer(
                what=f"backup archive ({_num(r.get('rows')) or 0:,} rows, {_num(r.get('keys')) or 0:,} keys, "
                f"{_num(r.get('files')) or 0:,} files)",
                bytes=_num(r.get("bytes")),
                seconds=run.seconds,
            )
        ]
    return []


# the rows ------------------------------------------------------------------------------------------------------------
def _history(state: MigrationState) -> list[StepRun]:
    """The run history; for a state file written before it existed, one row per step from the step table."""
    if state.history:
        return list(state.history)
    legacy = []
    for name, step in state.data.get("steps", {}).items():
        if step.get("started_at"):
            legacy.append(
                StepRun(
                    step=name,
                    attempt=int(step.get("attempts", 1)),
                    status=step.get("status", "running"),
                    started_at=float(step["started_at"]),
                    ended_at=step.get("ended_at"),
                    result=step.get("result"),
                    error=step.get("error"),
                    facts=state.facts.to_json() if name == "cutover" else {},
                )
            )
    return sorted(legacy, key=lambda run: run.started_at)


def _cutover_phases(run: StepRun) -> list[Row]:
    phases = run.facts.get("cutover_phases") or (run.result or {}).get("phases") or {}
    rows = []
    for name, phase in sorted(phases.items(), key=lambda item: float(item[1].get("started_at", 0))):
        started, ended = float(phase["started_at"]), float(phase["ended_at"])
        moved = copied(phase.get("result")) if name in ("final_copy", "pre_pass") else []
        rows.append(
            Row(
                step=name,
                attempt=run.attempt,
                status="done",
                started_at=started,
                ended_at=ended,
                seconds=round(ended - started, 3),
                parent="cutover",
                moved=moved,
            )
        )
    return rows


def _rows(history: list[StepRun]) -> list[Row]:
    rows: list[Row] = []
    for run in history:
        ended = run.ended_at  # None when killed: the timeline draws it up to the next row
        rows.append(
            Row(
                step=run.step,
                attempt=run.attempt,
                status=run.status,
                started_at=run.started_at,
                ended_at=ended,
                seconds=None if run.seconds is None else round(run.seconds, 3),
                error=run.error,
                moved=_moved(run),
                result=run.result,
            )
        )
        if run.step == "cutover":
            rows.extend(_cutover_phases(run))
    return rows


def _freeze(history: list[StepRun], state: MigrationState) -> tuple[Window | None, float | None]:
    """The last cutover's write freeze (from the facts its attempt recorded: a rollback forgets the live ones)."""
    for run in reversed(history):
        if run.step != "cutover":
            continue
        facts = run.facts or state.facts.to_json()
        started = facts.get("freeze_started_at")
        if started is None:
            continue
        downtime = facts.get("write_downtime_seconds")
        ended = facts.get("writes_switched_at") or facts.get("switched_at")
        if ended is None and downtime is not None:
            ended = float(started) + float(downtime)
        return Window(label="write freeze", started_at=float(started), ended_at=ended), downtime
    started = state.facts.freeze_started_at  # a cutover running now
    if started is not None:
        return Window(label="write freeze", started_at=started, ended_at=state.facts.switched_at), None
    return None, None


def _forwarding(history: list[StepRun]) -> Window | None:
    for run in reversed(history):
        started = run.facts.get("forwarding_started_at") if run.step == "cutover" else None
        if isinstance(started, int | float):
            ended = run.facts.get("forwarding_ended_at")
            return Window(
                label="forwarding",
                started_at=float(started),
                ended_at=ended if isinstance(ended, int | float) else None,
            )
    return None


def _outcome(history: list[StepRun]) -> str:
    if not history:
        return "nothing ran yet"
    last = history[-1]
    if last.step == "rollback":
        return {"done": "rolled back to the source", "failed": "rollback FAILED"}.get(last.status, "rolling back")
    if last.status == "failed":
        return f"stopped: {last.step} failed"
    if last.status in ("running", "interrupted"):
        return f"in progress (or killed) during {last.step}"
    if last.step == "validate":
        return "migrated and validated"
    if last.step == "cutover":
        return "switched to the target (not validated yet)"
    return f"{last.step} done"


# verification --------------------------------------------------------------------------------------------------------
def _status(section: dict[str, Any] | None) -> str:
    if section is None:
        return "skipped"
    return "ok" if section.get("ok", not section.get("errors")) else "FAILED"


def _count(value: Any) -> str:
    return "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


FIGURES: dict[str, list[tuple[str, str]]] = {
    "redis": [
        ("source_keys", "source keys"),
        ("target_keys", "target keys"),
        ("compared", "compared"),
        ("missing_on_target", "missing"),
        ("value_differs", "value differs"),
        ("type_differs", "type differs"),
        ("ttl_differs", "TTL differs"),
    ],
    "files": [
        ("source_files", "source files"),
        ("target_files", "target files"),
        ("missing_on_target", "missing"),
        ("hash_differs", "content differs"),
        ("extra_on_target", "extra"),
    ],
    "http": [
        ("source_p50_ms", "source p50 ms"),
        ("source_p95_ms", "p95 ms"),
        ("target_p50_ms", "target p50 ms"),
        ("target_p95_ms", "p95 ms"),
        ("samples", "samples"),
    ],
    "webhook": [("url", "points at"), ("pending_update_count", "pending updates"), ("last_error", "last error")],
}
CHECK_NAMES = {
    "redis": "every key: type, value, TTL",
    "files": "every upload: name, size, sha256",
    "http": "same API answers, latency",
    "webhook": "Telegram webhook on the target",
}


def _canary_and_load(sections: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    canary = sections.get("canary")
    if isinstance(canary, dict):
        steps = [s for s in canary.get("steps") or [] if isinstance(s, dict)]
        passed = sum(1 for s in steps if s.get("ok"))
        figures = (
            f"{passed} of {len(steps)} steps passed; removed afterwards: {'yes' if canary.get('removed') else 'no'}"
        )
        checks.append(
            Check(
                section="canary", check="a client's round trip on the target", status=_status(canary), figures=figures
            )
        )
    load = sections.get("load")
    if isinstance(load, dict):
        parts = []
        for host in ("source", "target"):
            fig = load.get(host)
            if isinstance(fig, dict):
                parts.append(
                    f"{host} p50 {fig.get('p50_ms')} / p95 {fig.get('p95_ms')} / p99 {fig.get('p99_ms')} ms, "
                    f"{fig.get('throughput_per_s')}/s, {_count(fig.get('failures'))} failed"
                )
        checks.append(
            Check(
                section="load",
                check="the same read/write mix on both hosts",
                status=_status(load),
                figures="; ".join(parts),
            )
        )
    return checks


def verification(validation: dict[str, Any] | None) -> list[Check]:
    """The verification table: each check of the validation report, pass/fail and its figures."""
    if not validation:
        return []
    sections = validation.get("sections") or {}
    checks: list[Check] = []
    db = sections.get("database")
    if isinstance(db, dict):
        for table in db.get("tables") or []:
            if not isinstance(table, dict):
                continue
            figures = f"source {_count(table.get('source_rows'))} rows, target {_count(table.get('target_rows'))}"
            if table.get("chunks"):
                figures += f"; {table['chunks']} chunks hashed, {table.get('differing_chunks', 0)} differ"
            status = "ok" if table.get("ok") else "FAILED"
            checks.append(Check(section="database", check=f"table {table.get('name')}", status=status, figures=figures))
        for seq in db.get("sequences") or []:
            if not isinstance(seq, dict):
                continue
            figures = (
                f"last value {_count(seq.get('last_value'))}, column max {_count(seq.get('column_max'))}, "
                f"next {_count(seq.get('next_value'))}"
            )
            status = str(seq["status"]) if seq.get("status") in ("ok", "warning") else ""
            status = status or ("ok" if seq.get("ok", True) else "FAILED")
            checks.append(
                Check(section="database", check=f"sequence {seq.get('name')}", status=status, figures=figures)
            )
    for name, figures_of in FIGURES.items():
        if name not in sections:
            continue
        section = sections[name]
        figures = ""
        if isinstance(section, dict):
            figures = ", ".join(
                f"{label} {_count(len(value) if isinstance(value, list) else value)}"
                for key, label in figures_of
                if (value := section.get(key)) is not None
            )
        checks.append(Check(section=name, check=CHECK_NAMES[name], status=_status(section), figures=figures))
    checks += _canary_and_load(sections)
    for message in validation.get("errors") or []:
        checks.append(Check(section="errors", check=str(message)[:300], status="FAILED"))
    for message in validation.get("warnings") or []:
        checks.append(Check(section="warnings", check=str(message)[:300], status="warning"))
    return checks


def _validation(history: list[StepRun], fallback: dict[str, Any] | None) -> dict[str, Any] | None:
    for run in reversed(history):
        if run.step == "validate" and run.status == "done" and run.result:
            return run.result
    return fallback


# the two sides -------------------------------------------------------------------------------------------------------
def _preflight_facts(history: list[StepRun]) -> dict[str, Any]:
    for run in reversed(history):
        if run.step == "preflight" and run.result:
            facts = run.result.get("facts")
            return facts if isinstance(facts, dict) else {}
    return {}


def sides(state: MigrationState, history: list[StepRun], config: MigrationConfig | None) -> list[Side]:
    facts = {**_preflight_facts(history), **state.facts.to_json()}
    source = Side(role="source")
    target = Side(role="target")
    if facts.get("source_version"):
        source.version = str(facts["source_version"])
    if facts.get("source_pg_major") is not None:
        source.details["PostgreSQL"] = str(facts["source_pg_major"])
    if facts.get("source_redis"):
        source.details["Redis"] = str(facts["source_redis"])
    for key, label in (("db_bytes", "database size"), ("files_bytes", "uploads size")):
        if facts.get(key) is not None:
            source.details[label] = human_bytes(float(facts[key]))
    if facts.get("keys") is not None:
        source.details["Redis keys"] = f"{facts['keys']:,}"
    if facts.get("files") is not None:
        source.details["upload files"] = f"{facts['files']:,}"
    if config is not None:
        source.address = config.source.api_url
        target.address = config.target.public_url
        target.host = f"{config.target.user}@{config.target.host}:{config.target.port}"
        target.details["runtime"] = config.target.runtime
        target.details["app dir"] = str(config.target.app_dir)
    for run in reversed(history):
        if run.step == "deploy" and run.result:
            found = run.result.get("health")
            health: dict[str, Any] = found if isinstance(found, dict) else {}
            for key, value in (
                ("host", run.result.get("host")),
                ("image", run.result.get("image")),
                ("version", run.result.get("version") or health.get("version")),
            ):
                if isinstance(value, str | int) and value:
                    setattr(target, key, str(value))
            migrations = (health.get("checks") or {}).get("migrations") or {}
            if migrations.get("current"):
                target.details["schema revision"] = str(migrations["current"])
            database = (health.get("checks") or {}).get("database") or {}
            if database.get("dialect"):
                target.details["database"] = str(database["dialect"])
            break
    return [source, target]


def build(
    state: MigrationState,
    *,
    config: MigrationConfig | None = None,
    validation: dict[str, Any] | None = None,
    generated_at: float | None = None,
) -> Report:
    """The report of the run recorded in `state` (`validation`: the last validation report, when validate's own
    result is not in the history)."""
    history = _history(state)
    freeze, downtime = _freeze(history, state)
    checks_source = _validation(history, validation)
    ends = [run.ended_at for run in history if run.ended_at is not None]
    return Report(
        generated_at=generated_at if generated_at is not None else time.time(),
        outcome=_outcome(history),
        started_at=history[0].started_at if history else None,
        ended_at=max(ends) if ends else None,
        rows=_rows(history),
        freeze=freeze,
        forwarding=_forwarding(history),
        write_freeze_seconds=None if downtime is None else float(downtime),
        verification=verification(checks_source),
        verification_ok=None if not checks_source else bool(checks_source.get("ok")),
        sides=sides(state, history, config),
    )
