"""Namespaces, sockets and broadcasts: the Socket.IO server API of an edge node.

The shapes follow socket.io's server API (``io.of(name)``, ``socket.join``, ``io.to(room).
except(room).emit``, ``emitWithAck``, ``fetchSockets``...), written in Python's spelling. Names
say how far a thing goes (STYLE.md #5): ``emit`` reaches the whole namespace in the cluster;
``.local`` restricts a broadcast to this node.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import re
from collections.abc import Callable, Collection, Container
from dataclasses import dataclass
from typing import Any

from roomcast import ids
from roomcast.cluster.routing import Target
from roomcast.config import LimitSettings
from roomcast.errors import (
    ConnectRefusedError,
    DisconnectedError,
    RoomRefusedError,
)
from roomcast.ids import Room
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio

from .adapter import Adapter, Spawn
from .broadcast import BroadcastOperator, Broadcasts
from .rooms import RoomRegistry
from .sio_socket import ClientLink
from .sio_socket import Socket as Socket
from .stats import NodeStats

log = logging.getLogger("roomcast.node")

Handler = Callable[..., Any]
Middleware = Callable[["Socket", Any], Any]
NamespaceMatcher = str | re.Pattern[str] | Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class NamespaceServices:
    """What a namespace uses of its node: handed to it, so it never reaches for a server."""

    adapter: Adapter
    limits: LimitSettings
    stats: NodeStats
    spawn: Spawn
    #: Told when a namespace may have become empty (a dynamic child is then removed).
    maybe_empty: Callable[[Namespace], None]


class Namespace(Broadcasts):
    """A namespace: its handlers, middleware, sockets and rooms on this node."""

    def __init__(
        self, services: NamespaceServices, name: str, parent: Namespace | None = None
    ) -> None:
        self.services = services
        self.name = ids.Namespace(name)
        self.parent = parent
        self.sockets: dict[str, Socket] = {}
        self.registry: RoomRegistry[Socket] = RoomRegistry(self.sockets)
        self._handlers: dict[str, Handler] = {}
        self._middlewares: list[Middleware] = []
        self._ack_ids = itertools.count(0)
        self.connecting = 0  # connects under way (a dynamic child is not removed meanwhile)

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

    # -- registration -------------------------------------------------------------------------

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register ``handler(socket, *args)`` for ``event``; usable as a decorator.

        Special events: ``connect`` (``handler(socket, auth)``, after the client was told it is
        connected), ``disconnect`` (``handler(socket, reason)``) and ``*`` (catch-all:
        ``handler(socket, event, *args)`` for events without their own handler). The return
        value is the ack (a tuple for several arguments).
        """

        def register(fn: Handler) -> Handler:
            self._handlers[event] = fn
            return fn

        return register(handler) if handler is not None else register

    def use(self, middleware: Middleware) -> Middleware:
        """Add ``middleware(socket, auth)``, run in order before ``connect``.

        It refuses the connection by raising :class:`ConnectRefusedError` (sync or async).
        """
        self._middlewares.append(middleware)
        return middleware

    def handler(self, event: str) -> Handler | None:
        """The handler of ``event`` here or, for a dynamic child, in its parent."""
        h = self._handlers.get(event)
        if h is None and self.parent is not None:
            return self.parent.handler(event)
        return h

    @property
    def middlewares(self) -> list[Middleware]:
        """Middlewares in the order they run (a dynamic parent's first)."""
        inherited = self.parent.middlewares if self.parent is not None else []
        return inherited + self._middlewares

    def next_ack_id(self) -> int:
        """A fresh ack id, shared by direct emits and broadcasts of this namespace."""
        return next(self._ack_ids)

    # -- broadcasting -------------------------------------------------------------------------

    def operator(self) -> BroadcastOperator:
        """A broadcast to every socket of the namespace, to narrow down."""
        return BroadcastOperator(self.services.adapter, Target(self.name))

    def recipients(
        self,
        rooms: Collection[str],
        except_rooms: Collection[str] = (),
        except_sids: Collection[str] = (),
    ) -> Collection[Socket]:
        """This node's sockets of the namespace in any of ``rooms`` (all when empty), minus
        the members of ``except_rooms`` and the sockets named in ``except_sids``."""
        return self.registry.recipients(rooms, except_rooms, except_sids)

    def sids(self) -> Container[str]:
        """The sids of this node's sockets of the namespace."""
        return self.sockets

    def rooms(self) -> dict[Room, int]:
        """Rooms with members on this node, with their local sizes."""
        return self.registry.rooms()

    # -- membership ---------------------------------------------------------------------------

    async def add_to_rooms(self, socket: Socket, rooms: list[str]) -> None:
        """Add ``socket`` to ``rooms``; the rooms this creates are announced to the cluster."""
        if not socket.connected:
            return
        for room in rooms:
            if room != socket.sid and self.services.adapter.names_a_socket(room):
                # It would shadow a socket's own room (and eavesdrop on that socket).
                raise RoomRefusedError(room)
        new = list(dict.fromkeys(r for r in rooms if r not in socket.rooms))
        limit = self.services.limits.max_rooms_per_socket
        if len(socket.rooms) - 1 + len(new) > limit:
            socket.conn.close(reasons.TOO_MANY_ROOMS, f"limit {limit}")
            raise DisconnectedError(reasons.TOO_MANY_ROOMS)
        for room in new:
            socket.rooms.add(room)
            self.registry.add(socket, Room(room))
        if new:
            await self._rooms_changed(joined=new, left=[])

    async def remove_from_rooms(self, socket: Socket, rooms: list[str]) -> None:
        """Remove ``socket`` from ``rooms``; rooms left empty are deleted."""
        left: list[str] = []
        for room in rooms:
            if room == socket.sid or room not in socket.rooms:
                continue
            socket.rooms.discard(room)
            self.registry.discard(socket, Room(room))
            left.append(room)
        if left:
            await self._rooms_changed(joined=[], left=left)

    async def _rooms_changed(self, joined: list[str], left: list[str]) -> None:
        """Tell the adapter the rooms' new local sizes; returns once the rooms joined are
        live (see :meth:`Adapter.rooms_changed`)."""
        registry = self.registry
        counts = {r: registry.size(r) for r in (*joined, *left)}
        await self.services.adapter.rooms_changed(self.name, counts, joined, left)

    async def remove_socket(self, socket: Socket, reason: str) -> None:
        """Forget a disconnected socket: leave its rooms, run the ``disconnect`` handler."""
        self.sockets.pop(socket.sid, None)
        self.services.stats.sockets -= 1
        self.services.adapter.namespace_exited(self.name)
        await self.remove_from_rooms(socket, [r for r in socket.rooms if r != socket.sid])
        self.services.maybe_empty(self)
        handler = self.handler("disconnect")
        if handler is not None:
            try:
                result = handler(socket, reason)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("disconnect handler of %s failed", self.name)

    async def connect(self, conn: ClientLink, auth: dict[str, Any]) -> None:
        """Run middleware, then connect a new socket for ``conn`` (§Connection to a namespace).

        The caller counts the connect in ``connecting`` from the moment it resolved the name.
        """
        socket = Socket(self, conn, auth)
        try:
            for mw in self.middlewares:
                result = mw(socket, auth)
                if inspect.isawaitable(result):
                    await result
        except ConnectRefusedError as exc:
            self._refuse(conn, exc)
            return
        except Exception:
            log.exception("middleware of %s failed", self.name)
            self._refuse(conn, ConnectRefusedError("Internal server error"))
            return
        if conn.closed or self.name in conn.sockets:
            return
        # Namespace-wide emits must reach the socket as soon as it is told it is connected.
        await self.services.adapter.namespace_entered(self.name)
        if conn.closed or self.name in conn.sockets:
            self.services.adapter.namespace_exited(self.name)
            return
        socket.connected = True
        self.sockets[socket.sid] = socket
        conn.attach(socket)
        self.services.stats.sockets += 1
        conn.send_packet(sio.Packet(sio.PacketType.CONNECT, self.name, {"sid": socket.sid}))
        handler = self.handler("connect")
        if handler is None:
            return
        try:
            result = handler(socket, auth)
            if inspect.isawaitable(result):
                await result
        except ConnectRefusedError:
            socket.disconnect()
        except Exception:
            log.exception("connect handler of %s failed", self.name)

    def _refuse(self, conn: ClientLink, exc: ConnectRefusedError) -> None:
        body: dict[str, Any] = {"message": exc.message}
        if exc.data is not None:
            body["data"] = exc.data
        conn.send_packet(sio.Packet(sio.PacketType.CONNECT_ERROR, self.name, body))
