"""Namespaces, sockets and broadcasts: the Socket.IO server API of an edge node.

The shapes follow socket.io's server API (``io.of(name)``, ``socket.join``, ``io.to(room).
except(room).emit``, ``emitWithAck``, ``fetchSockets``...), written in Python's spelling. Names
say how far a thing goes (STYLE.md #5): ``emit`` reaches the whole namespace in the cluster;
``.local`` restricts a broadcast to this node.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Container, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from roomcast import ids
from roomcast.cluster.routing import Target
from roomcast.config import LimitSettings
from roomcast.errors import (
    AckTimeoutError,
    ConnectRefusedError,
    DisconnectedError,
    RoomRefusedError,
)
from roomcast.ids import Room, new_sid, room_names
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

from .adapter import Adapter, Collector, Handshake, SocketInfo, Spawn
from .broadcast import BroadcastOperator, Broadcasts
from .rooms import RoomRegistry
from .sessions import RequestInfo
from .stats import NodeStats

log = logging.getLogger("roomcast.node")

Handler = Callable[..., Any]
Middleware = Callable[["Socket", Any], Any]
NamespaceMatcher = str | re.Pattern[str] | Callable[[str], bool]


#: What waits for a client's ack: an emit's callback, a broadcast's collector, or the future of
#: an ``emit_with_ack``.
AckWaiter = Callable[[list[Any]], None] | Collector | asyncio.Future[list[Any]]


def resolve_ack(waiter: AckWaiter, args: list[Any]) -> None:
    """Hand the client's ack ``args`` to ``waiter``."""
    if isinstance(waiter, Collector):
        waiter.ack(args)
    elif isinstance(waiter, asyncio.Future):
        if not waiter.done():
            waiter.set_result(args)
    else:
        try:
            waiter(args)
        except Exception:
            log.exception("ack callback failed")


class ClientLink(Protocol):
    """The connection a socket lives on, as the socket sees it (a
    :class:`~roomcast.node.client.Client`)."""

    @property
    def sockets(self) -> dict[str, Socket]:
        """The connection's sockets by namespace."""
        ...

    @property
    def info(self) -> RequestInfo:
        """What ``socket.handshake`` shows of the request that opened the connection."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        ...

    @property
    def transport_name(self) -> str:
        """``"polling"`` or ``"websocket"``."""
        ...

    def write(self, frames: Frames, volatile: bool = False) -> bool:
        """Send a pre-built packet; returns whether it was queued."""
        ...

    def send_packet(self, packet: sio.Packet) -> None:
        """Encode and send one packet."""
        ...

    def close(
        self, reason: str, detail: str = "", *, flush: bool = False, code: int | None = None
    ) -> None:
        """Close the whole connection with a named reason."""
        ...

    def attach(self, socket: Socket) -> None:
        """``socket`` is connected: packets for its namespace go to it from now on."""
        ...

    def detach(self, namespace: str) -> list[AckWaiter]:
        """The socket of ``namespace`` is gone; returns the waiters of its pending acks."""
        ...

    def expect_ack(self, namespace: str, ack_id: int, waiter: AckWaiter) -> None:
        """Route the client's ack ``ack_id`` on ``namespace`` to ``waiter``."""
        ...

    def forget_ack(self, namespace: str, ack_id: int, waiter: AckWaiter) -> None:
        """Stop waiting for ``ack_id`` with ``waiter``."""
        ...


@dataclass(frozen=True, slots=True)
class NamespaceServices:
    """What a namespace uses of its node: handed to it, so it never reaches for a server."""

    adapter: Adapter
    limits: LimitSettings
    stats: NodeStats
    spawn: Spawn
    #: Told when a namespace may have become empty (a dynamic child is then removed).
    maybe_empty: Callable[[Namespace], None]


def _ack_args(result: Any) -> list[Any]:
    if result is None:
        return []
    if isinstance(result, tuple):
        return list(result)
    return [result]


