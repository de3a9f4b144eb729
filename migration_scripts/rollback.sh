#!/usr/bin/env bash
# Back to the source with nothing lost: [--force] skips the confirmation
# Thin wrapper over `timetodo migrate`; the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then exec timetodo migrate rollback --help; fi
exec timetodo migrate rollback --config "${MIGRATION_CONFIG:-migration.toml}" "$@"
