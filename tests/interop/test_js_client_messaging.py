"""roomcast driven by the official Node ``socket.io-client@4``: rooms, broadcasts, acks, binary.

Here, with the relay's join, leave and publish and its per-namespace policy: each test checks
that a message reached exactly its recipients ("nobody else got it" behind a barrier, see
``js_harness.py``, which has the driver, its clients and the fixtures). Connecting, auth and
disconnects are in ``test_js_client.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    Tracked,
    barrier,
    connect_all,
    join,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
    transport_fixture,  # noqa: F401 (a fixture, taken as ``transport``)
)

from roomcast.errors import AckTimeoutError, DisconnectedError
from roomcast.node.server import Server
from roomcast.node.sockets import Socket

pytestmark = JS_TEST_MARKS


# --- rooms and broadcasts --------------------------------------------------------------------


async def test_relay_join_leave(start_node: Any, js: Driver, transport: str) -> None:
    """Relay join/leave acks list the socket's rooms (sid room excluded), refuse bad names and
    other sockets' sid rooms, and rooms vanish with their last member."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"))
    a = js.connect("a", server.url, transport)
    b = js.connect("b", server.url, transport)
    await connect_all(a, b)

    assert await a.call("join", "r1") == [{"ok": True, "rooms": ["r1"]}]
    assert await a.call("join", ["r3", "r2"]) == [{"ok": True, "rooms": ["r1", "r2", "r3"]}]
    assert await b.call("join", "r1") == [{"ok": True, "rooms": ["r1"]}]
    assert server.of("/").rooms() == {"r1": 2, "r2": 1, "r3": 1}
    assert await a.call("leave", "r2") == [{"ok": True, "rooms": ["r1", "r3"]}]
    assert await a.call("join", []) == [
        {"ok": False, "error": "room must be a name or a non-empty list of names"}
    ]
    assert await a.call("join", b.sid) == [{"ok": False, "error": f"room not allowed: {b.sid}"}]
    assert server.of("/").rooms() == {"r1": 2, "r3": 1}

    a.disconnect()
    assert await tracked.reason(a.sid) == "client namespace disconnect"
    assert server.of("/").rooms() == {"r1": 1}


