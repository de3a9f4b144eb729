"""The canary account: a real user's round trip on the target, with data that came from the source.

Before the freeze, `plant` creates an account on the source through its admin API (`POST /api/v1/admin/users`)
with one task and one attached file, and measures the source under the validation mix as that account
(`validate.load.mixed_load`). The account then travels with the data like any other. After the switch, `exercise`
logs it in on the target and does what a client does: reads the task and the file that came from the source,
opens the WebSocket, creates a task and receives its event, completes it, uploads a file and downloads it again.
Then `remove` deletes the account on the target (`DELETE /api/v1/admin/users/{id}`: rows and files) — on the source
it goes with the rest of the frozen data: a rollback replays the target's changes, this deletion included.

The canary's password lives in `<work_dir>/canary.password` (0600), never in the state or a report. A source
running an app version without the account API gets no canary (a warning says so), never a failed migration.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets

from timetodo.core.fs import PRIVATE_FILE, private_dir
from timetodo.ops.migrate.validate.load import LoadFigures, mixed_load

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context
    from timetodo.ops.migrate.source_api import SourceApi

PASSWORD_FILE = "canary.password"
TASK_TITLE = "timetodo migration canary"
EVENT_TIMEOUT = 10.0


def _new_email() -> str:
    return f"timetodo-canary-{secrets.token_hex(6)}@example.com"


def _write_password(work_dir: Path, password: str) -> None:
    private_dir(work_dir)
    path = work_dir / PASSWORD_FILE
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE), "w", encoding="utf-8") as fh:
        fh.write(password)


def read_password(work_dir: Path) -> str:
    return (work_dir / PASSWORD_FILE).read_text(encoding="utf-8").strip()


LOGIN_WAIT_SECONDS = 90.0


async def _login(client: httpx.AsyncClient, email: str, password: str) -> str:
    """The canary's access token. The app limits logins per client address (5 a minute by default) and the
    toolkit's own logins come from one address: a 429 (or a 503 while the host settles) is waited out as told."""
    deadline = time.monotonic() + LOGIN_WAIT_SECONDS
    while True:
        resp = await client.post("/api/v1/auth/login", data={"username": email, "password": password})
        if resp.status_code not in (429, 503) or time.monotonic() >= deadline:
            break
        wait = float(resp.headers.get("Retry-After", "5") or 5)
        await asyncio.sleep(max(0.5, min(wait, deadline - time.monotonic())))
    resp.raise_for_status()
    return str(resp.json()["access_token"])


async def plant(api: SourceApi, work_dir: Path, *, load_seconds: float, load_connections: int) -> dict[str, Any]:
    """On the source, before the freeze: the canary account with a task and a file, and the source's figures under
    the validation mix. An empty dict when the source has no account API (an older version)."""
    email, password = _new_email(), secrets.token_urlsafe(18)
    user_id = await api.create_user(email, password)
    if user_id is None:
        return {}
    await asyncio.to_thread(_write_password, work_dir, password)
    content = b"canary file " + secrets.token_bytes(64)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        token = await _login(client, email, password)
        headers = {"Authorization": f"Bearer {token}"}
        task = await client.post("/api/v1/tasks", json={"title": TASK_TITLE}, headers=headers)
        task.raise_for_status()
        task_id = int(task.json()["id"])
        uploaded = await client.post(
            f"/api/v1/tasks/{task_id}/attachments",
            files={"file": ("canary.bin", content, "application/octet-stream")},
            headers=headers,
        )
        uploaded.raise_for_status()
    load = None
    if load_seconds > 0:
        load = await mixed_load(api.base_url, token, seconds=load_seconds, connections=load_connections)
    return {
        "email": email,
        "user_id": user_id,
        "task_id": task_id,
        "attachment_id": int(uploaded.json()["id"]),
        "sha256": hashlib.sha256(content).hexdigest(),
        "planted_at": time.time(),
        "source_load": load.to_dict() if load else None,
    }


@dataclass
class CanaryCheck:
    """What the canary did on the target, step by step."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    removed: bool = False
    target_load: LoadFigures | None = None
    token: str | None = field(default=None, repr=False)
    """The canary's access token on the target (for the load mix; never reported)."""

    @property
    def ok(self) -> bool:
        return not self.errors

    def record(self, name: str, ok: bool, detail: str, started: float) -> bool:
        self.steps.append(
            {"step": name, "ok": ok, "detail": detail, "ms": round((time.perf_counter() - started) * 1000, 1)}
        )
        if not ok:
            self.errors.append(f"canary: {name}: {detail}")
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "steps": self.steps,
            "errors": self.errors,
            "warnings": self.warnings,
            "removed": self.removed,
        }


def websocket_url(base_url: str) -> str:
    parts = urlsplit(base_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + "/api/v1/ws", "", ""))


