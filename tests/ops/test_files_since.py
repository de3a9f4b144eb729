"""The uploads' in-freeze pass (`data.copy_changed_files`) over a real sshd: the pre-pass records the source's and
the target's listings; the freeze lists the source once, copies only what changed (one hop, source host → target
host) and deletes what the source lost; nothing changed costs one listing; a resumed pass uses rsync again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.ops.conftest import Sshd
from timetodo.files.storage import INCOMING
from timetodo.ops.adapters import filecopy
from timetodo.ops.migrate import data

NAMES = ["plain.txt", "sub dir/with space.bin", "-leading-dash", "semi;colon $(touch X)", "new\nline", "a/b/c.txt"]


class _Activity:
    async def __aenter__(self) -> Any:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Runtime:
    def __init__(self) -> None:
        self.owned: list[str] = []

    async def own_uploads(self, directory: str) -> None:
        self.owned.append(directory)


def _ctx(tmp_path: Path, sshd: Sshd) -> Any:
    runtime = _Runtime()

    async def get_runtime() -> _Runtime:
        return runtime

    return SimpleNamespace(
        work_dir=tmp_path / "work",
        config=SimpleNamespace(
            source=SimpleNamespace(uploads=SimpleNamespace(path=str(tmp_path / "source"))),
            target_uploads_dir=str(tmp_path / "target"),
        ),
        source_files_ssh=lambda: sshd.target,
        target_ssh=lambda: sshd.target,
        activity=lambda *a, **k: _Activity(),
        runtime=get_runtime,
        owned=runtime.owned,
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and INCOMING not in path.relative_to(root).parts
    }


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SSH command the file copy runs (listings, deletes, tar pipes), and every rsync."""
    calls: list[str] = []
    run, pipe = filecopy._run, filecopy._pipe

    async def counting_run(args: list[str], stdin: bytes, what: str) -> tuple[bytes, bytes]:
        calls.append(what)
        return await run(args, stdin, what)

    async def counting_pipe(producer: list[str], consumer: list[str], names: bytes, what: str) -> bytes:
        calls.append(what)
        return await pipe(producer, consumer, names, what)

    original = data.copy_files

    async def counting_copy_files(ctx: Any, *, live: bool = False) -> dict[str, Any]:
        calls.append("rsync both hops")
        return await original(ctx, live=live)

    monkeypatch.setattr(filecopy, "_run", counting_run)
    monkeypatch.setattr(filecopy, "_pipe", counting_pipe)
    monkeypatch.setattr(data, "copy_files", counting_copy_files)
    return calls


def test_the_freeze_moves_only_changed_uploads_in_one_hop(tmp_path: Path, sshd: Sshd, counted: list[str]) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    for i, name in enumerate(NAMES):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(f"{name}\n".encode() * (i + 1))
    (source / INCOMING).mkdir()
    (source / INCOMING / "half").write_bytes(b"partial")
    ctx = _ctx(tmp_path, sshd)

    pre = asyncio.run(data.copy_changed_files(ctx, live=True))
    assert pre["recorded"] == len(NAMES) and _tree(target) == _tree(source)

    # nothing changed: one listing of the source (one SSH round trip), no rsync, no copy, no chown
    counted.clear()
    nothing = asyncio.run(data.copy_changed_files(ctx, live=False))
    assert (nothing["files"], nothing["deleted"], nothing["compared"]) == (0, 0, len(NAMES))
    assert len(counted) == 1 and counted[0].startswith("listing"), counted
    assert ctx.owned == ["/".join([str(tmp_path), "target"])]  # the pre-pass's rsync only

    # a fresh pre-pass, then every kind of change: rewritten (same size), replaced by a rename with the old mtime
    # (same size and mtime: only the inode tells), new, deleted; the upload in progress stays out
    asyncio.run(data.copy_changed_files(ctx, live=True))
    old = (source / "plain.txt").stat()
    (source / "plain.txt").write_bytes(b"X" * old.st_size)
    replaced = source / "a/b/c.txt"
    stat = replaced.stat()
    (source / "a/b/new").write_bytes(b"Y" * stat.st_size)
    os.utime(source / "a/b/new", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (source / "a/b/new").rename(replaced)
    (source / "brand new.txt").write_bytes(b"new")
    (source / "-leading-dash").unlink()
    (source / INCOMING / "half").write_bytes(b"more partial")
    counted.clear()
    frozen = asyncio.run(data.copy_changed_files(ctx, live=False))
    assert (frozen["files"], frozen["deleted"]) == (3, 1), frozen
    assert frozen["bytes"] == old.st_size + stat.st_size + 3
    assert _tree(target) == _tree(source) and not (target / INCOMING / "half").exists()
    assert "rsync both hops" not in counted and counted.count("tar copy") == 1

    # a second in-freeze pass (a resumed run) does not trust the record: rsync, with --delete
    (source / "brand new.txt").unlink()
    again = asyncio.run(data.copy_changed_files(ctx, live=False))
    assert "rsync both hops" in counted and "compared" not in again
    assert _tree(target) == _tree(source)


def test_changed_files_compares_with_both_listings() -> None:
    before = {"same": (3, 5_000_000_001, 7), "rewritten": (3, 1, 8), "gone": (1, 1, 9), "lagging": (2, 2, 10)}
    target = {"same": (3, 5_000_000_000, 0), "rewritten": (3, 1, 0), "gone": (1, 1, 0), "lagging": (1, 2, 0)}
    now = {"same": (3, 5_000_000_001, 7), "rewritten": (3, 2, 8), "lagging": (2, 2, 10), "new": (4, 4, 11)}
    copy, delete = data.changed_files(before, target, now)
    # "same": the target's mtime has whole seconds only (tar): equal; "lagging": the target kept an older size
    assert copy == ["lagging", "new", "rewritten"] and delete == ["gone"]
