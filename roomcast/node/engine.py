"""Engine.IO transports on aiohttp: a thin pump around :class:`EngineSession`.

:class:`Connection` is one client (one Engine.IO session): it owns the session state machine,
its heartbeat timer, the pending polling GET or the WebSocket, and the Socket.IO decoder. The
HTTP handlers here only move bytes between aiohttp and the session; every protocol decision is
made by :mod:`roomcast.protocol.engineio`.

Writes to a WebSocket go straight to the TCP transport as pre-built frames
(:class:`~roomcast.protocol.frames.Frames`): a broadcast costs one ``transport.write`` per
recipient and no per-recipient encoding. The transport's write buffer is the per-socket send
buffer: past ``limits.send_buffer_bytes`` the session closes with ``send buffer full``, and a
volatile packet is dropped as soon as the buffer is not empty.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web

from roomcast.errors import ProtocolError, RemoteProtocolError
from roomcast.protocol import engineio as eio
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames, ws_frame, ws_text

if TYPE_CHECKING:
    from roomcast.node.server import Server
    from roomcast.node.sockets import Socket

log = logging.getLogger("roomcast.node")

# Engine.IO's HTTP error codes (engine.io's Server.errors).
ERR_TRANSPORT_UNKNOWN = (0, "Transport unknown")
ERR_UNKNOWN_SID = (1, "Session ID unknown")
ERR_BAD_HANDSHAKE_METHOD = (2, "Bad handshake method")
ERR_BAD_REQUEST = (3, "Bad request")
ERR_UNSUPPORTED_VERSION = (5, "Unsupported protocol version")
ERR_DRAINING = (4, "Forbidden: node draining")

_TEXT_PLAIN = "text/plain; charset=UTF-8"


def new_id() -> str:
    """A random, URL-safe, 20-character session id."""
    return secrets.token_urlsafe(15)


class Connection:
    """One client connection: an Engine.IO session and the Socket.IO sockets multiplexed on it."""

    __slots__ = (
        "_close_notify",
        "_out",
        "_poll_waiter",
        "_posting",
        "_timer",
        "_upgrader",
        "_ws",
        "_ws_transport",
        "connect_timer",
        "connecting",
        "decoder",
        "request",
        "server",
        "session",
        "sockets",
    )

    def __init__(self, server: Server, session: eio.EngineSession, request: web.Request) -> None:
        self.server = server
        self.session = session
        self.request = request
        self.decoder = sio.Decoder(server.decoder_limits)
        self.sockets: dict[str, Socket] = {}
        #: Namespaces whose connect (middleware) is under way.
        self.connecting: set[str] = set()
        self._ws: web.WebSocketResponse | None = None
        self._ws_transport: asyncio.Transport | None = None
        self._out: list[bytes] = []  # WebSocket frames written at the end of this loop pass
        self._close_notify: eio.Packet | None = None  # what a GET answers once closed
        self._upgrader: web.WebSocketResponse | None = None  # the one WebSocket upgrading us
        self._poll_waiter: asyncio.Future[eio.Packet | None] | None = None
        self._posting = False
        self._timer: asyncio.TimerHandle | None = None
        self.connect_timer: asyncio.TimerHandle | None = None

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
                self.server.stats.volatile_dropped += 1
                return False
            self._queue_ws(frames.ws)
            return True
        if self.session.closed:
            return False
        if volatile and (self._poll_waiter is None or self.session.upgrading):
            self.server.stats.volatile_dropped += 1
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
        if not self._out:
            self.server.schedule_flush(self)
        self._out.append(data)

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
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self._ws_transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.server.settings.limits.send_buffer_bytes:
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
            loop = self.server.loop
            self._timer = loop.call_at(self.session.next_deadline, self._on_timer)

    def catch_up(self) -> None:
        """Run the heartbeat now if its deadline has passed (the loop may be late with the
        timer; a request must not find alive a session whose ping timed out)."""
        if not self.session.closed and self.server.loop.time() >= self.session.next_deadline:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._on_timer()

    def _on_timer(self) -> None:
        self._timer = None
        self.handle(self.session.on_timer(self.server.loop.time()))
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
            events = self.session.receive(packet, self.server.loop.time())
        except RemoteProtocolError as exc:
            self.close(exc.reason, exc.detail)
            return
        if packet.type is eio.PacketType.PONG:
            self.start_timer()
        self.handle(events)

    def on_message(self, data: str | bytes) -> None:
        """An Engine.IO MESSAGE: hand it to the server (which decodes it as Socket.IO)."""
        self.server.on_engine_message(self, data)

    # -- closing ------------------------------------------------------------------------------

    def close(self, reason: str, detail: str = "", *, flush: bool = False) -> None:
        """Close the whole connection from the server side with a named reason.

        ``flush=True`` is a deliberate close: what was already queued still reaches the client
        before the close (a polling client collects it, then CLOSE, with its next GET).
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
            self.server.linger(self)
        self._finish_close(event)

    def _finish_close(self, event: eio.SessionClosed) -> None:
        server = self.server
        server.stats.closed_by_reason[event.reason] += 1
        server.connections.pop(self.sid, None)
        for handle in (self._timer, self.connect_timer):
            if handle is not None:
                handle.cancel()
        self._timer = self.connect_timer = None
        self._close_notify = event.notify_poll
        if (
            event.notify_poll is eio.NOOP
            and self._ws_transport is None
            and self._poll_waiter is None
            and self._upgrader is None
        ):
            # The client closed (a POSTed CLOSE) while no GET was pending: a GET it had
            # already sent may still arrive; it gets NOOP, as it would have if first.
            server.linger(self)
        self._wake_poll(event.notify_poll)
        upgrader = self._upgrader
        if upgrader is not None and not upgrader.closed:
            upgrading_transport = ws_transport_of(upgrader)
            if upgrading_transport is not None:
                server.spawn(_close_ws(upgrader, upgrading_transport, event.reason))
        ws = self._ws
        transport = self._ws_transport
        if event.reason == reasons.SEND_BUFFER_FULL:
            # The peer is not reading: a close frame would never get out, and aiohttp's
            # close() would wait on it for ever. Drop the connection at once.
            self._out.clear()
            if transport is not None:
                transport.abort()
        else:
            self.flush()  # what was sent before the close goes out before the close frame
            if ws is not None and not ws.closed and transport is not None:
                server.spawn(_close_ws(ws, transport, event.reason))
        self._ws_transport = None
        for socket in list(self.sockets.values()):
            socket._on_close(event.reason)
        self.sockets.clear()

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
            waiter: asyncio.Future[eio.Packet | None] = self.server.loop.create_future()
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
            self.server.linger(self)
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
            events = self.session.receive_payload(text, self.server.loop.time())
        except (RemoteProtocolError, UnicodeDecodeError) as exc:
            reason = exc.reason if isinstance(exc, RemoteProtocolError) else reasons.PARSE_ERROR
            self.close(reason, getattr(exc, "detail", "invalid UTF-8"))
            return http_error(ERR_BAD_REQUEST)
        self.start_timer()
        self.handle(events)
        return web.Response(text="ok", content_type="text/html")

    async def run_websocket(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        """Pump a WebSocket that carries this session from its start."""
        self._ws = ws
        self._ws_transport = transport
        await self._read_websocket(ws)

    async def upgrade(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        """Run the upgrade handshake (§Upgrade) on ``ws``, then pump it."""
        session = self.session
        timeout = session.settings.upgrade_timeout_ms / 1000
        self._upgrader = ws
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await ws.receive()
                    if msg.type is not WSMsgType.TEXT:
                        raise RemoteProtocolError(reasons.UPGRADE_FAILED, "probe not text")
                    events = session.receive_probe(eio.decode_text(msg.data))
                    if any(isinstance(e, eio.UpgradeCompleted) for e in events):
                        break
                    # "2probe" answered with "3probe"; the pending GET gets a NOOP.
                    transport.write(ws_text("3probe"))
                    self._wake_poll(eio.NOOP)
        except (ProtocolError, TimeoutError) as exc:
            if not session.closed:
                session.abort_upgrade()
            reason = exc.reason if isinstance(exc, ProtocolError) else "upgrade timeout"
            log.debug("upgrade of %s failed: %s", self.sid, reason)
            await _close_ws(ws, transport, reasons.UPGRADE_FAILED)
            return
        except asyncio.CancelledError:
            if not session.closed:
                session.abort_upgrade()
            raise
        finally:
            self._upgrader = None
        if session.closed:
            await ws.close()
            return
        self._ws = ws
        self._ws_transport = transport
        outbox = session.take_outbox()
        if outbox:
            transport.write(b"".join(_poll_text_to_ws(t) for t in outbox))
        self._wake_poll(eio.NOOP)
        await self._read_websocket(ws)

    async def _read_websocket(self, ws: web.WebSocketResponse) -> None:
        reason = reasons.TRANSPORT_CLOSE
        session = self.session
        server = self.server
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    text = msg.data
                    if text[:1] == "4" and session.state is eio.EngineState.OPEN:
                        # The hot path: a MESSAGE on an open session changes no Engine.IO
                        # state, so it goes straight to Socket.IO.
                        server.on_engine_message(self, text[1:])
                        if session.closed:
                            break
                        continue
                    try:
                        packet = eio.decode_text(text)
                    except RemoteProtocolError as exc:
                        self.close(exc.reason, exc.detail)
                        break
                    self.receive(packet)
                elif msg.type is WSMsgType.BINARY:
                    self.receive(eio.decode_binary_frame(msg.data))
                elif msg.type is WSMsgType.ERROR:
                    error = ws.exception()
                    code = getattr(error, "code", None)
                    reason = (
                        reasons.PAYLOAD_TOO_LARGE
                        if code == WSCloseCode.MESSAGE_TOO_BIG
                        else reasons.TRANSPORT_ERROR
                    )
                    break
                if self.session.closed:
                    break
        finally:
            self.close(reason)
        # When this loop closed the session, the close frame with its reason must go out
        # before the handler returns: aiohttp would otherwise close first (1000, no reason).
        closed_with = self.session.close_reason
        transport = ws_transport_of(ws)
        if not ws.closed and closed_with is not None and transport is not None:
            await _close_ws(ws, transport, closed_with)


_CLOSE_TIMEOUT = 2.0  # seconds a WebSocket close handshake may take before the TCP is dropped


def ws_transport_of(ws: web.WebSocketResponse) -> asyncio.Transport | None:
    """The TCP transport under a prepared WebSocket response."""
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None


async def _close_ws(ws: web.WebSocketResponse, transport: asyncio.Transport, reason: str) -> None:
    """Send the close frame with ``reason``; a peer that does not take it within
    ``_CLOSE_TIMEOUT`` loses the connection (a close must never hang on a slow reader)."""
    try:
        await asyncio.wait_for(
            ws.close(code=_close_code(reason), message=reason.encode()), _CLOSE_TIMEOUT
        )
    except (TimeoutError, ConnectionError):
        transport.abort()


def _close_code(reason: str) -> int:
    """The WebSocket close code (RFC 6455 §7.4.1) of a session that ended with ``reason``."""
    if reason == reasons.PAYLOAD_TOO_LARGE:
        return WSCloseCode.MESSAGE_TOO_BIG
    if reason in (
        reasons.TRANSPORT_CLOSE,
        reasons.SERVER_SHUTTING_DOWN,
        reasons.FORCED_SERVER_CLOSE,
        reasons.PING_TIMEOUT,
    ):
        return WSCloseCode.OK
    return WSCloseCode.POLICY_VIOLATION


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