async def _next_event(ws: Any, wanted: str, task_id: int) -> bool:
    while True:
        message = json.loads(await ws.recv())
        if message.get("type") == wanted and message.get("data", {}).get("id") == task_id:
            return True


async def exercise(base_url: str, facts: dict[str, Any], password: str) -> CanaryCheck:
    """On the target after the switch: log in as the canary, read what came from the source, write, complete,
    upload/download, receive the WebSocket event. Each step is recorded; the first failure stops the round."""
    check = CanaryCheck()
    headers: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=30) as client:

        async def step(name: str, action: Any) -> bool:
            started = time.perf_counter()
            try:
                detail = await action()
            except Exception as exc:
                return check.record(name, False, f"{type(exc).__name__}: {exc}"[:300], started)
            return check.record(name, True, detail, started)

        async def log_in() -> str:
            check.token = await _login(client, facts["email"], password)
            headers["Authorization"] = f"Bearer {check.token}"
            return "logged in with the password set on the source"

        async def migrated_task() -> str:
            resp = await client.get(f"/api/v1/tasks/{facts['task_id']}", headers=headers)
            resp.raise_for_status()
            if resp.json()["title"] != TASK_TITLE:
                raise AssertionError(f"title {resp.json()['title']!r}")
            return f"task {facts['task_id']} came over"

        async def migrated_file() -> str:
            resp = await client.get(f"/api/v1/attachments/{facts['attachment_id']}", headers=headers)
            resp.raise_for_status()
            if hashlib.sha256(resp.content).hexdigest() != facts["sha256"]:
                raise AssertionError("the file's sha256 differs from the one uploaded on the source")
            return f"{len(resp.content)} bytes, same sha256"

        if not (await step("log in", log_in) and await step("read the migrated task", migrated_task)):
            return check
        if not await step("download the migrated file", migrated_file):
            return check
        try:
            ws = await websockets.connect(websocket_url(base_url), open_timeout=15)
        except Exception as exc:
            check.record("open the WebSocket", False, f"{type(exc).__name__}: {exc}"[:300], time.perf_counter())
            return check
        async with ws:

            async def authenticate() -> str:
                await ws.send(json.dumps({"type": "auth", "token": headers["Authorization"].split(" ", 1)[1]}))
                message = json.loads(await asyncio.wait_for(ws.recv(), EVENT_TIMEOUT))
                if message.get("type") != "ready":
                    raise AssertionError(f"first message {message}")
                return "ready"

            created: dict[str, Any] = {}

            async def create_and_receive() -> str:
                resp = await client.post("/api/v1/tasks", json={"title": "canary on the target"}, headers=headers)
                resp.raise_for_status()
                created.update(resp.json())
                await asyncio.wait_for(_next_event(ws, "task.created", created["id"]), EVENT_TIMEOUT)
                return f"task {created['id']} created, its task.created event received"

            async def complete() -> str:
                resp = await client.post(f"/api/v1/tasks/{created['id']}/complete", headers=headers)
                resp.raise_for_status()
                if not resp.json().get("done"):
                    raise AssertionError("the completed task is not done")
                return "completed"

            async def round_trip_file() -> str:
                content = b"uploaded on the target " + secrets.token_bytes(64)
                up = await client.post(
                    f"/api/v1/tasks/{created['id']}/attachments",
                    files={"file": ("target.bin", content, "application/octet-stream")},
                    headers=headers,
                )
                up.raise_for_status()
                down = await client.get(f"/api/v1/attachments/{up.json()['id']}", headers=headers)
                down.raise_for_status()
                if down.content != content:
                    raise AssertionError("the downloaded bytes differ from the uploaded ones")
                return f"{len(content)} bytes up and down"

            for name, action in (
                ("open the WebSocket", authenticate),
                ("create a task, receive its event", create_and_receive),
                ("complete the task", complete),
                ("upload and download a file", round_trip_file),
            ):
                if not await step(name, action):
                    break
    return check


async def check_target(ctx: Context, *, load_seconds: float, load_connections: int) -> CanaryCheck | None:
    """`exercise` on the target, the same load mix there, then the canary removed from the target. None when no
    canary was planted."""
    facts = ctx.state.facts.canary
    if not facts or facts.get("removed"):
        return None  # none planted, or already checked and removed by an earlier validation
    base = ctx.config.target.public_url
    password = await asyncio.to_thread(read_password, ctx.work_dir)
    check = await exercise(base, facts, password)
    if check.ok and load_seconds > 0 and check.token:
        check.target_load = await mixed_load(base, check.token, seconds=load_seconds, connections=load_connections)
    api = ctx.target_api()
    try:
        check.removed = await api.delete_user(int(facts["user_id"]))
    finally:
        await api.close()
    ctx.state.remember(canary={**facts, "removed": True, "check": check.to_dict()})
    return check
