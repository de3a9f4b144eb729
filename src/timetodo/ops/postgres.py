"""PostgreSQL adapters over a libpq URL: pg_dump / pg_restore subprocesses, exported snapshots, exact row counts.

The password never reaches a command line: it is taken out of the URL and handed to the tools as PGPASSWORD.
`sslmode` (and the other libpq query parameters) stay in the URL, which both the tools and asyncpg understand.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from timetodo.core.logging import mask_secrets
from timetodo.core.settings import libpq_url

CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 10.0


class PgError(RuntimeError):
    """A PostgreSQL tool or query failed; the message is safe to show (no password)."""


class PgUnreachable(PgError):
    """The server could not be reached or refused the login."""


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


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit((parts.scheme, f"{name}:***@{host}", parts.path, parts.query, parts.fragment))


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
            f"cannot connect to {mask_url(target.url)}: {target.scrub(str(exc) or type(exc).__name__)}"
        ) from None


_TABLES_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
"""


async def list_tables(conn: asyncpg.Connection) -> list[str]:
    """Tables of the public schema (partitioned tables once, not their partitions)."""
    return [str(row[0]) for row in await conn.fetch(_TABLES_SQL)]


async def count_rows(conn: asyncpg.Connection, tables: Iterable[str] | None = None) -> dict[str, int]:
    """Exact COUNT(*) of every table of the public schema (or of `tables`)."""
    names = await list_tables(conn) if tables is None else list(tables)
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = int(await conn.fetchval(f"SELECT count(*) FROM public.{quote_ident(name)}"))  # noqa: S608
    return counts


async def tables_with_rows(conn: asyncpg.Connection, ignore: Iterable[str] = ()) -> list[str]:
    """Tables (other than `ignore`) holding at least one row."""
    skip = set(ignore)
    found = []
    for name in await list_tables(conn):
        query = f"SELECT EXISTS (SELECT 1 FROM public.{quote_ident(name)})"  # noqa: S608
        if name not in skip and await conn.fetchval(query):
            found.append(name)
    return found


async def fetch_optional(conn: asyncpg.Connection, sql: str, table: str) -> Any:
    """Run `sql` when `table` exists in the public schema; None otherwise."""
    if await conn.fetchval("SELECT to_regclass($1)", f"public.{quote_ident(table)}") is None:
        return None
    return await conn.fetchval(sql)


async def drop_tables(conn: asyncpg.Connection, tables: Iterable[str]) -> None:
    for name in tables:
        await conn.execute(f"DROP TABLE IF EXISTS public.{quote_ident(name)} CASCADE")


