from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import jwt
import pytest

from tests.support import PASSWORD, login, new_user, register, unique_email
from timetodo.core import security
from timetodo.core.security import create_access_token


@pytest.fixture
def real_hash_cost(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """argon2id at the production cost for one test (the suite runs at the lowest cost, tests/conftest.py)."""
    monkeypatch.delenv(security.FAST_HASH_ENV)
    security._hasher.cache_clear()
    security._dummy_hash.cache_clear()
    assert "$m=65536,t=3,p=4$" in security.hash_password("x")
    yield
    security._hasher.cache_clear()
    security._dummy_hash.cache_clear()


async def test_register_login_me(client: httpx.AsyncClient) -> None:
    email = unique_email()
    user = await register(client, email, timezone="Europe/Moscow", locale="ru")
    assert user["email"] == email and user["timezone"] == "Europe/Moscow" and user["locale"] == "ru"
    assert "password" not in user and "password_hash" not in user
    resp = await login(client, email.upper())
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] > 0
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200 and me.json()["id"] == user["id"]


async def test_register_same_email_any_case_conflicts(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await register(client, email)
    resp = await client.post("/api/v1/auth/register", json={"email": email.upper(), "password": PASSWORD})
    assert resp.status_code == 409
    assert resp.json()["error"] == "email_taken"


async def test_register_bad_input(client: httpx.AsyncClient) -> None:
    cases = [
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": unique_email(), "password": "short"}, "password"),
        ({"email": unique_email(), "password": "x" * 129}, "password"),
        ({"email": unique_email(), "password": PASSWORD, "timezone": "Mars/Olympus"}, "timezone"),
        ({"email": unique_email(), "password": PASSWORD, "locale": "de"}, "locale"),
        ({"email": unique_email(), "password": 12345678}, "password"),
        ({"password": PASSWORD}, "email"),
        ({"email": unique_email(), "password": PASSWORD, "is_admin": True}, "is_admin"),
    ]
    for body, field in cases:
        resp = await client.post("/api/v1/auth/register", json=body)
        assert resp.status_code == 422, (body, resp.text)
        payload = resp.json()
        assert payload["error"] == "validation_error"
        assert any(err["field"] == field for err in payload["detail"]), (field, payload)
        # nothing was stored: the same e-mail can still register
        if "email" in body and isinstance(body["email"], str) and "@" in body["email"]:
            await register(client, body["email"])


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/api/v1/auth/register", content=b'{"email": "a@b.c",', headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.json()["error"] == "malformed_json"


async def test_wrong_password_and_unknown_email(client: httpx.AsyncClient) -> None:
    user = await register(client)
    wrong = await login(client, user["email"], "wrong password!")
    unknown = await login(client, unique_email("ghost"))
    for resp in (wrong, unknown):
        assert resp.status_code == 401
        assert resp.json() == {"error": "invalid_credentials", "detail": "Wrong e-mail or password"}


async def test_unknown_email_costs_as_much_as_wrong_password(app: object, real_hash_cost: None) -> None:
    """Both paths run one argon2 verification: their median times are of the same order (at the production cost,
    where the verification dominates a login)."""
    from tests.conftest import asgi_client

    async def median(email: str, password: str) -> float:
        samples = []
        for _ in range(4):
            async with asgi_client(app) as c:  # type: ignore[arg-type]
                start = time.perf_counter()
                resp = await login(c, email, password)
                samples.append(time.perf_counter() - start)
                assert resp.status_code == 401
        return statistics.median(samples)

    async with asgi_client(app) as c:  # type: ignore[arg-type]
        user = await register(c)
    known = await median(user["email"], "not the password")
    unknown = await median(unique_email("ghost"), "not the password")
    assert 0.4 < unknown / known < 2.5, (known, unknown)


async def test_refresh_rotates_and_reuse_revokes_family(client: httpx.AsyncClient) -> None:
    _headers, tokens = await new_user(client)
    first = tokens["refresh_token"]
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert resp.status_code == 200, resp.text
    second = resp.json()["refresh_token"]
    assert second != first
    # reuse of the consumed token: refused and the family (including `second`) is revoked
    reused = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert reused.status_code == 401 and reused.json()["error"] == "refresh_token_reused"
    after = await client.post("/api/v1/auth/refresh", json={"refresh_token": second})
    assert after.status_code == 401 and after.json()["error"] == "invalid_token"


async def test_refresh_bad_tokens(client: httpx.AsyncClient) -> None:
    _headers, tokens = await new_user(client)
    token_id, _, secret = tokens["refresh_token"].partition(".")
    for bad in ["garbage", f"{token_id}.{secret[:-2]}xx", "99999999.abc", f"{token_id}."]:
        resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": bad})
        assert resp.status_code == 401, bad
        assert resp.json()["error"] == "invalid_token"
    # the genuine token still works: failed attempts changed nothing
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    ).status_code == 200


