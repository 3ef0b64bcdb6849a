"""Connection state recovery with the official Node ``socket.io-client@4`` (in-process node).

A client loses its connection (``cut``: the client closes its Engine.IO connection, or drops
the TCP socket under its WebSocket; the server sees ``transport close``, not a deliberate
disconnect) while other clients publish to its rooms; it reconnects with the pid and last
offset socket.io-client keeps, and must get ``recovered: true``, the same sid, rooms and data,
and every missed message once, in order, each with its offset, before live traffic. When that
cannot be done exactly the client gets a fresh session: ``test_js_recovery_refused.py``. The
same scenarios against nodes started by the CLI (uvloop, two nodes and a router) are in
``tests/multinode/test_recovery_cluster.py``. Every wait is on an event.
"""

from __future__ import annotations

from typing import Any

from support.cluster_harness import wait_until
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    connect_all,
    join,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
    transport_fixture,  # noqa: F401 (a fixture, taken as ``transport``)
)
from support.recovery_clients import (
    Watch,
    assert_numbered,
    got,
    leaks_nothing,
    lose_connection,
    offsets,
    publish,
    recover,
    values,
)

from roomcast import RecoverySettings
from roomcast.errors import ConnectRefusedError
from roomcast.node import recovery
from roomcast.node.server import Server
from roomcast.node.sockets import Socket

pytestmark = JS_TEST_MARKS

RECOVERY = {"recovery.enabled": True, "namespaces./.publish": "any"}


# --- recovered --------------------------------------------------------------------------------


async def test_missed_messages_are_replayed_once_in_order_then_live_traffic(
    start_node: Any, js: Driver, transport: str
) -> None:
    """A client that lost its connection while others published to its rooms recovers its
    sid, rooms and data, and gets every missed message once, in order, each with its offset,
    before live traffic; messages to rooms it is not in are not replayed."""
    server: Server = await start_node(**RECOVERY)
    ns = server.of("/")
    watch = Watch(ns)
    a, b = js.connect("a", server.url, transport), js.connect("b", server.url, transport)
    await connect_all(a, b)
    await join(a, "r", "s")
    before = await watch.socket(a.sid)
    assert before.recovered is False and before.pid is not None
    # a and b connect at once: either may be seen first.
    data = {"first seen": before.data["first seen"]}
    await publish(b, "r", 0)
    await got(a, 0)

    await lose_connection(a, watch)
    assert ns.rooms() == {"r": 1, "s": 1}  # its ghost is still a member
    await publish(b, "r", 1, 2)
    await publish(b, "elsewhere", "not for a")
    ns.to("s").emit("chat", 3)
    await publish(b, ["r", "s"], 4)  # once, though a was in both rooms
    await recover(a)

    after = await watch.socket(a.sid, 1)
    assert after.recovered is True and after is not before
    assert after.rooms == {a.sid, "r", "s"} and after.data == data
    await publish(b, "r", 5)
    await got(a, 5)
    assert values(a) == [0, 1, 2, 3, 4, 5]
    assert_numbered(server.tag, offsets(a))
    assert server.stats.recoveries_succeeded == 1 and server.stats.replayed_messages == 4
    leaks_nothing(server)


async def test_messages_written_into_a_dropped_connection_are_replayed(
    start_node: Any, js: Driver
) -> None:
    """Messages the node wrote into a WebSocket whose TCP connection the client had already
    dropped (before the node noticed) are replayed too."""
    server: Server = await start_node(**RECOVERY)
    watch = Watch(server.of("/"))
    a, b = js.connect("a", server.url, "websocket"), js.connect("b", server.url, "websocket")
    await connect_all(a, b)
    await join(a, "r")
    a.cut("drop")
    await publish(b, "r", *range(10))
    assert await watch.lost(a.sid) in recovery.RECOVERABLE
    await publish(b, "r", *range(10, 15))
    await recover(a)
    await publish(b, "r", 15)
    await got(a, 15)
    assert values(a) == list(range(16))
    assert_numbered(server.tag, offsets(a))


