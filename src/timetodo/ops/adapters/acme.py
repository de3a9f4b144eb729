"""TLS certificates by ACME HTTP-01 with certbot on the host: obtain, renew, install renewal.

The host's nginx serves `/.well-known/acme-challenge/` from `webroot` on port 80 — `timetodo.ops.nginx` renders
that location in every shape, with or without TLS, so a first certificate can be obtained behind a plain-HTTP
configuration and later ones behind the TLS one. certbot (the EFF's well-kept client; `--webroot` mode, no
hand-written JOSE) writes the challenge file there, the CA fetches it over port 80, and the certificate lands in
`<config_dir>/live/<first domain>/fullchain.pem` + `privkey.pem`.

Guarantees:
- `obtain` is idempotent: with a certificate for the same names that is not close to expiry it changes nothing
  (`--keep-until-expiring`), so re-running a deploy never spends the CA's rate limits.
- A failed challenge raises `AcmeError` naming what the CA saw — DNS (the name does not resolve to this host),
  port 80 (refused or timed out) or a wrong answer on port 80 (another server, or nginx without the challenge
  location) — with the fix to make.
- Renewal: `install_renewal` puts a deploy hook in `<config_dir>/renewal-hooks/deploy/`, which certbot runs after
  every successful renewal (whether the distribution's `certbot.timer` or its cron job triggered it), reloading
  nginx so the renewed certificate is served without a restart. It also reports which scheduler will run
  `certbot renew` on that host (the systemd timer, or cron where there is no systemd).
- Nothing secret passes through here: the ACME account key stays in `config_dir`, created by certbot (0700).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from timetodo.ops.adapters.nginx import DEFAULT_ACME_WEBROOT
from timetodo.ops.adapters.transport import Transport
from timetodo.ops.errors import EXIT_UNREACHABLE, OpsError

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
HOOK_NAME = "timetodo-reload.sh"
CERTBOT_TIMEOUT = 300.0

_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


# how CAs word a name that does not resolve (Let's Encrypt: "DNS problem: NXDOMAIN…"; pebble: "could not resolve")
_DNS_TROUBLE = re.compile(r"DNS problem|NXDOMAIN|could not resolve|no valid A|SERVFAIL", re.IGNORECASE)


class AcmeError(OpsError):
    """A certificate could not be obtained or renewed; `hint` says what to fix."""

    exit_code = EXIT_UNREACHABLE


@dataclass(frozen=True, kw_only=True)
class Acme:
    """Where certbot runs and what it asks for. `ca_bundle` is only for a private ACME server (tests: pebble)."""

    domains: tuple[str, ...]
    email: str
    webroot: str = DEFAULT_ACME_WEBROOT
    server: str = LETS_ENCRYPT
    config_dir: str = "/etc/letsencrypt"
    work_dir: str = "/var/lib/letsencrypt"
    logs_dir: str = "/var/log/letsencrypt"
    ca_bundle: str | None = None
    certbot: str = "certbot"
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.domains:
            raise ValueError("domains: at least one name is needed")
        for name in self.domains:
            if not _HOSTNAME.match(name) or name.rsplit(".", 1)[-1].isdigit():
                raise ValueError(f"domains: {name!r} is not a DNS name (ACME HTTP-01 cannot certify an IP address)")
        if not _EMAIL.match(self.email):
            raise ValueError(f"email: {self.email!r} is not an e-mail address")

    @property
    def live_dir(self) -> str:
        return f"{self.config_dir}/live/{self.domains[0]}"

    @property
    def certificate(self) -> str:
        return f"{self.live_dir}/fullchain.pem"

    @property
    def private_key(self) -> str:
        return f"{self.live_dir}/privkey.pem"

    @property
    def hook_path(self) -> str:
        return f"{self.config_dir}/renewal-hooks/deploy/{HOOK_NAME}"

    def env(self) -> dict[str, str]:
        return {**({"REQUESTS_CA_BUNDLE": self.ca_bundle} if self.ca_bundle else {}), **self.extra_env}

    def _common(self) -> list[str]:
        return [
            "--non-interactive",
            "--server", self.server,
            "--config-dir", self.config_dir,
            "--work-dir", self.work_dir,
            "--logs-dir", self.logs_dir,
        ]  # fmt: skip

    def certonly_command(self, *, force_renewal: bool = False) -> list[str]:
        command = [self.certbot, "certonly", *self._common(), "--webroot", "-w", self.webroot]
        for name in self.domains:
            command += ["-d", name]
        command += ["--agree-tos", "-m", self.email, "--cert-name", self.domains[0]]
        command.append("--force-renewal" if force_renewal else "--keep-until-expiring")
        return command

    def renew_command(self, *, force_renewal: bool = False, now: bool = False) -> list[str]:
        """`now`: skip certbot's random delay of up to 8 minutes (wanted in the scheduled job, not when asked)."""
        command = [self.certbot, "renew", *self._common(), "--cert-name", self.domains[0]]
        command += ["--no-random-sleep-on-renew"] if now else []
        return [*command, "--force-renewal"] if force_renewal else command


