"""roomcast driven by the official Node ``socket.io-client@4`` (tests/js/driver.mjs).

Here: namespaces, auth, disconnects, heartbeats and the polling→WebSocket upgrade. Rooms,
broadcasts, acks and binary are in ``test_js_client_messaging.py``; the driver, its clients and
the fixtures in ``js_harness.py``.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    Event,
    Tracked,
    barrier,
    connect_all,
    join,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
    transport_fixture,  # noqa: F401 (a fixture, taken as ``transport``)
)

from roomcast.errors import ConnectRefusedError
from roomcast.node.engine import Connection
from roomcast.node.relay import sign_hs256
from roomcast.node.server import Server
from roomcast.node.sockets import Socket

pytestmark = JS_TEST_MARKS


# --- namespaces ------------------------------------------------------------------------------


async def test_connect_root_namespace(start_node: Any, js: Driver, transport: str) -> None:
    """A client connects to ``/``, its sid is the server socket's and its auth reaches the
    server, over the transport it asked for on both ends."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"), lambda s, auth: s.emit("welcome", s.sid, auth))
    client = js.connect("a", server.url, transport, auth={"user": "ann", "n": [1, 2]})
    hello = await client.connected()

    socket = await tracked.socket(hello["sid"])
    assert socket.handshake.auth == {"user": "ann", "n": [1, 2]}
    welcome = await client.event("welcome")
    assert welcome["args"] == [hello["sid"], {"user": "ann", "n": [1, 2]}]
    # A round trip after the client-side upgrade: the server has switched transport too.
    await join(client, "r")
    assert socket.conn.transport_name == ("polling" if transport == "polling" else "websocket")


async def test_namespaces_multiplexed_and_isolated(
    start_node: Any, js: Driver, transport: str
) -> None:
    """Two namespaces multiplexed on one connection are isolated: a namespace-wide emit reaches
    only the sockets of that namespace."""
    server: Server = await start_node(**{"namespaces": {"/": {}, "/chat": {}}})
    root = js.connect("root", server.url, transport)
    await root.connected()
    chat = js.multiplex("chat", root, "/chat")
    other = js.connect("other", server.url, transport, namespace="/chat")
    await connect_all(chat, other)
    root_socket = server.of("/").sockets[root.sid]
    chat_socket = server.of("/chat").sockets[chat.sid]
    assert root_socket.conn is chat_socket.conn
    assert chat.sid != root.sid

    server.of("/chat").emit("news", "for chat")
    server.of("/").emit("news", "for root")
    await barrier(server.of("/"), root)
    await barrier(server.of("/chat"), chat, other)

    assert root.received("news") == [["for root"]]
    assert chat.received("news") == [["for chat"]]
    assert other.received("news") == [["for chat"]]


async def test_namespace_disconnect_keeps_connection(
    start_node: Any, js: Driver, transport: str
) -> None:
    """A client leaving one multiplexed namespace leaves the connection and its other
    namespaces working."""
    server: Server = await start_node(**{"namespaces": {"/": {}, "/chat": {}}})
    chat_tracked = Tracked(server.of("/chat"))
    root = js.connect("root", server.url, transport)
    await root.connected()
    chat = js.multiplex("chat", root, "/chat")
    await chat.connected()

    chat.disconnect()
    assert await chat_tracked.reason(chat.sid) == "client namespace disconnect"
    assert await root.call("join", "r") == [{"ok": True, "rooms": ["r"]}]
    assert list(server.of("/").sockets) == [root.sid]
    assert server.of("/chat").sockets == {}
    assert len(server.connections) == 1


async def test_unknown_namespace_refused(start_node: Any, js: Driver, transport: str) -> None:
    """An unknown namespace gets connect_error "Invalid namespace", and the same connection can
    still open a known one."""
    server: Server = await start_node()
    nope = js.connect("nope", server.url, transport, namespace="/nope")
    error = await nope.refused()
    assert error["message"] == "Invalid namespace"
    assert error["data"] is None
    assert "/nope" not in [ns.name for ns in server.namespaces()]

    root = js.multiplex("root", nope, "/")
    await root.connected()
    assert (await root.call("join", "x")) == [{"ok": True, "rooms": ["x"]}]


async def test_dynamic_namespace(start_node: Any, js: Driver, transport: str) -> None:
    """A regex namespace is created on first connection and runs its parent's middleware and
    handlers; a name it does not match is an invalid namespace."""
    server: Server = await start_node()
    tenants = server.of(re.compile(r"/tenant-\d+"))

    def tag(socket: Socket, auth: Any) -> None:
        socket.data["tenant"] = socket.namespace.name

    tenants.use(tag)
    tenants.on("whoami", lambda s: (s.namespace.name, s.data["tenant"]))

    t42 = js.connect("t42", server.url, transport, namespace="/tenant-42")
    t7 = js.connect("t7", server.url, transport, namespace="/tenant-7")
    bad = js.connect("bad", server.url, transport, namespace="/tenant-x")
    await connect_all(t42, t7)
    assert (await bad.refused())["message"] == "Invalid namespace"

    assert await t42.call("whoami") == ["/tenant-42", "/tenant-42"]
    assert await t7.call("whoami") == ["/tenant-7", "/tenant-7"]
    names = {ns.name for ns in server.namespaces()}
    assert {"/tenant-42", "/tenant-7"} <= names
    assert "/tenant-x" not in names


