"""The membership replica's rules, driven without an event loop.

Every gossip message goes through the wire codec (``wire.encode`` then ``wire.decode``) so the
replica sees exactly what a node would hand it. Time is a plain number passed in. The
convergence properties are in ``test_membership_convergence.py``.
"""

from __future__ import annotations

from support.membership_helpers import DOWN_AFTER, SUSPECT_AFTER, origin, replica

from roomcast.cluster import wire
from roomcast.cluster.membership import (
    MAX_BUFFERED_DELTAS,
    SNAPSHOT_RETRY,
    Action,
    LocalFacts,
    NodeDown,
    NodeStatus,
    NodeUp,
    Replica,
    RequestSnapshot,
)
from roomcast.ids import NodeId, node_tag


def feed(r: Replica, facts: LocalFacts, body: wire.Body, now: float) -> list[Action]:
    """Deliver ``body`` from ``facts``' node to ``r`` through the wire codec."""
    header, decoded = wire.decode(wire.encode(facts.node, facts.incarnation, 1, body))
    return r.receive(header, decoded, now)


def delta(facts: LocalFacts, *changes: tuple[str, str, int]) -> wire.Delta:
    """Apply ``changes`` to ``facts`` and take them as one numbered delta."""
    for ns, room, count in changes:
        facts.set_count(ns, room, count)
    d = facts.take_delta()
    assert d is not None
    return d


def synced(r: Replica, facts: LocalFacts, now: float = 0.0) -> None:
    """Introduce ``facts``' node to ``r`` and answer its snapshot request."""
    assert feed(r, facts, facts.heartbeat(), now) == [
        NodeUp(NodeId(facts.node)),
        RequestSnapshot(NodeId(facts.node), facts.tag),
    ]
    assert feed(r, facts, facts.snapshot(), now) == []


def ask(facts: LocalFacts) -> RequestSnapshot:
    """The snapshot request the replica makes of ``facts``' node."""
    return RequestSnapshot(NodeId(facts.node), facts.tag)


# --- deltas -----------------------------------------------------------------------------------


def test_in_order_deltas_apply() -> None:
    """Deltas numbered one after the other apply to the view and the room index."""
    r, o = replica(), origin()
    synced(r, o)
    assert feed(r, o, delta(o, ("/", "a", 2), ("/chat", "a", 1)), 1.0) == []
    assert feed(r, o, delta(o, ("/", "b", 1)), 1.0) == []
    assert feed(r, o, delta(o, ("/", "a", 0)), 1.0) == []
    assert r.facts("n1") == {("/chat", "a"): 1, ("/", "b"): 1} == o.rooms
    assert r.nodes_with_rooms("/", ["a"]) == set()
    assert r.nodes_with_rooms("/", ["a", "b"]) == {"n1"}
    assert r.room_sizes() == {("/chat", "a"): {"n1": 1}, ("/", "b"): {"n1": 1}}
    assert r.room_sizes("/chat") == {("/chat", "a"): {"n1": 1}}


def test_duplicate_deltas_are_ignored() -> None:
    """A delta that was already applied changes nothing when it arrives again."""
    r, o = replica(), origin()
    synced(r, o)
    d1 = delta(o, ("/", "a", 1))
    d2 = delta(o, ("/", "a", 5))
    for d in (d1, d2, d1, d2, d1):
        assert feed(r, o, d, 1.0) == []
    assert r.facts("n1") == {("/", "a"): 5}


