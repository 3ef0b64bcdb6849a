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
import collections
import inspect
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from roomcast.config import Settings
from roomcast.errors import RemoteProtocolError
from roomcast.ids import Sid, new_sid, node_tag, tag_of_sid
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio

from . import relay
from .broadcast import BroadcastOperator
from .cluster import ClusterLink
from .delivery import Delivery
from .endpoint import EngineEndpoint, Listener
from .engine import Connection
from .http import build_app
from .sockets import Namespace, NamespaceMatcher

log = logging.getLogger("roomcast.node")


@dataclass
class NodeStats:
    """Counters of one node, served by ``/health`` and the admin API."""

    connections_opened: int = 0
    sockets: int = 0
    messages_in: int = 0
    messages_out: int = 0
    volatile_dropped: int = 0
    closed_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)


class Server(Delivery):
    """One edge node: namespaces, connections and their rooms, served over HTTP."""

    def __init__(self, settings: Settings | None = None, *, node_id: str | None = None) -> None:
        self.settings = settings or Settings()
        self.node_id = node_id or self.settings.node.id or f"node-{secrets.token_hex(3)}"
        self.connections: dict[str, Connection] = {}
        #: Polling connections closed on purpose whose last packets await one more GET.
        self.lingering: dict[str, Connection] = {}
        self._linger_timers: dict[str, asyncio.TimerHandle] = {}
        self.stats = NodeStats()
        limits = self.settings.limits
        self.decoder_limits = sio.DecoderLimits(limits.max_attachments, limits.max_ack_id)
        self._namespaces: dict[str, Namespace] = {}
        self._dynamic: list[tuple[Callable[[str], bool], Namespace]] = []
        self._dynamic_children = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server_handlers: dict[str, Callable[..., Any]] = {}
        #: True once :meth:`drain` started: new sessions are refused.
        self.draining = False
        self._problems: dict[str, str] = {}  # "deaf", "draining": why /health fails
        #: Callables told ``(healthy, note)`` whenever health changes.
        self.health_watchers: list[Callable[[bool, str], None]] = []
        self._dirty: list[Connection] = []  # connections with WebSocket frames to write
        self._flush_handle: asyncio.Handle | None = None
        #: This run of the node: a restarted node is a new incarnation.
        self.incarnation = time.time_ns() // 1000
        self.tag = node_tag(self.node_id, self.incarnation)
        #: The node's membership in the cluster (None for a standalone node).
        self.cluster: ClusterLink | None = (
            ClusterLink(self) if self.settings.cluster.enabled else None
        )
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self.port: int = self.settings.node.port
        #: The Engine.IO endpoint: handshakes, polling, WebSocket.
        self.endpoint = EngineEndpoint(self)
        self.app = build_app(self)
        for policy in self.settings.namespaces:
            relay.install(self.of(policy.name), policy, limits)

    # -- namespaces ---------------------------------------------------------------------------

    def of(self, name: NamespaceMatcher) -> Namespace:
        """The namespace ``name``, created on first use.

        A compiled regex or a predicate makes a *dynamic* namespace: any name it matches is
        created on first connection, sharing the returned parent's handlers and middleware.
        """
        if isinstance(name, str):
            if not name.startswith("/"):
                name = "/" + name
            ns = self._namespaces.get(name)
            if ns is None:
                # A name a dynamic namespace matches is its child (its middleware applies),
                # whether a client or the app names it first.
                parent = self._dynamic_parent(name)
                if parent is not None:
                    return self._new_child(name, parent)
                ns = self._namespaces[name] = Namespace(self, name)
            return ns
        parent = Namespace(self, getattr(name, "pattern", repr(name)))
        matcher: Callable[[str], bool]
        if isinstance(name, re.Pattern):
            pattern = name

            def matches(candidate: str) -> bool:
                return pattern.fullmatch(candidate) is not None

            matcher = matches
        else:
            matcher = name
        self._dynamic.append((matcher, parent))
        return parent

    def namespaces(self) -> list[Namespace]:
        """Every namespace that exists now (dynamic children included)."""
        return list(self._namespaces.values())

    def _resolve(self, name: str) -> Namespace | None:
        ns = self._namespaces.get(name)
        if ns is not None:
            return ns
        parent = self._dynamic_parent(name)
        if parent is None:
            return None
        if self._dynamic_children >= self.settings.limits.max_dynamic_namespaces:
            log.warning("dynamic namespace %r refused: limit reached", name)
            return None
        return self._new_child(name, parent)

    def _new_child(self, name: str, parent: Namespace) -> Namespace:
        self._dynamic_children += 1
        ns = self._namespaces[name] = Namespace(self, name, parent)
        return ns

    def _dynamic_parent(self, name: str) -> Namespace | None:
        for matcher, parent in self._dynamic:
            try:
                if matcher(name):
                    return parent
            except Exception:
                log.exception("namespace matcher failed for %r", name)
        return None

    def namespace_maybe_empty(self, ns: Namespace) -> None:
        """A dynamic namespace child with no socket left (and none connecting) is removed, as
        socket.io's ``cleanupEmptyChildNamespaces`` does: names are client input."""
        if (
            ns.parent is not None
            and not ns.sockets
            and not ns.connecting
            and self._namespaces.get(ns.name) is ns
        ):
            del self._namespaces[ns.name]
            self._dynamic_children -= 1

    # Shortcuts to the root namespace, as on socket.io's ``io``.

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        """Register a handler on the root namespace."""
        return self.of("/").on(event, handler)

    def use(self, middleware: Callable[..., Any]) -> Any:
        """Add a middleware to the root namespace."""
        return self.of("/").use(middleware)

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Broadcast to rooms of the root namespace."""
        return self.of("/").to(*rooms)

    in_ = to

    def emit(self, event: str, *args: Any) -> None:
        """Emit to every socket of the root namespace."""
        self.of("/").emit(event, *args)

    # -- packets from connections -------------------------------------------------------------

    def on_engine_message(self, conn: Connection, data: str | bytes) -> None:
        """An Engine.IO MESSAGE from ``conn``: decode it as Socket.IO and dispatch."""
        self.stats.messages_in += 1
        try:
            packet = conn.decoder.feed(data)
            if packet is not None:
                self.dispatch(conn, packet)
        except RemoteProtocolError as exc:
            conn.close(exc.reason, exc.detail)
        except Exception:
            # A peer's garbage must never kill the read loop: whatever it provoked, only its
            # own session ends.
            log.exception("packet from %s could not be handled", conn.sid)
            conn.close(reasons.PARSE_ERROR, "unhandled packet")

    def dispatch(self, conn: Connection, packet: sio.Packet) -> None:
        """Route one decoded Socket.IO packet from ``conn``."""
        kind = packet.type
        if kind is sio.PacketType.EVENT or kind is sio.PacketType.BINARY_EVENT:
            socket = conn.sockets.get(packet.namespace)
            if socket is not None:
                socket._on_event(packet.data, packet.id)
        elif kind is sio.PacketType.ACK or kind is sio.PacketType.BINARY_ACK:
            socket = conn.sockets.get(packet.namespace)
            if socket is not None and packet.id is not None:
                socket._on_ack(packet.id, packet.data)
        elif kind is sio.PacketType.CONNECT:
            self._connect(conn, packet)
        elif kind is sio.PacketType.DISCONNECT:
            socket = conn.sockets.get(packet.namespace)
            if socket is not None:
                socket._on_close(reasons.CLIENT_NAMESPACE_DISCONNECT)
        else:
            conn.close(reasons.PARSE_ERROR, f"client sent {kind.name}")

    def _connect(self, conn: Connection, packet: sio.Packet) -> None:
        name = packet.namespace
        if name in conn.sockets or name in conn.connecting:
            return
        # Connects still under way count: a burst of CONNECTs must not get past the limit.
        limit = self.settings.limits.max_namespaces_per_connection
        if len(conn.sockets) + len(conn.connecting) >= limit:
            conn.close(reasons.TOO_MANY_NAMESPACES)
            return
        ns = self._resolve(name)
        if ns is None:
            conn.send_packet(
                sio.Packet(sio.PacketType.CONNECT_ERROR, name, {"message": "Invalid namespace"})
            )
            return
        conn.connecting += (name,)
        ns.connecting += 1  # now, so that the namespace cannot be removed before it starts
        self.spawn(self._connect_socket(conn, ns, packet.data or {}))

    async def _connect_socket(self, conn: Connection, ns: Namespace, auth: Any) -> None:
        try:
            await ns.connect(conn, auth)
        finally:
            conn.connecting = tuple(n for n in conn.connecting if n != ns.name)
            ns.connecting -= 1
            self.namespace_maybe_empty(ns)

    def new_sid(self) -> Sid:
        """A fresh socket id; its first characters name this node's incarnation (its tag), so
        any node can route a message for it without a lookup."""
        return new_sid(self.tag)

    def names_a_socket(self, name: str) -> bool:
        """Whether ``name`` is (or could be) a socket id issued by this node or a node the
        replica knows: such a name is a socket's private room, never a room to join."""
        tag = tag_of_sid(name)
        if tag is None:
            return False
        if tag == self.tag:
            return True
        return self.cluster is not None and self.cluster.replica.knows_tag(tag)

    def namespace(self, name: str) -> Namespace | None:
        """The existing namespace ``name`` (None when nobody created or connected to it)."""
        return self._namespaces.get(name)

    async def membership_changed(self, ns: Namespace, joined: list[str], left: list[str]) -> None:
        """A socket joined or left rooms: gossip the new counts, follow room interest.

        Returns once the rooms joined are live at the router, so the first message published
        to them afterwards, from any node, arrives.
        """
        if self.cluster is not None:
            registry = ns.registry
            counts = {r: registry.size(r) for r in (*joined, *left)}
            await self.cluster.rooms_changed(ns.name, counts, joined, left)

    async def namespace_entered(self, ns: Namespace) -> None:
        """A socket is about to connect to ``ns``: make namespace-wide emits reach it."""
        if self.cluster is not None:
            await self.cluster.namespace_entered(ns.name)

    def namespace_exited(self, ns: Namespace) -> None:
        """A socket of ``ns`` is gone."""
        if self.cluster is not None:
            self.cluster.namespace_exited(ns.name)

    # -- server-to-server events --------------------------------------------------------------

    def on_server_event(self, event: str, handler: Callable[..., Any] | None = None) -> Any:
        """Register ``handler(*args)`` for events other nodes send with :meth:`server_side_emit`;
        its return value is the answer. Usable as a decorator."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._server_handlers[event] = fn
            return fn

        return register(handler) if handler is not None else register

    async def run_server_event(self, event: str, args: list[Any]) -> Any:
        """Run the local handler of a server-to-server event; returns its answer."""
        handler = self._server_handlers.get(event)
        if handler is None:
            return None
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            log.exception("server event handler %r failed", event)
            return None
        return result

    async def server_side_emit(
        self, event: str, *args: Any, timeout: float | None = None
    ) -> list[Any]:
        """Send ``event`` to every other node; returns their handlers' answers."""
        if self.cluster is None:
            return []
        nodes = set(self.cluster.replica.alive())
        replies = await self.cluster.request(
            nodes, "server_event", {"event": event, "args": list(args)}, timeout
        )
        return list(replies.values())

    def linger(self, conn: Connection) -> None:
        """Keep a closed polling connection's last packets for its next GET, for at most one
        ping timeout (engine.io keeps them as long)."""
        seconds = conn.session.settings.ping_timeout_ms / 1000
        sid = conn.sid
        old = self._linger_timers.pop(sid, None)
        if old is not None:
            old.cancel()
        self.lingering[sid] = conn
        self._linger_timers[sid] = self.loop.call_later(seconds, self._forget_lingering, sid)

    def _forget_lingering(self, sid: str) -> None:
        self.lingering.pop(sid, None)
        self._linger_timers.pop(sid, None)

    def schedule_flush(self, conn: Connection) -> None:
        """Have ``conn``'s queued frames written at the end of this loop pass."""
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

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
        then closes its connections spread evenly over ``window`` seconds, so that their
        clients reconnect elsewhere without a reconnect storm; then it stops (announcing its
        departure and deregistering).
        """
        self.draining = True
        self.set_unhealthy("draining", "node is draining")
        conns = list(self.connections.values())
        random.shuffle(conns)
        log.info("draining %d connections over %.1f s", len(conns), window)
        loop = self.loop
        start = loop.time()
        for i, conn in enumerate(conns):
            delay = start + window * (i + 1) / len(conns) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            conn.close(reasons.SERVER_SHUTTING_DOWN, flush=True)
        for conn in list(self.connections.values()):  # any that slipped in meanwhile
            conn.close(reasons.SERVER_SHUTTING_DOWN, flush=True)
        self.stop()

    def set_unhealthy(self, problem: str, detail: str | None) -> None:
        """Record (``detail`` given) or clear (None) a reason the node must not get clients;
        health watchers (the discovery backend) are told at once."""
        before = self.healthy
        if detail is None:
            self._problems.pop(problem, None)
        else:
            self._problems[problem] = detail
        if self.healthy != before:
            for watcher in self.health_watchers:
                try:
                    watcher(self.healthy, self.health_note())
                except Exception:
                    log.exception("health watcher failed")

    @property
    def healthy(self) -> bool:
        """Whether load balancers should send this node clients."""
        return not self._problems

    def health_note(self) -> str:
        """Why the node is unhealthy (empty when it is not)."""
        return "; ".join(f"{k}: {v}" for k, v in sorted(self._problems.items()))

    def health(self) -> dict[str, Any]:
        """The node's health document."""
        return {
            "status": "ok" if self.healthy else next(iter(sorted(self._problems))),
            "problems": dict(self._problems),
            "node": self.node_id,
            "connections": len(self.connections),
            "sockets": self.stats.sockets,
        }

    def room_table(self, namespace: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
        """Every room in the cluster (or this namespace): (ns, room) -> {node: members}.

        A local read: this node's registry plus its replica of everyone else's.
        """
        table: dict[tuple[str, str], dict[str, int]] = {}
        if self.cluster is not None:
            table.update(self.cluster.remote_rooms(namespace))
        for ns in self._namespaces.values():
            if namespace is not None and ns.name != namespace:
                continue
            for room, count in ns.registry.rooms().items():
                table.setdefault((ns.name, room), {})[self.node_id] = count
        return table

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Server:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        node = self.settings.node
        http = self._runner.server
        assert http is not None
        self._listener = Listener(self.endpoint, http)
        self.port = await self._listener.start(node.host, node.port, node.backlog)
        log.info(
            "node %s listening on http://%s:%d%s", self.node_id, node.host, self.port, node.path
        )
        if self.cluster is not None:
            await self.cluster.start(self.public_url)
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
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.cluster is not None:
            await self.cluster.stop()
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._stopped is not None:
            self._stopped.set()

    @property
    def public_url(self) -> str:
        """The URL other nodes, the CLI and Consul know this node by (``node.advertise``, or
        the listening URL)."""
        return self.settings.node.advertise.rstrip("/") or self.url

    @property
    def url(self) -> str:
        """The base URL clients connect to."""
        return f"http://{self.settings.node.host}:{self.port}"

    async def serve_forever(self) -> None:
        """Wait until the server is stopped (by :meth:`stop` or cancellation)."""
        assert self._stopped is not None, "use 'async with Server(...)' first"
        await self._stopped.wait()

    def stop(self) -> None:
        """Make :meth:`serve_forever` return."""
        if self._stopped is not None:
            self._stopped.set()
