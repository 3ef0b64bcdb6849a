"""Engine.IO transports: a thin pump around :class:`EngineSession`.

:class:`Connection` is one client (one Engine.IO session): it owns the session state machine,
its heartbeat timer, the pending polling GET or the WebSocket, and the Socket.IO decoder. The
HTTP handlers here and the WebSocket links of :mod:`roomcast.node.websocket` only move bytes
between the network and the session; every protocol decision is made by
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

from aiohttp import web

from roomcast.errors import ProtocolError, RemoteProtocolError
from roomcast.protocol import engineio as eio
from roomcast.protocol import reasons
from roomcast.protocol.frames import Frames, ws_frame, ws_text

from .sessions import RequestInfo, Sessions

log = logging.getLogger("roomcast.node")

#: The close message of a WebSocket that names a session it cannot upgrade.
BAD_SESSION = "bad session"


class WebSocketLink(Protocol):
    """What carries a session's WebSocket (see :mod:`roomcast.node.websocket`).

    The link calls :meth:`Connection.ws_message` for each message and
    :meth:`Connection.ws_ended` once when the WebSocket ends without the connection having
    closed it.
    """

    @property
    def transport(self) -> asyncio.Transport:
        """The TCP transport: pre-built frames are written straight to it."""
        ...

    def bind(self, conn: Connection) -> None:
        """Deliver messages to ``conn`` from now on (a link reads none before)."""
        ...

    def write(self, data: bytes) -> None:
        """Write pre-built WebSocket frames."""
        ...

    def close(self, reason: str, code: int | None = None) -> None:
        """Start the closing handshake: a close frame carrying ``reason`` (or ``code`` alone),
        then the TCP connection is closed once the client answers, or dropped after a timeout.
        Idempotent; the connection is not told about the end."""
        ...

    def abort(self) -> None:
        """Drop the TCP connection at once (the client is not reading)."""
        ...


class EngineClient(Protocol):
    """What a connection hands its messages to: the Socket.IO layer
    (:class:`~roomcast.node.client.Client`), or anything that speaks over raw Engine.IO."""

    def on_message(self, data: str | bytes) -> None:
        """An Engine.IO MESSAGE arrived."""
        ...

    def on_close(self, reason: str) -> None:
        """The connection ended with ``reason`` (called once)."""
        ...


class Connection:
    """One client connection: an Engine.IO session and the Socket.IO sockets multiplexed on it."""

    __slots__ = (
        "_out",
        "_poll_waiter",
        "_timer",
        "_upgrade",
        "_ws",
        "_ws_transport",
        "client",
        "info",
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
        self._poll_waiter: asyncio.Future[eio.Packet | None] | None = None
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
        if volatile and (self._poll_waiter is None or self.session.upgrading):
            self.sessions.stats.volatile_dropped += 1
            return False
        return self._buffer_poll(frames.poll)

    def send_engine(self, packet: eio.Packet) -> None:
        """Send one Engine.IO packet (a PING, or a raw MESSAGE) on the current transport."""
        if self._ws_transport is not None:
            if isinstance(packet.data, bytes):
                self._queue_ws(ws_frame(packet.data, 0x2))
            else:
                self._queue_ws(ws_text(eio.encode_text(packet)))
        elif not self.session.closed:
            self._buffer_poll((eio.encode_text(packet),))

    def _queue_ws(self, data: bytes) -> None:
        """Queue WebSocket frames for the end of this loop pass (see :meth:`flush`)."""
        out = self._out
        if out is None:
            self._out = [data]
            self.sessions.schedule_flush(self)
        else:
            out.append(data)

    def _buffer_poll(self, texts: Iterable[str]) -> bool:
        """Queue polling packets and wake the pending GET; a full outbox closes the session."""
        try:
            for text in texts:
                self.session.buffer(text)
        except RemoteProtocolError as exc:
            self.close(exc.reason)
            return False
        self._wake_poll(None)
        return True

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

    def _wake_poll(self, result: eio.Packet | None) -> None:
        waiter = self._poll_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

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
                self.on_message(event.data)
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

    def on_message(self, data: str | bytes) -> None:
        """An Engine.IO MESSAGE: hand it to the client (which decodes it as Socket.IO)."""
        self.client.on_message(data)

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
        self._wake_poll(event.notify_poll)
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

    # -- transports ---------------------------------------------------------------------------

    async def poll(self) -> web.Response:
        """Serve one polling GET (the rules are :meth:`EngineSession.begin_get`'s)."""
        answer = self.session.begin_get()
        if answer is None:
            waiter: asyncio.Future[eio.Packet | None] = self.sessions.loop.create_future()
            self._poll_waiter = waiter
            try:
                woken_by = await waiter
            except asyncio.CancelledError:
                self.close(self.session.abort_get())
                raise
            finally:
                self._poll_waiter = None
            answer = self.session.end_get(woken_by)
        return self._answer(answer)

    def last_words(self) -> web.Response:
        """Answer a GET of this closed session (see :meth:`EngineSession.last_words`)."""
        return self._answer(self.session.last_words())

    async def post(self, request: web.Request) -> web.Response:
        """Serve one polling POST (the rules are :meth:`EngineSession.begin_post`'s)."""
        refused = self.session.begin_post(request.content_length)
        if refused is not None:
            return self._answer(refused)
        try:
            body = await _read_limited(request, self.session.settings.max_payload)
        except BaseException:
            self.session.abort_post()
            raise
        answer, events = self.session.end_post(body, self.sessions.loop.time())
        if answer is eio.POST_OK:
            self.start_timer()  # a PONG in the body moved the heartbeat deadline
            self.handle(events)
        return self._answer(answer)

    def _answer(self, answer: eio.HttpReply | eio.Refusal) -> web.Response:
        if isinstance(answer, eio.Refusal):
            self.close(answer.reason, answer.detail)
            answer = answer.reply
        elif answer.linger:
            self.sessions.linger(self)
        return http_reply(answer)

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
        outbox = self.session.take_outbox()
        if outbox:
            link.write(b"".join(_poll_text_to_ws(t) for t in outbox))
        self._wake_poll(eio.NOOP)

    def upgrade_failed(self, upgrade: Upgrade) -> None:
        """``upgrade`` failed: the session stays on polling."""
        if self._upgrade is upgrade:
            self._upgrade = None
            if not self.session.closed:
                self.session.abort_upgrade()


class Upgrade:
    """One WebSocket's attempt to take a polling session over (§Upgrade): ``2probe`` is
    answered ``3probe`` (and the pending GET NOOP), then ``5`` completes it; anything else, the
    link's end, or ``engineio.upgrade_timeout_ms`` fails it, and the session stays on polling."""

    __slots__ = ("_timer", "conn", "link")

    def __init__(self, conn: Connection, link: WebSocketLink) -> None:
        self.conn = conn
        self.link = link
        seconds = conn.session.settings.upgrade_timeout_ms / 1000
        self._timer: asyncio.TimerHandle | None = conn.sessions.loop.call_later(
            seconds, self.fail, "upgrade timeout"
        )

    def probe(self, data: str | bytes) -> None:
        """A message on the upgrading link."""
        try:
            if not isinstance(data, str):
                raise RemoteProtocolError(reasons.UPGRADE_FAILED, "probe not text")
            events = self.conn.session.receive_probe(eio.decode_text(data))
        except ProtocolError as exc:
            self.fail(exc.detail or exc.reason)
            return
        if not any(isinstance(e, eio.UpgradeCompleted) for e in events):
            self.link.write(ws_text("3probe"))
            self.conn._wake_poll(eio.NOOP)
            return
        self._stop_timer()
        self.conn.upgraded(self)

    def fail(self, detail: str, code: int | None = None) -> None:
        """The upgrade failed: the link is closed, the session stays on polling."""
        self._stop_timer()
        log.debug("upgrade of %s failed: %s", self.conn.sid, detail)
        self.conn.upgrade_failed(self)
        self.link.close(reasons.UPGRADE_FAILED, code)

    def end(self, reason: str) -> None:
        """The session closed during the upgrade: the link goes with it."""
        self._stop_timer()
        self.link.close(reason)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _poll_text_to_ws(text: str) -> bytes:
    if text.startswith("b"):
        packet = eio.decode_text(text)
        assert isinstance(packet.data, bytes)
        return ws_frame(packet.data, 0x2)
    return ws_text(text)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def http_reply(reply: eio.HttpReply) -> web.Response:
    """An Engine.IO HTTP answer as an aiohttp response."""
    return web.Response(
        status=reply.status, text=reply.body, content_type=reply.content_type, charset="UTF-8"
    )


def http_error(err: eio.HttpError) -> web.Response:
    """An Engine.IO error answer: ``{"code": ..., "message": ...}`` (engine.io's Server.errors)."""
    return http_reply(eio.HttpReply.error(err))