def test_gap_requests_snapshot_and_buffered_deltas_replay() -> None:
    """A skipped delta asks for a snapshot; later deltas wait and replay on top of it."""
    r, o = replica(), origin()
    synced(r, o)
    assert feed(r, o, delta(o, ("/", "a", 1)), 1.0) == []
    lost = delta(o, ("/", "b", 1))
    snap = o.snapshot()  # what the origin will answer (as of the lost delta)
    d3 = delta(o, ("/", "a", 0))
    d4 = delta(o, ("/", "c", 7))
    assert feed(r, o, d4, 1.0) == [ask(o)]
    assert feed(r, o, d3, 1.1) == []  # buffered; the request is not repeated at once
    assert r.facts("n1") == {("/", "a"): 1}  # nothing applied while unsynced
    assert feed(r, o, snap, 1.2) == []
    assert r.facts("n1") == o.rooms == {("/", "b"): 1, ("/", "c"): 7}
    assert r.nodes_with_rooms("/", ["a"]) == set()
    assert feed(r, o, lost, 1.3) == []  # late duplicate
    assert r.facts("n1") == o.rooms
    [info] = r.info(2.0)
    assert info.synced


def test_replay_stops_at_a_remaining_hole() -> None:
    """Buffered deltas past a hole the snapshot does not fill stay unapplied and unsynced."""
    r, o = replica(), origin()
    synced(r, o)
    snap_seq0 = o.snapshot()
    delta(o, ("/", "a", 1))  # lost
    delta(o, ("/", "b", 1))  # lost
    d3 = delta(o, ("/", "c", 1))
    assert feed(r, o, d3, 1.0) == [ask(o)]
    assert feed(r, o, snap_seq0, 1.0) == []  # an old snapshot: seq 0, hole at 1..2
    assert r.facts("n1") == {}
    [info] = r.info(1.0)
    assert not info.synced
    assert r.tick(1.0 + SNAPSHOT_RETRY) == [ask(o)]
    assert feed(r, o, o.snapshot(), 2.5) == []
    assert r.facts("n1") == o.rooms


def test_delta_buffer_is_bounded() -> None:
    """An unsynced view buffers at most MAX_BUFFERED_DELTAS deltas."""
    r, o = replica(), origin()
    synced(r, o)
    delta(o, ("/", "x", 1))  # lost: every later delta waits
    for i in range(MAX_BUFFERED_DELTAS + 50):
        feed(r, o, delta(o, ("/", f"r{i}", 1)), 1.0)
    assert len(r._views[NodeId("n1")].buffered) == MAX_BUFFERED_DELTAS
    assert feed(r, o, o.snapshot(), 2.0) == []
    assert r.facts("n1") == o.rooms


# --- heartbeats and discovery -----------------------------------------------------------------


def test_heartbeat_with_higher_facts_seq_requests_snapshot() -> None:
    """A heartbeat announcing a facts_seq we have not seen means a delta was missed."""
    r, o = replica(), origin()
    synced(r, o)
    assert feed(r, o, o.heartbeat(), 1.0) == []  # nothing missed
    delta(o, ("/", "a", 1))  # lost
    assert feed(r, o, o.heartbeat(), 2.0) == [ask(o)]
    assert feed(r, o, o.snapshot(), 2.1) == []
    assert r.facts("n1") == {("/", "a"): 1}
    assert feed(r, o, o.heartbeat(), 3.0) == []


def test_heartbeat_updates_address_and_connections() -> None:
    """A heartbeat refreshes the node's address and connection count."""
    r, o = replica(), origin()
    synced(r, o)
    o.connections = 17
    o.address = "10.0.0.1:9000"
    feed(r, o, o.heartbeat(), 1.5)
    [info] = r.info(2.0)
    assert (info.connections, info.address, info.age, info.status) == (
        17,
        "10.0.0.1:9000",
        0.5,
        NodeStatus.ALIVE,
    )


def test_unknown_node_is_up_and_asked_for_snapshot() -> None:
    """The first message of an unknown node yields NodeUp and a snapshot request at its tag."""
    r, o = replica(), origin("n7", 4)
    actions = feed(r, o, delta(o, ("/", "a", 1)), 0.0)
    assert actions == [NodeUp(NodeId("n7")), RequestSnapshot(NodeId("n7"), node_tag("n7", 4))]
    assert r.tag("n7") == o.tag
    assert r.node_of_tag(o.tag) == "n7"
    assert r.facts("n7") == {}  # nothing applied before the snapshot
    assert feed(r, o, o.snapshot(), 0.1) == []
    assert r.facts("n7") == {("/", "a"): 1}