@dataclass(frozen=True)
class Certificate:
    path: str
    key_path: str
    serial: str
    not_after: str
    renewal_scheduler: str = ""


def explain_failure(output: str, acme: Acme) -> AcmeError:
    """The CA's problem, as certbot printed it, turned into one line and the fix."""
    kind = re.search(r"^\s*Type:\s*(\S+)", output, re.MULTILINE)
    detail = re.search(r"^\s*Detail:\s*(.+)", output, re.MULTILINE)
    last_lines = output.strip().splitlines()[-1:] or ["no output"]
    what = detail.group(1).strip() if detail else last_lines[0]
    names = ", ".join(acme.domains)
    problem = kind.group(1).lower() if kind else ""
    if problem == "dns" or _DNS_TROUBLE.search(what):
        return AcmeError(
            f"ACME challenge failed for {names}: DNS: {what}",
            hint=f"point the DNS record of {names} (A/AAAA) at this host, wait for it to propagate, then retry",
        )
    if problem == "connection" or re.search(r"Connection refused|Timeout|timed out", output):
        return AcmeError(
            f"ACME challenge failed for {names}: port 80 is not reachable: {what}",
            hint="open port 80 to the world (ufw allow 80/tcp, the provider's firewall) and make sure nginx "
            "listens on it; HTTP-01 always connects to port 80",
        )
    if problem in ("unauthorized", "incorrectresponse") or "Invalid response" in output:
        return AcmeError(
            f"ACME challenge failed for {names}: port 80 answered, but not with the challenge: {what}",
            hint=f"port 80 must reach this host's nginx, which serves /.well-known/acme-challenge/ from "
            f"{acme.webroot}; check that DNS points here and that no other server answers on port 80",
        )
    return AcmeError(f"certbot failed for {names}: {what}", hint=f"see {acme.logs_dir}/letsencrypt.log on the host")


async def obtain(transport: Transport, acme: Acme, *, force_renewal: bool = False) -> Certificate:
    """Obtain (or keep) the certificate for `acme.domains`; nginx must already serve the challenge location."""
    await transport.run(["mkdir", "-p", acme.webroot], timeout=30)
    result = await transport.run(
        acme.certonly_command(force_renewal=force_renewal), timeout=CERTBOT_TIMEOUT, env=acme.env(), check=False
    )
    if not result.ok:
        raise explain_failure(result.stdout + "\n" + result.stderr, acme)
    return await inspect(transport, acme)


async def renew(transport: Transport, acme: Acme, *, force_renewal: bool = False) -> Certificate:
    """What the scheduled job does (`certbot renew`, deploy hooks included), run now."""
    result = await transport.run(
        acme.renew_command(force_renewal=force_renewal, now=True), timeout=CERTBOT_TIMEOUT, env=acme.env(), check=False
    )
    if not result.ok:
        raise explain_failure(result.stdout + "\n" + result.stderr, acme)
    return await inspect(transport, acme)


async def inspect(transport: Transport, acme: Acme) -> Certificate:
    """Serial and expiry of the certificate in `acme.live_dir`."""
    result = await transport.run(
        ["openssl", "x509", "-noout", "-serial", "-enddate", "-in", acme.certificate], timeout=30
    )
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return Certificate(acme.certificate, acme.private_key, fields.get("serial", ""), fields.get("notAfter", ""))


async def install_renewal(
    transport: Transport, acme: Acme, reload_command: str, *, cron_dir: str = "/etc/cron.d"
) -> str:
    """Install the deploy hook that reloads nginx after each renewal, and make sure something runs
    `certbot renew`: the distribution's `certbot.timer` or cron job when certificates live in the default
    `config_dir`, otherwise (or when the host has neither) a cron line of our own. Returns which one."""
    hook = f"#!/bin/sh\n# installed by timetodo: serve a renewed certificate without a restart\nexec {reload_command}\n"
    await transport.run(["mkdir", "-p", acme.hook_path.rsplit("/", 1)[0]], timeout=30)
    await transport.write_text(acme.hook_path, hook, mode=0o755)
    if acme.config_dir == Acme.config_dir:
        probe = (
            "if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] "
            "&& systemctl list-unit-files certbot.timer >/dev/null 2>&1; then echo 'certbot.timer (systemd)'; "
            f"elif [ -f {shlex.quote(cron_dir)}/certbot ]; then echo 'cron ({cron_dir}/certbot)'; fi"
        )
        scheduler = (await transport.run(probe, timeout=30)).stdout.strip()
        if scheduler:
            return scheduler
    cron_file = f"{cron_dir}/timetodo-certbot"
    await transport.write_text(cron_file, f"17 3,15 * * * root {shlex.join(acme.renew_command())} -q\n", mode=0o644)
    return f"cron ({cron_file})"