# --- auth ------------------------------------------------------------------------------------


async def test_middleware_refusal(start_node: Any, js: Driver, transport: str) -> None:
    """A middleware's ConnectRefusedError reaches the client as connect_error with its message
    and data; a crashing middleware gives "Internal server error"; a good token connects."""
    server: Server = await start_node()
    guarded = server.of("/guarded")

    async def check(socket: Socket, auth: Any) -> None:
        if auth.get("token") == "crash":
            raise RuntimeError("boom")
        if auth.get("token") != "open-sesame":
            raise ConnectRefusedError("not allowed", {"code": 4001, "hint": ["token"]})

    guarded.use(check)
    bad = js.connect("bad", server.url, transport, namespace="/guarded", auth={"token": "x"})
    crash = js.connect(
        "crash", server.url, transport, namespace="/guarded", auth={"token": "crash"}
    )
    good = js.connect(
        "good", server.url, transport, namespace="/guarded", auth={"token": "open-sesame"}
    )

    error = await bad.refused()
    assert (error["message"], error["data"]) == ("not allowed", {"code": 4001, "hint": ["token"]})
    error = await crash.refused()
    assert (error["message"], error["data"]) == ("Internal server error", None)
    await good.connected()
    assert list(guarded.sockets) == [good.sid]


async def test_retry_with_new_auth(start_node: Any, js: Driver, transport: str) -> None:
    """After a refusal, the client's documented retry (new ``socket.auth``, ``connect()``)
    connects the same socket on the same connection."""
    server: Server = await start_node(
        **{"namespaces": {"/": {}, "/secret": {"auth": "secret", "secret": "s3"}}}
    )
    client = js.connect("a", server.url, transport, namespace="/secret", auth={"token": "bad"})
    assert (await client.refused())["data"] == {"reason": "invalid token"}

    client.retry({"token": "s3"})
    hello = await js.wait_for(lambda e: e.get("id") == "a" and e["type"] == "connect", "connect")
    assert list(server.of("/secret").sockets) == [hello["sid"]]
    assert len(server.connections) == 1


async def test_relay_secret_auth(start_node: Any, js: Driver, transport: str) -> None:
    """A relay namespace with auth = "secret" refuses a missing or wrong token with the reason
    in the error's data and admits the right one."""
    server: Server = await start_node(
        **{"namespaces": {"/": {}, "/secret": {"auth": "secret", "secret": "s3"}}}
    )
    url = server.url
    missing = js.connect("missing", url, transport, namespace="/secret")
    wrong = js.connect("wrong", url, transport, namespace="/secret", auth={"token": "s4"})
    right = js.connect("right", url, transport, namespace="/secret", auth={"token": "s3"})
    open_root = js.connect("root", url, transport)

    for client, reason in ((missing, "missing token"), (wrong, "invalid token")):
        error = await client.refused()
        assert error["message"] == "unauthorized"
        assert error["data"] == {"reason": reason}
    await connect_all(right, open_root)
    assert await right.call("join", "vault") == [{"ok": True, "rooms": ["vault"]}]


async def test_relay_jwt_auth(start_node: Any, js: Driver, transport: str) -> None:
    """A relay namespace with auth = "jwt" admits a valid HS256 token (its ``sub`` becomes
    ``socket.data["user"]``) and refuses bad signatures, expired, future and malformed tokens."""
    server: Server = await start_node(
        **{"namespaces": {"/": {}, "/jwt": {"auth": "jwt", "secret": "k3y"}}}
    )
    tracked = Tracked(server.of("/jwt"))
    now = int(time.time())
    tokens = {
        "valid": sign_hs256({"sub": "alice", "exp": now + 300}, "k3y"),
        "forged": sign_hs256({"sub": "alice", "exp": now + 300}, "not-the-key"),
        "expired": sign_hs256({"sub": "alice", "exp": now - 10}, "k3y"),
        "future": sign_hs256({"sub": "alice", "nbf": now + 300}, "k3y"),
        "garbage": "not.a-token",
    }
    clients = {
        name: js.connect(name, server.url, transport, namespace="/jwt", auth={"token": token})
        for name, token in tokens.items()
    }

    expected = {
        "forged": "invalid signature",
        "expired": "token expired",
        "future": "token not yet valid",
        "garbage": "malformed token",
    }
    for name, reason in expected.items():
        error = await clients[name].refused()
        assert (error["message"], error["data"]) == ("unauthorized", {"reason": reason})
    await clients["valid"].connected()
    socket = await tracked.socket(clients["valid"].sid)
    assert socket.data["user"] == "alice"
    assert list(server.of("/jwt").sockets) == [clients["valid"].sid]


