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
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from roomcast.config import Settings
from roomcast.errors import RemoteProtocolError
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

from . import relay
from .engine import Connection, EngineEndpoint
from .rooms import Room
from .sockets import (
    BroadcastOperator,
    Handshake,
    Namespace,
    NamespaceMatcher,
    SocketInfo,
    start_broadcast_with_ack,
    wait_acks,
)

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


class Server:
    """One edge node: namespaces, connections and their rooms, served over HTTP."""

    def __init__(self, settings: Settings | None = None, *, node_id: str | None = None) -> None:
        self.settings = settings or Settings()
        self.node_id = node_id or self.settings.node.id or f"node-{secrets.token_hex(3)}"
        self.connections: dict[str, Connection] = {}
        self.stats = NodeStats()
        limits = self.settings.limits
        self.decoder_limits = sio.DecoderLimits(limits.max_attachments, limits.max_ack_id)
        self._namespaces: dict[str, Namespace] = {}
        self._dynamic: list[tuple[Callable[[str], bool], Namespace]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Coroutines called with (namespace, rooms, created) when local rooms appear or vanish.
        self.membership_listeners: list[
            Callable[[Namespace, list[Room], bool], Awaitable[None]]
        ] = []
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self.port: int = self.settings.node.port
        self.app = self._build_app()
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
        for matcher, parent in self._dynamic:
            try:
                matched = matcher(name)
            except Exception:
                log.exception("namespace matcher failed for %r", name)
                continue
            if matched:
                ns = self._namespaces[name] = Namespace(self, name, parent)
                return ns
        return None

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
        except RemoteProtocolError as exc:
            conn.close(exc.reason, exc.detail)
            return
        if packet is not None:
            self.dispatch(conn, packet)

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
        if name in conn.sockets:
            return
        if len(conn.sockets) >= self.settings.limits.max_namespaces_per_connection:
            conn.close(reasons.TOO_MANY_NAMESPACES)
            return
        ns = self._resolve(name)
        if ns is None:
            conn.send_packet(
                sio.Packet(sio.PacketType.CONNECT_ERROR, name, {"message": "Invalid namespace"})
            )
            return
        self.spawn(ns.connect(conn, packet.data or {}))

    def handshake(self, conn: Connection, auth: dict[str, Any]) -> Handshake:
        """The handshake record of a socket connecting over ``conn``."""
        req = conn.request
        return Handshake(
            headers=dict(req.headers),
            query=dict(req.query),
            auth=auth,
            address=req.remote,
            time=time.time(),
            url=str(req.rel_url),
            secure=req.secure,
        )

    def new_sid(self) -> str:
        """A fresh socket id."""
        return secrets.token_urlsafe(15)

    # -- broadcasting (single node; the cluster extends these) --------------------------------

    def broadcast(self, op: BroadcastOperator, frames: Frames) -> None:
        """Deliver a pre-encoded packet to every targeted local socket, once each."""
        volatile = op.volatile_
        n = 0
        for socket in op.local_recipients():
            if socket.conn.write(frames, volatile):
                n += 1
        self.stats.messages_out += n

    async def broadcast_with_ack(
        self, op: BroadcastOperator, event: str, args: tuple[Any, ...], timeout: float | None
    ) -> list[Any]:
        """Broadcast with acks; returns every recipient's answer."""
        future, collector = start_broadcast_with_ack(op, event, args)
        return await wait_acks(future, collector, timeout)

    async def fetch_sockets(self, op: BroadcastOperator) -> list[SocketInfo]:
        """The targeted sockets."""
        return [s.info() for s in op.local_recipients()]

    async def sockets_join(self, op: BroadcastOperator, rooms: list[str]) -> None:
        """Make the targeted sockets join ``rooms``."""
        for socket in list(op.local_recipients()):
            await socket.namespace.add_to_rooms(socket, rooms)

    async def sockets_leave(self, op: BroadcastOperator, rooms: list[str]) -> None:
        """Make the targeted sockets leave ``rooms``."""
        for socket in list(op.local_recipients()):
            await socket.namespace.remove_from_rooms(socket, rooms)

    async def disconnect_sockets(self, op: BroadcastOperator, close: bool) -> None:
        """Disconnect the targeted sockets."""
        for socket in list(op.local_recipients()):
            socket.disconnect(close)

    async def rooms_created(self, ns: Namespace, rooms: list[Room]) -> None:
        """Rooms got their first local member (the cluster subscribes to them here)."""
        for listener in self.membership_listeners:
            await listener(ns, rooms, True)

    async def rooms_deleted(self, ns: Namespace, rooms: list[Room]) -> None:
        """Rooms lost their last local member."""
        for listener in self.membership_listeners:
            await listener(ns, rooms, False)

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

    # -- HTTP ---------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._cors_middleware])
        endpoint = EngineEndpoint(self)
        path = self.settings.node.path
        app.router.add_route("*", path, endpoint.handle)
        app.router.add_route("*", path.rstrip("/"), endpoint.handle)
        app.router.add_get("/health", self._health)
        app.router.add_get("/admin/stats", self._admin_stats)
        app.router.add_get("/admin/rooms", self._admin_rooms)
        return app

    @web.middleware
    async def _cors_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        origins = self.settings.node.cors_origins
        origin = request.headers.get("Origin")
        if origin and origins and ("*" in origins or origin in origins) and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST"
                response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                    "Access-Control-Request-Headers", "content-type"
                )
        return response

    def health(self) -> dict[str, Any]:
        """The node's health document."""
        return {
            "status": "ok",
            "node": self.node_id,
            "connections": len(self.connections),
            "sockets": self.stats.sockets,
        }

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health())

    async def _admin_stats(self, request: web.Request) -> web.Response:
        s = self.stats
        return web.json_response(
            {
                "node": self.node_id,
                "connections": len(self.connections),
                "connections_opened": s.connections_opened,
                "sockets": s.sockets,
                "messages_in": s.messages_in,
                "messages_out": s.messages_out,
                "volatile_dropped": s.volatile_dropped,
                "closed_by_reason": dict(s.closed_by_reason),
            }
        )

    async def _admin_rooms(self, request: web.Request) -> web.Response:
        return web.json_response(
            {ns.name: ns.rooms() for ns in self._namespaces.values() if ns.sockets}
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Server:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        node = self.settings.node
        site = web.TCPSite(self._runner, node.host, node.port, reuse_address=True)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info(
            "node %s listening on http://%s:%d%s", self.node_id, node.host, self.port, node.path
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for conn in list(self.connections.values()):
            conn.close(reasons.SERVER_SHUTTING_DOWN)
        # Let close frames and disconnect handlers run before the listener goes.
        if self._tasks:
            await asyncio.wait(
                list(self._tasks), timeout=self.settings.node.shutdown_grace_ms / 1000
            )
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._stopped is not None:
            self._stopped.set()

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
