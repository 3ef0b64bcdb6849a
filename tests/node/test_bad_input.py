"""Bad input closes only the offending session, with a named reason, and the node keeps serving.

The offenders speak raw Engine.IO (aiohttp's WebSocket client, plain HTTP polling requests, or
a bare TCP socket), so they can send what no real client would. Each test observes the reason
where it shows (the WebSocket close frame, the server's ``disconnect`` handler,
``stats.closed_by_reason``) and then checks that two healthy python-socketio clients (one on
WebSocket, one on polling) connected before the offence still round-trip an event.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket as socket_module
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import WSMsgType
from support.bad_input_harness import (
    LIMITS,
    TIMEOUT,
    Node,
    NodeMaker,
    OpenRaw,
    Raw,
    RawPolling,
    RawWebSocket,
    assert_closed,
    eio_url,
    placeholder,
)

from roomcast.node.client import Client
from roomcast.node.server import Server
from roomcast.node.sockets import Socket
from roomcast.node.websocket import AiohttpWebSocket
from roomcast.protocol import reasons

NodeFactory = Callable[..., Awaitable[Server]]  # the ``start_node`` fixture (tests/conftest.py)


@pytest.fixture
async def make_node(start_node: NodeFactory) -> AsyncIterator[NodeMaker]:
    """Start a :class:`Node` (``LIMITS`` plus dotted overrides) with its healthy clients."""
    nodes: list[Node] = []

    async def factory(**overrides: Any) -> Node:
        holder: list[Node] = []

        def setup(server: Server) -> None:
            node = Node(server)
            node.install(server)
            holder.append(node)

        await start_node(setup=setup, **{**LIMITS, **overrides})
        node = holder[0]
        nodes.append(node)
        await node.connect_healthy()
        return node

    yield factory
    for node in nodes:
        for client in node.healthy:
            await asyncio.wait_for(client.disconnect(), TIMEOUT)


@pytest.fixture
async def http(start_node: NodeFactory) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session for raw requests (closed before the nodes stop)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=["websocket", "polling"])
def open_raw(request: pytest.FixtureRequest, http: aiohttp.ClientSession) -> OpenRaw:
    """Open a raw client on the test's transport (``await open_raw(server)``)."""
    kind: type[RawWebSocket] | type[RawPolling] = (
        RawWebSocket if request.param == "websocket" else RawPolling
    )

    async def opener(server: Server, connect: bool = True) -> Raw:
        return await kind.open(http, server, connect)

    return opener


# --- sizes ----------------------------------------------------------------------------------


async def test_websocket_message_over_max_payload(
    make_node: NodeMaker, http: aiohttp.ClientSession
) -> None:
    """A WebSocket message longer than ``engineio.max_payload`` closes that session with code
    1009 and ``payload too large``."""
    node = await make_node()
    raw = await RawWebSocket.open(http, node.server)
    await raw.send("42" + json.dumps(["echo", "x" * 5000]))
    code, _ = await raw.close_frame()
    assert code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert await node.reason(raw.sid) == reasons.PAYLOAD_TOO_LARGE
    assert node.server.stats.closed_by_reason[reasons.PAYLOAD_TOO_LARGE] == 1
    await node.assert_healthy()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_polling_post_over_max_payload(
    make_node: NodeMaker, http: aiohttp.ClientSession, framing: str
) -> None:
    """A polling POST longer than ``engineio.max_payload`` is answered 413 and closes that
    session with ``payload too large``, whether it declares its length or not."""
    node = await make_node()
    raw = await RawPolling.open(http, node.server)
    body = ("42" + json.dumps(["echo", "x" * 5000])).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    data: Any = body if framing == "content-length" else chunks()
    async with http.post(raw.url, data=data) as response:
        assert response.status == 413
    assert await node.reason(raw.sid) == reasons.PAYLOAD_TOO_LARGE
    assert node.server.stats.closed_by_reason[reasons.PAYLOAD_TOO_LARGE] == 1
    assert raw.eio_sid not in node.server.connections
    await node.assert_healthy()


