"""Fixtures shared by the ops tests: a real sshd on 127.0.0.1 started by scripts/sshd.sh."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT, free_port, run_script
from timetodo.ops.adapters.transport import SSHTarget


@dataclass(frozen=True)
class Sshd:
    directory: Path
    port: int
    target: SSHTarget
    host_key: str  # "ssh-ed25519 AAAA..." as it belongs in known_hosts


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    directory = tmp_path_factory.mktemp("sshd")
    port = free_port()
    try:
        line = run_script("scripts/sshd.sh", "start", str(directory), str(port))
        fields = dict(item.split("=", 1) for item in line.split())
        assert fields["host"] == "127.0.0.1" and fields["port"] == str(port), line
        target = SSHTarget(
            host=fields["host"],
            port=int(fields["port"]),
            user=fields["user"],
            key_file=Path(fields["key"]),
            known_hosts=Path(fields["known_hosts"]),
            connect_timeout=5,
        )
        host_key = " ".join((directory / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        yield Sshd(directory, port, target, host_key)
    finally:
        subprocess.run(["bash", "scripts/sshd.sh", "stop", str(directory)], cwd=ROOT, capture_output=True, timeout=60)
