"""The final migration report: built from the state's run history, rendered as text, JSON and HTML with the same
facts; the HTML page opened in headless Chromium.

`fixtures/migration_state_rolled_back.json` is the state file a real run left (tests/e2e/test_migrate.py: migration with
a writer, then rollback; paths renamed, the rollback's per-key delta lists trimmed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from timetodo.ops.migrate.report import build, render_html, render_text, write_final_report
from timetodo.ops.migrate.report.model import human_seconds
from timetodo.ops.migrate.state import MigrationState

RECORDED = Path(__file__).parent / "fixtures" / "migration_state_rolled_back.json"
RAN = ["preflight", "backup", "prepare", "deploy", "sync", "cutover", "validate", "rollback"]
CUTOVER_PHASES = ["stop_target", "final_copy", "verify", "start_target", "switch", "snapshot"]
HOSTILE = '<img src=x onerror="alert(1)"> & <b>'


def recorded_state(tmp_path: Path) -> MigrationState:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    shutil.copy(RECORDED, work / "state.json")
    return MigrationState.load(work)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.4212, "0.42 s"),
        (3.8717920780181885, "3.9 s"),
        (42.4, "42 s"),
        (134.2, "2 min 14 s"),
        (3600 + 5 * 60 + 10, "1 h 05 min"),
    ],
)
def test_durations_are_rounded_for_people(seconds: float | None, text: str) -> None:
    assert human_seconds(seconds) == text


def test_history_keeps_every_attempt_and_the_cutover_after_a_rollback(tmp_path: Path) -> None:
    state = MigrationState.load(tmp_path)
    state.start("preflight")
    state.finish("preflight", {"facts": {"source_version": "1.2.3"}})
    state.start("sync")  # killed here: the next run finds it running
    resumed = MigrationState.load(tmp_path)
    resumed.start("preflight")
    resumed.finish("preflight", {})
    resumed.start("sync")
    resumed.fail("sync", "rsync: connection reset")
    resumed.start("sync")
    resumed.finish("sync", {"redis": {"keys": 400, "seconds": 0.1}})
    resumed.start("cutover")
    resumed.remember(freeze_started_at=resumed.history[-1].started_at, write_downtime_seconds=3.8717920780181885)
    resumed.finish("cutover", {"write_downtime_seconds": 3.872})
    resumed.start("rollback")  # what rollback does to the live state: the cutover is to be run again
    resumed.data["steps"].pop("cutover")
    resumed.forget("freeze_started_at", "cutover_phases")
    resumed.finish("rollback", {})

    history = MigrationState.load(tmp_path).history
    assert [(run.step, run.attempt, run.status) for run in history] == [
        ("preflight", 1, "done"),
        ("sync", 1, "interrupted"),
        ("preflight", 2, "done"),
        ("sync", 2, "failed"),
        ("sync", 3, "done"),
        ("cutover", 1, "done"),
        ("rollback", 1, "done"),
    ]
    assert history[3].error == "rsync: connection reset"
    assert history[5].facts["write_downtime_seconds"] == pytest.approx(3.8717920780181885)

    report = build(MigrationState.load(tmp_path))
    assert [(row.step, row.attempt) for row in report.rows] == [(run.step, run.attempt) for run in history]
    assert report.write_freeze == "3.9 s" and report.freeze is not None  # kept after the rollback forgot it
    assert report.outcome == "rolled back to the source"
    assert report.sides[0].version == "1.2.3"
    text = render_text(report)
    assert "sync (attempt 3)" in text and "3.9 s" in text and "3.8717920780181885" not in text
    assert "rsync: connection reset" in text


def test_report_of_a_recorded_run_and_rollback(tmp_path: Path) -> None:
    state = recorded_state(tmp_path)
    assert "cutover" not in state.data["steps"], "the recorded rollback reset the step table"
    data = write_final_report(state, tmp_path / "work")
    report = build(state)

    top = [row.step for row in report.rows if row.parent is None]
    assert top == RAN
    assert [row.step for row in report.rows if row.parent == "cutover"] == CUTOVER_PHASES
    assert report.write_freeze_seconds is not None and report.write_freeze == "7.4 s"
    assert report.freeze is not None and report.freeze.ended_at is not None
    moved = {(row.step, m.what): m for row in report.rows for m in row.moved}
    assert moved["sync", "Redis"].amount == 409 and moved["sync", "Redis"].rate.endswith("keys/s")
    assert moved["final_copy", "uploads"].unit == "files"
    assert moved["rollback", "database rows back"].amount == 800
    assert report.verification_ok is True
    tables = [c for c in report.verification if c.check.startswith("table ")]
    assert len(tables) == 11 and all(c.status == "ok" for c in tables)
    assert {c.section for c in report.verification} >= {"database", "redis", "files", "http", "webhook"}
    target = report.sides[1]
    assert target.version == "0.1.0" and target.host == "ssh://root@127.0.0.1:58055"

    # the three renderings carry the same facts
    text = (tmp_path / "work" / "migration_final_report.txt").read_text()
    page = (tmp_path / "work" / "migration_final_report.html").read_text()
    assert [row["step"] for row in data["rows"]] == [row.step for row in report.rows]
    assert data["write_freeze"] == "7.4 s" and data["write_downtime_seconds"] == pytest.approx(7.360111951828003)
    assert [p["step"] for p in data["phases"]] == RAN
    assert data["phases"][4]["result"]["db"]["dump_seconds"] > 0  # raw results kept for bench/migrate.py
    assert len(data["verification"]) == len(report.verification)
    steps_html = page[page.index('<table id="steps">') :]
    steps_text = text[text.index("Steps, in the order they ran") :]
    for steps in (steps_text, steps_html):
        positions = [steps.index(name) for name in RAN]
        assert positions == sorted(positions), "steps in the order they ran"
    for rendered in (text, page):
        assert "7.4 s" in rendered and "7.360111951828003" not in rendered
        for check in report.verification:
            assert check.check in rendered and check.figures.split(",")[0] in rendered
        for row in report.rows:
            for m in row.moved:
                assert m.label.replace("&", "&amp;") in rendered or m.label in rendered
                if m.rate:
                    assert m.rate in rendered
        assert "0.1.0" in rendered


def test_hostile_names_are_escaped_and_nothing_external_is_loaded(tmp_path: Path) -> None:
    state = recorded_state(tmp_path)
    validate = next(run for run in state.history if run.step == "validate")
    assert validate.result is not None
    validate.result["sections"]["database"]["tables"][0]["name"] = HOSTILE
    state.history[-1].error = HOSTILE
    cutover = next(run for run in state.history if run.step == "cutover")
    cutover.facts["forwarding_started_at"] = cutover.facts["freeze_started_at"] + 1
    report = build(state)
    assert report.forwarding is not None and report.forwarding.ended_at is None
    report.forwarding.label = HOSTILE
    page = render_html(report)
    assert HOSTILE not in page and "<img" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &lt;b&gt;" in page
    assert 'class="forwarding"' in page  # the hook for the forwarding window draws it when the state has one
    assert_self_contained(page)


def assert_self_contained(page: str) -> None:
    tags = re.findall(r"<[a-zA-Z][^>]*>", page)  # text is escaped: every "<" left opens a real tag
    refs = [tag for tag in tags if re.search(r"\s(?:src|href|action|poster|data|xlink:href)\s*=", tag, re.IGNORECASE)]
    assert refs == [], f"the page refers to {refs}"
    assert not re.search(r"url\(|@import|<script|<link|<iframe", page, re.IGNORECASE)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "").split("<body>")[0]


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it with apt)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    """The screenshot stays as a test artifact: <pytest basetemp>/test_the_page_renders_in_h*/report.png."""
    state = recorded_state(tmp_path)
    state.history[-1].error = HOSTILE
    write_final_report(state, tmp_path / "work")
    page = tmp_path / "work" / "migration_final_report.html"
    assert_self_contained(page.read_text())

    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    timeline = re.search(r'<svg id="timeline".*?</svg>', rendered, re.DOTALL)
    assert timeline is not None, "no timeline in the rendered DOM"
    report = build(state)
    assert timeline.group(0).count('class="bar"') == len(report.rows)
    assert 'class="freeze"' in timeline.group(0) and "write freeze 7.4 s" in timeline.group(0)
    verification = re.search(r'<table id="verification">.*?</table>', rendered, re.DOTALL)
    assert verification is not None, "no verification table in the rendered DOM"
    assert verification.group(0).count("<tr>") == len(report.verification) + 1
    assert "<img" not in rendered and "&lt;img src=x" in rendered

    shot = tmp_path / "report.png"
    result = chromium("--window-size=1200,2000", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
