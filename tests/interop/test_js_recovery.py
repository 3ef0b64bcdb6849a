"""Connection state recovery with the official Node ``socket.io-client@4`` (in-process node).

A client loses its connection (``cut``: the client closes its Engine.IO connection, or drops
the TCP socket under its WebSocket; the server sees ``transport close``, not a deliberate
disconnect) while other clients publish to its rooms; it reconnects with the pid and last
offset socket.io-client keeps, and must get ``recovered: true``, the same sid, rooms and data,
and every missed message once, in order, each with its offset, before live traffic; or, when
that cannot be done exactly, a fresh session with ``recovered: false`` and nothing left behind.
The same scenarios against nodes started by the CLI (uvloop, two nodes and a router) are in
``tests/multinode/test_recovery_cluster.py``. Every wait is on an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from support.cluster_harness import wait_until
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    JsClient,
    connect_all,
    join,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
    transport_fixture,  # noqa: F401 (a fixture, taken as ``transport``)
)
from support.recovery_clients import (
    assert_numbered,
    got,
    offsets,
    publish,
    recover,
    refused,
    values,
)

from roomcast.errors import ConnectRefusedError
from roomcast.ids import node_tag, offset_text, tag_of_sid
from roomcast.node import recovery
from roomcast.node.server import Server
from roomcast.node.sockets import Namespace, Socket

pytestmark = JS_TEST_MARKS

RECOVERY = {"recovery.enabled": True, "namespaces./.publish": "any"}


class Watch:
    """The server side of one namespace: every connect and disconnect, in order, awaitable
    (a recovered socket connects again under the same sid)."""

    def __init__(self, ns: Namespace) -> None:
        self.connects: list[Socket] = []
        self.disconnects: list[tuple[str, str]] = []
        self._changed = asyncio.Condition()
        ns.on("connect", self._connect)
        ns.on("disconnect", self._disconnect)

    async def _connect(self, socket: Socket, auth: Any) -> None:
        if not socket.recovered:
            socket.data["first seen"] = len(self.connects)
        async with self._changed:
            self.connects.append(socket)
            self._changed.notify_all()

    async def _disconnect(self, socket: Socket, reason: str) -> None:
        async with self._changed:
            self.disconnects.append((socket.sid, reason))
            self._changed.notify_all()

    async def _until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(done)

    async def lost(self, sid: str, nth: int = 0) -> str:
        """The reason of ``sid``'s ``nth`` disconnect (once its handler ran, the node has
        decided whether to keep the session)."""
        await self._until(lambda: sum(1 for s, _ in self.disconnects if s == sid) > nth)
        return [r for s, r in self.disconnects if s == sid][nth]

    async def socket(self, sid: str, nth: int = 0) -> Socket:
        """The server-side socket of ``sid``'s ``nth`` connect."""
        await self._until(lambda: sum(1 for s in self.connects if s.sid == sid) > nth)
        return [s for s in self.connects if s.sid == sid][nth]


async def lose_connection(client: JsClient, watch: Watch, nth: int = 0, how: str = "close") -> None:
    """Cut the client's connection and wait until the node has kept its session."""
    client.cut(how)
    reason = await watch.lost(client.sid, nth)
    assert reason in recovery.RECOVERABLE, reason
    await client.disconnected(nth)


def leaks_nothing(server: Server) -> None:
    """No session kept, no ghost left."""
    assert server.stats.sessions_kept == 0
    assert not any(ns.ghosts for ns in server.namespaces())


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
    assert after.rooms == {a.sid, "r", "s"} and after.data == {"first seen": 0}
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


# --- refused: a fresh session, nothing left behind --------------------------------------------


async def test_after_its_window_a_session_is_gone(start_node: Any, js: Driver) -> None:
    """A client that comes back after the window gets a fresh session; its old socket left
    its rooms when the window ended."""
    server: Server = await start_node(**RECOVERY, **{"recovery.max_disconnection_ms": 200})
    ns = server.of("/")
    watch = Watch(ns)
    a, b = js.connect("a", server.url, "websocket"), js.connect("b", server.url, "websocket")
    await connect_all(a, b)
    await join(a, "r", "mine")
    await join(b, "r")
    await lose_connection(a, watch)
    assert ns.rooms() == {"r": 2, "mine": 1}
    await wait_until(lambda: ns.rooms() == {"r": 1}, what="the ghost to leave its rooms")
    leaks_nothing(server)
    await publish(b, "r", 1)
    await refused(a)
    await publish(b, "r", 2)
    await publish(b, [a.sid], 3)
    await got(a, 3)
    assert values(a) == [3]
    assert server.stats.recoveries_refused == {recovery.UNKNOWN_SESSION: 1}


async def test_a_flood_past_the_history_refuses_the_recovery(start_node: Any, js: Driver) -> None:
    """When the history dropped a message the client missed, it gets a fresh session (not
    the rest of its messages), and its old socket leaves its rooms at once."""
    server: Server = await start_node(**RECOVERY, **{"recovery.max_packets": 10})
    ns = server.of("/")
    watch = Watch(ns)
    a, b = js.connect("a", server.url, "websocket"), js.connect("b", server.url, "websocket")
    await connect_all(a, b)
    await join(a, "r")
    await join(b, "r")
    await lose_connection(a, watch)
    await publish(b, "r", *range(15))
    await refused(a)
    assert values(a) == []
    assert ns.rooms() == {"r": 1}
    leaks_nothing(server)
    assert server.stats.recoveries_refused == {recovery.HISTORY_EVICTED: 1}


