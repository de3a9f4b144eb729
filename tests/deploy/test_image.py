"""The production image, built from our Dockerfile with podman and run for real (issue 12, items 2 and 5).

The Dockerfile's base, python:3.11-slim-bookworm, cannot be pulled on these machines: scripts/podman.sh makes a
LOCAL STAND-IN for it from the debootstrapped Debian 12 of scripts/rootfs.sh (Debian's Python 3.11, pip, venv)
and tags it with the official name, so the Dockerfile builds unchanged (apt and PyPI are reached from its RUN
steps). One image per session; every test runs containers of it:

- the image's own CMD and HEALTHCHECK (the check the image declares, run by `podman healthcheck run`) turn
  healthy as uid 10001, in a container with no network but its own loopback (the check probes port 8000);
- `timetodo db upgrade` and `timetodo serve` against the test session's PostgreSQL and Redis on the host's
  loopback (`--network host`), `/health` and `/health/detailed` asked from the host;
- pg_dump/pg_restore of major 15 and rsync are in the image;
- the compose `backup` service's own command (taken from `docker-compose config`) writes a verified archive to
  the backups volume, the app reports it in /health/detailed and /metrics, a second start only schedules;
- the README's restore drill, its commands run as written with `docker compose ... exec -T app` → `podman exec`;
- the image's size over the base, printed (budget 250 MB).

Selected with `-m image`; skipped (with the reason) only where podman cannot run a container at all.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.test_bundle import ENV_EXAMPLE, REPO, _env_file, _filled_env, _run_compose
from tests.support import Services, create_database, free_port, login, register, unique_email

pytestmark = [pytest.mark.image, pytest.mark.slow]

PODMAN_SH = REPO / "scripts" / "podman.sh"
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
RUN_FLAGS = ["--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
SIZE_BUDGET_MB = 250
README = REPO / "README.md"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *RUN_FLAGS, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} … exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@dataclass
class Image:
    tag: str
    build_seconds: float


@pytest.fixture(scope="session")
def image(debian12_rootfs: Path) -> Iterator[Image]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are not installed (scripts/test.sh installs podman buildah runc)")
    base = subprocess.run(["bash", str(PODMAN_SH), "base"], capture_output=True, text=True, timeout=600)
    assert base.returncode == 0, base.stderr
    probe = subprocess.run(
        ["podman", *RUN_FLAGS, "run", "--rm", *ULIMITS, "--network", "none", BASE_IMAGE, "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run a container on this machine: {probe.stderr.strip()[-500:]}")
    tag = f"localhost/timetodo:test-{secrets.token_hex(4)}"
    start = time.monotonic()
    build = subprocess.run(["bash", str(PODMAN_SH), "build", tag], capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, f"the Dockerfile does not build:\n{build.stderr[-5000:]}"
    built = Image(tag, time.monotonic() - start)
    print(f"\nimage {tag} built in {built.build_seconds:.0f} s (base stand-in + rootfs were ready)")
    yield built
    podman("rmi", "--force", tag, check=False)


@pytest.fixture
def volumes() -> Iterator[dict[str, str]]:
    """Fresh named volumes, like compose's, so the image's own directory owners are copied into them."""
    names = {name: f"ttd-test-{name}-{secrets.token_hex(4)}" for name in ("uploads", "backups", "logs")}
    for volume in names.values():
        podman("volume", "create", volume)
    yield names
    for volume in names.values():
        podman("volume", "rm", "--force", volume, check=False)


def volume_path(volume: str) -> Path:
    return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())


@contextlib.contextmanager
def container(image: Image, *args: str, name: str | None = None) -> Iterator[str]:
    """`podman run -d` of the image; removed on exit (its logs are printed when the test failed meanwhile)."""
    name = name or f"ttd-test-{secrets.token_hex(4)}"
    podman("run", "-d", "--name", name, *ULIMITS, *args)
    try:
        yield name
    finally:
        logs = podman("logs", name, check=False)
        print(f"--- logs of {name} ---\n{logs.stdout[-4000:]}{logs.stderr[-4000:]}")
        podman("rm", "--force", "--volumes", "--time", "5", name, check=False, timeout=60)


def app_env(database_url: str, redis_url: str | None) -> list[str]:
    env = {
        "ENVIRONMENT": "production",
        "SECRET_KEY": secrets.token_hex(32),
        "DATABASE_URL": database_url.replace("postgresql+asyncpg://", "postgresql://"),
        "ALLOWED_HOSTS": "*",
        "LOG_LEVEL": "WARNING",
        "MAINTENANCE_CACHE_SECONDS": "0",
        "GRACEFUL_SHUTDOWN_SECONDS": "1",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


def wait_http(url: str, seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer 200 within {seconds} s")
        time.sleep(0.5)


def isolated_redis(services: Services) -> str:
    """The session's Redis, database 9: backups and restores here must not touch the keys other tests use."""
    return re.sub(r"/\d+$", "/9", services.redis_url)


# ---- the image itself ---------------------------------------------------------------------------------------------


