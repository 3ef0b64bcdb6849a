"""Child processes of the multi-node tests: roomcast routers and nodes, the ``roomcast`` CLI,
and Consul agents, all on 127.0.0.1.

:class:`Proc` pumps a process's output into a log file and into memory (so a test can wait for
a line) and stops it with SIGTERM, then SIGKILL, then kills its whole process group; every
child also gets SIGKILL when the test process dies (Linux). :func:`run_cli` runs the CLI to
completion. :func:`consul_process` gives the stand-in of ``tests/consul_standin.py`` or a real
``consul agent -dev``. :class:`cluster_harness.Cluster` builds on these.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket as socket_module
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

#: The bound of every single wait; reached only when something is broken.
TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket_module.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def consecutive_free_ports(n: int) -> int:
    """A base port such that ``base .. base + n - 1`` are all free now."""
    for _ in range(100):
        base = free_port()
        if base + n > 65536:
            continue
        try:
            for port in range(base + 1, base + n):
                with socket_module.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"found no {n} consecutive free ports")


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGKILL if the test process dies (Linux only), so
    not even a killed pytest leaves routers and nodes behind."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


_PREEXEC = _die_with_parent()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of child processes: no inherited ROOMCAST__ overrides, unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST__")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def roomcast_argv(config: Path, *args: str) -> list[str]:
    """The command line of ``roomcast --config config *args``."""
    return [sys.executable, "-m", "roomcast", "--config", str(config), *args]


# --- processes --------------------------------------------------------------------------------


class Proc:
    """One child process whose output (stdout and stderr) is pumped into a log file and kept
    in memory, so tests can wait for a line."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.log_path = cwd / f"{name}.log"
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        """Start the process in its own session (so its whole group can be killed)."""
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_PREEXEC,
        )
        self._pump = asyncio.get_running_loop().create_task(self._read())

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the process has not exited (as far as we have reaped it)."""
        return self.process is not None and self.process.returncode is None

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stream = self.process.stdout
        with open(self.log_path, "ab") as log:
            while line := await stream.readline():
                log.write(line)
                log.flush()
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self._changed.set()
        self._changed.set()

    async def wait_line(self, pattern: re.Pattern[str], timeout: float = TIMEOUT) -> re.Match[str]:
        """Wait for an output line matching ``pattern``; fails if the process exits first."""
        assert self.process is not None and self._pump is not None
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    match = pattern.search(line)
                    if match is not None:
                        return match
                seen = len(self.lines)
                if self._pump.done():
                    await self.process.wait()
                    raise AssertionError(
                        f"{self.name} exited with {self.process.returncode} before printing "
                        f"{pattern.pattern!r}:\n" + self.tail()
                    )
                self._changed.clear()
                await self._changed.wait()

    def tail(self, n: int = 40) -> str:
        """The last lines of output."""
        return "\n".join(f"  [{self.name}] {line}" for line in self.lines[-n:])

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.process is not None
        self.process.kill()

    async def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to exit; returns its exit code."""
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), timeout)
        return code

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; then kill anything left in its group."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        # Children it may have left behind (``roomcast up`` has some) share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), timeout)


async def run_cli(
    config: Path, *args: str, cwd: Path, timeout: float = 30.0
) -> tuple[int, str, str]:
    """Run the ``roomcast`` CLI as a process; returns (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *roomcast_argv(config, *args),
        cwd=cwd,
        env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# --- Consul -----------------------------------------------------------------------------------


class ConsulAgentProcess:
    """A real ``consul agent -dev`` on a fixed HTTP port, which a test can kill (SIGKILL) and
    start again on the same port with empty state (a dev agent keeps none): the same interface
    as :class:`consul_standin.StandinProcess`."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self._process: asyncio.subprocess.Process | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the agent

    @property
    def address(self) -> str:
        """The HTTP API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        """Start the agent and wait until it has elected itself leader."""
        self._process = process = await asyncio.create_subprocess_exec(
            *("consul", "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1"),
            f"-http-port={self.port}",
            f"-serf-lan-port={free_port()}",
            f"-serf-wan-port={free_port()}",
            f"-server-port={free_port()}",
            *("-dns-port=-1", "-grpc-port=-1", "-hcl", "ports { grpc_tls = -1 }"),
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_PREEXEC,
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
    from consul_standin import StandinProcess

    port = port or free_port()  # known before the start: a test may start it later
    agent: Any = ConsulAgentProcess(port) if kind == "agent" else StandinProcess(port)
    try:
        if start:
            await agent.start()
        yield agent
    finally:
        if kind == "agent":
            await agent.close()
        else:
            await agent.kill()
