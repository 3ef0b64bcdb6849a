"""Integration tests with python-socketio's ``AsyncClient``, a client nobody here wrote.

Here: connecting and namespaces, server-side operations on sockets (fetch, join and leave,
disconnect), disconnect reasons, heartbeats and ``/health``. Rooms, broadcasts, acks and
payloads are in ``test_python_client_messaging.py``; the fixtures and helpers (every test runs
on each transport) in ``python_client_harness.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import aiohttp
import pytest
import socketio.exceptions
from support.python_client_harness import (
    TIMEOUT,
    Connect,
    Inbox,
    NodeFactory,
    Reasons,
    barrier,
    connect_fixture,  # noqa: F401 (a fixture, taken as ``connect``)
    join,
    sid_of,
    transport_fixture,  # noqa: F401 (a fixture, taken as ``transport``)
)

from roomcast.errors import ConnectRefusedError
from roomcast.node.server import Server
from roomcast.node.sockets import Socket
from roomcast.protocol import reasons

# --- connecting and namespaces -------------------------------------------------------------


async def test_connects_on_each_transport(start_node: NodeFactory, connect: Connect) -> None:
    """A client connects to the root namespace and the node sees its socket on the transport."""
    server: Server = await start_node()
    client = await connect(server)
    sid = sid_of(client)
    assert set(server.of("/").sockets) == {sid}
    (conn,) = server.connections.values()
    assert conn.transport_name == client.transport()
    assert await client.call("join", "lobby", timeout=TIMEOUT) == {"ok": True, "rooms": ["lobby"]}


async def test_custom_namespaces_are_isolated(start_node: NodeFactory, connect: Connect) -> None:
    """A message to a room of one namespace never reaches the same room name in another."""
    server: Server = await start_node(**{"namespaces": {"/": {}, "/chat": {}}})
    inbox = Inbox()
    both = await connect(
        server,
        namespaces=["/", "/chat"],
        namespace_on={
            ("news", "/"): inbox.handler("both", "root-news"),
            ("news", "/chat"): inbox.handler("both", "chat-news"),
        },
    )
    root_only = await connect(server, on={"news": inbox.handler("root", "root-news")})
    sender = await connect(server, namespaces=["/chat"])
    await join(both, "r", namespace="/")
    await join(both, "r", namespace="/chat")
    await join(root_only, "r")
    await join(sender, "r", namespace="/chat")

    ack = await sender.call(
        "publish", {"room": "r", "event": "news", "data": 1}, namespace="/chat", timeout=TIMEOUT
    )
    assert ack == {"ok": True}
    assert await inbox.wait("both", "chat-news") == [(1,)]
    await barrier(both, "/")
    await barrier(root_only)
    assert inbox.got("both", "root-news") == []
    assert inbox.got("root", "root-news") == []
    # One connection carries both namespaces.
    assert len(server.connections) == 3
    assert sid_of(both, "/") in server.of("/").sockets
    assert sid_of(both, "/chat") in server.of("/chat").sockets


async def test_unknown_namespace_is_refused(start_node: NodeFactory, connect: Connect) -> None:
    """Connecting to a namespace that does not exist fails with ``Invalid namespace``."""
    server: Server = await start_node()
    errors: list[Any] = []
    with pytest.raises(socketio.exceptions.ConnectionError, match="/nope"):
        await connect(
            server, namespaces=["/nope"], namespace_on={("connect_error", "/nope"): errors.append}
        )
    assert errors == [{"message": "Invalid namespace"}]
    assert "/nope" not in {ns.name for ns in server.namespaces()}
    # The node still accepts a client on a namespace that exists.
    await connect(server)


async def test_dynamic_namespace_from_regex(start_node: NodeFactory, connect: Connect) -> None:
    """A regex namespace creates matching namespaces on demand, with the parent's handlers
    and middleware, and refuses names that do not match."""
    seen_by_middleware: list[str] = []

    def setup(server: Server) -> None:
        dyn = server.of(re.compile(r"/game-\d+"))
        dyn.use(lambda socket, auth: seen_by_middleware.append(socket.namespace.name))
        dyn.on("where", lambda socket: socket.namespace.name)

    server: Server = await start_node(setup=setup)
    client = await connect(server, namespaces=["/game-7", "/game-42"])
    assert await client.call("where", namespace="/game-7", timeout=TIMEOUT) == "/game-7"
    assert await client.call("where", namespace="/game-42", timeout=TIMEOUT) == "/game-42"
    assert sorted(seen_by_middleware) == ["/game-42", "/game-7"]

    errors: list[Any] = []
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(
            server,
            namespaces=["/game-x"],
            namespace_on={("connect_error", "/game-x"): errors.append},
        )
    assert errors == [{"message": "Invalid namespace"}]


async def test_dynamic_namespace_children_come_and_go(
    start_node: NodeFactory, connect: Connect
) -> None:
    """An empty dynamic child is removed, and the app naming it again gets a child of the
    same parent: its middleware still guards it."""
    refused: list[str] = []

    def guard(socket: Any, auth: Any) -> None:
        if auth.get("token") != "ok":
            refused.append(socket.namespace.name)
            raise ConnectRefusedError("unauthorized")

    def setup(server: Server) -> None:
        server.of(re.compile(r"/game-\d+")).use(guard)

    server: Server = await start_node(setup=setup)
    client = await connect(server, namespaces=["/game-1"], auth={"token": "ok"})
    assert server.namespace("/game-1") is not None
    gone = asyncio.Event()
    server.of("/game-1").on("disconnect", lambda *_: gone.set())
    await client.disconnect()
    await asyncio.wait_for(gone.wait(), TIMEOUT)
    assert server.namespace("/game-1") is None  # the empty child was removed

    again = server.of("/game-1")  # the app names it (say, to emit to it)
    assert again.parent is not None
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(server, namespaces=["/game-1"])
    assert refused == ["/game-1"]


async def test_middleware_refusal_carries_message_and_data(
    start_node: NodeFactory, connect: Connect
) -> None:
    """A middleware's ConnectRefusedError reaches the client as CONNECT_ERROR with message
    and data, and a client it accepts connects."""
    seen: list[Any] = []

    def gate(socket: Socket, auth: Any) -> None:
        seen.append(auth)
        if auth.get("token") != "sesame":
            raise ConnectRefusedError("not allowed", {"hint": "say the word"})

    def setup(server: Server) -> None:
        ns = server.of("/private")
        ns.use(gate)
        ns.on("hello", lambda socket: "welcome")

    server: Server = await start_node(setup=setup)
    errors: list[Any] = []
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(
            server,
            namespaces=["/private"],
            auth={"token": "wrong"},
            namespace_on={("connect_error", "/private"): errors.append},
        )
    assert errors == [{"message": "not allowed", "data": {"hint": "say the word"}}]
    assert server.of("/private").sockets == {}

    client = await connect(server, namespaces=["/private"], auth={"token": "sesame"})
    assert await client.call("hello", namespace="/private", timeout=TIMEOUT) == "welcome"
    assert seen == [{"token": "wrong"}, {"token": "sesame"}]


# --- server-side operations -----------------------------------------------------------------


async def test_fetch_sockets(start_node: NodeFactory, connect: Connect) -> None:
    """``in_(room).fetch_sockets()`` describes exactly the room's sockets."""
    server: Server = await start_node()
    a = await connect(server, auth={"name": "a"})
    b = await connect(server, auth={"name": "b"})
    outsider = await connect(server)
    await join(a, "r")
    await join(b, "r", "s")

    infos = {info.id: info for info in await server.of("/").in_("r").fetch_sockets()}
    assert set(infos) == {sid_of(a), sid_of(b)}
    assert infos[sid_of(a)].rooms == {sid_of(a), "r"}
    assert infos[sid_of(b)].rooms == {sid_of(b), "r", "s"}
    handshake = infos[sid_of(a)].handshake
    assert handshake is not None
    assert handshake.auth == {"name": "a"}
    assert {info.node for info in infos.values()} == {server.node_id}
    everyone = await server.of("/").fetch_sockets()
    assert {info.id for info in everyone} == {sid_of(a), sid_of(b), sid_of(outsider)}


