#!/usr/bin/env bash
# Prepare the target host (Docker, deploy user, ufw, swap, fail2ban, unattended-upgrades) and self-check it
# Thin wrapper over `timetodo migrate`; the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then exec timetodo migrate prepare --help; fi
exec timetodo migrate prepare --config "${MIGRATION_CONFIG:-migration.toml}" "$@"
