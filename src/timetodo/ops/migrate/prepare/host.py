"""`timetodo migrate prepare`: make a fresh Ubuntu 22.04 / Debian 12 host ready for the app, idempotently.

`prepare_script()` renders one bash script (`prepare.sh` next to this module, its parameters filled in); `run_prepare()` runs it on the target through a `Transport` (`bash -s`
with the script on stdin, under `sudo -n` when the SSH user is not root) and parses what it printed.

The script checks every item first and changes only what is missing, so a second run changes nothing. It prints one
machine-readable line per item on stdout (tool output goes to stderr):

    PREPARE <item> ok|changed|failed|skipped (<why>) <detail>
    CHECK <item> ok|failed|skipped (<why>) <detail>

Items, in order: `os`; `docker-repo` (docker-ce only: Docker's apt repository, key in /etc/apt/keyrings, the
distribution's codename from /etc/os-release) and `docker` (`docker = "docker-ce"`: Docker CE + the compose plugin;
`"distro"`: the distribution's docker.io + docker-compose-v2, or docker-compose where that is the release's only
compose); `docker-service`; `deploy-user` (exists, in the docker group); `ssh-hardening` (a drop-in in
/etc/ssh/sshd_config.d: keys only, root only with a key; checked by `sshd -t` before it stays); `sshd-reload`;
`app-dir` (owned by the deploy user, 0750); `firewall` (ufw: default deny incoming; SSH port, 80, 443 allowed);
`firewall-active` (ufw enabled); `swap` (a formatted swap file in /etc/fstab when RAM < min_ram_mb) and
`swap-active`; `fail2ban` (package + sshd jail) and `fail2ban-service`; `unattended-upgrades`; `certbot` (deploy obtains the TLS certificate with it). Then the
self-check: `docker`, `compose`, `ssh` (sshd's effective configuration), `ufw` (active with exactly those ports),
`db-ports` (nothing listening on 0.0.0.0/[::] :5432 or :6379, nor published so by a container), `swap`,
`fail2ban`, `unattended-upgrades` (its systemd timer).

What a host without systemd (a chroot, a plain container) cannot do is `skipped (no systemd)`: enabling/starting
units, and the checks that need them running. What needs the host's own kernel is `skipped (container)` inside a
chroot or container: `ufw enable` (loading rules), `swapon`. Skipped is never `ok` and never a failure: the
report says what is left for a real boot.

There is no `set -e`: an item that fails records its own failure and the next items still run; the exit status is
1 when anything failed. Rules in ufw other than the three ports are reported by the self-check, never deleted
(they may be someone's deliberate choice, and deleting the wrong one can lock the operator out).

`TTD_PREPARE_ROOT` (tests only; empty on a real host) is put in front of every file path the script reads or
writes (/etc/os-release, /etc/apt/..., /etc/ssh/..., /etc/fstab, /swapfile, /etc/fail2ban/..., /run/systemd, the
app directory).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from timetodo.ops.adapters.transport import Transport

Phase = Literal["prepare", "check"]
Status = Literal["ok", "changed", "failed", "skipped"]
DockerSource = Literal["docker-ce", "distro"]

MIN_RAM_MB = 2048
DOCKER_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin")
DOCKER_CONFLICTS = (
    "docker.io",
    "docker-doc",
    "docker-compose",
    "docker-compose-v2",
    "podman-docker",
    "containerd",
    "runc",
)
PUBLIC_DB_PORTS = (5432, 6379)

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_APP_DIR = re.compile(r"^/[A-Za-z0-9._/-]+$")
_LINE = re.compile(r"^(PREPARE|CHECK) (\S+) (ok|changed|failed|skipped \(([^)]*)\))(?: (.*))?$")


# ---------------------------------------------------------------------------------------------------------- script


def prepare_script(
    *,
    app_dir: str,
    deploy_user: str = "deploy",
    swap_mb: int = 2048,
    ssh_port: int = 22,
    docker: DockerSource = "docker-ce",
    min_ram_mb: int = MIN_RAM_MB,
) -> str:
    """The bash script that prepares the host (see the module docstring). Raises ValueError on a bad argument.

    `docker`: where Docker comes from (Docker's apt repository, or the distribution's packages); `min_ram_mb`: below
    this much RAM the host gets a swap file of `swap_mb`."""
    app_dir = app_dir.rstrip("/") or "/"
    if not _APP_DIR.match(app_dir) or app_dir == "/" or "/../" in f"{app_dir}/" or "//" in app_dir:
        raise ValueError(f"app_dir must be an absolute path below / without '..' (got {app_dir!r})")
    if not _USER.match(deploy_user) or deploy_user == "root":
        raise ValueError(f"deploy_user must be a plain user name other than root (got {deploy_user!r})")
    if not 256 <= swap_mb <= 65536:
        raise ValueError(f"swap_mb must be between 256 and 65536 (got {swap_mb})")
    if not 1 <= ssh_port <= 65535:
        raise ValueError(f"ssh_port must be between 1 and 65535 (got {ssh_port})")
    if docker not in ("docker-ce", "distro"):
        raise ValueError(f"docker must be 'docker-ce' or 'distro' (got {docker!r})")
    if not 0 <= min_ram_mb <= 16 * 1024 * 1024:
        raise ValueError(f"min_ram_mb must be between 0 and 16777216 (got {min_ram_mb})")
    header = "\n".join(
        [
            f"APP_DIR_PATH={shlex.quote(app_dir)}",
            f"DEPLOY_USER={shlex.quote(deploy_user)}",
            f"SWAP_MB={swap_mb}",
            f"SSH_PORT={ssh_port}",
            f"MIN_RAM_MB={min_ram_mb}",
            f"DOCKER_SOURCE={docker}",
            f"DOCKER_PKGS=({' '.join(DOCKER_PACKAGES)})",
            f"DOCKER_CE_PKGS=({' '.join(DOCKER_PACKAGES[:3])})",
            f"DOCKER_CONFLICTS=({' '.join(DOCKER_CONFLICTS)})",
            f"DB_PORTS_RE='{'|'.join(str(p) for p in PUBLIC_DB_PORTS)}'",
        ]
    )
    return _script().replace("@PARAMETERS@", header)


# ---------------------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class PrepareItem:
    phase: Phase
    name: str
    status: Status
    detail: str = ""
    reason: str = ""
    """Why a `skipped` item was skipped: `no systemd` or `container`."""

    @property
    def label(self) -> str:
        """The status as printed: `ok`, `changed`, `failed`, `skipped (no systemd)`."""
        return f"skipped ({self.reason})" if self.status == "skipped" else self.status

    def to_dict(self) -> dict[str, str]:
        found = {"phase": self.phase, "name": self.name, "status": self.status, "detail": self.detail}
        if self.status == "skipped":
            found["reason"] = self.reason
        return found


@dataclass
class PrepareResult:
    """What the prepare script reported: its items in order, the exit status and the tail of its stderr."""

    items: list[PrepareItem] = field(default_factory=list)
    exit_status: int | None = None
    stderr_tail: str = ""
    host: str = ""

    @property
    def ok(self) -> bool:
        """No item failed and the script finished with status 0 (when it ran)."""
        return not self.failed and self.exit_status in (0, None)

    @property
    def changed(self) -> list[PrepareItem]:
        return [i for i in self.items if i.status == "changed"]

    @property
    def failed(self) -> list[PrepareItem]:
        return [i for i in self.items if i.status == "failed"]

    @property
    def skipped(self) -> list[PrepareItem]:
        return [i for i in self.items if i.status == "skipped"]

    @property
    def unchanged(self) -> list[PrepareItem]:
        return [i for i in self.items if i.status == "ok"]

    def item(self, name: str, phase: Phase = "prepare") -> PrepareItem | None:
        return next((i for i in self.items if i.name == name and i.phase == phase), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "ok": self.ok,
            "exit_status": self.exit_status,
            "changed": [i.name for i in self.changed],
            "failed": [f"{i.phase}:{i.name}" for i in self.failed],
            "skipped": [f"{i.phase}:{i.name} ({i.reason})" for i in self.skipped],
            "items": [i.to_dict() for i in self.items],
        }

    def render(self, console: Console) -> None:
        """A table of every item (green ok, yellow changed, red failed)."""
        title = f"prepare {self.host}".strip()
        table = Table(title=title, show_lines=False)
        table.add_column("phase")
        table.add_column("item")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        colors = {"ok": "green", "changed": "yellow", "failed": "bold red", "skipped": "cyan"}
        for item in self.items:
            table.add_row(item.phase, item.name, f"[{colors[item.status]}]{item.label}[/]", item.detail)
        console.print(table)
        if self.failed:
            console.print(f"[bold red]{len(self.failed)} item(s) failed[/]")
        elif self.changed:
            console.print(f"[yellow]{len(self.changed)} item(s) changed[/], the rest was already in place")
        else:
            console.print("[green]nothing to change: the host was already prepared[/]")
        if self.skipped:
            console.print(
                f"[cyan]{len(self.skipped)} item(s) skipped[/]: this system has no systemd or shares its kernel; "
                "they take effect on the real host's boot"
            )


def parse_prepare_output(text: str) -> PrepareResult:
    """The `PREPARE`/`CHECK` lines of the script's output as items; every other line is ignored."""
    items: list[PrepareItem] = []
    for line in text.splitlines():
        match = _LINE.match(line.rstrip("\r"))
        if match is None:
            continue
        kind, name, status, reason, detail = match.groups()
        phase: Phase = "prepare" if kind == "PREPARE" else "check"
        if reason is not None:
            status = "skipped"
        items.append(PrepareItem(phase, name, status, (detail or "").strip(), reason or ""))  # type: ignore[arg-type]
    return PrepareResult(items=items)


