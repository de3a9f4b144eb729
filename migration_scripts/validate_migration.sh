#!/usr/bin/env bash
# Compare source and target; writes migration_validation_report.txt/.json
# Thin wrapper over `timetodo migrate`; the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then exec timetodo migrate validate --help; fi
exec timetodo migrate validate --config "${MIGRATION_CONFIG:-migration.toml}" "$@"
