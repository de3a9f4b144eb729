from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from timetodo.auth import service
from timetodo.auth.schemas import PasswordChange, RefreshIn, RegisterIn, TokenPair, UserOut, UserUpdate
from timetodo.core.deps import API_PREFIX, CacheDep, SessionDep, SettingsDep, UserIdDep, WriteSessionDep, begin_write

router = APIRouter(prefix=API_PREFIX, tags=["auth"])


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/auth/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def register(
    request: Request, data: RegisterIn, settings: SettingsDep, cache: CacheDep, session: SessionDep
) -> object:
    """Create an account. The e-mail is case-insensitive and unique (409 `email_taken`). Limited to
    REGISTRATIONS_PER_HOUR per client address (429 `rate_limited`)."""
    await service.check_register_rate(cache, settings, client_ip(request))
    await begin_write(request, session)
    return await service.register(session, data)


@router.post("/auth/login", response_model=TokenPair)
async def login(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    settings: SettingsDep,
    cache: CacheDep,
) -> TokenPair:
    """OAuth2 password form: `username` is the e-mail. Limited to 5 attempts a minute per IP and per account.
    In maintenance mode only admins log in, and get an access token without a refresh token (nothing is written)."""
    await service.check_login_rate(cache, settings, form.username, client_ip(request))
    return await service.login(session, settings, form.username, form.password)


@router.post("/auth/refresh", response_model=TokenPair)
async def refresh(data: RefreshIn, session: SessionDep, settings: SettingsDep, cache: CacheDep) -> TokenPair:
    """Trade a refresh token for a new pair. A token can be used once; reuse revokes every token of its login."""
    return await service.refresh(session, settings, cache, data.refresh_token)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(data: RefreshIn, session: WriteSessionDep) -> Response:
    """Revoke this login's refresh tokens."""
    await service.logout(session, data.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/auth/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def logout_all(request: Request, user_id: UserIdDep, session: WriteSessionDep) -> Response:
    """Log out everywhere: every access token of this account stops working (within AUTH_STATE_CACHE_SECONDS on
    other instances) and every refresh token is revoked; open WebSockets are closed at their next ping."""
    await service.logout_all(session, request.app.state.accounts, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/users/me/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(
    request: Request, data: PasswordChange, user_id: UserIdDep, session: WriteSessionDep
) -> Response:
    """Change the password (the current one is required); every session of the account ends: log in again."""
    await service.change_password(
        session, request.app.state.accounts, user_id, data.current_password, data.new_password
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/users/me", response_model=UserOut)
async def get_me(user_id: UserIdDep, session: SessionDep) -> object:
    return await service.get_user(session, user_id)


@router.patch("/users/me", response_model=UserOut)
async def update_me(data: UserUpdate, user_id: UserIdDep, session: WriteSessionDep) -> object:
    """Change the time zone (an IANA name) or locale (`ru` or `en`)."""
    return await service.update_me(session, user_id, data)
