"""Connection state recovery across nodes started by the CLI (uvloop): sessions handed over.

The official Node client loses its connection to its node while a client of the other node
publishes to its rooms, and comes back to the *other* node (its Manager's next connection goes
to that node's URL): it gets ``recovered: true``, the same sid and rooms, every missed message
once and in order, each numbered by the node it is on now, then live traffic; and back again;
behind HAProxy round-robin, at every reconnection; on a third node, through the first node's
pointer.
The same when its old node drains (``roomcast drain``: the node keeps its sessions until their
clients came back elsewhere, then exits), and again once that node has left. A killed node's
sessions are ``test_recovery_keeper.py``'s. Every wait is on an event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support.cluster_harness import Cluster, running_cluster, unique, wait_until
from support.haproxy import balancer, needs_haproxy
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
)
from support.recovery_clients import (
    assert_numbered,
    got,
    offsets,
    publish,
    recover,
    values,
)
from support.recovery_cluster import kept, member_and_publisher, publish_to, stats

from roomcast.ids import parse_offset, tag_of_sid

pytestmark = [pytest.mark.multinode, *JS_TEST_MARKS]

CONFIG = """
[recovery]
enabled = true
"""


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, "n1", "n2", extra_config=CONFIG) as c:
        yield c


async def test_a_client_recovers_on_the_other_node_and_back(cluster: Cluster, js: Driver) -> None:
    """Away from n2, back on n1: recovered, same sid and rooms, what it missed once and in
    order numbered by n1, then live traffic; away again, back on n2 (which n1 now points to
    through the pid's tag): the same. Each old node counts a session handed over."""
    n1, n2 = cluster.nodes["n1"].url, cluster.nodes["n2"].url
    room, other = unique("r"), unique("o")
    a, b = await member_and_publisher(cluster, js, room, "n2", "n1")
    await a.call("join", other)
    await publish(b, room, "before")
    await got(a, "before")

    a.cut()
    await a.disconnected(0)
    await kept(cluster, "n2", 1)
    await publish_to(cluster, "n2", b, room, 1, 2)
    await publish_to(cluster, "n2", b, other, {"blob": b"\x00\xff"})
    await recover(a, 1, url=n1)
    await got(a, {"blob": b"\x00\xff"})
    # Its rooms are on n1 now: n2 let the ghost go.
    await cluster.wait_room(room, {"n1": 1}, namespace="/any")
    await publish(b, room, "live")
    await got(a, "live")
    # Emits to its sid reach the node its sid names, n2, which forwards them to n1.
    c = js.connect("c", n2, "websocket", namespace="/any")
    await c.connected()
    await publish(c, a.sid, "direct")
    await got(a, "direct")
    await publish(c, [a.sid, unique("nobody")], "with a room it is not in")
    await publish(c, [a.sid, room], "with its room")  # through the room: once
    await got(a, "with its room")  # n2's messages cross the bus; b's below do not
    await publish(b, room, "after")
    await got(a, "after")
    assert values(a) == [
        "before",
        1,
        2,
        {"blob": b"\x00\xff"},
        "live",
        "direct",
        "with a room it is not in",
        "with its room",
        "after",
    ]
    moved = offsets(a)[1:]
    assert_numbered(cluster_tag(moved), moved)
    assert cluster_tag(moved) != tag_of_sid(a.sid)  # numbered by n1, not the sid's node

    a.cut()
    await a.disconnected(1)
    await kept(cluster, "n1", 1)
    await publish(b, room, 3)  # b is on n1: kept there once acked
    await recover(a, 2, url=n2)
    await got(a, 3)
    await cluster.wait_room(room, {"n2": 1}, namespace="/any")
    await publish(b, room, "home")
    await got(a, "home")
    assert values(a) == [
        "before",
        1,
        2,
        {"blob": b"\x00\xff"},
        "live",
        "direct",
        "with a room it is not in",
        "with its room",
        "after",
        3,
        "home",
    ]

    s1, s2 = await stats(cluster, "n1"), await stats(cluster, "n2")
    assert (s1["recoveries_succeeded"], s1["sessions_handed_over"]) == (1, 1)
    assert (s2["recoveries_succeeded"], s2["sessions_handed_over"]) == (1, 1)
    assert s1["sessions_kept"] == s2["sessions_kept"] == 0
    assert not s1["recoveries_refused"] and not s2["recoveries_refused"]
    code, out, err = await cluster.cli("status", "--node", n2, "--interval", "0")
    assert code == 0, err
    assert "0 sessions kept now, 1 handed over to other nodes" in out


@needs_haproxy
async def test_behind_a_round_robin_balancer_each_outage_recovers_on_the_next_node(
    cluster: Cluster, js: Driver, tmp_path: Path
) -> None:
    """Through HAProxy round-robin (no affinity), each reconnection of a WebSocket client
    reaches the other node: every one recovers there, every missed message once and in
    order, and the session is handed over each time."""
    n1, n2 = cluster.nodes["n1"].url, cluster.nodes["n2"].url
    room = unique("r")
    async with balancer([n1, n2], tmp_path) as lb:
        a = js.connect("a", lb.url, "websocket", namespace="/any")
        b = js.connect("b", n1, "websocket", namespace="/any")
        await a.connected()
        await b.connected()
        await a.call("join", room)
        for outage in range(3):
            a.cut()
            await a.disconnected(outage)

            async def keeper() -> str | None:
                for node in ("n1", "n2"):
                    if (await stats(cluster, node))["sessions_kept"] == 1:
                        return node
                return None

            node = await wait_until(keeper, what="a node to keep the session")
            if node == "n2":
                await publish_to(cluster, "n2", b, room, outage)
            else:
                await publish(b, room, outage)  # b is on n1: kept there once acked
            await recover(a, outage + 1)
            await got(a, outage)
        await publish(b, room, "live")
        await got(a, "live")
    assert values(a) == [0, 1, 2, "live"]
    s1, s2 = await stats(cluster, "n1"), await stats(cluster, "n2")
    assert s1["recoveries_succeeded"] + s2["recoveries_succeeded"] == 3
    assert s1["sessions_handed_over"] + s2["sessions_handed_over"] == 3


def cluster_tag(found: list[str]) -> Any:
    parsed = parse_offset(found[-1])
    assert parsed is not None
    return parsed[0]


async def test_a_draining_node_keeps_sessions_until_their_clients_come_back(
    cluster: Cluster, js: Driver
) -> None:
    """``roomcast drain n2``: n2 closes its client's connection, keeps its session while the
    client is away (messages published meanwhile reach it), hands it over when the client
    comes back on n1 (recovered, nothing lost), and only then exits."""
    n1 = cluster.nodes["n1"].url
    room = unique("r")
    a, b = await member_and_publisher(cluster, js, room, "n2", "n1")

    code, _, err = await cluster.cli("drain", "n2", "--window", "0.1")
    assert code == 0, err
    await a.disconnected(0)
    await kept(cluster, "n2", 1)
    await publish_to(cluster, "n2", b, room, 1, 2, 3)
    assert cluster.nodes["n2"].proc.running  # it waits for its client
    await recover(a, 1, url=n1)
    await got(a, 3)
    await publish(b, room, "live")
    await got(a, "live")
    assert values(a) == [1, 2, 3, "live"]
    assert await cluster.nodes["n2"].proc.wait() == 0


async def test_a_third_node_follows_the_old_nodes_pointer(tmp_path: Path, js: Driver) -> None:
    """Created on n3, recovered on n1, then back on n2: n2 asks n3 (the pid's node), which
    points to n1, which hands the session over; nothing lost on the way."""
    async with running_cluster(tmp_path, "n1", "n2", "n3", extra_config=CONFIG) as cluster:
        urls = {name: node.url for name, node in cluster.nodes.items()}
        room = unique("r")
        a, b = await member_and_publisher(cluster, js, room, "n3", "n2")
        for outage, (away, back) in enumerate((("n3", "n1"), ("n1", "n2"))):
            a.cut()
            await a.disconnected(outage)
            await kept(cluster, away, 1)
            await publish_to(cluster, away, b, room, outage)
            await recover(a, outage + 1, url=urls[back])
            await got(a, outage)
        await publish(b, room, "live")
        await got(a, "live")
        assert values(a) == [0, 1, "live"]
        handed = [(await stats(cluster, n))["sessions_handed_over"] for n in ("n1", "n2", "n3")]
        assert handed == [1, 0, 1]


async def test_a_session_whose_first_node_has_left_recovers_where_it_went(
    tmp_path: Path, js: Driver
) -> None:
    """Created on n1, which drains (its client recovers on n2) and exits; the client then
    loses its connection to n2 and comes back to n3: n3 cannot ask n1 (gone, with its
    pointer), so it asks every live node, and n2 hands the session over; nothing lost."""
    async with running_cluster(tmp_path, "n1", "n2", "n3", extra_config=CONFIG) as cluster:
        urls = {name: node.url for name, node in cluster.nodes.items()}
        room = unique("r")
        a, b = await member_and_publisher(cluster, js, room, "n1", "n3")

        code, _, err = await cluster.cli("drain", "n1", "--window", "0.1")
        assert code == 0, err
        await a.disconnected(0)
        await kept(cluster, "n1", 1)
        await publish_to(cluster, "n1", b, room, 1)
        await recover(a, 1, url=urls["n2"])
        await got(a, 1)
        assert await cluster.nodes["n1"].proc.wait() == 0
        await cluster.converged(["n2", "n3"])

        a.cut()
        await a.disconnected(1)
        await kept(cluster, "n2", 1)
        await publish_to(cluster, "n2", b, room, 2)
        await recover(a, 2, url=urls["n3"])
        await got(a, 2)
        await publish(b, room, "live")
        await got(a, "live")
        assert values(a) == [1, 2, "live"]
        s2, s3 = await stats(cluster, "n2"), await stats(cluster, "n3")
        assert (s2["sessions_handed_over"], s3["recoveries_succeeded"]) == (1, 1)
        assert not s3["recoveries_refused"]
        assert s2["sessions_kept"] == s3["sessions_kept"] == 0
