"""Real nginx (configured by timetodo.ops.nginx) in front of two `timetodo serve` processes on PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.e2e.nginx import NginxProcess
from tests.e2e.server import ServerProcess, cli
from tests.support import PASSWORD, free_port, next_client_ip, unique_email

pytestmark = pytest.mark.slow
MAX_UPLOAD_MB = 4


@pytest.fixture(scope="module")
def stack(pg_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    workdir = tmp_path_factory.mktemp("nginx-stack")
    env = pg_env | {"MAX_UPLOAD_MB": str(MAX_UPLOAD_MB)}
    servers = [ServerProcess(env, workdir) for _ in range(2)]
    for server in servers:
        server.wait_ready()
    proxy = NginxProcess(workdir / "nginx", [f"127.0.0.1:{s.port}" for s in servers], MAX_UPLOAD_MB)
    state: dict[str, object] = {"servers": servers, "nginx": proxy, "env": env, "workdir": workdir}
    yield state
    proxy.stop()
    for server in state["servers"]:  # type: ignore[attr-defined]
        assert server.stop() == 0, server.log()


def user_headers(url: str) -> dict[str, str]:
    email = unique_email()
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": next_client_ip()}) as c:
        assert c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        token = c.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def health_count(server: ServerProcess) -> int:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(r'timetodo_http_requests_total\{[^}]*route="/health"[^}]*status="200"[^}]*\} ([\d.]+)', text)
    if match is None:
        match = re.search(r'timetodo_http_requests_total\{[^}]*status="200"[^}]*route="/health"[^}]*\} ([\d.]+)', text)
    return int(float(match.group(1))) if match else 0


def test_requests_are_balanced_over_both_instances(stack: dict[str, object]) -> None:
    servers: list[ServerProcess] = stack["servers"]  # type: ignore[assignment]
    proxy: NginxProcess = stack["nginx"]  # type: ignore[assignment]
    before = [health_count(s) for s in servers]
    with httpx.Client(base_url=proxy.url) as c:
        for _ in range(40):
            assert c.get("/health").status_code == 200
    served = [health_count(s) - b for s, b in zip(servers, before, strict=True)]
    assert sum(served) == 40, served
    assert min(served) >= 10, served  # least_conn spreads sequential requests over both


def test_forwarded_headers_and_private_metrics(stack: dict[str, object]) -> None:
    proxy: NginxProcess = stack["nginx"]  # type: ignore[assignment]
    resp = httpx.get(f"{proxy.url}/health", headers={"X-Request-ID": "through-nginx-1"})
    assert resp.headers["x-request-id"] == "through-nginx-1"
    assert "server" not in resp.headers or "nginx/" not in resp.headers["server"]  # no version disclosed
    assert httpx.get(f"{proxy.url}/metrics").status_code == 200  # from 127.0.0.1
    # from another loopback address nginx refuses /metrics (only 127.0.0.1 may scrape it)
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport) as other:
        assert other.get(f"{proxy.url}/metrics").status_code == 403
        assert other.get(f"{proxy.url}/health").status_code == 200


def test_websocket_through_nginx_receives_events(stack: dict[str, object]) -> None:
    proxy: NginxProcess = stack["nginx"]  # type: ignore[assignment]
    headers = user_headers(proxy.url)

    async def scenario() -> None:
        async with connect(proxy.url.replace("http://", "ws://") + "/api/v1/ws") as ws:
            await ws.send(json.dumps({"type": "auth", "token": headers["Authorization"].split()[1]}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "ready"}
            # several writes: least_conn sends them to both instances; every event arrives through Redis + nginx
            async with httpx.AsyncClient(base_url=proxy.url, headers=headers) as c:
                for i in range(4):
                    assert (await c.post("/api/v1/tasks", json={"title": f"ws {i}"})).status_code == 201
            titles = []
            while len(titles) < 4:
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if message["type"] == "task.created":
                    titles.append(message["data"]["title"])
            assert sorted(titles) == [f"ws {i}" for i in range(4)]

    asyncio.run(scenario())


def test_upload_at_the_limit_passes_and_above_it_nginx_refuses(stack: dict[str, object], tmp_path: Path) -> None:
    proxy: NginxProcess = stack["nginx"]  # type: ignore[assignment]
    headers = user_headers(proxy.url)
    with httpx.Client(base_url=proxy.url, headers=headers, timeout=60) as c:
        task = c.post("/api/v1/tasks", json={"title": "files"}).json()
        exact = b"\x00" * (MAX_UPLOAD_MB * 1024 * 1024)
        resp = c.post(f"/api/v1/tasks/{task['id']}/attachments", files={"file": ("exact.bin", exact)})
        assert resp.status_code == 201, resp.text
        assert resp.json()["size"] == len(exact)
        # one byte over: nginx lets it through (multipart headroom), the app refuses it exactly
        resp = c.post(f"/api/v1/tasks/{task['id']}/attachments", files={"file": ("over.bin", exact + b"\x00")})
        assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"
        assert "request body is larger" not in resp.text  # the app's answer
        # far over: nginx refuses before the app sees it, in the API's error envelope
        big = b"\x00" * ((MAX_UPLOAD_MB + 2) * 1024 * 1024)
        resp = c.post(f"/api/v1/tasks/{task['id']}/attachments", files={"file": ("big.bin", big)})
        assert resp.status_code == 413
        assert resp.json()["error"] == "payload_too_large" and "request body is larger" in resp.json()["detail"]
        listed = c.get(f"/api/v1/tasks/{task['id']}/attachments").json()
        assert [a["filename"] for a in listed] == ["exact.bin"]


def test_rolling_restart_behind_nginx_fails_no_request(stack: dict[str, object]) -> None:
    """Steady reads and writes through nginx while each instance in turn is drained (nginx reload without it),
    stopped with SIGTERM, started again and put back: not one request fails, every 201 is a stored task.

    The load opens a connection per request (`Connection: close`): what is measured is the server side; a client
    keeping connections alive across nginx's own reload must retry a request whose connection nginx closed idle,
    as browsers do."""
    servers: list[ServerProcess] = stack["servers"]  # type: ignore[assignment]
    proxy: NginxProcess = stack["nginx"]  # type: ignore[assignment]
    env: dict[str, str] = stack["env"]  # type: ignore[assignment]
    workdir: Path = stack["workdir"]  # type: ignore[assignment]
    headers = user_headers(proxy.url) | {"Connection": "close"}
    outcomes: Counter[str] = Counter()
    created: set[int] = set()

    async def load(stop: asyncio.Event, n: int) -> None:
        async with httpx.AsyncClient(base_url=proxy.url, headers=headers, timeout=30) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 2:
                        resp = await c.post("/api/v1/tasks", json={"title": f"load {n}.{i}"})
                        if resp.status_code == 201:
                            created.add(resp.json()["id"])
                    else:
                        resp = await c.get("/api/v1/tasks", params={"limit": 5})
                    outcomes[str(resp.status_code)] += 1
                except httpx.HTTPError as exc:
                    outcomes[type(exc).__name__] += 1

    async def scenario() -> None:
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(stop, n)) for n in range(4)]
        await asyncio.sleep(1)
        loop = asyncio.get_running_loop()
        for index in range(len(servers)):
            others = [f"127.0.0.1:{s.port}" for i, s in enumerate(servers) if i != index]
            await loop.run_in_executor(None, proxy.reload, others)  # drain: no new requests reach it
            old = servers[index]
            assert await loop.run_in_executor(None, old.stop) == 0, old.log()
            servers[index] = ServerProcess(env, workdir, port=old.port)
            await loop.run_in_executor(None, servers[index].wait_ready)
            await loop.run_in_executor(None, proxy.reload, [f"127.0.0.1:{s.port}" for s in servers])
            await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*workers)

    asyncio.run(scenario())
    assert set(outcomes) <= {"200", "201"}, outcomes
    assert outcomes["201"] > 20 and outcomes["200"] > 20, outcomes
    with httpx.Client(base_url=proxy.url, headers=headers) as c:
        for task_id in list(created)[:: max(1, len(created) // 20)]:
            assert c.get(f"/api/v1/tasks/{task_id}").status_code == 200


def test_posts_survive_a_dead_instance_in_the_group(stack: dict[str, object], tmp_path: Path) -> None:
    """A stopped instance refuses connections: nginx passes even a POST on to the next one (the app never saw it)."""
    servers: list[ServerProcess] = stack["servers"]  # type: ignore[assignment]
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with NginxProcess(tmp_path / "nginx", [dead, f"127.0.0.1:{servers[0].port}"]) as proxy:
        with httpx.Client(base_url=proxy.url, headers={"X-Forwarded-For": next_client_ip()}) as c:
            email = unique_email()
            statuses = [
                c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}).status_code
                for _ in range(4)
            ]
        assert statuses[0] == 201 and statuses[1:] == [409, 409, 409]
        assert "Connection refused" in proxy.error_log(), "the dead instance was never tried"


def test_maintenance_503s_keep_instances_in_rotation(stack: dict[str, object]) -> None:
    """Writes refused by maintenance mode (503 from every instance) must not make nginx give up on the instances:
    reads keep working through it."""
    proxy: NginxProcess = stack["nginx"]  # type: ignore[assignment]
    env: dict[str, str] = stack["env"]  # type: ignore[assignment]
    headers = user_headers(proxy.url)
    with httpx.Client(base_url=proxy.url, headers=headers) as c:
        task = c.post("/api/v1/tasks", json={"title": "frozen"}).json()
        assert cli(env, "maintenance", "on").returncode == 0
        try:
            for _ in range(8):
                refused = c.delete(f"/api/v1/tasks/{task['id']}")
                assert refused.status_code == 503 and refused.json()["error"] == "maintenance"
                assert int(refused.headers["retry-after"]) > 0
            assert [c.get("/api/v1/tasks").status_code for _ in range(4)] == [200] * 4
        finally:
            assert cli(env, "maintenance", "off").returncode == 0
