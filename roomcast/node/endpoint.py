"""The Engine.IO endpoint: routes each request of the Engine.IO path to its session.

Handshakes (polling and WebSocket), the error answers of §Handshake and §Transports, the upgrade
of a polling session to a WebSocket, and the draining node's refusal of new sessions. The
session's own pump is :class:`~roomcast.node.engine.Connection`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, web

from roomcast.protocol import engineio as eio
from roomcast.protocol import reasons
from roomcast.protocol.frames import ws_text

from .engine import (
    ERR_BAD_HANDSHAKE_METHOD,
    ERR_BAD_REQUEST,
    ERR_DRAINING,
    ERR_TRANSPORT_UNKNOWN,
    ERR_UNKNOWN_SID,
    ERR_UNSUPPORTED_VERSION,
    Connection,
    http_error,
    new_id,
    payload_response,
)

if TYPE_CHECKING:
    from .server import Server


class EngineEndpoint:
    """The aiohttp handler of the Engine.IO path: handshakes, polling and WebSocket."""

    def __init__(self, server: Server) -> None:
        self.server = server
        s = server.settings.engineio
        self.transports = frozenset(s.transports)
        self.engine_settings = eio.EngineSettings(
            ping_interval_ms=s.ping_interval_ms,
            ping_timeout_ms=s.ping_timeout_ms,
            max_payload=s.max_payload,
            max_packets_per_body=server.settings.limits.max_packets_per_body,
            max_buffered_packets=server.settings.limits.max_buffered_packets,
            max_buffered_bytes=server.settings.limits.send_buffer_bytes,
            upgrade_timeout_ms=s.upgrade_timeout_ms,
            allow_upgrades=s.allow_upgrades and "websocket" in self.transports,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route one request by its ``EIO``, ``transport`` and ``sid`` query parameters."""
        if request.method == "OPTIONS":
            return web.Response(status=204)
        query = request.query
        if query.get("EIO") != eio.PROTOCOL_VERSION:
            return http_error(ERR_UNSUPPORTED_VERSION)
        transport = query.get("transport")
        if transport not in self.transports:
            return http_error(ERR_TRANSPORT_UNKNOWN)
        sid = query.get("sid")
        if sid is None and self.server.draining:
            # A draining node takes no new sessions; the load balancer sends them elsewhere.
            return http_error(ERR_DRAINING, status=503)
        if transport == "websocket":
            return await self._websocket(request, sid)
        if sid is None:
            if request.method != "GET":
                return http_error(ERR_BAD_HANDSHAKE_METHOD)
            opened = self._open(request, eio.TransportKind.POLLING)
            return payload_response(opened.session.open_packet())
        conn = self.server.connections.get(sid)
        if conn is not None:
            conn.catch_up()  # a heartbeat deadline that passed counts, late timer or not
            if conn.closed:
                conn = None
        if conn is None:
            closed = self.server.lingering.pop(sid, None)
            if closed is not None and request.method == "GET":
                return closed.last_words()
            return http_error(ERR_UNKNOWN_SID)
        if conn.session.transport is not eio.TransportKind.POLLING:
            return http_error(ERR_BAD_REQUEST)
        if request.method == "GET":
            return await conn.poll()
        if request.method == "POST":
            return await conn.post(request)
        return http_error(ERR_BAD_REQUEST)

    def _open(self, request: web.Request, kind: eio.TransportKind) -> Connection:
        server = self.server
        now = server.loop.time()
        session = eio.EngineSession(new_id(), kind, self.engine_settings, now)
        conn = Connection(server, session, request)
        server.connections[session.sid] = conn
        server.stats.connections_opened += 1
        conn.start_timer()
        conn.connect_timer = server.loop.call_at(
            now + server.settings.engineio.connect_timeout_ms / 1000, _connect_timeout, conn
        )
        return conn

    async def _websocket(self, request: web.Request, sid: str | None) -> web.StreamResponse:
        conn: Connection | None = None
        if sid is not None:
            conn = self.server.connections.get(sid)
        ws = web.WebSocketResponse(
            max_msg_size=self.engine_settings.max_payload, compress=False, autoping=True
        )
        if not ws.can_prepare(request).ok:
            return http_error(ERR_BAD_REQUEST)
        await ws.prepare(request)
        if sid is not None and (
            conn is None or not conn.session.can_upgrade() or conn._upgrader is not None
        ):
            # Unknown sid, or a second WebSocket for a session (§Transports, WebSocket): the
            # session is left alone and this socket is closed.
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"bad session")
            return ws
        transport = request.transport
        if transport is None:
            return ws
        if conn is not None:
            await conn.upgrade(ws, transport)
            return ws
        conn = self._open(request, eio.TransportKind.WEBSOCKET)
        transport.write(ws_text(conn.session.open_packet()))
        await conn.run_websocket(ws, transport)
        return ws


def _connect_timeout(conn: Connection) -> None:
    conn.connect_timer = None
    if not conn.sockets and not conn.closed:
        conn.close(reasons.CONNECT_TIMEOUT)
