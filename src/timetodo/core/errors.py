"""One error envelope for every error: `{"error": CODE, "detail": ...}`."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("timetodo.errors")


class ErrorCode(StrEnum):
    """Machine-readable error codes. Clients switch on these, never on the message."""

    validation_error = "validation_error"
    malformed_json = "malformed_json"
    invalid_cursor = "invalid_cursor"
    invalid_sync_token = "invalid_sync_token"
    sync_reset_required = "sync_reset_required"
    not_authenticated = "not_authenticated"
    invalid_token = "invalid_token"
    token_expired = "token_expired"
    invalid_credentials = "invalid_credentials"
    refresh_token_reused = "refresh_token_reused"
    forbidden = "forbidden"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    conflict = "conflict"
    email_taken = "email_taken"
    payload_too_large = "payload_too_large"
    quota_exceeded = "quota_exceeded"
    unsupported_media_type = "unsupported_media_type"
    rate_limited = "rate_limited"
    maintenance = "maintenance"
    idempotency_conflict = "idempotency_conflict"
    range_not_satisfiable = "range_not_satisfiable"
    timer_not_running = "timer_not_running"
    time_entry_overlap = "time_entry_overlap"
    service_unavailable = "service_unavailable"
    bad_gateway = "bad_gateway"
    forwarding_loop = "forwarding_loop"
    internal_error = "internal_error"
    http_error = "http_error"


class ErrorResponse(BaseModel):
    error: ErrorCode
    detail: Any = None


class AppError(Exception):
    """An error the API answers with its own code and status."""

    status_code = 400
    code = ErrorCode.http_error

    def __init__(
        self,
        detail: Any = None,
        *,
        code: ErrorCode | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail if detail is not None else (self.__doc__ or "").strip()
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers


class NotFound(AppError):
    """Not found."""

    status_code = 404
    code = ErrorCode.not_found


class Conflict(AppError):
    """The request conflicts with the current state."""

    status_code = 409
    code = ErrorCode.conflict


class Unauthorized(AppError):
    """Not authenticated."""

    status_code = 401
    code = ErrorCode.not_authenticated

    def __init__(self, detail: Any = None, *, code: ErrorCode | None = None) -> None:
        super().__init__(detail, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    """You are not allowed to do this."""

    status_code = 403
    code = ErrorCode.forbidden


class InvalidInput(AppError):
    """The input is not valid."""

    status_code = 422
    code = ErrorCode.validation_error


class RateLimited(AppError):
    """Too many attempts; try again later."""

    status_code = 429
    code = ErrorCode.rate_limited

    def __init__(self, retry_after: int, detail: Any = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = retry_after


class MaintenanceActive(AppError):
    """The service is in read-only maintenance mode; writes are refused for now."""

    status_code = 503
    code = ErrorCode.maintenance

    def __init__(self, retry_after: int) -> None:
        super().__init__(None, headers={"Retry-After": str(retry_after)})


_STATUS_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.malformed_json,
    401: ErrorCode.not_authenticated,
    403: ErrorCode.forbidden,
    404: ErrorCode.not_found,
    405: ErrorCode.method_not_allowed,
    409: ErrorCode.conflict,
    413: ErrorCode.payload_too_large,
    415: ErrorCode.unsupported_media_type,
    429: ErrorCode.rate_limited,
    503: ErrorCode.service_unavailable,
}


def error_response(status_code: int, code: ErrorCode, detail: Any, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": code.value, "detail": detail}, default=str)
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


def _field_errors(exc: RequestValidationError) -> tuple[ErrorCode, list[dict[str, Any]]]:
    errors = []
    code = ErrorCode.validation_error
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            code = ErrorCode.malformed_json
        loc = [str(p) for p in err.get("loc", ())]
        item = {"field": ".".join(loc[1:]) if len(loc) > 1 else ".".join(loc), "loc": loc}
        item["message"] = str(err.get("msg", "")).removeprefix("Value error, ")
        item["type"] = err.get("type")
        errors.append(item)
    return code, errors


DATABASE_RETRY_AFTER = 2
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    PoolTimeoutError,  # every pooled connection busy for pool_timeout
    OperationalError,  # the server went away / refused (also SQLite's "database is locked")
    InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    ConnectionError,  # refused or reset on the driver's own path (timetodo.core.rawdb)
)
"""Failures of reaching the database, not of the request: answered 503 + Retry-After instead of 500."""


def install_error_handlers(app: FastAPI) -> None:
    async def app_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AppError)
        return error_response(exc.status_code, exc.code, exc.detail, exc.headers)

    async def validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        code, errors = _field_errors(exc)
        return error_response(422, code, errors)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, ErrorCode.http_error)
        return error_response(exc.status_code, code, exc.detail, dict(exc.headers or {}))

    async def integrity_error(_request: Request, exc: Exception) -> Response:
        # a row this request refers to went away meanwhile (a deleted account, a concurrent delete)
        log.info("integrity error answered with 409", extra={"error": type(exc).__name__})
        return error_response(409, ErrorCode.conflict, "The request conflicts with the current data; reload and retry")

    async def data_error(_request: Request, exc: Exception) -> Response:
        log.info("data error answered with 422", extra={"error": type(exc).__name__})
        return error_response(422, ErrorCode.validation_error, "A value is out of the range the database can store")

    async def database_unavailable(_request: Request, exc: Exception) -> Response:
        # the database refused, dropped or could not serve the connection (restart, failover, pool exhausted,
        # SQLite busy): nothing was committed; the client may retry
        log.warning("database unavailable, answered 503", extra={"error": type(exc).__name__})
        return error_response(
            503,
            ErrorCode.service_unavailable,
            "The database is unavailable or busy; retry shortly",
            {"Retry-After": str(DATABASE_RETRY_AFTER)},
        )

    async def unhandled(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, ErrorCode.internal_error, "Internal server error")

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(IntegrityError, integrity_error)
    app.add_exception_handler(DataError, data_error)
    # the same errors from statements run on the driver directly (timetodo.core.rawdb)
    app.add_exception_handler(asyncpg.exceptions.IntegrityConstraintViolationError, integrity_error)
    app.add_exception_handler(asyncpg.exceptions.DataError, data_error)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, database_unavailable)
    app.add_exception_handler(Exception, unhandled)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Error envelope; `error` is one of the ErrorCode values"},
    "5XX": {"model": ErrorResponse, "description": "Error envelope (maintenance, unavailable, internal)"},
}
