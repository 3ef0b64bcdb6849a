"""The one Consul launcher of the tests: a real ``consul agent -dev`` when the binary is on
PATH, else the stand-in of :mod:`support.consul_standin` (same interface), as a process a test
can kill (SIGKILL) and start again on the same port with empty state."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from support.cluster_processes import PREEXEC
from support.ports import free_port
from support.timing import seconds


class ConsulAgentProcess:
    """A real ``consul agent -dev`` on a fixed HTTP port, which a test can kill (SIGKILL) and
    start again on the same port with empty state (a dev agent keeps none): the same interface
    as :class:`consul_standin.StandinProcess`.

    Its ports are picked with :func:`free_port` (racy, see ``support/ports.py``): we read no
    port the agent reports, and its address is named before it starts."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self._process: asyncio.subprocess.Process | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the agent

    @property
    def address(self) -> str:
        """The HTTP API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = seconds(30.0)) -> None:
        """Start the agent and wait until it has elected itself leader."""
        if self._log.closed:  # started again after close()
            self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = process = await asyncio.create_subprocess_exec(
            *("consul", "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1"),
            f"-http-port={self.port}",
            f"-serf-lan-port={free_port()}",
            f"-serf-wan-port={free_port()}",
            f"-server-port={free_port()}",
            *("-dns-port=-1", "-grpc-port=-1", "-hcl", "ports { grpc_tls = -1 }"),
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=PREEXEC,
        )
        url = f"{self.address}/v1/status/leader"
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
            while True:  # the agent offers no readiness event: poll its leader endpoint
                if process.returncode is not None:
                    self._log.seek(0)
                    tail = self._log.read()[-2000:].decode(errors="replace")
                    raise RuntimeError(f"consul agent -dev exited:\n{tail}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as response:
                        if response.status == 200 and await response.json():
                            return
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL the agent (a crash: nothing is deregistered, its state is gone)."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def close(self) -> None:
        """Kill the agent and drop its log."""
        await self.kill()
        self._log.close()


#: The Consul agents multi-node tests can run against: the stand-in always, a real
#: ``consul agent -dev`` when the binary is on PATH.
CONSUL_KINDS = ("standin", "agent")
HAVE_CONSUL = shutil.which("consul") is not None


@contextlib.asynccontextmanager
async def consul_process(kind: str, port: int = 0, *, start: bool = True) -> AsyncIterator[Any]:
    """A Consul agent as a process (``kind`` is ``"standin"`` or ``"agent"``) on ``port`` (0:
    a free one), started unless ``start`` is False, always killed at the end. It has
    ``address``, ``port``, ``start()`` and ``kill()``."""
    from support.consul_standin import StandinProcess

    agent: Any
    if kind == "agent":
        agent = ConsulAgentProcess(port)
    elif start:
        agent = StandinProcess(port)  # port 0: it binds one and says which
    else:
        # A test that starts it later names its address first (to the nodes): picked now.
        agent = StandinProcess(port or free_port())
    try:
        if start:
            await agent.start()
        yield agent
    finally:
        if kind == "agent":
            await agent.close()
        else:
            await agent.kill()
