#!/usr/bin/env bash
# Set up and run the whole suite: lint (ruff, mypy) and tests on SQLite and on PostgreSQL + Redis.
# The tests start their own PostgreSQL 15, Redis, nginx and sshd on loopback through scripts/ (installed from
# apt when missing), and build the production image with podman (`-m image` selects those tests, `-m "not image"`
# skips them). Extra arguments go to pytest, e.g. ./scripts/test.sh -k tasks
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# System packages the tests drive for real; one apt transaction instead of one per script.
need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql postgresql-contrib)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
[ -x /usr/sbin/sshd ] || need+=(openssh-server openssh-client)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the migration report rendered headless (tests/ops/test_report.py)
# The production image built and run with podman (tests/deploy/test_image.py) from a debootstrapped Debian 12
# (scripts/rootfs.sh, also the real OS of the prepare tests): runc is the runtime that works here, catatonit backs
# `--init` (compose's `init: true`).
command -v podman >/dev/null 2>&1 || need+=(podman containernetworking-plugins)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)  # debootstrap on Ubuntu
# a real ACME server (tests/ops/test_acme.py) and the client the deploy uses
command -v pebble >/dev/null 2>&1 || need+=(pebble)
command -v certbot >/dev/null 2>&1 || need+=(certbot)
# `prepare` on a debootstrapped Debian 12 in a network namespace (tests/ops/test_prepare_os.py): its apt relay
command -v socat >/dev/null 2>&1 || need+=(socat)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  else
    echo "missing system packages (install them or run as root with apt): ${need[*]}" >&2
  fi
fi

source "$ROOT/scripts/bootstrap.sh"
echo "== ruff check" >&2; uv run --frozen ruff check src tests bench scripts
echo "== ruff format --check" >&2; uv run --frozen ruff format --check src tests bench scripts
echo "== mypy" >&2; uv run --frozen mypy
echo "== pytest" >&2
exec uv run --frozen pytest "$@"