async def test_sockets_join_and_leave(start_node: NodeFactory, connect: Connect) -> None:
    """``sockets_join``/``sockets_leave`` change the targeted sockets' rooms, and broadcasts
    follow."""
    server: Server = await start_node()
    ns = server.of("/")
    inbox = Inbox()
    a = await connect(server, on={"vip": inbox.handler("a", "vip")})
    b = await connect(server, on={"vip": inbox.handler("b", "vip")})

    await ns.in_(sid_of(a)).sockets_join("vip", "gold")
    assert ns.rooms() == {"vip": 1, "gold": 1}
    ns.to("vip").emit("vip", 1)
    assert await inbox.wait("a", "vip") == [(1,)]
    await barrier(b)
    assert inbox.got("b", "vip") == []

    await ns.sockets_join("vip")
    assert ns.rooms() == {"vip": 2, "gold": 1}
    await ns.in_("gold").sockets_leave("vip")
    assert ns.rooms() == {"vip": 1, "gold": 1}
    ns.to("vip").emit("vip", 2)
    assert await inbox.wait("b", "vip") == [(2,)]
    await barrier(a)
    assert inbox.got("a", "vip") == [(1,)]
    assert await a.call("leave", "nothing", timeout=TIMEOUT) == {"ok": True, "rooms": ["gold"]}


