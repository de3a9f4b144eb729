#!/usr/bin/env bash
# The whole migration: [--skip-backup] [--skip-prepare] [--validate-only] [--dry-run] [--yes] [--resume]
# Thin wrapper over `timetodo migrate run` (every flag passed through); the configuration is ${MIGRATION_CONFIG:-migration.toml}.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_timetodo.sh
source "$(dirname "${BASH_SOURCE[0]}")/_timetodo.sh"
migrate run "$@"
