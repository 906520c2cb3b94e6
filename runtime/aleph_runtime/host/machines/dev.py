"""The guest init as a local process in dev transport mode: a `Machine` (base.py).

The same harness serves the tests, the benchmark and `aleph-runtime run --mode dev`:
`init/init1.py` started with `ALEPH_VSOCK_UDS` and `ALEPH_INIT_ROOT`, with the life
every machine shares (ready signal first, halt through the protocol, kill last).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

from aleph_runtime.host.machines.base import CommandMachine

REPOSITORY = Path(__file__).resolve().parents[4]
INIT1 = REPOSITORY / "init" / "init1.py"


class DevInit(CommandMachine):
    """One init process in dev mode, with its socket and private root in `workdir`."""

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        python: str = sys.executable,
        init_path: str | os.PathLike = INIT1,
        env: dict[str, str] | None = None,
        root: str | os.PathLike | None = None,
        python_flags: tuple[str, ...] = ("-OO",),
        stdout=None,
        stderr=None,
        new_session: bool = False,
    ):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aleph-dev-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        uds_path = self.workdir / "v.sock"
        self.root = Path(root) if root else self.workdir / "root"
        self.init_path = Path(init_path)
        super().__init__(
            [python, *python_flags, str(self.init_path)],
            uds_path,
            env={**os.environ, "ALEPH_VSOCK_UDS": str(uds_path), "ALEPH_INIT_ROOT": str(self.root), **(env or {})},
            stdout=stdout,
            stderr=stderr,
            new_session=new_session,
        )

    async def _launch(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        await super()._launch()


class DevMachine:
    """The init as a local process (`DevInit`): no VM, no system duties.

    The init's private root stands for the VM's filesystem: volumes are made visible
    at `<root>/<mount>` (symlinks to a directory, an unpacked squashfs image, or the
    persistent volume's directory in the state directory), and squashfs code is
    unpacked at `<root>/opt/code`. Programs see absolute paths of the host, so
    `--env` values naming a volume's mount point are rewritten to `<root>/<mount>`.
    """

    def __init__(self, run_dir: Path, log_path: Path):
        self.run_dir = run_dir
        self.log_path = log_path
        self.root = run_dir / "root"
        self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed in stop()
        self.init = DevInit(run_dir, root=self.root, stdout=self._log, stderr=self._log, new_session=True)
        self.uds_path = self.init.uds_path
        self.client = self.init.client

    def place(self, mount: str, target: Path) -> Path:
        """Make `target` (a directory) visible at `<root>/<mount>`."""
        link = self.root / mount.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(target, target_is_directory=True)
        return link

    def guest_path(self, path: str) -> str:
        return str(self.root / path.lstrip("/"))

    async def start(self) -> dict:
        return await self.init.start(timeout=60)

    async def configure(self, config: dict) -> dict:
        return await self.init.configure(config)

    async def wait(self) -> int | None:
        while self.init.process is None:
            await asyncio.sleep(0.1)
        return await self.init.process.wait()

    async def kill(self) -> None:
        await self.init.kill()

    async def stop(self) -> None:
        try:
            await self.init.stop()
        finally:
            self.close()

    def close(self) -> None:
        self._log.close()
