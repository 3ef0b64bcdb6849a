"""``/metrics`` of nodes and a router started by ``python -m roomcast``, scraped during traffic:
a publish to a room with members on two nodes moves each node's deliveries by exactly its
members, joins are timed, the bus, replica and discovery show the cluster as it is, and the
router serves its own metrics under the same access rule."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from support.cluster_clients import Connect, clients
from support.cluster_harness import Cluster, running_cluster, unique, wait_until
from support.scrape import Scrape, scrape, scrape_status

pytestmark = [pytest.mark.multinode, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """A router and two nodes."""
    async with running_cluster(tmp_path_factory.mktemp("metrics"), "n1", "n2") as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def connect() -> AsyncIterator[Connect]:
    async with clients() as factory:
        yield factory


async def node_metrics(cluster: Cluster, node: str) -> Scrape:
    return await scrape(cluster.nodes[node].url + "/metrics")


async def test_a_publish_moves_each_node_by_its_members(cluster: Cluster, connect: Connect) -> None:
    """2 members on n1 and 3 on n2; one publish from n1: n1 delivers to its other member, n2
    to its 3 (one bus broadcast), and each node timed exactly its own joins."""
    room = unique("metrics")
    before = {n: await node_metrics(cluster, n) for n in ("n1", "n2")}
    peers = [await connect(cluster, "n1") for _ in range(2)]
    peers += [await connect(cluster, "n2") for _ in range(3)]
    for peer in peers:
        await peer.join(room)
    await cluster.wait_room(room, {"n1": 2, "n2": 3})
    await peers[0].publish(room, "news", "hello")
    for peer in peers[1:]:
        await peer.wait_for_value("news", "hello")
    after = {n: await node_metrics(cluster, n) for n in ("n1", "n2")}
    n1, n2 = after["n1"], after["n2"]
    assert n1.delta(before["n1"], "roomcast_broadcasts_total", source="local") == 1
    assert n1.delta(before["n1"], "roomcast_deliveries_total", source="local") == 1
    assert n1.delta(before["n1"], "roomcast_deliveries_total", source="bus") == 0
    assert n2.delta(before["n2"], "roomcast_broadcasts_total", source="bus") == 1
    assert n2.delta(before["n2"], "roomcast_deliveries_total", source="bus") == 3
    assert n2.delta(before["n2"], "roomcast_deliveries_total", source="local") == 0
    assert n2.delta(before["n2"], "roomcast_broadcast_fanout_sum", source="bus") == 3
    assert n2.delta(before["n2"], "roomcast_broadcast_fanout_bucket", source="bus", le="2.0") == 0
    assert n2.delta(before["n2"], "roomcast_broadcast_fanout_bucket", source="bus", le="5.0") == 1
    assert n1.delta(before["n1"], "roomcast_join_seconds_count") == 2
    assert n2.delta(before["n2"], "roomcast_join_seconds_count") == 3
    assert n2.delta(before["n2"], "roomcast_socket_connects_total", namespace="/") == 3
    assert n2.value("roomcast_sockets", namespace="/", transport="websocket") >= 3
    for scraped in (n1, n2):
        assert scraped.value("roomcast_cluster_nodes", state="alive") == 1
        assert scraped.value("roomcast_cluster_nodes", state="down") == 0
        assert scraped.value("roomcast_bus_routers", state="live") == 1
        assert scraped.value("roomcast_discovery_source_ok", backend="static") == 1
        assert scraped.value("roomcast_discovery_routers", health="healthy") == 1
        assert scraped.value("roomcast_bus_subscriptions") >= 3  # gossip, its own, the room
        assert scraped.total("roomcast_bus_received_total") > 0
        assert scraped.total("roomcast_bus_undecodable_total") == 0
        assert scraped.types["roomcast_join_seconds"] == "histogram"
        values = {value for _, _, value in scraped.label_values()}
        assert room not in values
        assert not values & {peer.sid for peer in peers}
    assert n1.has("roomcast_cluster_peer_age_seconds", peer="n2")
    assert n2.has("roomcast_cluster_peer_age_seconds", peer="n1")


async def test_the_router_serves_its_metrics(cluster: Cluster, connect: Connect) -> None:
    """The router's /metrics agrees with its /stats on subscriptions (nothing joins
    meanwhile), counts the traffic of a publish, and follows the admin rule."""
    url = cluster.router_http + "/metrics"
    before = await scrape(url)
    room = unique("routed")
    sender = await connect(cluster, "n1", namespaces=["/any"])  # publishes to any room
    receiver = await connect(cluster, "n2", namespaces=["/any"])
    await receiver.join(room, namespace="/any")
    await cluster.wait_room(room, {"n2": 1}, namespace="/any")
    await sender.publish(room, "ping", 1, namespace="/any")
    await receiver.wait_for_value("ping", 1, namespace="/any")

    async def steady() -> tuple[Scrape, dict[str, object]] | None:
        stats = await cluster.router_stats()
        scraped = await scrape(url)
        again = await cluster.router_stats()
        same = (
            stats["subscriptions"] == again["subscriptions"] and stats["topics"] == again["topics"]
        )
        return (scraped, stats) if same else None

    after, stats = await wait_until(steady, what="router subscriptions at rest")
    assert after.value("roomcast_router_up") == 1
    assert after.value("roomcast_router_subscriptions") == stats["subscriptions"]
    assert after.value("roomcast_router_topics") == stats["topics"]
    assert after.delta(before, "roomcast_router_messages_received_total") >= 1
    assert after.delta(before, "roomcast_router_messages_sent_total") >= 1
    assert (
        after.delta(before, "roomcast_router_subscription_changes_total", change="subscribe") >= 1
    )
    assert after.value("roomcast_router_malformed_total") == 0
    assert after.value("roomcast_discovery_source_ok", backend="static") == 1
    assert not after.has("roomcast_router_curve_accepted_total")  # an open bus
    for headers in ({"Host": "evil.example"}, {"X-Forwarded-For": "203.0.113.7"}):
        assert (await scrape_status(url, **headers))[0] == 403, headers
