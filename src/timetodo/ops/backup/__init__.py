"""Backup archives of a Time to DO installation, usable without the CLI and by `timetodo migrate backup`.

One format (see `manifest` for what an archive holds): `create` writes it, `verify` checks it without restoring,
`restore` puts it back and re-counts. Every function takes the installation's `DataSources`, not the app's
settings, so the migration can back up a source it only knows by URL.
"""

from timetodo.ops.backup.create import create_backup
from timetodo.ops.backup.manifest import (
    ARCHIVE_RE,
    MANIFEST_NAME,
    PG_PART,
    REDIS_PART,
    SQLITE_PART,
    UPLOADS_PART,
    ArchiveCorrupt,
    ArchiveInfo,
    BackupConfigError,
    BackupError,
    Check,
    CreateResult,
    Manifest,
    PartInfo,
    Problem,
    ProgressCallback,
    ProgressUpdate,
    RestoreRefused,
    RestoreResult,
    Unreachable,
    VerifyResult,
    archives_in,
    list_archives,
    parse_manifest,
    prune_archives,
    read_manifest,
)
from timetodo.ops.backup.restore import inspect_target, restore_backup
from timetodo.ops.backup.verify import verify_archive

__all__ = [
    "ARCHIVE_RE",
    "MANIFEST_NAME",
    "PG_PART",
    "REDIS_PART",
    "SQLITE_PART",
    "UPLOADS_PART",
    "ArchiveCorrupt",
    "ArchiveInfo",
    "BackupConfigError",
    "BackupError",
    "Check",
    "CreateResult",
    "Manifest",
    "PartInfo",
    "Problem",
    "ProgressCallback",
    "ProgressUpdate",
    "RestoreRefused",
    "RestoreResult",
    "Unreachable",
    "VerifyResult",
    "archives_in",
    "create_backup",
    "inspect_target",
    "list_archives",
    "parse_manifest",
    "prune_archives",
    "read_manifest",
    "restore_backup",
    "verify_archive",
]
