"""`Idempotency-Key` for every POST: a repeat within 24 h returns the first response and creates nothing.

Guarantees:
- The record of a key is written **in the same transaction as the request's business write**: the request's write
  session claims the key right after the maintenance guard (`bind`), the endpoint's `commit()` is held (only
  flushes), and the middleware stores the response and commits once. So there is no separate bookkeeping
  transaction: nothing commits after maintenance is switched on, and a worker killed mid-request leaves no
  claimed-but-empty key behind (its transaction never commits).
- An identical request arriving meanwhile waits on the claim's row lock (the unique index on PostgreSQL, the write
  lock on SQLite) and then replays the first response (`Idempotent-Replayed: true`). A key reused with a different
  request is refused (422 `idempotency_conflict`). 5xx responses are not remembered, so a retry after a server error
  runs again.
- The scope is the authenticated user (or the client address before login). The fingerprint is an HMAC of the
  request keyed by the server's SECRET_KEY, so a stored fingerprint of a body holding a password cannot be
  brute-forced offline. Login/refresh/logout/logout-all are excluded: their responses are credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy import Integer, LargeBinary, String, UniqueConstraint, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from timetodo.core.database import AppSession, Base, BigIntPK, UTCDateTime, utcnow
from timetodo.core.errors import AppError, ErrorCode, MaintenanceActive, error_response
from timetodo.core.maintenance import guard_write
from timetodo.core.security import decode_access_token

TTL = timedelta(hours=24)
HASH_WHOLE_BODY_UP_TO = 1024 * 1024
MAX_CLAIM_ATTEMPTS = 20
EXCLUDED = ("/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/auth/logout")
_KEY_OK = re.compile(r"^[\x21-\x7e]{1,255}$")
STATE_KEY = "idempotency"


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(80), nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class IdempotentReplay(Exception):
    """Raised by `Claim.bind` when the key already has a stored response: the request is answered with it."""

    def __init__(self, status_code: int, content_type: str, body: bytes) -> None:
        super().__init__(status_code)
        self.status_code = status_code
        self.content_type = content_type
        self.body = body


def _conflict() -> AppError:
    return AppError(
        "this Idempotency-Key was already used for a different request",
        code=ErrorCode.idempotency_conflict,
        status_code=422,
    )


@dataclass
class Claim:
    """One request's key: the session it runs its write in, once bound."""

    owner: str
    key: str
    fingerprint: str
    sessionmaker: Any
    retry_after: int
    session: AppSession | None = None
    replayed: bool = False
    bound: bool = False
    _where: tuple[Any, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        self._where = (IdempotencyRecord.scope == self.owner, IdempotencyRecord.key == self.key)

    def open_session(self) -> AppSession:
        """The request's one session (owned and closed by the middleware)."""
        if self.session is None:
            self.session = self.sessionmaker()
        return self.session

    async def _stored(self, session: AsyncSession) -> IdempotencyRecord | None:
        row = (await session.execute(select(IdempotencyRecord).where(*self._where))).scalar_one_or_none()
        if row is not None and (row.expires_at <= utcnow() or row.status_code is None):
            # expired, or an empty claim left by an older version of the app: forget it
            await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == row.id))
            return None
        return row

    def _check(self, row: IdempotencyRecord) -> IdempotentReplay:
        if row.fingerprint != self.fingerprint:
            raise _conflict()
        return IdempotentReplay(row.status_code or 200, row.content_type or "application/json", row.body or b"")

    async def bind(self, session: AsyncSession) -> None:
        """Claim the key inside `session`'s write transaction (which has passed the maintenance guard), or raise
        `IdempotentReplay` / 422. From here on the session's commits are held until the response is stored."""
        for _attempt in range(MAX_CLAIM_ATTEMPTS):
            row = await self._stored(session)
            if row is not None:
                replay = self._check(row)
                await session.rollback()
                self.replayed = True
                raise replay
            session.add(
                IdempotencyRecord(
                    scope=self.owner, key=self.key, fingerprint=self.fingerprint, expires_at=utcnow() + TTL
                )
            )
            try:
                # on PostgreSQL this waits while an identical request holds the key uncommitted
                await session.flush()
            except IntegrityError:
                await session.rollback()
                await guard_write(session, self.retry_after)
                continue
            if isinstance(session, AppSession):
                session.hold_commit = True
            self.bound = True
            return
        raise AppError(
            "a request with this Idempotency-Key is still being processed; retry shortly",
            code=ErrorCode.conflict,
            status_code=409,
            headers={"Retry-After": "1"},
        )

    async def store(self, status: int, content_type: str, body: bytes) -> None:
        """Store the response and commit the request's transaction (the business write with it), once."""
        session = self.open_session()
        if not session.is_active:  # the request's transaction failed (its error is the response)
            await session.rollback()
        if status >= 500:
            await session.rollback()
            return
        try:
            await guard_write(session, self.retry_after)  # a no-op re-check when the write transaction is still open
        except MaintenanceActive:
            if self.bound:
                raise
            return  # a POST that wrote nothing, answered during maintenance: not remembered
        values = {"status_code": status, "content_type": content_type, "body": body}
        result: Any = await session.execute(update(IdempotencyRecord).where(*self._where).values(**values))
        if not result.rowcount:
            stale = await self._stored(session)
            if stale is not None:  # stored by a twin that never bound (a read-only POST): keep the first
                await session.rollback()
                return
            session.add(
                IdempotencyRecord(
                    scope=self.owner,
                    key=self.key,
                    fingerprint=self.fingerprint,
                    expires_at=utcnow() + TTL,
                    status_code=status,
                    content_type=content_type,
                    body=body,
                )
            )
        try:
            await session.commit_held()
        except IntegrityError:
            await session.rollback()


