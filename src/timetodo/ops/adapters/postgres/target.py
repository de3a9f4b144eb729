"""A PostgreSQL database as the toolkit reaches it: `PgTarget` (libpq URL + password apart), the client tools, a connection.

The password never reaches a command line: it is taken out of the URL and handed to the tools as PGPASSWORD.
`sslmode` (and the other libpq query parameters) stay in the URL, which both the tools and asyncpg understand.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from timetodo.core.logging import mask_secrets
from timetodo.ops.errors import EXIT_UNREACHABLE, OpsError
from timetodo.ops.sources import allow_list_hint, closed_before_login, libpq_url, mask_url

CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 10.0


class PgError(OpsError):
    """A PostgreSQL tool or query failed; the message is safe to show (no password)."""


class PgUnreachable(PgError):
    """The server could not be reached or refused the login."""

    exit_code = EXIT_UNREACHABLE


QueryError = asyncpg.PostgresError
"""Raised by the query helpers (a statement failed on the server)."""


@dataclass(frozen=True)
class PgTarget:
    """A database as the libpq tools see it: the URL without its password, and the password apart."""

    url: str
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        parts = urlsplit(libpq_url(url))
        password = unquote(parts.password) if parts.password is not None else None
        netloc = parts.netloc.rpartition("@")[2]
        if parts.username is not None:
            netloc = f"{parts.username}@{netloc}"
        return cls(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), password)

    @property
    def dsn(self) -> str:
        """The URL with the password, for in-process drivers only (never for a command line)."""
        if self.password is None:
            return self.url
        from urllib.parse import quote

        parts = urlsplit(self.url)
        user, _, host = parts.netloc.rpartition("@")
        netloc = f"{user}:{quote(self.password, safe='')}@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @property
    def database(self) -> str:
        return unquote(urlsplit(self.url).path.lstrip("/"))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        env.setdefault("PGCONNECT_TIMEOUT", str(int(CONNECT_TIMEOUT)))
        return env

    def scrub(self, text: str) -> str:
        """Remove the password (and any URL credentials) from a message."""
        if self.password:
            text = text.replace(self.password, "***")
        return mask_secrets(text)


def tool(name: str) -> str:
    """Path of a PostgreSQL client tool: $TIMETODO_PG_BIN, else the newest /usr/lib/postgresql/N/bin, else PATH."""
    candidates: list[Path] = []
    if env_dir := os.environ.get("TIMETODO_PG_BIN"):
        candidates.append(Path(env_dir))
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
        reverse=True,
    )
    candidates.extend(versions)
    for folder in candidates:
        if (folder / name).is_file() and os.access(folder / name, os.X_OK):
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise PgError(f"{name} not found: install the PostgreSQL client tools or set TIMETODO_PG_BIN")
    return found


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def connect(target: PgTarget) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(target.dsn, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PgUnreachable(
            f"cannot connect to {mask_url(target.url)}: {target.scrub(str(exc) or type(exc).__name__)}",
            allow_list_hint(target.url) if closed_before_login(exc) else "",
        ) from None
