"""Start real `timetodo serve` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.support import free_port

TIMETODO = str(Path(sys.executable).parent / "timetodo")


class ServerProcess:
    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        workers: int = 1,
        port: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{self.port}.log"
        self.workdir = workdir
        full_env = {**os.environ, **env}
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [TIMETODO, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers), *args],
            env=full_env,
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        # Uvicorn re-raises the signal it handled after a graceful shutdown: death by SIGTERM is a clean exit.
        return 0 if self.proc.returncode == -signal.SIGTERM else self.proc.returncode


def server_env(database_url: str, redis_url: str | None, data_dir: Path) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "SECRET_KEY": "e2e-secret-key-long-enough-for-production-0123",
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "INFO",
        "MAINTENANCE_CACHE_SECONDS": "1",
        "WS_AUTH_TIMEOUT_SECONDS": "1",
        "WS_PING_SECONDS": "1",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`timetodo ARGS` with `env` on top of this process's environment."""
    return subprocess.run(
        [TIMETODO, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False
    )
