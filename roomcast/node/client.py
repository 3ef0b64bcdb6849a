"""The Socket.IO side of one connection (socket.io's ``Client``).

A :class:`Client` sits on one Engine.IO :class:`~roomcast.node.engine.Connection`. The
protocol's rules for the connection (namespace states, the connect deadline, the namespace
limit, the pending-ack table) live in its pure
:class:`~roomcast.protocol.sio_session.SocketIOSession`; the client runs what the session's
events ask for (a namespace's middleware, a socket's handlers) and keeps the connected sockets.
Its sockets write through it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from roomcast import ids
from roomcast.errors import RemoteProtocolError
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames
from roomcast.protocol.sio_session import (
    AckReceived,
    ConnectRequested,
    ConnectTimedOut,
    DisconnectReceived,
    EventReceived,
    LatePacket,
    NamespaceState,
    SessionLimits,
    SocketIOEvent,
    SocketIOSession,
)

from .adapter import Spawn
from .engine import Connection
from .namespaces import Namespaces
from .sessions import RequestInfo
from .sio_socket import AckWaiter, Socket, resolve_ack
from .sockets import Namespace
from .stats import NodeStats

log = logging.getLogger("roomcast.node")


class Writer(Protocol):
    """Writes a pre-built packet; returns whether it was queued."""

    def __call__(self, frames: Frames, volatile: bool = False) -> bool: ...


@dataclass(frozen=True, slots=True)
class ClientServices:
    """What every client of a node uses (handed to it: a client never reaches for a server)."""

    namespaces: Namespaces
    limits: SessionLimits
    stats: NodeStats
    spawn: Spawn


class Client:
    """One connection's Socket.IO side: the pure session, and the sockets it connected."""

    __slots__ = ("_services", "_timer", "conn", "session", "sockets", "write")

    def __init__(self, conn: Connection, services: ClientServices) -> None:
        self.conn = conn
        #: Send a pre-built packet; returns whether it was queued (the connection's own
        #: method, bound once: it is called for every delivery).
        self.write: Writer = conn.write
        self._services = services
        loop = asyncio.get_running_loop()
        self.session: SocketIOSession[AckWaiter] = SocketIOSession(services.limits, loop.time())
        self.sockets: dict[str, Socket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._arm_timer(loop)

    # -- what its sockets use -----------------------------------------------------------------

    @property
    def info(self) -> RequestInfo:
        """What ``socket.handshake`` shows of the request that opened the connection."""
        return self.conn.info

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self.conn.closed

    @property
    def transport_name(self) -> str:
        """``"polling"`` or ``"websocket"``."""
        return self.conn.transport_name

    def send(self, frames: Frames, volatile: bool = False) -> bool:
        """Send a pre-built packet to this client only (not a broadcast's delivery); returns
        whether it was queued."""
        if self.conn.write(frames, volatile):
            self._services.stats.direct_out += 1
            return True
        return False

    def send_packet(self, packet: sio.Packet) -> None:
        """Encode and send one Socket.IO packet to this client only."""
        self.send(Frames(sio.encode(packet)))

    def close(
        self, reason: str, detail: str = "", *, flush: bool = False, code: int | None = None
    ) -> None:
        """Close the whole connection with a named reason (see :meth:`Connection.close`)."""
        self.conn.close(reason, detail, flush=flush, code=code)

    def attach(self, socket: Socket) -> None:
        """``socket`` is connected: packets for its namespace go to it from now on."""
        name = socket.namespace.name
        self.session.connected(name)
        self.sockets[name] = socket
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def detach(self, namespace: str) -> list[AckWaiter]:
        """The socket of ``namespace`` is gone; returns the waiters of its pending acks."""
        self.sockets.pop(namespace, None)
        return self.session.disconnected(namespace)

    def expect_ack(self, namespace: str, ack_id: int, waiter: AckWaiter) -> None:
        """Route the client's ack ``ack_id`` on ``namespace`` to ``waiter``."""
        self.session.expect_ack(namespace, ack_id, waiter)

    def forget_ack(self, namespace: str, ack_id: int, waiter: AckWaiter) -> None:
        """Stop waiting for ``ack_id`` with ``waiter``."""
        self.session.forget_ack(namespace, ack_id, waiter)

    # -- what the connection tells it ---------------------------------------------------------

    def on_message(self, data: str | bytes) -> None:
        """An Engine.IO MESSAGE: feed it to the session and act on what it means."""
        self._services.stats.messages_in += 1
        try:
            for event in self.session.receive(data):
                self._handle(event)
        except RemoteProtocolError as exc:
            self.close(exc.reason, exc.detail)
        except Exception:
            # A peer's garbage must never kill the read loop: whatever it provoked, only its
            # own session ends.
            log.exception("packet from %s could not be handled", self.conn.sid)
            self.close(reasons.PARSE_ERROR, "unhandled packet")

    def on_upgrade(self) -> None:
        """The connection is a WebSocket now: its sockets' observers are told."""
        for socket in self.sockets.values():
            socket.namespace.services.events.socket_updated(socket)

    def on_close(self, reason: str) -> None:
        """The connection ended: every socket on it disconnects with ``reason``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for socket in list(self.sockets.values()):
            socket._on_close(reason)
        self.sockets.clear()

    def _handle(self, event: SocketIOEvent) -> None:
        if isinstance(event, EventReceived):
            self.sockets[event.namespace]._on_event(event.args, event.ack_id)
        elif isinstance(event, AckReceived):
            resolve_ack(event.waiter, event.args)
        elif isinstance(event, ConnectRequested):
            self._connect(event.namespace, event.auth)
        elif isinstance(event, DisconnectReceived):
            socket = self.sockets.get(event.namespace)
            if socket is not None:
                socket._on_close(reasons.CLIENT_NAMESPACE_DISCONNECT)
        elif isinstance(event, LatePacket):
            self._services.stats.late_packets += 1
        elif isinstance(event, ConnectTimedOut):
            self.close(reasons.CONNECT_TIMEOUT)

    def _connect(self, name: str, auth: Any) -> None:
        services = self._services
        ns = services.namespaces.resolve(name)
        if ns is None:
            self.session.refused(name)
            self.send_packet(
                sio.Packet(
                    sio.PacketType.CONNECT_ERROR,
                    ids.Namespace(name),
                    {"message": "Invalid namespace"},
                )
            )
            return
        ns.connecting += 1  # now, so that the namespace cannot be removed before it starts
        services.spawn(self._connect_socket(ns, auth))

    async def _connect_socket(self, ns: Namespace, auth: Any) -> None:
        try:
            await ns.connect(self, auth)
        finally:
            if self.session.state(ns.name) is NamespaceState.CONNECTING:
                self.session.refused(ns.name)  # refused by middleware, or the connection closed
            ns.connecting -= 1
            self._services.namespaces.maybe_empty(ns)

    def _arm_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = self.session.next_deadline
        if deadline is not None:
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        # A loop may run a timer a little before its time (uvloop rounds to milliseconds):
        # the session then still has its deadline, and the timer is armed again for it.
        self._timer = None
        if not self.conn.closed:
            loop = self.conn.sessions.loop
            for event in self.session.on_timer(loop.time()):
                self._handle(event)
            if not self.conn.closed:
                self._arm_timer(loop)
