"""How the toolkit reaches a host: `Transport` (run commands, move files, forward ports) over SSH or locally.

`base` holds the protocol, the results and errors and the guarantees every transport keeps; `local` and `ssh` the
two implementations; `open_transport` picks one.
"""

from __future__ import annotations

from typing import Literal

from timetodo.ops.adapters.transport.base import (
    AuthError,
    Command,
    CommandFailed,
    CommandResult,
    CommandTimeout,
    ConnectError,
    HostKeyError,
    Progress,
    SSHTarget,
    Transport,
    TransportError,
    mask_command,
    openssh_options,
)
from timetodo.ops.adapters.transport.local import LocalTransport
from timetodo.ops.adapters.transport.ssh import SSHTransport

__all__ = [
    "AuthError",
    "Command",
    "CommandFailed",
    "CommandResult",
    "CommandTimeout",
    "ConnectError",
    "HostKeyError",
    "LocalTransport",
    "Progress",
    "SSHTarget",
    "SSHTransport",
    "Transport",
    "TransportError",
    "mask_command",
    "open_transport",
    "openssh_options",
]


async def open_transport(spec: SSHTarget | Literal["local"] | None = None) -> Transport:
    """A connected transport: `LocalTransport` for None / "local", else an `SSHTransport` (raises the
    `ConnectError` / `AuthError` / `HostKeyError` of the connection attempt right away)."""
    if spec is None or spec == "local":
        return LocalTransport()
    transport = SSHTransport(spec)
    await transport.connect()
    return transport
