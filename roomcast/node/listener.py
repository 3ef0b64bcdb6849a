"""The node's TCP listener: the first request of every connection, and the edge's deadlines.

Every connection starts here (:class:`Listener`), and nothing reaches aiohttp or a session
before its first request head has arrived whole:

* a head must arrive whole within ``http.idle_timeout_ms`` of the connection's start: a peer
  that sends nothing is closed; one whose head is still incomplete gets ``408`` and is closed
  (a slowloris holds a socket for that long at most);
* a head longer than ``http.max_head_bytes`` (request line and headers) gets ``431`` and the
  connection is closed, before more of it is read: a session never keeps a huge head;
* a well-formed WebSocket handshake for the Engine.IO path that opens a session (or upgrades
  one) is answered right there, and the connection becomes a
  :class:`~roomcast.node.websocket.NodeWebSocket`: aiohttp never builds a request, a response
  or a handler task for it, so an idle WebSocket client costs the node a fraction of what it
  would;
* every other connection (and any request this does not fully vouch for: an error answer, a
  draining node, an unknown sid, odd headers) is handed, with the bytes read so far, to aiohttp,
  which serves it and the requests after it, with the same limits (see
  :func:`roomcast.node.http.edge_guard` and the handler arguments of :func:`handler_args`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http import HttpRequestParser
from aiohttp.http_exceptions import HttpProcessingError

from roomcast.config import HttpSettings
from roomcast.errors import ConfigError

from .endpoint import EngineEndpoint
from .stats import BAD_REQUEST, HEAD_TIMEOUT, HEAD_TOO_LARGE

log = logging.getLogger("roomcast.node")

# aiohttp's limits on one line of a request head (web_protocol.RequestHandler's defaults).
_MAX_LINE_SIZE = 8190
_MAX_FIELD_SIZE = 8190
_MAX_HEADERS = 128
#: Seconds the rest of an unread body is read after an early answer (at most).
_LINGERING_TIME = 2.0


def tls_context(settings: HttpSettings) -> ssl.SSLContext | None:
    """The server side of TLS from ``http.tls_cert_file`` and ``http.tls_key_file`` (None: plain
    HTTP). TLS 1.2 at least; the certificate and key are read now, and a file that cannot be
    read or does not hold what it should is a :class:`ConfigError` naming the setting."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"http.tls_cert_file: cannot load {settings.tls_cert_file} with "
            f"{settings.tls_key_file}: {exc}"
        ) from exc
    return context


def handler_args(settings: HttpSettings, logger: PeerErrors) -> dict[str, Any]:
    """The keyword arguments of aiohttp's request handler that apply the edge's limits to the
    requests after a connection's first (keep-alive): the idle deadline, the head's line
    sizes, and the logger of peers' malformed requests."""
    return {
        "keepalive_timeout": settings.idle_timeout_ms / 1000,
        "max_line_size": min(_MAX_LINE_SIZE, settings.max_head_bytes),
        "max_field_size": min(_MAX_FIELD_SIZE, settings.max_head_bytes),
        "max_headers": _MAX_HEADERS,
        # After an answer given before the request's body was read (408, 413, 400), the rest
        # of the body is read and dropped this long, so the peer sees the answer; aiohttp's
        # default (10 s) would be one more way to hold a socket.
        "lingering_time": min(_LINGERING_TIME, settings.body_timeout_ms / 1000),
        "logger": logger,
    }