async def test_automatic_reconnection_under_steady_traffic(start_node: Any, js: Driver) -> None:
    """With socket.io-client's own reconnection, a client whose connection is lost in the
    middle of steady traffic ends up with every message once, in order, whatever part came
    live and whatever part was replayed."""
    server: Server = await start_node(**RECOVERY)
    reconnecting = {"reconnection": True, "reconnectionDelay": 10, "reconnectionDelayMax": 10}
    a = js.connect("a", server.url, "websocket", options=reconnecting)
    b = js.connect("b", server.url, "websocket")
    await connect_all(a, b)
    await join(a, "r")
    await publish(b, "r", *range(10))
    a.cut()
    await publish(b, "r", *range(10, 40))
    event = await a.reconnected()
    assert event["recovered"] is True and event["sid"] == a.sid
    await publish(b, "r", 40)
    await got(a, 40)
    assert values(a) == list(range(41))
    assert_numbered(server.tag, offsets(a))


async def test_binary_messages_are_numbered_and_replayed(
    start_node: Any, js: Driver, transport: str
) -> None:
    """A message with binary data carries its offset after its data, live and replayed."""
    server: Server = await start_node(**RECOVERY)
    watch = Watch(server.of("/"))
    a, b = js.connect("a", server.url, transport), js.connect("b", server.url, transport)
    await connect_all(a, b)
    await join(a, "r")
    await publish(b, "r", {"blob": b"\x00\x01", "n": 1})
    await got(a, {"blob": b"\x00\x01", "n": 1})
    await lose_connection(a, watch)
    await publish(b, "r", {"blob": b"\xff" * 3, "n": 2}, b"raw")
    await recover(a)
    await got(a, b"raw")
    assert values(a) == [{"blob": b"\x00\x01", "n": 1}, {"blob": b"\xff" * 3, "n": 2}, b"raw"]
    assert_numbered(server.tag, offsets(a))


async def test_a_client_that_received_nothing_recovers(start_node: Any, js: Driver) -> None:
    """A client that lost its connection before receiving any event (it has a pid and no
    offset: socket.io #4888) recovers, and gets what reached its socket since it connected,
    none of what was published to its rooms before it joined them."""
    server: Server = await start_node(**RECOVERY)
    watch = Watch(server.of("/"))
    a, b, c = (js.connect(n, server.url, "polling") for n in "abc")
    await connect_all(a, b, c)
    await join(c, "r")  # the node keeps what it sends c
    await publish(b, "r", "before a joined")
    await got(c, "before a joined")
    await join(a, "r")
    await lose_connection(a, watch)
    await publish(b, "r", 1, 2)
    await recover(a)
    await publish(b, "r", 3)
    await got(a, 3)
    assert values(a) == [1, 2, 3]


async def test_three_outages_in_a_row_replay_nothing_twice(start_node: Any, js: Driver) -> None:
    """Replayed messages carry their offsets, so after a second and a third outage nothing is
    replayed again (socket.io #5419); the outages may come before any live message."""
    server: Server = await start_node(**RECOVERY)
    watch = Watch(server.of("/"))
    a, b = js.connect("a", server.url, "websocket"), js.connect("b", server.url, "websocket")
    await connect_all(a, b)
    await join(a, "r")
    sent = 0
    for outage in range(3):
        await lose_connection(a, watch, outage)
        await publish(b, "r", sent, sent + 1)
        sent += 2
        await recover(a, outage + 1)
        await got(a, sent - 1)
    await publish(b, "r", sent)
    await got(a, sent)
    assert values(a) == list(range(sent + 1))
    assert_numbered(server.tag, offsets(a))
    assert server.stats.replayed_messages == 6