async def test_logout_revokes(client: httpx.AsyncClient) -> None:
    _headers, tokens = await new_user(client)
    resp = await client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status_code == 204
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status_code == 401


async def test_expired_and_tampered_access_tokens(client: httpx.AsyncClient, settings: object) -> None:
    _headers, tokens = await new_user(client)
    secret = settings.SECRET_KEY.get_secret_value()  # type: ignore[attr-defined]
    user_id = tokens["user"]["id"]
    expired = create_access_token(secret, user_id, timedelta(seconds=-5))
    resp = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {expired}"})
    assert resp.status_code == 401 and resp.json()["error"] == "token_expired"
    assert resp.headers["WWW-Authenticate"] == "Bearer"

    forged = jwt.encode(
        {"sub": str(user_id), "type": "access", "exp": 4102444800}, "another-key-of-the-same-length-0123456789", "HS256"
    )
    resp = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_token"

    access = tokens["access_token"]
    tampered = access[:-3] + ("AAA" if not access.endswith("AAA") else "BBB")
    resp = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tampered}"})
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_token"

    resp = await client.get("/api/v1/users/me")
    assert resp.status_code == 401 and resp.json()["error"] == "not_authenticated"


async def test_patch_me(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    resp = await client.patch("/api/v1/users/me", json={"timezone": "America/New_York"}, headers=auth)
    assert resp.status_code == 200 and resp.json()["timezone"] == "America/New_York"
    resp = await client.patch("/api/v1/users/me", json={"timezone": "Nowhere/Nothing"}, headers=auth)
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "timezone"
    resp = await client.patch("/api/v1/users/me", json={"locale": "fr"}, headers=auth)
    assert resp.status_code == 422
    me = await client.get("/api/v1/users/me", headers=auth)
    assert me.json()["timezone"] == "America/New_York" and me.json()["locale"] == "en"


async def test_login_rate_limit_per_ip(app: object) -> None:
    from tests.conftest import asgi_client

    async with asgi_client(app, ip="192.0.2.77") as c:  # type: ignore[arg-type]
        for i in range(5):
            resp = await login(c, unique_email(f"n{i}"), "whatever-password")
            assert resp.status_code == 401
        resp = await login(c, unique_email("n6"), "whatever-password")
        assert resp.status_code == 429
        assert resp.json()["error"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60


async def test_login_rate_limit_per_account_across_ips(app: object) -> None:
    from tests.conftest import asgi_client

    async with asgi_client(app) as c:  # type: ignore[arg-type]
        user = await register(c)
    for _ in range(5):
        async with asgi_client(app) as c:  # type: ignore[arg-type]
            assert (await login(c, user["email"], "wrong password")).status_code == 401
    async with asgi_client(app) as c:  # type: ignore[arg-type]
        # even the right password is refused now: the account is locked for the rest of the minute
        resp = await login(c, user["email"])
        assert resp.status_code == 429 and "Retry-After" in resp.headers
