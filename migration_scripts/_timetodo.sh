# shellcheck shell=bash
# Sourced by the scripts of migration_scripts/: `migrate SUBCOMMAND ARGS...` runs `timetodo migrate SUBCOMMAND
# --config "${MIGRATION_CONFIG:-migration.toml}" ARGS...` (every flag passed through; a later --config wins) with
# this checkout's own environment, from any directory:
#   - $TIMETODO, when set: that executable (an installed `timetodo`);
#   - else, inside a checkout (pyproject.toml + uv.lock next to this folder): scripts/bootstrap.sh makes sure uv
#     exists and .venv matches uv.lock (as scripts/dev.sh does; it is quick when nothing changed), then
#     .venv/bin/timetodo runs;
#   - else `timetodo` on PATH.
# The working directory is left alone, so a relative --config or MIGRATION_CONFIG is read from where you are.

_TTD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

migrate() {
  local subcommand="$1"
  shift
  local config="${MIGRATION_CONFIG:-migration.toml}"
  if [ "${1:-}" = "-h" ]; then  # the seed's scripts took -h too; timetodo knows only --help
    shift
    set -- --help "$@"
  fi
  local bin
  if [ -n "${TIMETODO:-}" ]; then
    bin="$TIMETODO"
  elif [ -f "$_TTD_ROOT/pyproject.toml" ] && [ -f "$_TTD_ROOT/uv.lock" ]; then
    if ! bash "$_TTD_ROOT/scripts/bootstrap.sh"; then
      echo "$(basename "$0"): could not set up the environment of $_TTD_ROOT (scripts/bootstrap.sh failed)" >&2
      exit 127
    fi
    bin="$_TTD_ROOT/.venv/bin/timetodo"
  elif command -v timetodo >/dev/null 2>&1; then
    bin="$(command -v timetodo)"
  else
    echo "$(basename "$0"): timetodo not found: run it from a checkout of the project, or set TIMETODO=/path/to/timetodo" >&2
    exit 127
  fi
  exec "$bin" migrate "$subcommand" --config "$config" "$@"
}
