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
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from aiohttp import web
from yarl import URL

from roomcast.errors import ProtocolError, RemoteProtocolError
from roomcast.protocol import engineio as eio
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames, ws_frame, ws_text

from .stats import NodeStats

log = logging.getLogger("roomcast.node")

# Engine.IO's HTTP error codes (engine.io's Server.errors).
ERR_TRANSPORT_UNKNOWN = (0, "Transport unknown")
ERR_UNKNOWN_SID = (1, "Session ID unknown")
ERR_BAD_HANDSHAKE_METHOD = (2, "Bad handshake method")
ERR_BAD_REQUEST = (3, "Bad request")
ERR_UNSUPPORTED_VERSION = (5, "Unsupported protocol version")
ERR_DRAINING = (4, "Forbidden: node draining")

_TEXT_PLAIN = "text/plain; charset=UTF-8"

#: The close message of a WebSocket that names a session it cannot upgrade.
BAD_SESSION = "bad session"


class RequestInfo:
    """What a session keeps of the HTTP request that opened it: the fields of
    ``socket.handshake``. The headers and the query are turned into dicts only when a handshake
    is asked for (aiohttp's parse of them is kept as it is)."""

    __slots__ = ("_headers", "address", "secure", "url")

    def __init__(
        self, headers: Mapping[str, str], url: str, address: str | None, secure: bool
    ) -> None:
        self._headers = headers  # as aiohttp parsed them (its read-only multidict)
        #: The request target, path and query (``str(request.rel_url)``).
        self.url = url
        self.address = address
        self.secure = secure

    @classmethod
    def of(cls, request: web.BaseRequest) -> RequestInfo:
        """The fields of an aiohttp request."""
        return cls(request.headers, str(request.rel_url), request.remote, request.secure)

    def headers(self) -> dict[str, str]:
        """The headers as a dict (as ``dict(request.headers)``)."""
        return dict(self._headers)

    def query(self) -> dict[str, str]:
        """The query parameters as a dict (as ``dict(request.query)``)."""
        return dict(URL(self.url, encoded=True).query)


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


class Sessions:
    """The node's Engine.IO sessions: live ones by sid, closed polling ones whose last packets
    await one more GET, and the end-of-pass flush of WebSocket frames."""

    def __init__(self, stats: NodeStats, send_buffer_bytes: int) -> None:
        self.stats = stats
        #: A WebSocket whose write buffer grows past this is closed (``send buffer full``).
        self.send_buffer_bytes = send_buffer_bytes
        self.live: dict[str, Connection] = {}
        #: Polling connections closed on purpose whose last packets await one more GET.
        self.lingering: dict[str, Connection] = {}
        self._linger_timers: dict[str, asyncio.TimerHandle] = {}
        self._dirty: list[Connection] = []  # connections with WebSocket frames to write
        self._flush_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the sessions run on."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

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


