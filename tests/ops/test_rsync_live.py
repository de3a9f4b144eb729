"""rsync during a live source (issue 10, item 7): a user deleting an attachment while the pre-freeze copy runs makes
rsync exit 24 ("some files vanished"). That is tolerated and counted with `live=True` (the copy before the freeze),
and stays an error without it (the final copy inside the freeze must be exact).

The race is real: a thread deletes files of the source while rsync is transferring them (after rsync has listed
the directory: its first output file appears in the destination), from the end of the list it works through.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from timetodo.ops.adapters.rsync import Place, RsyncError, rsync

FILES = 120
SIZE = 512 * 1024
DELETE = 30
ATTEMPTS = 4


def make_source(root: Path) -> list[Path]:
    root.mkdir(parents=True)
    block = os.urandom(SIZE)
    paths = []
    for i in range(FILES):
        path = root / f"f{i:04d}.bin"
        path.write_bytes(block[i:] + block[:i])
        paths.append(path)
    return paths


def delete_once_copying(source: list[Path], dst: Path, stop: threading.Event, deleted: list[Path]) -> None:
    """Wait until rsync writes into `dst` (it has listed the source by then), then delete the last files."""
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        if dst.is_dir() and any(dst.iterdir()):
            for path in reversed(source[-DELETE:]):
                path.unlink()
                deleted.append(path)
            return
        time.sleep(0.001)


async def race(tmp: Path, attempt: int, *, live: bool) -> tuple[dict[str, object] | RsyncError, list[Path]]:
    src, dst = tmp / f"src{attempt}", tmp / f"dst{attempt}"
    files = make_source(src)
    stop, deleted = threading.Event(), []
    deleter = threading.Thread(target=delete_once_copying, args=(files, dst, stop, deleted))
    deleter.start()
    try:
        outcome: dict[str, object] | RsyncError = await rsync(Place(str(src)), Place(str(dst)), live=live)
    except RsyncError as exc:
        outcome = exc
    finally:
        stop.set()
        await asyncio.to_thread(deleter.join)
    return outcome, deleted


@pytest.mark.slow
async def test_live_copy_counts_files_deleted_while_it_runs(tmp_path: Path) -> None:
    for attempt in range(ATTEMPTS):
        outcome, deleted = await race(tmp_path, attempt, live=True)
        assert not isinstance(outcome, RsyncError), outcome  # exit 24 is not fatal before the freeze
        if deleted and int(outcome["vanished"]) > 0:  # type: ignore[call-overload]
            assert int(outcome["vanished"]) <= len(deleted)  # type: ignore[call-overload]
            copied = {p.name for p in (tmp_path / f"dst{attempt}").iterdir()}
            assert len(copied) == FILES - int(outcome["vanished"])  # type: ignore[call-overload]
            return
    pytest.fail(f"no file vanished mid-copy in {ATTEMPTS} attempts (rsync was faster than the deleter)")


@pytest.mark.slow
async def test_inside_the_freeze_a_vanished_file_stays_an_error(tmp_path: Path) -> None:
    for attempt in range(ATTEMPTS):
        outcome, _deleted = await race(tmp_path, attempt, live=False)
        if isinstance(outcome, RsyncError):
            assert "exit 24" in str(outcome) and "vanished" in str(outcome)
            return
        assert outcome["vanished"] == 0
    pytest.fail(f"no file vanished mid-copy in {ATTEMPTS} attempts (rsync was faster than the deleter)")
