"""Upload folders to and from a host without rsync (issue 12, item 6): a second real sshd whose sessions get a PATH
with the usual tools but no rsync, as on a Render service still running an image built without it. The tar path
must leave the same tree rsync leaves, incrementally, with any file name, and the rsync path stays the choice where
the remote has rsync."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.conftest import Sshd
from tests.support import ROOT, free_port, run_script
from timetodo.files.storage import INCOMING
from timetodo.ops.adapters.filecopy import _HAS_RSYNC, copy_tree, remote_has_rsync
from timetodo.ops.adapters.rsync import Place, RsyncError
from timetodo.ops.adapters.transport import SSHTarget

TOOLS = ("sh", "bash", "tar", "find", "xargs", "rm", "mkdir", "cat", "gzip")
NAMES = ["plain.txt", "sub dir/with space.bin", "-leading-dash", "semi;colon $(touch X)", "new\nline", "deep/a/b/c.txt"]


@pytest.fixture(scope="module")
def sshd_without_rsync(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHTarget]:
    directory = tmp_path_factory.mktemp("sshd-no-rsync")
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    (directory / "sshd_config.extra").write_text(f"SetEnv PATH={bin_dir}\n")
    port = free_port()
    try:
        fields = dict(
            item.split("=", 1) for item in run_script("scripts/sshd.sh", "start", str(directory), str(port)).split()
        )
        yield SSHTarget(
            host=fields["host"],
            port=port,
            user=fields["user"],
            key_file=Path(fields["key"]),
            known_hosts=Path(fields["known_hosts"]),
            connect_timeout=5,
        )
    finally:
        subprocess.run(["bash", "scripts/sshd.sh", "stop", str(directory)], cwd=ROOT, capture_output=True, timeout=60)


def make_tree(root: Path) -> dict[str, bytes]:
    contents = {name: f"{name}\n".encode() * (i + 1) for i, name in enumerate(NAMES)}
    for name, data in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / INCOMING).mkdir()
    (root / INCOMING / "half-uploaded").write_bytes(b"partial")
    return contents


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        if path.is_file() and not rel.startswith(INCOMING + "/"):
            out[rel] = (path.read_bytes(), int(path.stat().st_mtime))
    return out


async def test_the_remote_without_rsync_is_recognised(sshd: Sshd, sshd_without_rsync: SSHTarget) -> None:
    _HAS_RSYNC.clear()
    assert await remote_has_rsync(sshd.target) is True
    assert await remote_has_rsync(sshd_without_rsync) is False


async def test_pull_and_push_over_tar_match_the_source_incrementally(
    sshd_without_rsync: SSHTarget, tmp_path: Path
) -> None:
    _HAS_RSYNC.clear()
    remote_src = tmp_path / "on the host; touch INJECTED-by-filecopy"  # the remote path is one quoted word
    remote_src.mkdir()
    make_tree(remote_src)
    local = tmp_path / "staging"
    pulled = await copy_tree(Place(str(remote_src), sshd_without_rsync), Place(str(local)))
    assert pulled["method"] == "tar" and pulled["files"] == len(NAMES), pulled
    assert tree(local) == tree(remote_src)
    assert not (local / INCOMING).exists()
    assert not (Path.home() / "INJECTED-by-filecopy").exists() and not (Path.home() / "X").exists()

    again = await copy_tree(Place(str(remote_src), sshd_without_rsync), Place(str(local)))
    assert again["files"] == 0 and again["bytes"] == 0, again

    (remote_src / "plain.txt").write_bytes(b"changed, longer than before\n")
    (remote_src / "deep/a/b/c.txt").unlink()
    (remote_src / "added.txt").write_bytes(b"added\n")
    changed = await copy_tree(Place(str(remote_src), sshd_without_rsync), Place(str(local)))
    assert (changed["files"], changed["deleted"]) == (2, 1), changed
    assert tree(local) == tree(remote_src)

    remote_dst = tmp_path / "target uploads"
    pushed = await copy_tree(Place(str(local)), Place(str(remote_dst), sshd_without_rsync))
    assert pushed["method"] == "tar" and tree(remote_dst) == tree(local)
    (remote_dst / "stale.txt").write_bytes(b"not on the source")
    kept = await copy_tree(Place(str(local)), Place(str(remote_dst), sshd_without_rsync), delete=False)
    assert kept["files"] == 0 and (remote_dst / "stale.txt").exists()
    await copy_tree(Place(str(local)), Place(str(remote_dst), sshd_without_rsync))
    assert tree(remote_dst) == tree(local)


async def test_tar_copy_leaves_the_tree_rsync_leaves(sshd: Sshd, sshd_without_rsync: SSHTarget, tmp_path: Path) -> None:
    _HAS_RSYNC.clear()
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    by_rsync = await copy_tree(Place(str(src), sshd.target), Place(str(tmp_path / "by-rsync")))
    by_tar = await copy_tree(Place(str(src), sshd_without_rsync), Place(str(tmp_path / "by-tar")))
    assert (by_rsync["method"], by_tar["method"]) == ("rsync", "tar")
    assert tree(tmp_path / "by-rsync") == tree(tmp_path / "by-tar") == tree(src)


async def test_a_file_vanishing_is_an_error_unless_the_source_is_live(
    sshd_without_rsync: SSHTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing names a file that is gone when tar reaches it (a user deleted it during a live copy)."""
    from timetodo.ops.adapters import filecopy

    _HAS_RSYNC.clear()
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    listing = filecopy._remote_listing

    async def listing_then_delete(target: SSHTarget, directory: str) -> filecopy.Listing:
        seen = await listing(target, directory)
        if directory == str(src):
            os.unlink(src / "plain.txt")
        return seen

    monkeypatch.setattr(filecopy, "_remote_listing", listing_then_delete)
    with pytest.raises(RsyncError):
        await copy_tree(Place(str(src), sshd_without_rsync), Place(str(tmp_path / "exact")))
    (src / "plain.txt").write_bytes(b"back\n")
    live = await copy_tree(Place(str(src), sshd_without_rsync), Place(str(tmp_path / "live")), live=True)
    assert live["vanished"] == 1 and live["files"] == len(NAMES) - 1, live
