"""The Engine.IO endpoint: routes each request of the Engine.IO path to its session.

Handshakes (polling and WebSocket), the error answers of §Handshake and §Transports, the upgrade
of a polling session to a WebSocket, and the draining node's refusal of new sessions. The
session's own pump is :class:`~roomcast.node.engine.Connection`. WebSocket handshakes that open
a session on a new connection are answered by :meth:`EngineEndpoint.take_websocket`, for the
node's listener (:mod:`roomcast.node.listener`); everything else comes through aiohttp, to
:meth:`EngineEndpoint.handle`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate

from aiohttp import WSCloseCode, hdrs, web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11, RawRequestMessage

from roomcast.config import Settings
from roomcast.ids import NodeTag, new_engine_sid
from roomcast.protocol import engineio as eio
from roomcast.protocol import reasons
from roomcast.protocol import websocket as wsp
from roomcast.protocol.frames import ws_text

from .adapter import Spawn
from .engine import BAD_SESSION, Connection, EngineClient
from .forward import Forwarder
from .polling import body_timeout, http_error, http_reply
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
        tag: NodeTag,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.sessions = sessions
        #: The node's tag: the prefix of every Engine.IO sid it issues.
        self.tag = tag
        #: Where requests for other nodes' sessions go (None: answered here, 400).
        self.forwarder = forwarder
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
        #: Seconds a polling POST's body may take to arrive (``http.body_timeout_ms``).
        self.body_timeout = settings.http.body_timeout_ms / 1000

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
            return opened.polling.counted(
                http_reply(eio.HttpReply.payload(opened.session.open_packet()))
            )
        conn = self.sessions.live.get(sid)
        if conn is not None:
            conn.catch_up()  # a heartbeat deadline that passed counts, late timer or not
            if conn.closed:
                conn = None
        if conn is None:
            closed = self.sessions.lingering.pop(sid, None)
            if closed is not None and request.method == "GET":
                return closed.polling.last_words()
            owner = self._owner(sid, request.headers)
            if owner is not None and request.method in ("GET", "POST"):
                return await self._forward(request, owner)
            return http_error(eio.UNKNOWN_SID)
        if conn.session.transport is not eio.TransportKind.POLLING:
            return http_error(eio.BAD_REQUEST)
        if request.method == "GET":
            return await conn.polling.get()
        if request.method == "POST":
            try:
                async with asyncio.timeout(self.body_timeout):
                    return await conn.polling.post(request)
            except TimeoutError:
                # A body that trickles in (or never comes) holds a socket and a session: both go.
                conn.close(reasons.REQUEST_TIMEOUT, "body not received in time")
                return body_timeout(self.sessions.stats)
        return http_error(eio.BAD_REQUEST)

    def _owner(self, sid: str, headers: Mapping[str, str]) -> str | None:
        """The other live node that holds session ``sid`` (None: not forwarded)."""
        return None if self.forwarder is None else self.forwarder.owner(sid, headers)

    async def _forward(self, request: web.Request, owner: str) -> web.StreamResponse:
        assert self.forwarder is not None
        return await self.forwarder.polling(request, owner)

    def _open(self, info: RequestInfo, kind: eio.TransportKind) -> Connection:
        sessions = self.sessions
        now = sessions.loop.time()
        session = eio.EngineSession(new_engine_sid(self.tag), kind, self.engine_settings, now)
        conn = Connection(sessions, session, info, self.new_client)
        sessions.live[session.sid] = conn
        sessions.stats.connections_opened += 1
        sessions.stats.opened_by_transport[kind.value] += 1
        conn.start_timer()
        return conn

    async def _websocket(self, request: web.Request, sid: str | None) -> web.StreamResponse:
        """A WebSocket handshake aiohttp serves (one the listener did not take)."""
        conn: Connection | None = None
        if sid is not None:
            conn = self.sessions.live.get(sid)
            owner = self._owner(sid, request.headers) if conn is None else None
            if owner is not None:
                assert self.forwarder is not None
                return await self.forwarder.websocket(request, owner)
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
        link = AiohttpWebSocket(ws, transport, self.spawn, self.sessions.stats)
        if conn is not None:
            await conn.upgrade(link, transport)
        else:
            conn = self._open(RequestInfo.of(request), eio.TransportKind.WEBSOCKET)
            opening = ws_text(conn.session.open_packet())
            transport.write(opening)
            self.sessions.stats.ws_bytes_out += len(opening)
            conn.attach_websocket(link)
        await link.run()
        return ws

    def take_websocket(
        self, transport: asyncio.Transport, message: RawRequestMessage, tail: bytes, raw: bytes
    ) -> bool:
        """Answer the first request of a connection if it is a WebSocket handshake that opens
        a session or upgrades one, exactly as :meth:`handle` would have, and make the
        connection a :class:`NodeWebSocket`; splice it (``raw``: every byte read) to the node
        that holds its session if that is another node. Returns False, having done nothing,
        for any other request: aiohttp serves it."""
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
            if conn is None:
                owner = self._owner(sid, headers)
                if owner is None:
                    return False
                assert self.forwarder is not None
                self.spawn(self.forwarder.splice(transport, raw, owner))
                return True
            if not conn.can_upgrade():
                return False
        link = NodeWebSocket(
            transport, self.engine_settings.max_payload, self.closing, self.sessions.stats
        )
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
            opening = ws_text(conn.session.open_packet())
            transport.write(response + opening)
            self.sessions.stats.ws_bytes_out += len(opening)
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
