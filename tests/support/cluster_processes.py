"""Child processes of the multi-node tests: roomcast routers and nodes, the ``roomcast`` CLI,
and Consul agents, all on 127.0.0.1.

:class:`Proc` pumps a process's output into a log file and into memory (so a test can wait for
a line) and stops it with SIGTERM, then SIGKILL, then kills its whole process group; every
child also gets SIGKILL when the test process dies (Linux). :func:`run_cli` runs the CLI to
completion. :mod:`support.consul` launches Consul (the stand-in or a real ``consul agent
-dev``). :class:`cluster_harness.Cluster` builds on these.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from support.timing import PROCESS_TIMEOUT

#: The bound of every single wait; reached only when something is broken.
TIMEOUT = PROCESS_TIMEOUT


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


PREEXEC = _die_with_parent()


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
            preexec_fn=PREEXEC,
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
