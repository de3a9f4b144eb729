#!/usr/bin/env bash
# Deploy the app on the target and wait until /health/detailed is green
# Thin wrapper over `timetodo migrate deploy` (every flag passed through); the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_timetodo.sh
source "$(dirname "${BASH_SOURCE[0]}")/_timetodo.sh"
migrate deploy "$@"
