"""Convergence properties of the membership replica, driven without an event loop.

A simulated channel between the replica and its origins reorders, duplicates and drops gossip;
every message still goes through the wire codec, and time is a plain number passed in. After a
quiet period the replica must equal every live origin's facts. The replica's individual rules
are in ``test_membership.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.membership_helpers import DOWN_AFTER, origin, replica

from roomcast.cluster import wire
from roomcast.cluster.membership import (
    SNAPSHOT_RETRY,
    Action,
    LocalFacts,
    NodeStatus,
    Replica,
    RequestSnapshot,
    RoomKey,
)
from roomcast.ids import NodeId

NAMESPACES = ("/", "/chat")
#: Time steps; binary fractions, so that sums are exact and "SNAPSHOT_RETRY later" is exactly
#: that (with 0.05 + 0.1 the retry would wait for one more tick, as a node's does).
TICKS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 3.5, 7.0)
ROOMS = ("a", "ab", "b", "x")


@dataclass
class Origin:
    """One simulated remote node: its current facts and whether it still runs."""

    facts: LocalFacts
    live: bool = True
    #: (incarnation, facts_seq) -> the rooms it had then
    history: dict[tuple[int, int], dict[RoomKey, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Msg:
    """One message in flight: gossip from an incarnation of a node, or a snapshot request."""

    node: str
    incarnation: int
    body: wire.Body | None  #: None: a snapshot request for ``tag``
    tag: bytes = b""


@dataclass
class Net:
    """A replica, its origins, and a channel that reorders, duplicates and drops."""

    replica: Replica
    origins: list[Origin]
    now: float = 0.0
    channel: list[Msg] = field(default_factory=list)
    seq: int = 0
    asked: int = 0  #: snapshot requests the replica made

    def send(self, o: LocalFacts, body: wire.Body) -> None:
        self.channel.append(Msg(o.node, o.incarnation, body))

    def flush(self, org: Origin) -> None:
        d = org.facts.take_delta()
        if d is not None:
            org.history[(org.facts.incarnation, d.facts_seq)] = dict(org.facts.rooms)
            self.send(org.facts, d)

    def act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, RequestSnapshot):
                self.asked += 1
                self.channel.append(Msg(action.node, 0, None, action.tag))

    def deliver(self, msg: Msg) -> None:
        if msg.body is None:
            for org in self.origins:
                if org.live and org.facts.tag == msg.tag:  # only that incarnation listens
                    self.flush(org)
                    self.send(org.facts, org.facts.snapshot())
            return
        self.seq += 1
        data = wire.encode(msg.node, msg.incarnation, self.seq, msg.body)
        header, body = wire.decode(data)
        self.act(self.replica.receive(header, body, self.now))

    def tick(self, dt: float) -> None:
        self.now += dt
        self.act(self.replica.tick(self.now))

    def pump(self) -> None:
        """Deliver everything in order, reliably, including what the deliveries cause."""
        for _ in range(10_000):
            if not self.channel:
                return
            self.deliver(self.channel.pop(0))
        raise AssertionError("the channel never drained")

    def check_index(self) -> None:
        """The room index always agrees with the per-node views, DOWN nodes hold nothing, and
        a view only ever shows a state its origin really had."""
        r = self.replica
        expected: dict[RoomKey, dict[NodeId, int]] = {}
        for info in r.info(self.now):
            facts = r.facts(info.node)
            if info.status is NodeStatus.DOWN:
                assert facts == {}
            assert all(count > 0 for count in facts.values())
            assert info.rooms == len(facts)
            for key, count in facts.items():
                expected.setdefault(key, {})[info.node] = count
            org = next(o for o in self.origins if o.facts.node == info.node)
            states = [rooms for (inc, _), rooms in org.history.items() if inc == info.incarnation]
            assert facts == {} or facts in states
        assert r.room_sizes() == expected
        for ns in NAMESPACES:
            for room in ROOMS:
                assert r.nodes_with_rooms(ns, [room]) == set(expected.get((ns, room), {}))


_OP_ARGS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "set": st.tuples(
        st.just("set"),
        st.integers(0, 2),
        st.sampled_from(NAMESPACES),
        st.sampled_from(ROOMS),
        st.integers(0, 3),
    ),
    "flush": st.tuples(st.just("flush"), st.integers(0, 2)),
    "beat": st.tuples(st.just("beat"), st.integers(0, 2)),
    "deliver": st.tuples(st.just("deliver"), st.integers(0, 1000), st.booleans()),
    "drop": st.tuples(st.just("drop"), st.integers(0, 1000)),
    "tick": st.tuples(st.just("tick"), st.sampled_from(TICKS)),
    "restart": st.tuples(st.just("restart"), st.integers(0, 2), st.booleans()),
    "verdict": st.tuples(st.just("verdict"), st.integers(0, 2)),
    "crash": st.tuples(st.just("crash"), st.integers(0, 2)),
}
#: Op names weighted by how often they should happen (crashes are rare: they end an origin).
_OP_WEIGHTS = {
    "set": 24,
    "flush": 8,
    "beat": 8,
    "deliver": 32,
    "drop": 8,
    "tick": 8,
    "restart": 3,
    "verdict": 2,
    "crash": 1,
}
op_strategy = st.sampled_from(
    [name for name in _OP_ARGS for _ in range(_OP_WEIGHTS[name])]
).flatmap(_OP_ARGS.__getitem__)


def run_random_phase(net: Net, ops: list[tuple[Any, ...]]) -> None:
    """Apply ``ops``: fact changes, gossip, restarts, and a lossy, reordering channel."""
    origins = net.origins
    for op in ops:
        name = op[0]
        if name in ("set", "flush", "beat", "restart", "crash", "verdict"):
            org = origins[op[1] % len(origins)]
            if not org.live:
                continue
            if name == "set":
                org.facts.set_count(op[2], op[3], op[4])
            elif name == "flush":
                net.flush(org)
            elif name == "beat":
                net.flush(org)  # a heartbeat follows the flush of pending changes
                net.send(org.facts, org.facts.heartbeat())
            elif name == "restart":
                if op[2]:  # graceful: last delta, then LEAVE
                    net.flush(org)
                    net.send(org.facts, wire.Leave())
                old = org.facts
                org.facts = LocalFacts(old.node, old.incarnation + 1, old.address, net.now)
                org.history[(org.facts.incarnation, 0)] = {}
            elif name == "crash":
                org.live = False
            else:
                net.act(net.replica.mark_down(org.facts.node))
        elif name == "deliver" and net.channel:
            i = op[1] % len(net.channel)
            msg = net.channel[i] if op[2] else net.channel.pop(i)  # op[2]: a duplicate
            net.deliver(msg)
        elif name == "drop" and net.channel:
            net.channel.pop(op[1] % len(net.channel))
        elif name == "tick":
            net.tick(op[1])
        net.check_index()


def run_quiet_phase(net: Net, leftovers: bool) -> None:
    """A reliable channel: the messages still in flight arrive (or are all lost), the silent
    time out, each live origin sends a heartbeat, and snapshot requests (retried by tick) are
    answered until the replica asks for nothing more."""
    if leftovers:
        net.pump()
    else:
        net.channel.clear()
    net.check_index()
    if any(not o.live for o in net.origins):
        net.tick(DOWN_AFTER + 1)  # crashed nodes time out (live ones are revived below)
        net.pump()
    for org in net.origins:
        if org.live:
            net.flush(org)
            net.send(org.facts, org.facts.heartbeat())
    net.pump()
    net.check_index()
    # A request made just before may hold back the one the heartbeat would make: the retry
    # after SNAPSHOT_RETRY covers it. Two rounds stay below SUSPECT_AFTER.
    for _ in range(2):
        asked = net.asked
        net.tick(SNAPSHOT_RETRY)
        net.pump()
        net.check_index()
        if net.asked == asked:
            break
    else:
        raise AssertionError("the replica still asks for snapshots")


def check_converged(net: Net) -> None:
    """Every live origin's facts are replicated exactly; the dead hold nothing."""
    r = net.replica
    expected: dict[RoomKey, dict[NodeId, int]] = {}
    for org in net.origins:
        node = org.facts.node
        if org.live:
            assert r.status(node) is NodeStatus.ALIVE
            assert r.tag(node) == org.facts.tag
            assert r.facts(node) == org.facts.rooms
            for key, count in org.facts.rooms.items():
                expected.setdefault(key, {})[NodeId(node)] = count
        else:
            assert r.status(node) in (NodeStatus.DOWN, None)
            assert r.facts(node) == {}
    assert r.room_sizes() == expected
    for ns in NAMESPACES:
        assert r.room_sizes(ns) == {k: v for k, v in expected.items() if k[0] == ns}
        for room in ROOMS:
            assert r.nodes_with_rooms(ns, [room]) == set(expected.get((ns, room), {}))
        assert r.nodes_with_rooms(ns, ROOMS) == {
            n for (kns, _), holders in expected.items() if kns == ns for n in holders
        }
    assert set(r.alive()) == {o.facts.node for o in net.origins if o.live}
    assert all(i.synced for i in r.info(net.now) if i.status is not NodeStatus.DOWN)