def claim_of(request: Request) -> Claim | None:
    claim = request.scope.get("state", {}).get(STATE_KEY)
    return claim if isinstance(claim, Claim) else None


async def _replay_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdempotentReplay)
    return Response(
        exc.body,
        status_code=exc.status_code,
        media_type=exc.content_type,
        headers={"Idempotent-Replayed": "true"},
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(IdempotentReplay, _replay_handler)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("idempotency-key")
        path: str = scope.get("path", "")
        if key is None or not path.startswith("/api/") or path.startswith(EXCLUDED):
            await self.app(scope, receive, send)
            return
        if not _KEY_OK.match(key):
            await error_response(
                422, ErrorCode.validation_error, "Idempotency-Key must be 1–255 printable ASCII characters"
            )(scope, receive, send)
            return
        state = scope["app"].state
        secret = state.settings.SECRET_KEY.get_secret_value()
        owner = _scope_of(headers, scope, secret)

        body, more = await _read_prefix(receive)
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if more is not None or media_type.startswith("multipart/"):
            # uploads: the boundary differs on every retry and the body may be large, so the fingerprint is the
            # framing (path, media type, length) and the body streams through untouched
            fingerprint = _digest(secret, path, media_type, headers.get("content-length", ""), b"")
        else:
            fingerprint = _digest(secret, path, media_type, "", body)
        claim = Claim(owner, key, fingerprint, state.sessionmaker, state.settings.MAINTENANCE_RETRY_AFTER)
        scope.setdefault("state", {})[STATE_KEY] = claim

        start: Message = {"type": "http.response.start", "status": 500, "headers": []}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, _replaying(body, more, receive), capture)
            status = int(start["status"])
            content = b"".join(chunks)
            if not claim.replayed:
                content_type = "application/json"
                for name, value in start.get("headers", []):
                    if name.lower() == b"content-type":
                        content_type = value.decode("latin-1")
                try:
                    await claim.store(status, content_type, content)
                except MaintenanceActive as exc:
                    if status < 300:  # the write it answers for was not committed
                        await error_response(exc.status_code, exc.code, exc.detail, exc.headers)(scope, receive, send)
                        return
        finally:
            if claim.session is not None:
                await claim.session.close()
        await send(
            {
                **start,
                "headers": [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                + [(b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _scope_of(headers: dict[str, str], scope: Scope, secret: str) -> str:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        try:
            return f"user:{int(decode_access_token(secret, auth[7:].strip())['sub'])}"
        except (AppError, ValueError, KeyError):
            pass
    client = scope.get("client") or ("unknown", 0)
    return f"ip:{client[0]}"


def _digest(secret: str, path: str, content_type: str, length: str, body: bytes) -> str:
    h = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    for part in (b"POST", path.encode(), content_type.encode(), length.encode()):
        h.update(part + b"\0")
    h.update(body)
    return h.hexdigest()


async def _read_prefix(receive: Receive) -> tuple[bytes, list[Message] | None]:
    """Read the body up to HASH_WHOLE_BODY_UP_TO; returns (body, None) or (prefix, messages read) when larger."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), [message]
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None
        if size > HASH_WHOLE_BODY_UP_TO:
            return b"".join(chunks), []


def _replaying(prefix: bytes, more: list[Message] | None, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": prefix, "more_body": more is not None}
        if more:
            return more.pop(0)
        return await receive()

    return replay
