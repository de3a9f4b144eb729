"""Where an installation's data lives (`DataSources`) and the only URL code of the toolkit.

A database URL comes in any of the forms the app accepts (`postgres://`, `postgresql+asyncpg://`, SQLAlchemy's
`?ssl=true`); `libpq_url` turns it into the one form libpq tools and asyncpg both read, keeping TLS: `ssl=` becomes
the matching `sslmode=` unless one is given. Passwords are shown only through `mask_url`.

`closed_before_login` recognises the signature of an IP allow list in front of a server (the connection is accepted,
then closed before the protocol's greeting — what Render's Postgres and Key Value do for an address not on their
list), and `allow_list_hint` says what to do about it, naming Render's setting when the host is Render's.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from timetodo.core.settings import Settings

_SSL_TO_SSLMODE = {"true": "require", "1": "require", "false": "disable", "0": "disable"}


@dataclass(frozen=True)
class DataSources:
    """The three places an installation keeps data: its database, its Redis (optional) and its upload folder."""

    database_url: str
    redis_url: str | None
    uploads_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> DataSources:
        return cls(settings.DATABASE_URL, settings.REDIS_URL, settings.UPLOAD_DIR)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def libpq_url(url: str) -> str:
    """The database URL as libpq (pg_dump, psql) and asyncpg read it: no driver suffix, `ssl=` as `sslmode=`."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    query = parse_qsl(parts.query, keep_blank_values=True)
    has_sslmode = any(name == "sslmode" for name, _ in query)
    mapped = []
    for name, value in query:
        if name == "ssl":
            if has_sslmode:
                continue
            name, value = "sslmode", _SSL_TO_SSLMODE.get(value, value)
        mapped.append((name, value))
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(mapped), parts.fragment))


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit((parts.scheme, f"{name}:***@{host}", parts.path, parts.query, parts.fragment))


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def via(url: str, host: str, port: int) -> str:
    """The same URL (credentials, database, parameters) reached at `host:port` instead (an SSH tunnel's end)."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_database(url: str, name: str) -> str:
    """The URL of database `name` on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def closed_before_login(exc: BaseException) -> bool:
    """The server accepted the TCP connection, then closed or reset it before answering the first message: an IP
    allow list (or a firewall/proxy) at the edge, not a wrong port (refused) or a wrong password (a server error)."""
    seen: BaseException | None = exc
    for _ in range(3):  # the exception, and what it wraps
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return False
        text = str(seen).lower()
        if isinstance(seen, (ConnectionResetError, ssl.SSLEOFError)) or any(
            marker in text
            for marker in (
                "connection_lost",  # asyncpg: the server hung up during the startup / SSL request
                "closed in the middle of operation",
                "connection closed by server",  # redis-py
                "connection reset by peer",
                "unexpected eof",
                "closed unexpectedly",  # libpq: "SSL connection has been closed unexpectedly"
            )
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def allow_list_hint(url: str) -> str:
    """What to do when `closed_before_login`: add this machine's address to the allow list in front of `url`."""
    host = (urlsplit(url).hostname or "").lower()
    if host.endswith(".render.com"):
        return (
            "the server closed the connection before login: Render's IP allow list does not include this machine "
            "— add its public IP in the Dashboard (the database or Key Value → Networking → Inbound IP rules, or "
            "ipAllowList in render.yaml) and run preflight again"
        )
    return (
        "the server closed the connection before login: an IP allow list or firewall in front of it does not "
        "admit this machine — add its public address there"
    )
