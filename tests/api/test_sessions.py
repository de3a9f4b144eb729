"""Tokens follow the account (issue 10, item 4): deactivation, deletion, password change and logout-all end every
access token (before: a token kept working until it expired)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from tests.support import PASSWORD, login, new_user
from timetodo.auth.models import User


async def test_deactivated_account_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    auth, tokens = await new_user(client)
    user_id = tokens["user"]["id"]
    assert (await client.post("/api/v1/projects", json={"name": "p"}, headers=auth)).status_code == 201
    async with app.state.sessionmaker() as session:
        await session.execute(update(User).where(User.id == user_id).values(is_active=False))
        await session.commit()
    app.state.accounts.forget(user_id)  # what AUTH_STATE_CACHE_SECONDS passing does (tests/e2e/test_sessions.py)
    for method, path, body in (
        ("POST", "/api/v1/projects", {"name": "p"}),
        ("POST", "/api/v1/tasks", {"title": "t"}),
        ("GET", "/api/v1/sync", None),
        ("GET", "/api/v1/tasks", None),
    ):
        resp = await client.request(method, path, json=body, headers=auth)
        assert resp.status_code == 401 and resp.json()["error"] == "invalid_token", (path, resp.text)
    refreshed = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401


async def test_logout_all_ends_every_session(client: httpx.AsyncClient) -> None:
    first, tokens = await new_user(client)
    second_login = (await login(client, tokens["user"]["email"])).json()
    second = {"Authorization": f"Bearer {second_login['access_token']}"}
    assert (await client.get("/api/v1/users/me", headers=second)).status_code == 200
    assert (await client.post("/api/v1/auth/logout-all", headers=first)).status_code == 204
    for auth in (first, second):
        assert (await client.get("/api/v1/users/me", headers=auth)).status_code == 401
    for refresh in (tokens["refresh_token"], second_login["refresh_token"]):
        assert (await client.post("/api/v1/auth/refresh", json={"refresh_token": refresh})).status_code == 401
    again = (await login(client, tokens["user"]["email"])).json()
    fresh = {"Authorization": f"Bearer {again['access_token']}"}
    assert (await client.get("/api/v1/users/me", headers=fresh)).status_code == 200


async def test_password_change_ends_sessions(client: httpx.AsyncClient) -> None:
    auth, tokens = await new_user(client)
    wrong = await client.post(
        "/api/v1/users/me/password", json={"current_password": "nope", "new_password": "another one 123"}, headers=auth
    )
    assert wrong.status_code == 401
    changed = await client.post(
        "/api/v1/users/me/password",
        json={"current_password": PASSWORD, "new_password": "another one 123"},
        headers=auth,
    )
    assert changed.status_code == 204, changed.text
    assert (await client.get("/api/v1/users/me", headers=auth)).status_code == 401
    assert (await login(client, tokens["user"]["email"])).status_code == 401
    assert (await login(client, tokens["user"]["email"], "another one 123")).status_code == 200


async def test_a_token_whose_signature_was_checked_still_expires(app: FastAPI, client: httpx.AsyncClient) -> None:
    """The process keeps the claims of tokens it verified (timetodo.core.accounts): the expiry is still checked on
    every request, and a token signed with another key is never taken for a kept one."""
    import asyncio
    from datetime import timedelta

    from timetodo.core.security import create_access_token

    _, tokens = await new_user(client)
    user_id = int(tokens["user"]["id"])
    secret = app.state.settings.SECRET_KEY.get_secret_value()
    short = create_access_token(secret, user_id, timedelta(seconds=2))
    headers = {"Authorization": f"Bearer {short}"}
    assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 200
    assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 200  # from the kept claims
    forged = create_access_token("another-secret-key-long-enough-0123456789", user_id, timedelta(minutes=5))
    resp = await client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_token"
    await asyncio.sleep(3)
    resp = await client.get("/api/v1/tasks", headers=headers)
    assert resp.status_code == 401 and resp.json()["error"] == "token_expired", resp.text
