"""Real routers and nodes as processes on 127.0.0.1, and the helpers multi-node tests share.

A :class:`Cluster` writes its own ``cluster.toml`` in a temporary directory (free ports, short
gossip timings), starts ``python -m roomcast router`` and ``... node`` as subprocesses, waits
for each one's ``ready`` line (nodes listen on port 0 and announce their URL there), and always
stops every process it started, SIGKILL as the last resort. Nothing here sleeps to synchronise:
:func:`wait_until` polls an observable state (an admin endpoint, a client's inbox) until it
holds, with a timeout that is only reached when something is broken.

With ``consul=`` (a Consul agent's address: the stand-in of ``tests/consul_standin.py`` as a
process, or a real ``consul agent -dev``, see :func:`consul_process`) the cluster uses the consul
discovery backend, and the routers ``cluster.toml`` lists are a decoy nobody runs: nodes can find
routers only through Consul. More routers, with their own ids and ports, start with
:meth:`Cluster.start_extra_router`.

Test modules wrap :func:`running_cluster` (and :func:`cluster_clients.clients`) in fixtures and
run their tests
and fixtures on one event loop per module (``pytest.mark.asyncio(loop_scope="module")``), so
that a module-scoped cluster can be shared by the tests that do not destroy it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import shutil
import signal
import socket as socket_module
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from roomcast.config import RouterAddress

#: The bound of every single wait; reached only when something is broken.
TIMEOUT = 10.0
#: Gossip timings short enough that failure detection is quick in tests.
HEARTBEAT_MS = 100
SUSPECT_MS = 300
DOWN_MS = 600

#: ``[discovery.consul]`` timings of consul clusters: a killed process turns critical within
#: check_ttl_ms, a critical one is dropped after deregister_critical_after_ms (the stand-in
#: honours short values; a real agent raises them to its 1m minimum, which no test relies on).
CONSUL_TIMINGS = {
    "check_ttl_ms": 1500,
    "check_interval_ms": 250,
    "deregister_critical_after_ms": 3000,
    "watch_wait_ms": 5000,
    "request_timeout_ms": 1000,
    "retry_min_ms": 50,
    "retry_max_ms": 500,
}

ROUTER_READY = re.compile(r"router \S+ ready: xsub (\S+) xpub (\S+)")
NODE_READY = re.compile(r"node (\S+) ready: (\S+)")


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


def unique(prefix: str) -> str:
    """A fresh room name, so tests sharing a cluster never see each other's rooms."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def wait_until(
    predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition"
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value, and return it.

    Fails the test after ``timeout`` seconds, showing the last value seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {last!r}")
        await asyncio.sleep(0.02)  # a polling interval, not a synchronisation


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


# --- the cluster ------------------------------------------------------------------------------

APP_MODULE = "cluster_app"  #: the module name an app's source is written under


@dataclass
class NodeProc:
    """A started node: its id, base URL and process."""

    name: str
    url: str
    proc: Proc


@dataclass
class RouterProc:
    """A router started by :meth:`Cluster.start_extra_router`: its id, ports and process."""

    id: str
    xsub_port: int
    xpub_port: int
    http_port: int
    proc: Proc

    @property
    def http(self) -> str:
        """Its stats and health endpoint."""
        return f"http://127.0.0.1:{self.http_port}"


