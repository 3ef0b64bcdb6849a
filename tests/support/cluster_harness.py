"""Real routers and nodes as processes on 127.0.0.1, and the helpers multi-node tests share.

A :class:`Cluster` writes its own ``cluster.toml`` in a temporary directory (short gossip
timings), starts ``python -m roomcast router`` and ``... node`` as subprocesses, waits for each
one's ``ready`` line, and always stops every process it started, SIGKILL as the last resort.
Routers and nodes listen on port 0 and announce where they are in that line (a router its xsub,
xpub and http endpoints, a node its URL); the routers' ports go into ``cluster.toml`` once they
are known, before any node starts, and a router restarted "where it was" gets them back.
Nothing here sleeps to synchronise: :func:`wait_until` polls an observable state (an admin
endpoint, a client's inbox) until it holds, with a timeout that is only reached when something
is broken.

With ``consul=`` (a Consul agent's address: the stand-in of ``tests/support/consul_standin.py`` as a
process, or a real ``consul agent -dev``, see :func:`consul_process`) the cluster uses the consul
discovery backend, and ``cluster.toml`` lists one decoy router, at a port the harness holds
bound and nothing listens on: nodes can find routers only through Consul. More routers, with
their own ids and ports, start with :meth:`Cluster.start_extra_router`.

Test modules wrap :func:`running_cluster` (and :func:`cluster_clients.clients`) in fixtures and
run their tests
and fixtures on one event loop per module (``pytest.mark.asyncio(loop_scope="module")``), so
that a module-scoped cluster can be shared by the tests that do not destroy it.

The process machinery (:class:`Proc`, :func:`run_cli`, :func:`consul_process`) lives in
``cluster_processes.py`` and ``consul.py``, ports in ``ports.py``; the names tests use are
importable from here as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

from roomcast.config import RouterAddress
from support.cluster_processes import (
    TIMEOUT,
    Proc,
    clean_env,
    roomcast_argv,
    run_cli,
)
from support.consul import (
    CONSUL_KINDS,  # noqa: F401 (re-exported: tests import it from here)
    HAVE_CONSUL,  # noqa: F401 (re-exported: tests import it from here)
    consul_process,  # noqa: F401 (re-exported: tests import it from here)
)
from support.ports import hold_port

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

#: A router's ready line: its id and the endpoints it bound (``roomcast router``).
ROUTER_READY = re.compile(
    r"router (?P<id>\S+) ready: xsub (?P<xsub>\S+) xpub (?P<xpub>\S+) http (?P<http>\S+)"
)
NODE_READY = re.compile(r"node (\S+) ready: (\S+)")


def announced_ports(match: re.Match[str]) -> tuple[int, int, int]:
    """The (xsub, xpub, http) ports a :data:`ROUTER_READY` line names."""
    xsub, xpub, http = (urlsplit(match.group(name)).port for name in ("xsub", "xpub", "http"))
    assert xsub and xpub and http, f"a port missing in {match.group(0)!r}"
    return xsub, xpub, http


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
    """A router started by :meth:`Cluster.start_extra_router`: its id, the ports it bound and
    its process."""

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
        router_ports: tuple[int, int, int] | None = None,
        consul: str | None = None,
        router_id: str = "router",
        cluster_settings: dict[str, int] | None = None,
        consul_settings: dict[str, int] | None = None,
        static_routers: int = 1,
        extra_config: str = "",
        ca_file: str | None = None,
    ) -> None:
        self.consul = consul  #: the Consul agent's address; None: static discovery
        self.router_id = router_id  #: the id ``[router]`` gives the first router
        #: The first router's (xsub, xpub, http) ports: 0 until it announced the ones it bound
        #: (:meth:`start_router`). ``router_ports`` names them beforehand, for a router this
        #: harness does not start (``roomcast up`` reads them from ``cluster.toml``).
        self.xsub_port, self.xpub_port, self.http_port = router_ports or (0, 0, 0)
        #: Routers ``cluster.toml`` lists after the first (static discovery): id -> (xsub, xpub,
        #: http) ports, 0 until :meth:`start_extra_router` started the router and read its own.
        self.static_routers = {f"r{i}": (0, 0, 0) for i in range(2, static_routers + 1)}
        self.cluster_settings = {
            "heartbeat_interval_ms": HEARTBEAT_MS,
            "suspect_after_ms": SUSPECT_MS,
            "down_after_ms": DOWN_MS,
            **(cluster_settings or {}),
        }
        self.consul_settings = {**CONSUL_TIMINGS, **(consul_settings or {})}
        #: More TOML for ``cluster.toml`` (whole sections the harness does not write).
        self.extra_config = extra_config
        # Consul clusters list a router at a decoy port: held bound (never listening) as long
        # as the cluster lives, so nothing answers there, nor can.
        self._decoy: socket.socket | None = hold_port() if consul is not None else None
        self.decoy_port = self._decoy.getsockname()[1] if self._decoy is not None else 0
        self.extra_routers: dict[str, RouterProc] = {}
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "cluster.toml"
        self.app = f"{APP_MODULE}:setup" if app_source is not None else None
        if app_source is not None:
            (self.dir / f"{APP_MODULE}.py").write_text(app_source)
        self.up_nodes = up_nodes
        self.up_base_port = up_base_port  #: ``[up] base_port`` (None: the default)
        self.router: Proc | None = None
        self.nodes: dict[str, NodeProc] = {}
        self.procs: list[Proc] = []
        self._routers_started = 0
        # The routers read it too: written now, with the routers' ports once they are known.
        self.write_config()
        # The harness's HTTP client; it trusts ``ca_file`` when nodes serve https (TLS tests).
        tls = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls))

    @property
    def routers(self) -> list[RouterAddress]:
        """The routers as nodes (and emitters) see them: the first, then the static ones."""
        named = bool(self.static_routers)  # several routers are told apart by their ids
        return [
            RouterAddress(
                f"tcp://127.0.0.1:{self.xsub_port}",
                f"tcp://127.0.0.1:{self.xpub_port}",
                f"http://127.0.0.1:{self.http_port}",
                self.router_id if named else "",
            ),
            *(
                RouterAddress(
                    f"tcp://127.0.0.1:{xsub}",
                    f"tcp://127.0.0.1:{xpub}",
                    f"http://127.0.0.1:{http}",
                    rid,
                )
                for rid, (xsub, xpub, http) in self.static_routers.items()
            ),
        ]

    @property
    def router_http(self) -> str:
        """The router's stats and health endpoint."""
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(
        self, path: Path | None = None, via: dict[str, tuple[int, int]] | None = None
    ) -> None:
        """(Re)write ``cluster.toml`` (or another file, ``path``): router ports (0 for a
        router not started yet: no node reads them before), short timings, the live nodes'
        URLs. ``via`` reaches some routers through other ports (router id -> xsub and xpub
        ports, e.g. a proxy's) in that file."""
        routers = self.routers
        if via:
            routers = [
                RouterAddress(
                    f"tcp://127.0.0.1:{via[r.id][0]}",
                    f"tcp://127.0.0.1:{via[r.id][1]}",
                    r.http,
                    r.id,
                )
                if r.id in via
                else r
                for r in routers
            ]
        if self.consul is not None:
            # A decoy: with consul discovery the nodes must find the routers through Consul.
            decoy = self.decoy_port
            routers = [
                RouterAddress(
                    f"tcp://127.0.0.1:{decoy}",
                    f"tcp://127.0.0.1:{decoy}",
                    f"http://127.0.0.1:{decoy}",
                )
            ]
        nodes = ", ".join(f'"{self.nodes[name].url}"' for name in sorted(self.nodes))
        up = f"\nbase_port = {self.up_base_port}" if self.up_base_port is not None else ""
        timings = "\n".join(f"{k} = {v}" for k, v in self.cluster_settings.items())
        discovery = 'backend = "static"'
        if self.consul is not None:
            consul = "\n".join(f"{k} = {v}" for k, v in self.consul_settings.items())
            discovery = f'backend = "consul"\n\n[discovery.consul]\naddress = "{self.consul}"\n'
            discovery += consul
        listed = "\n".join(
            f"[[discovery.routers]]\n{f'id = {r.id!r}' if r.id else ''}\n"
            f'xsub = "{r.xsub}"\nxpub = "{r.xpub}"\nhttp = "{r.http}"\n'
            for r in routers
        )
        target = path or self.config
        # Atomically: processes that are starting may be reading the file right now.
        staging = target.with_suffix(".tmp")
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

