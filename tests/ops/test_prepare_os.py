"""`timetodo migrate prepare` on a real operating system (issue 12 item 4).

The target is a debootstrapped Debian 12 (scripts/vps-rootfs.sh: scripts/rootfs.sh plus what a provider's image
holds: openssh-server, sudo, curl, iproute2, procps), unpacked into a temp dir. Its own sshd runs chrooted into it
inside a network namespace of this test, on 127.0.0.1:22 of that namespace; the `timetodo migrate prepare` CLI runs
in the same namespace (`ip netns exec`), so every connection stays on the namespace's loopback. Nothing is stubbed:
the script installs docker.io, docker-compose, ufw, fail2ban and unattended-upgrades with the chroot's apt from
deb.debian.org, creates the deploy user, writes the SSH, ufw, fail2ban and apt files, creates and formats the swap
file. The namespace has no route out: its apt reaches deb.debian.org through a relay (socat: 127.0.0.1:3142 in the
namespace -> a unix socket -> deb.debian.org:80 from the root namespace), set as the chroot's apt proxy. Downloaded
.debs are kept in /var/cache/timetodo/apt-archives-debian12 (bind-mounted as the chroot's apt archive), so later
runs install from there.

What a chroot cannot do is checked to be reported `skipped (no systemd)` (units) / `skipped (container)` (swapon,
loading the firewall into the kernel), never `ok`, and checked not to have happened on this machine (/proc/swaps).
A second run reports every item `ok` or the same `skipped`, and the files it manages are byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

TIMETODO = str(Path(sys.executable).parent / "timetodo")
APT_CACHE = Path(os.environ.get("TIMETODO_CACHE", "/var/cache/timetodo")) / "apt-archives-debian12"
RELAY_PORT = 3142
SWAP_MB = 256

# what prepare manages on the host: compared byte for byte (and mode/owner) before and after the second run
MANAGED = [
    "etc/ssh/sshd_config.d/10-timetodo.conf",
    "etc/fail2ban/jail.d/timetodo-sshd.local",
    "etc/apt/apt.conf.d/20auto-upgrades",
    "etc/default/ufw",
    "etc/ufw/user.rules",
    "etc/ufw/user6.rules",
    "etc/fstab",
    "etc/passwd",
    "etc/group",
    "etc/shadow",
    "swapfile",
    "opt/timetodo",
    "var/lib/dpkg/status",
]
SKIPPED_PREPARE = {
    "docker-service": "no systemd",
    "sshd-reload": "no systemd",
    "firewall-active": "container",
    "swap-active": "container",
    "fail2ban-service": "no systemd",
}
SKIPPED_CHECK = {"docker": "no systemd", "ufw": "container", "swap": "container", "fail2ban": "no systemd"}
SKIPPED_CHECK["unattended-upgrades"] = "no systemd"


def _missing_tools() -> str:
    if os.geteuid() != 0:
        return "needs root (chroot, network namespaces, mounts)"
    for tool in ("ip", "socat", "chroot", "unshare", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/test.sh installs it)"
    return ""


@dataclass
class Vps:
    root: Path
    netns: str
    key: Path
    known_hosts: Path

    def chroot(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["chroot", str(self.root), *args], capture_output=True, text=True, timeout=60)

    def in_netns(self, *args: str, env: dict[str, str] | None = None, timeout: float = 900) -> Any:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *args], capture_output=True, text=True, env=env, timeout=timeout
        )

    def snapshot(self) -> dict[str, tuple[int, int, int, str]]:
        found = {}
        for name in MANAGED:
            path = self.root / name
            info = path.lstat()
            digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            found[name] = (info.st_mode, info.st_uid, info.st_gid, digest)
        return found


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def vps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vps]:
    why = _missing_tools()
    if why:
        pytest.skip(why)
    built = subprocess.run(["bash", str(ROOT / "scripts" / "vps-rootfs.sh")], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"scripts/vps-rootfs.sh failed: {built.stderr[-2000:]}")
    tarball = built.stdout.strip().splitlines()[-1]

    base = tmp_path_factory.mktemp("vps")
    root = base / "root"
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xf", tarball, "-C", str(root)], check=True)
    # a provider's image: host keys made at first boot, the operator's key for root
    assert subprocess.run(["chroot", str(root), "ssh-keygen", "-A"], capture_output=True).returncode == 0
    key = base / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    (root / "root/.ssh/authorized_keys").write_text((base / "id_ed25519.pub").read_text())
    (root / "root/.ssh/authorized_keys").chmod(0o600)
    host_key = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"127.0.0.1 {host_key[0]} {host_key[1]}\n")
    # this test machine's stand-in for the VPS's network: apt goes through the relay below
    (root / "etc/apt/apt.conf.d/00timetodo-test-proxy").write_text(
        f'Acquire::http::Proxy "http://127.0.0.1:{RELAY_PORT}/";\n'
    )
    APT_CACHE.mkdir(parents=True, exist_ok=True)
    # test sessions of other worktrees share the package cache (and its apt lock): one at a time
    lock = (APT_CACHE.parent / ".apt-archives-debian12.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)

    netns = f"ttd-vps-{os.getpid()}"
    sock = base / "apt-relay.sock"
    procs: list[subprocess.Popen[bytes]] = []
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        # root namespace: unix socket -> deb.debian.org:80 (apt sends absolute-form proxy requests, which the mirror
        # answers like any HTTP/1.1 server); namespace: 127.0.0.1:3142 -> that socket
        procs.append(
            subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", "TCP:deb.debian.org:80"], stderr=subprocess.DEVNULL
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    "ip", "netns", "exec", netns, "socat",
                    f"TCP-LISTEN:{RELAY_PORT},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{sock}",
                ],
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        # the "boot": `ip netns exec` gives a private mount namespace, so these mounts vanish with its processes
        boot = (
            f"set -e; R={root}; mount -t proc proc $R/proc; mount --bind /dev $R/dev; "
            f"mount --bind {APT_CACHE} $R/var/cache/apt/archives; mkdir -p $R/run/sshd; "
            "exec chroot $R /usr/sbin/sshd -D -e -o ListenAddress=127.0.0.1 -o Port=22 -o UsePAM=no"
        )
        log = (base / "sshd.log").open("wb")
        procs.append(subprocess.Popen(["ip", "netns", "exec", netns, "sh", "-c", boot], stderr=log, stdout=log))
        vps = Vps(root, netns, key, known_hosts)
        wait = "for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
        if vps.in_netns("bash", "-c", wait, timeout=30).returncode != 0:
            pytest.fail(f"the chroot's sshd did not start: {(base / 'sshd.log').read_text()[-2000:]}")
        yield vps
    finally:
        for proc in reversed(procs):
            _stop(proc)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        with contextlib.suppress(OSError):
            sock.unlink()
        # the mounts lived in the sshd's mount namespace (gone with it): here these are plain directories
        assert not os.path.ismount(root / "dev") and not os.path.ismount(root / "proc")
        shutil.rmtree(root, ignore_errors=True)
        lock.close()


def _config(vps: Vps, work: Path) -> Path:
    config = work / "migration.toml"
    config.write_text(
        f"""
