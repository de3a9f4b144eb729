"""FastAPI dependencies shared by every domain: settings, sessions, the current user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.core.accounts import AccountStates
from timetodo.core.cache import Cache
from timetodo.core.database import Database
from timetodo.core.errors import Unauthorized
from timetodo.core.events import EventHub
from timetodo.core.idempotency import claim_of
from timetodo.core.maintenance import guard_write
from timetodo.core.settings import Settings
from timetodo.core.validators import MAX_ID

API_PREFIX = "/api/v1"
oauth2_scheme = OAuth2PasswordBearer(tokenUrl=f"{API_PREFIX}/auth/login", auto_error=False)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_cache(request: Request) -> Cache:
    cache: Cache = request.app.state.cache
    return cache


async def get_events(request: Request) -> EventHub:
    hub: EventHub = request.app.state.events
    return hub


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session. Closed as soon as the endpoint returns, before the response is sent (scope
    "function"), so a client that reads its response slowly (a big page, a file download) holds no database
    connection or transaction."""
    claim = claim_of(request)
    if claim is not None:
        yield claim.open_session()  # owned (committed, closed) by the idempotency middleware
        return
    async with request.app.state.sessionmaker() as session:
        yield session


async def get_database(request: Request) -> Database:
    """Engine + sessionmaker, for the one-statement paths (no session opened)."""
    db: Database = request.app.state.database
    return db


@asynccontextmanager
async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    """`WriteSessionDep` for an endpoint that decides inside itself whether it needs a session: the request's
    session (the idempotency claim's, or a new one closed on exit) with its write transaction begun."""
    claim = claim_of(request)
    if claim is not None:
        yield await begin_write(request, claim.open_session())
        return
    async with request.app.state.sessionmaker() as session:
        yield await begin_write(request, session)


async def begin_write(request: Request, session: AsyncSession) -> AsyncSession:
    """Start the write transaction of `session`: the maintenance guard first, then the request's idempotency claim
    (when it sent an Idempotency-Key). Endpoints that receive a body from the client call this only after the body
    has arrived, so no transaction (nor lock) is held while a client is sending."""
    await guard_write(session, request.app.state.settings.MAINTENANCE_RETRY_AFTER)
    claim = claim_of(request)
    if claim is not None and not claim.bound and not claim.replayed:
        await claim.bind(session)
    return session


_SESSION = Depends(get_session, scope="function")


async def get_write_session(request: Request, session: Annotated[AsyncSession, _SESSION]) -> AsyncSession:
    """A session whose transaction has passed the maintenance guard: use it for every write."""
    return await begin_write(request, session)


async def current_user_id(
    request: Request,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> int:
    """The user id from the bearer token, if its account still accepts it (see `timetodo.core.accounts`: an
    in-process cache, no database round trip on the hot path)."""
    if not token:
        raise Unauthorized("Send an access token: Authorization: Bearer <token>")
    accounts: AccountStates = request.app.state.accounts
    return await accounts.check(accounts.claims(request.app.state.settings.SECRET_KEY.get_secret_value(), token))


async def user_id_of(request: Request) -> int:
    """`current_user_id` without FastAPI's dependency solving (the fast paths, `timetodo.core.fastpath`): the same
    bearer-token reading and the same checks."""
    return await current_user_id(request, await oauth2_scheme(request))


SettingsDep = Annotated[Settings, Depends(get_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
SessionDep = Annotated[AsyncSession, _SESSION]
WriteSessionDep = Annotated[AsyncSession, Depends(get_write_session)]
UserIdDep = Annotated[int, Depends(current_user_id)]
DatabaseDep = Annotated[Database, Depends(get_database)]
EventsDep = Annotated[EventHub, Depends(get_events)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