def test_image_user_tools_and_size(image: Image) -> None:
    info = json.loads(podman("image", "inspect", image.tag).stdout)[0]
    assert info["Config"]["User"] == "10001:10001"
    assert info["Healthcheck"]["Test"][:2] == ["CMD", "python"], "the HEALTHCHECK survived the build"
    assert {"/data/uploads", "/data/backups", "/app/logs"} <= set(info["Config"]["Volumes"])

    script = "id -u; id -g; pg_dump --version; pg_restore --version; rsync --version | head -n 1; timetodo --version"
    out = podman("run", "--rm", *ULIMITS, "--network", "none", image.tag, "sh", "-c", script).stdout.splitlines()
    assert out[:2] == ["10001", "10001"], out
    assert re.fullmatch(r"pg_dump \(PostgreSQL\) 15\.\d+.*", out[2]), out
    assert re.fullmatch(r"pg_restore \(PostgreSQL\) 15\.\d+.*", out[3]), out
    assert out[4].startswith("rsync  version 3."), out
    assert out[5].strip(), "timetodo --version printed nothing"

    base = json.loads(podman("image", "inspect", BASE_IMAGE).stdout)[0]
    assert base["Labels"].get("timetodo.stand-in"), "the base must be the local stand-in (scripts/podman.sh base)"
    over = (info["Size"] - base["Size"]) / 1e6
    print(
        f"\nimage size: {info['Size'] / 1e6:.0f} MB, {over:.0f} MB over the base stand-in ({base['Size'] / 1e6:.0f} MB)"
    )
    assert over <= SIZE_BUDGET_MB, f"the image adds {over:.0f} MB to its base (budget {SIZE_BUDGET_MB} MB)"


