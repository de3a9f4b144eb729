#!/usr/bin/env bash
# Deploy the app on the target and wait until /health/detailed is green
# Thin wrapper over `timetodo migrate`; the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then exec timetodo migrate deploy --help; fi
exec timetodo migrate deploy --config "${MIGRATION_CONFIG:-migration.toml}" "$@"
