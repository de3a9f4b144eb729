# syntax=docker/dockerfile:1
# Time to DO: the production image (SPEC 3).
#
#   docker build -t timetodo .
#   docker run --rm -p 127.0.0.1:8000:8000 -e DATABASE_URL=... -e SECRET_KEY=... timetodo
#
# The CMD does not migrate: with several instances starting at once, migrations run exactly once per deploy,
# before the new instances start: the one-shot `migrate` service in deploy/docker-compose.yml and Render's
# preDeployCommand both run `timetodo db upgrade` with this same image.

# The base is pinned to Debian 12 (bookworm): its own postgresql-client-15 matches the server's major (pg_dump and
# pg_restore 15 for `timetodo backup`). Tests build this file under podman with a locally made stand-in for this base
# (scripts/podman.sh, README "What is checked here").

# ---- build: resolve the locked dependencies and install the project (not editable) into /app/.venv ----------
FROM python:3.11-slim-bookworm AS build

ARG UV_VERSION=0.13.9
# UV_NATIVE_TLS: uv trusts the system's certificates (/etc/ssl/certs) like pip and apt, so a build behind a
# TLS-inspecting proxy works once that proxy's CA is there.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_NATIVE_TLS=1 \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /src
# Dependencies first: this layer is reused until pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

# ---- runtime: the same Python, the virtualenv, the backup tools, an unprivileged user -------------------------
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="Time to DO" \
      org.opencontainers.image.description="Task-and-time backend (FastAPI) with its operations toolkit" \
      org.opencontainers.image.licenses="MIT"

# pg_dump/pg_restore 15 (`timetodo backup`, the nightly `backup` service in compose) and rsync (`timetodo migrate`
# pulls uploads with it). Pinned to their major only, so Debian 12's security updates still apply.
RUN apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-client-15=15.*" "rsync=3.*" \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*

RUN groupadd --system --gid 10001 timetodo \
    && useradd --system --no-log-init --uid 10001 --gid timetodo --home-dir /app --shell /usr/sbin/nologin timetodo \
    && mkdir -p /app/logs /data/uploads /data/backups \
    && chown -R timetodo:timetodo /app/logs /data

# Owned by root and read-only for the app: the code cannot be changed by the process that runs it.
COPY --from=build /app/.venv /app/.venv

ENV PATH=/app/.venv/bin:$PATH \
    DATA_DIR=/data \
    UPLOAD_DIR=/data/uploads \
    LOG_FILE=/app/logs/app.log \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app
# Numeric, so runtimes that check "runAsNonRoot" can verify it without reading /etc/passwd (user timetodo).
USER 10001:10001

# Uploaded files, backup archives and the rotating log file outlive the container; the directories belong to the
# app user, so a fresh named volume mounted there starts with the same owner.
VOLUME ["/data/uploads", "/data/backups", "/app/logs"]
EXPOSE 8000

# Liveness only (no database round trip): python's urllib, so the image needs no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

# Uvicorn finishes in-flight requests on SIGTERM within GRACEFUL_SHUTDOWN_SECONDS; give the container more than
# that to stop (compose: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["timetodo", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
