"""SQLAlchemy 2 async engine, sessions and the declarative base."""

from __future__ import annotations

import contextlib
import os
import ssl
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from timetodo.core.errors import InvalidInput
from timetodo.core.settings import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL; INTEGER on SQLite so that it is the rowid alias and autoincrements.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)


def _asyncpg_url_and_args(url: str) -> tuple[str, dict[str, Any]]:
    """asyncpg does not understand libpq's sslmode/sslrootcert; translate them into connect_args."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    connect_args: dict[str, Any] = {}
    sslmode = query.pop("sslmode", None)
    rootcert = query.pop("sslrootcert", None)
    if sslmode in ("require", "prefer", "allow"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        connect_args["ssl"] = ctx
    elif sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=rootcert)
        ctx.check_hostname = sslmode == "verify-full"
        connect_args["ssl"] = ctx
    elif sslmode == "disable":
        connect_args["ssl"] = False
    clean = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
    return clean, connect_args


def _sqlite_private(path: str) -> None:
    """The database file and its WAL/shared-memory files readable by the app's user only (0600). SQLite creates
    the -wal/-shm files with the database file's mode, so the file is created 0600 before the first connection."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    db = Path(path)
    if not db.exists():
        db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
    for file in (db, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        # a raw NUL, or one JSON-escaped for a JSON column (PostgreSQL refuses both: text cannot hold NUL)
        return "\x00" in value or "\\u0000" in value
    if isinstance(value, list | tuple | dict):
        for item in value.values() if isinstance(value, dict) else value:  # a loop: no generator per call
            if item is not None and not isinstance(item, int | float) and has_nul(item):
                return True
    return False


def _refuse_nul(_conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any, _executemany: bool) -> None:
    """No text with a NUL character reaches the database, on either backend (PostgreSQL cannot store it and
    answered with an error that became a 500; SQLite would store it and make filters misbehave)."""
    if parameters and has_nul(parameters):
        raise InvalidInput("text must not contain the NUL character (\\u0000)")


def _drop_closed_connection(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """Pool checkout with no round trip (instead of `pool_pre_ping`, which costs one per request): asyncpg marks a
    connection closed as soon as the server's FIN reaches the event loop (a restart, `pg_terminate_backend`, an
    idle timeout), so a closed one is swapped for a fresh one here. A connection that died silently (no FIN) fails
    its request once and is replaced; `pool_recycle` bounds how old one can get."""
    if dbapi_conn.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def create_engine(settings: Settings, *, pooled: bool = True) -> AsyncEngine:
    engine = _create_engine(settings, pooled=pooled)
    event.listen(engine.sync_engine, "before_cursor_execute", _refuse_nul)
    return engine


def _create_engine(settings: Settings, *, pooled: bool = True) -> AsyncEngine:
    url = settings.DATABASE_URL
    if settings.is_sqlite:
        path = url.split(":///", 1)[1] if ":///" in url else ""
        path = path.split("?", 1)[0]
        _sqlite_private(path)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "connect", lambda _c, _r: _sqlite_private(path))
        return engine
    clean, connect_args = _asyncpg_url_and_args(url)
    if not pooled:
        return create_async_engine(clean, connect_args=connect_args, poolclass=NullPool)
    engine = create_async_engine(
        clean,
        connect_args=connect_args,
        pool_size=settings.DATABASE_POOL_SIZE,
        max_overflow=settings.DATABASE_MAX_OVERFLOW,
        pool_recycle=1800,
    )
    event.listen(engine.sync_engine, "checkout", _drop_closed_connection)
    _raw_pool_args[engine.sync_engine] = {**connect_args, "min_size": 1, "max_size": settings.DATABASE_POOL_SIZE}
    return engine


# per pooled PostgreSQL engine: how `timetodo.core.rawdb` opens its own asyncpg pool (TLS settings, size)
_raw_pool_args: weakref.WeakKeyDictionary[Engine, dict[str, Any]] = weakref.WeakKeyDictionary()


def raw_connect_args(engine: AsyncEngine) -> dict[str, Any]:
    """`asyncpg.create_pool` arguments reaching the engine's server as the engine does (same URL, credentials,
    TLS settings): a pool of at most `DATABASE_POOL_SIZE` connections, idle ones kept (as the engine's pool)."""
    _args, options = engine.dialect.create_connect_args(engine.url)
    for dialect_only in ("prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback"):
        options.pop(dialect_only, None)
    extra = _raw_pool_args.get(engine.sync_engine, {"min_size": 1, "max_size": 10})
    return {**options, "max_inactive_connection_lifetime": 0, **extra}


class AppSession(AsyncSession):
    """An AsyncSession whose `commit()` can be held: while `hold_commit` is set, `commit()` only flushes, and the
    owner of the transaction (the idempotency middleware) commits once with `commit_held()` — so the business
    write and the bookkeeping that goes with it commit together or not at all."""

    hold_commit: bool = False

    async def commit(self) -> None:
        if self.hold_commit:
            await self.flush()
            return
        await super().commit()

    async def commit_held(self) -> None:
        self.hold_commit = False
        await super().commit()


@dataclass(frozen=True)
class Database:
    """The app's engine and sessionmaker, for services that run one statement directly on PostgreSQL
    (`timetodo.core.rawdb`) and fall back to a session on SQLite."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AppSession, expire_on_commit=False, autoflush=False)


def pool_stats(engine: AsyncEngine) -> dict[str, int]:
    """Checked-out / idle / overflow connections of a QueuePool (zeros for other pools)."""
    pool: Any = engine.sync_engine.pool
    stats = {"size": 0, "checked_out": 0, "idle": 0, "overflow": 0}
    for key, attr in (("size", "size"), ("checked_out", "checkedout"), ("idle", "checkedin")):
        fn = getattr(pool, attr, None)
        if callable(fn):
            stats[key] = int(fn())
    fn = getattr(pool, "overflow", None)
    if callable(fn):
        stats["overflow"] = max(0, int(fn()))
    return stats


__all__ = [
    "AppSession",
    "Base",
    "BigIntPK",
    "Database",
    "TimestampMixin",
    "UTCDateTime",
    "create_engine",
    "create_sessionmaker",
    "pool_stats",
    "utcnow",
]
