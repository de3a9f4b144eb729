"""Hostile paths, names and env values never run as shell (issue 10, item 7).

Every command builder of the ops toolkit is run FOR REAL (LocalTransport = `/bin/sh -c`, SSHTransport = the login
shell of a real sshd on 127.0.0.1) with paths holding spaces, quotes, `;`, `$()`, backticks, newlines and a leading
`-`; each payload would `touch` a marker file if any part of it were read as shell. The marker must never appear,
and the commands must still do their job on those paths (the files are found, copied, counted).
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import sys
from pathlib import Path

import pytest

from tests.ops.conftest import Sshd
from tests.support import UNREACHABLE_MIGRATION_SECRETS, free_port
from timetodo.ops.adapters.rsync import MANIFEST_COMMAND, Place, remote_manifest, remote_sizes, rsync, usage_command
from timetodo.ops.adapters.transport import LocalTransport, SSHTransport
from timetodo.ops.migrate.deploy import ComposeRuntime, ProcessRuntime
from timetodo.ops.migrate.deploy.runtime import EnvFileError, parse_env_text
from timetodo.ops.migrate.prepare import prepare_script


def hostile_names(marker: Path) -> list[str]:
    """Directory names that would touch `marker` if interpolated into shell text unquoted."""
    m = str(marker)
    return [
        f"sp ace; touch {m} #",
        f"$(touch {m})",
        f"`touch {m}`",
        f"q'uote; touch {m}; echo '",
        f'd"quote; touch {m}; echo "',
        f"new\nline\ntouch {m}",
        f"-rf && touch {m} || x",
        f"a|touch {m}&b>c<d",
    ]


CONTENT = b"attachment bytes\n"


def make_tree(base: Path, name: str) -> Path:
    directory = base / name
    directory.mkdir(parents=True)
    (directory / "f.txt").write_bytes(CONTENT)
    return directory


async def test_every_command_builder_with_hostile_paths_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "INJECTED"
    local = LocalTransport()
    sha = hashlib.sha256(CONTENT).hexdigest()
    for i, name in enumerate(hostile_names(marker)):
        base = tmp_path / f"case{i}"
        tree = make_tree(base, name)
        path = str(tree)

        # preflight's size/count of the source uploads (the `du -sb {path}` of the report)
        result = await local.run(usage_command(path), timeout=30)
        size, count = (int(x) for x in result.stdout.split())
        assert count == 1 and size >= len(CONTENT), (name, result.stdout)  # du counts the directories too
        # the listings validate and cutover compare
        assert await remote_manifest(local, path) == {"f.txt": sha}
        assert await remote_sizes(local, path) == {"f.txt": len(CONTENT)}
        # rsync between hostile local paths
        copied = await rsync(Place(path), Place(str(base / "copy" / name)))
        assert copied["files"] == 1 and (base / "copy" / name / "f.txt").read_bytes() == CONTENT

        # the process runtime's shell scripts, with a hostile app directory and binary
        runtime = ProcessRuntime(local, path, timetodo_bin=f"{path}/bin/timetodo", port=free_port(), stop_timeout=1)
        for command in (runtime.status_command(), runtime.stop_command(), runtime.migrate_command()):
            await local.run(command, timeout=30, check=False)
        assert await runtime.status() == "stopped"
        started = await local.run(runtime.start_command(), timeout=30, check=False)  # the binary does not exist
        assert started.exit_status == 0, started.stderr
        assert (tree / "timetodo.pid").exists()
        await local.run(runtime.stop_command(), timeout=30, check=False)
        assert (await runtime._alive()) is not None  # `tail` of the hostile log path, quoted
        probe = await local.run(runtime._probe_command(), timeout=30, check=False)
        assert probe.stdout.strip().endswith("0")  # no HTTP answer on the free port: status 0

        # compose: argv lists, each argument survives the shell round trip intact
        compose = ComposeRuntime(local, path, http_port=free_port())
        argv = compose.compose("up", "-d", "--wait")
        assert shlex.split(shlex.join(argv)) == argv and compose.env_path in argv
        await local.run(compose._probe_command(), timeout=30, check=False)

        # prepare refuses such a directory outright (it goes into a root script)
        with pytest.raises(ValueError, match="app_dir"):
            prepare_script(app_dir=path)
        assert not marker.exists(), name
    # the manifest command template quotes its directory itself
    assert "{dir}" in MANIFEST_COMMAND and "'{dir}'" not in MANIFEST_COMMAND
    assert not marker.exists()


@pytest.mark.slow
async def test_commands_over_ssh_and_rsync_to_a_hostile_remote_path(sshd: Sshd, tmp_path: Path) -> None:
    marker = tmp_path / "INJECTED"
    sha = hashlib.sha256(CONTENT).hexdigest()
    async with SSHTransport(sshd.target) as ssh:
        for i, name in enumerate(hostile_names(marker)):
            source = make_tree(tmp_path / f"src{i}", name)
            remote = str(tmp_path / f"dst{i}" / name)
            pushed = await rsync(Place(str(source)), Place(remote, sshd.target))
            assert pushed["files"] == 1
            assert Path(remote, "f.txt").read_bytes() == CONTENT
            assert await remote_manifest(ssh, remote) == {"f.txt": sha}
            assert await remote_sizes(ssh, remote) == {"f.txt": len(CONTENT)}
            result = await ssh.run(usage_command(remote), timeout=30)
            size, count = (int(x) for x in result.stdout.split())
            assert count == 1 and size >= len(CONTENT)
            pulled = await rsync(Place(remote, sshd.target), Place(str(tmp_path / f"back{i}")))
            assert pulled["files"] == 1
            assert not marker.exists(), name


async def test_migrate_plan_with_a_hostile_uploads_path_runs_nothing(tmp_path: Path) -> None:
    """The reproduction of the issue: `source.uploads.path = "/x; touch /tmp/INJECTED #"` made `migrate plan`
    (preflight) create the file."""
    from rich.console import Console

    from timetodo.ops.migrate import preflight
    from timetodo.ops.migrate.config import load_config, load_secrets
    from timetodo.ops.migrate.context import Context
    from timetodo.ops.migrate.state import MigrationState

    marker = tmp_path / "INJECTED"
    uploads = make_tree(tmp_path, f"x; touch {marker} #")
    example = Path(__file__).resolve().parents[2] / "migration.example.toml"
    text = example.read_text().replace('path = "/data/uploads"', f"path = {json.dumps(str(uploads))}")
    assert json.dumps(str(uploads)) in text
    config_path = tmp_path / "migration.toml"
    config_path.write_text(text)
    config = load_config(config_path)
    assert config.source.uploads is not None and config.source.uploads.ssh is None
    env = dict(UNREACHABLE_MIGRATION_SECRETS)
    ctx = Context(
        config,
        load_secrets(config, env),
        config.work_dir,
        MigrationState.load(config.work_dir),
        Console(file=io.StringIO(), width=200),
    )
    checks = preflight.Checks()
    await preflight._source_uploads(ctx, checks)
    assert not marker.exists()
    assert checks.facts["files"] == 1 and checks.facts["files_bytes"] >= len(CONTENT), checks.rows


# ---------------------------------------------------------------------------------------------------- env file

TRICKY_ENV = {
    "SECRET_KEY": "abc$def-" + "x" * 40,
    "DB_PASSWORD": "pa$$word",
    "TICKS": "`touch {marker}`",
    "SUBST": "$(touch {marker})",
    "SPACES": "two  spaces # not a comment",
    "QUOTES": 'it\'s "quoted"',
}


def tricky_env_text(marker: Path) -> tuple[str, dict[str, str]]:
    expected = {k: v.format(marker=marker) for k, v in TRICKY_ENV.items()}
    lines = [
        f"SECRET_KEY={expected['SECRET_KEY']}",  # unquoted: dotenv keeps `$def` literally
        f"DB_PASSWORD={expected['DB_PASSWORD']}",
        f"TICKS='{expected['TICKS']}'",
        f"SUBST={expected['SUBST']}",
        f"SPACES='{expected['SPACES']}'",
        'QUOTES="it\'s \\"quoted\\""',
    ]
    return "\n".join(lines) + "\n", expected


def test_env_file_parsed_without_a_shell_and_unreadable_lines_named(tmp_path: Path) -> None:
    text, expected = tricky_env_text(tmp_path / "INJECTED")
    assert parse_env_text(text) == expected
    with pytest.raises(EnvFileError, match="line 3") as caught:
        parse_env_text("A=1\n# fine\nthis is not an assignment\n", where=".env")
    assert "not an assignment" not in str(caught.value)  # the line's content may be a secret: only its number
    with pytest.raises(EnvFileError, match="line 2"):
        parse_env_text("A=1\nLONELY\n")
    with pytest.raises(EnvFileError, match="line 1"):
        parse_env_text("A.B=1\n")


DUMP_PY = "import json, os, sys; json.dump({k: os.environ.get(k) for k in sys.argv[2:]}, open(sys.argv[1], 'w'))"


@pytest.mark.slow
async def test_process_runtime_hands_the_exact_env_values_to_the_app(sshd: Sshd, tmp_path: Path) -> None:
    """`db upgrade` and the served app see every value byte for byte: `$`, `$$`, backticks and `$(...)` are
    neither expanded nor run (before: the env file was sourced with `. .env`)."""
    from tests.ops.test_prepare_deploy import TIMETODO_BIN, kill_leftovers

    marker = tmp_path / "INJECTED"
    text, expected = tricky_env_text(marker)
    app = tmp_path / "app"
    text += f"ENVIRONMENT=production\nDATABASE_URL=sqlite:///{app}/timetodo.db\nLOG_LEVEL=WARNING\n"
    # a wrapper that records its environment, then becomes the real `timetodo` (same argv: `serve --host ...`)
    wrapper = tmp_path / "bin" / "timetodo"
    wrapper.parent.mkdir()
    names = " ".join(expected)
    wrapper.write_text(
        "#!/bin/sh\n"
        f'{shlex.quote(sys.executable)} -c {shlex.quote(DUMP_PY)} "$0.$1.json" {names}\n'
        f'exec {shlex.quote(TIMETODO_BIN)} "$@"\n'
    )
    wrapper.chmod(0o755)
    port = free_port()
    async with SSHTransport(sshd.target) as ssh:
        runtime = ProcessRuntime(ssh, str(app), timetodo_bin=str(wrapper), port=port, stop_timeout=15)
        try:
            result = await runtime.deploy(text, health_timeout=60)
            assert result.healthy
            assert json.loads(Path(f"{wrapper}.db.json").read_text()) == expected
            assert json.loads(Path(f"{wrapper}.serve.json").read_text()) == expected
            # a later start (as after `sync`) by a runtime that did not write the file reads it back, unsourced
            Path(f"{wrapper}.serve.json").unlink()
            again = ProcessRuntime(ssh, str(app), timetodo_bin=str(wrapper), port=port, stop_timeout=15)
            await again.stop()
            await again.start()
            await again.wait_healthy(60)
            assert json.loads(Path(f"{wrapper}.serve.json").read_text()) == expected
        finally:
            await runtime.stop()
            kill_leftovers(port)
    assert not marker.exists()
