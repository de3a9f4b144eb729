"""Uvicorn's worker supervisor with one listening socket per worker, bound with `SO_REUSEPORT`.

Why: with uvicorn's shared socket, whichever worker wakes first accepts a burst of new connections, so a client
that opens its keep-alive connections together (a proxy's pool, a load generator) often ends up with most of them on
one worker — the other workers idle while that one queues (the API benchmark saw one worker holding 88–100 % of
32 connections in a third of its runs). With a socket per worker in one `SO_REUSEPORT` group, the kernel assigns
each new connection to a socket by a hash of its addresses, so connections spread evenly whatever the timing.

Guarantees: everything else is uvicorn's `Multiprocess` (health checks, a dead or hung worker replaced, SIGHUP
rolling restart, SIGTTIN/SIGTTOU, graceful SIGTERM/SIGINT). The parent binds and holds every worker's socket, and a
replacement worker inherits the socket of the worker it replaces: connections the kernel queued on a socket while
its worker was being replaced wait in that socket's backlog and are accepted by the replacement, not reset.
The address must be free: a server already listening there (even one in its own `SO_REUSEPORT` group) makes start-up
fail, as with a shared socket. Linux (and other systems with `SO_REUSEPORT` load balancing) only: `available()`
says whether it can be used.
"""

from __future__ import annotations

import logging
import socket

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

logger = logging.getLogger("uvicorn.error")


def available() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def bind(config: Config) -> socket.socket:
    """A listening socket on the configured address, in the address's `SO_REUSEPORT` group."""
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((config.host, config.port))
    sock.listen(config.backlog)
    sock.set_inheritable(True)
    return sock


def ensure_free(config: Config) -> None:
    """Raise OSError when something listens on the address already. `SO_REUSEPORT` alone would let a second server
    of the same user join the first one's group and silently take a share of its connections; a plain bind fails."""
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    with socket.socket(family=family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((config.host, config.port))


class ReusePortMultiprocess(Multiprocess):
    """`Multiprocess` where worker slot i always serves socket i (see the module)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, sockets=[])
        ensure_free(config)
        self.slot_sockets = [bind(config) for _ in range(config.workers)]

    def _process(self, slot: int) -> Process:
        return Process(self.config, [self.slot_sockets[slot]])

    def init_processes(self) -> None:
        for slot in range(self.processes_num):
            process = self._process(slot)
            process.start()
            self.processes.append(process)

    def keep_subprocess_alive(self) -> None:
        """uvicorn's loop, each replacement on the socket of the worker it replaces."""
        if self.should_exit.is_set():
            return
        for slot, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it
            process.join()
            if process.exitcode == STARTUP_FAILURE:  # the app or the socket is broken: a restart would fail alike
                logger.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            replacement = self._process(slot)
            replacement.start()
            self.processes[slot] = replacement

    def restart_all(self) -> None:
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._process(slot)
            new.start()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                return
            old.terminate()
            old.join()
            self.processes[slot] = new

    def handle_ttin(self) -> None:
        self.slot_sockets.append(bind(self.config))
        self.processes_num += 1
        process = self._process(len(self.slot_sockets) - 1)
        process.start()
        self.processes.append(process)

    def handle_ttou(self) -> None:
        if self.processes_num <= 1:
            return
        self.processes_num -= 1
        process = self.processes.pop()
        process.terminate()
        process.join()
        self.slot_sockets.pop().close()