async def test_too_many_packets_per_body(make_node: NodeMaker, http: aiohttp.ClientSession) -> None:
    """A polling body may carry ``limits.max_packets_per_body`` packets; one more closes the
    session with ``too many packets``."""
    node = await make_node()
    raw = await RawPolling.open(http, node.server)
    assert await raw.send(*(f'42{i}["echo",{i}]' for i in range(4))) == 200
    answers: list[str] = []
    while len(answers) < 4:
        answers += await raw.receive()
    assert sorted(answers) == [f"43{i}[{i}]" for i in range(4)]

    assert await raw.send(*(["6"] * 5)) == 400
    await assert_closed(node, raw, reasons.TOO_MANY_PACKETS)
    await node.assert_healthy()


async def test_too_many_attachments(make_node: NodeMaker, open_raw: OpenRaw) -> None:
    """A binary packet may announce ``limits.max_attachments`` attachments; one more closes the
    session with ``too many attachments``."""
    node = await make_node()
    raw = await open_raw(node.server)
    two = json.dumps(["sizes", placeholder(0), placeholder(1)])
    await raw.send(f"452-1{two}", b"abc", b"defgh")
    assert await raw.receive() == ["431[[3,5]]"]

    three = json.dumps(["sizes", placeholder(0), placeholder(1), placeholder(2)])
    await raw.send(f"453-2{three}")
    await assert_closed(node, raw, reasons.TOO_MANY_ATTACHMENTS)
    await node.assert_healthy()


# --- ack ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        pytest.param('42x1["echo",1]', reasons.PARSE_ERROR, id="non-numeric"),
        pytest.param('21001["echo",1]', reasons.INVALID_ACK_ID, id="over-max"),
        pytest.param("2" + "9" * 17 + '["echo",1]', reasons.INVALID_ACK_ID, id="too-long"),
        pytest.param("3[1]", reasons.INVALID_ACK_ID, id="ack-without-id"),
        pytest.param("07{}", reasons.INVALID_ACK_ID, id="id-on-connect"),
    ],
)
async def test_bad_ack_ids(
    make_node: NodeMaker, open_raw: OpenRaw, packet: str, reason: str
) -> None:
    """Ack ids must be decimal, at most ``limits.max_ack_id``, present on ACKs and absent
    elsewhere; otherwise the session closes with a named reason."""
    node = await make_node()
    raw = await open_raw(node.server)
    await raw.send('421000["echo","at the limit"]')
    assert await raw.receive() == ['431000["at the limit"]']

    await raw.send("4" + packet)
    await assert_closed(node, raw, reason)
    await node.assert_healthy()


# --- garbage --------------------------------------------------------------------------------

# (packets, refused by the Engine.IO layer): a polling POST whose body Engine.IO refuses is
# answered 400; Socket.IO garbage inside a valid body is answered 200 (as engine.io does) and
# closes the session all the same.
GARBAGE = [
    pytest.param(["9hello"], True, id="unknown-engineio-type"),
    pytest.param(["5"], True, id="upgrade-on-open-transport"),
    pytest.param(["0"], True, id="open-from-client"),
    pytest.param(["b!!not base64!!"], True, id="bad-base64"),
    pytest.param(["42[oops"], False, id="non-json"),
    pytest.param(['42{"not":"a list"}'], False, id="event-not-a-list"),
    pytest.param(['42["connect"]'], False, id="reserved-event"),
    pytest.param(['47["x"]'], False, id="unknown-socketio-type"),
    pytest.param([b"\x00\x01\x02"], False, id="unexpected-binary"),
    pytest.param(
        ["451-" + json.dumps(["sizes", placeholder(0)]), '42["echo"]'],
        False,
        id="text-while-awaiting-attachment",
    ),
    pytest.param(
        ["451-" + json.dumps(["sizes", placeholder(3)]), b"x"],
        False,
        id="placeholder-out-of-range",
    ),
]


