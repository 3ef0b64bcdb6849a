"""The edge node: an aiohttp server speaking Engine.IO v4 / Socket.IO v5.

:class:`Server` is an async context manager that owns its listener and every task it starts
(STYLE.md #9)::

    async with Server(settings) as server:
        chat = server.of("/chat")

        @chat.on("hello")
        async def hello(socket, name):
            await socket.join("lobby")
            socket.to("lobby").emit("joined", name)
            return "welcome"

        await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.log import server_logger as web_logger
from prometheus_client import CollectorRegistry

from roomcast import metrics
from roomcast.config import Settings
from roomcast.ids import NodeId, node_tag
from roomcast.metrics import Histogram
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.sio_session import SessionLimits

from . import relay
from .adapter import Adapter, RoomTable
from .admin_ui import AdminUI
from .broadcast import BroadcastOperator, Broadcasts
from .client import Client, ClientServices
from .cluster import ClusterAdapter
from .endpoint import EngineEndpoint
from .engine import Connection, EngineClient
from .forward import Forwarder
from .health import Health
from .http import build_app
from .listener import Listener, PeerErrors, handler_args, tls_context
from .local import LocalAdapter
from .metrics import NodeCollector
from .namespaces import Namespaces
from .sessions import Sessions
from .sio_socket import NoSocketEvents
from .sockets import Namespace, NamespaceMatcher, NamespaceServices
from .stats import NodeStats

log = logging.getLogger("roomcast.node")


class Server(Broadcasts):
    """One edge node: namespaces, connections and their rooms, served over HTTP."""

    def __init__(self, settings: Settings | None = None, *, node_id: str | None = None) -> None:
        self.settings = settings or Settings()
        self.node_id = node_id or self.settings.node.id or f"node-{secrets.token_hex(3)}"
        self.stats = NodeStats()
        limits = self.settings.limits
        #: The node's Engine.IO sessions.
        self.sessions: Sessions[Connection] = Sessions(self.stats, limits.send_buffer_bytes)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: True once :meth:`drain` started: new sessions are refused.
        self.draining = False
        #: Why the node must not get clients ("deaf", "draining"), and who is told.
        self.health_state = Health()
        #: This run of the node: a restarted node is a new incarnation.
        self.incarnation = time.time_ns() // 1000
        self.tag = node_tag(self.node_id, self.incarnation)
        #: The node's namespaces (created on first use).
        self.namespace_registry = Namespaces(limits.max_dynamic_namespaces)
        #: Carries broadcasts and cluster-wide operations: to other nodes too, in a cluster.
        self.adapter: Adapter = self._make_adapter()
        #: The Admin UI's namespace (``[admin_ui]``), None when it is off.
        self.admin_ui = self._make_admin_ui()
        self.namespace_registry.bind(
            NamespaceServices(
                self.adapter,
                limits,
                self.stats,
                self.spawn,
                self.namespace_registry.maybe_empty,
                self.settings.recovery_of,
                self.admin_ui if self.admin_ui is not None else NoSocketEvents(),
            )
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._listener: Listener | None = None
        #: TLS for clients (``http.tls_cert_file``): read now, so a bad file fails at once.
        self._tls = tls_context(self.settings.http)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self.port: int = self.settings.node.port
        session_limits = SessionLimits(
            max_namespaces=limits.max_namespaces_per_connection,
            connect_timeout=self.settings.engineio.connect_timeout_ms / 1000,
            decoder=sio.DecoderLimits(limits.max_attachments, limits.max_ack_id),
        )
        self._client_services = ClientServices(
            self.namespace_registry, session_limits, self.stats, self.spawn
        )
        #: Requests for other nodes' sessions go there (``cluster.forward_requests``).
        self.forwarder = self._make_forwarder()
        #: The Engine.IO endpoint: handshakes, polling, WebSocket.
        self.metrics_registry = self._make_metrics()
        self.endpoint = EngineEndpoint(
            self.settings,
            self.sessions,
            self.new_client,
            self.spawn,
            lambda: self.draining,
            self.tag,
            self.forwarder,
        )
        self.app = build_app(self)
        for policy in self.settings.namespaces:
            relay.install(self.of(policy.name), policy, limits)
        if self.admin_ui is not None:
            self.admin_ui.install(self.of(self.settings.admin_ui.namespace))

    def _make_admin_ui(self) -> AdminUI | None:
        admin = self.settings.admin_ui
        if not admin.enabled:
            return None
        return AdminUI(
            admin,
            self.node_id,
            self.adapter,
            self.stats,
            lambda: self.connections,
            self.namespaces,
            self._known_namespaces,
        )

    def _known_namespaces(self) -> list[str]:
        """Namespaces that may have sockets somewhere: this node's, the config's, and those
        with rooms in the replica (a node gossips rooms, not sockets)."""
        names: set[str] = {ns.name for ns in self.namespaces() if ns.name.startswith("/")}
        names.update(policy.name for policy in self.settings.namespaces)
        names.update(ns for ns, _ in self.adapter.room_table())
        return sorted(names)

    def _make_metrics(self) -> CollectorRegistry | None:
        """The registry ``/metrics`` serves, and the histograms it needs recorded (None and
        none with ``metrics.enabled`` false)."""
        if not self.settings.metrics.enabled:
            return None
        stats = self.stats
        stats.fanout = Histogram(metrics.FANOUT_BUCKETS)
        if self.settings.cluster.enabled:
            stats.bus_fanout = Histogram(metrics.FANOUT_BUCKETS)
            stats.join_seconds = Histogram(metrics.JOIN_BUCKETS)
        return metrics.registry(NodeCollector(self))

    def _make_forwarder(self) -> Forwarder | None:
        s = self.settings
        if not (s.cluster.enabled and s.cluster.forward_requests):
            return None
        return Forwarder(
            self.node_id,
            self.adapter.node_address,
            self.stats,
            max_payload=s.engineio.max_payload,
            body_timeout=s.http.body_timeout_ms / 1000,
            # The owner answers a long-poll within its ping interval; a ping timeout more is
            # left for the hop.
            poll_timeout=(s.engineio.ping_interval_ms + s.engineio.ping_timeout_ms) / 1000,
            ca_file=s.http.tls_ca_file,
        )

    def _make_adapter(self) -> Adapter:
        node_id = NodeId(self.node_id)
        if not self.settings.cluster.enabled:
            return LocalAdapter(node_id, self.tag, self.namespace_registry, self.stats)
        return ClusterAdapter(
            self.settings,
            node_id,
            self.incarnation,
            self.namespace_registry,
            self.stats,
            self.health_state,
            self.spawn,
            lambda: len(self.connections),
        )

    # -- namespaces ---------------------------------------------------------------------------

    def of(self, name: NamespaceMatcher) -> Namespace:
        """The namespace ``name``, created on first use.

        A compiled regex or a predicate makes a *dynamic* namespace: any name it matches is
        created on first connection, sharing the returned parent's handlers and middleware.
        """
        return self.namespace_registry.of(name)

    def namespaces(self) -> list[Namespace]:
        """Every namespace that exists now (dynamic children included)."""
        return self.namespace_registry.all()

    def namespace(self, name: str) -> Namespace | None:
        """The existing namespace ``name`` (None when nobody created or connected to it)."""
        return self.namespace_registry.namespace(name)

    # Shortcuts to the root namespace, as on socket.io's ``io``.

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        """Register a handler on the root namespace."""
        return self.of("/").on(event, handler)

    def use(self, middleware: Callable[..., Any]) -> Any:
        """Add a middleware to the root namespace."""
        return self.of("/").use(middleware)

    def operator(self) -> BroadcastOperator:
        """A broadcast to every socket of the root namespace (``to``, ``emit``... on the
        server act on the root namespace)."""
        return self.of("/").operator()

    # -- connections --------------------------------------------------------------------------

    @property
    def connections(self) -> dict[str, Connection]:
        """The live Engine.IO sessions by sid."""
        return self.sessions.live

    def new_client(self, conn: Connection) -> EngineClient:
        """The Socket.IO side of a new connection (a subclass may speak something else over
        raw Engine.IO)."""
        return Client(conn, self._client_services)

    # -- server-to-server events --------------------------------------------------------------

    def on_server_event(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        """Register ``handler(*args)`` for events other nodes send with :meth:`server_side_emit`;
        its return value is the answer. Usable as a decorator."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.adapter.on_server_event(event, fn)
            return fn

        return register(handler) if handler is not None else register

    async def server_side_emit(
        self, event: str, *args: Any, timeout: float | None = None
    ) -> list[Any]:
        """Send ``event`` to every other node; returns their handlers' answers."""
        return await self.adapter.server_side_emit(event, args, timeout)

    # -- tasks --------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the server owns (cancelled at shutdown, errors logged)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", exc_info=task.exception())

    # -- health and drain ---------------------------------------------------------------------

    async def drain(self, window: float) -> None:
        """Leave the cluster gracefully, for a rolling deploy.

        The node takes no new sessions and fails ``/health`` (and its Consul check) at once,
        then closes its connections (and the WebSockets it splices to other nodes' sessions)
        spread evenly over ``window`` seconds, so that their clients reconnect elsewhere
        without a reconnect storm; it keeps the sessions of those
        connections for recovery until each client came back elsewhere (the node it reached
        takes its session over) or its window ended; the polling requests it forwards for
        other nodes' sessions get their answers (within a long-poll's deadline); then it stops
        (announcing its departure and deregistering).
        """
        self.draining = True
        self.set_unhealthy("draining", "node is draining")
        # Its own connections, and the WebSockets it splices to other nodes' sessions (their
        # clients reconnect too; all at once at the exit would be a reconnect storm there).
        closers: list[Callable[[], None]] = [
            functools.partial(conn.close, reasons.SERVER_SHUTTING_DOWN, flush=True)
            for conn in self.connections.values()
        ]
        if self.forwarder is not None:
            closers += self.forwarder.bridges()
        random.shuffle(closers)
        log.info("draining %d connections over %.1f s", len(closers), window)
        loop = self.loop
        start = loop.time()
        for i, close in enumerate(closers):
            delay = start + window * (i + 1) / len(closers) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            close()
        for conn in list(self.connections.values()):  # any that slipped in meanwhile
            conn.close(reasons.SERVER_SHUTTING_DOWN, flush=True)
        # The sessions of the connections closed are kept (connection state recovery) until
        # their clients come back on other nodes, which take them over, or their windows end.
        await self.adapter.sessions_settled()
        # Long-polls of other nodes' sessions that came through this node get their answers
        # (a load balancer sends it no new ones once its health fails).
        if self.forwarder is not None and not await self.forwarder.settled(
            self.forwarder.poll_timeout
        ):
            log.warning("drained with forwarded requests still unanswered: they are cut")
        self.stop()

    def set_unhealthy(self, problem: str, detail: str | None) -> None:
        """Record (``detail`` given) or clear (None) a reason the node must not get clients;
        health watchers (the discovery backend) are told at once."""
        self.health_state.set_problem(problem, detail)

    @property
    def healthy(self) -> bool:
        """Whether load balancers should send this node clients."""
        return self.health_state.healthy

    def health(self) -> dict[str, Any]:
        """The node's health document."""
        problems = self.health_state.problems
        return {
            "status": "ok" if not problems else next(iter(sorted(problems))),
            "problems": dict(problems),
            "node": self.node_id,
            "connections": len(self.connections),
            "sockets": self.stats.sockets,
        }

    def room_table(self, namespace: str | None = None) -> RoomTable:
        """Every room in the cluster (or this namespace): (ns, room) -> {node: members}.

        A local read: this node's registry plus its replica of everyone else's.
        """
        return self.adapter.room_table(namespace)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Server:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            # Whatever fails on the way, everything started before it is undone.
            edge = self.settings.http
            runner = web.AppRunner(
                self.app,
                handler_cancellation=True,
                access_log=None,
                shutdown_timeout=1.0,
                **handler_args(edge, PeerErrors(web_logger, self.stats.http_refused)),
            )
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            node = self.settings.node
            http = runner.server
            assert http is not None
            self._listener = listener = Listener(self.endpoint, http, edge, self.stats.http_refused)
            self.port = await listener.start(node.host, node.port, node.backlog, self._tls)
            stack.callback(listener.stop)
            log.info("node %s listening on %s%s", self.node_id, self.url, node.path)
            await self.adapter.start(self.public_url)
            stack.push_async_callback(self.adapter.stop)
            if self.admin_ui is not None:
                await stack.enter_async_context(self.admin_ui)
            if self.forwarder is not None:
                stack.push_async_callback(self.forwarder.close)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for conn in list(self.connections.values()):
            conn.close(reasons.SERVER_SHUTTING_DOWN, flush=True)
        # Let close handshakes and disconnect handlers run before the listener goes.
        loop = self.loop
        deadline = loop.time() + self.settings.node.shutdown_grace_ms / 1000
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=deadline - loop.time())
        await self.endpoint.closing.wait(max(0.0, deadline - loop.time()))
        if self.forwarder is not None:  # as a drain does, within the grace
            await self.forwarder.settled(max(0.0, deadline - loop.time()))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()  # the adapter (cluster membership), the listener, aiohttp
        # Transports closed or aborted above release their sockets in a callback of a later
        # loop pass: let it run, so that an embedding app's loop may close right after
        # without leaving a socket to the garbage collector.
        await asyncio.sleep(0)
        self._listener = None
        if self._stopped is not None:
            self._stopped.set()

    @property
    def public_url(self) -> str:
        """The URL other nodes, the CLI and Consul know this node by (``node.advertise``, or
        the listening URL)."""
        return self.settings.node.advertise.rstrip("/") or self.url

    @property
    def url(self) -> str:
        """The base URL clients connect to (``https`` with TLS)."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{self.settings.node.host}:{self.port}"

    async def serve_forever(self) -> None:
        """Wait until the server is stopped (by :meth:`stop` or cancellation)."""
        assert self._stopped is not None, "use 'async with Server(...)' first"
        await self._stopped.wait()

    def stop(self) -> None:
        """Make :meth:`serve_forever` return."""
        if self._stopped is not None:
            self._stopped.set()
