"""A socket: one client's connection to one namespace (socket.io's server-side ``Socket``).

It sees its namespace through :class:`SocketNamespace` and its connection through
:class:`ClientLink`, both protocols: the namespace module builds sockets, and this one needs
neither it nor the client module.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from roomcast import ids
from roomcast.cluster.routing import Target
from roomcast.config import LimitSettings
from roomcast.errors import AckTimeoutError, DisconnectedError
from roomcast.ids import new_sid, room_names
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

from .adapter import Adapter, Collector, Handshake, SocketInfo, Spawn
from .broadcast import BroadcastOperator
from .recovery import History, Membership, PersistedSession
from .sessions import RequestInfo

log = logging.getLogger("roomcast.node")

Handler = Callable[..., Any]


class SocketEvents(Protocol):
    """Told what happens to this node's sockets (the Admin UI's development mode). Every call
    is on the path it reports, so an implementation returns at once when nobody listens."""

    def socket_connected(self, socket: Socket) -> None: ...

    def socket_disconnected(self, socket: Socket, reason: str) -> None: ...

    def socket_updated(self, socket: Socket) -> None: ...

    def data_assigned(self, socket: Socket) -> None: ...

    def room_joined(self, socket: Socket, room: str) -> None: ...

    def room_left(self, socket: Socket, room: str) -> None: ...

    def event_received(self, socket: Socket, data: list[Any]) -> None: ...

    def event_sent(self, socket: Socket, data: list[Any]) -> None: ...


class NoSocketEvents:
    """Nobody is told: the node without the Admin UI."""

    def socket_connected(self, socket: Socket) -> None:
        pass

    def socket_disconnected(self, socket: Socket, reason: str) -> None:
        pass

    def socket_updated(self, socket: Socket) -> None:
        pass

    def data_assigned(self, socket: Socket) -> None:
        pass

    def room_joined(self, socket: Socket, room: str) -> None:
        pass

    def room_left(self, socket: Socket, room: str) -> None:
        pass

    def event_received(self, socket: Socket, data: list[Any]) -> None:
        pass

    def event_sent(self, socket: Socket, data: list[Any]) -> None:
        pass


class SocketServices(Protocol):
    """What a socket uses of its node, through its namespace."""

    @property
    def adapter(self) -> Adapter: ...

    @property
    def events(self) -> SocketEvents: ...

    @property
    def limits(self) -> LimitSettings: ...

    @property
    def spawn(self) -> Spawn: ...


class SocketNamespace(Protocol):
    """A socket's namespace, as the socket sees it."""

    @property
    def name(self) -> ids.Namespace: ...

    @property
    def services(self) -> SocketServices: ...

    @property
    def history(self) -> History | None: ...

    def handler(self, event: str) -> Handler | None: ...

    def next_ack_id(self) -> int: ...

    def operator(self) -> BroadcastOperator: ...

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator: ...

    async def add_to_rooms(self, socket: Socket, rooms: list[str]) -> None: ...

    async def remove_from_rooms(self, socket: Socket, rooms: list[str]) -> None: ...

    def socket_closed(self, socket: Socket, reason: str) -> None: ...


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
        """Send a pre-built packet (a broadcast's delivery); returns whether it was queued."""
        ...

    def send(self, frames: Frames, volatile: bool = False) -> bool:
        """Send a pre-built packet to this client only; returns whether it was queued."""
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


def _ack_args(result: Any) -> list[Any]:
    if result is None:
        return []
    if isinstance(result, tuple):
        return list(result)
    return [result]


class SocketData(dict[str, Any]):
    """``socket.data``: a dict that tells its socket's observers when a key is assigned, once
    the socket is connected (the Admin UI's ``socket_updated``, which the original sends from
    a proxy of ``socket.data``). Like that proxy's ``set`` trap, it sees assignments to its
    keys (``data[k] = v``, ``update``, ``setdefault`` of a missing key, ``|=``), not deletions;
    and a change inside a value (``data["user"]["name"] = ...``) has no hook in Python:
    assigning the key again reports it. A copy or a pickle of it is a plain dict."""

    __slots__ = ("_socket",)

    _socket: Socket | None

    def _assigned(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None and socket.connected:
            socket.namespace.services.events.data_assigned(socket)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._assigned()

    def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update``, reported once."""
        super().update(*args, **kwargs)
        self._assigned()

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``dict.setdefault``, reported when it adds ``key``."""
        if key in self:
            return self[key]
        self[key] = default
        return default

    def __ior__(self, other: Any) -> SocketData:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


def socket_data(socket: Socket, data: Any = ()) -> SocketData:
    """A :class:`SocketData` of ``socket`` holding ``data``'s items."""
    out = SocketData(data)
    out._socket = socket
    return out


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
        "last_offset",
        "membership",
        "namespace",
        "pid",
        "recovered",
        "rooms",
        "sid",
    )

    def __init__(
        self,
        namespace: SocketNamespace,
        conn: ClientLink,
        auth: dict[str, Any],
        restored: PersistedSession | None = None,
    ) -> None:
        self.namespace = namespace
        self.conn = conn
        self._auth = auth
        self._time = time.time()
        self._handshake: Handshake | None = None  # built when first asked for
        self.connected = False
        self._pending = 0  # async handlers of this socket still running
        #: The number of the last packet with an offset sent to this socket (0: none).
        self.last_offset = 0
        if restored is None:
            self.sid: str = new_sid(namespace.services.adapter.tag)
            #: Free-form application data (socket.io's ``socket.data``); shown by fetch_sockets,
            #: and its keys' assignments are reported to the Admin UI (:class:`SocketData`).
            self.data: dict[str, Any] = socket_data(self)
            #: The rooms this socket is in, its own sid room included.
            self.rooms: set[str] = {self.sid}
            #: The private session id its client recovers it with (None: recovery is off).
            self.pid: str | None = None
            #: When it joined and left its rooms (None: recovery is off).
            self.membership: Membership | None = None
            #: Whether this socket is a session recovered after its connection was lost
            #: (socket.io's ``socket.recovered``): same sid, rooms and data, every missed
            #: packet replayed.
            self.recovered = False
        else:
            self.sid = restored.sid
            self.data = socket_data(self, restored.data)
            self.rooms = set(restored.rooms)
            self.pid = restored.pid
            self.membership = restored.membership
            self.recovered = True

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
        self.namespace.services.events.event_sent(self, [event, *args])
        ack_id = None
        if callback is not None:
            ack_id = self.namespace.next_ack_id()
        enc = sio.encode_event(self.namespace.name, event, args, ack_id)
        if ack_id is None and self.namespace.history is not None:
            # With recovery on, it is a broadcast to this socket's room (as in socket.io): it
            # gets an offset, is kept, and is replayed if the client misses it; and the client
            # never mistakes a string argument of it for an offset.
            rooms = frozenset((self.sid,))
            target = Target(self.namespace.name, rooms, volatile=volatile, local=True)
            self.namespace.services.adapter.broadcast(target, Frames(enc))
            return
        if self.conn.send(Frames(enc), volatile) and ack_id is not None and callback is not None:
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
        self.conn.send(Frames(sio.encode_event(name, event, args, ack_id)))
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
            self.conn.transport_name,
        )

    # -- input from the connection ------------------------------------------------------------

    def _on_event(self, data: list[Any], ack_id: int | None) -> None:
        ns = self.namespace
        ns.services.events.event_received(self, data)
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
        ns.socket_closed(self, reason)
