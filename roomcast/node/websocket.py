"""The links that carry a session's WebSocket (:class:`WebSocketLink`).

:class:`NodeWebSocket` is the common case. The node answered the opening handshake itself
(:mod:`roomcast.node.endpoint`) and took the TCP transport over as an ``asyncio.Protocol``, so
a live WebSocket costs this object, its :class:`~roomcast.protocol.websocket.FrameReader` and
the transport: no aiohttp request, response, reader queue or handler task is kept for the
session's life, and a message costs a callback, not a task wake-up.

:class:`AiohttpWebSocket` carries a WebSocket whose handshake came on an HTTP connection aiohttp
had already served a request on (a kept-alive connection: only aiohttp can hand that one over),
through aiohttp's ``WebSocketResponse``.

Both call the same two methods of their connection (:class:`LinkOwner`): ``ws_message`` for
each message and ``ws_ended`` when the WebSocket ends without the connection having closed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from roomcast.protocol import reasons
from roomcast.protocol import websocket as wsp

from .stats import NodeStats

#: Seconds a closing handshake may take before the TCP connection is dropped (a close must
#: never hang on a client that does not read).
CLOSE_TIMEOUT = 2.0


class LinkOwner(Protocol):
    """The connection a link delivers to (:class:`~roomcast.node.engine.Connection`)."""

    def ws_message(self, link: WebSocketLink, data: str | bytes) -> None:
        """A message arrived on ``link``."""
        ...

    def ws_ended(
        self, link: WebSocketLink, reason: str = reasons.TRANSPORT_CLOSE, code: int | None = None
    ) -> None:
        """``link`` ended without the connection closing it (``reason``, close ``code``)."""
        ...


class WebSocketLink(Protocol):
    """What carries a session's WebSocket.

    The link calls :meth:`LinkOwner.ws_message` for each message and
    :meth:`LinkOwner.ws_ended` once when the WebSocket ends without the connection having
    closed it.
    """

    @property
    def transport(self) -> asyncio.Transport:
        """The TCP transport: pre-built frames are written straight to it."""
        ...

    def bind(self, conn: LinkOwner) -> None:
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


class NodeWebSocket(asyncio.Protocol):
    """A WebSocket the node reads and writes itself, on the transport of its handshake.

    Open until the connection closes it (:meth:`close`: close frame, then the TCP connection
    is closed when the client answers, or dropped after :data:`CLOSE_TIMEOUT`), the client
    closes it (close frame answered with 1000), a frame breaks the protocol, or the TCP
    connection is lost; the connection is told of the last three with ``ws_ended``.
    """

    __slots__ = ("_close_timer", "_closing", "_conn", "_held", "_reader", "_stats", "transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        max_message_size: int,
        closing: ClosingWebSockets,
        stats: NodeStats,
    ) -> None:
        self.transport = transport
        self._stats = stats  # counts the bytes read
        self._reader = wsp.FrameReader(max_message_size)
        self._conn: LinkOwner | None = None  # None once closing (or closed)
        self._close_timer: asyncio.TimerHandle | None = None
        self._closing = closing  # where this waits out its closing handshake
        self._held = b""  # read before the link was bound

    def write(self, data: bytes) -> None:
        """Write pre-built frames (the transport is this link's own)."""
        self.transport.write(data)

    def hold(self, data: bytes) -> None:
        """Read nothing until :meth:`bind`; ``data`` (read already) is handed over then."""
        self.transport.pause_reading()
        self._held = data

    def bind(self, conn: LinkOwner) -> None:
        """Deliver this WebSocket's messages to ``conn`` from now on."""
        if self.transport.is_closing():  # lost while held
            conn.ws_ended(self)
            return
        self._conn = conn
        held = self._held
        if held:
            self._held = b""
            self.data_received(held)
        self._read()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._stats.ws_bytes_in += len(data)
        for event in self._reader.feed(data):
            if isinstance(event, str | bytes):
                conn = self._conn
                if conn is not None:
                    conn.ws_message(self, event)
            elif isinstance(event, wsp.Ping):
                if self._conn is not None:
                    self.transport.write(wsp.pong_frame(event.payload))
            elif isinstance(event, wsp.CloseReceived):
                self._peer_closed()
            else:  # a frame error: the last event
                conn = self._conn
                if conn is not None:
                    conn.ws_ended(self, event.reason, event.code)  # the connection closes us
                self.close(event.reason, event.code)  # if it has not

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.ws_ended(self)
        self._closing.discard(self)

    # -- WebSocketLink ------------------------------------------------------------------------

    def close(self, reason: str, code: int | None = None) -> None:
        """Send a close frame with ``reason`` (or with ``code`` and no reason, after a frame
        error); the TCP connection is closed when the client answers, or dropped after
        :data:`CLOSE_TIMEOUT`."""
        self._conn = None
        transport = self.transport
        if self._close_timer is not None or transport.is_closing():
            return
        if code is None:
            transport.write(wsp.close_frame(wsp.close_code(reason), reason.encode()))
        else:
            transport.write(wsp.close_frame(code))
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)
        self._closing.add(self)

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        self._conn = None
        self.transport.abort()

    def _read(self) -> None:
        """Resume reading (after :meth:`hold`)."""
        transport = self.transport
        if not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()

    def _peer_closed(self) -> None:
        """The client's close frame: answer it (unless it answers ours), close the TCP
        connection, and tell the connection."""
        transport = self.transport
        if self._close_timer is None and not transport.is_closing():
            transport.write(wsp.close_frame(wsp.CloseCode.OK))
        transport.close()
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.ws_ended(self)


