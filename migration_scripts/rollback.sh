#!/usr/bin/env bash
# Back to the source with nothing lost: [--force] skips the confirmation
# Thin wrapper over `timetodo migrate rollback` (every flag passed through); the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_timetodo.sh
source "$(dirname "${BASH_SOURCE[0]}")/_timetodo.sh"
migrate rollback "$@"
