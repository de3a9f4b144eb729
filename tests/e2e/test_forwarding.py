"""Forwarding mode between two real `timetodo serve` processes: the old host proxies the API and WebSockets to
the new one (what a migration's switch sets up so that clients on the old DNS see no error)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.e2e.server import ServerProcess, cli, server_env
from tests.support import PASSWORD, free_port, unique_email
from timetodo.core.database import utcnow
from timetodo.core.forwarding import Forwarding, normalise_target

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """An old host (with an admin) and a new host (with a user), each on its own SQLite database."""
    servers = {}
    for name in ("old", "new"):
        data = tmp_path_factory.mktemp(f"fwd-{name}")
        env = server_env(f"sqlite:///{data / 'db.sqlite'}", None, data)
        servers[name] = (ServerProcess(env, data), env)
    for server, _env in servers.values():
        server.wait_ready()
    old, old_env = servers["old"]
    new, _ = servers["new"]
    admin = unique_email("admin")
    created = cli({**old_env, "TIMETODO_PASSWORD": PASSWORD}, "user", "create", admin, "--admin")
    assert created.returncode == 0, created.stderr
    user = _registered(new.url)
    yield {
        "old": old,
        "new": new,
        "old_env": old_env,
        "admin": _bearer(old.url, admin),
        "user": _bearer(new.url, user),
        "old_user": _bearer(old.url, _registered(old.url)),
    }
    for server, _ in servers.values():
        assert server.stop() == 0, server.log()


def _registered(url: str) -> str:
    email = unique_email()
    assert httpx.post(f"{url}/api/v1/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
    return email


def _bearer(url: str, email: str) -> dict[str, str]:
    resp = httpx.post(f"{url}/api/v1/auth/login", data={"username": email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def _access_log_client(server: ServerProcess, request_id: str) -> str | None:
    """The client address in `server`'s access-log line for `request_id` (written just after the response)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server.log_path.read_text().splitlines():
            entry = json.loads(line) if request_id in line else {}
            if entry.get("request_id") == request_id and entry.get("route"):
                return str(entry.get("client"))
        time.sleep(0.05)
    return None


def _ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/api/v1/ws"


