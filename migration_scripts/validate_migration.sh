#!/usr/bin/env bash
# Compare source and target; writes migration_validation_report.txt/.json
# Thin wrapper over `timetodo migrate validate` (every flag passed through); the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_timetodo.sh
source "$(dirname "${BASH_SOURCE[0]}")/_timetodo.sh"
migrate validate "$@"