work_dir = "work"

[source]
api_url = "https://old.example.com"
admin_token_env = "TTD_TEST_ADMIN_TOKEN"
database_url_env = "TTD_TEST_SOURCE_DB"

[target]
host = "127.0.0.1"
port = 22
user = "root"
key_file = "{vps.key}"
known_hosts = "{vps.known_hosts}"
public_url = "https://todo.example.com"
runtime = "compose"
database_url_env = "TTD_TEST_TARGET_DB"

[prepare]
docker = "distro"
swap_mb = {SWAP_MB}
min_ram_mb = 16777216   # more than any test machine has: the swap file path runs
"""
    )
    return config


def _prepare(vps: Vps, config: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(config.parent),
        "TTD_TEST_ADMIN_TOKEN": "not-used-by-prepare",
        "TTD_TEST_SOURCE_DB": "postgresql://u@127.0.0.1:1/src",
        "TTD_TEST_TARGET_DB": "postgresql://u@127.0.0.1:1/dst",
        "COLUMNS": "200",
    }
    result = vps.in_netns(TIMETODO, "migrate", "prepare", "-c", str(config), env=env)
    state = json.loads((config.parent / "work" / "state.json").read_text())
    return result, state["steps"]["prepare"]


def _items(step: dict[str, Any], phase: str) -> dict[str, tuple[str, str]]:
    items = step.get("result", {}).get("items", [])
    return {i["name"]: (i["status"], i.get("reason", "")) for i in items if i["phase"] == phase}


def _swaps() -> str:
    return Path("/proc/swaps").read_text()


def test_prepare_twice_on_debian_12(vps: Vps, tmp_path: Path) -> None:
    config = _config(vps, tmp_path)
    swaps_before = _swaps()

    started = time.monotonic()
    first, step = _prepare(vps, config)
    first_seconds = time.monotonic() - started
    assert first.returncode == 0, (first.stderr[-4000:], step)
    prepare = _items(step, "prepare")
    check = _items(step, "check")
    assert list(prepare) == [
        "os",
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
    for name, (status, reason) in prepare.items():
        if name in SKIPPED_PREPARE:
            assert (status, reason) == ("skipped", SKIPPED_PREPARE[name]), name
        elif name == "os":
            assert status == "ok"
        else:
            assert status == "changed", (name, step)
    for name, (status, reason) in check.items():
        expected = ("skipped", SKIPPED_CHECK[name]) if name in SKIPPED_CHECK else ("ok", "")
        assert (status, reason) == expected, (name, step)
    assert set(check) == {*SKIPPED_CHECK, "compose", "ssh", "db-ports"}
    assert "skipped (no systemd)" in first.stderr and "skipped (container)" in first.stderr  # the rendered table

    # what is on the "VPS" now, seen from outside
    root = vps.root
    for package in (
        "docker.io",
        "docker-compose",
        "ufw",
        "fail2ban",
        "python3-systemd",
        "unattended-upgrades",
        "certbot",
    ):
        assert "Status: install ok installed" in vps.chroot("dpkg", "-s", package).stdout, package
    assert "deploy" in vps.chroot("getent", "group", "docker").stdout.strip().split(":")[-1].split(",")
    app = root / "opt/timetodo"
    assert oct(app.stat().st_mode & 0o777) == "0o750"
    assert vps.chroot("stat", "-c", "%U", "/opt/timetodo").stdout.strip() == "deploy"
    sshd = vps.chroot("/usr/sbin/sshd", "-T").stdout
    assert "passwordauthentication no" in sshd and "permitrootlogin without-password" in sshd
    assert "kbdinteractiveauthentication no" in sshd
    assert 'DEFAULT_INPUT_POLICY="DROP"' in (root / "etc/default/ufw").read_text()
    rules = (root / "etc/ufw/user.rules").read_text()
    for port in (22, 80, 443):
        assert f"-A ufw-user-input -p tcp --dport {port} -j ACCEPT" in rules
    assert "ENABLED=no" in (root / "etc/ufw/ufw.conf").read_text()  # never loaded here (container)
    swapfile = root / "swapfile"
    assert swapfile.stat().st_size == SWAP_MB * 1024 * 1024 and oct(swapfile.stat().st_mode & 0o777) == "0o600"
    with swapfile.open("rb") as handle:
        assert handle.read(4096)[-10:] == b"SWAPSPACE2"
    assert "/swapfile none swap sw 0 0" in (root / "etc/fstab").read_text().splitlines()
    assert "port = 22\nbackend = systemd" in (root / "etc/fail2ban/jail.d/timetodo-sshd.local").read_text()
    assert 'Unattended-Upgrade "1"' in (root / "etc/apt/apt.conf.d/20auto-upgrades").read_text()
    assert _swaps() == swaps_before  # nothing was switched on in this machine's kernel

    # second run: nothing to do, nothing touched
    before = vps.snapshot()
    started = time.monotonic()
    second, step = _prepare(vps, config)
    second_seconds = time.monotonic() - started
    assert second.returncode == 0, (second.stderr[-4000:], step)
    again = _items(step, "prepare")
    assert list(again) == list(prepare)
    assert {n: s for n, s in again.items() if n not in SKIPPED_PREPARE} == dict.fromkeys(
        [n for n in prepare if n not in SKIPPED_PREPARE], ("ok", "")
    )
    assert {n: s for n, s in again.items() if n in SKIPPED_PREPARE} == {
        n: ("skipped", r) for n, r in SKIPPED_PREPARE.items()
    }
    assert _items(step, "check") == check
    assert step["result"]["changed"] == [] and step["result"]["failed"] == []
    assert "nothing to change" in second.stderr
    assert vps.snapshot() == before
    assert _swaps() == swaps_before
    print(f"prepare on Debian 12 (chroot): first run {first_seconds:.1f} s, second run {second_seconds:.1f} s")
