"""migration_scripts/*.sh (issue 12, item 7): the seed's script names work from a fresh checkout, from any directory,
with nothing of the project on PATH: they set up / find the checkout's environment (scripts/bootstrap.sh, as
scripts/dev.sh does) and pass every flag through to the matching `timetodo migrate` command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ops.test_prepare_deploy import _shellcheck
from tests.support import ROOT, UNREACHABLE_MIGRATION_SECRETS
from timetodo.ops.migrate.state import MigrationState

STATE_NAME = "state.json"  # MigrationState.load(work_dir).path

SCRIPTS = {
    "run_migration.sh": "run",
    "backup_render_data.sh": "backup",
    "prepare_selectel_server.sh": "prepare",
    "deploy_to_selectel.sh": "deploy",
    "validate_migration.sh": "validate",
    "rollback.sh": "rollback",
}
SECRETS = UNREACHABLE_MIGRATION_SECRETS


def bare_env(**extra: str) -> dict[str, str]:
    """The caller's environment, but no virtualenv and no `timetodo` on PATH: only the system and uv (which
    bootstrap.sh would install)."""
    uv = shutil.which("uv")
    path = ":".join([*([str(Path(uv).parent)] if uv else []), "/usr/bin", "/bin"])
    keep = {k: v for k, v in os.environ.items() if k not in ("PATH", "VIRTUAL_ENV", "TIMETODO", "MIGRATION_CONFIG")}
    return {**keep, "PATH": path, "COLUMNS": "200", "NO_COLOR": "1", **extra}


def script(
    name: str, *args: str, cwd: Path, root: Path = ROOT, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "migration_scripts" / name), *args],
        cwd=cwd,
        env=bare_env(**env),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_table_covers_every_script() -> None:
    shipped = {p.name for p in (ROOT / "migration_scripts").glob("*.sh") if not p.name.startswith("_")}
    assert shipped == set(SCRIPTS)
    assert shutil.which("timetodo", path=bare_env()["PATH"]) is None  # the wrappers cannot lean on PATH


@pytest.mark.parametrize(("name", "command"), SCRIPTS.items())
def test_help_and_a_bad_flag(name: str, command: str, tmp_path: Path) -> None:
    shown = script(name, "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"Usage: timetodo migrate {command}" in shown.stdout
    assert script(name, "-h", cwd=tmp_path).stdout == shown.stdout
    bad = script(name, "--no-such-flag", cwd=tmp_path)
    assert bad.returncode != 0
    assert "--no-such-flag" in bad.stdout + bad.stderr
    assert not any(tmp_path.iterdir())  # nothing written where it ran


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "conf" / "my-migration.toml"
    config.parent.mkdir()
    config.write_text((ROOT / "migration.example.toml").read_text())
    return config


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    # the config's location, relative to the caller's directory, through MIGRATION_CONFIG
    result = script(
        "run_migration.sh",
        "--dry-run",
        "--skip-prepare",
        cwd=tmp_path,
        MIGRATION_CONFIG="conf/my-migration.toml",
        **SECRETS,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shown = result.stdout + result.stderr
    assert "plan: https://timetodo.onrender.com" in shown  # the example config, found from the caller's directory
    for step in ("preflight", "backup", "deploy", "sync", "cutover", "validate"):
        assert step in shown
    # planned, not started: no step recorded in a state file (only the local log of this invocation)
    assert not (config.parent / "migration" / STATE_NAME).exists()
    assert MigrationState.load(config.parent / "migration").path.name == STATE_NAME
    # --config given on the command line wins over the default
    explicit = script("validate_migration.sh", "--config", str(tmp_path / "absent.toml"), cwd=tmp_path, **SECRETS)
    assert explicit.returncode != 0 and "absent.toml" in explicit.stdout + explicit.stderr


def test_rollback_asks_and_refuses_without_an_answer(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = {"MIGRATION_CONFIG": str(config), **SECRETS}
    closed = script("rollback.sh", cwd=tmp_path, **env)  # stdin is /dev/null: no answer
    assert closed.returncode != 0
    assert "Roll back to the source host?" in closed.stdout
    declined = script("rollback.sh", cwd=tmp_path, stdin="n\n", **env)
    assert declined.returncode != 0 and "Roll back to the source host?" in declined.stdout
    assert sorted(p.name for p in config.parent.iterdir()) == ["my-migration.toml"]  # refused before loading it
    # --force passes through: no question (it then fails on the unreachable hosts, which is not asked here)
    forced = script("rollback.sh", "--force", cwd=tmp_path, **env)
    assert "Roll back to the source host?" not in forced.stdout


def test_migration_scripts_pass_shellcheck() -> None:
    shellcheck, why = _shellcheck()
    if shellcheck is None:
        pytest.skip(why)
    files = sorted(str(p) for p in (ROOT / "migration_scripts").glob("*.sh"))
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=info", "--external-sources", *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_from_a_fresh_checkout(tmp_path: Path) -> None:
    """A copy of the committed tree (no .venv): the first script call builds the environment, then runs."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
    # the working tree's scripts (this test runs before they are committed, too)
    shutil.copytree(ROOT / "migration_scripts", checkout / "migration_scripts", dirs_exist_ok=True)
    assert not (checkout / ".venv").exists()
    result = script("run_migration.sh", "--help", cwd=tmp_path, root=checkout)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage: timetodo migrate run" in result.stdout
    assert (checkout / ".venv" / "bin" / "timetodo").exists()
