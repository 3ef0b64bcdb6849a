"""Integration tests with python-socketio's ``AsyncClient``: rooms, broadcasts, acks, payloads.

Here: the relay's join, leave and publish, server broadcasts to rooms, acks both ways, binary
and volatile payloads. Connecting, server-side operations and disconnects are in
``test_python_client.py``; the fixtures and helpers (every test runs on each transport) in
``python_client_harness.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.python_client_harness import (
    TIMEOUT,
    Connect,
    Inbox,
    NodeFactory,
    barrier,
    connect_fixture,  # noqa: F401 (a fixture, taken as ``connect``)
    join,
    sid_of,
    transport_fixture,  # noqa: F401 (a fixture, taken as ``transport``)
)

from roomcast.errors import AckTimeoutError
from roomcast.node.server import Server
from roomcast.node.sockets import Socket

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


async def test_relay_refusals_keep_the_session(start_node: NodeFactory, connect: Connect) -> None:
    """The relay's request limits (room and event name lengths, rooms per publish) refuse that
    one request with a named error; the session stays, and its next request goes through."""
    server: Server = await start_node(
        **{
            "limits.max_room_name_length": 8,
            "limits.max_event_name_length": 8,
            "limits.max_rooms_per_publish": 3,
            "namespaces": {"/": {"publish": "any"}},
        }
    )
    inbox = Inbox()
    a = await connect(server)
    b = await connect(server, on={"news": inbox.handler("b", "news")})
    await join(b, "r1")

    refusals = {
        "room name too long": ("join", "x" * 9),
        "event name too long": ("publish", {"room": "r1", "event": "e" * 9, "data": 0}),
        "too many rooms": ("publish", {"room": ["r1", "r2", "r3", "r4"], "event": "news"}),
    }
    for error, (event, arg) in refusals.items():
        assert await a.call(event, arg, timeout=TIMEOUT) == {"ok": False, "error": error}
    assert a.connected
    message = {"room": ["r1", "r2", "r3"], "event": "news", "data": "after"}
    assert await a.call("publish", message, timeout=TIMEOUT) == {"ok": True}
    assert await inbox.wait("b", "news") == [("after",)]
    assert server.stats.closed_by_reason == {}


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
