"""The Engine.IO endpoint: routes each request of the Engine.IO path to its session.

Handshakes (polling and WebSocket), the error answers of §Handshake and §Transports, the upgrade
of a polling session to a WebSocket, and the draining node's refusal of new sessions. The
session's own pump is :class:`~roomcast.node.engine.Connection`.

The node's TCP listener (:class:`Listener`) looks at the first request of each connection. A
well-formed WebSocket handshake for the Engine.IO path that opens a session (or upgrades one) is
answered right there, and the connection becomes a :class:`~roomcast.node.websocket.
NodeWebSocket`: aiohttp never builds a request, a response or a handler task for it, so an idle
WebSocket client costs the node a fraction of what it would. Every other connection (and any
request this does not fully vouch for: an error answer, a draining node, an unknown sid, odd
headers) is handed, with the bytes read so far, to aiohttp, which serves it as it always did,
through :meth:`EngineEndpoint.handle` for the Engine.IO path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import cast

from aiohttp import WSCloseCode, hdrs, web
from aiohttp.http import SERVER_SOFTWARE, HttpRequestParser, HttpVersion11, RawRequestMessage

from roomcast.config import Settings
from roomcast.ids import new_engine_sid
from roomcast.protocol import engineio as eio
from roomcast.protocol import websocket as wsp
from roomcast.protocol.frames import ws_text

from .adapter import Spawn
from .engine import BAD_SESSION, Connection, EngineClient
from .polling import http_error, http_reply
from .sessions import RequestInfo, Sessions
from .websocket import AiohttpWebSocket, ClosingWebSockets, NodeWebSocket

log = logging.getLogger("roomcast.node")


class EngineEndpoint:
    """The aiohttp handler of the Engine.IO path (handshakes, polling and WebSocket), and the
    WebSocket handshakes the listener answers itself (:meth:`take_websocket`)."""

    def __init__(
        self,
        settings: Settings,
        sessions: Sessions[Connection],
        new_client: Callable[[Connection], EngineClient],
        spawn: Spawn,
        draining: Callable[[], bool],
    ) -> None:
        self.sessions = sessions
        self.new_client = new_client
        self.spawn = spawn
        #: Whether the node takes no new sessions.
        self.draining = draining
        s = settings.engineio
        self.transports = frozenset(s.transports)
        self.engine_settings = eio.EngineSettings(
            ping_interval_ms=s.ping_interval_ms,
            ping_timeout_ms=s.ping_timeout_ms,
            max_payload=s.max_payload,
            max_packets_per_body=settings.limits.max_packets_per_body,
            max_buffered_packets=settings.limits.max_buffered_packets,
            max_buffered_bytes=settings.limits.send_buffer_bytes,
            upgrade_timeout_ms=s.upgrade_timeout_ms,
            allow_upgrades=s.allow_upgrades and "websocket" in self.transports,
        )
        path = settings.node.path
        #: The paths the Engine.IO routes answer (see ``http.py``).
        self.paths = frozenset((path, path.rstrip("/")))
        #: The node's WebSockets in their closing handshake.
        self.closing = ClosingWebSockets()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route one request by its ``EIO``, ``transport`` and ``sid`` query parameters."""
        if request.method == "OPTIONS":
            return web.Response(status=204)
        query = request.query
        if query.get("EIO") != eio.PROTOCOL_VERSION:
            return http_error(eio.UNSUPPORTED_VERSION)
        transport = query.get("transport")
        if transport not in self.transports:
            return http_error(eio.TRANSPORT_UNKNOWN)
        sid = query.get("sid")
        if sid is None and self.draining():
            # A draining node takes no new sessions; the load balancer sends them elsewhere.
            return http_error(eio.DRAINING)
        if transport == "websocket":
            return await self._websocket(request, sid)
        if sid is None:
            if request.method != "GET":
                return http_error(eio.BAD_HANDSHAKE_METHOD)
            opened = self._open(RequestInfo.of(request), eio.TransportKind.POLLING)
            return http_reply(eio.HttpReply.payload(opened.session.open_packet()))
        conn = self.sessions.live.get(sid)
        if conn is not None:
            conn.catch_up()  # a heartbeat deadline that passed counts, late timer or not
            if conn.closed:
                conn = None
        if conn is None:
            closed = self.sessions.lingering.pop(sid, None)
            if closed is not None and request.method == "GET":
                return closed.polling.last_words()
            return http_error(eio.UNKNOWN_SID)
        if conn.session.transport is not eio.TransportKind.POLLING:
            return http_error(eio.BAD_REQUEST)
        if request.method == "GET":
            return await conn.polling.get()
        if request.method == "POST":
            return await conn.polling.post(request)
        return http_error(eio.BAD_REQUEST)

    def _open(self, info: RequestInfo, kind: eio.TransportKind) -> Connection:
        sessions = self.sessions
        now = sessions.loop.time()
        session = eio.EngineSession(new_engine_sid(), kind, self.engine_settings, now)
        conn = Connection(sessions, session, info, self.new_client)
        sessions.live[session.sid] = conn
        sessions.stats.connections_opened += 1
        conn.start_timer()
        return conn

    async def _websocket(self, request: web.Request, sid: str | None) -> web.StreamResponse:
        """A WebSocket handshake aiohttp serves (one the listener did not take)."""
        conn: Connection | None = None
        if sid is not None:
            conn = self.sessions.live.get(sid)
        ws = web.WebSocketResponse(
            max_msg_size=self.engine_settings.max_payload, compress=False, autoping=True
        )
        if not ws.can_prepare(request).ok:
            return http_error(eio.BAD_REQUEST)
        await ws.prepare(request)
        if sid is not None and (conn is None or not conn.can_upgrade()):
            # Unknown sid, or a second WebSocket for a session (§Transports, WebSocket): the
            # session is left alone and this socket is closed.
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=BAD_SESSION.encode())
            return ws
        transport = request.transport
        if transport is None:
            return ws
        link = AiohttpWebSocket(ws, transport, self.spawn)
        if conn is not None:
            await conn.upgrade(link, transport)
        else:
            conn = self._open(RequestInfo.of(request), eio.TransportKind.WEBSOCKET)
            transport.write(ws_text(conn.session.open_packet()))
            conn.attach_websocket(link)
        await link.run()
        return ws

    def take_websocket(
        self, transport: asyncio.Transport, message: RawRequestMessage, tail: bytes
    ) -> bool:
        """Answer the first request of a connection if it is a WebSocket handshake that opens
        a session or upgrades one, exactly as :meth:`handle` would have, and make the
        connection a :class:`NodeWebSocket`. Returns False, having done nothing, for any other
        request: aiohttp serves it."""
        if (
            message.method != "GET"
            or message.version != HttpVersion11
            or not message.upgrade
            or message.path.partition("?")[0] not in self.paths
            or "websocket" not in self.transports
        ):
            return False
        headers = message.headers
        if (
            headers.get(hdrs.UPGRADE, "").lower().strip() != "websocket"
            or headers.get(hdrs.SEC_WEBSOCKET_VERSION, "") not in ("13", "8", "7")
            # aiohttp logs a warning for sub-protocols it does not speak; let it.
            or hdrs.SEC_WEBSOCKET_PROTOCOL in headers
            or hdrs.CONTENT_LENGTH in headers
            or hdrs.TRANSFER_ENCODING in headers
        ):
            return False
        accept = wsp.accept_key(headers.get(hdrs.SEC_WEBSOCKET_KEY, ""))
        if accept is None:
            return False
        query = message.url.query
        if query.get("EIO") != eio.PROTOCOL_VERSION or query.get("transport") != "websocket":
            return False
        sid = query.get("sid")
        conn: Connection | None = None
        if sid is None:
            if self.draining():
                return False
        else:
            conn = self.sessions.live.get(sid)
            if conn is None or not conn.can_upgrade():
                return False
        link = NodeWebSocket(transport, self.engine_settings.max_payload, self.closing)
        transport.set_protocol(link)
        response = _switching_protocols(accept)
        if conn is None:
            peer = transport.get_extra_info("peername")
            info = RequestInfo(
                headers,
                str(message.url),
                None if peer is None else str(peer[0] if isinstance(peer, tuple | list) else peer),
                transport.get_extra_info("sslcontext") is not None,
            )
            conn = self._open(info, eio.TransportKind.WEBSOCKET)
            transport.write(response + ws_text(conn.session.open_packet()))
            conn.attach_websocket(link)
            if tail:
                link.data_received(tail)
        else:
            transport.write(response)
            link.hold(tail)
            self.spawn(conn.upgrade(link, transport))
        return True


