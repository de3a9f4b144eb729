"""`Idempotency-Key` for every POST: a repeat within 24 h returns the first response and creates nothing.

The first request with a key claims it by inserting a row (unique on scope + key) before the endpoint runs; an
identical request arriving meanwhile waits for the first to finish and then replays its response. A key reused
with a different request is refused (422 `idempotency_conflict`). 5xx responses are not remembered, so a retry
after a server error runs again. The scope is the authenticated user (or the client address before login).
Login/refresh/logout are excluded: their responses are credentials and must not be stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, LargeBinary, String, UniqueConstraint, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from timetodo.core.database import Base, BigIntPK, UTCDateTime, utcnow
from timetodo.core.errors import AppError, ErrorCode, error_response
from timetodo.core.maintenance import guard_write
from timetodo.core.security import decode_access_token

TTL = timedelta(hours=24)
WAIT_FOR_FIRST = 10.0
HASH_WHOLE_BODY_UP_TO = 1024 * 1024
EXCLUDED = ("/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/auth/logout")
_KEY_OK = re.compile(r"^[\x21-\x7e]{1,255}$")


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
        owner = _scope_of(headers, scope, state.settings.SECRET_KEY.get_secret_value())

        body, more = await _read_prefix(receive)
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if more is not None or media_type.startswith("multipart/"):
            # uploads: the boundary differs on every retry and the body may be large, so the fingerprint is the
            # framing (path, media type, length) and the body streams through untouched
            fingerprint = _digest(path, media_type, headers.get("content-length", ""), b"")
        else:
            fingerprint = _digest(path, media_type, "", body)
        replay_receive = _replaying(body, more, receive)

        try:
            outcome = await _claim(state, owner, key, fingerprint)
        except AppError as exc:
            await error_response(exc.status_code, exc.code, exc.detail, exc.headers)(scope, receive, send)
            return
        if outcome is not None:
            status, content_type, stored = outcome
            response_headers = [(b"content-type", content_type.encode()), (b"idempotent-replayed", b"true")]
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            await send({"type": "http.response.body", "body": stored})
            return

        captured: dict[str, Any] = {"status": 500, "content_type": "application/json", "body": bytearray()}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        captured["content_type"] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        finally:
            await _finish(state, owner, key, captured)


def _scope_of(headers: dict[str, str], scope: Scope, secret: str) -> str:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        try:
            return f"user:{int(decode_access_token(secret, auth[7:].strip())['sub'])}"
        except (AppError, ValueError, KeyError):
            pass
    client = scope.get("client") or ("unknown", 0)
    return f"ip:{client[0]}"


def _digest(path: str, content_type: str, length: str, body: bytes) -> str:
    h = hashlib.sha256()
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


async def _claim(state: Any, owner: str, key: str, fingerprint: str) -> tuple[int, str, bytes] | None:
    """Claim the key (None: go ahead) or return the response to replay."""
    deadline = asyncio.get_running_loop().time() + WAIT_FOR_FIRST
    while True:
        async with state.sessionmaker() as session:
            await guard_write(session, state.settings.MAINTENANCE_RETRY_AFTER)
            now = utcnow()
            existing = (
                await session.execute(
                    select(IdempotencyRecord).where(IdempotencyRecord.scope == owner, IdempotencyRecord.key == key)
                )
            ).scalar_one_or_none()
            if existing is not None and existing.expires_at <= now:
                await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == existing.id))
                existing = None
            if existing is None:
                session.add(IdempotencyRecord(scope=owner, key=key, fingerprint=fingerprint, expires_at=now + TTL))
                try:
                    await session.commit()
                    return None
                except IntegrityError:
                    await session.rollback()
                    continue  # someone claimed it between our read and insert: look again
            seen = (existing.fingerprint, existing.status_code, existing.content_type, existing.body)
            await session.rollback()
        seen_fingerprint, status_code, content_type, body = seen
        if seen_fingerprint != fingerprint:
            raise AppError(
                "this Idempotency-Key was already used for a different request",
                code=ErrorCode.idempotency_conflict,
                status_code=422,
            )
        if status_code is not None:
            return status_code, content_type or "application/json", body or b""
        if asyncio.get_running_loop().time() > deadline:
            raise AppError(
                "a request with this Idempotency-Key is still being processed; retry shortly",
                code=ErrorCode.conflict,
                status_code=409,
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(0.05)


async def _finish(state: Any, owner: str, key: str, captured: dict[str, Any]) -> None:
    async with state.sessionmaker() as session:
        where = (IdempotencyRecord.scope == owner, IdempotencyRecord.key == key)
        if captured["status"] >= 500 or captured["status"] == 503:
            await session.execute(delete(IdempotencyRecord).where(*where))
        else:
            await session.execute(
                update(IdempotencyRecord)
                .where(*where)
                .values(
                    status_code=captured["status"], content_type=captured["content_type"], body=bytes(captured["body"])
                )
            )
        await session.commit()
