"""Attachment throughput: upload and download of a `--mb` file through `timetodo serve` vs a plain file copy.

Starts one `timetodo serve` (SQLite, no Redis; uploads on the same disk as the copy), writes a random file, then
measures in the same run: `shutil.copyfile` of the file (the baseline), the multipart upload streamed by httpx,
the download streamed to disk, and the server's resident memory (VmRSS of the serve process, sampled every 10 ms)
before and at its peak during each transfer.

    uv run python bench/files.py [--mb 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.server import ServerProcess, server_env  # noqa: E402
from tests.support import PASSWORD  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Sample a process's RSS in a thread while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self.before = rss_kib(pid)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.01)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "out" / "files.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ttd-bench-files-", dir=ROOT / "bench"))  # same disk as the uploads
    env = server_env(f"sqlite:///{work}/data/timetodo.db", None, work / "data")
    env |= {"LOG_LEVEL": "WARNING", "MAX_UPLOAD_MB": str(args.mb + 10), "USER_QUOTA_MB": str((args.mb + 10) * 10)}
    (work / "data").mkdir()
    source = work / "source.bin"
    with source.open("wb") as fh:
        for _ in range(args.mb):
            fh.write(os.urandom(1024 * 1024))
    size = source.stat().st_size
    server = ServerProcess(env, work)
    results: dict[str, list[float]] = {"copy": [], "upload": [], "download": []}
    rss: dict[str, list[int]] = {"upload": [], "download": []}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=300) as c:
            c.post("/api/v1/auth/register", json={"email": "files@example.com", "password": PASSWORD})
            token = c.post("/api/v1/auth/login", data={"username": "files@example.com", "password": PASSWORD}).json()
            c.headers["Authorization"] = f"Bearer {token['access_token']}"
            task = c.post("/api/v1/tasks", json={"title": "files"}).json()
            for n in range(args.rounds):
                target = work / f"copy-{n}.bin"
                t0 = time.perf_counter()
                shutil.copyfile(source, target)
                os.sync()
                results["copy"].append(time.perf_counter() - t0)
                target.unlink()

                # a different file each round: identical content would be stored once (content addressing)
                with source.open("r+b") as fh:
                    fh.write(os.urandom(64))
                with source.open("rb") as fh, PeakRss(server.proc.pid) as probe:
                    t0 = time.perf_counter()
                    resp = c.post(f"/api/v1/tasks/{task['id']}/attachments", files={"file": ("big.bin", fh)})
                    os.sync()
                    results["upload"].append(time.perf_counter() - t0)
                assert resp.status_code == 201, resp.text
                rss["upload"].append(probe.peak - probe.before)
                attachment = resp.json()

                out = work / f"download-{n}.bin"
                with PeakRss(server.proc.pid) as probe, out.open("wb") as fh:
                    t0 = time.perf_counter()
                    with c.stream("GET", f"/api/v1/attachments/{attachment['id']}") as stream:
                        for chunk in stream.iter_bytes(1024 * 1024):
                            fh.write(chunk)
                    fh.flush()
                    os.sync()
                    results["download"].append(time.perf_counter() - t0)
                rss["download"].append(probe.peak - probe.before)
                assert out.stat().st_size == size
                out.unlink()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    mb = size / 1024 / 1024
    copy = statistics.median(results["copy"])
    print(f"\n{mb:.0f} MB file, {args.rounds} rounds, medians; server RSS growth is the max over rounds\n")
    print(f"{'operation':<10}{'seconds':>9}{'MB/s':>9}{'vs copy':>9}{'RSS +MB':>9}")
    for name, times in results.items():
        t = statistics.median(times)
        growth = f"{max(rss[name]) / 1024:>9.1f}" if name in rss else f"{'':>9}"
        print(f"{name:<10}{t:>9.2f}{mb / t:>9.0f}{t / copy:>8.1f}x{growth}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"mb": mb, "seconds": results, "rss_growth_kib": rss}, indent=2))


if __name__ == "__main__":
    main()
