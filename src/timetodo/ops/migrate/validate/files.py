"""`compare_files`: two `{relpath: sha256}` manifests, both ways."""

from __future__ import annotations

from dataclasses import dataclass, field

from timetodo.ops.migrate.validate.common import MAX_NAMED, Verdict, more


@dataclass
class FilesComparison(Verdict):
    source_files: int
    target_files: int
    missing_on_target: list[str] = field(default_factory=list)
    extra_on_target: list[str] = field(default_factory=list)
    hash_differs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def compare_files(source: dict[str, str], target: dict[str, str]) -> FilesComparison:
    """Two `{relative path: sha256}` manifests (`timetodo.ops.files.scan_tree`), compared both ways."""
    result = FilesComparison(len(source), len(target))
    result.missing_on_target = sorted(path for path in source if path not in target)
    result.extra_on_target = sorted(path for path in target if path not in source)
    result.hash_differs = sorted(path for path, sha in source.items() if path in target and target[path] != sha)
    for paths, what in (
        (result.missing_on_target, "missing on target"),
        (result.extra_on_target, "only on target"),
        (result.hash_differs, "sha256 differs"),
    ):
        for path in paths[:MAX_NAMED]:
            result.errors.append(f"file {path}: {what}")
        if len(paths) > MAX_NAMED:
            result.errors.append(more(len(paths) - MAX_NAMED, f"files {what}"))
    return result
