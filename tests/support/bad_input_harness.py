"""The offenders of the bad-input tests (``test_bad_input.py``) and the node they offend.

A :class:`Node` runs with small :data:`LIMITS`, records the reason each of its sockets ended
with, and holds two healthy python-socketio clients (one on WebSocket, one on polling) that
must keep working. :class:`RawWebSocket` and :class:`RawPolling` speak raw Engine.IO, so they
can send what no real client would; :func:`assert_closed` checks a session ended where the
reason shows.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import socketio
from aiohttp import WSMsgType

import support.timing as support_timing
from roomcast.node.server import Server
from roomcast.node.sockets import Socket

TIMEOUT = support_timing.TIMEOUT
SEP = "\x1e"  # Engine.IO's polling record separator

#: Small limits so that each one is cheap to reach.
LIMITS: dict[str, Any] = {
    "engineio.max_payload": 4096,
    "limits.max_packets_per_body": 4,
    "limits.max_attachments": 2,
    "limits.max_ack_id": 1000,
    "limits.max_rooms_per_socket": 3,
    "limits.max_namespaces_per_connection": 2,
    "limits.send_buffer_bytes": 64 * 1024,
    "limits.max_buffered_packets": 32,
    "limits.max_pending_handlers": 3,
    "namespaces": {"/": {}, "/a": {}, "/b": {}},
}


def placeholder(num: int) -> dict[str, Any]:
    """A Socket.IO binary placeholder."""
    return {"_placeholder": True, "num": num}


class Node:
    """A node with small limits, the reasons its sockets ended with, and two healthy clients."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.healthy: list[socketio.AsyncClient] = []
        self._reasons: dict[str, asyncio.Future[str]] = {}

    def install(self, server: Server) -> None:
        """Record disconnect reasons on every namespace; add ``echo`` and ``sizes`` handlers."""
        for name in ("/", "/a", "/b"):
            server.of(name).on("disconnect", self._on_disconnect)
        server.on("echo", lambda socket, value=None: value)
        server.on("sizes", lambda socket, *blobs: [len(b) for b in blobs])

    def _future(self, sid: str) -> asyncio.Future[str]:
        if sid not in self._reasons:
            self._reasons[sid] = asyncio.get_running_loop().create_future()
        return self._reasons[sid]

    def _on_disconnect(self, socket: Socket, reason: str) -> None:
        self._future(socket.sid).set_result(reason)

    async def reason(self, sid: str) -> str:
        """Wait for the reason socket ``sid`` was disconnected with."""
        return await asyncio.wait_for(asyncio.shield(self._future(sid)), TIMEOUT)

    async def connect_healthy(self) -> None:
        """Connect the two healthy clients."""
        for transports in (["websocket"], ["polling"]):
            client = socketio.AsyncClient(reconnection=False)
            self.healthy.append(client)
            await client.connect(
                self.server.url, transports=transports, namespaces=["/"], wait_timeout=TIMEOUT
            )

    async def assert_healthy(self) -> None:
        """Both healthy clients are still connected and still get answers."""
        for i, client in enumerate(self.healthy):
            assert client.connected
            assert await client.call("echo", {"n": i}, timeout=TIMEOUT) == {"n": i}
        for client in self.healthy:
            assert client.get_sid("/") in self.server.of("/").sockets


NodeMaker = Callable[..., Awaitable[Node]]


def eio_url(server: Server, transport: str, sid: str | None = None) -> str:
    """The Engine.IO endpoint URL."""
    url = f"{server.url}/socket.io/?EIO=4&transport={transport}"
    return url if sid is None else f"{url}&sid={sid}"


# --- raw clients ----------------------------------------------------------------------------


