#!/usr/bin/env bash
# The whole migration: [--skip-backup] [--skip-prepare] [--validate-only] [--dry-run] [--yes] [--resume]
# Thin wrapper over `timetodo migrate`; the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then exec timetodo migrate run --help; fi
exec timetodo migrate run --config "${MIGRATION_CONFIG:-migration.toml}" "$@"