class Cluster:
    """A router and nodes as processes, configured by one ``cluster.toml`` in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        app_source: str | None = None,
        up_nodes: int = 2,
        up_base_port: int | None = None,
        consul: str | None = None,
        router_id: str = "router",
        cluster_settings: dict[str, int] | None = None,
        consul_settings: dict[str, int] | None = None,
    ) -> None:
        self.consul = consul  #: the Consul agent's address; None: static discovery
        self.router_id = router_id  #: the id ``[router]`` gives the first router
        self.cluster_settings = {
            "heartbeat_interval_ms": HEARTBEAT_MS,
            "suspect_after_ms": SUSPECT_MS,
            "down_after_ms": DOWN_MS,
            **(cluster_settings or {}),
        }
        self.consul_settings = {**CONSUL_TIMINGS, **(consul_settings or {})}
        self.decoy_port = free_port()  # consul clusters list a router here that nobody runs
        self.extra_routers: dict[str, RouterProc] = {}
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "cluster.toml"
        self.app = f"{APP_MODULE}:setup" if app_source is not None else None
        if app_source is not None:
            (self.dir / f"{APP_MODULE}.py").write_text(app_source)
        self.up_nodes = up_nodes
        self.up_base_port = up_base_port or free_port()
        self.router: Proc | None = None
        self.nodes: dict[str, NodeProc] = {}
        self.procs: list[Proc] = []
        self._routers_started = 0
        self._pick_router_ports()
        self.session = aiohttp.ClientSession()

    def _pick_router_ports(self) -> None:
        self.xsub_port, self.xpub_port, self.http_port = free_port(), free_port(), free_port()
        self.write_config()

    @property
    def routers(self) -> list[RouterAddress]:
        """The router as nodes (and emitters) see it."""
        return [
            RouterAddress(
                f"tcp://127.0.0.1:{self.xsub_port}",
                f"tcp://127.0.0.1:{self.xpub_port}",
                f"http://127.0.0.1:{self.http_port}",
            )
        ]

    @property
    def router_http(self) -> str:
        """The router's stats and health endpoint."""
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(self) -> None:
        """(Re)write ``cluster.toml``: router ports, short timings, the live nodes' URLs."""
        (r,) = self.routers
        if self.consul is not None:
            # A decoy: with consul discovery the nodes must find the routers through Consul.
            decoy = self.decoy_port
            r = RouterAddress(
                f"tcp://127.0.0.1:{decoy}", f"tcp://127.0.0.1:{decoy}", f"http://127.0.0.1:{decoy}"
            )
        nodes = ", ".join(f'"{self.nodes[name].url}"' for name in sorted(self.nodes))
        timings = "\n".join(f"{k} = {v}" for k, v in self.cluster_settings.items())
        discovery = 'backend = "static"'
        if self.consul is not None:
            consul = "\n".join(f"{k} = {v}" for k, v in self.consul_settings.items())
            discovery = f'backend = "consul"\n\n[discovery.consul]\naddress = "{self.consul}"\n'
            discovery += consul
        # Atomically: processes that are starting may be reading the file right now.
        staging = self.config.with_suffix(".tmp")
        staging.write_text(
            f"""\
[router]
id = "{self.router_id}"
host = "127.0.0.1"
xsub_port = {self.xsub_port}
xpub_port = {self.xpub_port}
http_port = {self.http_port}

[cluster]
enabled = true
{timings}

[discovery]
nodes = [{nodes}]
{discovery}

[[discovery.routers]]
xsub = "{r.xsub}"
xpub = "{r.xpub}"
http = "{r.http}"

[up]
nodes = {self.up_nodes}
base_port = {self.up_base_port}

[namespaces."/"]

[namespaces."/any"]
publish = "any"
"""
        )
        os.replace(staging, self.config)

    def env(self) -> dict[str, str]:
        """The children's environment (the app module is importable from the directory)."""
        inherited = os.environ.get("PYTHONPATH")
        path = str(self.dir) if not inherited else f"{self.dir}{os.pathsep}{inherited}"
        return clean_env(PYTHONPATH=path)

    def spawn(self, name: str, *args: str) -> Proc:
        """A (not yet started) ``roomcast *args`` process with this cluster's config; it is
        stopped by :meth:`close`."""
        proc = Proc(name, roomcast_argv(self.config, *args), self.dir, self.env())
        self.procs.append(proc)
        return proc

    def add_node(self, name: str, url: str, proc: Proc) -> NodeProc:
        """Register a node started some other way (``roomcast up`` starts its own)."""
        node = self.nodes[name] = NodeProc(name, url, proc)
        self.write_config()
        return node

    # -- starting and stopping ----------------------------------------------------------------

    async def start_router(self) -> Proc:
        """Start a router on the configured ports and wait until it serves /health.

        The first start retries on fresh ports if another process took one in the meantime;
        a restart must reuse the same ports (the nodes know them).
        """
        for attempt in range(3):
            self._routers_started += 1
            proc = self.spawn(f"router{self._routers_started}", "router")
            await proc.start()
            try:
                await proc.wait_line(ROUTER_READY)
            except AssertionError:
                if self.nodes or attempt == 2 or proc.running:
                    raise
                self._pick_router_ports()  # a port was taken: pick others and try again
                continue
            self.router = proc
            await wait_until(lambda: self._ok(self.router_http + "/health"), what="router health")
            return proc
        raise AssertionError("unreachable")

    async def start_extra_router(self, rid: str, ports: tuple[int, int, int] | None = None) -> Proc:
        """Start one more router ``rid`` (on fresh ports, or ``ports`` = (xsub, xpub, http) to
        restart it where it was) and wait until it serves /health. With Consul it registers
        itself there; static nodes never learn of it (``cluster.toml`` lists one router)."""
        xsub, xpub, http = ports or (free_port(), free_port(), free_port())
        proc = self.spawn(
            f"{rid}-{len(self.procs)}",
            *("router", "--id", rid, "--xsub-port", str(xsub), "--xpub-port", str(xpub)),
            *("--http-port", str(http)),
        )
        await proc.start()
        await proc.wait_line(ROUTER_READY)
        router = self.extra_routers[rid] = RouterProc(rid, xsub, xpub, http, proc)
        await wait_until(lambda: self._ok(router.http + "/health"), what=f"{rid} health")
        return proc

    async def start_node(self, name: str, *extra: str, wait_healthy: bool = True) -> NodeProc:
        """Start node ``name`` on a free port (it announces its URL) and wait for /health
        (unless ``wait_healthy`` is False: a node that reaches no router fails it)."""
        args = ["node", "--id", name, "--host", "127.0.0.1", "--port", "0", *extra]
        if self.app is not None:
            args += ["--app", self.app]
        proc = self.spawn(name, *args)
        await proc.start()
        match = await proc.wait_line(NODE_READY)
        assert match.group(1) == name
        node = self.nodes[name] = NodeProc(name, match.group(2), proc)
        if wait_healthy:
            await wait_until(lambda: self._ok(node.url + "/health"), what=f"{name} health")
        self.write_config()  # the CLI asks the nodes listed there
        return node

    async def start(self, *names: str) -> Cluster:
        """Start the router, then the nodes (in parallel), and wait until all see each other."""
        await self.start_router()
        await asyncio.gather(*(self.start_node(n) for n in names))
        await self.converged()
        return self

    async def close(self) -> None:
        """Stop every process ever started (SIGTERM, then SIGKILL), print logs of failures."""
        await asyncio.gather(*(p.stop() for p in self.procs))
        await self.session.close()
        for proc in self.procs:
            # Shown by pytest only when the test failed (captured output of the teardown).
            print(f"--- {proc.name} exited with {proc.process and proc.process.returncode}")
            print(proc.tail())

    # -- observing ----------------------------------------------------------------------------

    async def _ok(self, url: str) -> bool:
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def get(self, url: str) -> Any:
        """GET a JSON document."""
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def admin(self, node: str, path: str) -> Any:
        """GET ``path`` (``/admin/...``) from ``node``."""
        return await self.get(self.nodes[node].url + path)

    async def router_stats(self, rid: str | None = None) -> dict[str, Any]:
        """The /stats of the first router (or of the extra router ``rid``)."""
        http = self.router_http if rid is None else self.extra_routers[rid].http
        stats: dict[str, Any] = await self.get(http + "/stats")
        return stats

    async def health(self, node: str) -> tuple[int, dict[str, Any]]:
        """``node``'s /health: (HTTP status, document)."""
        url = self.nodes[node].url + "/health"
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as resp:
            doc: dict[str, Any] = await resp.json()
            return resp.status, doc

    async def consul_health(self, service: str) -> dict[str, str] | None:
        """``{roomcast id: check status}`` of a Consul service (``roomcast-node`` or
        ``roomcast-router``) as the agent reports it; None while it does not answer."""
        assert self.consul is not None
        url = f"{self.consul}/v1/health/service/{service}"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status != 200:
                    return None
                entries = await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            return None
        out: dict[str, str] = {}
        for entry in entries:
            statuses = {c["Status"] for c in entry["Checks"]}
            worst = next((s for s in ("critical", "warning") if s in statuses), "passing")
            out[entry["Service"]["Meta"]["id"]] = worst
        return out

    def alive_nodes(self) -> list[str]:
        """The nodes whose processes run."""
        return [n for n, node in self.nodes.items() if node.proc.running]

    async def converged(self, nodes: list[str] | None = None) -> None:
        """Wait until each of ``nodes`` (default: the running ones) sees all others alive and
        synced."""
        names = set(nodes or self.alive_nodes())
        missing: dict[str, set[str]] = {}  # node -> the others it does not see alive and synced

        async def check() -> bool:
            missing.clear()
            for name in names:
                doc = await self.admin(name, "/admin/cluster")
                seen = {
                    n["node"]
                    for n in doc["cluster"]["nodes"]
                    if n["status"] == "alive" and n["synced"]
                }
                if names - {name} - seen:
                    missing[name] = names - {name} - seen
            return not missing

        try:
            await wait_until(check, what="cluster convergence")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (not seen: {missing})") from None

    async def room_view(self, node: str, room: str, namespace: str = "/") -> dict[str, int]:
        """``{node: members}`` of ``room`` as ``node``'s replica (plus its registry) sees it."""
        doc = await self.admin(
            node, "/admin/room?" + urlencode({"namespace": namespace, "name": room})
        )
        nodes: dict[str, int] = doc["nodes"]
        return nodes

    async def wait_room(
        self, room: str, expected: dict[str, int], namespace: str = "/", on: list[str] | None = None
    ) -> None:
        """Wait until every node (or those ``on``) sees ``room`` held as ``expected``."""
        for node in on or self.alive_nodes():

            async def check(node: str = node) -> bool:
                return await self.room_view(node, room, namespace) == expected

            await wait_until(check, what=f"{node}'s view of room {room!r} to be {expected}")

    async def bus(self, node: str) -> dict[str, Any]:
        """``node``'s bus counters and received_rooms."""
        doc = await self.admin(node, "/admin/cluster")
        out: dict[str, Any] = doc["cluster"]["bus"]
        out["received_rooms"] = doc["cluster"]["received_rooms"]
        return out

    async def cli(self, *args: str, timeout: float = 30.0) -> tuple[int, str, str]:
        """Run ``roomcast --config <this cluster's> *args``; returns (exit code, out, err)."""
        return await run_cli(self.config, *args, cwd=self.dir, timeout=timeout)


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


@contextlib.asynccontextmanager
async def running_cluster(
    directory: Path, *nodes: str, app_source: str | None = None, **options: Any
) -> AsyncIterator[Cluster]:
    """A started cluster that is always torn down, whatever happens inside; ``options`` go to
    :class:`Cluster` (``consul=``, ``router_id=``, ``cluster_settings=``, ...)."""
    cluster = Cluster(directory, app_source=app_source, **options)
    try:
        await cluster.start(*nodes)
        yield cluster
    finally:
        await cluster.close()


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
