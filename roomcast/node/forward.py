"""Any node serves any request of any session: what reaches the wrong node is forwarded.

An Engine.IO sid starts with the tag of the node that holds the session
(:func:`roomcast.ids.tag_of_engine_sid`), and every node knows every live node's address from
its membership replica (:meth:`Adapter.node_address`). So a load balancer needs no affinity:

* a polling GET or POST for a session of another live node is **forwarded** there over HTTP
  and its answer (status, content type, body) given back; a long-poll waits through the
  forward; the body is read here within ``http.body_timeout_ms`` (else ``408``, as the owner
  would answer) and ``max_payload`` (one byte more goes on, so the owner answers as it would
  have: 413), and the owner applies its limits again;
* a WebSocket handshake for such a session (an upgrade from polling) is **spliced** to the
  owner: the node opens a TCP connection to it, replays the handshake, and pipes bytes both
  ways for the life of the connection (:class:`Splice`), or, for a handshake aiohttp already
  parsed (a kept-alive connection), relays its messages (:meth:`Forwarder.websocket`). The
  session stays where it is: nothing of it moves, so nothing can be lost or reordered.
* an unknown sid, one of this node, or one whose node is down or does not answer, gets the
  official ``400 {"code":1,"message":"Session ID unknown"}``: clients reconnect as they do.

A forwarded request carries ``X-Roomcast-Forwarded``: the owner never forwards it again.
Counters: ``forwarded_requests``, ``forwarded_bytes`` (both directions), ``forward_failed``,
``spliced_websockets``; a gauge: ``forwards_in_flight``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

import aiohttp
from aiohttp import WSMsgType, web

from roomcast.ids import NodeTag, tag_of_engine_sid
from roomcast.protocol import engineio as eio

from .polling import body_timeout, http_error
from .stats import NodeStats

log = logging.getLogger("roomcast.node")

#: The header of a forwarded request (its value: the forwarding node's id).
FORWARDED: str = "X-Roomcast-Forwarded"


class Forwarder:
    """Forwards requests for other nodes' sessions (see the module's docstring)."""

    def __init__(
        self,
        node_id: str,
        node_address: Callable[[NodeTag], str | None],
        stats: NodeStats,
        *,
        max_payload: int,
        body_timeout: float,
        poll_timeout: float,
        ca_file: str = "",
    ) -> None:
        self.node_id = node_id
        self._node_address = node_address
        self.stats = stats
        self.max_payload = max_payload
        self.body_timeout = body_timeout
        #: How long a forwarded long-poll may wait for the owner's answer.
        self.poll_timeout = poll_timeout
        self._tls = ssl.create_default_context(cafile=ca_file or None)
        self._http: aiohttp.ClientSession | None = None
        self._idle = asyncio.Event()  # set while no polling request is being forwarded
        self._idle.set()
        #: The WebSockets this node splices or relays for other nodes' sessions: each one's
        #: close (a draining node closes them with its own connections, spread over its window).
        self._bridges: dict[object, Callable[[], None]] = {}

    def owner(self, sid: str, headers: Mapping[str, str] | None = None) -> str | None:
        """The base URL of the other live node that holds session ``sid``; None when this
        node must answer itself (its own sid, an unknown or dead node, a request that was
        forwarded already)."""
        if headers is not None and FORWARDED in headers:
            return None
        tag = tag_of_engine_sid(sid)
        return None if tag is None else self._node_address(tag)

    async def settled(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, until no polling request is being forwarded (a
        stopping node lets the long-polls of other nodes' clients that went through it get
        their answers, rather than cutting them); whether none is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self._idle.is_set()

    def bridges(self) -> list[Callable[[], None]]:
        """A closer for each WebSocket this node splices or relays to its session's node
        now: its client reconnects, as one of this node's own connections does."""
        return list(self._bridges.values())

    async def close(self) -> None:
        """Close the HTTP client (at the node's stop)."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                # No connection limit (aiohttp's default is 100): each forwarded long-poll holds
                # a connection for up to a ping interval, and a POST must never queue behind
                # them. What is in flight is bounded by the requests this node accepted.
                connector=aiohttp.TCPConnector(ssl=self._tls, limit=0),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._http

    # -- polling ------------------------------------------------------------------------------

    async def polling(self, request: web.Request, owner: str) -> web.StreamResponse:
        """Forward one polling GET or POST to ``owner`` and answer with what it answers."""
        body: bytes | None = None
        if request.method == "POST":
            try:
                body = await self._read_body(request)
            except TimeoutError:
                # As the owner answers a body that does not arrive in time; the owner never
                # saw the request, so its session lives on until the client reconnects or
                # its heartbeat deadline passes.
                return body_timeout(self.stats)
        headers = {FORWARDED: self.node_id}
        content_type = request.headers.get("Content-Type")
        if content_type is not None:
            headers["Content-Type"] = content_type
        timeout = aiohttp.ClientTimeout(
            total=self.poll_timeout if request.method == "GET" else self.body_timeout
        )
        self.stats.forwards_in_flight += 1
        self._idle.clear()
        try:
            async with self._client().request(
                request.method,
                owner + request.rel_url.path_qs,
                data=None if body is None else io.BytesIO(body),
                headers=headers,
                timeout=timeout,
            ) as answer:
                data = await answer.read()
                status = answer.status
                answer_type = answer.headers.get("Content-Type", "text/plain; charset=UTF-8")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.forward_failed += 1
            log.info("forward of %s to %s failed: %r", request.rel_url, owner, exc)
            return http_error(eio.UNKNOWN_SID)
        finally:
            self.stats.forwards_in_flight -= 1
            if not self.stats.forwards_in_flight:
                self._idle.set()
        self.stats.forwarded_requests += 1
        self.stats.forwarded_bytes += len(body or b"") + len(data)
        return web.Response(status=status, body=data, headers={"Content-Type": answer_type})

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, read within the body deadline; at most ``max_payload`` + 1 bytes (the
        owner refuses a body over its limit as it would have refused it directly)."""
        limit = self.max_payload + 1
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self.body_timeout):
            async for chunk in request.content.iter_any():
                chunks.append(chunk)
                size += len(chunk)
                if size >= limit:
                    break
        return b"".join(chunks)[:limit]

    # -- WebSocket ----------------------------------------------------------------------------

    async def splice(self, client: asyncio.Transport, head: bytes, owner: str) -> None:
        """Connect to ``owner``, replay the handshake ``head`` (and whatever followed it), and
        pipe bytes both ways until either side closes. ``client`` reads nothing meanwhile;
        if the owner cannot be reached, the client gets the official 400."""
        client.pause_reading()
        parts = urlsplit(owner)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        loop = asyncio.get_running_loop()
        to_client = _Pipe(self.stats)
        try:
            async with asyncio.timeout(self.body_timeout):
                upstream, _ = await loop.create_connection(
                    lambda: to_client,
                    parts.hostname or "127.0.0.1",
                    port,
                    ssl=self._tls if secure else None,
                )
        except (OSError, TimeoutError) as exc:
            self.stats.forward_failed += 1
            log.info("splice to %s failed: %r", owner, exc)
            answer = http_error(eio.UNKNOWN_SID)
            assert isinstance(answer.body, bytes)
            client.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(answer.body) + answer.body
            )
            client.close()
            return
        to_upstream = _Pipe(self.stats, lambda: self._bridges.pop(client, None))
        to_upstream.connect(client, upstream)
        to_client.connect(upstream, client)
        client.set_protocol(to_upstream)
        self._bridges[client] = client.close  # the pipes close the other side
        self.stats.spliced_websockets += 1
        upstream.write(_mark_forwarded(head, self.node_id))
        client.resume_reading()

    async def websocket(self, request: web.Request, owner: str) -> web.StreamResponse:
        """A WebSocket handshake aiohttp parsed (on a kept-alive connection) for a session of
        ``owner``: its messages are relayed to a WebSocket opened to the owner."""
        url = owner.replace("http", "ws", 1) + request.rel_url.path_qs
        try:
            upstream = await self._client().ws_connect(
                url,
                headers={FORWARDED: self.node_id},
                max_msg_size=self.max_payload,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.body_timeout),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.forward_failed += 1
            log.info("WebSocket forward to %s failed: %r", owner, exc)
            return http_error(eio.UNKNOWN_SID)
        ws = web.WebSocketResponse(max_msg_size=self.max_payload, compress=False, autoping=True)
        await ws.prepare(request)
        self.stats.spliced_websockets += 1
        loop = asyncio.get_running_loop()
        self._bridges[ws] = lambda: loop.create_task(ws.close()).add_done_callback(_done)

        async def relay(
            source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        ) -> None:
            async for msg in source:
                if msg.type is WSMsgType.TEXT:
                    await sink.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await sink.send_bytes(msg.data)
                else:
                    break
                self.stats.forwarded_bytes += len(msg.data)

        try:
            _, pending = await asyncio.wait(
                (
                    asyncio.ensure_future(relay(ws, upstream)),
                    asyncio.ensure_future(relay(upstream, ws)),
                ),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._bridges.pop(ws, None)
            await upstream.close()
            await ws.close()
        return ws


def _done(task: asyncio.Task[bool]) -> None:
    if not task.cancelled():
        task.exception()  # a close that failed: the connection is gone anyway


def _mark_forwarded(head: bytes, node_id: str) -> bytes:
    """``head`` (a request head, maybe followed by more bytes) with the forwarded header added
    as its last header."""
    end = head.find(b"\r\n\r\n")
    if end < 0:  # a bare-LF head: not spliced (the listener hands those to aiohttp)
        return head
    line = f"\r\n{FORWARDED}: {node_id}".encode()
    return head[:end] + line + head[end:]


class _Pipe(asyncio.Protocol):
    """One direction of a splice: what its transport (the source) receives is written to the
    sink. Flow control both ways: when the source's own write buffer fills (the other
    direction's data is not leaving), the sink stops being read until it drains; either end
    closing closes the other."""

    __slots__ = ("_ended", "_sink", "_source", "_stats")

    def __init__(self, stats: NodeStats, ended: Callable[[], object] | None = None) -> None:
        self._stats = stats
        self._ended = ended  # called once its source is lost
        self._source: asyncio.Transport | None = None
        self._sink: asyncio.Transport | None = None

    def connect(self, source: asyncio.BaseTransport, sink: asyncio.BaseTransport) -> None:
        """Read ``source`` into ``sink`` from now on."""
        self._source = cast(asyncio.Transport, source)
        self._sink = cast(asyncio.Transport, sink)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # the transports are handed over by Forwarder.splice

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None and not sink.is_closing():
            sink.write(data)
            self._stats.forwarded_bytes += len(data)

    def pause_writing(self) -> None:
        if self._sink is not None and not self._sink.is_closing():
            self._sink.pause_reading()

    def resume_writing(self) -> None:
        if self._sink is not None and not self._sink.is_closing():
            self._sink.resume_reading()

    def eof_received(self) -> bool | None:
        if self._sink is not None and self._sink.can_write_eof():
            self._sink.write_eof()
            return True  # keep this side open: the other direction may still flow
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sink is not None:
            self._sink.close()
        self._sink = self._source = None
        if self._ended is not None:
            self._ended()
            self._ended = None