class Connection:
    """One client connection: an Engine.IO session and the Socket.IO sockets multiplexed on it."""

    __slots__ = (
        "_close_notify",
        "_out",
        "_poll_waiter",
        "_posting",
        "_timer",
        "_upgrade_timer",
        "_upgrader",
        "_ws",
        "_ws_transport",
        "client",
        "info",
        "session",
        "sessions",
    )

    def __init__(
        self,
        sessions: Sessions,
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
        self._close_notify: eio.Packet | None = None  # what a GET answers once closed
        self._upgrader: WebSocketLink | None = None  # the one WebSocket upgrading us
        self._upgrade_timer: asyncio.TimerHandle | None = None
        self._poll_waiter: asyncio.Future[eio.Packet | None] | None = None
        self._posting = False
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

    def send_packet(self, packet: sio.Packet) -> None:
        """Encode and send one Socket.IO packet to this client only."""
        self.write(Frames(sio.encode(packet)))

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
        transport.write(data)

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
        event = self.session.close(reason, flush=flush)
        if flush and self._ws_transport is None and self._poll_waiter is None:
            # No GET is waiting: keep the last words for the next one (engine.io does the
            # same), for at most one ping timeout.
            self.sessions.linger(self)
        self._finish_close(event, code)

    def _finish_close(self, event: eio.SessionClosed, code: int | None = None) -> None:
        sessions = self.sessions
        sessions.stats.closed_by_reason[event.reason] += 1
        sessions.live.pop(self.sid, None)
        for handle in (self._timer, self._upgrade_timer):
            if handle is not None:
                handle.cancel()
        self._timer = self._upgrade_timer = None
        self._close_notify = event.notify_poll
        if (
            event.notify_poll is eio.NOOP
            and self._ws_transport is None
            and self._poll_waiter is None
            and self._upgrader is None
        ):
            # The client closed (a POSTed CLOSE) while no GET was pending: a GET it had
            # already sent may still arrive; it gets NOOP, as it would have if first.
            sessions.linger(self)
        self._wake_poll(event.notify_poll)
        upgrader = self._upgrader
        if upgrader is not None:
            self._upgrader = None
            upgrader.close(event.reason)
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
        """Serve one polling GET: answer with the outbox, or wait for something to send."""
        session = self.session
        if self._poll_waiter is not None:
            self.close(reasons.DUPLICATE_POLL)
            return http_error(ERR_BAD_REQUEST)
        if not session.has_outbox():
            if session.upgrading:
                return payload_response(eio.encode_text(eio.NOOP))
            waiter: asyncio.Future[eio.Packet | None] = self.sessions.loop.create_future()
            self._poll_waiter = waiter
            try:
                notify = await waiter
            except asyncio.CancelledError:
                # The client went away with the GET pending (§HTTP long-polling: the session
                # cannot know what was delivered, so it ends).
                self.close(reasons.POLL_ABORTED)
                raise
            finally:
                self._poll_waiter = None
            if session.closed:
                # Woken by a write, then closed in the same pass: the close still counts.
                notify = self._close_notify
            if notify is not None:
                if notify.type is eio.PacketType.CLOSE:
                    return self.last_words()
                out = session.take_outbox()
                return payload_response(eio.encode_payload(out or [eio.encode_text(notify)]))
        return payload_response(eio.encode_payload(session.take_outbox()))

    def last_words(self) -> web.Response:
        """Answer a GET of a closed session: what a deliberate close left queued, and CLOSE in
        the GET after it, as engine.io does (socket.io-client handles packets a tick late,
        so a CLOSE in the same payload would overtake the DISCONNECTs before it)."""
        out = self.session.take_outbox()
        if out:
            self.sessions.linger(self)
            return payload_response(eio.encode_payload(out))
        return payload_response(eio.encode_text(self._close_notify or eio.CLOSE))

    async def post(self, request: web.Request) -> web.Response:
        """Serve one polling POST: decode the payload and feed every packet."""
        if self._posting:
            self.close(reasons.DUPLICATE_POLL, "concurrent POST")
            return http_error(ERR_BAD_REQUEST)
        limit = self.session.settings.max_payload
        if request.content_length is not None and request.content_length > limit:
            self.close(reasons.PAYLOAD_TOO_LARGE)
            return web.Response(status=413, text="payload too large")
        self._posting = True
        try:
            body = await _read_limited(request, limit)
        finally:
            self._posting = False
        if body is None:
            self.close(reasons.PAYLOAD_TOO_LARGE)
            return web.Response(status=413, text="payload too large")
        if self.session.closed:
            return http_error(ERR_UNKNOWN_SID)
        try:
            text = body.decode("utf-8")
            events = self.session.receive_payload(text, self.sessions.loop.time())
        except (RemoteProtocolError, UnicodeDecodeError) as exc:
            reason = exc.reason if isinstance(exc, RemoteProtocolError) else reasons.PARSE_ERROR
            self.close(reason, getattr(exc, "detail", "invalid UTF-8"))
            return http_error(ERR_BAD_REQUEST)
        self.start_timer()
        self.handle(events)
        return web.Response(text="ok", content_type="text/html")

    # -- WebSocket (the links of roomcast.node.websocket call these) ---------------------------

    def can_upgrade(self) -> bool:
        """Whether a WebSocket presenting this session's sid may start an upgrade (a second
        one, while another is upgrading, may not)."""
        return self._upgrader is None and self.session.can_upgrade()

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
        if not self.can_upgrade():
            # The session closed, or another WebSocket started upgrading it, since this one's
            # handshake was answered: refused like an unknown sid (§Transports, WebSocket).
            link.close(BAD_SESSION)
            return
        self._upgrader = link
        self._upgrade_timer = self.sessions.loop.call_later(
            self.session.settings.upgrade_timeout_ms / 1000,
            self._upgrade_failed,
            link,
            "upgrade timeout",
        )
        link.bind(self)

    def ws_message(self, link: WebSocketLink, data: str | bytes) -> None:
        """A message arrived on ``link``: the session's WebSocket or the one upgrading it.
        Messages of a link the session no longer uses (it closed) are ignored."""
        if link is not self._ws:
            if link is self._upgrader:
                self._probe(link, data)
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
        elif link is self._upgrader:
            self._upgrade_failed(link, reason, code)

    def _probe(self, link: WebSocketLink, data: str | bytes) -> None:
        """A message on the upgrading link: ``2probe``, then ``5`` (§Upgrade)."""
        session = self.session
        try:
            if not isinstance(data, str):
                raise RemoteProtocolError(reasons.UPGRADE_FAILED, "probe not text")
            events = session.receive_probe(eio.decode_text(data))
        except ProtocolError as exc:
            self._upgrade_failed(link, exc.detail or exc.reason)
            return
        if not any(isinstance(e, eio.UpgradeCompleted) for e in events):
            # "2probe" answered with "3probe"; the pending GET gets a NOOP.
            link.transport.write(ws_text("3probe"))
            self._wake_poll(eio.NOOP)
            return
        self._upgrader = None
        if self._upgrade_timer is not None:
            self._upgrade_timer.cancel()
            self._upgrade_timer = None
        self._ws = link
        self._ws_transport = transport = link.transport
        outbox = session.take_outbox()
        if outbox:
            transport.write(b"".join(_poll_text_to_ws(t) for t in outbox))
        self._wake_poll(eio.NOOP)

    def _upgrade_failed(self, link: WebSocketLink, detail: str, code: int | None = None) -> None:
        """The upgrade on ``link`` failed: the session stays on polling, the link is closed."""
        if link is not self._upgrader:
            return
        self._upgrader = None
        if self._upgrade_timer is not None:
            self._upgrade_timer.cancel()
            self._upgrade_timer = None
        if not self.session.closed:
            self.session.abort_upgrade()
        log.debug("upgrade of %s failed: %s", self.sid, detail)
        link.close(reasons.UPGRADE_FAILED, code)


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


def payload_response(text: str) -> web.Response:
    """A polling answer: Engine.IO packets as UTF-8 text."""
    return web.Response(text=text, content_type="text/plain", charset="UTF-8")


def http_error(err: tuple[int, str], status: int = 400) -> web.Response:
    """An Engine.IO error answer: ``{"code": ..., "message": ...}`` (engine.io's Server.errors)."""
    code, message = err
    return web.json_response({"code": code, "message": message}, status=status)