def test_unknown_node_introduced_by_its_snapshot_needs_no_request() -> None:
    """A snapshot from an unknown node is applied directly: NodeUp, no request."""
    r, o = replica(), origin()
    delta(o, ("/", "a", 3))
    assert feed(r, o, o.snapshot(), 0.0) == [NodeUp(NodeId("n1"))]
    assert r.facts("n1") == {("/", "a"): 3}


# --- incarnations -----------------------------------------------------------------------------


def test_new_incarnation_replaces_the_old_view() -> None:
    """A restarted node's rooms from before the restart are gone from every read."""
    r, old = replica(), origin("n1", 1)
    synced(r, old)
    feed(r, old, delta(old, ("/", "a", 2), ("/", "b", 1)), 1.0)
    new = origin("n1", 2)
    delta(new, ("/", "b", 4), ("/", "c", 1))
    assert feed(r, new, new.heartbeat(), 2.0) == [NodeUp(NodeId("n1")), ask(new)]
    assert r.facts("n1") == {}
    assert r.nodes_with_rooms("/", ["a", "b"]) == set()
    assert r.room_sizes() == {}
    assert r.tag("n1") == new.tag
    assert r.node_of_tag(old.tag) is None
    assert r.node_of_tag(new.tag) == "n1"
    feed(r, new, new.snapshot(), 2.1)
    assert r.facts("n1") == {("/", "b"): 4, ("/", "c"): 1}
    assert r.room_sizes() == {("/", "b"): {"n1": 4}, ("/", "c"): {"n1": 1}}


def test_messages_from_an_older_incarnation_are_ignored() -> None:
    """After a restart, late messages of the previous incarnation change nothing."""
    r, old = replica(), origin("n1", 1)
    new = origin("n1", 2)
    synced(r, new)
    feed(r, new, delta(new, ("/", "a", 1)), 1.0)
    d = delta(old, ("/", "z", 9))
    for body in (d, old.heartbeat(), old.snapshot(), wire.Leave()):
        assert feed(r, old, body, 2.0) == []
    assert r.facts("n1") == {("/", "a"): 1}
    assert r.status("n1") is NodeStatus.ALIVE
    [info] = r.info(2.0)
    assert info.incarnation == 2 and info.age == 1.0  # old messages do not refresh it


# --- failure detection ------------------------------------------------------------------------


def test_suspect_then_down_after_silence() -> None:
    """Silence makes a node SUSPECT after suspect_after and DOWN after down_after."""
    r, o, o2 = replica(), origin("n1"), origin("n2")
    synced(r, o, 0.0)
    synced(r, o2, 0.0)
    feed(r, o, delta(o, ("/", "a", 2)), 0.0)
    feed(r, o2, delta(o2, ("/", "a", 1)), 0.0)
    assert r.tick(SUSPECT_AFTER - 0.01) == []
    assert r.status("n1") is NodeStatus.ALIVE
    feed(r, o2, o2.heartbeat(), SUSPECT_AFTER)  # n2 keeps talking
    assert r.tick(SUSPECT_AFTER) == []
    assert r.status("n1") is NodeStatus.SUSPECT
    assert r.nodes_with_rooms("/", ["a"]) == {"n1", "n2"}  # suspects keep their rooms
    assert r.tick(DOWN_AFTER - 0.01) == []
    feed(r, o2, o2.heartbeat(), DOWN_AFTER - 0.01)
    assert r.tick(DOWN_AFTER) == [NodeDown(NodeId("n1"), "timeout")]
    assert r.status("n1") is NodeStatus.DOWN
    assert r.status("n2") is NodeStatus.ALIVE
    assert r.facts("n1") == {}
    assert r.nodes_with_rooms("/", ["a"]) == {"n2"}
    assert r.room_sizes() == {("/", "a"): {"n2": 1}}
    assert r.alive() == ["n2"]
    assert r.nodes_in_namespace("/") == {"n2"}
    assert r.tick(DOWN_AFTER + 10) == [NodeDown(NodeId("n2"), "timeout")]  # once each
    assert r.tick(DOWN_AFTER + 20) == []