@pytest.mark.parametrize(
    ("close", "reason"),
    # socket.io's Client._disconnect: close=True tells each namespace first, with that reason.
    [(False, reasons.SERVER_NAMESPACE_DISCONNECT), (True, reasons.SERVER_NAMESPACE_DISCONNECT)],
)
async def test_disconnect_sockets(
    start_node: NodeFactory, connect: Connect, close: bool, reason: str
) -> None:
    """``in_(room).disconnect_sockets(close)`` disconnects the room's sockets with the right
    reason and leaves the others connected."""
    seen = Reasons()
    server: Server = await start_node(setup=lambda s: seen.install(s.of("/")))
    gone = asyncio.Event()
    a = await connect(server, on={"disconnect": lambda *_: gone.set()})
    b = await connect(server)
    await join(a, "r")
    a_sid = sid_of(a)

    await server.of("/").in_("r").disconnect_sockets(close=close)
    assert await seen.of(a_sid) == reason
    await asyncio.wait_for(gone.wait(), TIMEOUT)
    assert not a.connected
    assert set(server.of("/").sockets) == {sid_of(b)}
    await barrier(b)


@pytest.mark.parametrize("close", [False, True])
async def test_socket_disconnect(start_node: NodeFactory, connect: Connect, close: bool) -> None:
    """``socket.disconnect()`` ends one namespace and keeps the connection;
    ``disconnect(close=True)`` ends the whole connection, every namespace with it."""
    seen = Reasons()

    def setup(server: Server) -> None:
        seen.install(server.of("/"))
        seen.install(server.of("/x"))
        server.of("/x").on("kick", lambda socket, close: socket.disconnect(close))

    server: Server = await start_node(setup=setup, **{"namespaces": {"/": {}, "/x": {}}})
    x_gone = asyncio.Event()
    client = await connect(
        server,
        namespaces=["/", "/x"],
        namespace_on={("disconnect", "/x"): lambda *_: x_gone.set()},
    )
    root_sid, x_sid = sid_of(client, "/"), sid_of(client, "/x")

    await client.emit("kick", close, namespace="/x")
    if close:
        assert await seen.of(x_sid) == reasons.SERVER_NAMESPACE_DISCONNECT
        assert await seen.of(root_sid) == reasons.SERVER_NAMESPACE_DISCONNECT
        assert server.connections == {}
        assert server.stats.closed_by_reason[reasons.FORCED_SERVER_CLOSE] == 1
    else:
        assert await seen.of(x_sid) == reasons.SERVER_NAMESPACE_DISCONNECT
        await asyncio.wait_for(x_gone.wait(), TIMEOUT)
        await barrier(client, "/")
        assert set(server.of("/").sockets) == {root_sid}
        assert len(server.connections) == 1


async def test_client_namespace_disconnect(start_node: NodeFactory, connect: Connect) -> None:
    """A client's DISCONNECT for one namespace ends that socket with ``client namespace
    disconnect`` and leaves its other namespaces and its connection alone."""
    seen = Reasons()

    def setup(server: Server) -> None:
        seen.install(server.of("/"))
        seen.install(server.of("/x"))

    server: Server = await start_node(setup=setup, **{"namespaces": {"/": {}, "/x": {}}})
    client = await connect(server, namespaces=["/", "/x"])
    x_sid = sid_of(client, "/x")
    # python-socketio has no per-namespace disconnect: send its Socket.IO DISCONNECT packet
    # ("1" + namespace) as an Engine.IO message through the client's own Engine.IO layer.
    await client.eio.send("1/x,")
    assert await seen.of(x_sid) == reasons.CLIENT_NAMESPACE_DISCONNECT
    await barrier(client, "/")
    assert set(server.of("/").sockets) == {sid_of(client, "/")}
    assert server.of("/x").sockets == {}
    assert len(server.connections) == 1


@pytest.mark.parametrize("how", ["socketio", "engineio"])
async def test_disconnect_reason_when_client_leaves(
    start_node: NodeFactory, connect: Connect, transport: str, how: str
) -> None:
    """The server's disconnect handler names why a client went: ``client.disconnect()`` is a
    client namespace disconnect, a dropped Engine.IO connection a transport close; the
    session is gone at once and the other client is unaffected."""
    seen = Reasons()
    server: Server = await start_node(setup=lambda s: seen.install(s.of("/")))
    client = await connect(server)
    other = await connect(server)
    sid = sid_of(client)
    if how == "socketio":
        await asyncio.wait_for(client.disconnect(), TIMEOUT)
        if transport == "polling":
            # "41" and "1" travel in one POST body, in that order.
            expected = {reasons.CLIENT_NAMESPACE_DISCONNECT}
        else:
            # python-engineio closes the WebSocket before its write loop sends the queued
            # "41", so the server may only see the transport go.
            expected = {reasons.CLIENT_NAMESPACE_DISCONNECT, reasons.TRANSPORT_CLOSE}
    else:
        await asyncio.wait_for(client.eio.disconnect(), TIMEOUT)
        expected = {reasons.TRANSPORT_CLOSE}
    assert await seen.of(sid) in expected
    assert set(server.of("/").sockets) == {sid_of(other)}
    assert len(server.connections) == 1
    await barrier(other)


