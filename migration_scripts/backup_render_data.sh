#!/usr/bin/env bash
# Back up the source (database, Redis keys with TTLs, uploads) into one archive <work_dir>/backups/timetodo-<time>.tar
# Thin wrapper over `timetodo migrate backup` (every flag passed through); the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_timetodo.sh
source "$(dirname "${BASH_SOURCE[0]}")/_timetodo.sh"
migrate backup "$@"