async def test_volatile_and_direct_string_events_never_poison_the_offset(
    start_node: Any, js: Driver
) -> None:
    """A volatile broadcast or a direct emit whose last argument is a string still ends with a
    real offset, so a client whose last event was one of them recovers (socket.io #5539); a
    direct emit is replayed like a broadcast, a volatile one is not."""
    server: Server = await start_node(**RECOVERY)
    ns = server.of("/")
    watch = Watch(ns)
    a, b = js.connect("a", server.url, "websocket"), js.connect("b", server.url, "websocket")
    await connect_all(a, b)
    await join(a, "r")
    socket = await watch.socket(a.sid)
    ns.volatile.emit("flash", "a string")
    socket.emit("direct", "another string")
    await a.event("direct")
    [[flash, flash_offset]] = a.received("flash")
    [[direct, direct_offset]] = a.received("direct")
    assert (flash, direct) == ("a string", "another string")
    assert_numbered(server.tag, [flash_offset, direct_offset])

    ns.volatile.emit("flash", "the last string before the outage")
    await a.event("flash", lambda args: args[0].startswith("the last"))
    await lose_connection(a, watch)
    await publish(b, "r", 1)
    socket.emit("direct", "while away")  # a ghost takes nothing: ignored, as socket.io does
    ns.to(a.sid).emit("direct", "to its sid while away")
    ns.volatile.emit("flash", "volatile while away")
    await recover(a)
    await publish(b, "r", 2)
    await got(a, 2)
    assert values(a) == [1, 2]
    assert values(a, "direct") == ["another string", "to its sid while away"]
    assert values(a, "flash") == ["a string", "the last string before the outage"]


async def test_acks_carry_no_offset(start_node: Any, js: Driver) -> None:
    """Emits that wait for an ack carry no offset (the client answers them; they are never
    replayed), and neither do the node's answers to the client's acks."""
    server: Server = await start_node(**RECOVERY)
    ns = server.of("/")
    watch = Watch(ns)
    a = js.connect("a", server.url, "websocket", replies={"ask": {"args": ["yes"]}})
    await connect_all(a)
    socket = await watch.socket(a.sid)
    assert await socket.emit_with_ack("ask", "question", timeout=5) == "yes"
    assert await ns.emit_with_ack("ask", "question 2", timeout=5) == ["yes"]
    await a.event("ask", lambda args: args[0] == "question 2")  # its report may come later
    assert a.received("ask") == [["question"], ["question 2"]]
    assert await a.call("join", "r") == [{"ok": True, "rooms": ["r"]}]


async def test_a_quiet_session_recovers_long_after_its_last_message(
    start_node: Any, js: Driver
) -> None:
    """A client whose last message came longer ago than the window, and whose offset's packet
    the history dropped long since under other rooms' traffic, still recovers (socket.io
    #5282): nothing reached its socket after that offset."""
    server: Server = await start_node(
        **RECOVERY, **{"recovery.max_disconnection_ms": 300, "recovery.max_packets": 5}
    )
    watch = Watch(server.of("/"))
    q, b, w, z = (js.connect(n, server.url, "websocket") for n in "qbwz")
    await connect_all(q, b, w, z)
    await join(q, "quiet")
    await join(w, "busy")
    await publish(b, "quiet", "once")
    await got(q, "once")
    await publish(b, "busy", *range(20))  # the history moves far past q's offset
    history = server.of("/").history
    assert history is not None and history.floor > 1
    # Proof that more than the window has passed since: a session lost after it was kept
    # for a whole window.
    await lose_connection(z, watch)
    await wait_until(lambda: server.stats.sessions_kept == 0, what="z's window to end")
    await lose_connection(q, watch)
    await recover(q)
    await publish(b, "quiet", "again")
    await got(q, "again")
    assert values(q) == ["once", "again"]


