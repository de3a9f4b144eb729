#!/usr/bin/env bash
# Set up and start Time to DO on its embedded default: SQLite in ./data, in-process cache, no Redis.
# Usage: ./scripts/dev.sh [timetodo serve options, e.g. --port 8001]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
echo "Starting Time to DO on SQLite (data in $ROOT/data). API docs: http://127.0.0.1:8000/docs" >&2
exec uv run --frozen timetodo serve "$@"
