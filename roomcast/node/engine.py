"""Engine.IO transports: a thin pump around :class:`EngineSession`.

:class:`Connection` is one client (one Engine.IO session): it owns the session state machine,
its heartbeat timer, its WebSocket and its long-polling side (:mod:`roomcast.node.polling`),
and the client its messages go to. The polling side, an upgrading WebSocket
(:mod:`roomcast.node.upgrade`) and the WebSocket links of :mod:`roomcast.node.websocket` only
move bytes between the network and the session; every protocol decision is made by
:mod:`roomcast.protocol.engineio`.

A session keeps nothing of the HTTP request that opened it but a :class:`RequestInfo` (what
``socket.handshake`` shows), so that an idle client costs the node little memory.

Writes to a WebSocket go straight to the TCP transport as pre-built frames
(:class:`~roomcast.protocol.frames.Frames`): a broadcast costs one ``transport.write`` per
recipient and no per-recipient encoding. The transport's write buffer is the per-socket send
buffer: past ``limits.send_buffer_bytes`` the session closes with ``send buffer full``, and a
volatile packet is dropped as soon as the buffer is not empty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from roomcast.errors import RemoteProtocolError
from roomcast.protocol import engineio as eio
from roomcast.protocol import reasons
from roomcast.protocol.frames import Frames, ws_frame, ws_text

from .polling import Polling
from .sessions import RequestInfo, Sessions
from .stats import NodeStats
from .upgrade import Upgrade, outbox_as_frames
from .websocket import WebSocketLink

log = logging.getLogger("roomcast.node")

#: The close message of a WebSocket that names a session it cannot upgrade.
BAD_SESSION = "bad session"


class EngineClient(Protocol):
    """What a connection hands its messages to: the Socket.IO layer
    (:class:`~roomcast.node.client.Client`), or anything that speaks over raw Engine.IO."""

    def on_message(self, data: str | bytes) -> None:
        """An Engine.IO MESSAGE arrived."""
        ...

    def on_close(self, reason: str) -> None:
        """The connection ended with ``reason`` (called once)."""
        ...

    def on_upgrade(self) -> None:
        """The connection moved from long-polling to its WebSocket."""
        ...


class Connection:
    """One client connection: an Engine.IO session and the Socket.IO sockets multiplexed on it."""

    __slots__ = (
        "_out",
        "_timer",
        "_upgrade",
        "_ws",
        "_ws_transport",
        "client",
        "info",
        "polling",
        "session",
        "sessions",
    )

    def __init__(
        self,
        sessions: Sessions[Connection],
        session: eio.EngineSession,
        info: RequestInfo,
        new_client: Callable[[Connection], EngineClient],
    ) -> None:
        self.sessions = sessions
        self.session = session
        #: What ``socket.handshake`` shows of the request that opened the session.
        self.info = info
        self._ws: WebSocketLink | None = None
        self._ws_transport: asyncio.Transport | None = None
        self._out: list[bytes] | None = None  # WebSocket frames to write at the end of the pass
        self._upgrade: Upgrade | None = None  # the one WebSocket upgrading us
        #: The long-polling transport (the pending GET, the POSTs).
        self.polling = Polling(self)
        self._timer: asyncio.TimerHandle | None = None
        #: Where the session's messages go (the Socket.IO layer).
        self.client = new_client(self)

    @property
    def sid(self) -> str:
        """The Engine.IO session id."""
        return self.session.sid

    @property
    def closed(self) -> bool:
        """Whether the session has ended."""
        return self.session.closed

    @property
    def transport_name(self) -> str:
        """``"polling"`` or ``"websocket"``."""
        return self.session.transport.value

    @property
    def stats(self) -> NodeStats:
        """The node's counters."""
        return self.sessions.stats

    # -- writing ------------------------------------------------------------------------------

    def write(self, frames: Frames, volatile: bool = False) -> bool:
        """Send one pre-built packet; returns whether it was queued.

        WebSocket frames queued during one event-loop pass are written together at its end
        (one ``transport.write`` per connection per pass instead of one per message). A
        volatile packet is dropped when the transport is not draining (its kernel-side buffer
        is backed up into our write buffer).
        """
        transport = self._ws_transport
        if transport is not None:
            if volatile and transport.get_write_buffer_size():
                self.sessions.stats.volatile_dropped += 1
                return False
            self._queue_ws(frames.ws)
            return True
        if self.session.closed:
            return False
        if volatile and (self.polling.waiter is None or self.session.upgrading):
            self.sessions.stats.volatile_dropped += 1
            return False
        return self.polling.buffer(frames.poll)

    def send_engine(self, packet: eio.Packet) -> None:
        """Send one Engine.IO packet (a PING, or a raw MESSAGE) on the current transport."""
        if self._ws_transport is not None:
            if isinstance(packet.data, bytes):
                self._queue_ws(ws_frame(packet.data, 0x2))
            else:
                self._queue_ws(ws_text(eio.encode_text(packet)))
        elif not self.session.closed:
            self.polling.buffer((eio.encode_text(packet),))

    def _queue_ws(self, data: bytes) -> None:
        """Queue WebSocket frames for the end of this loop pass (see :meth:`flush`)."""
        out = self._out
        if out is None:
            self._out = [data]
            self.sessions.schedule_flush(self)
        else:
            out.append(data)

    def flush(self) -> None:
        """Write the WebSocket frames queued in this loop pass, enforcing the send buffer."""
        out = self._out
        if out is None:
            return
        self._out = None
        data = out[0] if len(out) == 1 else b"".join(out)
        transport = self._ws_transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.sessions.send_buffer_bytes:
            self.close(reasons.SEND_BUFFER_FULL)  # the client stopped reading
            return
        assert self._ws is not None
        self._ws.write(data)
        self.sessions.stats.ws_bytes_out += len(data)

    # -- session events -----------------------------------------------------------------------

    def start_timer(self) -> None:
        """(Re)arm the heartbeat timer at the session's next deadline."""
        if self._timer is not None:
            self._timer.cancel()
        if not self.session.closed:
            loop = self.sessions.loop
            self._timer = loop.call_at(self.session.next_deadline, self._on_timer)

    def catch_up(self) -> None:
        """Run the heartbeat now if its deadline has passed (the loop may be late with the
        timer; a request must not find alive a session whose ping timed out)."""
        if not self.session.closed and self.sessions.loop.time() >= self.session.next_deadline:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._on_timer()

    def _on_timer(self) -> None:
        self._timer = None
        self.handle(self.session.on_timer(self.sessions.loop.time()))
        self.start_timer()

    def handle(self, events: Iterable[eio.EngineEvent]) -> None:
        """Act on what the session state machine decided."""
        # A polling body that ends with CLOSE ("41" then "1") comes in already closed: its
        # messages are still handled and its SessionClosed must still run. Otherwise, stop
        # as soon as something we did closed the session.
        closed_by_peer = self.session.closed
        for event in events:
            if isinstance(event, eio.MessageReceived):
                self.client.on_message(event.data)
            elif isinstance(event, eio.SendPacket):
                self.send_engine(event.packet)
            elif isinstance(event, eio.SessionClosed):
                self._finish_close(event)
                return
            if self.session.closed and not closed_by_peer:
                return

    def receive(self, packet: eio.Packet) -> None:
        """Feed one packet from the current transport (errors close this session only)."""
        try:
            events = self.session.receive(packet, self.sessions.loop.time())
        except RemoteProtocolError as exc:
            self.close(exc.reason, exc.detail)
            return
        if packet.type is eio.PacketType.PONG:
            self.start_timer()
        self.handle(events)

    # -- closing ------------------------------------------------------------------------------

    def close(
        self, reason: str, detail: str = "", *, flush: bool = False, code: int | None = None
    ) -> None:
        """Close the whole connection from the server side with a named reason.

        ``flush=True`` is a deliberate close: what was already queued still reaches the client
        before the close (a polling client collects it, then CLOSE, with its next GET).
        ``code`` is the close code of a WebSocket frame error (its close frame then carries the
        code alone).
        """
        if self.session.closed:
            return
        if detail:
            log.info("closing session %s: %s (%s)", self.sid, reason, detail)
        else:
            log.debug("closing session %s: %s", self.sid, reason)
        self._finish_close(self.session.close(reason, flush=flush), code)

    def _finish_close(self, event: eio.SessionClosed, code: int | None = None) -> None:
        sessions = self.sessions
        sessions.stats.closed_by_reason[event.reason] += 1
        sessions.live.pop(self.sid, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if event.linger:
            sessions.linger(self)
        self.polling.wake(event.notify_poll)
        upgrade = self._upgrade
        if upgrade is not None:
            self._upgrade = None
            upgrade.end(event.reason)
        ws = self._ws
        if ws is not None:
            if event.reason == reasons.SEND_BUFFER_FULL:
                # The peer is not reading: a close frame would never get out. Drop the
                # connection at once.
                self._out = None
                ws.abort()
            else:
                self.flush()  # what was sent before the close goes out before the close frame
                ws.close(event.reason, code)
            self._ws = None
        self._ws_transport = None
        self.client.on_close(event.reason)

    def linger(self) -> None:
        """Keep this closed session's sid known for a while (see :meth:`Sessions.linger`)."""
        self.sessions.linger(self)

    # -- WebSocket (the links of roomcast.node.websocket call these) ---------------------------

    def can_upgrade(self) -> bool:
        """Whether a WebSocket presenting this session's sid may start an upgrade."""
        return self.session.can_upgrade()

    def attach_websocket(self, link: WebSocketLink) -> None:
        """``link`` carries this session from its start (a WebSocket handshake)."""
        self._ws = link
        self._ws_transport = link.transport
        link.bind(self)

    async def upgrade(self, link: WebSocketLink, transport: asyncio.Transport) -> None:
        """``link`` (over ``transport``) offers to take this polling session over (§Upgrade):
        it has ``engineio.upgrade_timeout_ms`` from now to send its probe and the UPGRADE
        packet. The link reads nothing before this."""
        assert transport is link.transport
        if not self.session.offer_upgrade():
            # The session closed, or another WebSocket started upgrading it, since this one's
            # handshake was answered: refused like an unknown sid (§Transports, WebSocket).
            link.close(BAD_SESSION)
            return
        self._upgrade = Upgrade(self, link)
        link.bind(self)

    def ws_message(self, link: WebSocketLink, data: str | bytes) -> None:
        """A message arrived on ``link``: the session's WebSocket or the one upgrading it.
        Messages of a link the session no longer uses (it closed) are ignored."""
        if link is not self._ws:
            upgrade = self._upgrade
            if upgrade is not None and link is upgrade.link:
                upgrade.probe(data)
            return
        if isinstance(data, str):
            if data[:1] == "4" and self.session.state is eio.EngineState.OPEN:
                # The hot path: a MESSAGE on an open session changes no Engine.IO state, so it
                # goes straight to Socket.IO.
                self.client.on_message(data[1:])
                return
            try:
                packet = eio.decode_text(data)
            except RemoteProtocolError as exc:
                self.close(exc.reason, exc.detail)
                return
            self.receive(packet)
        else:
            self.receive(eio.decode_binary_frame(data))

    def ws_ended(
        self, link: WebSocketLink, reason: str = reasons.TRANSPORT_CLOSE, code: int | None = None
    ) -> None:
        """``link`` ended without the session closing it: the client closed it, the TCP
        connection was lost, or a frame broke the protocol (``reason`` and its close ``code``).
        The session ends with it; an upgrading link only fails its upgrade."""
        if link is self._ws:
            self.close(reason, code=code)
        elif self._upgrade is not None and link is self._upgrade.link:
            self._upgrade.fail(reason, code)

    def upgraded(self, upgrade: Upgrade) -> None:
        """``upgrade`` completed: its WebSocket carries the session from now on, starting with
        what the polling outbox still held."""
        self._upgrade = None
        self._ws = link = upgrade.link
        self._ws_transport = link.transport
        stats = self.sessions.stats
        stats.upgrades += 1
        self.client.on_upgrade()
        outbox = self.session.take_outbox()
        if outbox:
            frames = outbox_as_frames(outbox)
            link.write(frames)
            stats.ws_bytes_out += len(frames)
        self.polling.wake(eio.NOOP)

    def upgrade_failed(self, upgrade: Upgrade) -> None:
        """``upgrade`` failed: the session stays on polling."""
        if self._upgrade is upgrade:
            self._upgrade = None
            if not self.session.closed:
                self.session.abort_upgrade()