@pytest.mark.parametrize(("packets", "engine_level"), GARBAGE)
async def test_garbage_packets(
    make_node: NodeMaker, open_raw: OpenRaw, packets: list[str | bytes], engine_level: bool
) -> None:
    """Undecodable or out-of-place packets close the session with ``parse error``."""
    node = await make_node()
    raw = await open_raw(node.server)
    status = await raw.send(*packets)
    if isinstance(raw, RawPolling):
        assert status == (400 if engine_level else 200)
    await assert_closed(node, raw, reasons.PARSE_ERROR)
    await node.assert_healthy()


async def test_invalid_utf8_post(make_node: NodeMaker, http: aiohttp.ClientSession) -> None:
    """A polling body that is not UTF-8 is answered 400 and closes the session with
    ``parse error``."""
    node = await make_node()
    raw = await RawPolling.open(http, node.server)
    status, _ = await raw.post(b'42["echo","\xff\xfe"]')
    assert status == 400
    await assert_closed(node, raw, reasons.PARSE_ERROR)
    await node.assert_healthy()


async def test_invalid_utf8_websocket_text(
    make_node: NodeMaker, http: aiohttp.ClientSession
) -> None:
    """A WebSocket text frame that is not UTF-8 ends the session with ``transport error``."""
    node = await make_node()
    raw = await RawWebSocket.open(http, node.server)
    await raw.ws.send_frame(b'42["echo","\xff\xfe"]', WSMsgType.TEXT)
    code, _ = await raw.close_frame()
    assert code == aiohttp.WSCloseCode.INVALID_TEXT
    assert await node.reason(raw.sid) == reasons.TRANSPORT_ERROR
    await node.assert_healthy()


# --- rooms and namespaces -------------------------------------------------------------------


async def test_too_many_rooms(make_node: NodeMaker, open_raw: OpenRaw) -> None:
    """A socket may be in ``limits.max_rooms_per_socket`` rooms besides its own; a join past
    that closes the session with ``too many rooms``."""
    node = await make_node()
    raw = await open_raw(node.server)
    await raw.send('421["join",["a","b","c"]]')
    assert await raw.receive() == ['431[{"ok":true,"rooms":["a","b","c"]}]']
    await raw.send('422["join","d"]')
    await assert_closed(node, raw, reasons.TOO_MANY_ROOMS)
    assert node.server.of("/").rooms() == {}
    await node.assert_healthy()


async def test_too_many_pending_handlers(make_node: NodeMaker, open_raw: OpenRaw) -> None:
    """A socket may have ``limits.max_pending_handlers`` async handlers running; one more
    event for an async handler closes the session with ``too many pending handlers``."""
    node = await make_node()
    release = asyncio.Event()
    started: list[int] = []

    async def slow(socket: Socket, n: int) -> int:
        started.append(n)
        await release.wait()
        return n

    node.server.of("/").on("slow", slow)
    raw = await open_raw(node.server)
    for n in range(3):
        await raw.send(f'42{n}["slow",{n}]')
    await raw.send('42["slow",3]')
    await assert_closed(node, raw, reasons.TOO_MANY_PENDING_HANDLERS)
    assert started == [0, 1, 2]
    release.set()
    await node.assert_healthy()


async def test_too_many_namespaces(make_node: NodeMaker, open_raw: OpenRaw) -> None:
    """A connection may join ``limits.max_namespaces_per_connection`` namespaces; one more
    closes it with ``too many namespaces``."""
    node = await make_node()
    raw = await open_raw(node.server)
    a_sid = await raw.connect_namespace("/a")
    await raw.send("40/b,")
    await assert_closed(node, raw, reasons.TOO_MANY_NAMESPACES)
    assert await node.reason(a_sid) == reasons.TOO_MANY_NAMESPACES
    assert node.server.of("/b").sockets == {}
    await node.assert_healthy()