def test_default_command_turns_healthy(image: Image, volumes: dict[str, str]) -> None:
    """The image as compose starts it (its CMD, its HEALTHCHECK), on SQLite in /data (no DATABASE_URL): the volumes are writable by
    the app user. `--network none`: its own loopback, so port 8000 cannot collide with anything on the host. A
    SECRET_KEY is required, as in compose: `serve` refuses 0.0.0.0 with the built-in development key."""
    mounts = [f"{volumes['uploads']}:/data/uploads", f"{volumes['logs']}:/app/logs"]
    key = ("-e", f"SECRET_KEY={secrets.token_hex(32)}")
    with container(image, "--network", "none", *key, *[a for m in mounts for a in ("-v", m)], image.tag) as name:
        status = ""
        deadline = time.monotonic() + 60
        while status != "healthy" and time.monotonic() < deadline:
            # Runs the HEALTHCHECK the image declares (podman schedules it with systemd timers, absent here).
            podman("healthcheck", "run", name, check=False)
            status = podman("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            if status != "healthy":
                time.sleep(1)
        assert status == "healthy"
        user = podman("exec", name, "id", "-un").stdout.strip()
        assert user == "timetodo"
        assert podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true"
    owner = volume_path(volumes["uploads"]).stat()
    assert (owner.st_uid, owner.st_gid) == (10001, 10001), "a fresh volume takes the image directory's owner"


# ---- with PostgreSQL and Redis on the host --------------------------------------------------------------------------


@dataclass
class Deployed:
    app: str
    url: str
    env: list[str]
    mounts: list[str]


@pytest.fixture
async def deployed(image: Image, services: Services, volumes: dict[str, str]) -> AsyncIterator[Deployed]:
    database_url = await create_database(services.postgres_url)
    env = app_env(database_url, isolated_redis(services))
    mounts = [
        arg
        for volume, target in (("uploads", "/data/uploads"), ("backups", "/data/backups"), ("logs", "/app/logs"))
        for arg in ("-v", f"{volumes[volume]}:{target}")
    ]
    migrate = podman("run", "--rm", *ULIMITS, "--network", "host", *env, image.tag, "timetodo", "db", "upgrade")
    assert migrate.returncode == 0
    again = podman("run", "--rm", *ULIMITS, "--network", "host", *env, image.tag, "timetodo", "db", "upgrade")
    assert again.returncode == 0, "the one-shot migrate command is idempotent"
    port = free_port()
    command = ["timetodo", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"]
    with container(image, "--network", "host", *env, *mounts, image.tag, *command) as name:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health")
        yield Deployed(name, url, env, mounts)


def test_serve_and_migrate_against_host_postgres(deployed: Deployed) -> None:
    health = httpx.get(f"{deployed.url}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    detailed = httpx.get(f"{deployed.url}/health/detailed", timeout=10)
    assert detailed.status_code == 200, detailed.text
    checks = detailed.json()["checks"]
    assert checks["database"]["dialect"] == "postgresql" and checks["database"]["ok"]
    assert checks["migrations"]["current"] == checks["migrations"]["head"], "db upgrade ran in the image"
    assert checks["redis"]["ok"] and checks["redis"].get("configured", True)
    assert checks["backup"]["configured"] is False


def backup_service_script(env_file: Path) -> tuple[str, dict[str, str]]:
    """The compose `backup` service's shell script, exactly as compose hands it to the container."""
    result = _run_compose(env_file, "config")
    assert result.returncode == 0, result.stderr
    service = yaml.safe_load(result.stdout)["services"]["backup"]
    command = service["command"]
    assert command[:2] == ["sh", "-c"]
    # `docker-compose config` prints `$$` escaped again; the container receives a single `$`.
    return command[2].replace("$$", "$"), service


async def test_backup_service_writes_verified_archives_and_health_reports_them(
    image: Image, deployed: Deployed, volumes: dict[str, str], tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=deployed.url, timeout=10) as client:
        await register(client)
    uploads = volume_path(volumes["uploads"])
    (uploads / "kept.bin").write_bytes(secrets.token_bytes(4096))

    script, service = backup_service_script(_filled_env(tmp_path))
    env_values = _env_file(ENV_EXAMPLE)
    assert f'--keep "{env_values["BACKUP_KEEP"]}"' in script
    assert f'"{env_values["BACKUP_AT"]}"' in script
    targets = {str(v).split(":")[1] if isinstance(v, str) else v["target"] for v in service["volumes"]}
    assert {"/data/uploads", "/data/backups"} <= targets
    mounts = [
        "-v",
        f"{volumes['uploads']}:/data/uploads:ro",
        "-v",
        f"{volumes['backups']}:/data/backups",
    ]
    backups = volume_path(volumes["backups"])
    marker = backups / ".last-verified"
    with container(image, "--network", "host", "--init", *deployed.env, *mounts, image.tag, "sh", "-c", script) as job:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker.exists(), "the backup service wrote no verified archive at start"
        logs = ""
        while "backup: next at" not in logs and time.monotonic() < deadline:
            logs = podman("logs", job).stdout
            time.sleep(0.5)
        match = re.search(r"backup: next at (\S+)", logs)
        assert match, logs
        hh, mm = env_values["BACKUP_AT"].split(":")
        assert match.group(1).endswith(f"T{hh}:{mm}:00Z"), match.group(1)
    archive = backups / marker.read_text().strip()
    assert archive.is_file() and archive.stat().st_uid == 10001

    verify = podman(
        "run",
        "--rm",
        *ULIMITS,
        "--network",
        "none",
        *mounts,
        image.tag,
        "timetodo",
        "backup",
        "verify",
        str(Path("/data/backups") / archive.name),
    )
    assert "ok:" in verify.stdout and "postgresql" in verify.stdout

    report = httpx.get(f"{deployed.url}/health/detailed", timeout=10).json()
    backup = report["checks"]["backup"]
    assert backup["newest_verified"] == archive.name and 0 <= backup["age_seconds"] < 300, backup
    metrics = httpx.get(f"{deployed.url}/metrics", timeout=10).text
    gauge = re.search(r"^timetodo_backup_newest_verified_age_seconds (\S+)$", metrics, re.MULTILINE)
    assert gauge and 0 <= float(gauge.group(1)) < 300, metrics[-2000:]

    # Restarted with a fresh verified backup: it only schedules the next night.
    before = sorted(p.name for p in backups.glob("timetodo-*.tar"))
    with container(image, "--network", "host", "--init", *deployed.env, *mounts, image.tag, "sh", "-c", script) as job:
        deadline = time.monotonic() + 60
        logs = ""
        while "backup: next at" not in logs and time.monotonic() < deadline:
            logs = podman("logs", job).stdout
            time.sleep(0.5)
        assert "backup: next at" in logs
    assert sorted(p.name for p in backups.glob("timetodo-*.tar")) == before


def readme_restore_drill() -> list[str]:
    text = README.read_text()
    block = text.split("<!-- restore-drill -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.strip().splitlines() if line.strip()]


async def test_readme_restore_drill_works_as_written(deployed: Deployed) -> None:
    prefix = "docker compose -f deploy/docker-compose.yml exec -T app "
    drill = readme_restore_drill()
    assert drill and all(line.startswith(prefix) for line in drill), drill
    assert any(" backup restore " in line and "--force" in line for line in drill)

    async with httpx.AsyncClient(base_url=deployed.url, timeout=10) as client:
        before = await register(client, unique_email("before"))
        created = podman("exec", deployed.app, "timetodo", "backup", "create", "--keep", "14")
        archive = re.search(r"created (/data/backups/\S+\.tar)", created.stdout)
        assert archive, created.stdout
        after = await register(client, unique_email("after"))

        for line in drill:
            argv = shlex.split(line.removeprefix(prefix))
            argv = [re.sub(r"^/data/backups/timetodo-\S+\.tar$", archive.group(1), word) for word in argv]
            result = podman("exec", deployed.app, *argv, check=False, timeout=300)
            assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

        # The data is the backup's: the account made after it is gone, the one before it logs in.
        assert (await login(client, after["email"])).status_code == 401
        assert (await login(client, before["email"])).status_code == 200
        detailed = (await client.get("/health/detailed")).json()
        assert detailed["maintenance"] is False, "the drill ends with maintenance off"
