"""`timetodo migrate prepare` and `deploy` (issue 5, items 6 and 7).

prepare: the generated script is checked by `bash -n` and shellcheck, then RUN FOR REAL with bash. The system tools
it drives (apt-get, dpkg, ufw, systemctl, useradd, fallocate, mkswap, swapon, docker, ss, free, curl, ...) would
reconfigure this CI machine (firewall, users, swap, packages) or need systemd/Docker, which it does not have, so the
tests put a directory of small stub executables first on PATH. Each stub stands in for one of those OS tools: it
records its call and keeps state in a temp dir (`ufw status` reflects earlier `ufw allow` calls, `dpkg -s
docker-ce` succeeds once `apt-get install docker-ce` ran, ...). File paths are redirected below a temp root with
`TTD_PREPARE_ROOT` (a test-only variable; a real host uses the real paths). Everything else in the script (bash,
grep, awk, sed, stat, mkdir, chmod, the files it writes) is real. One run goes through a real `SSHTransport` to an
sshd on 127.0.0.1 started by scripts/sshd.sh.

deploy: `ProcessRuntime` runs the real app for real over SSH on 127.0.0.1 (sshd from scripts/sshd.sh, the
`timetodo` of this virtualenv, SQLite). `ComposeRuntime` needs a Docker engine, which this machine lacks: it is
checked by the exact commands and files it sends to a recording fake transport; its health poll also runs for
real against an HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import io
import json
import logging
import os
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from tests.support import ROOT, free_port
from timetodo.ops.adapters.transport import (
    CommandFailed,
    CommandResult,
    LocalTransport,
    SSHTransport,
    Transport,
)
from timetodo.ops.migrate.deploy import (
    ComposeRuntime,
    DeployError,
    PlannedCommand,
    ProcessRuntime,
    Runtime,
    env_secrets,
    parse_env_text,
)
from timetodo.ops.migrate.deploy.image import build_context, with_image
from timetodo.ops.migrate.prepare import PrepareResult, parse_prepare_output, prepare_script, run_prepare

APP_DIR = "/opt/timetodo"
TIMETODO_BIN = str(Path(sys.executable).parent / "timetodo")
UBUNTU_2204 = """PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=jammy
"""
DEBIAN_12 = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""
PREPARE_ITEMS = [
    "os",
    "docker-repo",
    "docker",
    "docker-service",
    "deploy-user",
    "ssh-hardening",
    "sshd-reload",
    "app-dir",
    "firewall",
    "firewall-active",
    "swap",
    "swap-active",
    "fail2ban",
    "fail2ban-service",
    "unattended-upgrades",
    "certbot",
]
CHECK_ITEMS = ["docker", "compose", "ssh", "ufw", "db-ports", "swap", "fail2ban", "unattended-upgrades"]
# on a fresh host the package install starts Docker (the stub apt-get does so too)
FIRST_RUN_OK = {"os", "docker-service"}


# =========================================================================================================== stubs

# One dispatcher, linked under each tool's name. It stands in for OS tools that must not run on the test machine.
STUB = r"""#!/usr/bin/env bash
# Test stand-in for an OS tool (see the test module docstring): records the call, keeps state in $STUB_STATE.
name=${0##*/}
S=${STUB_STATE:?}
printf '%s\n' "$name $*" >>"$S/calls.log"
has() { [ -f "$S/$1" ] && grep -qxF -- "$2" "$S/$1"; }
add() { has "$1" "$2" || printf '%s\n' "$2" >>"$S/$1"; }
case "$name" in
apt-get)
  skip=0; sub=""; pkgs=()
  for a in "$@"; do
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    case "$a" in -o) skip=1 ;; -*) ;; *) if [ -z "$sub" ]; then sub=$a; else pkgs+=("$a"); fi ;; esac
  done
  if [ "$sub" = install ]; then
    for p in "${pkgs[@]}"; do
      if has unavailable "$p"; then echo "E: Unable to locate package $p" >&2; exit 100; fi
    done
    for p in "${pkgs[@]}"; do
      add packages "$p"
      if [ "$p" = docker-ce ]; then touch "$S/group.docker"; add enabled docker; add active docker; fi
      if [ "$p" = fail2ban ]; then add enabled fail2ban; add active fail2ban; fi
    done
  fi ;;
dpkg)
  if [ "$1" = --print-architecture ]; then echo amd64; exit 0; fi
  [ "$1" = -s ] || exit 2
  shift; rc=0
  for p in "$@"; do
    if has packages "$p"; then printf 'Package: %s\nStatus: install ok installed\n\n' "$p"
    else echo "dpkg-query: package '$p' is not installed and no information is available" >&2; rc=1; fi
  done
  exit "$rc" ;;
getent)
  case "$1" in
  passwd) has users "$2" && { echo "$2:x:1001:1001::/home/$2:/bin/bash"; exit 0; }; exit 2 ;;
  group) [ -f "$S/group.$2" ] || exit 2; echo "$2:x:999:$(paste -sd, "$S/group.$2")" ;;
  *) exit 1 ;;
  esac ;;
useradd) add users "${*: -1}" ;;
usermod) [ "$1" = -aG ] && add "group.$2" "$3" ;;
chown) printf '%s\t%s\n' "$2" "${1%%:*}" >>"$S/owners" ;;
stat)
  if [ "$1" = -c ] && [ "$2" = %U ] && [ -f "$S/owners" ]; then
    owner=$(awk -F'\t' -v p="$3" '$1 == p { o = $2 } END { print o }' "$S/owners")
    if [ -n "$owner" ]; then echo "$owner"; exit 0; fi
  fi
  exec @REAL_STAT@ "$@" ;;
ufw)
  rules() { [ -f "$S/ufw.rules" ] && sed 's/^ufw allow //' "$S/ufw.rules"; }
  case "$*" in
  "status verbose" | status)
    if ! has ufw active; then echo "Status: inactive"; exit 0; fi
    echo "Status: active"
    [ "$1" = status ] && [ "$#" = 2 ] && printf 'Logging: on (low)\nDefault: %s (incoming), allow (outgoing), disabled (routed)\nNew profiles: skip\n' "$(cat "$S/ufw.default_in" 2>/dev/null || echo allow)"
    printf '\nTo                         Action      From\n--                         ------      ----\n'
    rules | while read -r r; do printf '%-26s ALLOW IN    Anywhere\n' "$r"; done
    rules | while read -r r; do printf '%-26s ALLOW IN    Anywhere (v6)\n' "$r (v6)"; done ;;
  "show added")
    echo "Added user rules (see 'ufw status' for running firewall):"
    if [ -s "$S/ufw.rules" ]; then cat "$S/ufw.rules"; else echo "(None)"; fi ;;
  allow\ *) add ufw.rules "ufw allow $2"; echo "Rules updated" ;;
  "default deny incoming")
    echo deny >"$S/ufw.default_in"
    mkdir -p "$TTD_PREPARE_ROOT/etc/default"
    echo 'DEFAULT_INPUT_POLICY="DROP"' >"$TTD_PREPARE_ROOT/etc/default/ufw" ;;
  "--force enable") echo active >"$S/ufw"; echo "Firewall is active and enabled on system startup" ;;
  *) echo "stub ufw: unsupported: $*" >&2; exit 2 ;;
  esac ;;
systemctl)
  case "$1" in
  is-enabled) has enabled "${*: -1}" ;;
  is-active) has active "${*: -1}" ;;
  enable) add enabled "${*: -1}"; [ "$2" = --now ] && add active "${*: -1}"; true ;;
  start | restart) add active "$2" ;;
  reload) has active "$2" ;;
  *) echo "stub systemctl: unsupported: $*" >&2; exit 2 ;;
  esac ;;
free)
  ram=$(cat "$S/ram_mb" 2>/dev/null || echo 1024)
  echo "               total        used        free      shared  buff/cache   available"
  echo "Mem:           $ram         300         400          10         300         600"
  echo "Swap:              0           0           0" ;;
swapon)
  if [ "${1:-}" = --show=NAME ]; then [ -f "$S/swaps" ] && cat "$S/swaps"; exit 0; fi
  add swaps "$1" ;;