def test_suspect_node_that_speaks_is_alive_again() -> None:
    """A SUSPECT node that speaks is ALIVE again, with no NodeUp and its facts intact."""
    r, o = replica(), origin()
    synced(r, o)
    feed(r, o, delta(o, ("/", "a", 1)), 0.0)
    r.tick(SUSPECT_AFTER)
    assert r.status("n1") is NodeStatus.SUSPECT
    assert feed(r, o, o.heartbeat(), SUSPECT_AFTER + 1) == []
    assert r.status("n1") is NodeStatus.ALIVE
    assert r.facts("n1") == {("/", "a"): 1}


def test_leave_drops_at_once() -> None:
    """A LEAVE makes the node DOWN immediately and drops its rooms."""
    r, o = replica(), origin()
    synced(r, o)
    feed(r, o, delta(o, ("/", "a", 1)), 0.0)
    assert feed(r, o, wire.Leave(), 0.5) == [NodeDown(NodeId("n1"), "left")]
    assert r.status("n1") is NodeStatus.DOWN
    assert r.nodes_with_rooms("/", ["a"]) == set()
    assert r.room_sizes() == {}
    assert r.alive() == []


def test_duplicate_leave_reports_down_once() -> None:
    """A LEAVE that arrives twice yields one NodeDown."""
    r, o = replica(), origin()
    synced(r, o)
    assert feed(r, o, wire.Leave(), 0.5) == [NodeDown(NodeId("n1"), "left")]
    assert feed(r, o, wire.Leave(), 0.6) == []
    assert r.status("n1") is NodeStatus.DOWN


def test_messages_arriving_after_leave_do_not_revive() -> None:
    """A LEAVE ends the incarnation: its late snapshot or delta does not bring the node back."""
    r, o = replica(), origin()
    synced(r, o)
    feed(r, o, delta(o, ("/", "a", 1)), 0.0)
    late_snapshot = o.snapshot()  # answered just before shutdown, on another topic
    late_delta = delta(o, ("/", "b", 1))
    assert feed(r, o, wire.Leave(), 0.5) == [NodeDown(NodeId("n1"), "left")]
    assert feed(r, o, late_snapshot, 0.6) == []
    assert feed(r, o, late_delta, 0.7) == []
    assert feed(r, o, o.heartbeat(), 0.8) == []
    assert r.status("n1") is NodeStatus.DOWN
    assert r.room_sizes() == {}
    assert r.tick(DOWN_AFTER * 2) == []
    restarted = origin("n1", 2)
    synced(r, restarted, 20.0)  # a new incarnation is a new node
    assert r.status("n1") is NodeStatus.ALIVE


def test_leave_after_timeout_is_not_reported_twice() -> None:
    """A LEAVE from a node already timed out yields no second NodeDown and no revival."""
    r, o = replica(), origin()
    synced(r, o)
    assert r.tick(DOWN_AFTER) == [NodeDown(NodeId("n1"), "timeout")]
    assert feed(r, o, wire.Leave(), DOWN_AFTER + 1) == []
    assert feed(r, o, o.heartbeat(), DOWN_AFTER + 2) == []
    assert r.status("n1") is NodeStatus.DOWN


def test_mark_down_is_an_external_verdict() -> None:
    """mark_down drops a node at once with reason 'external'; repeats and unknowns are no-ops."""
    r, o = replica(), origin()
    synced(r, o)
    feed(r, o, delta(o, ("/", "a", 1)), 0.0)
    assert r.mark_down("n1") == [NodeDown(NodeId("n1"), "external")]
    assert r.mark_down("n1") == []
    assert r.mark_down("nobody") == []
    assert r.status("n1") is NodeStatus.DOWN
    assert r.room_sizes() == {}
    assert r.mark_down("n1", "critical") == []


