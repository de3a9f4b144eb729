"""The migration transport against a real sshd on 127.0.0.1 (scripts/sshd.sh) and against the local machine."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.ops.conftest import Sshd
from tests.support import free_port
from timetodo.ops.adapters.transport import (
    AuthError,
    CommandFailed,
    CommandTimeout,
    ConnectError,
    HostKeyError,
    LocalTransport,
    SSHTransport,
    Transport,
    open_transport,
)

pytestmark = pytest.mark.slow
MB = 1024 * 1024


@pytest.fixture(scope="module", params=["local", "ssh"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    if request.param == "local":
        opened = await open_transport("local")
        assert isinstance(opened, LocalTransport)
    else:
        server: Sshd = request.getfixturevalue("sshd")
        opened = await open_transport(server.target)
        assert isinstance(opened, SSHTransport)
    yield opened
    await opened.close()


def new_key(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def processes_matching(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (sshd runs on this machine, so its commands show up here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path, keep: set[str]) -> set[str]:
    return {p.name for p in directory.iterdir()} - keep


# ----------------------------------------------------------------------------------------------------- commands


async def test_describe(transport: Transport, request: pytest.FixtureRequest) -> None:
    if isinstance(transport, SSHTransport):
        server: Sshd = request.getfixturevalue("sshd")
        assert transport.describe() == f"ssh://{server.target.user}@127.0.0.1:{server.port}"
    else:
        assert transport.describe() == "local"


async def test_run_returns_stdout_stderr_and_status(transport: Transport) -> None:
    result = await transport.run("echo hello; echo warn >&2", timeout=10)
    assert (result.exit_status, result.stdout, result.stderr) == (0, "hello\n", "warn\n")
    assert result.ok and result.duration > 0

    # a list is quoted: spaces, quotes and `$` reach printf as they are
    listed = await transport.run(["printf", "%s|", "a b", "c'd", "$HOME", "*"], timeout=10)
    assert listed.stdout == "a b|c'd|$HOME|*|"
    assert listed.command == "printf '%s|' 'a b' 'c'\"'\"'d' '$HOME' '*'"


async def test_nonzero_exit_raises_command_failed(transport: Transport) -> None:
    with pytest.raises(CommandFailed) as failed:
        await transport.run("echo partial; echo boom >&2; exit 3", timeout=10)
    assert failed.value.exit_status == 3
    assert failed.value.stderr_tail == "boom"
    assert "exit status 3" in str(failed.value) and "boom" in str(failed.value)
    assert failed.value.result.stdout == "partial\n"
    assert failed.value.hint

    result = await transport.run("echo boom >&2; exit 3", timeout=10, check=False)
    assert (result.exit_status, result.stderr, result.ok) == (3, "boom\n", False)

    missing = await transport.run(["ttd-no-such-command-xyz"], timeout=10, check=False)
    assert missing.exit_status == 127


async def test_timeout_kills_the_whole_command(transport: Transport) -> None:
    marker = f"sleep 61.{secrets.randbelow(10**6):06d}"
    started = time.monotonic()
    task = asyncio.create_task(transport.run(f"{marker} | cat", timeout=1.5))
    for _ in range(100):  # the command really runs before the deadline...
        if processes_matching(marker):
            break
        await asyncio.sleep(0.02)
    assert processes_matching(marker), "the command never started"
    with pytest.raises(CommandTimeout) as timed_out:
        await task
    assert time.monotonic() - started < 10
    assert timed_out.value.timeout == 1.5 and marker in timed_out.value.command and timed_out.value.hint
    # ...and nothing of it (shell, sleep, cat) is left afterwards
    for _ in range(50):
        if not processes_matching(marker):
            break
        await asyncio.sleep(0.05)
    assert processes_matching(marker) == []


async def test_env_and_input_are_passed_and_not_logged(transport: Transport, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="timetodo.ops.ssh")
    env = {"TTD_A": 'it\'s $HOME "q" `x`\nline', "TTD_B": "envsecret-2"}
    payload = b"stdin-secret-1\nsecond line\n"
    result = await transport.run('cat; printf \'|%s|%s\' "$TTD_A" "$TTD_B"', timeout=10, input=payload, env=env)
    assert result.stdout == payload.decode() + f"|{env['TTD_A']}|{env['TTD_B']}"
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "cat; printf" in logged
    for value in ("stdin-secret-1", "envsecret-2", "it's $HOME"):
        assert value not in logged

    with pytest.raises(ValueError, match="environment variable"):
        await transport.run("true", timeout=10, env={"BAD-NAME": "x"})


async def test_many_commands_at_once(transport: Transport) -> None:
    # more than OpenSSH's default MaxSessions (10) on one connection
    results = await asyncio.gather(*(transport.run(f"echo {i}", timeout=30) for i in range(25)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(25)]


# -------------------------------------------------------------------------------------------------------- files


async def test_put_and_get_round_trip(transport: Transport, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(5 * MB))
    source.chmod(0o640)
    remote_dir = tmp_path / "remote" / "sub"
    remote = str(remote_dir / "data.bin")
    uploads: list[tuple[int, int]] = []

    await transport.put_file(source, remote, progress=lambda done, total: uploads.append((done, total)))
    await asyncio.sleep(0)  # local progress reports arrive through the event loop
    assert sha256(Path(remote)) == sha256(source)
    assert Path(remote).stat().st_mode & 0o7777 == 0o640
    assert uploads and uploads[-1] == (5 * MB, 5 * MB)
    assert leftovers(remote_dir, {"data.bin"}) == set()
    digest = await transport.run(["sha256sum", remote], timeout=30)
    assert digest.stdout.split()[0] == sha256(source)

    back = tmp_path / "back" / "data.bin"
    downloads: list[tuple[int, int]] = []
    await transport.get_file(remote, back, progress=lambda done, total: downloads.append((done, total)))
    await asyncio.sleep(0)
    assert sha256(back) == sha256(source)
    assert back.stat().st_mode & 0o7777 == 0o640
    assert downloads and downloads[-1] == (5 * MB, 5 * MB)
    assert leftovers(back.parent, {"data.bin"}) == set()

    # an explicit mode wins, and a second upload replaces the file
    source.write_bytes(b"small")
    await transport.put_file(source, remote, mode=0o600)
    assert Path(remote).read_bytes() == b"small"
    assert Path(remote).stat().st_mode & 0o7777 == 0o600

    with pytest.raises(FileNotFoundError):
        await transport.get_file(str(tmp_path / "missing.bin"), tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists()


async def test_write_text_is_atomic_and_private(transport: Transport, tmp_path: Path) -> None:
    target = tmp_path / "app.env"
    target.write_text("old")
    target.chmod(0o644)
    inode = target.stat().st_ino
    os.link(target, tmp_path / "old-link")  # keeps the old inode alive (and unreusable)
    versions = ["old", "a" * (2 * MB), "b" * (2 * MB)]
    torn: list[int] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                data = target.read_text()
            except FileNotFoundError:
                data = "<missing>"
            reads += 1
            if data not in versions:
                torn.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(6):
            await transport.write_text(str(target), versions[1 + i % 2])
    finally:
        stop.set()
        thread.join()
    assert reads > 0
    assert torn == [], f"a reader saw partial files of sizes {torn[:5]}"
    assert target.read_text() == versions[2]
    assert target.stat().st_mode & 0o7777 == 0o600
    # replaced by rename, never rewritten in place: the old inode still holds the old content
    assert target.stat().st_ino != inode
    assert (tmp_path / "old-link").read_text() == "old"
    assert leftovers(tmp_path, {"app.env", "old-link"}) == set()

    assert await transport.read_text(str(target)) == versions[2]
    nested = tmp_path / "new" / "dir" / "secret.txt"
    await transport.write_text(str(nested), "päss: ✓\n", mode=0o640)
    assert nested.read_text() == "päss: ✓\n"
    assert nested.stat().st_mode & 0o7777 == 0o640
    assert await transport.read_text(str(nested)) == "päss: ✓\n"


async def test_exists_and_read_missing(transport: Transport, tmp_path: Path) -> None:
    (tmp_path / "here").write_text("x")
    assert await transport.exists(str(tmp_path / "here")) is True
    assert await transport.exists(str(tmp_path)) is True
    assert await transport.exists(str(tmp_path / "nope")) is False
    with pytest.raises(FileNotFoundError):
        await transport.read_text(str(tmp_path / "nope"))


async def test_free_bytes(transport: Transport, tmp_path: Path) -> None:
    free = await transport.free_bytes(str(tmp_path))
    expected = shutil.disk_usage(tmp_path).free
    assert free > 0
    assert abs(free - expected) < max(expected // 20, 256 * MB)
    # a directory that does not exist yet: its nearest existing parent counts
    later = await transport.free_bytes(str(tmp_path / "not" / "yet"))
    assert abs(later - free) < max(expected // 20, 256 * MB)


# ------------------------------------------------------------------------------------------------------- stream


async def test_stream_pipes_20mb_into_a_remote_command(transport: Transport) -> None:
    digest = hashlib.sha256()
    sent = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(20):
            chunk = os.urandom(MB)
            digest.update(chunk)
            sent += len(chunk)
            yield chunk

    result = await transport.stream("sha256sum", stdin_source=source(), timeout=120)
    assert sent == 20 * MB
    assert result.stdout.split()[0] == digest.hexdigest()


async def test_stream_hands_stdout_to_a_sink(transport: Transport) -> None:
    data = os.urandom(8 * MB)

    async def source() -> AsyncIterator[bytes]:
        for offset in range(0, len(data), MB):
            yield data[offset : offset + MB]

    received = bytearray()
    chunks = 0

    async def sink(chunk: bytes) -> None:
        nonlocal chunks
        received.extend(chunk)
        chunks += 1

    result = await transport.stream("cat", stdin_source=source(), stdout_sink=sink, timeout=120)
    assert result.ok and result.stdout == ""
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
    assert chunks > 1


async def test_stream_into_a_command_that_stops_reading(transport: Transport) -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b"x" * MB

    result = await transport.stream("head -c 10", stdin_source=endless(), timeout=30)
    assert result.stdout == "x" * 10


async def test_stream_failure_of_the_sink_stops_the_command(transport: Transport) -> None:
    marker = f"sleep 62.{secrets.randbelow(10**6):06d}"
    seen = False

    async def sink(chunk: bytes) -> None:
        nonlocal seen
        for _ in range(100):
            if processes_matching(marker):
                seen = True
                break
            await asyncio.sleep(0.02)
        raise OSError("local disk full")

    with pytest.raises(OSError, match="local disk full"):
        await transport.stream(f"echo start; {marker}; echo never", stdout_sink=sink, timeout=30)
    assert seen, "the command was not running when the sink failed"
    for _ in range(50):
        if not processes_matching(marker):
            break
        await asyncio.sleep(0.05)
    assert processes_matching(marker) == []


# ------------------------------------------------------------------------------------------------------ secrets


async def test_secrets_are_masked_in_logs_and_errors(transport: Transport, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="timetodo.ops.ssh")
    token = "S3cr3t-T0ken-" + secrets.token_hex(4)
    url = "postgresql://app:pgpass-9911@db.example:5432/app"
    result = await transport.run(f"echo {token} {url} >/dev/null", timeout=10, secrets=[token])
    assert result.ok
    with pytest.raises(CommandFailed) as failed:
        await transport.run(["sh", "-c", f"echo {token} >&2; exit 2", url], timeout=10, secrets=[token])

    records = [r for r in caplog.records if r.name == "timetodo.ops.ssh"]
    assert len(records) >= 2
    everything = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert token not in everything and "pgpass-9911" not in everything
    assert any("postgresql://app:***@db.example" in r.getMessage() for r in records)
    assert any(f"echo *** {url.replace('pgpass-9911', '***')}" in r.getMessage() for r in records)
    assert all(r.levelno == logging.INFO for r in records)
    assert token not in str(failed.value) and "pgpass-9911" not in str(failed.value)
    assert failed.value.stderr_tail == "***"
    assert token not in failed.value.command


# ---------------------------------------------------------------------------------------------------- bad input


async def test_wrong_key_is_refused_naming_the_key(sshd: Sshd, tmp_path: Path) -> None:
    stranger = new_key(tmp_path, "stranger")
    started = time.monotonic()
    with pytest.raises(AuthError) as refused:
        await open_transport(replace(sshd.target, key_file=stranger))
    assert time.monotonic() - started < 10
    assert str(stranger) in str(refused.value)
    assert repr(sshd.target.user) in str(refused.value)
    assert "authorized_keys" in refused.value.hint and f"{stranger}.pub" in refused.value.hint


async def test_missing_key_file_is_an_auth_error(sshd: Sshd, tmp_path: Path) -> None:
    with pytest.raises(AuthError) as refused:
        await open_transport(replace(sshd.target, key_file=tmp_path / "no-such-key"))
    assert str(tmp_path / "no-such-key") in str(refused.value)


async def test_unknown_host_key_is_refused_unless_accepted(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostKeyError) as refused:
        await open_transport(replace(sshd.target, known_hosts=known))
    assert "unknown" in str(refused.value) and f"[127.0.0.1]:{sshd.port}" in str(refused.value)
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}" in refused.value.hint
    assert "--accept-new-host-key" in refused.value.hint
    assert known.read_text() == ""

    accepted = await open_transport(replace(sshd.target, known_hosts=known, accept_new_host_key=True))
    try:
        assert (await accepted.run("echo in", timeout=10)).stdout == "in\n"
    finally:
        await accepted.close()
    assert known.read_text().splitlines() == [f"[127.0.0.1]:{sshd.port} {sshd.host_key}"]

    # the recorded line is enough from now on
    again = await open_transport(replace(sshd.target, known_hosts=known))
    try:
        assert (await again.run("echo again", timeout=10)).stdout == "again\n"
    finally:
        await again.close()
    assert known.read_text().splitlines() == [f"[127.0.0.1]:{sshd.port} {sshd.host_key}"]


@pytest.mark.parametrize("accept_new", [False, True])
async def test_changed_host_key_is_always_refused(sshd: Sshd, tmp_path: Path, accept_new: bool) -> None:
    other = new_key(tmp_path, "other_host_key")
    known = tmp_path / "known_hosts"
    line = f"[127.0.0.1]:{sshd.port} {' '.join(Path(f'{other}.pub').read_text().split()[:2])}\n"
    known.write_text(line)
    with pytest.raises(HostKeyError) as refused:
        await open_transport(replace(sshd.target, known_hosts=known, accept_new_host_key=accept_new))
    assert "CHANGED" in str(refused.value)
    assert "--accept-new-host-key never replaces" in str(refused.value)
    assert "ssh-keygen -R" in refused.value.hint and f"ssh-keyscan -p {sshd.port} 127.0.0.1" in refused.value.hint
    assert known.read_text() == line


async def test_nothing_listening_is_a_quick_connect_error(sshd: Sshd) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ConnectError) as unreachable:
        await open_transport(replace(sshd.target, port=port))
    assert time.monotonic() - started < 5
    assert f"ssh://{sshd.target.user}@127.0.0.1:{port}" in str(unreachable.value)
    assert unreachable.value.hint


async def test_forward_reaches_a_port_on_the_hosts_loopback(transport: Transport) -> None:
    """A service listening only on the host's loopback is reached through the transport (an SSH tunnel)."""
    import asyncio

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"pong:" + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        host, local_port = await transport.forward("127.0.0.1", port)
        assert (await transport.forward("127.0.0.1", port)) == (host, local_port)  # one tunnel per destination
        reader, writer = await asyncio.open_connection(host, local_port)
        writer.write(b"ping\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b"pong:ping\n"
        writer.close()
        if transport.describe() != "local":
            assert local_port != port
    finally:
        server.close()
        await server.wait_closed()