mkswap)
  printf SWAPSPACE2 | dd of="$1" bs=1 seek=4086 conv=notrunc 2>/dev/null
  echo "Setting up swapspace version 1, size = $1" ;;
sshd)
  case "$1" in
  -t) [ -f "$S/sshd_refuses" ] && { echo "bad configuration option" >&2; exit 255; }; exit 0 ;;
  -T) sed -n 's/^\([A-Za-z]*\) \(.*\)$/\1 \2/p' "$TTD_PREPARE_ROOT/etc/ssh/sshd_config.d/10-timetodo.conf" 2>/dev/null |
        tr 'A-Z' 'a-z' | sed 's/prohibit-password/without-password/' ;;
  esac ;;
ischroot | systemd-detect-virt) exit 1 ;;
apt-cache)
  [ "$1" = policy ] || exit 2
  version=$(awk -v p="$2" '$1 == p { print $2 }' "$S/candidates" 2>/dev/null)
  printf '%s:\n  Installed: (none)\n  Candidate: %s\n' "$2" "${version:-(none)}" ;;
fallocate) : >"${*: -1}" ;;
curl)
  out=""; prev=""
  for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done
  [ -n "$out" ] && echo "-----BEGIN PGP PUBLIC KEY BLOCK-----" >"$out" ;;
ss) [ -f "$S/ss" ] && cat "$S/ss"; exit 0 ;;
docker)
  case "$1 ${2:-}" in
  "version --format") if { has packages docker-ce || has packages docker.io; } && has active docker; then echo 27.3.1; else echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" >&2; exit 1; fi ;;
  "compose version") if has packages docker-compose-plugin || has packages docker-compose-v2; then echo 2.29.7; else echo "docker: 'compose' is not a docker command." >&2; exit 1; fi ;;
  "ps --format") [ -f "$S/docker_ps" ] && cat "$S/docker_ps"; exit 0 ;;
  *) echo "stub docker: unsupported: $*" >&2; exit 2 ;;
  esac ;;
fail2ban-client) has active fail2ban ;;
docker-compose) if has packages docker-compose; then echo 1.29.2; else echo "docker-compose: not found" >&2; exit 127; fi ;;
*) echo "stub $name: unsupported" >&2; exit 2 ;;
esac
"""
STUBBED = [
    "apt-get",
    "dpkg",
    "getent",
    "useradd",
    "usermod",
    "chown",
    "stat",
    "ufw",
    "systemctl",
    "free",
    "swapon",
    "mkswap",
    "fallocate",
    "curl",
    "ss",
    "docker",
    "fail2ban-client",
    "sshd",
    "ischroot",
    "systemd-detect-virt",
    "apt-cache",
    "docker-compose",
]
# calls that only read state; every other stub call changes the (pretend) host
QUERIES = [
    ("dpkg", "-s"),
    ("dpkg", "--print-architecture"),
    ("getent", ""),
    ("stat", ""),
    ("ufw", "status"),
    ("ufw", "show"),
    ("systemctl", "is-enabled"),
    ("systemctl", "is-active"),
    ("swapon", "--show=NAME"),
    ("free", ""),
    ("ss", ""),
    ("docker", "version"),
    ("docker", "compose version"),
    ("docker", "ps"),
    ("fail2ban-client", "status"),
    ("sshd", "-T"),
    ("sshd", "-t"),
    ("ischroot", ""),
    ("systemd-detect-virt", ""),
    ("apt-cache", ""),
    ("docker-compose", "version"),
]


@dataclass
class FakeHost:
    """The pretend host: stub executables, their state, and the root below which the script's paths live."""

    base: Path
    bin: Path
    state: Path
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "STUB_STATE": str(self.state),
            "TTD_PREPARE_ROOT": str(self.root),
        }

    def calls(self) -> list[str]:
        log = self.state / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def changes(self) -> list[str]:
        found = []
        for call in self.calls():
            tool, _, args = call.partition(" ")
            if not any(tool == t and args.startswith(a) for t, a in QUERIES):
                found.append(call)
        return found

    def state_lines(self, name: str) -> list[str]:
        path = self.state / name
        return path.read_text().splitlines() if path.exists() else []

    def snapshot(self) -> dict[str, tuple[int, str]]:
        """Every file below the root and in the stub state (minus the call log): mode and content digest."""
        found: dict[str, tuple[int, str]] = {}
        for top in (self.root, self.state):
            for path in sorted(top.rglob("*")):
                if path.name == "calls.log":
                    continue
                info = path.lstat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
                found[str(path)] = (stat.S_IMODE(info.st_mode), digest)
        return found

    def reset_calls(self) -> None:
        (self.state / "calls.log").unlink(missing_ok=True)


def make_fake_host(base: Path, *, os_release: str = UBUNTU_2204, ram_mb: int = 1024) -> FakeHost:
    host = FakeHost(base, base / "bin", base / "state", base / "root")
    for path in (host.bin, host.state, host.root / "etc/ssh", host.root / "run/systemd/system"):
        path.mkdir(parents=True)
    real_stat = shutil.which("stat")
    assert real_stat is not None
    dispatcher = base / "stub.sh"
    dispatcher.write_text(STUB.replace("@REAL_STAT@", real_stat))
    dispatcher.chmod(0o755)
    for tool in STUBBED:
        (host.bin / tool).symlink_to(dispatcher)
    (host.root / "etc" / "os-release").write_text(os_release)
    (host.root / "etc" / "fstab").write_text("UUID=1234 / ext4 errors=remount-ro 0 1\n")
    (host.state / "packages").write_text("ca-certificates\ncurl\n")  # a fresh cloud image has these
    (host.state / "ram_mb").write_text(f"{ram_mb}\n")
    # a booted systemd host (run/systemd/system above) with sshd running and the apt timers on
    (host.state / "enabled").write_text("ssh\napt-daily-upgrade.timer\n")
    (host.state / "active").write_text("ssh\n")
    (host.root / "etc/ssh/sshd_config").write_text(
        "Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication yes\nUsePAM yes\n"
    )
    (host.state / "ss").write_text(
        "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\nLISTEN 0 244 127.0.0.1:5432 0.0.0.0:*\nLISTEN 0 128 [::]:22 [::]:*\n"
    )
    return host


@pytest.fixture
def fake_host(tmp_path: Path) -> FakeHost:
    return make_fake_host(tmp_path / "host")


async def prepare_on(host: FakeHost, transport: Transport | None = None, **options: Any) -> PrepareResult:
    script = prepare_script(app_dir=APP_DIR, **options)
    return await run_prepare(transport or LocalTransport(), script, env=host.env, timeout=120)


def statuses(result: PrepareResult, phase: str) -> dict[str, str]:
    return {i.name: i.status for i in result.items if i.phase == phase}


# ====================================================================================================== prepare


def test_prepare_script_is_valid_bash(tmp_path: Path) -> None:
    path = tmp_path / "prepare.sh"
    path.write_text(prepare_script(app_dir=APP_DIR, deploy_user="deploy", swap_mb=1024, ssh_port=2222))
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _shellcheck() -> tuple[str | None, str]:
    found = shutil.which("shellcheck")
    if found:
        return found, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "shellcheck is not installed and apt-get cannot be used here (not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "shellcheck"]
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    found = shutil.which("shellcheck")
    return found, "" if found else f"`apt-get install -y shellcheck` failed: {result.stderr.strip()[-300:]}"