class ClosingWebSockets:
    """The node's own WebSockets (:class:`NodeWebSocket`) in their closing handshake: a
    stopping node waits for them as long as its shutdown grace allows, so that its close
    frames are answered, then drops those left."""

    __slots__ = ("_links", "_waiter")

    def __init__(self) -> None:
        self._links: set[NodeWebSocket] = set()
        self._waiter: asyncio.Future[None] | None = None

    def add(self, link: NodeWebSocket) -> None:
        self._links.add(link)

    def discard(self, link: NodeWebSocket) -> None:
        self._links.discard(link)
        if not self._links and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Return once none is left, or after ``timeout`` seconds (dropping those left)."""
        if self._links:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
            except TimeoutError:
                pass
            finally:
                self._waiter = None
        for link in list(self._links):
            link.abort()


class AiohttpWebSocket:
    """A WebSocket aiohttp reads and writes (see the module's docstring for when)."""

    __slots__ = ("_closing", "_conn", "_spawn", "_stats", "transport", "ws")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        stats: NodeStats,
    ) -> None:
        self.ws = ws
        self._stats = stats  # counts the bytes read (aiohttp reads the frames: their payloads)
        self.transport = transport
        self._spawn = spawn
        self._closing: asyncio.Task[Any] | None = None
        self._conn: LinkOwner | None = None

    def bind(self, conn: LinkOwner) -> None:
        """Deliver this WebSocket's messages to ``conn`` (once :meth:`run` runs)."""
        self._conn = conn

    def write(self, data: bytes) -> None:
        """Write pre-built frames straight to the TCP transport, around aiohttp's writer.

        The one place roomcast writes to a transport aiohttp owns. It relies on what aiohttp's
        ``WebSocketResponse`` does with compression off: it writes each of its own frames
        (pongs, its close frame) whole, in one ``transport.write``, so frames never
        interleave. ``test_websocket_served_by_aiohttp`` (tests/node/test_bad_input.py) fails if
        an aiohttp upgrade changes that, on asyncio's loop and on uvloop.
        """
        self.transport.write(data)

    async def run(self) -> None:
        """Pump the WebSocket's messages into its connection until it ends (run by the
        aiohttp handler, which must not return before the close frame is out)."""
        conn = self._conn
        if conn is not None and self._closing is None:
            await self._pump(conn)
        if self._closing is not None:
            await self._closing

    async def _pump(self, conn: LinkOwner) -> None:
        reason = reasons.TRANSPORT_CLOSE
        ws = self.ws
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._stats.ws_bytes_in += len(msg.data.encode())
                    conn.ws_message(self, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self._stats.ws_bytes_in += len(msg.data)
                    conn.ws_message(self, msg.data)
                elif msg.type is WSMsgType.ERROR:
                    # aiohttp has sent its close frame with the error's code already.
                    code = getattr(ws.exception(), "code", None)
                    reason = (
                        reasons.PAYLOAD_TOO_LARGE
                        if code == wsp.CloseCode.MESSAGE_TOO_BIG
                        else reasons.TRANSPORT_ERROR
                    )
                    break
                if self._closing is not None:
                    break
        finally:
            conn.ws_ended(self, reason)

    def close(self, reason: str, code: int | None = None) -> None:
        """Have aiohttp send the close frame and run the closing handshake."""
        if self._closing is not None or self.ws.closed:
            return
        self._closing = self._spawn(self._close(reason, code))

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        self.transport.abort()

    async def _close(self, reason: str, code: int | None) -> None:
        if code is None:
            code, message = wsp.close_code(reason), reason.encode()
        else:
            message = b""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message), CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            self.transport.abort()
