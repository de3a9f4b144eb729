"""The source deployment's HTTP API, as an admin: health, maintenance mode and forwarding mode switched through the
app's own endpoints (the toolkit never writes the app's tables itself). The login is renewed when the token expires during a
long migration, waiting as told when rate-limited.

With `token_cache` (the toolkit passes `<work_dir>/.<label>-admin-token`, 0600), the access token a login got is kept
for the next command: `plan`, `preflight`, `run`, `status`, `--resume` run one after the other do not each log in
again — the app allows 5 logins a minute per address, and a sixth would wait a minute. The cached token is used only
for the same URL, account and password (a salted hash of the password is kept with it, so a wrong password is still
refused before anything is frozen); a token the API refuses (expired, revoked) is replaced by a new login."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import httpx

from timetodo.core.fs import write_private
from timetodo.ops.errors import EXIT_ERROR, EXIT_REFUSED, EXIT_UNREACHABLE, StepError

log = logging.getLogger("timetodo.ops.migrate")
LOGIN_RETRY_SECONDS = 90.0


class SourceApi:
    """The source deployment's HTTP API as an admin: health and maintenance mode."""

    def __init__(
        self,
        base_url: str,
        *,
        email: str | None,
        password: str | None,
        token: str | None,
        label: str = "source",
        token_cache: Path | None = None,
    ) -> None:
        self.label = label
        self.base_url = base_url.rstrip("/")
        self.email, self.password, self._token = email, password, token
        self.token_cache = token_cache if token is None and email and password else None
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=30)

    def _cached(self) -> str | None:
        if self.token_cache is None:
            return None
        try:
            data = json.loads(self.token_cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or (data.get("url"), data.get("email")) != (self.base_url, self.email):
            return None
        if data.get("password") != self._fingerprint(str(data.get("salt", ""))):
            return None
        token = data.get("token")
        return token if isinstance(token, str) and token else None

    def _remember(self, token: str) -> None:
        if self.token_cache is None:
            return
        salt = secrets.token_hex(16)
        kept = {"url": self.base_url, "email": self.email, "salt": salt, "password": self._fingerprint(salt)}
        try:
            write_private(self.token_cache, json.dumps({**kept, "token": token}))
        except OSError as exc:  # only a convenience: the next command logs in again
            log.warning(f"could not keep the {self.label} admin token: {exc}")

    def _fingerprint(self, salt: str) -> str:
        return hashlib.sha256(f"{salt}:{self.password}".encode()).hexdigest()

    async def _login(self) -> str:
        if not (self.email and self.password):
            raise StepError(
                "the source admin token was refused (expired or wrong)",
                "set admin_email + admin_password_env in migration.toml so the toolkit can log in again",
                EXIT_REFUSED,
            )
        deadline = time.monotonic() + LOGIN_RETRY_SECONDS
        while True:
            try:
                resp = await self.client.post(
                    "/api/v1/auth/login", data={"username": self.email, "password": self.password}
                )
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from None
            if resp.status_code not in (429, 503) or time.monotonic() >= deadline:
                break
            # rate-limited (a resumed run logs in again) or briefly unavailable: wait as told, then try again
            wait = min(float(resp.headers.get("Retry-After", "5") or 5), max(0.0, deadline - time.monotonic()))
            log.info("source login deferred", extra={"status": resp.status_code, "wait_seconds": wait})
            await asyncio.sleep(max(wait, 0.5))
        if resp.status_code != 200:
            raise StepError(
                f"cannot log in to the source as {self.email}: HTTP {resp.status_code} {resp.text[:200]}",
                "check source.admin_email and the password variable named in source.admin_password_env",
                EXIT_REFUSED,
            )
        self._token = str(resp.json()["access_token"])
        self._remember(self._token)
        return self._token

    async def token(self) -> str:
        if self._token is None:
            self._token = self._cached()
        return self._token or await self._login()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = await self.token()
        try:
            resp = await self.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
            if resp.status_code == 401 and self.password:
                token = await self._login()
                resp = await self.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return resp

    def _unreachable(self, exc: httpx.HTTPError) -> StepError:
        return StepError(
            f"{self.label} API {self.base_url} unreachable: {type(exc).__name__}: {exc}",
            f"check {'source.api_url' if self.label == 'source' else 'target.public_url'}",
            EXIT_UNREACHABLE,
        )

    async def health(self) -> bool:
        try:
            return (await self.client.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def version(self) -> str | None:
        """The source app's version as `/health/detailed` reports it (None when it does not say): for the report."""
        try:
            value = (await self.client.get("/health/detailed")).json().get("version")
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return str(value) if value else None

    async def check_admin(self) -> dict[str, Any]:
        """Fails (before anything is frozen) when the credentials do not give admin rights on the source."""
        resp = await self.request("GET", "/api/v1/admin/maintenance")
        if resp.status_code in (401, 403):
            raise StepError(
                f"the source refuses the admin credentials (HTTP {resp.status_code})",
                "use an admin account (timetodo user create EMAIL --admin) and check the token/password variable",
                EXIT_REFUSED,
            )
        if resp.status_code != 200:
            raise StepError(f"GET /api/v1/admin/maintenance on the source answered {resp.status_code}", code=EXIT_ERROR)
        return dict(resp.json())

    async def maintenance(self, enabled: bool, reason: str = "") -> dict[str, Any]:
        resp = await self.request("PUT", "/api/v1/admin/maintenance", json={"enabled": enabled, "reason": reason})
        if resp.status_code != 200:
            raise StepError(
                f"switching maintenance {'on' if enabled else 'off'} on the source failed: HTTP {resp.status_code} "
                f"{resp.text[:200]}",
                code=EXIT_REFUSED if resp.status_code in (401, 403) else EXIT_ERROR,
            )
        log.info("source maintenance " + ("on" if enabled else "off"))
        return dict(resp.json())

    async def forwarding(self, target: str | None) -> bool:
        """Proxy the source's API to `target` (None: stop). False when the source is an app version without
        forwarding mode (clients on the old address then get 503 until DNS has moved them)."""
        if target is None:
            resp = await self.request("DELETE", "/api/v1/admin/forwarding")
        else:
            resp = await self.request("PUT", "/api/v1/admin/forwarding", json={"target": target})
        if resp.status_code in (404, 405):
            log.warning("the source has no forwarding mode (an older version): clients on the old address get 503")
            return False
        if resp.status_code != 200:
            raise StepError(
                f"{'ending' if target is None else 'starting'} forwarding on the source failed: HTTP "
                f"{resp.status_code} {resp.text[:200]}",
                code=EXIT_REFUSED if resp.status_code in (401, 403) else EXIT_ERROR,
            )
        log.info("source forwarding " + (f"to {target}" if target else "ended"))
        return True

    async def create_user(self, email: str, password: str) -> int | None:
        """A new (non-admin) account; None when the app is a version without the account API."""
        resp = await self.request("POST", "/api/v1/admin/users", json={"email": email, "password": password})
        if resp.status_code in (404, 405):
            return None
        if resp.status_code != 201:
            raise StepError(
                f"creating an account on the {self.label} failed: HTTP {resp.status_code} {resp.text[:200]}"
            )
        return int(resp.json()["id"])

    async def delete_user(self, user_id: int) -> bool:
        """Delete an account and what it owns; False when it was already gone."""
        resp = await self.request("DELETE", f"/api/v1/admin/users/{user_id}")
        if resp.status_code == 404 and "No user" in str(resp.json().get("detail", "")):
            return False
        if resp.status_code != 204:
            raise StepError(f"deleting account {user_id} on the {self.label} failed: HTTP {resp.status_code}")
        return True

    async def close(self) -> None:
        await self.client.aclose()
