#!/usr/bin/env bash
# Prepare the target host (Docker, deploy user, ufw, swap, fail2ban, unattended-upgrades) and self-check it
# Thin wrapper over `timetodo migrate prepare` (every flag passed through); the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_timetodo.sh
source "$(dirname "${BASH_SOURCE[0]}")/_timetodo.sh"
migrate prepare "$@"
