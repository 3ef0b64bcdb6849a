"""Connection state recovery on nodes started by the CLI (uvloop), in a cluster of two.

The official Node client loses its connection to its node while a client of the other node
publishes to its rooms; it recovers on its own node with every missed message once and in
order, each numbered by its own node; its node kept its room interest meanwhile (the other
node still saw it in its rooms). A session whose window ended and one whose history a flood
moved past get a fresh session, and nothing is left behind. The counters are in
``/admin/stats`` and ``roomcast status``. Every wait is on an event (a report, a counter, a
room view).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from support.cluster_harness import Cluster, running_cluster, unique
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    JsClient,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
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
from support.recovery_cluster import kept, member_and_publisher, publish_to, stats

from roomcast.ids import tag_of_sid
from roomcast.node import recovery

pytestmark = [pytest.mark.multinode, *JS_TEST_MARKS]

#: Recovery on for "/any" (every declared namespace, through [recovery]), and a namespace
#: whose sessions are kept briefly and whose history is short.
CONFIG = """
[recovery]
enabled = true

[namespaces."/brief"]
publish = "any"

[namespaces."/brief".recovery]
max_disconnection_ms = 300
max_packets = 10
"""


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, "n1", "n2", extra_config=CONFIG) as c:
        yield c


async def lose(cluster: Cluster, client: JsClient, node: str, nth: int = 0) -> None:
    """Cut the client's connection; until its node keeps its session."""
    client.cut()
    await client.disconnected(nth)
    await kept(cluster, node, 1)


async def test_a_client_recovers_on_its_node_while_the_other_publishes(
    cluster: Cluster, js: Driver
) -> None:
    """Four outages in a row, messages published on the other node each time (binary ones
    too): every message once, in order, numbered by the client's own node; the other node
    sees the client in its room all along; ``/admin/stats`` and ``roomcast status`` count it
    all."""
    room = unique("r")
    a, b = await member_and_publisher(cluster, js, room, "n2", "n1")
    sent = 0
    for outage in range(3):
        await lose(cluster, a, "n2", outage)
        await cluster.wait_room(room, {"n2": 1}, namespace="/any")  # its ghost holds it
        await publish_to(cluster, "n2", b, room, sent, sent + 1)
        sent += 2
        await recover(a, outage + 1)
        await got(a, sent - 1)
    await publish(b, room, sent)
    await got(a, sent)
    assert values(a) == list(range(sent + 1))
    # Binary data crosses the bus as the origin framed it, and is re-framed with n2's offset.
    await lose(cluster, a, "n2", 3)
    await publish_to(cluster, "n2", b, room, {"blob": b"\x00\xff"})
    await recover(a, 4)
    await publish(b, room, b"live")
    await got(a, b"live")
    assert values(a)[-2:] == [{"blob": b"\x00\xff"}, b"live"]
    assert_numbered(tag_of_sid(a.sid), offsets(a))

    doc = await stats(cluster, "n2")
    assert (doc["recoveries_attempted"], doc["recoveries_succeeded"]) == (4, 4)
    assert doc["replayed_messages"] == 7 and doc["sessions_kept"] == 0
    code, out, err = await cluster.cli(
        "status", "--node", cluster.nodes["n2"].url, "--interval", "0"
    )
    assert code == 0, err
    assert "recovery: 4 attempted, 4 recovered (7 messages replayed), refused: none" in out


async def test_what_cannot_be_recovered_gets_a_fresh_session(cluster: Cluster, js: Driver) -> None:
    """A session back after its window, one whose history a flood moved past: each a fresh
    session, its old socket gone from its rooms on every node (a session presented to the
    other node is handed over: ``test_recovery_handover.py``)."""
    n1, n2 = cluster.nodes["n1"].url, cluster.nodes["n2"].url
    room = unique("r")
    a = js.connect("a", n2, "websocket", namespace="/brief")
    b = js.connect("b", n1, "websocket", namespace="/brief")
    await a.connected()
    await b.connected()
    await a.call("join", room)
    await publish(b, room, "seen")
    await got(a, "seen")

    # Kept until its window ends; then it leaves its room everywhere.
    await lose(cluster, a, "n2")
    await kept(cluster, "n2", 0)
    await cluster.wait_room(room, {}, namespace="/brief")
    await refused(a)

    # A flood past the history while the client is away.
    await a.call("join", room)
    await cluster.wait_room(room, {"n2": 1}, namespace="/brief")
    await lose(cluster, a, "n2", 1)
    await publish_to(cluster, "n2", b, room, *range(15))
    await refused(a, 2)
    await cluster.wait_room(room, {}, namespace="/brief")
    doc = await stats(cluster, "n2")
    assert doc["recoveries_refused"] == {
        recovery.UNKNOWN_SESSION: 1,
        recovery.HISTORY_EVICTED: 1,
    }
    assert doc["sessions_kept"] == 0
    assert values(a) == ["seen"]
