#!/usr/bin/env bash
# Make sure `uv` exists and the project's virtualenv matches uv.lock. Sourced by dev.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check uv >&2 || python3 -m pip install --quiet --user uv >&2
  export PATH="$HOME/.local/bin:$PATH"
fi
cd "$ROOT"
uv sync --frozen --compile-bytecode --quiet >&2