async def test_to_room_excludes_sender(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.to(room).emit`` in a handler reaches every other member of the room, but not
    the sender and not non-members."""
    server: Server = await start_node()
    ns = server.of("/")

    def shout(socket: Socket, room: str, text: str) -> str:
        socket.to(room).emit("shouted", socket.sid, text)
        return "sent"

    ns.on("shout", shout)
    a, b, c, d = (js.connect(n, server.url, transport) for n in "abcd")
    await connect_all(a, b, c, d)
    await asyncio.gather(join(a, "r"), join(b, "r"), join(c, "r"), join(d, "elsewhere"))

    assert await a.call("shout", "r", "hi") == ["sent"]
    await barrier(ns, a, b, c, d)
    assert b.received("shouted") == [[a.sid, "hi"]]
    assert c.received("shouted") == [[a.sid, "hi"]]
    assert a.received("shouted") == []
    assert d.received("shouted") == []


@pytest.mark.parametrize("echo", [False, True], ids=["echo-off", "echo-on"])
async def test_relay_publish_echo(start_node: Any, js: Driver, transport: str, echo: bool) -> None:
    """Relay publish reaches every other member of the room once, not non-members, and the
    publisher only when the namespace's echo is on."""
    server: Server = await start_node(**{"namespaces": {"/": {"echo": echo}}})
    a, b, c = (js.connect(n, server.url, transport) for n in "abc")
    await connect_all(a, b, c)
    await asyncio.gather(join(a, "r"), join(b, "r"))

    data = {"text": "yo", "n": [1, 2.5, None, True]}
    assert await a.call("publish", {"room": "r", "event": "chat", "data": data}) == [{"ok": True}]
    await barrier(server.of("/"), a, b, c)
    assert b.received("chat") == [[data]]
    assert c.received("chat") == []
    assert a.received("chat") == ([[data]] if echo else [])


async def test_multi_room_once(start_node: Any, js: Driver, transport: str) -> None:
    """A broadcast to several rooms (server ``to().to()`` and relay publish to a list) reaches
    a socket that is in several of them exactly once, and nobody outside them."""
    server: Server = await start_node(**{"namespaces": {"/": {"publish": "members"}}})
    ns = server.of("/")
    a, b, c, d = (js.connect(n, server.url, transport) for n in "abcd")
    await connect_all(a, b, c, d)
    await asyncio.gather(join(a, "r1", "r2"), join(b, "r1", "r2"), join(c, "r2"), join(d, "r3"))

    ns.to("r1").to("r2").emit("multi", "server")
    published = await a.call("publish", {"room": ["r1", "r2"], "event": "multi", "data": "relay"})
    assert published == [{"ok": True}]
    await barrier(ns, a, b, c, d)
    assert a.received("multi") == [["server"]]
    assert b.received("multi") == [["server"], ["relay"]]
    assert c.received("multi") == [["server"], ["relay"]]
    assert d.received("multi") == []


async def test_except_rooms(start_node: Any, js: Driver, transport: str) -> None:
    """``except_`` rooms exclude their members from room and namespace-wide broadcasts, and
    ``socket.except_`` also excludes the sender."""
    server: Server = await start_node()
    ns = server.of("/")

    def shout(socket: Socket) -> bool:
        socket.except_("vip").emit("e3", socket.sid)
        return True

    ns.on("shout-except", shout)
    a, b, c, d = (js.connect(n, server.url, transport) for n in "abcd")
    await connect_all(a, b, c, d)
    await asyncio.gather(join(a, "r"), join(b, "r", "vip"), join(c, "vip"))

    ns.to("r").except_("vip").emit("e1")
    ns.except_("vip").emit("e2")
    assert await d.call("shout-except") == [True]
    await barrier(ns, a, b, c, d)
    assert [len(x.received("e1")) for x in (a, b, c, d)] == [1, 0, 0, 0]
    assert [len(x.received("e2")) for x in (a, b, c, d)] == [1, 0, 0, 1]
    assert [x.received("e3") for x in (a, b, c, d)] == [[[d.sid]], [], [], []]


async def test_server_side_socket_ops(start_node: Any, js: Driver, transport: str) -> None:
    """Server-side ``fetch_sockets``, ``sockets_join``/``sockets_leave`` and
    ``disconnect_sockets`` act on exactly the targeted clients."""
    server: Server = await start_node()
    ns = server.of("/")
    a, b, c = (js.connect(n, server.url, transport) for n in "abc")
    await connect_all(a, b, c)
    await asyncio.gather(join(a, "r"), join(b, "r"))

    fetched = await ns.in_("r").fetch_sockets()
    assert sorted((s.id, sorted(s.rooms)) for s in fetched) == sorted(
        (x.sid, sorted([x.sid, "r"])) for x in (a, b)
    )
    await ns.in_("r").sockets_join("vip")
    ns.to("vip").emit("vip-only")
    await ns.in_(a.sid).sockets_leave("vip")
    ns.to("vip").emit("vip-after-leave")
    await barrier(ns, a, b, c)
    assert [len(x.received("vip-only")) for x in (a, b, c)] == [1, 1, 0]
    assert [len(x.received("vip-after-leave")) for x in (a, b, c)] == [0, 1, 0]

    await ns.in_("vip").disconnect_sockets()
    assert await b.disconnected() == "io server disconnect"
    assert await a.call("join", "still") == [{"ok": True, "rooms": ["r", "still"]}]
    assert sorted(ns.sockets) == sorted([a.sid, c.sid])


# --- acks ------------------------------------------------------------------------------------


async def test_client_ack(start_node: Any, js: Driver, transport: str) -> None:
    """A client emit with an ack gets the handler's return value: a value, a tuple as several
    arguments, None as none, from sync and async handlers."""
    server: Server = await start_node()
    ns = server.of("/")

    async def divide(socket: Socket, x: int, y: int) -> tuple[int, int]:
        return divmod(x, y)

    ns.on("add", lambda s, x, y: x + y)
    ns.on("divmod", divide)
    ns.on("nothing", lambda s: None)
    ns.on("nested", lambda s, obj: {"got": obj, "text": "héllo ✓ 😀"})
    client = js.connect("a", server.url, transport)
    await client.connected()

    assert await client.call("add", 2, 3) == [5]
    assert await client.call("divmod", 17, 5) == [3, 2]
    assert await client.call("nothing") == []
    obj = {"a": [1, None, True, {"b": "ü"}], "c": 1.5}
    assert await client.call("nested", obj) == [{"got": obj, "text": "héllo ✓ 😀"}]


async def test_server_emit_with_ack(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.emit_with_ack`` returns the client's first ack argument (binary included),
    ``emit(callback=)`` gets all of them, and an ack answered later still resolves."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"))
    client = js.connect("a", server.url, transport, replies={"echo": {"echo": True}})
    await client.connected()
    socket = await tracked.socket(client.sid)

    assert await socket.emit_with_ack("echo", {"x": 1}, "two", timeout=5) == {"x": 1}
    blob = {"nested": [b"\x00\x01", b"\xfe"]}
    assert await socket.emit_with_ack("echo", blob, timeout=5) == blob
    got: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
    socket.emit("echo", 1, "b", None, callback=lambda *args: got.set_result(args))
    assert await asyncio.wait_for(got, 5) == (1, "b", None)

    pending = asyncio.create_task(socket.emit_with_ack("question", "life?", timeout=5))
    asked = await client.event("question")
    assert asked["args"] == ["life?"]
    client.answer(asked["ackRef"], 42, "ignored")
    assert await pending == 42