@contextlib.asynccontextmanager
async def exported_snapshot(target: PgTarget) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A repeatable-read transaction whose snapshot pg_dump can share (`--snapshot`): counts taken on the yielded
    connection describe exactly the data pg_dump writes, even while the application keeps writing."""
    conn = await connect(target)
    try:
        tx = conn.transaction(isolation="repeatable_read", readonly=True)
        await tx.start()
        try:
            snapshot = str(await conn.fetchval("SELECT pg_export_snapshot()"))
            yield conn, snapshot
        finally:
            await tx.rollback()
    finally:
        await conn.close()


def _last_lines(path: Path, target: PgTarget, limit: int = 3) -> str:
    lines = [ln for ln in path.read_text("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
    return target.scrub(" | ".join(errors[-limit:]))[:600]


def dump(
    target: PgTarget,
    write: Callable[[bytes], Any],
    snapshot: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """`pg_dump -Fc` of the database, streamed to `write` (no intermediate file). `pg_restore` reads such a dump
    from a file or a pipe, also in parallel (`-j`)."""
    args = [tool("pg_dump"), "--format=custom"]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    args.append(f"--dbname={target.url}")
    with tempfile.TemporaryDirectory(prefix="ttd-pg-") as tmp:
        errlog = Path(tmp) / "stderr"
        with errlog.open("wb") as err:
            proc = subprocess.Popen(
                args, env=target.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
            assert proc.stdout is not None
            try:
                while chunk := proc.stdout.read(CHUNK):
                    write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
            except BaseException:
                proc.kill()
                raise
            finally:
                proc.stdout.close()
                rc = proc.wait()
        if rc != 0:
            raise PgError(f"pg_dump failed (exit {rc}): {_last_lines(errlog, target)}")


def _feed(
    proc: subprocess.Popen[bytes],
    src: IO[bytes],
    on_bytes: Callable[[int], None] | None,
    expected_sha256: str | None,
) -> tuple[str, bool]:
    """Copy `src` into the process' stdin, hashing it. The last chunk is held back until the whole digest is known:
    on a mismatch it is never sent, so a restore cannot reach its COMMIT. Returns (sha256, fully_sent)."""
    assert proc.stdin is not None
    digest = hashlib.sha256()
    sent_all = True
    pending = src.read(CHUNK)
    while pending:
        digest.update(pending)
        following = src.read(CHUNK)
        if not following and expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            # keep stdin open: the caller kills the process before it could see an end of input
            return digest.hexdigest(), False
        try:
            proc.stdin.write(pending)
        except BrokenPipeError:
            # the tool stopped reading (pg_restore --list needs only the table of contents): finish the digest
            sent_all = False
            chunk = following
            while chunk:
                digest.update(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
                chunk = src.read(CHUNK)
            following = b""
        if on_bytes is not None:
            on_bytes(len(pending))
        pending = following
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    return digest.hexdigest(), sent_all


@dataclass(frozen=True)
class Contents:
    """What `pg_restore --list` made of a dump, and the sha256 of the whole stream it was given."""

    toc: list[str]
    sha256: str
    error: str | None


def list_contents(src: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> Contents:
    """`pg_restore --list` of a custom-format dump read from a stream, hashing the whole stream in the same pass
    (pg_restore stops reading after the table of contents; the rest is only hashed)."""
    with tempfile.TemporaryDirectory(prefix="ttd-pg-") as tmp:
        outlog, errlog = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with outlog.open("wb") as out, errlog.open("wb") as err:
            proc = subprocess.Popen([tool("pg_restore"), "--list"], stdin=subprocess.PIPE, stdout=out, stderr=err)
            try:
                sha, _ = _feed(proc, src, on_bytes, None)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            rc = proc.wait()
        error = None
        if rc != 0:
            error = f"pg_restore --list failed (exit {rc}): {_last_lines(errlog, PgTarget('', None))}"
        toc = [ln for ln in outlog.read_text("utf-8", "replace").splitlines() if ln and not ln.startswith(";")]
        return Contents(toc, sha, error)


_TABLE_DATA = re.compile(r"^\d+; \d+ \d+ TABLE DATA (\S+) (\S+) ")


def tables_with_data(toc: Iterable[str]) -> set[str]:
    """Names of the public tables a dump holds data for (from `list_contents`)."""
    found = set()
    for line in toc:
        match = _TABLE_DATA.match(line)
        if match and match.group(1) == "public":
            found.add(match.group(2))
    return found


def restore(
    target: PgTarget,
    src: IO[bytes],
    expected_sha256: str,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Restore a custom-format dump read from a stream, in one transaction, replacing the objects it contains.

    The stream is hashed on the way; when it does not match `expected_sha256`, the restore is abandoned before its
    last bytes, so nothing commits.
    """
    args = [
        tool("pg_restore"),
        "--clean",
        "--if-exists",
        "--no-owner",
        "--no-privileges",
        "--single-transaction",
        "--exit-on-error",
        f"--dbname={target.url}",
    ]
    with tempfile.TemporaryDirectory(prefix="ttd-pg-") as tmp:
        errlog = Path(tmp) / "stderr"
        with errlog.open("wb") as err:
            proc = subprocess.Popen(args, env=target.env(), stdin=subprocess.PIPE, stdout=err, stderr=err)
            try:
                sha, sent_all = _feed(proc, src, on_bytes, expected_sha256)
                if sha != expected_sha256:
                    raise PgError("the dump changed while it was restored (sha256 mismatch); nothing was committed")
            except BaseException:
                proc.kill()
                proc.wait()
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                raise
            rc = proc.wait()
        if rc != 0 or not sent_all:
            raise PgError(f"pg_restore failed (exit {rc}); nothing was committed: {_last_lines(errlog, target)}")
