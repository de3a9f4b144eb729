"""Registration, login with rate limits, rotating refresh tokens, the user's own profile."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.auth import repository
from timetodo.auth.models import RefreshToken, User
from timetodo.auth.schemas import RegisterIn, TokenPair, UserUpdate
from timetodo.core.accounts import AccountStates
from timetodo.core.cache import Cache
from timetodo.core.database import utcnow
from timetodo.core.errors import Conflict, ErrorCode, MaintenanceActive, NotFound, RateLimited, Unauthorized
from timetodo.core.maintenance import flag_for_write, guard_write
from timetodo.core.maintenance import get_status as maintenance_status
from timetodo.core.security import (
    create_access_token,
    hash_password,
    new_opaque_secret,
    sha256_hex,
    verify_password,
)
from timetodo.core.settings import Settings
from timetodo.core.validators import MAX_ID

log = logging.getLogger("timetodo.auth")
LOGIN_WINDOW_SECONDS = 60


async def create_user(
    session: AsyncSession,
    email: str,
    password: str,
    *,
    timezone: str = "UTC",
    locale: str = "en",
    is_admin: bool = False,
) -> User:
    email = email.strip().lower()
    if await repository.get_user_by_email(session, email) is not None:
        raise Conflict("An account with this e-mail already exists", code=ErrorCode.email_taken)
    password_hash = await asyncio.to_thread(hash_password, password)
    user = User(email=email, password_hash=password_hash, timezone=timezone, locale=locale, is_admin=is_admin)
    try:
        await repository.add(session, user)
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict("An account with this e-mail already exists", code=ErrorCode.email_taken) from exc
    return user


async def register(session: AsyncSession, data: RegisterIn) -> User:
    return await create_user(session, data.email, data.password, timezone=data.timezone, locale=data.locale)


async def check_login_rate(cache: Cache, settings: Settings, email: str, client_ip: str) -> None:
    """At most N attempts per minute per client IP and per account (shared by every instance through Redis)."""
    limit = settings.LOGIN_ATTEMPTS_PER_MINUTE
    retry_after = 0.0
    for key in (f"rl:login:ip:{client_ip}", f"rl:login:acct:{sha256_hex(email.strip().lower())}"):
        count, reset_in = await cache.hit(key, LOGIN_WINDOW_SECONDS)
        if count > limit:
            retry_after = max(retry_after, reset_in)
    if retry_after:
        log.warning("login rate limit hit", extra={"client_ip": client_ip})
        raise RateLimited(int(retry_after + 0.999), "Too many login attempts; wait before trying again")


REGISTER_WINDOW_SECONDS = 3600


async def check_register_rate(cache: Cache, settings: Settings, client_ip: str) -> None:
    """At most REGISTRATIONS_PER_HOUR registrations per client address (each costs an argon2 hash)."""
    count, reset_in = await cache.hit(f"rl:register:ip:{client_ip}", REGISTER_WINDOW_SECONDS)
    if count > settings.REGISTRATIONS_PER_HOUR:
        log.warning("registration rate limit hit", extra={"client_ip": client_ip})
        raise RateLimited(int(reset_in + 0.999), "Too many registrations from this address; try again later")


def _access_token(settings: Settings, user_id: int, is_admin: bool, token_version: int) -> tuple[str, int]:
    ttl = timedelta(minutes=settings.ACCESS_TOKEN_TTL_MINUTES)
    token = create_access_token(
        settings.SECRET_KEY.get_secret_value(), user_id, ttl, is_admin=is_admin, token_version=token_version
    )
    return token, int(ttl.total_seconds())


async def _issue_refresh_token(
    session: AsyncSession, settings: Settings, user_id: int, family_id: str | None = None
) -> str:
    secret = new_opaque_secret()
    row = RefreshToken(
        user_id=user_id,
        family_id=family_id or secrets.token_hex(16),
        token_hash=sha256_hex(secret),
        expires_at=utcnow() + timedelta(days=settings.REFRESH_TOKEN_TTL_DAYS),
    )
    await repository.add(session, row)
    return f"{row.id}.{secret}"


async def login(session: AsyncSession, settings: Settings, email: str, password: str) -> TokenPair:
    user = await repository.get_user_by_email(session, email.strip())
    password_ok = await asyncio.to_thread(verify_password, password, user.password_hash if user else None)
    if user is None or not password_ok or not user.is_active:
        raise Unauthorized("Wrong e-mail or password", code=ErrorCode.invalid_credentials)
    if (await maintenance_status(session)).enabled:
        # read-only: no session row can be written. Admins still get an access token (no refresh token) so they
        # can reach the admin API — e.g. to end maintenance; everyone else waits.
        if not user.is_admin:
            raise MaintenanceActive(retry_after=settings.MAINTENANCE_RETRY_AFTER)
        access, expires_in = _access_token(settings, user.id, user.is_admin, user.token_version)
        return TokenPair(access_token=access, refresh_token=None, expires_in=expires_in)
    # the write (a refresh token) runs in its own transaction behind the maintenance guard, like every write
    user_id, is_admin, version = user.id, user.is_admin, user.token_version
    await session.rollback()
    await guard_write(session, settings.MAINTENANCE_RETRY_AFTER)
    refresh = await _issue_refresh_token(session, settings, user_id)
    await session.commit()
    access, expires_in = _access_token(settings, user_id, is_admin, version)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=expires_in)


async def _load_refresh_token(session: AsyncSession, token: str) -> tuple[RefreshToken, User]:
    invalid = Unauthorized("The refresh token is invalid", code=ErrorCode.invalid_token)
    token_id_text, _, secret = token.partition(".")
    # ASCII digits only (str.isdigit() also accepts "²"), and an id the database can hold
    if not (token_id_text.isascii() and token_id_text.isdigit()) or len(token_id_text) > 19 or not secret:
        raise invalid
    token_id = int(token_id_text)
    if not 1 <= token_id <= MAX_ID:
        raise invalid
    row = await repository.get_refresh_token(session, token_id)
    if row is None or not hmac.compare_digest(row.token_hash, sha256_hex(secret)):
        raise invalid
    user = await repository.get_user(session, row.user_id)
    if user is None or not user.is_active or row.revoked_at is not None:
        raise invalid
    if row.expires_at <= utcnow():
        raise Unauthorized("The refresh token has expired; log in again", code=ErrorCode.token_expired)
    return row, user


def _revoked_family_key(family_id: str) -> str:
    return f"auth:revoked-family:{family_id}"


def _reused() -> Unauthorized:
    return Unauthorized(
        "This refresh token was already used; every session of this login is now revoked",
        code=ErrorCode.refresh_token_reused,
    )


async def refresh(session: AsyncSession, settings: Settings, cache: Cache, token: str) -> TokenPair:
    """Rotate: the presented token is consumed and a new one of the same family issued.

    The maintenance flag is read under the write guard's lock (`flag_for_write`), so a rotation either commits
    before maintenance-on returns or sees the flag. In maintenance mode the database is read-only: the same refresh
    token is handed back with a fresh access token (no rotation). Presenting an already-consumed token means it
    leaked: the whole family is revoked — during maintenance the revocation is recorded in the cache (shared by every
    instance) at once and written to the database by the first refresh of that family after maintenance.
    """
    row, user = await _load_refresh_token(session, token)
    family_id, row_id, used = row.family_id, row.id, row.used_at is not None
    user_id, is_admin, version = user.id, user.is_admin, user.token_version
    await session.rollback()
    frozen = await flag_for_write(session)  # holds the guard lock until this transaction ends
    revoked_meanwhile = await cache.get(_revoked_family_key(family_id)) is not None
    now = utcnow()
    if frozen:
        await session.rollback()
        if used or revoked_meanwhile:
            await cache.set(_revoked_family_key(family_id), b"1", settings.REFRESH_TOKEN_TTL_DAYS * 86400)
            log.warning("refresh token reused during maintenance; family revoked", extra={"user_id": user_id})
            raise _reused()
        access, expires_in = _access_token(settings, user_id, is_admin, version)
        return TokenPair(access_token=access, refresh_token=token, expires_in=expires_in)
    if used or revoked_meanwhile or not await repository.mark_refresh_token_used(session, row_id, now):
        await repository.revoke_family(session, family_id, now)
        await session.commit()
        await cache.delete(_revoked_family_key(family_id))
        log.warning("refresh token reused; family revoked", extra={"user_id": user_id})
        raise _reused()
    new_refresh = await _issue_refresh_token(session, settings, user_id, family_id)
    await session.commit()
    access, expires_in = _access_token(settings, user_id, is_admin, version)
    return TokenPair(access_token=access, refresh_token=new_refresh, expires_in=expires_in)


async def logout(session: AsyncSession, token: str) -> None:
    row, _user = await _load_refresh_token(session, token)
    await repository.revoke_family(session, row.family_id, utcnow())
    await session.commit()


async def end_sessions(session: AsyncSession, user: User) -> None:
    """Every access token of `user` stops working, every refresh token is revoked (commit is the caller's)."""
    user.token_version += 1
    await repository.revoke_all_refresh_tokens(session, user.id, utcnow())


async def logout_all(session: AsyncSession, accounts: AccountStates, user_id: int) -> None:
    """Log out everywhere: this and every other session of the account end now."""
    user = await get_user(session, user_id)
    await end_sessions(session, user)
    await session.commit()
    accounts.forget(user_id)


async def change_password(session: AsyncSession, accounts: AccountStates, user_id: int, current: str, new: str) -> None:
    """Check the current password, set the new one and end every session (log in again with the new one)."""
    user = await get_user(session, user_id)
    if not await asyncio.to_thread(verify_password, current, user.password_hash):
        raise Unauthorized("The current password is wrong", code=ErrorCode.invalid_credentials)
    user.password_hash = await asyncio.to_thread(hash_password, new)
    await end_sessions(session, user)
    await session.commit()
    accounts.forget(user_id)


async def set_active(session: AsyncSession, accounts: AccountStates | None, email: str, active: bool) -> User:
    """Deactivate (or reactivate) an account; deactivation ends every session."""
    user = await repository.get_user_by_email(session, email)
    if user is None:
        raise NotFound(f"No user with e-mail {email}")
    user.is_active = active
    if not active:
        await end_sessions(session, user)
    await session.commit()
    if accounts is not None:
        accounts.forget(user.id)
    return user


async def get_user(session: AsyncSession, user_id: int) -> User:
    user = await repository.get_user(session, user_id)
    if user is None or not user.is_active:
        raise Unauthorized("The user of this token no longer exists", code=ErrorCode.invalid_token)
    return user


async def update_me(session: AsyncSession, user_id: int, data: UserUpdate) -> User:
    user = await get_user(session, user_id)
    for field in data.model_fields_set:
        value = getattr(data, field)
        if value is None:
            continue
        setattr(user, field, value)
    await session.commit()
    return user


async def set_admin(session: AsyncSession, email: str, is_admin: bool) -> User:
    user = await repository.get_user_by_email(session, email)
    if user is None:
        raise NotFound(f"No user with e-mail {email}")
    user.is_admin = is_admin
    await session.commit()
    return user
