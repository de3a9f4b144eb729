"""The image reaches the target without a registry (issue 12 item 1), for real with podman standing in for docker.

`ComposeRuntime.ship_image()` over real SSH (the suite's sshd on 127.0.0.1) with `docker` = a small shim that runs
podman with the flags these machines need (scripts/podman.sh; the Dockerfile's base is its local stand-in):

- `build` (the default): the build context is packed here, uploaded over SFTP, unpacked and built on the "target"
  by our Dockerfile; the image runs (`timetodo --help` as uid 10001). Shipping the same sources again builds
  nothing and reports the same id;
- `load`: `docker save` here streams through the SSH session into `docker load` there, and the id matches.

Selected with `-m image` (podman builds); skipped (with the reason) only where podman cannot run a container.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT
from timetodo.ops.adapters.transport import SSHTransport
from timetodo.ops.migrate.deploy import ComposeRuntime
from timetodo.ops.migrate.deploy.image import build_context

pytestmark = [pytest.mark.image, pytest.mark.slow]

SHIM = """#!/usr/bin/env bash
# docker -> podman on a machine without a Docker engine (runc, explicit ulimits, the host's network for RUN steps)
set -euo pipefail
P=(podman --runtime runc)
U=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
if [ "${1:-}" = build ]; then
  shift
  trust=()
  [ -s /etc/ssl/certs/ca-certificates.crt ] && trust=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  exec "${P[@]}" build --pull=never --format docker --layers --network host "${U[@]}" "${trust[@]}" "$@"
fi
exec "${P[@]}" "$@"
"""


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def base_image() -> str:
    made = subprocess.run(["bash", str(ROOT / "scripts" / "podman.sh"), "base"], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"podman cannot make the base image stand-in here: {made.stderr[-500:]}")
    return made.stdout.strip()


async def test_build_context_is_shipped_and_built_on_the_target(
    base_image: str, ssh: SSHTransport, tmp_path: Path
) -> None:
    shim = tmp_path / "docker"
    shim.write_text(SHIM)
    shim.chmod(0o755)
    app = tmp_path / "app"
    project = "ttdship"
    tag = build_context(ROOT).tag(project)
    podman("rmi", "--force", tag)
    try:
        runtime = ComposeRuntime(
            ssh, str(app), bundle_dir=ROOT / "deploy", project=project, docker=str(shim), build_timeout=1800
        )
        first = await runtime.ship_image()
        assert first.source == "build" and first.built and first.tag == tag
        local = podman("image", "inspect", "--format", "{{.Id}}", tag)
        assert local.returncode == 0 and local.stdout.strip() == first.id
        assert not (app / "build").exists() or not any((app / "build").iterdir())  # context removed after the build
        user = podman("image", "inspect", "--format", "{{.Config.User}}", tag).stdout.strip()
        assert user == "10001:10001"
        ran = podman(
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            tag,
            "timetodo",
            "--help",
        )
        assert ran.returncode == 0 and "serve" in ran.stdout, ran.stderr[-1000:]

        again = await runtime.ship_image()
        assert not again.built and again.id == first.id and again.tag == tag

        loaded = await ComposeRuntime(
            ssh,
            str(app),
            bundle_dir=ROOT / "deploy",
            project=project,
            image_source="load",
            image=tag,
            docker=str(shim),
            local_docker=str(shim),
        ).ship_image()
        assert loaded.source == "load" and loaded.id == first.id
    finally:
        podman("rmi", "--force", tag)
