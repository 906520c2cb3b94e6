"""`aleph-runtime run` as a subprocess (`python -m aleph_runtime.host.node.cli`), with its
state directory in a short temporary directory, a free loopback port, and a local
server speaking the aleph API's JSON in place of the network."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from aleph_runtime.testing import descendants

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLES = REPOSITORY / "examples"
URL_LINE = re.compile(rb"Program running at (http://127\.0\.0\.1:\d+/)")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class CLI:
    """One `aleph-runtime run ...` subprocess."""

    def __init__(self, state_dir: Path, args: list[str], log: Path, new_session: bool = False,
                 env: dict[str, str] | None = None):  # fmt: skip
        self.new_session = new_session
        self.env = env or {}
        self.state_dir = state_dir
        self.args = args
        self.log_path = log
        self.process: asyncio.subprocess.Process | None = None
        self.url: str | None = None

    async def start(self, timeout: float = 120) -> CLI:
        env = {**os.environ, "PYTHONPATH": str(REPOSITORY / "runtime"), "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aleph_runtime.host.node.cli", "run", *self.args,
            "--state-dir", str(self.state_dir),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=self._log, env=env,
            start_new_session=self.new_session,
        )  # fmt: skip
        return self

    async def wait_url(self, timeout: float = 120) -> str:
        assert self.process is not None and self.process.stdout is not None

        async def read() -> str:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise AssertionError(f"the command exited before printing its URL:\n{self.output()}")
                match = URL_LINE.search(line)
                if match:
                    return match.group(1).decode()

        self.url = await asyncio.wait_for(read(), timeout)
        return self.url

    async def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            self._log.close()

    async def interrupt(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return await self.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            for child in descendants(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            self.process.kill()
            await self.process.wait()


@pytest.fixture(scope="session")
def dev_image() -> None:
    """Dev mode runs in a container of the runtime image: have the image built (minutes,
    the first time) and unpacked before any command's start is timed."""
    from aleph_runtime.host.container import rootfs
    from aleph_runtime.host.container.spawn import plan

    if os.geteuid() != 0 and not os.environ.get("ALEPH_ROOTFS") and not rootfs.cached_images("lean"):
        pytest.skip("dev mode needs the runtime image, and only root builds it")
    ids, _, _ = plan()
    rootfs.image_tree(rootfs.dev_image("lean"), ids)


@pytest.fixture
def cli_factory(short_dir, dev_image):
    started: list[CLI] = []

    async def make(
        *args: str, state: str = "state", new_session: bool = False, env: dict | None = None
    ) -> CLI:
        cli = CLI(short_dir / state, list(args), short_dir / f"cli{len(started)}.log", new_session, env)
        started.append(cli)
        return await cli.start()

    yield make
    for cli in started:
        if cli.process is not None and cli.process.returncode is None:
            for child in descendants(cli.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(cli.process.pid, signal.SIGKILL)