async def run_prepare(
    transport: Transport,
    script: str,
    *,
    timeout: float = 1800,  # noqa: ASYNC109 - the deadline of the remote script, enforced by the transport
    env: dict[str, str] | None = None,
) -> PrepareResult:
    """Run `script` on the host (`bash -s`, under `sudo -n` when the user is not root) and parse its report.

    The script's own failures come back as failed items (never raised); when it could not run at all (no sudo,
    no bash) a failed `script` item carries the error. Transport errors (connection, timeout) are raised.
    """
    uid = (await transport.run("id -u", timeout=30)).stdout.strip()
    command = "bash -s"
    if uid != "0":
        keep = ",".join(sorted(env)) if env else ""
        command = f"sudo -n --preserve-env={keep} bash -s" if keep else "sudo -n bash -s"
    result = await transport.run(command, input=script.encode(), timeout=timeout, env=env, check=False)
    parsed = parse_prepare_output(result.stdout)
    parsed.exit_status = result.exit_status
    parsed.stderr_tail = "\n".join(result.stderr.rstrip().splitlines()[-20:])
    parsed.host = transport.describe()
    if result.exit_status != 0 and not parsed.failed:
        last = parsed.stderr_tail.splitlines()[-1] if parsed.stderr_tail else "no output"
        hint = " (the SSH user needs passwordless sudo)" if uid != "0" else ""
        parsed.items.append(
            PrepareItem("prepare", "script", "failed", f"`{command}` exited {result.exit_status}: {last}{hint}")
        )
    return parsed


def _script() -> str:
    return resources.files(__package__).joinpath("prepare.sh").read_text()