class PeerErrors(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, except that a peer's malformed request (bad request line,
    bad header, negative ``Content-Length``...) is counted and logged in one line, not as an
    ERROR with a traceback: garbage from the network is not a fault of the node."""

    def __init__(self, logger: logging.Logger, refused: collections.Counter[str]) -> None:
        super().__init__(logger, {})
        self.refused = refused

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self.refused[BAD_REQUEST] += 1
            # aiohttp's message is "Error handling request from %s" with the peer's address.
            peer = args[0] if args else "?"
            self.logger.info("malformed request from %s: %s", peer, exc.message)
            return
        super().exception(msg, *args, **kwargs)


def refusal(status: HTTPStatus) -> bytes:
    """A whole HTTP answer that closes the connection: ``status`` and its phrase."""
    body = status.phrase.encode()
    return (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


class Listener:
    """The node's TCP listener: answers WebSocket handshakes of new sessions itself, hands
    every other connection to aiohttp (see the module's docstring)."""

    def __init__(
        self,
        endpoint: EngineEndpoint,
        http: web.Server,
        settings: HttpSettings,
        refused: collections.Counter[str],
    ) -> None:
        self.endpoint = endpoint
        self.http: Callable[[], asyncio.Protocol] = http  # aiohttp's protocol factory
        self.settings = settings
        #: Connections refused at the edge, by reason.
        self.refused = refused
        #: Connections whose first request has not been seen whole yet.
        self.pending: set[_FirstRequest] = set()
        self._server: asyncio.Server | None = None
        #: Stopped: a connection made from now on (a TLS handshake that was under way at the
        #: stop and ends later) is closed at once, not handed to a stopped aiohttp.
        self.stopped = False

    async def start(
        self, host: str, port: int, backlog: int, tls: ssl.SSLContext | None = None
    ) -> int:
        """Listen on ``host:port`` (TLS with ``tls``); returns the port (the one chosen when
        ``port`` is 0)."""
        loop = asyncio.get_running_loop()
        self._server = server = await loop.create_server(
            lambda: _FirstRequest(self),
            host,
            port,
            reuse_address=True,
            backlog=backlog,
            ssl=tls,
            # A TLS handshake is part of the head: it gets the same deadline.
            ssl_handshake_timeout=self.settings.idle_timeout_ms / 1000 if tls else None,
        )
        return int(server.sockets[0].getsockname()[1]) if server.sockets else port

    def stop(self) -> None:
        """Stop listening and drop the connections that have sent no whole request."""
        self.stopped = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for first in list(self.pending):
            first.drop()


class _FirstRequest(asyncio.Protocol):
    """A new connection, until its first request head is seen whole: then a
    :class:`NodeWebSocket` or aiohttp's own protocol takes the transport over."""

    __slots__ = ("_data", "_lingering", "_listener", "_timer", "_transport")

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._data = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._lingering = False  # refused: what the peer still sends is read and dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not one
        if self._listener.stopped:
            transport.abort()
            return
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # As aiohttp does for every connection it serves.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._listener.pending.add(self)
        seconds = self._listener.settings.idle_timeout_ms / 1000
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._lingering or self._transport is None:
            return
        before = len(self._data)
        head = self._data + data if before else data
        limit = self._listener.settings.max_head_bytes
        # Where the head ends (searched from just before the new bytes, so a head sent a
        # byte at a time costs linear time); a bare-LF head is vouched for by aiohttp.
        start = max(before - 3, 0)
        end = head.find(b"\r\n\r\n", start)
        if end < 0:
            end = head.find(b"\n\n", start)
        if end < 0 or end > limit:
            if len(head) > limit:
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, HEAD_TOO_LARGE)
            else:
                self._data = head
            return
        self._done()
        line = head[: head.find(b"\n")]
        if line.startswith(b"GET ") and b"transport=websocket" in line:
            self._websocket(head)
        else:
            self._hand_over(head)

    def _websocket(self, head: bytes) -> None:
        """A GET asking for the websocket transport: answered here if it is a handshake this
        vouches for (see :meth:`EngineEndpoint.take_websocket`), else handed to aiohttp."""
        transport = self._transport
        assert transport is not None
        parser = HttpRequestParser(
            None,  # no body is ever read here: a request with one goes to aiohttp
            asyncio.get_running_loop(),
            2**16,
            max_line_size=_MAX_LINE_SIZE,
            max_field_size=_MAX_FIELD_SIZE,
            max_headers=_MAX_HEADERS,
        )
        try:
            messages, upgraded, tail = parser.feed_data(head)
        except Exception:  # aiohttp answers a bad request with the right error
            self._hand_over(head)
            return
        if len(messages) != 1 or not upgraded:
            self._hand_over(head)
            return
        try:
            taken = self._listener.endpoint.take_websocket(transport, messages[0][0], tail, head)
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
        """Close the connection (the node is stopping)."""
        self._done()
        if self._transport is not None:
            self._transport.close()

    def _timed_out(self) -> None:
        self._timer = None
        if self._data:  # a head begun and not finished in time
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, HEAD_TIMEOUT)
        else:  # nothing at all: closed without a word, as an idle keep-alive connection is
            self._listener.refused[HEAD_TIMEOUT] += 1
            self.drop()

    def _refuse(self, status: HTTPStatus, reason: str) -> None:
        """Answer ``status`` and close. The close lingers (as aiohttp's and nginx's do): our
        side is shut after the answer, and what the peer still sends is read and dropped for
        a moment, so that the answer is not lost to a reset of a connection closed with
        unread data."""
        self._listener.refused[reason] += 1
        log.debug("connection refused at the edge: %s", reason)
        transport = self._transport
        self._done()
        if transport is None:
            return
        transport.write(refusal(status))
        if not transport.can_write_eof():
            transport.close()  # once what was written is out
            return
        transport.write_eof()
        self._lingering = True
        self._listener.pending.add(self)  # dropped at once if the node stops meanwhile
        self._timer = asyncio.get_running_loop().call_later(_LINGERING_TIME, self.drop)

    def _done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