class Socket:
    """One client's connection to one namespace."""

    __slots__ = (
        "__weakref__",
        "_auth",
        "_handshake",
        "_pending",
        "_time",
        "conn",
        "connected",
        "data",
        "namespace",
        "rooms",
        "sid",
    )

    def __init__(self, namespace: Namespace, conn: ClientLink, auth: dict[str, Any]) -> None:
        self.namespace = namespace
        self.conn = conn
        self.sid = new_sid(namespace.services.adapter.tag)
        self._auth = auth
        self._time = time.time()
        self._handshake: Handshake | None = None  # built when first asked for
        #: Free-form application data (socket.io's ``socket.data``); shown by fetch_sockets.
        self.data: dict[str, Any] = {}
        #: The rooms this socket is in, its own sid room included.
        self.rooms: set[str] = {self.sid}
        self.connected = False
        self._pending = 0  # async handlers of this socket still running

    def __repr__(self) -> str:
        return f"<Socket {self.namespace.name}#{self.sid}>"

    @property
    def id(self) -> str:
        """The socket id (a sid, distinct from the Engine.IO session id)."""
        return self.sid

    @property
    def handshake(self) -> Handshake:
        """What the client presented when this socket connected (socket.io's
        ``socket.handshake``): its request's headers, query, address and URL, its ``auth``."""
        handshake = self._handshake
        if handshake is None:
            info = self.conn.info
            handshake = self._handshake = Handshake(
                headers=info.headers(),
                query=info.query(),
                auth=self._auth,
                address=info.address,
                time=self._time,
                url=info.url,
                secure=info.secure,
            )
        return handshake

    @handshake.setter
    def handshake(self, value: Handshake) -> None:
        self._handshake = value

    # -- emitting -----------------------------------------------------------------------------

    def write(self, frames: Frames, volatile: bool = False) -> bool:
        """Send a pre-built packet to this client; returns whether it was queued (a socket
        that is disconnected takes nothing)."""
        return self.connected and self.conn.write(frames, volatile)

    def expect_ack(self, ack_id: int, collector: Collector) -> None:
        """Route the ack ``ack_id`` of a broadcast to its collector."""
        self.conn.expect_ack(self.namespace.name, ack_id, collector)

    def forget_ack(self, ack_id: int, collector: Collector) -> None:
        """Stop routing ``ack_id`` to ``collector``."""
        self.conn.forget_ack(self.namespace.name, ack_id, collector)

    def emit(
        self,
        event: str,
        *args: Any,
        callback: Callable[..., Any] | None = None,
        volatile: bool = False,
    ) -> None:
        """Send ``event`` to this client; ``callback(*ack_args)`` runs when it acknowledges."""
        if not self.connected:
            return
        ack_id = None
        if callback is not None:
            ack_id = self.namespace.next_ack_id()
        enc = sio.encode_event(self.namespace.name, event, args, ack_id)
        if self.conn.write(Frames(enc), volatile) and ack_id is not None and callback is not None:
            self.conn.expect_ack(self.namespace.name, ack_id, lambda a: callback(*a))

    async def emit_with_ack(self, event: str, *args: Any, timeout: float | None = None) -> Any:
        """Send ``event`` and wait for the client's ack; returns its first argument.

        Raises :class:`AckTimeoutError` after ``timeout`` seconds, :class:`DisconnectedError`
        when the socket disconnects first.
        """
        if not self.connected:
            raise DisconnectedError(self.sid)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        ack_id = self.namespace.next_ack_id()
        name = self.namespace.name
        self.conn.expect_ack(name, ack_id, future)  # resolved by the ack, failed by _on_close
        self.conn.write(Frames(sio.encode_event(name, event, args, ack_id)))
        try:
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.conn.forget_ack(name, ack_id, future)
            raise AckTimeoutError(f"no ack for {event!r} from {self.sid}") from None
        return result[0] if result else None

    def send(self, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        """Emit a ``message`` event (socket.io's ``socket.send``)."""
        self.emit("message", *args, callback=callback)

    # -- rooms --------------------------------------------------------------------------------

    async def join(self, *rooms: str | Iterable[str]) -> None:
        """Join one or more rooms; returns once messages to them will reach this socket."""
        await self.namespace.add_to_rooms(self, room_names(rooms))

    async def leave(self, *rooms: str | Iterable[str]) -> None:
        """Leave one or more rooms (leaving the sid room is refused silently, as in socket.io)."""
        await self.namespace.remove_from_rooms(self, room_names(rooms))

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Broadcast to ``rooms``, excluding this socket (socket.io's ``socket.to``)."""
        return self.namespace.to(*rooms).except_sockets(self.sid)

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Broadcast to the whole namespace except ``rooms`` and this socket."""
        return self.broadcast.except_(*rooms)

    @property
    def broadcast(self) -> BroadcastOperator:
        """Broadcast to every socket of the namespace but this one."""
        return self.namespace.operator().except_sockets(self.sid)

    # -- lifecycle ----------------------------------------------------------------------------

    def disconnect(self, close: bool = False) -> None:
        """Disconnect from this namespace (``close=True`` closes the whole connection)."""
        if close:
            # As socket.io's Client._disconnect: every namespace of the connection is told
            # (DISCONNECT, "server namespace disconnect"), then the transport closes.
            for socket in list(self.conn.sockets.values()):
                socket.disconnect()
            self.conn.close(reasons.FORCED_SERVER_CLOSE, flush=True)
            return
        if self.connected:
            self.conn.send_packet(sio.Packet(sio.PacketType.DISCONNECT, self.namespace.name))
            self._on_close(reasons.SERVER_NAMESPACE_DISCONNECT)

    def info(self) -> SocketInfo:
        """A snapshot of this socket."""
        return SocketInfo(
            self.sid,
            self.namespace.name,
            frozenset(self.rooms),
            self.data,
            self.handshake,
            self.namespace.services.adapter.node_id,
        )

    # -- input from the connection ------------------------------------------------------------

    def _on_event(self, data: list[Any], ack_id: int | None) -> None:
        ns = self.namespace
        event = data[0]
        handler = ns.handler(event)
        if handler is None:
            catch_all = ns.handler("*")
            if catch_all is None:
                return
            args: list[Any] = data
            handler = catch_all
        else:
            args = data[1:]
        try:
            result = handler(self, *args)
        except Exception:
            log.exception("handler for %r in %s failed", event, ns.name)
            return
        if inspect.isawaitable(result):
            limit = ns.services.limits.max_pending_handlers
            if self._pending >= limit:
                # A client may not pile up work faster than its handlers finish.
                if inspect.iscoroutine(result):
                    result.close()
                self.conn.close(reasons.TOO_MANY_PENDING_HANDLERS, f"limit {limit}")
                return
            self._pending += 1
            ns.services.spawn(self._finish_event(result, ack_id, event))
        elif ack_id is not None:
            self._ack(ack_id, result)

    async def _finish_event(self, result: Awaitable[Any], ack_id: int | None, event: Any) -> None:
        try:
            value = await result
        except Exception:
            log.exception("handler for %r in %s failed", event, self.namespace.name)
            return
        finally:
            self._pending -= 1
        if ack_id is not None:
            self._ack(ack_id, value)

    def _ack(self, ack_id: int, result: Any) -> None:
        if self.connected:
            self.conn.send_packet(
                sio.Packet(sio.PacketType.ACK, self.namespace.name, _ack_args(result), ack_id)
            )

    def _on_close(self, reason: str) -> None:
        if not self.connected:
            return
        self.connected = False
        ns = self.namespace
        for waiter in self.conn.detach(ns.name):
            if isinstance(waiter, Collector):
                waiter.forget()
            elif isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_exception(DisconnectedError(self.sid))
        ns.services.spawn(ns.remove_socket(self, reason))


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