async def test_emit_with_ack_disconnect(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.emit_with_ack`` raises DisconnectedError when the client disconnects before
    answering, as its docstring promises, instead of waiting for the timeout."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"))
    client = js.connect("a", server.url, transport)
    await client.connected()
    socket = await tracked.socket(client.sid)

    pending = asyncio.create_task(socket.emit_with_ack("question", timeout=30))
    await client.event("question")
    client.disconnect()
    assert await tracked.reason(client.sid) == "client namespace disconnect"
    with pytest.raises(DisconnectedError):
        await asyncio.wait_for(pending, 5)


async def test_broadcast_emit_with_ack(start_node: Any, js: Driver, transport: str) -> None:
    """A room broadcast with acks collects exactly one answer from each member and asks
    nobody else."""
    server: Server = await start_node()
    ns = server.of("/")
    clients = [
        js.connect(n, server.url, transport, replies={"vote": {"args": [f"from {n}", "second"]}})
        for n in "abcd"
    ]
    await connect_all(*clients)
    a, b, c, _outsider = clients
    await asyncio.gather(join(a, "room"), join(b, "room"), join(c, "room", "other"))

    answers = await ns.to("room").to("other").emit_with_ack("vote", "q?", timeout=5)
    assert sorted(answers) == ["from a", "from b", "from c"]
    await barrier(ns, *clients)
    assert [x.received("vote") for x in clients] == [[["q?"]], [["q?"]], [["q?"]], []]


async def test_broadcast_ack_member_disconnects(
    start_node: Any, js: Driver, transport: str
) -> None:
    """A broadcast with acks stops waiting for a member that disconnects without answering and
    returns the other answers."""
    server: Server = await start_node()
    ns = server.of("/")
    tracked = Tracked(ns)
    a = js.connect("a", server.url, transport, replies={"vote": {"args": ["yes"]}})
    quitter = js.connect("quitter", server.url, transport)
    await connect_all(a, quitter)

    pending = asyncio.create_task(ns.emit_with_ack("vote", timeout=30))
    await quitter.event("vote")
    quitter.disconnect()
    await tracked.reason(quitter.sid)
    assert await asyncio.wait_for(pending, 5) == ["yes"]


async def test_broadcast_ack_timeout(start_node: Any, js: Driver) -> None:
    """A broadcast with acks that some member never answers raises AckTimeoutError carrying
    the answers that did arrive."""
    server: Server = await start_node()
    ns = server.of("/")
    a = js.connect("a", server.url, "websocket", replies={"vote": {"args": ["yes", 1]}})
    b = js.connect("b", server.url, "websocket", replies={"vote": {"args": ["no", 2]}})
    mute = js.connect("mute", server.url, "websocket")
    await connect_all(a, b, mute)

    with pytest.raises(AckTimeoutError) as caught:
        await ns.emit_with_ack("vote", timeout=1.0)
    assert sorted(caught.value.responses) == ["no", "yes"]
    assert "ackRef" in await mute.event("vote")  # asked, never answered


