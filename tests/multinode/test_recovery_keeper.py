"""Connection state recovery that survives ``kill -9``: a node's sessions kept by its keeper.

Nodes started by the CLI (uvloop), the official Node client. A node is killed (SIGKILL) while
its client is away, or under its client; messages are published to the client's rooms from
another node before the kill (the dead node had them: its keeper has its log) and after it
(nobody wrote them: the keeper's shadow and then its own copy have them). The client comes
back to the keeper, or to a node that is not the keeper: ``recovered: true``, the same sid,
every missed message once and in order, then live traffic. When the keeper is killed too,
the client gets a fresh session (``old node gone``). Every wait is on an event.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support.cluster_harness import Cluster, running_cluster, unique, wait_until
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    JsClient,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
)
from support.recovery_clients import got, offsets, publish, recover, refused, values
from support.recovery_cluster import kept, publish_to, stats
from support.scrape import scrape

from roomcast.ids import NodeTag, node_tag, parse_offset
from roomcast.node import recovery
from roomcast.node.keeper import keepers

pytestmark = [pytest.mark.multinode, *JS_TEST_MARKS]

CONFIG = """
[recovery]
enabled = true
"""


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, "n1", "n2", "n3", extra_config=CONFIG) as c:
        yield c


async def keeper_of(cluster: Cluster, node: str, sessions: int, packets: int = 0) -> str:
    """The node that keeps ``node`` (the next live one on the ring of tags), once its copy is
    exact with ``sessions`` sessions and ``packets`` kept packets. (A packet reaches its
    client before the node's keeper hears of it: a node killed in between makes that
    client's recovery refused, ``unknown offset``.)"""
    tags: dict[bytes, str] = {}
    for name in cluster.alive_nodes():
        doc = await cluster.admin(name, "/admin/cluster")
        tags[node_tag(doc["cluster"]["node"], doc["cluster"]["incarnation"])] = name
    mine = next(t for t, n in tags.items() if n == node)
    keeper = tags[keepers(NodeTag(mine), [NodeTag(t) for t in tags])[0]]

    async def check() -> bool:
        own = await cluster.admin(node, "/admin/cluster")
        doc = await cluster.admin(keeper, "/admin/cluster")
        tag = node_tag(doc["cluster"]["node"], doc["cluster"]["incarnation"])
        if own["cluster"]["keeping"]["keeper"] != tag.hex():
            return False  # its ring has not settled yet
        return any(
            kept["node"] == node
            and kept["synced"]
            and kept["broken"] is None
            and kept["sessions"] == sessions
            and kept["packets"] == packets
            for kept in doc["cluster"]["keeping"]["kept"].values()
        )

    await wait_until(check, what=f"{keeper} to keep {node} with {sessions} sessions")
    return keeper


async def kill(cluster: Cluster, node: str) -> None:
    proc = cluster.nodes[node].proc
    proc.kill9()
    await asyncio.wait_for(proc.wait(), 10)


async def recovered_on(cluster: Cluster, client: JsClient, nth: int, node: str) -> dict[str, Any]:
    """:func:`recover` on ``node``; when it fails, with why every node refused."""
    try:
        return await recover(client, nth, url=cluster.nodes[node].url)
    except AssertionError as exc:
        why = {n: (await stats(cluster, n))["recoveries_refused"] for n in cluster.alive_nodes()}
        raise AssertionError(f"{exc}; refused: {why}") from None


async def dead_to_all(
    cluster: Cluster, node: str, keeper: str, exclude: list[str] | None = None
) -> None:
    """Until every live node calls ``node`` down, and its keeper adopted its copy, every
    subscription of it proved (an emit to one of its sockets' sids goes on the sid's topic
    from then on, and the keeper holds it)."""

    async def check() -> bool:
        for name in cluster.alive_nodes():
            if name in (exclude or []):
                continue  # stopped: it answers nothing
            doc = await cluster.admin(name, "/admin/cluster")
            if any(n["node"] == node and n["status"] != "down" for n in doc["cluster"]["nodes"]):
                return False
        doc = await cluster.admin(keeper, "/admin/cluster")
        copies = [c for c in doc["cluster"]["keeping"]["kept"].values() if c["node"] == node]
        return len(copies) == 1 and copies[0]["adopted"] and copies[0]["proving"] == 0

    await wait_until(check, what=f"{node} down everywhere, adopted by {keeper}")


async def member_on_n2(cluster: Cluster, js: Driver, room: str) -> tuple[JsClient, str]:
    """Client ``a`` on n2, in ``room``; returns it and the node that keeps n2 (once it has
    a's session)."""
    a = js.connect("a", cluster.nodes["n2"].url, "websocket", namespace="/any")
    await a.connected()
    await a.call("join", room)
    return a, await keeper_of(cluster, "n2", 1)


def others(cluster: Cluster, *names: str) -> list[str]:
    return [n for n in cluster.nodes if n not in names]


async def test_killed_while_its_client_is_away_the_keeper_hands_the_session_over(
    cluster: Cluster, js: Driver
) -> None:
    """n2 keeps a's session (a lost its connection) and gets messages for it; n2 is killed;
    more are published. a comes back to the node that is *not* n2's keeper: it claims the
    session from the keeper, and a gets everything, once, in order, then live traffic."""
    room, other = unique("r"), unique("o")
    a = js.connect("a", cluster.nodes["n2"].url, "websocket", namespace="/any")
    await a.connected()
    await a.call("join", room)
    await a.call("join", other)
    keeper = await keeper_of(cluster, "n2", 1)
    (third,) = others(cluster, "n2", keeper)
    b = js.connect("b", cluster.nodes[third].url, "websocket", namespace="/any")
    await b.connected()
    await publish(b, room, "before")
    await got(a, "before")

    a.cut()
    await a.disconnected(0)
    await kept(cluster, "n2", 1)
    await publish_to(cluster, "n2", b, room, 1, 2)  # n2 wrote them (to its ghost)
    await publish_to(cluster, "n2", b, other, {"blob": b"\x00\xff"})
    assert await keeper_of(cluster, "n2", 1, packets=4) == keeper
    await kill(cluster, "n2")
    await publish(b, room, 3)  # nobody wrote it: the keeper has it
    await publish(b, other, 4)
    await dead_to_all(cluster, "n2", keeper)
    await publish(b, a.sid, 5)  # on the sid's topic now: the keeper holds it

    event = await recovered_on(cluster, a, 1, third)
    await got(a, 5)
    await cluster.wait_room(room, {third: 1}, namespace="/any", on=[third, keeper])
    await publish(b, room, "live")
    await got(a, "live")
    c = js.connect("c", cluster.nodes[keeper].url, "websocket", namespace="/any")
    await c.connected()
    await publish(c, a.sid, "direct")  # its new node holds the sid's topic
    await got(a, "direct")
    assert values(a) == ["before", 1, 2, {"blob": b"\x00\xff"}, 3, 4, 5, "live", "direct"]
    # Numbered by the node it is on now, in order.
    replayed = [parse_offset(o) for o in offsets(a)[1:]]
    assert all(p is not None for p in replayed)
    counters = [p[1] for p in replayed if p is not None]
    assert counters == sorted(set(counters))
    assert event["pid"] is not None
    s_third, s_keeper = await stats(cluster, third), await stats(cluster, keeper)
    assert s_third["recoveries_succeeded"] == 1
    assert s_keeper["sessions_handed_over"] == 1
    assert (s_keeper["keeper_adopted"], s_keeper["keeper_lost"]) == (1, 0)
    assert s_third["keeper_adopted"] == 0
    assert not s_third["recoveries_refused"] and not s_keeper["recoveries_refused"]
    code, out, err = await cluster.cli(
        "status", "--node", cluster.nodes[keeper].url, "--interval", "0"
    )
    assert code == 0, err
    assert "dead nodes' copies: 1 adopted, 0 lost" in out
    metrics = await scrape(cluster.nodes[keeper].url + "/metrics")
    assert metrics.value("roomcast_keeper_adopted_total") == 1
    copies = (await cluster.admin(keeper, "/admin/cluster"))["cluster"]["keeping"]["kept"]
    # Handed over: n2's copy holds nothing more (the keeper points to where its session
    # went, and remembers it in case n2 was only taken for dead).
    n2_copy = [c for c in copies.values() if c["node"] == "n2"]
    assert [(c["sessions"], c["packets"], c["topics"]) for c in n2_copy] in ([], [(0, 0, 0)])
    # What it keeps now is the third node's (a and b are there).
    assert metrics.value("roomcast_keeper_sessions") == sum(c["sessions"] for c in copies.values())


async def test_killed_under_its_client_the_client_recovers_on_the_keeper(
    cluster: Cluster, js: Driver
) -> None:
    """n2 is killed while a is connected to it: a's connection dies with it; messages are
    published meanwhile; a comes back to n2's keeper itself: recovered, nothing missed."""
    room = unique("r")
    a, keeper = await member_on_n2(cluster, js, room)
    b = js.connect("b", cluster.nodes[keeper].url, "websocket", namespace="/any")
    await b.connected()
    await publish(b, room, "before")
    await got(a, "before")
    assert await keeper_of(cluster, "n2", 1, packets=1) == keeper

    await kill(cluster, "n2")
    await a.disconnected(0)
    await publish(b, room, 1, 2)
    await recovered_on(cluster, a, 1, keeper)
    await got(a, 2)
    await publish(b, room, "live")
    await got(a, "live")
    assert values(a) == ["before", 1, 2, "live"]
    doc = await stats(cluster, keeper)
    assert (doc["recoveries_succeeded"], doc["sessions_handed_over"]) == (1, 1)
    assert doc["sessions_kept"] == 0

    # Lost again, on the keeper now: recovered there like any session of its own.
    a.cut()
    await a.disconnected(1)
    await kept(cluster, keeper, 1)
    await publish(b, room, 3)
    await recovered_on(cluster, a, 2, keeper)
    await got(a, 3)
    assert values(a) == ["before", 1, 2, "live", 3]


async def test_a_dead_node_whose_keeper_died_too_means_a_fresh_session(
    cluster: Cluster, js: Driver
) -> None:
    """Both n2 and its keeper are killed: the client gets a fresh session on the third node
    (``old node gone``), nothing hangs, and it works as a new one."""
    room = unique("r")
    a, keeper = await member_on_n2(cluster, js, room)
    (third,) = others(cluster, "n2", keeper)
    a.cut()
    await a.disconnected(0)
    await kept(cluster, "n2", 1)
    await kill(cluster, "n2")
    await kill(cluster, keeper)
    await refused(a, 1, url=cluster.nodes[third].url)
    doc = await stats(cluster, third)
    assert doc["recoveries_refused"] == {recovery.OLD_NODE_GONE: 1}
    b = js.connect("b", cluster.nodes[third].url, "websocket", namespace="/any")
    await b.connected()
    await a.call("join", room)
    await publish(b, room, "fresh")
    await got(a, "fresh")
    assert values(a) == ["fresh"]


async def test_an_emit_to_a_handed_over_sid_reaches_it_after_its_first_node_died(
    cluster: Cluster, js: Driver
) -> None:
    """a was created on n2 and recovered on n1 while n2 lived (n2 forwards emits to a's sid);
    then n2 is killed: emits to a's sid go on the sid's own topic, which n1 holds from then
    on. Each arrives once."""
    a = js.connect("a", cluster.nodes["n2"].url, "websocket", namespace="/any")
    c = js.connect("c", cluster.nodes["n3"].url, "websocket", namespace="/any")
    await a.connected()
    await c.connected()
    await keeper_of(cluster, "n2", 1)
    a.cut()
    await a.disconnected(0)
    await kept(cluster, "n2", 1)
    await recovered_on(cluster, a, 1, "n1")
    await publish(c, a.sid, "forwarded by n2")
    await got(a, "forwarded by n2")
    await kill(cluster, "n2")

    async def held() -> bool:
        for name in ("n1", "n3"):
            doc = await cluster.admin(name, "/admin/cluster")
            if any(n["node"] == "n2" and n["status"] != "down" for n in doc["cluster"]["nodes"]):
                return False
        h = (await cluster.admin("n1", "/admin/cluster"))["cluster"]["handovers"]
        return bool(h == {"foreign_sids": 1, "sid_topics": 1, "proving": 0})

    await wait_until(held, what="n2 down everywhere, n1 holding a's sid topic")
    await publish(c, a.sid, "on its topic")
    await publish(c, [a.sid, unique("nobody")], "with a room")
    await got(a, "with a room")
    assert values(a) == ["forwarded by n2", "on its topic", "with a room"]


async def test_a_node_restarted_at_once_after_kill_9_its_clients_recover_through_it(
    cluster: Cluster, js: Driver
) -> None:
    """n2 is killed and started again at once (a crash and a supervisor's restart): the new
    n2 has a new tag, so its old sessions are its keeper's; a client that comes back to the
    new n2 recovers through the keeper, with what was published meanwhile."""
    room = unique("r")
    a, keeper = await member_on_n2(cluster, js, room)
    b = js.connect("b", cluster.nodes[keeper].url, "websocket", namespace="/any")
    await b.connected()
    await kill(cluster, "n2")
    await a.disconnected(0)
    await publish(b, room, 1)
    await cluster.start_node("n2")
    await publish(b, room, 2)
    await recovered_on(cluster, a, 1, "n2")
    await got(a, 2)
    await publish(b, room, "live")
    await got(a, "live")
    assert values(a) == [1, 2, "live"]
    assert (await stats(cluster, keeper))["keeper_adopted"] == 1


async def test_a_node_taken_for_dead_that_comes_back_lets_its_handed_over_sessions_go(
    cluster: Cluster, js: Driver
) -> None:
    """n2 stalls (SIGSTOP) past the time the others take to call it down: its keeper adopts
    its copy and a's session goes to the third node. n2 resumes: its keeper tells it the
    session went, and n2 points there; a later outage recovers through n2's pointer, with no
    message twice."""
    room = unique("r")
    a, keeper = await member_on_n2(cluster, js, room)
    (third,) = others(cluster, "n2", keeper)
    b = js.connect("b", cluster.nodes[third].url, "websocket", namespace="/any")
    await b.connected()
    a.cut()
    await a.disconnected(0)
    await kept(cluster, "n2", 1)
    proc = cluster.nodes["n2"].proc.process
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        await publish(b, room, 1)
        await dead_to_all(cluster, "n2", keeper, exclude=["n2"])
        await recovered_on(cluster, a, 1, third)
        await got(a, 1)
    finally:
        proc.send_signal(signal.SIGCONT)

    async def back() -> bool:
        for name in cluster.alive_nodes():
            doc = await cluster.admin(name, "/admin/cluster")
            if any(n["node"] == "n2" and n["status"] != "alive" for n in doc["cluster"]["nodes"]):
                return False
        return bool((await stats(cluster, "n2"))["sessions_kept"] == 0)

    await wait_until(back, what="n2 back, its handed-over session let go")
    a.cut()
    await a.disconnected(1)
    await kept(cluster, third, 1)
    await publish(b, room, 2)
    await recovered_on(cluster, a, 2, keeper)  # asks n2 (the pid's node), which points on
    await got(a, 2)
    await publish(b, room, "live")
    await got(a, "live")
    assert values(a) == [1, 2, "live"]
