"""The one rule that maps a broadcast's target to the bus topics that carry it."""

from __future__ import annotations

from roomcast.cluster import routing, wire
from roomcast.cluster.routing import Target
from roomcast.ids import Namespace, new_sid, node_tag

NS = Namespace("/chat")


def test_a_namespace_wide_broadcast_goes_on_the_namespace_topic() -> None:
    assert routing.topics(Target(NS)) == [wire.namespace_topic(NS)]


def test_a_few_rooms_go_once_per_room_topic() -> None:
    rooms = frozenset(f"r{i}" for i in range(routing.MAX_ROOM_TOPICS))
    got = routing.topics(Target(NS, rooms))
    assert sorted(got) == sorted(wire.room_topic(NS, r) for r in rooms)


def test_more_rooms_than_the_limit_go_once_on_the_namespace_topic() -> None:
    """Past ``max_room_topics`` rooms, one envelope on the namespace topic replaces one per
    room (each of which would carry the data and the whole room list)."""
    rooms = frozenset(f"r{i}" for i in range(2_000))
    assert routing.topics(Target(NS, rooms)) == [wire.namespace_topic(NS)]
    assert routing.topics(Target(NS, frozenset(("a", "b", "c"))), max_room_topics=2) == [
        wire.namespace_topic(NS)
    ]


def test_a_live_nodes_sid_goes_to_its_node_topic_and_a_local_one_nowhere() -> None:
    tag = node_tag("n2", 1)
    remote, local = new_sid(tag), new_sid(node_tag("n1", 1))
    target = Target(NS, frozenset((remote, local, "room")))
    got = routing.topics(target, local_sids={local}, sid_node=lambda t: t == tag)
    assert sorted(got) == sorted([wire.node_topic(tag), wire.room_topic(NS, "room")])
