"""Connection state recovery refused, with the official Node ``socket.io-client@4``.

When a session cannot be recovered exactly (its window ended, the history dropped a message it
missed, a pid or an offset this node cannot vouch for, more lost sessions than a namespace
keeps) its client gets a fresh session, ``recovered: false``, and nothing of the old one is
left behind: no kept session, no ghost in a room. Deliberate disconnects are never kept, and
with recovery off nothing changes. The recoveries themselves are in ``test_js_recovery.py``.
Every wait is on an event.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.cluster_harness import wait_until
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    connect_all,
    join,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
)
from support.recovery_clients import (
    Watch,
    got,
    leaks_nothing,
    lose_connection,
    publish,
    recover,
    refused,
    values,
)

from roomcast.ids import node_tag, offset_text, tag_of_sid
from roomcast.node import recovery
from roomcast.node.server import Server

pytestmark = JS_TEST_MARKS

RECOVERY = {"recovery.enabled": True, "namespaces./.publish": "any"}


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


@pytest.mark.parametrize("offset", ["garbage", "ahead"])
async def test_an_offset_this_node_never_gave_gets_a_fresh_session(
    start_node: Any, js: Driver, offset: str
) -> None:
    """A kept session presented with something that is no offset, or with one this node
    never gave: a fresh session, and the kept one released (its client cannot recover it any
    more)."""
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
        "garbage": "not an offset",
        "ahead": offset_text(tag, 10**6),
    }[offset]
    c = js.connect("c", server.url, "websocket", auth={"pid": event["pid"], "offset": presented})
    assert (await c.connected())["recovered"] is False
    reason = {
        "garbage": recovery.INVALID_OFFSET,
        "ahead": recovery.UNKNOWN_OFFSET,
    }[offset]
    await wait_until(lambda: not ns.rooms(), what="the ghost to leave its rooms")
    leaks_nothing(server)
    await refused(a)
    assert server.stats.recoveries_refused == {reason: 1, recovery.UNKNOWN_SESSION: 1}


async def test_an_offset_of_another_node_means_nothing_received_yet(
    start_node: Any, js: Driver
) -> None:
    """A kept session presented with another node's offset (socket.io-client keeps its last
    session's until its first event) recovers with everything the socket was sent since it
    connected: the client got nothing this node numbered."""
    server: Server = await start_node(**RECOVERY)
    ns = server.of("/")
    watch = Watch(ns)
    a = js.connect("a", server.url, "websocket")
    event = await a.connected()
    await join(a, "r")
    await lose_connection(a, watch)
    ns.to("r").emit("chat", "missed")
    foreign = offset_text(node_tag("elsewhere", 1), 1)
    c = js.connect("c", server.url, "websocket", auth={"pid": event["pid"], "offset": foreign})
    assert (await c.connected())["sid"] == a.sid
    await got(c, "missed")
    assert server.stats.recoveries_succeeded == 1 and not server.stats.recoveries_refused


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


async def test_after_a_refusal_the_fresh_session_recovers_despite_the_old_offset(
    start_node: Any, js: Driver
) -> None:
    """socket.io-client keeps its old session's last offset in the fresh one until a first
    event: that offset, older than the new socket, means it missed everything since the new
    socket connected, so losing the fresh session before any event still recovers it."""
    server: Server = await start_node(**RECOVERY, **{"recovery.max_packets": 3})
    ns = server.of("/")
    watch = Watch(ns)
    a, b = js.connect("a", server.url, "websocket"), js.connect("b", server.url, "websocket")
    await connect_all(a, b)
    await join(a, "r")
    await publish(b, "r", "old")
    await got(a, "old")
    await lose_connection(a, watch)
    await publish(b, "r", *range(5))  # past the history: the old session is refused
    await refused(a)
    await join(a, "r")
    await lose_connection(a, watch, 1)
    await publish(b, "r", "new")
    await recover(a, 2)
    await got(a, "new")
    assert values(a) == ["old", "new"]
