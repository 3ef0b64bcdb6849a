"""The Socket.IO side of one connection (socket.io's ``Client``).

A :class:`Client` sits on one Engine.IO :class:`~roomcast.node.engine.Connection`: it decodes
the connection's messages as Socket.IO packets, keeps the connection's sockets by namespace and
the namespace connects under way, and closes a connection that connects to no namespace within
``engineio.connect_timeout_ms``. Its sockets write through it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from roomcast.config import LimitSettings
from roomcast.errors import RemoteProtocolError
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

from .adapter import Spawn
from .engine import Connection, RequestInfo
from .namespaces import Namespaces
from .sockets import Namespace, Socket
from .stats import NodeStats

log = logging.getLogger("roomcast.node")


@dataclass(frozen=True, slots=True)
class ClientServices:
    """What every client of a node uses (handed to it: a client never reaches for a server)."""

    namespaces: Namespaces
    limits: LimitSettings
    decoder_limits: sio.DecoderLimits
    stats: NodeStats
    spawn: Spawn
    #: Seconds a connection may stay connected to no namespace.
    connect_timeout: float


class Client:
    """One connection's Socket.IO state: its decoder, sockets, connects under way."""

    __slots__ = ("_connect_timer", "_services", "conn", "connecting", "decoder", "sockets")

    def __init__(self, conn: Connection, services: ClientServices) -> None:
        self.conn = conn
        self._services = services
        self.decoder = sio.Decoder(services.decoder_limits)
        self.sockets: dict[str, Socket] = {}
        #: Namespaces whose connect (middleware) is under way: a tuple, as a connection rarely
        #: has one for long, and the empty tuple costs it nothing.
        self.connecting: tuple[str, ...] = ()
        loop = asyncio.get_running_loop()
        self._connect_timer: asyncio.TimerHandle | None = loop.call_later(
            services.connect_timeout, self._connect_timeout
        )

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

    def write(self, frames: Frames, volatile: bool = False) -> bool:
        """Send a pre-built packet; returns whether it was queued."""
        return self.conn.write(frames, volatile)

    def send_packet(self, packet: sio.Packet) -> None:
        """Encode and send one Socket.IO packet to this client only."""
        self.conn.write(Frames(sio.encode(packet)))

    def close(
        self, reason: str, detail: str = "", *, flush: bool = False, code: int | None = None
    ) -> None:
        """Close the whole connection with a named reason (see :meth:`Connection.close`)."""
        self.conn.close(reason, detail, flush=flush, code=code)

    def attach(self, socket: Socket) -> None:
        """``socket`` is connected: packets for its namespace go to it from now on."""
        self.sockets[socket.namespace.name] = socket
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None

    # -- what the connection tells it ---------------------------------------------------------

    def on_message(self, data: str | bytes) -> None:
        """An Engine.IO MESSAGE: decode it as Socket.IO and dispatch it."""
        self._services.stats.messages_in += 1
        try:
            packet = self.decoder.feed(data)
            if packet is not None:
                self.dispatch(packet)
        except RemoteProtocolError as exc:
            self.close(exc.reason, exc.detail)
        except Exception:
            # A peer's garbage must never kill the read loop: whatever it provoked, only its
            # own session ends.
            log.exception("packet from %s could not be handled", self.conn.sid)
            self.close(reasons.PARSE_ERROR, "unhandled packet")

    def on_close(self, reason: str) -> None:
        """The connection ended: every socket on it disconnects with ``reason``."""
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        for socket in list(self.sockets.values()):
            socket._on_close(reason)
        self.sockets.clear()

    def dispatch(self, packet: sio.Packet) -> None:
        """Route one decoded Socket.IO packet."""
        kind = packet.type
        if kind is sio.PacketType.EVENT or kind is sio.PacketType.BINARY_EVENT:
            socket = self.sockets.get(packet.namespace)
            if socket is not None:
                socket._on_event(packet.data, packet.id)
        elif kind is sio.PacketType.ACK or kind is sio.PacketType.BINARY_ACK:
            socket = self.sockets.get(packet.namespace)
            if socket is not None and packet.id is not None:
                socket._on_ack(packet.id, packet.data)
        elif kind is sio.PacketType.CONNECT:
            self._connect(packet)
        elif kind is sio.PacketType.DISCONNECT:
            socket = self.sockets.get(packet.namespace)
            if socket is not None:
                socket._on_close(reasons.CLIENT_NAMESPACE_DISCONNECT)
        else:
            self.close(reasons.PARSE_ERROR, f"client sent {kind.name}")

    def _connect(self, packet: sio.Packet) -> None:
        name = packet.namespace
        if name in self.sockets or name in self.connecting:
            return
        # Connects still under way count: a burst of CONNECTs must not get past the limit.
        services = self._services
        if (
            len(self.sockets) + len(self.connecting)
            >= services.limits.max_namespaces_per_connection
        ):
            self.close(reasons.TOO_MANY_NAMESPACES)
            return
        ns = services.namespaces.resolve(name)
        if ns is None:
            self.send_packet(
                sio.Packet(sio.PacketType.CONNECT_ERROR, name, {"message": "Invalid namespace"})
            )
            return
        self.connecting += (name,)
        ns.connecting += 1  # now, so that the namespace cannot be removed before it starts
        services.spawn(self._connect_socket(ns, packet.data or {}))

    async def _connect_socket(self, ns: Namespace, auth: Any) -> None:
        try:
            await ns.connect(self, auth)
        finally:
            self.connecting = tuple(n for n in self.connecting if n != ns.name)
            ns.connecting -= 1
            self._services.namespaces.maybe_empty(ns)

    def _connect_timeout(self) -> None:
        self._connect_timer = None
        if not self.sockets and not self.conn.closed:
            self.close(reasons.CONNECT_TIMEOUT)