async def test_rooms_exist_only_while_they_have_members(
    start_node: NodeFactory, connect: Connect
) -> None:
    """A room appears with its first member and vanishes with its last, by leave or by
    disconnect."""
    seen = Reasons()
    server: Server = await start_node(setup=lambda s: seen.install(s.of("/")))
    ns = server.of("/")
    a = await connect(server)
    b = await connect(server)
    assert ns.rooms() == {}
    await join(a, "r", "only-a")
    await join(b, "r")
    assert ns.rooms() == {"r": 2, "only-a": 1}
    assert await a.call("leave", "only-a", timeout=TIMEOUT) == {"ok": True, "rooms": ["r"]}
    assert ns.rooms() == {"r": 2}
    await b.call("leave", "r", timeout=TIMEOUT)
    assert ns.rooms() == {"r": 1}

    a_sid = sid_of(a)
    await asyncio.wait_for(a.disconnect(), TIMEOUT)
    await seen.of(a_sid)
    assert ns.rooms() == {}
    assert "r" not in ns.registry


# --- heartbeats and health ------------------------------------------------------------------


class PingCounter(logging.Handler):
    """Counts the PINGs an Engine.IO client logs as received."""

    def __init__(self, wanted: int) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.wanted = wanted
        self.reached = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Received packet PING"):
            self.count += 1
            if self.count >= self.wanted:
                self.reached.set()


async def test_heartbeats_keep_connection_alive(
    start_node: NodeFactory, connect: Connect, transport: str
) -> None:
    """With sub-second ping settings, a client that answers PINGs stays connected through
    several heartbeat cycles."""
    server: Server = await start_node(
        **{"engineio.ping_interval_ms": 100, "engineio.ping_timeout_ms": 250}
    )
    counter = PingCounter(wanted=5)
    logger = logging.getLogger(f"tests.engineio.{transport}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(counter)
    try:
        client = await connect(server, engineio_logger=logger)
        await asyncio.wait_for(counter.reached.wait(), TIMEOUT)
        assert client.connected
        await barrier(client)
        assert server.stats.closed_by_reason == {}
        assert len(server.connections) == 1
    finally:
        logger.removeHandler(counter)


async def test_health_endpoint(start_node: NodeFactory, connect: Connect) -> None:
    """``/health`` reports the node id and its live connection and socket counts."""
    server: Server = await start_node(**{"namespaces": {"/": {}, "/x": {}}})
    await connect(server, namespaces=["/", "/x"])
    await connect(server)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as response:
        assert response.status == 200
        body = await response.json()
    assert body == {
        "status": "ok",
        "problems": {},
        "node": server.node_id,
        "connections": 2,
        "sockets": 3,
    }


async def test_polling_close_orders(start_node: NodeFactory) -> None:
    """A polling GET racing a POSTed CLOSE gets NOOP whichever arrives first, and only then
    is the session unknown; a deliberate server close hands over the DISCONNECT packets in one
    GET and CLOSE in the next (socket.io-client handles packets a tick after its transport)."""
    server: Server = await start_node(**{"namespaces": {"/": {}}})
    server.of("/").on("bye", lambda socket: socket.disconnect(True))
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:

        async def open_session() -> str:
            async with http.get(base) as resp:
                sid: str = json.loads((await resp.text())[1:])["sid"]
            return f"{base}&sid={sid}"

        async def get(url: str) -> tuple[int, str]:
            async with http.get(url) as resp:
                return resp.status, await resp.text()

        url = await open_session()
        async with http.post(url, data="1") as resp:  # the CLOSE gets there before the GET
            assert resp.status == 200
        assert await get(url) == (200, "6")
        assert (await get(url))[0] == 400

        url = await open_session()
        async with http.post(url, data="40") as resp:
            assert resp.status == 200
        status, body = await get(url)
        assert status == 200 and body.startswith("40{")
        async with http.post(url, data='42["bye"]') as resp:
            assert resp.status == 200
        assert await get(url) == (200, "41")
        assert await get(url) == (200, "1")
        assert (await get(url))[0] == 400