@pytest.mark.parametrize(
    "mode",
    [
        "websocket",
        "polling",
        "upgrade",
    ],
)
async def test_client_burst(start_node: Any, js: Driver, mode: str) -> None:
    """A burst of 600 emits in one tick of the client (one POST body over polling) reaches
    the handler complete and in order, and the session stays open."""
    server: Server = await start_node()
    got: list[int] = []
    server.of("/").on("n", lambda s, i: got.append(i))
    client = js.connect("a", server.url, mode)
    await client.connected()

    client.burst("n", 600)
    assert await client.call("join", "after-burst") == [{"ok": True, "rooms": ["after-burst"]}]
    assert got == list(range(600))
    assert dict(server.stats.closed_by_reason) == {}


# --- binary ----------------------------------------------------------------------------------


async def test_binary_both_ways(start_node: Any, js: Driver, transport: str) -> None:
    """Buffers in client args (top level and nested, empty and over 64 KiB) reach handlers as
    bytes, and bytes in server emits and acks reach the client as Buffers."""
    server: Server = await start_node()
    seen: list[tuple[Any, ...]] = []

    def upload(socket: Socket, blob: bytes, meta: dict[str, Any]) -> Any:
        seen.append((blob, meta))
        socket.emit("download", meta, blob)
        return {"echo": blob, "size": len(blob)}, [blob[:2], b""]

    server.of("/").on("upload", upload)
    client = js.connect("a", server.url, transport)
    await client.connected()

    big = bytes(range(256)) * 300
    meta = {"name": "x", "parts": [b"\x00\x01", {"deep": b"\xff" * 3}, b""], "n": 1}
    ack = await client.call("upload", big, meta)
    assert seen == [(big, meta)]
    blob, got_meta = seen[0]  # == also holds for a bytearray: check the type
    assert type(blob) is bytes and type(got_meta["parts"][1]["deep"]) is bytes
    assert ack == [{"echo": big, "size": len(big)}, [big[:2], b""]]
    download = await client.event("download")
    assert download["args"] == [meta, big]


async def test_binary_broadcast(start_node: Any, js: Driver, transport: str) -> None:
    """A relay publish carrying binary reaches every other member with the same bytes."""
    server: Server = await start_node()
    a, b, c = (js.connect(n, server.url, transport) for n in "abc")
    await connect_all(a, b, c)
    await asyncio.gather(join(a, "r"), join(b, "r"), join(c, "r"))

    data = {"blob": b"\x00\xffbinary\n", "more": [b"x" * 1000, {"k": b"\x01"}]}
    assert await a.call("publish", {"room": "r", "event": "file", "data": data}) == [{"ok": True}]
    for client in (b, c):
        assert (await client.event("file"))["args"] == [data]


# --- relay policy ----------------------------------------------------------------------------


async def test_relay_policy(start_node: Any, js: Driver, transport: str) -> None:
    """The relay policy allows and refuses per namespace: publish "any" from a non-member,
    publish "members" refusing a non-member, publish "none", and client_join = false."""
    server: Server = await start_node(
        **{
            "namespaces": {
                "/": {},
                "/any": {"publish": "any"},
                "/none": {"publish": "none"},
                "/nojoin": {"client_join": False},
            }
        }
    )
    url = server.url
    member = js.connect("member", url, transport)
    outsider = js.connect("outsider", url, transport)
    any_member = js.connect("any-member", url, transport, namespace="/any")
    any_outsider = js.connect("any-outsider", url, transport, namespace="/any")
    none_member = js.connect("none-member", url, transport, namespace="/none")
    none_other = js.connect("none-other", url, transport, namespace="/none")
    nojoin = js.connect("nojoin", url, transport, namespace="/nojoin")
    await connect_all(member, outsider, any_member, any_outsider, none_member, none_other, nojoin)
    await asyncio.gather(join(member, "r"), join(any_member, "r"), join(none_member, "r"))
    await join(none_other, "r")

    message = {"room": "r", "event": "note", "data": "hi"}
    assert await outsider.call("publish", message) == [{"ok": False, "error": "not a member of r"}]
    assert await any_outsider.call("publish", message) == [{"ok": True}]
    assert await none_other.call("publish", message) == [
        {"ok": False, "error": "publish not allowed"}
    ]
    assert await nojoin.call("join", "r") == [{"ok": False, "error": "join not allowed"}]
    assert server.of("/nojoin").rooms() == {}

    await barrier(server.of("/"), member, outsider)
    await barrier(server.of("/any"), any_member)
    await barrier(server.of("/none"), none_member)
    assert member.received("note") == []
    assert any_member.received("note") == [["hi"]]
    assert none_member.received("note") == []