@pytest.mark.parametrize(
    ("pid", "reason"),
    [
        ("forged", recovery.UNKNOWN_SESSION),
        (None, recovery.UNKNOWN_SESSION),  # shaped like one of this node's, never issued
        ("other", recovery.OTHER_NODE),  # a session another node holds
    ],
)
async def test_an_unknown_pid_gets_a_fresh_session(
    start_node: Any, js: Driver, pid: str | None, reason: str
) -> None:
    """A pid that names no session kept here gets a fresh session, counted by reason."""
    server: Server = await start_node(**RECOVERY)
    if pid is None:
        pid = (await _some_pid(server, js))[:8] + "A" * 16
    elif pid == "other":
        pid = "B" * 8 + "A" * 16
    c = js.connect("c", server.url, "websocket", auth={"pid": pid, "offset": "whatever"})
    event = await c.connected()
    assert event["recovered"] is False
    assert server.stats.recoveries_refused == {reason: 1}
    assert server.stats.recoveries_attempted == 1


async def _some_pid(server: Server, js: Driver) -> str:
    """A pid this node issued (to a client that then leaves for good)."""
    d = js.connect("d", server.url, "websocket")
    event = await d.connected()
    d.disconnect()
    pid: str = event["pid"]
    return pid


@pytest.mark.parametrize("offset", ["foreign", "garbage", "ahead"])
async def test_an_offset_this_node_never_gave_gets_a_fresh_session(
    start_node: Any, js: Driver, offset: str
) -> None:
    """A kept session presented with another node's offset, with something that is no
    offset, or with one this node never gave: a fresh session, and the kept one released
    (its client cannot recover it any more)."""
    server: Server = await start_node(**RECOVERY)
    ns = server.of("/")
    watch = Watch(ns)
    a = js.connect("a", server.url, "websocket")
    event = await a.connected()
    await join(a, "r")
    await lose_connection(a, watch)
    tag = tag_of_sid(a.sid)
    assert tag is not None
    presented = {
        "foreign": offset_text(node_tag("elsewhere", 1), 1),
        "garbage": "not an offset",
        "ahead": offset_text(tag, 10**6),
    }[offset]
    c = js.connect("c", server.url, "websocket", auth={"pid": event["pid"], "offset": presented})
    assert (await c.connected())["recovered"] is False
    reason = {
        "foreign": recovery.FOREIGN_OFFSET,
        "garbage": recovery.INVALID_OFFSET,
        "ahead": recovery.UNKNOWN_OFFSET,
    }[offset]
    await wait_until(lambda: not ns.rooms(), what="the ghost to leave its rooms")
    leaks_nothing(server)
    await refused(a)
    assert server.stats.recoveries_refused == {reason: 1, recovery.UNKNOWN_SESSION: 1}


async def test_deliberate_disconnects_are_not_kept(start_node: Any, js: Driver) -> None:
    """A client's ``disconnect()`` and a server's ``socket.disconnect()`` end the session for
    good: nothing is kept, a later pid is unknown."""
    server: Server = await start_node(**RECOVERY)
    ns = server.of("/")
    watch = Watch(ns)
    a, b = js.connect("a", server.url, "websocket"), js.connect("b", server.url, "websocket")
    await connect_all(a, b)
    await join(a, "r")
    await join(b, "r")
    a.disconnect()
    assert await watch.lost(a.sid) == "client namespace disconnect"
    (await watch.socket(b.sid)).disconnect()
    assert await watch.lost(b.sid) == "server namespace disconnect"
    await wait_until(lambda: not ns.rooms(), what="the rooms to empty")
    leaks_nothing(server)


async def test_recovery_off_changes_nothing(start_node: Any, js: Driver) -> None:
    """Without recovery no pid is issued, no offset added, nothing kept."""
    server: Server = await start_node(**{"namespaces./.publish": "any"})
    watch = Watch(server.of("/"))
    a, b = js.connect("a", server.url, "websocket"), js.connect("b", server.url, "websocket")
    assert (await a.connected())["pid"] is None
    await connect_all(b)
    await join(a, "r")
    await publish(b, "r", 1)
    await got(a, 1)
    assert a.received("chat") == [[1]]
    await lose_connection(a, watch)
    assert server.stats.sessions_kept == 0
    a.reconnect()
    assert (await a.reconnected())["recovered"] is False
    assert server.stats.recoveries_attempted == 0


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


async def test_past_max_sessions_the_oldest_kept_session_goes(start_node: Any, js: Driver) -> None:
    """A namespace keeps at most ``max_sessions`` lost sessions: one more releases the oldest
    (its client gets a fresh session), the others still recover."""
    server: Server = await start_node(**RECOVERY, **{"recovery.max_sessions": 2})
    ns = server.of("/")
    watch = Watch(ns)
    clients = [js.connect(n, server.url, "websocket") for n in "abc"]
    await connect_all(*clients)
    for client in clients:
        await join(client, "r")
    for client in clients:
        await lose_connection(client, watch)
    await wait_until(lambda: ns.rooms() == {"r": 2}, what="the oldest ghost to leave")
    assert (server.stats.sessions_kept, server.stats.sessions_dropped) == (2, 1)
    a, b, c = clients
    await refused(a)
    await recover(b)
    await recover(c)
    leaks_nothing(server)
