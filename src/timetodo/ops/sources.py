"""Where an installation's data lives (`DataSources`) and the only URL code of the toolkit.

A database URL comes in any of the forms the app accepts (`postgres://`, `postgresql+asyncpg://`, SQLAlchemy's
`?ssl=true`); `libpq_url` turns it into the one form libpq tools and asyncpg both read, keeping TLS: `ssl=` becomes
the matching `sslmode=` unless one is given. Passwords are shown only through `mask_url`.
"""

from __future__ import annotations

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
