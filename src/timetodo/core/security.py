"""Password hashing (argon2 via pwdlib) and JWT access tokens.

Hashes use pwdlib's argon2id defaults (t=3, m=64 MiB, p=4). The test suite alone sets
TIMETODO_TEST_FAST_PASSWORD_HASH=1 (tests/conftest.py): new hashes then use the lowest argon2id cost (t=1, m=1 MiB,
p=1), the same algorithm and code path at a few milliseconds instead of ~0.2 s per register/login. Verification
always follows the parameters stored in the hash, so either kind of hash verifies with either setting. Never set
it on a deployment.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from timetodo.core.errors import ErrorCode, Unauthorized

FAST_HASH_ENV = "TIMETODO_TEST_FAST_PASSWORD_HASH"


@functools.cache
def _hasher() -> PasswordHash:
    if os.environ.get(FAST_HASH_ENV) == "1":
        return PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    return PasswordHash((Argon2Hasher(),))


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the account does not exist (same time as a wrong password). Made on first use,
    not at import: every CLI command imports this module."""
    return _hasher().hash(secrets.token_urlsafe(16))


JWT_ALGORITHM = "HS256"


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is None:
        _hasher().verify(password, _dummy_hash())
        return False
    return bool(_hasher().verify(password, password_hash))


def create_access_token(
    secret: str, user_id: int, ttl: timedelta, *, is_admin: bool = False, token_version: int = 0
) -> str:
    now = datetime.now(UTC)
    payload = {
        "sub": str(user_id),
        "type": "access",
        "adm": is_admin,
        "ver": token_version,
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(payload, secret, algorithm=JWT_ALGORITHM)


def decode_access_token(secret: str, token: str) -> dict[str, Any]:
    try:
        payload: dict[str, Any] = jwt.decode(
            token, secret, algorithms=[JWT_ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("The access token has expired; refresh it", code=ErrorCode.token_expired) from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("The access token is invalid", code=ErrorCode.invalid_token) from exc
    if payload.get("type") != "access":
        raise Unauthorized("Not an access token", code=ErrorCode.invalid_token)
    return payload


def new_opaque_secret() -> str:
    return secrets.token_urlsafe(32)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