def make_net(n_origins: int) -> Net:
    """A replica and ``n_origins`` fresh origins, nothing sent yet."""
    origins = [Origin(origin(f"n{i}", 1)) for i in range(n_origins)]
    for org in origins:
        org.history[(1, 0)] = {}
    return Net(replica(), origins)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_origins=st.integers(1, 3),
    ops=st.lists(op_strategy, min_size=40, max_size=200),
    leftovers=st.booleans(),
)
def test_replica_converges_after_lossy_gossip(
    n_origins: int, ops: list[tuple[Any, ...]], leftovers: bool
) -> None:
    """Whatever the channel reordered, duplicated or dropped, a quiet period makes the
    replica equal to every live origin's facts."""
    net = make_net(n_origins)
    run_random_phase(net, ops)
    run_quiet_phase(net, leftovers)
    check_converged(net)


@settings(max_examples=60, deadline=None)
@given(n_origins=st.integers(1, 3), seed=st.integers(0, 2**32 - 1), leftovers=st.booleans())
def test_replica_converges_after_long_lossy_runs(
    n_origins: int, seed: int, leftovers: bool
) -> None:
    """Long runs (2000 steps from a seeded generator) converge as well."""
    rnd = random.Random(seed)
    ops: list[tuple[Any, ...]] = []
    for _ in range(2000):
        p = rnd.random()
        who = rnd.randrange(3)
        if p < 0.30:
            ops.append(("set", who, rnd.choice(NAMESPACES), rnd.choice(ROOMS), rnd.randrange(4)))
        elif p < 0.40:
            ops.append(("flush", who))
        elif p < 0.45:
            ops.append(("beat", who))
        elif p < 0.80:
            ops.append(("deliver", rnd.randrange(1000), rnd.random() < 0.1))
        elif p < 0.87:
            ops.append(("drop", rnd.randrange(1000)))
        elif p < 0.97:
            ops.append(("tick", rnd.choice(TICKS)))
        elif p < 0.99:
            ops.append(("restart", who, rnd.random() < 0.5))
        elif p < 0.995:
            ops.append(("verdict", who))
        else:
            ops.append(("crash", who))
    net = make_net(n_origins)
    run_random_phase(net, ops)
    run_quiet_phase(net, leftovers)
    check_converged(net)
