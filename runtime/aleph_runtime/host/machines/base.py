"""What runs the init, as the local node, the tests and the benchmarks see it."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from aleph_runtime.host.supervisor import SupervisorClient


class Machine(Protocol):
    """What runs the init: the supervisor talks to it on `uds_path` (Firecracker's layout)."""

    uds_path: Path
    client: SupervisorClient
    log_path: Path
    """The init's log (dev mode) or the VM's serial console (QEMU)."""

    async def start(self) -> dict:
        """Boot; return the ready signal. Host services must already listen on `<uds>_53`."""

    async def configure(self, config: dict) -> dict:
        """Send the configuration; raise ConfigurationRejected when the program cannot start."""

    async def wait(self) -> int | None:
        """Return when the machine has died on its own (its exit status)."""

    async def stop(self) -> None:
        """Halt through the protocol, then make sure nothing is left (kill if needed)."""

    async def kill(self) -> None:
        """Stop at once, without the protocol (a second Ctrl-C)."""