def test_forwarding_moves_http_and_websockets_to_the_new_host(hosts: dict[str, object], tmp_path: Path) -> None:
    old, new = hosts["old"], hosts["new"]
    assert isinstance(old, ServerProcess) and isinstance(new, ServerProcess)
    admin, user = hosts["admin"], hosts["user"]
    assert isinstance(admin, dict) and isinstance(user, dict)
    with httpx.Client(base_url=old.url, timeout=30) as via_old, httpx.Client(base_url=new.url) as direct:
        # before: the old host answers for itself (a task of the new host does not exist there)
        marker = direct.post("/api/v1/tasks", json={"title": "only on the new host"}, headers=user).json()["id"]
        assert via_old.get(f"/api/v1/tasks/{marker}", headers=user).status_code == 404
        # the old host is frozen first, as at a migration's switch; forwarding wins over maintenance
        assert via_old.put("/api/v1/admin/maintenance", json={"enabled": True}, headers=admin).status_code == 200
        assert via_old.post("/api/v1/tasks", json={"title": "x"}, headers=user).status_code == 503
        on = via_old.put("/api/v1/admin/forwarding", json={"target": new.url + "/"}, headers=admin)
        assert on.status_code == 200 and on.json() == {"target": new.url, "until": None, "active": True}

        # a write through the old host lands on the new one, once, with its idempotency key honoured there
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = via_old.post("/api/v1/tasks", json={"title": "via old"}, headers={**user, **key})
        assert first.status_code == 201, first.text
        task_id = first.json()["id"]
        assert direct.get(f"/api/v1/tasks/{task_id}", headers=user).json()["title"] == "via old"
        assert via_old.get(f"/api/v1/tasks/{marker}", headers=user).status_code == 200
        again = via_old.post("/api/v1/tasks", json={"title": "via old"}, headers={**user, **key})
        assert again.headers.get("idempotent-replayed") == "true" and again.json()["id"] == task_id
        assert again.headers["x-request-id"]  # the new host's own headers come back unchanged

        # uploads stream through and downloads (with Range) come back byte for byte
        blob = os.urandom(3 * 1024 * 1024 + 17)
        up = via_old.post(f"/api/v1/tasks/{task_id}/attachments", files={"file": ("a.bin", blob)}, headers=user)
        assert up.status_code == 201, up.text
        att = up.json()["id"]
        assert direct.get(f"/api/v1/attachments/{att}", headers=user).content == blob
        part = via_old.get(f"/api/v1/attachments/{att}", headers={**user, "Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == blob[100:200]

        # the client's own address reaches the new host (the old host is a trusted proxy there: 127.0.0.1)
        request_id = uuid.uuid4().hex
        with httpx.Client(base_url=old.url, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other_ip:
            assert other_ip.get("/api/v1/tasks", headers={**user, "X-Request-ID": request_id}).status_code == 200
        assert _access_log_client(new, request_id) == "127.0.0.2"

        # the old host's admin API, health and metrics stay local
        assert via_old.get("/api/v1/admin/forwarding", headers=admin).json()["active"] is True
        assert via_old.get("/health/detailed").json()["checks"]["maintenance"]["enabled"] is True

        # WebSockets: events of the new host reach a socket opened on the old one; close codes come back
        with ws_connect(_ws_url(old)) as ws:
            ws.send(json.dumps({"type": "auth", "token": user["Authorization"].removeprefix("Bearer ")}))
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
            created = direct.post("/api/v1/tasks", json={"title": "live"}, headers=user).json()
            events = [json.loads(ws.recv(timeout=10)) for _ in range(3)]
            assert {"type": "task.created", "id": created["id"]} in [
                {"type": e["type"], "id": e.get("data", {}).get("id")} for e in events
            ], events
        with ws_connect(_ws_url(old)) as ws:
            ws.send(json.dumps({"type": "auth", "token": "not-a-token"}))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

        # ending it: the old host answers for itself again (and is still frozen)
        off = via_old.delete("/api/v1/admin/forwarding", headers=admin)
        assert off.json() == {"target": None, "until": None, "active": False}
        assert via_old.get(f"/api/v1/tasks/{marker}", headers=user).status_code == 404
        assert via_old.put("/api/v1/admin/maintenance", json={"enabled": False}, headers=admin).status_code == 200


def test_unreachable_target_and_bad_settings_are_clear_errors(hosts: dict[str, object]) -> None:
    old, admin, user, old_user = hosts["old"], hosts["admin"], hosts["user"], hosts["old_user"]
    assert isinstance(old, ServerProcess) and isinstance(admin, dict) and isinstance(user, dict)
    assert isinstance(old_user, dict)
    with httpx.Client(base_url=old.url, timeout=30) as c:
        for bad in ("ftp://x", "not a url", "http://h/?q=1", "https://u:p@h"):
            resp = c.put("/api/v1/admin/forwarding", json={"target": bad}, headers=admin)
            assert resp.status_code == 422 and resp.json()["error"] == "validation_error", bad
        assert c.put("/api/v1/admin/forwarding", json={"target": "http://x"}, headers=old_user).status_code == 403
        dead = f"http://127.0.0.1:{free_port()}"
        assert c.put("/api/v1/admin/forwarding", json={"target": dead}, headers=admin).status_code == 200
        try:
            resp = c.get("/api/v1/tasks", headers=user)
            assert resp.status_code == 502 and resp.json()["error"] == "bad_gateway"
            with ws_connect(_ws_url(old)) as ws, pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
            bounded = c.put("/api/v1/admin/forwarding", json={"target": dead, "minutes": 1}, headers=admin).json()
            assert bounded["active"] is True and bounded["until"] is not None
        finally:
            assert c.delete("/api/v1/admin/forwarding", headers=admin).status_code == 200
        assert c.get("/api/v1/tasks", headers=user).status_code != 502


def test_forwarding_to_itself_is_a_clear_508_not_a_loop(hosts: dict[str, object]) -> None:
    """The target URL still leads back to the old host (DNS not moved): the first hop is refused with 508, the
    WebSocket closed with 1011 — instead of the request bouncing until every connection is used."""
    old, admin, user = hosts["old"], hosts["admin"], hosts["user"]
    assert isinstance(old, ServerProcess) and isinstance(admin, dict) and isinstance(user, dict)
    with httpx.Client(base_url=old.url, timeout=30) as c:
        assert c.put("/api/v1/admin/forwarding", json={"target": old.url}, headers=admin).status_code == 200
        try:
            resp = c.get("/api/v1/tasks", headers=user)
            assert resp.status_code == 508 and resp.json()["error"] == "forwarding_loop", resp.text
            assert "DNS" in resp.json()["detail"]
            with ws_connect(_ws_url(old)) as ws, pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
            assert c.get("/health").status_code == 200
        finally:
            assert c.delete("/api/v1/admin/forwarding", headers=admin).status_code == 200


def test_a_lapsed_setting_forwards_nothing() -> None:
    until = utcnow() + timedelta(minutes=1)
    assert Forwarding("http://new", until).active()
    assert not Forwarding("http://new", until).active(now=until)
    assert Forwarding("http://new", None).active() and not Forwarding(None, None).active()
    assert normalise_target(" https://new.example.com/api/ ") == "https://new.example.com/api"