async def test_second_connect_to_a_namespace(make_node: NodeMaker, open_raw: OpenRaw) -> None:
    """A CONNECT for a namespace the connection is already in closes it with ``duplicate
    connect`` (its socket there disconnects with that reason)."""
    node = await make_node()
    raw = await open_raw(node.server)
    a_sid = await raw.connect_namespace("/a")
    await raw.send("40/a,")
    await assert_closed(node, raw, reasons.DUPLICATE_CONNECT)
    assert await node.reason(a_sid) == reasons.DUPLICATE_CONNECT
    await node.assert_healthy()


@pytest.mark.parametrize("packet", ['42/elsewhere,["x"]', '43/elsewhere,1["x"]', "41/elsewhere,"])
async def test_packet_for_a_namespace_not_connected(
    make_node: NodeMaker, open_raw: OpenRaw, packet: str
) -> None:
    """An EVENT, ACK or DISCONNECT for a namespace the client never connected closes the
    connection with ``namespace not connected``."""
    node = await make_node()
    raw = await open_raw(node.server)
    await raw.send(packet)
    await assert_closed(node, raw, reasons.NAMESPACE_NOT_CONNECTED)
    await node.assert_healthy()


async def test_packets_after_a_server_disconnect_are_dropped_and_counted(
    make_node: NodeMaker, open_raw: OpenRaw
) -> None:
    """An event for a namespace the server has just disconnected is late, not an offence:
    dropped and counted; the connection and its other namespaces carry on."""
    node = await make_node()
    raw = await open_raw(node.server)
    a_sid = await raw.connect_namespace("/a")
    socket = node.server.of("/a").sockets[a_sid]
    socket.disconnect()
    before = node.server.stats.late_packets
    await raw.send('42/a,["echo","late"]', '427["echo","still here"]')
    received: list[str] = []
    while '437["still here"]' not in received:
        received += await raw.receive()
    assert received == ["41/a,", '437["still here"]']
    assert node.server.stats.late_packets == before + 1
    assert raw.eio_sid in node.server.connections
    await node.assert_healthy()


async def test_too_many_namespaces_in_one_burst(
    make_node: NodeMaker, http: aiohttp.ClientSession
) -> None:
    """CONNECTs sent together, before any is answered, count against the namespace limit."""
    node = await make_node()
    raw = await RawPolling.open(http, node.server)
    assert await raw.send("40/a,", "40/b,") == 200
    assert await node.reason(raw.sid) == reasons.TOO_MANY_NAMESPACES
    assert node.server.of("/a").sockets == {}
    assert node.server.of("/b").sockets == {}
    assert raw.eio_sid not in node.server.connections
    await node.assert_healthy()


# --- slow and silent clients ----------------------------------------------------------------