class _HttpDate:
    """The current time as an HTTP date (RFC 9110 §5.6.7), formatted once per second."""

    second = -1
    text = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.text = formatdate(second, usegmt=True)
        return cls.text


def _switching_protocols(accept: str) -> bytes:
    """The 101 answer to a WebSocket handshake (RFC 6455 §4.2.2), with the headers aiohttp
    sends (no extension, no sub-protocol)."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n"
        f"Date: {_HttpDate.now()}\r\n"
        f"Server: {SERVER_SOFTWARE}\r\n\r\n"
    ).encode()


# --- the listener -----------------------------------------------------------------------------

#: How long a connection may stay silent before its first request (aiohttp's keep-alive
#: timeout, which applies to it once aiohttp has it).
FIRST_REQUEST_TIMEOUT = 3630.0
#: Bytes of a first request read here at most; a longer head goes to aiohttp as it is.
_MAX_HEAD = 16 * 1024
# aiohttp's limits on a request head (web_protocol.RequestHandler's defaults).
_MAX_LINE_SIZE = 8190
_MAX_FIELD_SIZE = 8190
_MAX_HEADERS = 128


class Listener:
    """The node's TCP listener: answers WebSocket handshakes of new sessions itself, hands
    every other connection to aiohttp (see the module's docstring)."""

    def __init__(self, endpoint: EngineEndpoint, http: web.Server) -> None:
        self.endpoint = endpoint
        self.http = http  # aiohttp's protocol factory
        #: Connections whose first request has not been seen whole yet.
        self.pending: set[_FirstRequest] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, backlog: int) -> int:
        """Listen on ``host:port``; returns the port (the one chosen when ``port`` is 0)."""
        loop = asyncio.get_running_loop()
        self._server = server = await loop.create_server(
            lambda: _FirstRequest(self), host, port, reuse_address=True, backlog=backlog
        )
        return int(server.sockets[0].getsockname()[1]) if server.sockets else port

    def stop(self) -> None:
        """Stop listening and drop the connections that have sent no whole request."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for first in list(self.pending):
            first.drop()


class _FirstRequest(asyncio.Protocol):
    """A new connection, until its first request is seen: then a :class:`NodeWebSocket` or
    aiohttp's own protocol takes the transport over."""

    __slots__ = ("_data", "_listener", "_parser", "_timer", "_transport")

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._data = b""
        self._parser: HttpRequestParser | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not one
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # As aiohttp does for every connection it serves.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._listener.pending.add(self)
        self._timer = asyncio.get_running_loop().call_later(FIRST_REQUEST_TIMEOUT, self.drop)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        head = self._data + data if self._data else data
        parser = self._parser
        if parser is None:
            # Only a GET asking for the websocket transport is worth parsing here.
            line_end = head.find(b"\r\n")
            if line_end < 0:
                if len(head) > _MAX_LINE_SIZE:
                    self._hand_over(head)
                else:
                    self._data = head
                return
            line = head[:line_end]
            if not line.startswith(b"GET ") or b"transport=websocket" not in line:
                self._hand_over(head)
                return
            self._parser = parser = HttpRequestParser(
                None,  # no body is ever read here: a request with one goes to aiohttp
                asyncio.get_running_loop(),
                2**16,
                max_line_size=_MAX_LINE_SIZE,
                max_field_size=_MAX_FIELD_SIZE,
                max_headers=_MAX_HEADERS,
            )
            data = head
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except Exception:  # aiohttp answers a bad request with the right error
            self._hand_over(head)
            return
        if not messages:
            if len(head) > _MAX_HEAD:
                self._hand_over(head)
            else:
                self._data = head
            return
        self._done()
        if len(messages) != 1 or not upgraded:
            self._hand_over(head)
            return
        try:
            taken = self._listener.endpoint.take_websocket(transport, messages[0][0], tail)
        except Exception:
            log.exception("WebSocket handshake failed")
            transport.abort()
            return
        if not taken:
            self._hand_over(head)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def drop(self) -> None:
        """Close the connection (silent for too long, or the node is stopping)."""
        self._done()
        if self._transport is not None:
            self._transport.close()

    def _done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._parser = None
        self._data = b""
        self._listener.pending.discard(self)

    def _hand_over(self, data: bytes) -> None:
        """Give the connection, and the bytes read from it so far, to aiohttp."""
        self._done()
        transport = self._transport
        assert transport is not None
        self._transport = None
        protocol = self._listener.http()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)