def test_down_node_that_speaks_again_is_revived_and_resynced() -> None:
    """A DOWN node heard again with the same incarnation is up again and resyncs by snapshot."""
    r, o = replica(), origin()
    synced(r, o)
    feed(r, o, delta(o, ("/", "a", 1)), 0.0)
    assert r.tick(DOWN_AFTER) == [NodeDown(NodeId("n1"), "timeout")]
    assert r.tick(DOWN_AFTER + SNAPSHOT_RETRY) == []  # no requests to a DOWN node
    d = delta(o, ("/", "b", 2))
    assert feed(r, o, d, 10.0) == [NodeUp(NodeId("n1")), ask(o)]
    assert r.status("n1") is NodeStatus.ALIVE
    assert r.facts("n1") == {}  # the facts were dropped; the delta waits for the snapshot
    assert feed(r, o, o.snapshot(), 10.1) == []
    assert r.facts("n1") == {("/", "a"): 1, ("/", "b"): 2}
    assert r.nodes_with_rooms("/", ["b"]) == {"n1"}


def test_revived_by_heartbeat_with_unchanged_facts_seq_still_resyncs() -> None:
    """Revival asks for a snapshot even when the heartbeat's facts_seq is not newer."""
    r, o = replica(), origin()
    synced(r, o)
    feed(r, o, delta(o, ("/", "a", 1)), 0.0)
    r.mark_down("n1")
    assert feed(r, o, o.heartbeat(), 1.0) == [NodeUp(NodeId("n1")), ask(o)]
    feed(r, o, o.snapshot(), 1.1)
    assert r.facts("n1") == {("/", "a"): 1}


def test_stale_snapshot_does_not_roll_back_facts() -> None:
    """A snapshot older than the facts already applied never replaces them."""
    r, o = replica(), origin()
    synced(r, o)
    old_snapshot = o.snapshot()  # facts_seq 0, e.g. a late answer to an earlier request
    feed(r, o, delta(o, ("/", "a", 1)), 0.0)
    feed(r, o, delta(o, ("/", "b", 1)), 0.0)
    delta(o, ("/", "c", 1))  # lost: the view is unsynced from here
    assert feed(r, o, o.heartbeat(), 1.0) == [ask(o)]
    feed(r, o, old_snapshot, 1.1)
    assert r.facts("n1") == {("/", "a"): 1, ("/", "b"): 1}
    feed(r, o, o.snapshot(), 1.2)
    assert r.facts("n1") == o.rooms


# --- snapshots and self -----------------------------------------------------------------------


def test_snapshot_request_is_retried_after_snapshot_retry() -> None:
    """An unanswered snapshot request is repeated by tick once SNAPSHOT_RETRY has passed."""
    r, o = replica(), origin()
    assert feed(r, o, o.heartbeat(), 0.0) == [NodeUp(NodeId("n1")), ask(o)]
    assert r.tick(SNAPSHOT_RETRY / 2) == []
    assert feed(r, o, o.heartbeat(), SNAPSHOT_RETRY / 2) == []  # rate limited
    assert r.tick(SNAPSHOT_RETRY) == [ask(o)]
    assert r.tick(SNAPSHOT_RETRY * 1.5) == []
    assert r.tick(SNAPSHOT_RETRY * 2) == [ask(o)]
    feed(r, o, o.snapshot(), SNAPSHOT_RETRY * 2)
    assert r.tick(SNAPSHOT_RETRY * 4) == []


def test_own_messages_are_ignored() -> None:
    """Gossip from this node itself never creates a view or an action."""
    r, me = replica(), origin("me")
    for body in (me.heartbeat(), delta(me, ("/", "a", 1)), me.snapshot(), wire.Leave()):
        assert feed(r, me, body, 0.0) == []
    assert r.info(0.0) == []
    assert r.status("me") is None
    assert r.room_sizes() == {}
