"""Real nginx on loopback in front of `timetodo serve` processes, configured by timetodo.ops.nginx."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support import free_port
from timetodo.ops.nginx import render_nginx_config

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class NginxProcess:
    def __init__(self, directory: Path, upstreams: list[str], max_upload_mb: int = 25, **options: Any) -> None:
        """`options` go to render_nginx_config (e.g. metrics_allow)."""
        self.options = options
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.max_upload_mb = max_upload_mb
        self.conf = self.dir / "nginx.conf"
        self.write_config(upstreams)
        subprocess.run([NGINX, "-t", "-q", *self._args()], check=True, capture_output=True, timeout=30)
        subprocess.run([NGINX, *self._args()], check=True, capture_output=True, timeout=30)
        self.pid = int((self.dir / "nginx.pid").read_text())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/nginx-health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx did not start:\n{self.error_log()}")

    def _args(self) -> list[str]:
        return ["-c", str(self.conf), "-p", str(self.dir), "-e", str(self.dir / "error.log")]

    def write_config(self, upstreams: list[str]) -> None:
        self.upstreams = upstreams
        self.conf.write_text(
            render_nginx_config(
                upstreams=upstreams,
                listen_address="127.0.0.1",
                listen_port=self.port,
                max_upload_mb=self.max_upload_mb,
                standalone=True,
                pid_file=str(self.dir / "nginx.pid"),
                **self.options,
            )
        )

    def reload(self, upstreams: list[str], timeout: float = 30) -> None:
        """Switch to `upstreams` and wait until every old worker has finished its requests and exited."""
        self.write_config(upstreams)
        subprocess.run([NGINX, "-t", "-q", *self._args()], check=True, capture_output=True, timeout=30)
        old = _children(self.pid)
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while _children(self.pid) & old or len(_children(self.pid) - old) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx reload did not finish:\n{self.error_log()}")
            time.sleep(0.02)

    def __enter__(self) -> NginxProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGQUIT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