def _masked_text_frame(text: str) -> bytes:
    """A client-to-server WebSocket text frame (RFC 6455 §5.3: clients mask)."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


async def _read_server_frame(reader: asyncio.StreamReader) -> str:
    """One unmasked server-to-client text frame."""
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return (await reader.readexactly(n)).decode()


async def test_client_that_stops_reading(make_node: NodeMaker) -> None:
    """A WebSocket client that stops reading is closed with ``send buffer full`` once its
    send buffer passes ``limits.send_buffer_bytes``; volatile messages to it are dropped
    first, and nobody else is affected."""
    node = await make_node()
    server = node.server
    # A bare TCP WebSocket client with a tiny receive window that will stop reading.
    sock = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_STREAM)
    sock.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(TIMEOUT):
            status_line = await reader.readuntil(b"\r\n\r\n")
            assert status_line.startswith(b"HTTP/1.1 101")
            opened = await _read_server_frame(reader)
            eio_sid = json.loads(opened[1:])["sid"]
            writer.write(_masked_text_frame("40"))
            sid = json.loads((await _read_server_frame(reader))[2:])["sid"]
            writer.write(_masked_text_frame('421["join","slow"]'))
            assert await _read_server_frame(reader) == '431[{"ok":true,"rooms":["slow"]}]'
        conn = server.connections[eio_sid]
        # From here on the client reads nothing. Flood its room (only its room: the healthy
        # clients live in the same event loop and must not be flooded).
        ns = server.of("/")
        chunk = "x" * 16 * 1024
        dropped_before = server.stats.volatile_dropped
        for i in range(10_000):
            if conn.closed:
                break
            ns.to("slow").emit("flood", i, chunk)
            ns.to("slow").volatile.emit("tick", i)
            await asyncio.sleep(0)  # let the transport try to flush
        assert conn.closed
        assert await node.reason(sid) == reasons.SEND_BUFFER_FULL
        assert server.stats.closed_by_reason[reasons.SEND_BUFFER_FULL] == 1
        assert server.stats.volatile_dropped > dropped_before
        await node.assert_healthy()
    finally:
        writer.close()


async def test_polling_client_that_stops_polling(
    make_node: NodeMaker, http: aiohttp.ClientSession
) -> None:
    """A polling client that stops sending GETs is closed with ``send buffer full`` once
    ``limits.max_buffered_packets`` packets wait for it."""
    node = await make_node()
    raw = await RawPolling.open(http, node.server)
    assert await raw.send('421["join","slow"]') == 200
    assert await raw.receive() == ['431[{"ok":true,"rooms":["slow"]}]']
    ns = node.server.of("/")
    for i in range(33):
        ns.to("slow").emit("flood", i)
    assert await node.reason(raw.sid) == reasons.SEND_BUFFER_FULL
    assert node.server.stats.closed_by_reason[reasons.SEND_BUFFER_FULL] == 1
    assert raw.eio_sid not in node.server.connections
    await node.assert_healthy()


async def test_client_that_never_answers_pings(
    make_node: NodeMaker, http: aiohttp.ClientSession
) -> None:
    """A client that does not answer PING within the ping timeout is closed with ``ping
    timeout`` while clients that answer stay."""
    node = await make_node(**{"engineio.ping_interval_ms": 100, "engineio.ping_timeout_ms": 150})
    raw = await RawWebSocket.open(http, node.server)
    async with asyncio.timeout(TIMEOUT):
        while True:
            msg = await raw.ws.receive()
            if msg.type is not WSMsgType.TEXT:
                break
            assert msg.data == "2"  # PINGs, unanswered
    assert msg.type is WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (aiohttp.WSCloseCode.OK, reasons.PING_TIMEOUT)
    assert await node.reason(raw.sid) == reasons.PING_TIMEOUT
    await node.assert_healthy()


async def test_client_that_never_connects_a_namespace(
    make_node: NodeMaker, http: aiohttp.ClientSession
) -> None:
    """An Engine.IO session that connects no namespace in time is closed with ``connect
    timeout``."""
    node = await make_node(**{"engineio.connect_timeout_ms": 200})
    raw = await RawWebSocket.open(http, node.server, connect=False)
    assert await raw.close_frame() == (
        aiohttp.WSCloseCode.POLICY_VIOLATION,
        reasons.CONNECT_TIMEOUT,
    )
    assert node.server.stats.closed_by_reason[reasons.CONNECT_TIMEOUT] == 1
    await node.assert_healthy()


async def test_connect_deadline_survives_a_timer_that_fires_early(
    make_node: NodeMaker, http: aiohttp.ClientSession
) -> None:
    """A loop may run a timer before its time (uvloop rounds to milliseconds): the connect
    deadline is then armed again, and the session still goes at its deadline."""
    node = await make_node(**{"engineio.connect_timeout_ms": 300})
    raw = await RawWebSocket.open(http, node.server, connect=False)
    client = node.server.sessions.live[raw.eio_sid].client
    assert isinstance(client, Client)
    assert client._timer is not None
    client._timer.cancel()
    client._on_timer()  # what an early timer does: runs before the deadline
    assert await raw.close_frame() == (
        aiohttp.WSCloseCode.POLICY_VIOLATION,
        reasons.CONNECT_TIMEOUT,
    )
    await node.assert_healthy()


# --- sessions -------------------------------------------------------------------------------


async def test_unknown_sid(make_node: NodeMaker, http: aiohttp.ClientSession) -> None:
    """Requests for a session id the node does not know are refused and close nothing."""
    node = await make_node()
    server = node.server
    for method in ("GET", "POST"):
        async with http.request(method, eio_url(server, "polling", "nope"), data="6") as r:
            assert r.status == 400
            assert await r.json() == {"code": 1, "message": "Session ID unknown"}
    ws = await http.ws_connect(eio_url(server, "websocket", "nope"))
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE
    assert msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert sum(server.stats.closed_by_reason.values()) == 0
    assert len(server.connections) == 2
    await node.assert_healthy()


async def test_duplicate_polling_get(make_node: NodeMaker, http: aiohttp.ClientSession) -> None:
    """A second GET while one is pending is refused with 400, the pending one gets CLOSE, and
    the session ends with ``duplicate poll``."""
    node = await make_node()
    raw = await RawPolling.open(http, node.server)
    # Nothing is queued, so whichever GET arrives first waits and the other one is the
    # duplicate.
    results = await asyncio.wait_for(asyncio.gather(raw.get(), raw.get()), TIMEOUT)
    assert sorted(status for status, _ in results) == [200, 400]
    assert [body for status, body in results if status == 200] == ["1"]
    assert await node.reason(raw.sid) == reasons.DUPLICATE_POLL
    assert node.server.stats.closed_by_reason[reasons.DUPLICATE_POLL] == 1
    await node.assert_healthy()


async def test_failed_upgrade_keeps_polling_session(
    make_node: NodeMaker, http: aiohttp.ClientSession
) -> None:
    """A WebSocket that botches the upgrade handshake is closed, and the polling session it
    tried to upgrade keeps working."""
    node = await make_node()
    raw = await RawPolling.open(http, node.server)
    ws = await http.ws_connect(eio_url(node.server, "websocket", raw.eio_sid))
    await ws.send_str("hello")
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE
    assert msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert await raw.send('421["echo","still here"]') == 200
    assert await raw.receive() == ['431["still here"]']
    assert sum(node.server.stats.closed_by_reason.values()) == 0
    await node.assert_healthy()


# --- the WebSocket aiohttp serves, and the loops --------------------------------------------


async def test_websocket_served_by_aiohttp(
    make_node: NodeMaker, http: aiohttp.ClientSession
) -> None:
    """A WebSocket handshake the node's listener leaves to aiohttp (here: it names a
    sub-protocol) is served through aiohttp's WebSocketResponse, while roomcast writes its
    frames straight to the transport (AiohttpWebSocket.write). They must reach the client
    intact, and bad input must close it with 1008 and the named reason. This fails if an
    aiohttp upgrade changes how it writes to a transport it owns."""
    node = await make_node()
    ws = await http.ws_connect(eio_url(node.server, "websocket"), protocols=("chat",))
    opened = await ws.receive_str(timeout=TIMEOUT)
    assert opened.startswith("0{"), opened
    raw = RawWebSocket(ws, json.loads(opened[1:])["sid"])
    link = node.server.connections[raw.eio_sid]._ws
    assert isinstance(link, AiohttpWebSocket)
    raw.sid = await raw.connect_namespace("/")
    for i in range(20):  # several end-of-pass flushes, each a direct transport write
        await raw.send(f'42{i}["echo",{i}]')
        assert await raw.receive() == [f"43{i}[{i}]"]
    await raw.send("42[oops")
    await assert_closed(node, raw, reasons.PARSE_ERROR)
    await node.assert_healthy()


async def test_each_test_here_runs_on_the_loop_it_names(request: pytest.FixtureRequest) -> None:
    """The ``[uvloop]`` variants really run on uvloop (guards the parametrisation)."""
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert on_uvloop == ("uvloop" in request.node.name)