# --- disconnects -----------------------------------------------------------------------------


async def test_server_disconnect(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.disconnect()`` gives the client "io server disconnect" and the server handler
    "server namespace disconnect"; a client disconnect gives "client namespace disconnect"."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"))
    server.of("/").on("kick-me", lambda s: s.disconnect())
    a = js.connect("a", server.url, transport)
    b = js.connect("b", server.url, transport)
    await connect_all(a, b)

    a.emit("kick-me")
    assert await a.disconnected() == "io server disconnect"
    assert await tracked.reason(a.sid) == "server namespace disconnect"

    b.disconnect()
    assert await b.disconnected() == "io client disconnect"
    assert await tracked.reason(b.sid) == "client namespace disconnect"
    assert server.of("/").sockets == {}


async def test_server_disconnect_close(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.disconnect(close=True)`` disconnects every namespace of the connection as
    socket.io does: the clients see "io server disconnect", the handlers "server namespace
    disconnect"."""
    server: Server = await start_node(**{"namespaces": {"/": {}, "/chat": {}}})
    root_tracked = Tracked(server.of("/"))
    chat_tracked = Tracked(server.of("/chat"))
    server.of("/").on("close-me", lambda s: s.disconnect(True))
    root = js.connect("root", server.url, transport)
    await root.connected()
    chat = js.multiplex("chat", root, "/chat")
    await chat.connected()

    root.emit("close-me")
    assert await root.disconnected() == "io server disconnect"
    assert await chat.disconnected() == "io server disconnect"
    assert await root_tracked.reason(root.sid) == "server namespace disconnect"
    assert await chat_tracked.reason(chat.sid) == "server namespace disconnect"


async def test_heartbeat(start_node: Any, js: Driver, transport: str) -> None:
    """With a short ping interval the client answers several heartbeats and stays connected on
    both ends."""
    server: Server = await start_node(
        **{"engineio.ping_interval_ms": 40, "engineio.ping_timeout_ms": 2000}
    )
    tracked = Tracked(server.of("/"))
    client = js.connect("a", server.url, transport)
    await client.connected()
    socket = await tracked.socket(client.sid)

    def third_ping(event: Event) -> bool:
        pings = [e for e in js.events if e.get("id") == "a" and e["type"] == "ping"]
        return len(pings) >= 3 and event is pings[2]

    await js.wait_for(third_ping, "3 pings")
    assert await client.call("join", "still-here") == [{"ok": True, "rooms": ["still-here"]}]
    assert socket.connected and not socket.conn.closed
    assert [e for e in js.events if e["type"] == "disconnect"] == []


# --- upgrade ---------------------------------------------------------------------------------


async def test_upgrade_mid_traffic(start_node: Any, js: Driver, monkeypatch: Any) -> None:
    """Events in both directions arrive once and in order while a polling connection upgrades
    to WebSocket in the middle of the traffic."""
    # Hold the server side of the upgrade until traffic flows on polling (the probe is usually
    # faster than the namespace CONNECT, and then nothing would cross the upgrade).
    gate = asyncio.Event()
    real_upgrade = Connection.upgrade

    async def held_upgrade(self: Connection, ws: Any, transport: Any) -> None:
        await gate.wait()
        await real_upgrade(self, ws, transport)

    monkeypatch.setattr(Connection, "upgrade", held_upgrade)
    server: Server = await start_node()
    got: list[int] = []

    def tick(socket: Socket, n: int) -> int:
        got.append(n)
        socket.emit("tock", n)
        return n

    server.of("/").on("tick", tick)
    client = js.connect("a", server.url, "upgrade")
    hello = await js.wait_for(lambda e: e.get("id") == "a" and e["type"] == "connect", "connect")
    assert hello["transport"] == "polling"
    client.sid = hello["sid"]
    socket = server.of("/").sockets[client.sid]
    n = 0
    for _ in range(5):
        assert await client.call("tick", n) == [n]
        n += 1
    assert socket.conn.transport_name == "polling"

    gate.set()
    for i in range(50):  # queued for polling while the probe is being answered
        socket.emit("push", i, bytes([i]) * i)
    upgraded = client.mine("upgrade")
    # Ping-pong (no sleeps) until the client reports the upgrade, then a few more rounds.
    while not any(upgraded(e) for e in js.events) and n < 2000:
        assert await client.call("tick", n) == [n]
        n += 1
    assert n < 2000, "no upgrade while the client was busy"
    for _ in range(5):
        assert await client.call("tick", n) == [n]
        n += 1

    assert got == list(range(n))
    await client.event("tock", lambda a: a == [n - 1])
    assert [args[0] for args in client.received("tock")] == list(range(n))
    assert client.received("push") == [[i, bytes([i]) * i] for i in range(50)]
    kinds = [e["type"] for e in js.events if e.get("id") == "a" and e["type"] != "ack"]
    first_upgrade = kinds.index("upgrade")
    assert "event" in kinds[:first_upgrade] and "event" in kinds[first_upgrade:]
    assert socket.conn.transport_name == "websocket"
