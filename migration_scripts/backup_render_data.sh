#!/usr/bin/env bash
# Back up the source (database, Redis keys with TTLs, uploads) into one archive <work_dir>/backups/timetodo-<time>.tar
# (the format `timetodo backup verify` and `timetodo backup restore` read)
# Thin wrapper over `timetodo migrate`; the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then exec timetodo migrate backup --help; fi
exec timetodo migrate backup --config "${MIGRATION_CONFIG:-migration.toml}" "$@"