class RawWebSocket:
    """An Engine.IO client over aiohttp's WebSocket client: sends whatever it is told to."""

    transport = "websocket"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, eio_sid: str) -> None:
        self.ws = ws
        self.eio_sid = eio_sid
        self.sid = ""  # the socket id on "/" once connected

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, server: Server, connect: bool = True
    ) -> RawWebSocket:
        ws = await http.ws_connect(eio_url(server, "websocket"))
        opened = await ws.receive_str(timeout=TIMEOUT)
        assert opened.startswith("0{"), opened
        raw = cls(ws, json.loads(opened[1:])["sid"])
        if connect:
            raw.sid = await raw.connect_namespace("/")
        return raw

    async def connect_namespace(self, name: str) -> str:
        """Send CONNECT for ``name`` and return the socket id from the answer."""
        head = "40" if name == "/" else f"40{name},"
        await self.send(head)
        (reply,) = await self.receive()
        assert reply.startswith(head) and reply.endswith("}"), reply
        return str(json.loads(reply[len(head) :])["sid"])

    async def send(self, *packets: str | bytes) -> int:
        """Send Engine.IO packets, one frame each (bytes as binary frames)."""
        for packet in packets:
            if isinstance(packet, bytes):
                await self.ws.send_bytes(packet)
            else:
                await self.ws.send_str(packet)
        return 200

    async def receive(self) -> list[str]:
        """The next text frame, as a one-packet list (pings are not expected here)."""
        return [await self.ws.receive_str(timeout=TIMEOUT)]

    async def close_frame(self) -> tuple[int | None, str]:
        """Wait for the server's close frame; returns its code and message."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                msg = await self.ws.receive()
                if msg.type is WSMsgType.CLOSE:
                    return msg.data, msg.extra or ""
                if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return self.ws.close_code, ""


class RawPolling:
    """An Engine.IO client over plain HTTP long-polling requests."""

    transport = "polling"

    def __init__(self, http: aiohttp.ClientSession, server: Server, eio_sid: str) -> None:
        self.http = http
        self.url = eio_url(server, "polling", eio_sid)
        self.eio_sid = eio_sid
        self.sid = ""

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, server: Server, connect: bool = True
    ) -> RawPolling:
        async with http.get(eio_url(server, "polling")) as response:
            opened = await response.text()
        assert opened.startswith("0{"), opened
        raw = cls(http, server, json.loads(opened[1:])["sid"])
        if connect:
            raw.sid = await raw.connect_namespace("/")
        return raw

    async def connect_namespace(self, name: str) -> str:
        """Send CONNECT for ``name`` and return the socket id from the answer."""
        head = "40" if name == "/" else f"40{name},"
        assert await self.send(head) == 200
        (reply,) = await self.receive()
        assert reply.startswith(head), reply
        return str(json.loads(reply[len(head) :])["sid"])

    async def post(self, body: bytes | str) -> tuple[int, str]:
        """One POST with ``body`` as it is."""
        data = body.encode() if isinstance(body, str) else body
        async with self.http.post(self.url, data=data) as response:
            return response.status, await response.text()

    async def get(self) -> tuple[int, str]:
        """One GET."""
        async with self.http.get(self.url) as response:
            return response.status, await response.text()

    async def send(self, *packets: str | bytes) -> int:
        """POST the packets in one payload (bytes as ``b`` + base64); returns the status."""
        texts = ["b" + base64.b64encode(p).decode() if isinstance(p, bytes) else p for p in packets]
        status, _ = await self.post(SEP.join(texts))
        return status

    async def receive(self) -> list[str]:
        """The packets of the next GET."""
        status, body = await self.get()
        assert status == 200, body
        return body.split(SEP)


Raw = RawWebSocket | RawPolling
OpenRaw = Callable[..., Awaitable[Raw]]


async def assert_closed(node: Node, raw: Raw, reason: str) -> None:
    """The raw client's session ended with ``reason`` (seen in every place it shows)."""
    if isinstance(raw, RawWebSocket):
        code, message = await raw.close_frame()
        assert (code, message) == (aiohttp.WSCloseCode.POLICY_VIOLATION, reason)
    assert await node.reason(raw.sid) == reason
    assert node.server.stats.closed_by_reason[reason] == 1
    assert raw.eio_sid not in node.server.connections