def test_prepare_script_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck, why = _shellcheck()
    if shellcheck is None:
        pytest.skip(why)
    path = tmp_path / "prepare.sh"
    path.write_text(prepare_script(app_dir=APP_DIR))
    result = subprocess.run([shellcheck, "--shell=bash", "--severity=info", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"app_dir": "opt/app"}, "absolute"),
        ({"app_dir": "/opt/../etc"}, "absolute"),
        ({"app_dir": "/opt/app; rm -rf /"}, "absolute"),
        ({"app_dir": "/"}, "absolute"),
        ({"app_dir": "/opt/app", "deploy_user": "root"}, "deploy_user"),
        ({"app_dir": "/opt/app", "deploy_user": "Bad User"}, "deploy_user"),
        ({"app_dir": "/opt/app", "swap_mb": 0}, "swap_mb"),
        ({"app_dir": "/opt/app", "ssh_port": 70000}, "ssh_port"),
    ],
)
def test_prepare_script_rejects_bad_arguments(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_script(**options)


def test_parse_prepare_output_and_render() -> None:
    text = (
        "some apt noise\n"
        "PREPARE os ok ubuntu 22.04 (jammy)\n"
        "PREPARE docker changed installed docker-ce; started docker\n"
        "PREPARE swap failed 'fallocate -l 2048M /swapfile' exited 1: No space left on device\n"
        "CHECK db-ports failed listening on all interfaces: 0.0.0.0:5432\n"
        "CHECK ufw ok\n"
        "PREPARE bogus maybe nothing\n"
    )
    result = parse_prepare_output(text)
    assert [(i.phase, i.name, i.status) for i in result.items] == [
        ("prepare", "os", "ok"),
        ("prepare", "docker", "changed"),
        ("prepare", "swap", "failed"),
        ("check", "db-ports", "failed"),
        ("check", "ufw", "ok"),
    ]
    assert [i.name for i in result.changed] == ["docker"]
    assert [i.name for i in result.failed] == ["swap", "db-ports"]
    assert not result.ok
    ufw_check = result.item("ufw", "check")
    assert ufw_check is not None and ufw_check.detail == ""
    data = result.to_dict()
    assert data["failed"] == ["prepare:swap", "check:db-ports"] and data["changed"] == ["docker"]
    json.dumps(data)
    console = Console(record=True, width=200)
    result.render(console)
    out = console.export_text()
    assert "No space left on device" in out and "db-ports" in out and "2 item(s) failed" in out


async def test_prepare_first_run_changes_second_run_changes_nothing(fake_host: FakeHost) -> None:
    first = await prepare_on(fake_host)
    assert first.exit_status == 0, (first.items, first.stderr_tail)
    assert list(statuses(first, "prepare")) == PREPARE_ITEMS
    assert list(statuses(first, "check")) == CHECK_ITEMS
    assert statuses(first, "prepare") == {
        name: "ok" if name in FIRST_RUN_OK else "changed" for name in PREPARE_ITEMS
    }, first.items
    assert set(statuses(first, "check").values()) == {"ok"}, first.items
    assert first.ok and not first.failed and not first.skipped

    # what the first run did, as the stand-in tools saw it
    calls = fake_host.calls()
    installs = [c for c in calls if c.startswith("apt-get") and " install " in c]
    assert any(
        "docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin" in c for c in installs
    )
    assert calls.count("apt-get -o DPkg::Lock::Timeout=300 update -qq") == 1  # once, after the Docker repo was added
    assert "useradd --create-home --user-group --shell /bin/bash deploy" in calls
    assert "usermod -aG docker deploy" in calls
    ufw_changes = [c for c in calls if c.startswith("ufw ") and not c.startswith(("ufw status", "ufw show"))]
    assert ufw_changes == [
        "ufw allow 22/tcp",
        "ufw allow 80/tcp",
        "ufw allow 443/tcp",
        "ufw default deny incoming",
        "ufw --force enable",
    ]
    swapfile = f"{fake_host.root}/swapfile"
    assert f"fallocate -l 2048M {swapfile}" in calls
    assert calls.index(f"mkswap {swapfile}") < calls.index(f"swapon {swapfile}")
    assert fake_host.state_lines("swaps") == [swapfile]

    # and the files it wrote below the (test) root
    root = fake_host.root
    assert (root / "etc/apt/sources.list.d/docker.list").read_text() == (
        f"deb [arch=amd64 signed-by={root}/etc/apt/keyrings/docker.asc] "
        "https://download.docker.com/linux/ubuntu jammy stable\n"
    )
    assert (root / "etc/apt/keyrings/docker.asc").read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert f"{swapfile} none swap sw 0 0" in (root / "etc/fstab").read_text().splitlines()
    assert stat.S_IMODE((root / "swapfile").stat().st_mode) == 0o600
    app = root / APP_DIR.lstrip("/")
    assert app.is_dir() and stat.S_IMODE(app.stat().st_mode) == 0o750
    assert fake_host.state_lines("owners") == [f"{app}\tdeploy"]
    jail = (root / "etc/fail2ban/jail.d/timetodo-sshd.local").read_text()
    assert "[sshd]\nenabled = true\nport = 22\nbackend = systemd\n" in jail
    assert (root / "etc/apt/apt.conf.d/20auto-upgrades").read_text() == (
        'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'
    )

    # second run: everything already there
    before = fake_host.snapshot()
    fake_host.reset_calls()
    second = await prepare_on(fake_host)
    assert second.exit_status == 0, second.items
    assert statuses(second, "prepare") == dict.fromkeys(PREPARE_ITEMS, "ok"), second.items
    assert set(statuses(second, "check").values()) == {"ok"}
    assert second.changed == [] and second.ok
    assert fake_host.changes() == []
    assert fake_host.calls(), "the second run must still check every item"
    assert fake_host.snapshot() == before


async def test_prepare_debian_12_and_enough_ram(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path / "host", os_release=DEBIAN_12, ram_mb=4096)
    result = await prepare_on(host, ssh_port=2222, deploy_user="app")
    assert result.ok, result.items
    os_item = result.item("os")
    assert os_item is not None and os_item.detail == "debian 12 (bookworm)"
    assert (
        (host.root / "etc/apt/sources.list.d/docker.list")
        .read_text()
        .endswith("https://download.docker.com/linux/debian bookworm stable\n")
    )
    swap = result.item("swap")
    assert swap is not None and swap.status == "ok" and "no swap needed" in swap.detail
    assert not any(c.startswith(("fallocate", "mkswap", "swapon /")) for c in host.calls())
    assert not (host.root / "swapfile").exists()
    assert host.state_lines("ufw.rules") == ["ufw allow 2222/tcp", "ufw allow 80/tcp", "ufw allow 443/tcp"]
    assert "usermod -aG docker app" in host.calls()
    assert "port = 2222" in (host.root / "etc/fail2ban/jail.d/timetodo-sshd.local").read_text()


async def test_prepare_self_check_flags_public_database_ports(fake_host: FakeHost) -> None:
    (fake_host.state / "ss").write_text(
        "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"
        "LISTEN 0 244 0.0.0.0:5432 0.0.0.0:*\n"
        "LISTEN 0 511 127.0.0.1:6379 0.0.0.0:*\n"  # loopback: fine
        "LISTEN 0 511 [::]:6379 [::]:*\n"
    )
    result = await prepare_on(fake_host)
    check = result.item("db-ports", "check")
    assert check is not None and check.status == "failed"
    assert "0.0.0.0:5432" in check.detail and "[::]:6379" in check.detail and "127.0.0.1:6379" not in check.detail
    assert result.exit_status == 1 and not result.ok
    assert [f"{i.phase}:{i.name}" for i in result.failed] == ["check:db-ports"]
    assert set(statuses(result, "prepare").values()) <= {"ok", "changed"}


async def test_prepare_self_check_flags_container_published_ports_and_extra_ufw_rules(fake_host: FakeHost) -> None:
    (fake_host.state / "docker_ps").write_text(
        "timetodo-nginx-1 0.0.0.0:80->80/tcp, [::]:80->80/tcp\ntimetodo-postgres-1 0.0.0.0:5432->5432/tcp\n"
    )
    (fake_host.state / "ufw.rules").write_text("ufw allow 8000/tcp\n")
    result = await prepare_on(fake_host)
    ports = result.item("db-ports", "check")
    assert ports is not None and ports.status == "failed" and "timetodo-postgres-1" in ports.detail
    assert "nginx" not in ports.detail
    ufw = result.item("ufw", "check")
    assert ufw is not None and ufw.status == "failed" and "also open: 8000" in ufw.detail
    assert "ufw delete allow 8000/tcp" not in fake_host.calls()  # reported, never deleted


async def test_prepare_failed_item_does_not_stop_the_rest(fake_host: FakeHost) -> None:
    (fake_host.state / "unavailable").write_text("fail2ban\n")
    result = await prepare_on(fake_host)
    f2b = result.item("fail2ban")
    assert f2b is not None and f2b.status == "failed"
    assert "apt-get" in f2b.detail and "Unable to locate package fail2ban" in f2b.detail
    after = result.item("unattended-upgrades")
    assert after is not None and after.status == "changed"  # the next item still ran
    check = result.item("fail2ban", "check")
    assert check is not None and check.status == "failed"
    assert result.exit_status == 1 and not result.ok

    # fixed: the next run installs only what is missing
    (fake_host.state / "unavailable").unlink()
    fake_host.reset_calls()
    again = await prepare_on(fake_host)
    assert again.ok, again.items
    assert [i.name for i in again.changed] == ["fail2ban", "fail2ban-service"]  # installed, then restarted


async def test_prepare_refuses_conflicting_distribution_docker(fake_host: FakeHost) -> None:
    with (fake_host.state / "packages").open("a") as handle:
        handle.write("docker.io\n")
    result = await prepare_on(fake_host)
    docker = result.item("docker")
    assert docker is not None and docker.status == "failed" and "docker.io" in docker.detail
    assert not any("docker-ce" in c for c in fake_host.calls() if c.startswith("apt-get"))
    deploy_user = result.item("deploy-user")
    assert deploy_user is not None and deploy_user.status == "failed" and "no docker group" in deploy_user.detail
    ufw = result.item("firewall")
    assert ufw is not None and ufw.status == "changed"  # the items after a failed one still run


async def test_run_prepare_reports_a_script_that_cannot_run() -> None:
    result = await run_prepare(LocalTransport(), "echo 'oops: no such thing' >&2\nexit 7\n", timeout=30)
    assert result.exit_status == 7 and not result.ok
    assert [(i.name, i.status) for i in result.items] == [("script", "failed")]
    assert "oops: no such thing" in result.items[0].detail


@pytest.mark.parametrize(
    ("candidates", "compose"),
    [
        ("docker.io 24.0.7\ndocker-compose-v2 2.24.6\ndocker-compose 1.29.2\n", "docker-compose-v2"),  # Ubuntu
        ("docker.io 20.10.24\ndocker-compose 1.29.2\n", "docker-compose"),  # Debian 12: Compose v1 only
    ],
)
async def test_prepare_distro_docker_picks_the_compose_package(
    fake_host: FakeHost, candidates: str, compose: str
) -> None:
    (fake_host.state / "candidates").write_text(candidates)
    (fake_host.state / "enabled").write_text("ssh\napt-daily-upgrade.timer\ndocker\n")
    (fake_host.state / "active").write_text("ssh\ndocker\n")
    (fake_host.state / "group.docker").write_text("")
    result = await prepare_on(fake_host, docker="distro")
    assert "docker-repo" not in statuses(result, "prepare")  # no third-party repository
    installs = [c for c in fake_host.calls() if c.startswith("apt-get") and " install " in c]
    assert any(c.endswith(f" docker.io {compose}") for c in installs), installs
    docker = result.item("docker")
    assert docker is not None and docker.status == "changed" and compose in docker.detail
    assert not (fake_host.root / "etc/apt/sources.list.d/docker.list").exists()
    compose_check = result.item("compose", "check")
    assert compose_check is not None and compose_check.status == "ok"
    assert ("docker-compose 1.29.2 (Compose v1" in compose_check.detail) == (compose == "docker-compose")
    again = await prepare_on(fake_host, docker="distro")
    assert again.changed == [] and again.ok, again.items


async def test_prepare_distro_refuses_an_installed_docker_ce(fake_host: FakeHost) -> None:
    with (fake_host.state / "packages").open("a") as handle:
        handle.write("docker-ce\ndocker-ce-cli\n")
    result = await prepare_on(fake_host, docker="distro")
    docker = result.item("docker")
    assert docker is not None and docker.status == "failed" and 'prepare.docker = "docker-ce"' in docker.detail
    service = result.item("docker-service")
    assert service is not None and service.status == "failed"  # never started after a failed install
    assert not any(" install " in c for c in fake_host.calls() if "docker.io" in c)


async def test_prepare_ssh_hardening_never_leaves_a_config_sshd_refuses(fake_host: FakeHost) -> None:
    (fake_host.state / "sshd_refuses").write_text("")
    result = await prepare_on(fake_host)
    item = result.item("ssh-hardening")
    assert item is not None and item.status == "failed" and "sshd -t refused" in item.detail
    assert not (fake_host.root / "etc/ssh/sshd_config.d/10-timetodo.conf").exists()
    reload = result.item("sshd-reload")
    assert reload is not None and reload.status == "failed"
    assert "systemctl reload ssh" not in fake_host.calls()


async def test_prepare_without_systemd_or_own_kernel_reports_skipped(fake_host: FakeHost) -> None:
    shutil.rmtree(fake_host.root / "run/systemd")  # no systemd ...
    (fake_host.root / ".dockerenv").write_text("")  # ... and a container's kernel
    result = await prepare_on(fake_host)
    assert result.ok, result.items
    skipped = {i.name: i.reason for i in result.items if i.phase == "prepare" and i.status == "skipped"}
    assert skipped == {
        "docker-service": "no systemd",
        "sshd-reload": "no systemd",
        "firewall-active": "container",
        "swap-active": "container",
        "fail2ban-service": "no systemd",
    }
    calls = fake_host.calls()
    assert not any(
        c.startswith(("systemctl enable", "systemctl start", "systemctl re", "ufw --force", "swapon /")) for c in calls
    )
    checks = {i.name: i.label for i in result.items if i.phase == "check"}
    assert checks["ufw"] == "skipped (container)" and checks["swap"] == "skipped (container)"
    assert checks["fail2ban"] == "skipped (no systemd)" and checks["unattended-upgrades"] == "skipped (no systemd)"
    assert checks["ssh"] == "ok"
    console = Console(record=True, width=200)
    result.render(console)
    out = console.export_text()
    assert "skipped (no systemd)" in out and "9 item(s) skipped" in out
    assert result.to_dict()["skipped"][0] == "prepare:docker-service (no systemd)"


# ----------------------------------------------------------------------------------------------------------- sshd


@pytest.mark.slow
async def test_run_prepare_over_real_ssh(fake_host: FakeHost, ssh: SSHTransport) -> None:
    first = await prepare_on(fake_host, ssh)
    assert first.host == ssh.describe()
    assert first.exit_status == 0 and first.ok, (first.items, first.stderr_tail)
    assert statuses(first, "prepare") == {name: "ok" if name in FIRST_RUN_OK else "changed" for name in PREPARE_ITEMS}
    fake_host.reset_calls()
    second = await prepare_on(fake_host, ssh)
    assert statuses(second, "prepare") == dict.fromkeys(PREPARE_ITEMS, "ok")
    assert fake_host.changes() == []


# ======================================================================================================= deploy

ENV_SECRETS = {
    "SECRET_KEY": "s3cr3t-" + "k" * 40,
    "POSTGRES_PASSWORD": "pg-Pa55word-xyz",
    "REDIS_PASSWORD": "redis-Pa55-abc",
    "TELEGRAM_BOT_TOKEN": "123456:ABC-telegram-token",
}


def compose_env_text() -> str:
    lines = ["# target .env", "ENVIRONMENT=production", "PUBLIC_BASE_URL=https://todo.example.com"]
    lines += [f"{k}={v}" for k, v in ENV_SECRETS.items()]
    return "\n".join(lines) + "\n"


@dataclass
class RecordingTransport:
    """A FAKE transport, used only for ComposeRuntime: this machine has no Docker engine, so the compose runtime is
    checked by what it would do on the target. It implements the `Transport` protocol, records every command and
    file operation, and answers commands from `answers` (substring -> results, consumed in order)."""

    answers: dict[str, list[CommandResult]] = field(default_factory=dict)
    ops: list[tuple[Any, ...]] = field(default_factory=list)
    texts: dict[str, tuple[str, int]] = field(default_factory=dict)

    def describe(self) -> str:
        return "ssh://root@vps.example:22"

    def _answer(self, text: str) -> CommandResult:
        for key, queue in self.answers.items():
            if key in text and queue:
                result = queue.pop(0) if len(queue) > 1 else queue[0]
                return CommandResult(text, result.exit_status, result.stdout, result.stderr, 0.0)
        return CommandResult(text, 0, "", "", 0.0)

    async def run(
        self,
        command: str | list[str],
        *,
        timeout: float,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        secrets: Sequence[str] = (),
    ) -> CommandResult:
        text = command if isinstance(command, str) else shlex.join(command)
        self.ops.append(("run", text))
        result = self._answer(text)
        if check and result.exit_status != 0:
            raise CommandFailed(result, self.describe(), result.stderr)
        return result

    async def stream(self, command: str | list[str], **kwargs: Any) -> CommandResult:
        raise AssertionError("deploy does not stream")

    async def put_file(self, local: Path, remote: str, *, mode: int | None = None, progress: Any = None) -> None:
        self.ops.append(("put_file", str(local), remote, mode))

    async def get_file(self, remote: str, local: Path, *, progress: Any = None) -> None:
        raise AssertionError("deploy does not download")

    async def write_text(self, remote: str, text: str, *, mode: int = 0o600) -> None:
        self.ops.append(("write_text", remote, mode))
        self.texts[remote] = (text, mode)

    async def read_text(self, remote: str) -> str:
        raise FileNotFoundError(remote)

    async def exists(self, remote: str) -> bool:
        return False

    async def free_bytes(self, remote_dir: str) -> int:
        return 10**12

    async def forward(self, host: str, port: int) -> tuple[str, int]:
        raise AssertionError("deploy does not forward ports")

    async def close(self) -> None:
        return None


PULLED: dict[str, Any] = {"image_source": "pull", "image": "ghcr.io/owner/timetodo:1.2.3"}
IMAGE_THERE = {"image inspect": [CommandResult("", 0, "sha256:" + "cd" * 32 + "\n", "", 0)]}


def ok_health(status: int = 200) -> CommandResult:
    body = json.dumps({"status": "ok" if status == 200 else "unhealthy", "checks": {"database": {"ok": status == 200}}})
    return CommandResult("", 0, f"{body}\n{status}\n", "", 0.0)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A small copy of the compose bundle (the real one changes with other work; its file set is checked below)."""
    root = tmp_path / "bundle"
    (root / "nginx" / "acme").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "docker-compose.yml", root / "docker-compose.yml")
    (root / "nginx" / "timetodo.conf").write_text("server { listen 80; }\n")
    (root / "nginx" / "acme" / ".gitkeep").write_text("")
    (root / ".env").write_text("SECRET_KEY=local-file-never-uploaded\n")
    return root


async def test_compose_runtime_deploy_commands(bundle: Path) -> None:
    inspect_missing = CommandResult("", 1, "", "Error: No such image", 0)
    inspect_found = CommandResult("", 0, "sha256:" + "ab" * 32 + "\n", "", 0)
    fake = RecordingTransport(
        answers={
            "/health/detailed": [ok_health(503), ok_health(200)],
            "image inspect": [inspect_missing, inspect_found],
        }
    )
    assert isinstance(fake, Transport)
    runtime = ComposeRuntime(fake, "/opt/timetodo", bundle_dir=bundle, context_dir=ROOT)
    assert isinstance(runtime, Runtime)
    env_text = compose_env_text()

    result = await runtime.deploy(env_text, health_timeout=30)

    context = build_context(ROOT)
    tag = f"timetodo:ctx-{context.sha256[:12]}"
    archive = f"/opt/timetodo/build/context-{context.sha256[:12]}.tar.gz"
    unpacked = archive.removesuffix(".tar.gz")
    compose = "docker compose -p timetodo -f /opt/timetodo/docker-compose.yml --env-file /opt/timetodo/.env"
    probe = runtime._probe_command()
    ops = [op if op[0] != "put_file" or op[2] != archive else ("put_file", "<tmp>", archive, op[3]) for op in fake.ops]
    assert ops == [
        ("put_file", str(bundle / "docker-compose.yml"), "/opt/timetodo/docker-compose.yml", 0o644),
        ("put_file", str(bundle / "nginx/acme/.gitkeep"), "/opt/timetodo/nginx/acme/.gitkeep", 0o644),
        ("put_file", str(bundle / "nginx/timetodo.conf"), "/opt/timetodo/nginx/timetodo.conf", 0o644),
        ("run", f"docker image inspect --format '{{{{.Id}}}}' {tag}"),
        ("put_file", "<tmp>", archive, 0o644),
        ("run", f"rm -rf {unpacked}"),
        ("run", f"mkdir -p {unpacked}"),
        ("run", f"tar -xzf {archive} -C {unpacked}"),
        ("run", f"docker build -t {tag} {unpacked}"),
        ("run", f"rm -rf {unpacked} {archive}"),
        ("run", f"docker image inspect --format '{{{{.Id}}}}' {tag}"),
        ("write_text", "/opt/timetodo/.env", 0o600),
        ("run", f"{compose} config --quiet"),
        ("run", f"{compose} up -d --wait"),
        ("run", probe),
        ("run", probe),
        ("write_text", "/opt/timetodo/.image.json", 0o644),
    ]
    assert "curl -sS" in probe and "http://127.0.0.1/health/detailed" in probe and "python3 -c" in probe
    assert fake.texts["/opt/timetodo/.env"] == (env_text + f"TIMETODO_IMAGE={tag}\n", 0o600)
    assert result.healthy and result.runtime == "compose" and result.health_url == "http://127.0.0.1/health/detailed"
    assert [s.name for s in result.steps] == ["upload", "image", "env", "config", "up", "health"]
    assert result.to_dict()["image"] == f"{tag} (sha256:{'ab' * 6})"  # the final report's target line
    assert result.to_dict()["image_record"] == {
        "source": "build",
        "tag": tag,
        "id": "sha256:" + "ab" * 32,
        "built": True,
        "previous_tag": "",
        "previous_id": "",
    }
    assert json.loads(fake.texts["/opt/timetodo/.image.json"][0])["tag"] == tag
    json.dumps(result.to_dict())

    # recorded in the state as the deploy step's result, shown on the final report's target side
    from timetodo.ops.migrate.report.model import build
    from timetodo.ops.migrate.state import MigrationState

    state = MigrationState.load(bundle.parent / "work")
    state.start("deploy")
    state.finish("deploy", result.to_dict())
    again = MigrationState.load(bundle.parent / "work")
    assert again.result("deploy")["image_record"]["tag"] == tag  # type: ignore[index]
    target_side = next(side for side in build(again).sides if side.role == "target")
    assert target_side.image == f"{tag} (sha256:{'ab' * 6})"

    # the env text's secrets are file content only: never in a command line or a file name
    everything = json.dumps([op for op in fake.ops])
    for secret in ENV_SECRETS.values():
        assert secret not in everything
    assert "local-file-never-uploaded" not in everything and not any(".env" in str(op[1]) for op in fake.ops[:3])

    fake.ops.clear()
    await runtime.stop()
    await runtime.start()
    await runtime.migrate_db()
    assert await runtime.status() == ""
    assert fake.ops == [
        ("run", f"{compose} stop app"),
        ("run", f"{compose} start app"),
        ("run", f"{compose} run --rm migrate"),
        ("run", f"{compose} ps"),
    ]


async def test_compose_runtime_plan_and_failures(bundle: Path) -> None:
    fake = RecordingTransport()
    runtime = ComposeRuntime(fake, "/srv/todo/", bundle_dir=bundle, project="todo")
    plan = await runtime.plan()
    assert fake.ops == []  # a dry run touches nothing
    assert all(isinstance(p, PlannedCommand) and p.host == "ssh://root@vps.example:22" for p in plan)
    lines = [p.command for p in plan]
    assert lines[0] == f"upload {bundle / 'docker-compose.yml'} -> /srv/todo/docker-compose.yml (mode 0644)"
    assert "write /srv/todo/.env (mode 0600) from the env file, contents not shown" in lines
    assert "docker compose -p todo -f /srv/todo/docker-compose.yml --env-file /srv/todo/.env up -d --wait" in lines
    assert str(plan[0]).startswith("[ssh://root@vps.example:22] upload ")

    failing = RecordingTransport(
        answers={
            " config ": [CommandResult("", 1, "", "required variable POSTGRES_PASSWORD is missing a value", 0)],
            **IMAGE_THERE,
        }
    )
    runtime = ComposeRuntime(failing, "/srv/todo", bundle_dir=bundle, **PULLED)
    with pytest.raises(DeployError) as caught:
        await runtime.deploy("SECRET_KEY=x\n")
    assert caught.value.step == "config" and "POSTGRES_PASSWORD is missing" in str(caught.value)
    assert "/srv/todo/.env" in caught.value.hint
    assert not any(" up " in op[1] for op in failing.ops if op[0] == "run")  # nothing started

    unhealthy = RecordingTransport(answers={"/health/detailed": [ok_health(503)], **IMAGE_THERE})
    runtime = ComposeRuntime(unhealthy, "/srv/todo", bundle_dir=bundle, **PULLED)
    with pytest.raises(DeployError) as caught:
        await runtime.deploy("HTTP_PORT=8080\n", health_timeout=1)
    assert caught.value.step == "health" and "HTTP 503" in str(caught.value) and "database" in str(caught.value)
    assert runtime.health_url == "http://127.0.0.1:8080/health/detailed"

    with pytest.raises(DeployError) as caught:
        await ComposeRuntime(RecordingTransport(), "/srv/todo", bundle_dir=bundle / "nope").deploy("A=1\n")
    assert caught.value.step == "upload" and "docker-compose.yml" in str(caught.value)


async def test_compose_runtime_falls_back_to_compose_v1(bundle: Path) -> None:
    """Debian 12's own packages (prepare.docker = "distro") have docker.io without the v2 plugin: the docker CLI
    says so, and deploy drives docker-compose 1.29 instead (`up -d` without --wait; the health poll waits)."""
    no_plugin = CommandResult("", 1, "", "docker: 'compose' is not a docker command.\nSee 'docker --help'", 0)
    fake = RecordingTransport(
        answers={"docker compose ": [no_plugin], "/health/detailed": [ok_health(200)], **IMAGE_THERE}
    )
    runtime = ComposeRuntime(fake, "/opt/timetodo", bundle_dir=bundle, **PULLED)
    result = await runtime.deploy(compose_env_text(), health_timeout=30)
    assert result.healthy and runtime.compose_v1
    v1 = "docker-compose -p timetodo -f /opt/timetodo/docker-compose.yml --env-file /opt/timetodo/.env"
    runs = [op[1] for op in fake.ops if op[0] == "run"]
    assert runs[0] == "docker pull ghcr.io/owner/timetodo:1.2.3"
    assert runs[2:5] == [
        "docker compose -p timetodo -f /opt/timetodo/docker-compose.yml --env-file /opt/timetodo/.env config --quiet",
        f"{v1} config --quiet",
        f"{v1} up -d",
    ]
    fake.ops.clear()
    await runtime.stop()
    assert fake.ops == [("run", f"{v1} stop app")]

    # any other config failure is the config's, reported as before
    broken = CommandResult("", 1, "", "required variable POSTGRES_PASSWORD is missing a value", 0)
    failing = RecordingTransport(answers={" config ": [broken], **IMAGE_THERE})
    runtime = ComposeRuntime(failing, "/opt/timetodo", bundle_dir=bundle, **PULLED)
    with pytest.raises(DeployError, match="POSTGRES_PASSWORD"):
        await runtime.deploy("SECRET_KEY=x\n")
    assert not runtime.compose_v1


def test_build_context_is_deterministic_and_complete(tmp_path: Path) -> None:
    first, second = build_context(ROOT), build_context(ROOT)
    assert first.data == second.data and first.sha256 == second.sha256
    with tarfile.open(fileobj=io.BytesIO(first.data)) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in tar.getmembers())
    assert {"Dockerfile", "pyproject.toml", "uv.lock", "README.md", "src/timetodo/main.py"} <= set(names)
    assert not any("__pycache__" in n or n.endswith(".pyc") or n.startswith(("tests/", "deploy/")) for n in names)
    assert first.tag("timetodo") == f"timetodo:ctx-{first.sha256[:12]}"

    # a changed source file is a new context (a new tag); a missing Dockerfile is named
    copy = tmp_path / "ctx"
    for name in ("Dockerfile", "pyproject.toml", "uv.lock", "README.md"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    (copy / "src/timetodo").mkdir(parents=True)
    (copy / "src/timetodo/__init__.py").write_text("")
    one = build_context(copy)
    (copy / "src/timetodo/__init__.py").write_text("# changed\n")
    assert build_context(copy).sha256 != one.sha256
    (copy / "Dockerfile").unlink()
    with pytest.raises(FileNotFoundError, match="Dockerfile"):
        build_context(copy)


def test_with_image_overrides_the_env_files_image() -> None:
    text = "SECRET_KEY=x\nTIMETODO_IMAGE=old:1\nexport TIMETODO_IMAGE = older\nA=1"
    assert with_image(text, "timetodo:ctx-abc") == "SECRET_KEY=x\nA=1\nTIMETODO_IMAGE=timetodo:ctx-abc\n"


@dataclass
class FilesTransport(RecordingTransport):
    """RecordingTransport whose read_text answers from the files written so far (or given)."""

    files: dict[str, str] = field(default_factory=dict)

    async def write_text(self, remote: str, text: str, *, mode: int = 0o600) -> None:
        await super().write_text(remote, text, mode=mode)
        self.files[remote] = text

    async def read_text(self, remote: str) -> str:
        if remote not in self.files:
            raise FileNotFoundError(remote)
        return self.files[remote]


async def test_compose_records_the_previous_image_and_rolls_the_app_back(bundle: Path) -> None:
    ids = {"ghcr.io/owner/timetodo:1": "sha256:" + "01" * 32, "ghcr.io/owner/timetodo:2": "sha256:" + "02" * 32}

    def runtime_for(fake: FilesTransport, image: str) -> ComposeRuntime:
        fake.answers = {
            "/health/detailed": [ok_health(200)],
            "image inspect": [CommandResult("", 0, ids[image] + "\n", "", 0)],
        }
        return ComposeRuntime(fake, "/opt/timetodo", bundle_dir=bundle, image_source="pull", image=image)

    fake = FilesTransport()
    env_text = compose_env_text()
    first = await runtime_for(fake, "ghcr.io/owner/timetodo:1").deploy(env_text, health_timeout=10)
    assert first.image["previous_tag"] == "" and first.image["id"] == ids["ghcr.io/owner/timetodo:1"]
    second = await runtime_for(fake, "ghcr.io/owner/timetodo:2").deploy(env_text, health_timeout=10)
    assert second.image["tag"] == "ghcr.io/owner/timetodo:2"
    assert second.image["previous_tag"] == "ghcr.io/owner/timetodo:1"
    assert second.image["previous_id"] == ids["ghcr.io/owner/timetodo:1"]
    # the same image once more: the one to go back to stays :1
    again = await runtime_for(fake, "ghcr.io/owner/timetodo:2").deploy(env_text, health_timeout=10)
    assert again.image["previous_tag"] == "ghcr.io/owner/timetodo:1"
    assert "TIMETODO_IMAGE=ghcr.io/owner/timetodo:2" in fake.files["/opt/timetodo/.env"]

    fake.ops.clear()
    runtime = runtime_for(fake, "ghcr.io/owner/timetodo:1")
    back = await runtime.rollback_image(health_timeout=10)
    assert back.source == "rollback" and back.tag == "ghcr.io/owner/timetodo:1"
    assert back.previous_tag == "ghcr.io/owner/timetodo:2"
    assert fake.files["/opt/timetodo/.env"].endswith("TIMETODO_IMAGE=ghcr.io/owner/timetodo:1\n")
    assert "SECRET_KEY=" + ENV_SECRETS["SECRET_KEY"] in fake.files["/opt/timetodo/.env"]  # the rest kept
    runs = [op[1] for op in fake.ops if op[0] == "run"]
    assert not any(" pull " in r for r in runs)  # nothing fetched: the previous image is still there
    assert any(r.endswith("up -d --wait") for r in runs)
    assert json.loads(fake.files["/opt/timetodo/.image.json"])["tag"] == "ghcr.io/owner/timetodo:1"

    # nothing recorded before: a clear refusal
    with pytest.raises(DeployError, match="no previous image"):
        await runtime_for(FilesTransport(), "ghcr.io/owner/timetodo:1").rollback_image()


def test_compose_bundle_of_the_repository_is_found() -> None:
    runtime = ComposeRuntime(RecordingTransport(), "/opt/timetodo", bundle_dir=ROOT / "deploy")
    files = runtime.bundle_files()
    assert files[0] == (ROOT / "deploy" / "docker-compose.yml", "/opt/timetodo/docker-compose.yml")
    remotes = [remote for _, remote in files]
    assert "/opt/timetodo/nginx/timetodo.conf" in remotes
    assert all(r.startswith("/opt/timetodo/nginx/") for r in remotes[1:])
    assert not any(r.endswith("/.env") or r.endswith(".env.example") for r in remotes)


class _Health(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []

    def do_GET(self) -> None:
        code = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        body = json.dumps({"status": "ok" if code == 200 else "unhealthy", "checks": {}}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@contextlib.contextmanager
def health_server(answers: list[int]) -> Iterator[int]:
    _Health.answers = list(answers)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_compose_health_poll_runs_on_the_target(bundle: Path, tmp_path: Path) -> None:
    """The probe command itself, run for real (LocalTransport) against an HTTP server on 127.0.0.1: curl when the
    host has it, python3's urllib when it does not."""
    with health_server([503, 503, 200]) as port:
        runtime = ComposeRuntime(LocalTransport(), "/opt/timetodo", bundle_dir=bundle, http_port=port)
        report = await runtime.wait_healthy(20)
        assert report["status"] == "ok"

        no_curl = tmp_path / "no-curl"
        no_curl.mkdir()
        (no_curl / "python3").symlink_to(sys.executable)
        _Health.answers = [200]
        out = subprocess.run(
            ["/bin/sh", "-c", runtime._probe_command()], env={"PATH": str(no_curl)}, capture_output=True, text=True
        )
        assert out.stdout.rstrip().splitlines()[-1] == "200", out
        assert json.loads(out.stdout.rstrip().splitlines()[0])["status"] == "ok"


def test_env_text_helpers() -> None:
    text = (
        "# comment\nexport A=1\nSECRET_KEY='quoted value'\nDATABASE_URL=postgresql://u:dbpass99@db:5432/x\n"
        'PUBLIC_BASE_URL="https://x.example"\nPORT=80\n'
    )
    assert parse_env_text(text) == {
        "A": "1",
        "SECRET_KEY": "quoted value",
        "DATABASE_URL": "postgresql://u:dbpass99@db:5432/x",
        "PUBLIC_BASE_URL": "https://x.example",
        "PORT": "80",
    }
    found = env_secrets(text)
    assert "quoted value" in found and "dbpass99" in found and "80" not in found and "https://x.example" not in found


# ------------------------------------------------------------------------------------------------ process runtime


def serve_pids(port: int) -> list[int]:
    """Live (non-zombie) `timetodo serve` processes listening on `port`, found in /proc."""
    found = []
    needle = f" serve --host 127.0.0.1 --port {port} "
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline + " " and state != "Z" and "sh -c" not in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def kill_leftovers(port: int) -> None:
    for pid in serve_pids(port):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def process_env_text(app: Path, database_url: str | None = None) -> str:
    return (
        "ENVIRONMENT=production\n"
        f"SECRET_KEY={ENV_SECRETS['SECRET_KEY']}\n"
        f"DATABASE_URL={database_url or f'sqlite:///{app}/timetodo.db'}\n"
        "LOG_LEVEL=WARNING\n"
        "GRACEFUL_SHUTDOWN_SECONDS=5\n"
    )


async def wait_until(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


@pytest.fixture
async def process_runtime(ssh: SSHTransport, tmp_path: Path) -> AsyncIterator[tuple[ProcessRuntime, Path, int]]:
    app = tmp_path / "app"
    port = free_port()
    runtime = ProcessRuntime(ssh, str(app), timetodo_bin=TIMETODO_BIN, port=port, stop_timeout=15)
    try:
        yield runtime, app, port
    finally:
        with contextlib.suppress(Exception):
            await runtime.stop()
        kill_leftovers(port)


@pytest.mark.slow
async def test_process_runtime_over_ssh(
    process_runtime: tuple[ProcessRuntime, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    runtime, app, port = process_runtime
    assert isinstance(runtime, Runtime)
    env_text = process_env_text(app)
    caplog.set_level(logging.INFO, logger="timetodo.ops.ssh")

    result = await runtime.deploy(env_text, health_timeout=60)
    assert result.healthy and result.runtime == "process"
    assert [s.name for s in result.steps] == ["env", "migrate", "stop", "start", "health"]
    assert result.health["checks"]["migrations"]["ok"] is True
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/health/detailed")
    assert response.status_code == 200, response.text
    assert stat.S_IMODE((app / ".env").stat().st_mode) == 0o600
    assert (app / ".env").read_text() == env_text
    first = int((app / "timetodo.pid").read_text())
    assert serve_pids(port) == [first]
    assert (app / "logs" / "serve.log").exists()
    assert (await runtime.status()).startswith(f"running: pid {first}")

    # deploy again: restarted, still exactly one instance
    again = await runtime.deploy(env_text, health_timeout=60)
    assert again.healthy
    second = int((app / "timetodo.pid").read_text())
    assert await wait_until(lambda: not alive(first))
    assert serve_pids(port) == [second] and second != first

    # stop: graceful, gone, port closed
    await runtime.stop()
    assert not alive(second) and serve_pids(port) == []
    assert not port_open(port)
    assert not (app / "timetodo.pid").exists()
    assert await runtime.status() == "stopped"
    await runtime.stop()  # stopping a stopped app is fine

    # start again
    await runtime.start()
    report = await runtime.wait_healthy(60)
    assert report["status"] == "ok"
    assert len(serve_pids(port)) == 1
    await runtime.start()  # already running: no second instance
    assert len(serve_pids(port)) == 1

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "db upgrade" in logged and "serve --host 127.0.0.1" in logged
    assert ENV_SECRETS["SECRET_KEY"] not in logged


@pytest.mark.slow
async def test_process_runtime_unreachable_database(process_runtime: tuple[ProcessRuntime, Path, int]) -> None:
    runtime, app, port = process_runtime
    closed = free_port()
    password = "pw-" + secrets.token_hex(6)
    env_text = process_env_text(app, f"postgresql://ttd:{password}@127.0.0.1:{closed}/ttd")
    started = time.monotonic()
    with pytest.raises(DeployError) as caught:
        await runtime.deploy(env_text, health_timeout=30)
    error = caught.value
    assert error.step == "migrate"
    assert str(error).startswith("deploy step 'migrate' failed:")
    assert "db upgrade" in str(error) and "database unreachable" in str(error)
    assert "DATABASE_URL" in error.hint
    assert password not in str(error) + error.hint
    assert time.monotonic() - started < 60
    assert serve_pids(port) == [] and not port_open(port)
    assert not (app / "timetodo.pid").exists()
    assert await runtime.status() == "stopped"


@pytest.mark.slow
async def test_process_runtime_port_taken_fails_at_start(process_runtime: tuple[ProcessRuntime, Path, int]) -> None:
    runtime, app, port = process_runtime
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(DeployError) as caught:
            await runtime.deploy(process_env_text(app), health_timeout=30)
    assert caught.value.step in ("start", "health")
    assert "serve.log" in str(caught.value) or "not healthy" in str(caught.value)
    assert serve_pids(port) == []
    assert await runtime.status() == "stopped"


async def test_process_runtime_plan_runs_nothing() -> None:
    fake = RecordingTransport()
    runtime = ProcessRuntime(fake, "/opt/timetodo", timetodo_bin="/opt/venv/bin/timetodo", port=8001)
    plan = await runtime.plan()
    assert fake.ops == []
    text = "\n".join(p.command for p in plan)
    assert "write /opt/timetodo/.env (mode 0600)" in text
    assert "cd /opt/timetodo && exec /opt/venv/bin/timetodo db upgrade" in text
    assert ". /opt/timetodo/.env" not in text  # the env file is parsed in Python, never sourced by a shell
    assert "/opt/venv/bin/timetodo serve --host 127.0.0.1 --port 8001 --no-migrate" in text
    assert "http://127.0.0.1:8001/health/detailed" in text
    with pytest.raises(ValueError, match="absolute"):
        ProcessRuntime(fake, "opt", timetodo_bin="/x/timetodo")


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ('[target]\nimage_source = "pull"', "target", "needs target.image"),
        ('[target]\nimage_source = "ftp"', "target.image_source", "'build', 'load' or 'pull'"),
        ('[prepare]\ndocker = "snap"', "prepare.docker", "'docker-ce' or 'distro'"),
        ('[prepare]\ndeploy_user = "root"', "prepare.deploy_user", "other than root"),
        ("[prepare]\nswap_mb = 1", "prepare.swap_mb", "greater than or equal to 256"),
    ],
)
def test_image_and_prepare_config_errors_name_the_key(tmp_path: Path, extra: str, key: str, message: str) -> None:
    from timetodo.ops.migrate.config import ConfigError, load_config

    section, _, line = extra.partition("\n")
    target = 'host = "203.0.113.10"\npublic_url = "https://todo.example.com"\ndatabase_url_env = "T_DB"\n'
    text = (
        '[source]\napi_url = "https://old.example.com"\nadmin_token_env = "A"\ndatabase_url_env = "S_DB"\n'
        f"[target]\n{target}{line + chr(10) if section == '[target]' else ''}"
        f"{extra + chr(10) if section == '[prepare]' else ''}"
    )
    path = tmp_path / "migration.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key and message in caught.value.message, caught.value


async def test_compose_deploy_obtains_the_certificate_and_switches_nginx_to_tls(bundle: Path) -> None:
    """A fresh host with target.public_url https:// (the commands sent; certbot against a real ACME server and
    nginx serving and renewing its certificate run in tests/ops/test_acme.py, the TLS probe in
    tests/ops/test_deploy_tls_probe.py)."""
    from timetodo.ops.adapters.acme import Acme

    acme = Acme(domains=("todo.example.com",), email="ops@example.com", webroot="/opt/timetodo/nginx/acme")
    fake = FilesTransport(
        answers={
            "test -s": [CommandResult("", 1, "", "", 0)],
            "openssl x509": [CommandResult("", 0, "serial=0ABC\nnotAfter=Feb 27 10:00:00 2027 GMT\n", "", 0)],
            "/health/detailed": [ok_health(200)],
            **IMAGE_THERE,
        }
    )
    runtime = ComposeRuntime(fake, "/opt/timetodo", bundle_dir=bundle, acme=acme, **PULLED)
    result = await runtime.deploy(compose_env_text(), health_timeout=10)

    runs = [op[1] for op in fake.ops if op[0] == "run"]
    certbot = next(i for i, r in enumerate(runs) if r.startswith("certbot certonly"))
    probes = [i for i, r in enumerate(runs) if "/health/detailed" in r]
    reload = runs.index(shlex.join(runtime.reload_nginx_command()))
    assert "http://127.0.0.1/health/detailed" in runs[probes[0]] and probes[0] < certbot  # plain HTTP first
    assert "--webroot -w /opt/timetodo/nginx/acme -d todo.example.com" in runs[certbot]
    assert certbot < reload < probes[-1]
    assert "--resolve todo.example.com:443:127.0.0.1 " in runs[probes[-1]]
    assert "https://todo.example.com/health/detailed" in runs[probes[-1]]
    conf_writes = [i for i, op in enumerate(fake.ops) if op[:2] == ("write_text", "/opt/timetodo/nginx/timetodo.conf")]
    assert len(conf_writes) == 2  # plain, then TLS
    tls_conf = fake.files["/opt/timetodo/nginx/timetodo.conf"]
    assert "ssl_certificate /etc/letsencrypt/live/todo.example.com/fullchain.pem;" in tls_conf
    assert "server_name todo.example.com;" in tls_conf and "/.well-known/acme-challenge/" in tls_conf
    assert "LETSENCRYPT_DIR=/etc/letsencrypt" in fake.files["/opt/timetodo/.env"]
    hook = fake.files["/etc/letsencrypt/renewal-hooks/deploy/timetodo-reload.sh"]
    assert hook.rstrip().endswith(f"exec {shlex.join(runtime.reload_nginx_command())}")
    assert "certbot renew" in fake.files["/etc/cron.d/timetodo-certbot"]  # no certbot.timer here: our own job
    assert result.healthy and result.health_url == "https://todo.example.com/health/detailed"
    assert result.image["certificate"]["serial"] == "0ABC"
    assert [s.name for s in result.steps][-3:] == ["health-http", "certificate", "health"]

    # deployed again: the certificate is there, nginx starts on TLS at once, certbot keeps it
    fake.answers["test -s"] = [CommandResult("", 0, "", "", 0)]
    fake.ops.clear()
    await runtime.deploy(compose_env_text(), health_timeout=10)
    runs = [op[1] for op in fake.ops if op[0] == "run"]
    assert all("https://todo.example.com" in r for r in runs if "/health/detailed" in r)
    assert shlex.join(runtime.reload_nginx_command()) not in runs
    assert any("--keep-until-expiring" in r for r in runs if r.startswith("certbot"))


async def test_compose_deploy_before_the_dns_switch_keeps_plain_http(bundle: Path) -> None:
    """HTTP-01 cannot pass while the name still points at the old host: the app runs on plain HTTP, the deploy
    result says the certificate is pending and why, nginx is not switched to TLS."""
    from timetodo.ops.adapters.acme import Acme

    acme = Acme(domains=("todo.example.com",), email="ops@example.com", webroot="/opt/timetodo/nginx/acme")
    problem = "  Type:   dns\n  Detail: DNS problem: NXDOMAIN looking up A for todo.example.com\n"
    fake = FilesTransport(
        answers={
            "test -s": [CommandResult("", 1, "", "", 0)],
            "certbot certonly": [CommandResult("", 1, problem, "", 0)],
            "/health/detailed": [ok_health(200)],
            **IMAGE_THERE,
        }
    )
    runtime = ComposeRuntime(fake, "/opt/timetodo", bundle_dir=bundle, acme=acme, **PULLED)
    result = await runtime.deploy(compose_env_text(), health_timeout=10)
    assert result.healthy and result.health_url == "http://127.0.0.1/health/detailed"
    certificate = result.image["certificate"]
    assert certificate["status"] == "pending" and "DNS" in certificate["error"]
    assert "timetodo migrate deploy" in certificate["hint"]
    assert "ssl_certificate" not in fake.files["/opt/timetodo/nginx/timetodo.conf"]
    runs = [op[1] for op in fake.ops if op[0] == "run"]
    assert shlex.join(runtime.reload_nginx_command()) not in runs
    assert all("https://" not in r for r in runs if "/health/detailed" in r)


async def test_app_rollback_probes_over_tls_when_nginx_serves_it(bundle: Path) -> None:
    from timetodo.ops.adapters.acme import Acme

    acme = Acme(domains=("todo.example.com",), email="ops@example.com", webroot="/opt/timetodo/nginx/acme")
    record = {"source": "pull", "tag": "ghcr.io/owner/timetodo:2", "id": "sha256:02", "previous_tag": "t:1"}
    fake = FilesTransport(
        answers={"test -s": [CommandResult("", 0, "", "", 0)], "/health/detailed": [ok_health(200)], **IMAGE_THERE},
        files={"/opt/timetodo/.image.json": json.dumps(record), "/opt/timetodo/.env": "PUBLIC_BASE_URL=http://x\n"},
    )
    runtime = ComposeRuntime(fake, "/opt/timetodo", bundle_dir=bundle, acme=acme, **PULLED)
    image = await runtime.rollback_image(health_timeout=5)
    assert image.tag == "t:1" and image.previous_tag == "ghcr.io/owner/timetodo:2"
    probes = [op[1] for op in fake.ops if op[0] == "run" and "/health/detailed" in op[1]]
    assert probes and all("https://todo.example.com/health/detailed" in p for p in probes)