{listed}
[up]
nodes = {self.up_nodes}{up}

[namespaces."/"]

[namespaces."/any"]
publish = "any"

{self.extra_config}
"""
        )
        os.replace(staging, target)

    def env(self) -> dict[str, str]:
        """The children's environment (the app module is importable from the directory)."""
        inherited = os.environ.get("PYTHONPATH")
        path = str(self.dir) if not inherited else f"{self.dir}{os.pathsep}{inherited}"
        return clean_env(PYTHONPATH=path)

    def spawn(self, name: str, *args: str, config: Path | None = None) -> Proc:
        """A (not yet started) ``roomcast *args`` process with this cluster's config (or
        ``config``); it is stopped by :meth:`close`."""
        proc = Proc(name, roomcast_argv(config or self.config, *args), self.dir, self.env())
        self.procs.append(proc)
        return proc

    def add_node(self, name: str, url: str, proc: Proc) -> NodeProc:
        """Register a node started some other way (``roomcast up`` starts its own)."""
        node = self.nodes[name] = NodeProc(name, url, proc)
        self.write_config()
        return node

    # -- starting and stopping ----------------------------------------------------------------

    async def start_router(self) -> Proc:
        """Start the first router and wait until it serves /health.

        Its first start binds port 0 (all three ports) and the ports its ready line announces
        go into ``cluster.toml``; a restart reuses them, as an operator restarting a router
        where it was would (the nodes know them)."""
        self._routers_started += 1
        proc = self.spawn(
            f"router{self._routers_started}",
            *("router", *_port_args(self.xsub_port, self.xpub_port, self.http_port)),
        )
        await proc.start()
        bound = _bound(
            (self.xsub_port, self.xpub_port, self.http_port), await proc.wait_line(ROUTER_READY)
        )
        self.xsub_port, self.xpub_port, self.http_port = bound
        self.router = proc
        self.write_config()
        await wait_until(lambda: self._ok(self.router_http + "/health"), what="router health")
        return proc

    async def start_extra_router(self, rid: str, ports: tuple[int, int, int] | None = None) -> Proc:
        """Start one more router ``rid`` (on port 0, or on ``ports`` = (xsub, xpub, http) to
        restart it where it was) and wait until it serves /health. With Consul it registers
        itself there; static nodes know it only if it is one of :attr:`static_routers`, whose
        ports (the ones it announced) go into ``cluster.toml`` then."""
        proc = self.spawn(
            f"{rid}-{len(self.procs)}", *("router", "--id", rid, *_port_args(*(ports or (0, 0, 0))))
        )
        await proc.start()
        match = await proc.wait_line(ROUTER_READY)
        assert match.group("id") == rid, match.group(0)
        bound = _bound(ports or (0, 0, 0), match)
        router = self.extra_routers[rid] = RouterProc(rid, *bound, proc)
        if rid in self.static_routers:
            self.static_routers[rid] = bound
            self.write_config()
        await wait_until(lambda: self._ok(router.http + "/health"), what=f"{rid} health")
        return proc

    async def start_node(
        self, name: str, *extra: str, wait_healthy: bool = True, config: Path | None = None
    ) -> NodeProc:
        """Start node ``name`` on a free port (it announces its URL) and wait for /health
        (unless ``wait_healthy`` is False: a node that reaches no router fails it); ``config``
        replaces the cluster's own ``cluster.toml`` for it."""
        if self.consul is None:
            listed = {self.router_id: self.xsub_port}
            listed.update((rid, ports[0]) for rid, ports in self.static_routers.items())
            unknown = sorted(rid for rid, port in listed.items() if not port)
            assert not unknown, f"start {unknown} first: nodes read their ports in cluster.toml"
        args = ["node", "--id", name, "--host", "127.0.0.1", "--port", "0", *extra]
        if self.app is not None:
            args += ["--app", self.app]
        proc = self.spawn(name, *args, config=config)
        await proc.start()
        match = await proc.wait_line(NODE_READY)
        assert match.group(1) == name
        node = self.nodes[name] = NodeProc(name, match.group(2), proc)
        if wait_healthy:
            await wait_until(lambda: self._ok(node.url + "/health"), what=f"{name} health")
        self.write_config()  # the CLI asks the nodes listed there
        return node

    async def start(self, *names: str) -> Cluster:
        """Start the routers (the first, then the static ones; ``cluster.toml`` has all their
        ports then), then the nodes (in parallel), and wait until all see each other."""
        await self.start_router()
        for rid in self.static_routers:
            await self.start_extra_router(rid)
        await asyncio.gather(*(self.start_node(n) for n in names))
        await self.converged()
        return self

    async def close(self) -> None:
        """Stop every process ever started (SIGTERM, then SIGKILL), print logs of failures."""
        await asyncio.gather(*(p.stop() for p in self.procs))
        await self.session.close()
        if self._decoy is not None:
            self._decoy.close()
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


def _port_args(xsub: int, xpub: int, http: int) -> list[str]:
    """``roomcast router``'s port flags (0: the system picks; the ready line says which)."""
    return ["--xsub-port", str(xsub), "--xpub-port", str(xpub), "--http-port", str(http)]


def _bound(asked: tuple[int, int, int], match: re.Match[str]) -> tuple[int, int, int]:
    """The ports a router announced, checked against those it was asked to bind (0: any)."""
    bound = announced_ports(match)
    assert all(a in (0, b) for a, b in zip(asked, bound, strict=True)), (asked, match.group(0))
    return bound


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