async def test_skip_middlewares_off_runs_them_on_the_recovered_socket(
    start_node: Any, js: Driver
) -> None:
    """With ``skip_middlewares`` off the middleware runs again and sees the recovered socket
    (``recovered``, its data); it may refuse it (CONNECT_ERROR), and the session is kept for
    the rest of its window. With it on (the default), middleware does not run on recovery."""
    server: Server = await start_node(**RECOVERY, **{"recovery.skip_middlewares": False})
    ns = server.of("/")
    watch = Watch(ns)
    seen: list[tuple[bool, Any]] = []

    @ns.use
    def gate(socket: Socket, auth: Any) -> None:
        seen.append((socket.recovered, dict(socket.data)))
        if auth.get("token") == "revoked":
            raise ConnectRefusedError("unauthorized")

    a = js.connect("a", server.url, "websocket", auth={"token": "ok"})
    await connect_all(a)
    await lose_connection(a, watch)
    await recover(a)
    assert seen == [(False, {}), (True, {"first seen": 0})]
    await lose_connection(a, watch, 1)
    a.retry({"token": "revoked"})
    refused = await a.driver.wait_for(a.mine("connect_error"), "a refused")
    assert refused["message"] == "unauthorized"
    assert server.stats.sessions_kept == 1  # still kept: the client may come back in time
    assert server.stats.recoveries_refused == {recovery.CONNECT_REFUSED: 1}


async def test_skip_middlewares_on_skips_them(start_node: Any, js: Driver) -> None:
    """By default a recovered socket skips the namespace's middleware (socket.io's
    ``skipMiddlewares``)."""
    server: Server = await start_node(**RECOVERY)
    ns = server.of("/")
    watch = Watch(ns)
    runs: list[str] = []
    ns.use(lambda socket, auth: runs.append(socket.sid))
    a = js.connect("a", server.url, "websocket")
    await connect_all(a)
    await lose_connection(a, watch)
    await recover(a)
    assert runs == [a.sid]


async def test_a_client_back_before_the_node_noticed_takes_its_session_over(
    start_node: Any, js: Driver
) -> None:
    """A client that reconnects while the node still holds its old connection (it noticed
    the loss first) recovers: the old connection is closed as lost, and whatever was sent on
    it since the client's last offset is replayed."""
    server: Server = await start_node(**RECOVERY)
    watch = Watch(server.of("/"))
    a, b = js.connect("a", server.url, "websocket"), js.connect("b", server.url, "websocket")
    first = await a.connected()
    await connect_all(b)
    await join(a, "r")
    await publish(b, "r", 1)
    await got(a, 1)
    # The same client, on a new connection, as if the old one had silently died after 1.
    again = js.connect(
        "a2", server.url, "websocket", auth={"pid": first["pid"], "offset": offsets(a)[-1]}
    )
    await publish(b, "r", 2)
    event = await again.connected()
    assert event["recovered"] is False  # a new client object has no pid of its own to match
    assert event["sid"] == a.sid and event["pid"] == first["pid"]
    assert await watch.lost(a.sid) == "transport close"
    await publish(b, "r", 3)
    await got(again, 3)
    assert values(again)[-2:] == [2, 3] and values(again).count(2) == 1
    assert server.stats.recoveries_succeeded == 1


async def test_an_app_turns_recovery_on_for_its_own_namespace(start_node: Any, js: Driver) -> None:
    """An app namespace the config does not declare takes ``[recovery]``, or what the app
    sets before clients connect; its direct emits are replayed."""

    def setup(server: Server) -> None:
        server.of("/app").recovery = RecoverySettings(enabled=True)

    server: Server = await start_node(setup=setup)
    assert server.of("/").history is None and server.of("/other").history is None
    watch = Watch(server.of("/app"))
    a = js.connect("a", server.url, "websocket", namespace="/app")
    await connect_all(a)
    await lose_connection(a, watch)
    server.of("/app").to(a.sid).emit("chat", "while away")
    await recover(a)
    await got(a, "while away")
