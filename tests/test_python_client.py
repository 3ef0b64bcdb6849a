"""Integration tests with python-socketio's ``AsyncClient``, a client nobody here wrote.

Every test that takes the ``connect`` fixture runs three times: WebSocket only, polling only,
and the default polling→WebSocket upgrade. Nothing here sleeps to synchronise: tests wait for
the event they expect (with a timeout), and prove that something did *not* arrive with a
round trip on the same connection (:func:`barrier`), which the server must answer after
anything it wrote to that connection before.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import socketio
import socketio.exceptions

from roomcast.errors import AckTimeoutError, ConnectRefusedError
from roomcast.node.server import Server
from roomcast.node.sockets import Namespace, Socket
from roomcast.protocol import reasons

NodeFactory = Callable[..., Awaitable[Server]]  # the ``start_node`` fixture (tests/conftest.py)
TIMEOUT = 5.0

TRANSPORTS: dict[str, list[str] | None] = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": None,  # python-socketio's default: polling first, then the WebSocket upgrade
}

Connect = Callable[..., Awaitable[socketio.AsyncClient]]


@pytest.fixture(params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    """Which transports the clients of a test use."""
    return str(request.param)


@pytest.fixture
async def connect(start_node: NodeFactory, transport: str) -> AsyncIterator[Connect]:
    """Connect python-socketio clients with the test's transports; disconnects them at the end.

    Depends on ``start_node`` so that the clients go before the nodes do.
    """
    clients: list[socketio.AsyncClient] = []

    async def factory(
        server: Server,
        *,
        namespaces: list[str] | None = None,
        auth: Any = None,
        on: dict[str, Callable[..., Any]] | None = None,
        namespace_on: dict[tuple[str, str], Callable[..., Any]] | None = None,
        **client_options: Any,
    ) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False, **client_options)
        for event, handler in (on or {}).items():
            client.on(event, handler)
        for (event, ns), handler in (namespace_on or {}).items():
            client.on(event, handler, namespace=ns)
        clients.append(client)
        await client.connect(
            server.url,
            transports=TRANSPORTS[transport],
            namespaces=namespaces or ["/"],
            auth=auth,
            wait_timeout=TIMEOUT,
        )
        expected = "polling" if transport == "polling" else "websocket"
        assert client.transport() == expected
        return client

    yield factory
    for client in clients:
        await asyncio.wait_for(client.disconnect(), TIMEOUT)


class Inbox:
    """What some clients received, with a way to wait for it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()

    def handler(self, name: str, event: str) -> Callable[..., None]:
        """A client handler recording ``event`` under ``name``."""

        def record(*args: Any) -> None:
            self.events.append((name, event, args))
            self._changed.set()

        return record

    def got(self, name: str, event: str) -> list[tuple[Any, ...]]:
        """The argument tuples ``name`` received with ``event``, in order."""
        return [args for who, ev, args in self.events if who == name and ev == event]

    async def wait(self, name: str, event: str, count: int = 1) -> list[tuple[Any, ...]]:
        """Wait until ``name`` has received ``event`` at least ``count`` times."""
        async with asyncio.timeout(TIMEOUT):
            while len(self.got(name, event)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.got(name, event)


class Reasons:
    """The reasons the server's ``disconnect`` handlers saw, by socket id."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[str]] = {}

    def _future(self, sid: str) -> asyncio.Future[str]:
        if sid not in self._futures:
            self._futures[sid] = asyncio.get_running_loop().create_future()
        return self._futures[sid]

    def install(self, ns: Namespace) -> None:
        """Record the disconnect reasons of ``ns``."""

        def on_disconnect(socket: Socket, reason: str) -> None:
            self._future(socket.sid).set_result(reason)

        ns.on("disconnect", on_disconnect)

    async def of(self, sid: str) -> str:
        """Wait for the reason socket ``sid`` disconnected with."""
        return await asyncio.wait_for(asyncio.shield(self._future(sid)), TIMEOUT)


async def barrier(client: socketio.AsyncClient, namespace: str = "/") -> None:
    """A relay round trip: whatever the server wrote to ``client`` before it has arrived."""
    ack = await client.call("leave", "barrier", namespace=namespace, timeout=TIMEOUT)
    assert ack["ok"] is True


async def join(client: socketio.AsyncClient, *rooms: str, namespace: str = "/") -> None:
    """Join rooms through the built-in relay."""
    ack = await client.call("join", list(rooms), namespace=namespace, timeout=TIMEOUT)
    assert ack["ok"] is True, ack


def sid_of(client: socketio.AsyncClient, namespace: str = "/") -> str:
    """The client's socket id in ``namespace``."""
    sid = client.get_sid(namespace)
    assert isinstance(sid, str)
    return sid


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


# --- the relay: rooms and broadcasts --------------------------------------------------------


async def test_relay_join_leave_publish(start_node: NodeFactory, connect: Connect) -> None:
    """The relay acks join/leave with the socket's rooms and delivers a publish to the room's
    members but not to the publisher nor to a socket that left."""
    server: Server = await start_node()
    inbox = Inbox()
    a = await connect(server, on={"news": inbox.handler("a", "news")})
    b = await connect(server, on={"news": inbox.handler("b", "news")})
    c = await connect(server, on={"news": inbox.handler("c", "news")})

    both_rooms = await a.call("join", ["r1", "r2"], timeout=TIMEOUT)
    assert both_rooms == {"ok": True, "rooms": ["r1", "r2"]}
    assert await b.call("join", "r1", timeout=TIMEOUT) == {"ok": True, "rooms": ["r1"]}
    await join(c, "r1")

    message = {"room": "r1", "event": "news", "data": {"n": 1}}
    assert await a.call("publish", message, timeout=TIMEOUT) == {"ok": True}
    assert await inbox.wait("b", "news") == [({"n": 1},)]
    assert await inbox.wait("c", "news") == [({"n": 1},)]
    assert inbox.got("a", "news") == []  # anything sent to a was written before its ack

    assert await a.call("leave", "r1", timeout=TIMEOUT) == {"ok": True, "rooms": ["r2"]}
    message = {"room": "r1", "event": "news", "data": {"n": 2}}
    assert await b.call("publish", message, timeout=TIMEOUT) == {"ok": True}
    assert await inbox.wait("c", "news", 2) == [({"n": 1},), ({"n": 2},)]
    await barrier(a)
    assert inbox.got("a", "news") == []
    assert inbox.got("b", "news") == [({"n": 1},)]

    refused = await b.call("publish", {"room": "r2", "event": "news", "data": 3}, timeout=TIMEOUT)
    assert refused == {"ok": False, "error": "not a member of r2"}


async def test_broadcast_excludes_sender(start_node: NodeFactory, connect: Connect) -> None:
    """``socket.broadcast.emit`` reaches every other socket of the namespace, not the sender."""

    def setup(server: Server) -> None:
        server.on("shout", lambda socket, text: socket.broadcast.emit("heard", text))

    server: Server = await start_node(setup=setup)
    inbox = Inbox()
    clients = {
        name: await connect(server, on={"heard": inbox.handler(name, "heard")})
        for name in ("a", "b", "c")
    }
    await clients["a"].call("shout", "hi", timeout=TIMEOUT)
    assert inbox.got("a", "heard") == []
    assert await inbox.wait("b", "heard") == [("hi",)]
    assert await inbox.wait("c", "heard") == [("hi",)]


async def test_multi_room_emit_once_per_socket(start_node: NodeFactory, connect: Connect) -> None:
    """A message to several rooms reaches a socket that is in several of them once."""
    server: Server = await start_node()
    inbox = Inbox()
    a = await connect(server, on={"multi": inbox.handler("a", "multi")})
    b = await connect(server, on={"multi": inbox.handler("b", "multi")})
    c = await connect(server, on={"multi": inbox.handler("c", "multi")})
    await join(a, "r1", "r2", "r3")
    await join(b, "r1", "r2")
    await join(c, "r3")

    server.to("r1").to("r2", "r3").emit("multi", "server")
    ack = await b.call(
        "publish", {"room": ["r1", "r2"], "event": "multi", "data": "relay"}, timeout=TIMEOUT
    )
    assert ack == {"ok": True}
    await inbox.wait("a", "multi", 2)
    for client in (a, b, c):
        await barrier(client)
    assert inbox.got("a", "multi") == [("server",), ("relay",)]
    assert inbox.got("b", "multi") == [("server",)]
    assert inbox.got("c", "multi") == [("server",)]


async def test_except_rooms_are_excluded(start_node: NodeFactory, connect: Connect) -> None:
    """``to(room).except_(other)`` skips members of ``other``, from the server and from a
    socket (which is skipped too)."""

    def setup(server: Server) -> None:
        server.on("shout", lambda socket, text: socket.to("r").except_("muted").emit("note", text))

    server: Server = await start_node(setup=setup)
    inbox = Inbox()
    names = ("plain", "muted", "sender")
    clients = {n: await connect(server, on={"note": inbox.handler(n, "note")}) for n in names}
    await join(clients["plain"], "r")
    await join(clients["muted"], "r", "muted")
    await join(clients["sender"], "r")

    server.of("/").to("r").except_("muted").emit("note", "from server")
    await clients["sender"].call("shout", "from socket", timeout=TIMEOUT)
    assert await inbox.wait("plain", "note", 2) == [("from server",), ("from socket",)]
    for client in clients.values():
        await barrier(client)
    assert inbox.got("muted", "note") == []
    assert inbox.got("sender", "note") == [("from server",)]


# --- acknowledgements -----------------------------------------------------------------------


async def test_acks_both_ways(start_node: NodeFactory, connect: Connect) -> None:
    """A handler's return value acks the client's call (a tuple as several arguments), and
    ``socket.emit_with_ack`` returns what the client's handler returned."""

    def setup(server: Server) -> None:
        server.on("sum", lambda socket, a, b: (a + b, "done"))

        @server.on("ask")
        async def ask(socket: Socket, question: int) -> Any:
            return await socket.emit_with_ack("double", question, timeout=TIMEOUT)

    server: Server = await start_node(setup=setup)
    client = await connect(server, on={"double": lambda n: n * 2})
    assert await client.call("sum", (2, 3), timeout=TIMEOUT) == (5, "done")
    assert await client.call("ask", 21, timeout=TIMEOUT) == 42

    # And straight from the server, without a client request in flight.
    socket = server.of("/").sockets[sid_of(client)]
    assert await socket.emit_with_ack("double", 8, timeout=TIMEOUT) == 16


async def test_broadcast_emit_with_ack(start_node: NodeFactory, connect: Connect) -> None:
    """A broadcast with acks returns every recipient's answer."""
    server: Server = await start_node()
    names = ("a", "b", "c")
    clients = [await connect(server, on={"vote": lambda n=n: n}) for n in names]
    for client in clients:
        await join(client, "r")
    await connect(server, on={"vote": lambda: "outsider"})
    answers = await server.to("r").emit_with_ack("vote", timeout=TIMEOUT)
    assert sorted(answers) == ["a", "b", "c"]


async def test_broadcast_ack_timeout_keeps_answers(
    start_node: NodeFactory, connect: Connect
) -> None:
    """When one recipient does not answer in time, AckTimeoutError carries the others' answers."""
    server: Server = await start_node()
    release = asyncio.Event()

    async def silent() -> str:
        await release.wait()
        return "late"

    try:
        for handler in (lambda: "a", lambda: "b", silent):
            client = await connect(server, on={"vote": handler})
            await join(client, "r")
        with pytest.raises(AckTimeoutError) as caught:
            await server.to("r").emit_with_ack("vote", timeout=0.3)
        assert sorted(caught.value.responses) == ["a", "b"]
    finally:
        release.set()


# --- payloads -------------------------------------------------------------------------------

BLOB = {
    "blob": b"\x00\x01\xfe\xff",
    "items": [b"first", {"deep": b"\x80" * 3000}, "text", 7],
    "plain": "no bytes here",
}


async def test_binary_both_ways(start_node: NodeFactory, connect: Connect) -> None:
    """Bytes nested in dicts and lists survive client→server, server→client and acks."""
    received: list[Any] = []

    def setup(server: Server) -> None:
        @server.on("mirror")
        def mirror(socket: Socket, data: Any) -> Any:
            received.append(data)
            return data

        @server.on("gimme")
        async def gimme(socket: Socket) -> Any:
            socket.emit("blob", BLOB)
            return await socket.emit_with_ack("echo-bytes", [b"ping", {"x": b"\x00"}])

    server: Server = await start_node(setup=setup)
    inbox = Inbox()
    client = await connect(
        server,
        on={"blob": inbox.handler("c", "blob"), "echo-bytes": lambda data: [data, b"pong"]},
    )
    assert await client.call("mirror", BLOB, timeout=TIMEOUT) == BLOB
    assert received == [BLOB]
    answer = await client.call("gimme", timeout=TIMEOUT)
    assert answer == [[b"ping", {"x": b"\x00"}], b"pong"]
    assert await inbox.wait("c", "blob") == [(BLOB,)]


async def test_volatile_emits(start_node: NodeFactory, connect: Connect, transport: str) -> None:
    """Volatile messages arrive in order or are dropped and counted, and an idle WebSocket
    gets them all."""
    server: Server = await start_node()
    inbox = Inbox()
    await connect(
        server, on={"tick": inbox.handler("c", "tick"), "done": inbox.handler("c", "done")}
    )
    dropped_before = server.stats.volatile_dropped
    for i in range(5):
        server.of("/").volatile.emit("tick", i)
    server.emit("done")
    await inbox.wait("c", "done")
    ticks = [args[0] for args in inbox.got("c", "tick")]
    dropped = server.stats.volatile_dropped - dropped_before
    assert ticks == sorted(ticks)
    assert len(ticks) + dropped == 5
    if transport != "polling":
        assert ticks == [0, 1, 2, 3, 4]


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
