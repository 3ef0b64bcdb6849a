"""A node's keep stream and its keeper's copy (``node/keeper.py``), without a bus: what a node
logs reaches the copy exactly, the copy's shadow holds what the node had not handled when it
died and nothing it had, and the copy refuses rather than replay part of a session.

The node side is a :class:`KeepLog` over small stand-ins for its namespaces; its messages go
straight into a :class:`Mirror` whose bus is a stand-in that records subscriptions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from roomcast.cluster import wire
from roomcast.errors import RecoveryRefusedError
from roomcast.ids import NodeId, NodeTag, new_pid, new_sid, node_tag
from roomcast.node import recovery
from roomcast.node.keeper import KeepLog, keepers
from roomcast.node.mirror import PKTREF, Mirror
from roomcast.node.recovery import Entry, History, Membership, Offsets, RecoverableSocket
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

NODE = NodeId("n2")
TAG = node_tag("n2", 1)
KEEPER = node_tag("n1", 1)
CLAIMANT = node_tag("n3", 1)
NS = "/chat"


class FakeBus:
    """Subscriptions, counted like the bus's, each proved at once."""

    def __init__(self) -> None:
        self.interest: dict[bytes, int] = {}

    async def subscribe(self, topic: bytes, timeout: float) -> None:
        self.hold(topic, timeout)

    def hold(self, topic: bytes, timeout: float) -> None:
        self.interest[topic] = self.interest.get(topic, 0) + 1

    async def proved(self, topic: bytes, task: Any) -> None:
        pass

    def unsubscribe(self, topic: bytes) -> None:
        count = self.interest.get(topic, 0)
        if count <= 1:
            self.interest.pop(topic, None)
        else:
            self.interest[topic] = count - 1

    def subscribed(self, topic: bytes) -> bool:
        return topic in self.interest


@dataclass
class FakeNamespace:
    name: str
    history: History | None
    window: float = 120.0
    sockets: list[RecoverableSocket] = field(default_factory=list)

    def recoverable(self) -> list[RecoverableSocket]:
        return list(self.sockets)


class FakeSockets:
    def __init__(self, *namespaces: FakeNamespace) -> None:
        self._ns = {ns.name: ns for ns in namespaces}

    def namespace(self, name: str) -> FakeNamespace | None:
        return self._ns.get(name)

    def room_counts(self, namespace: str | None) -> dict[tuple[str, str], int]:
        return {}

    def all(self) -> list[FakeNamespace]:
        return list(self._ns.values())


class Node:
    """The node side: its offsets, its one namespace's history, its keep log; what it sends
    is kept in :attr:`sent` (the keeper's inbox)."""

    def __init__(self, max_packets: int = 100) -> None:
        self.offsets = Offsets(TAG)
        self.history = History(max_packets, 1 << 20)
        self.ns = FakeNamespace(NS, self.history)
        self.sent: list[wire.Keep] = []
        self.log = KeepLog(FakeSockets(self.ns), self.offsets, lambda _tag, k: self.sent.append(k))  # type: ignore[arg-type]
        self.data: dict[str, Any] = {}

    def connect(self, data: Any = None) -> tuple[str, str, Membership]:
        sid, pid = new_sid(TAG), new_pid(TAG)
        membership = Membership(sid, self.offsets.last, 100)
        self.ns.sockets.append(RecoverableSocket(sid, pid, data, membership, False))
        self.data[sid] = data
        self.log.connected(NS, sid, pid, data, membership, self.ns.window)
        return sid, pid, membership

    def join(self, sid: str, membership: Membership, room: str) -> None:
        membership.join(room, self.offsets.last)
        self.log.joined(NS, sid, room, self.offsets.last, self.data[sid])

    def write(self, rooms: tuple[str, ...], text: str, source: Any = None) -> int:
        """Write a broadcast to ``rooms``, numbered and kept, as the node's adapter does."""
        counter = self.offsets.next()
        numbered = frames(text).with_offset(self.offsets.text(counter))
        assert numbered is not None
        entry = Entry(counter, rooms, (), (), numbered, source)
        self.history.record(entry)
        self.log.packet(NS, entry)
        return counter

    def flush(self) -> list[wire.Keep]:
        self.log.flush()
        out, self.sent = self.sent, []
        return out


def frames(text: str) -> Frames:
    return Frames(sio.Encoded(text, ()))


def room_message(msg_id: int, room: str, text: str, volatile: bool = False) -> wire.RoomMessage:
    return wire.RoomMessage(msg_id, NS, (room,), (), (), volatile, frames(text).ws)


#: Where each copy's sessions went (pid -> (sid, node)), as its keeper's node points.
POINTED: dict[str, tuple[str, NodeTag]] = {}


def mirror(bus: FakeBus | None = None) -> Mirror:
    return Mirror(
        NODE,
        TAG,
        1,
        bus or FakeBus(),  # type: ignore[arg-type]
        1.0,
        100,
        lambda pid, sid, to, _seconds: POINTED.__setitem__(pid, (sid, to)),
    )


def texts(entries: list[Entry], offsets: Offsets) -> list[str]:
    out = []
    for e in entries:
        plain = e.frames.without_offset(offsets.text(e.counter))
        assert plain is not None
        out.append(plain.encoded.text)
    return out


async def synced_pair(max_packets: int = 100) -> tuple[Node, Mirror, FakeBus]:
    node, bus = Node(max_packets), FakeBus()
    copy = mirror(bus)
    node.log.switch(KEEPER)
    for keep in node.flush():
        assert copy.receive(keep)
    return node, copy, bus


async def in_red(node: Node, copy: Mirror) -> tuple[str, str, Membership]:
    """A socket of the node in room red, its copy told (and its topics held)."""
    sid, pid, membership = node.connect()
    node.join(sid, membership, "red")
    for keep in node.flush():
        assert copy.receive(keep)
    await asyncio.sleep(0)
    return sid, pid, membership


def test_the_keeper_is_the_next_live_tag_on_the_ring() -> None:
    a, b, c = NodeTag(b"\x01" * 8), NodeTag(b"\x05" * 8), NodeTag(b"\x09" * 8)
    assert keepers(b, [a, b, c]) == [c, a]
    assert keepers(c, [a, b, c]) == [a, b]
    assert keepers(a, {a}) == []


async def test_what_the_node_logs_the_copy_has_and_hands_over_after_the_offset() -> None:
    """Sessions, rooms joined in time and kept packets cross; after the node died, a client
    with an offset gets exactly what its socket was sent after it, judged as the node would
    have (nothing of a room from before it joined)."""
    node, copy, bus = await synced_pair()
    sid, pid, membership = node.connect({"user": 7})
    node.write(("red",), '2["before join"]')
    node.join(sid, membership, "red")
    seen = node.write(("red",), '2["a"]')
    node.write(("red",), '2["b"]')
    node.write(("blue",), '2["not its room"]')
    node.write(("red",), '2["c"]')
    for keep in node.flush():
        assert copy.receive(keep)
    await asyncio.sleep(0)
    assert wire.room_topic(NS, "red") in bus.interest
    assert wire.namespace_topic(NS) in bus.interest

    copy.adopt(lambda: None)
    await asyncio.sleep(0)
    # An emit to the sid of a dead node's socket goes on the sid's topic: held now.
    assert wire.room_topic(NS, sid) in bus.interest
    session = copy.lend_session(NS, pid, node.offsets.text(seen), CLAIMANT, 5.0)
    assert not isinstance(session, bytes)
    assert session.sid == sid and session.data == {"user": 7}
    assert session.rooms == frozenset({sid, "red"})
    entries = copy.hand_over(NS, pid, CLAIMANT)
    assert texts(entries, copy.offsets) == ['2["b"]', '2["c"]']
    assert POINTED[pid] == (sid, CLAIMANT)
    assert pid not in copy.pids


async def test_with_no_offset_the_client_gets_everything_since_it_connected() -> None:
    node, copy, _ = await synced_pair()
    node.write(("red",), '2["old"]')
    sid, pid, membership = node.connect()
    node.join(sid, membership, "red")
    node.write(("red",), '2["x"]')
    for keep in node.flush():
        copy.receive(keep)
    copy.adopt(lambda: None)
    copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    assert texts(copy.hand_over(NS, pid, CLAIMANT), copy.offsets) == ['2["x"]']


async def test_a_snapshot_brings_a_new_keeper_everything_the_node_kept() -> None:
    """A keeper that starts late gets the node's history and sessions in one sync."""
    node = Node()
    sid, pid, membership = node.connect()  # no keeper yet: nothing logged
    node.join(sid, membership, "red")
    node.write(("red",), '2["a"]')
    node.write(("red",), '2["b"]')
    assert node.flush() == []
    copy = mirror()
    node.log.switch(KEEPER)
    for keep in node.flush():
        assert copy.receive(keep)
    copy.adopt(lambda: None)
    copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    assert texts(copy.hand_over(NS, pid, CLAIMANT), copy.offsets) == ['2["a"]', '2["b"]']


async def test_what_the_node_had_not_handled_is_replayed_after_its_log() -> None:
    """The shadow: messages the keeper got on the node's rooms that the node's watermarks do
    not pass are the tail, in arrival order; those they pass (or its own broadcasts up to
    OWN) are not, even when the watermark came before the message."""
    node, copy, _ = await synced_pair()
    _sid, pid, _membership = await in_red(node, copy)
    topic = wire.room_topic(NS, "red")
    # n3's messages 1..4 on red; the node handled 1 and 2 (2 written to the socket).
    copy.offer(topic, "n3", 1, room_message(1, "red", '2["m1"]'))
    copy.offer(topic, "n3", 1, room_message(2, "red", '2["m2"]'))
    node.write(("red",), '2["m2"]', ("n3", 1, 2))
    node.log.watermark("n3", 1, topic, 2)
    # The node's watermark for n3's message 5 arrives before the message itself.
    node.log.watermark("n3", 1, wire.room_topic(NS, "blue"), 5)
    for keep in node.flush():
        copy.receive(keep)
    copy.offer(topic, "n3", 1, room_message(3, "red", '2["m3"]'))
    copy.offer(wire.room_topic(NS, "blue"), "n3", 1, room_message(5, "blue", '2["m5"]'))
    copy.offer(topic, "n3", 1, room_message(4, "red", '2["m4"]'))
    copy.offer(topic, "n3", 1, room_message(6, "red", '2["volatile"]', volatile=True))
    # Its own broadcast 9, handled (OWN), and 10, not.
    copy.offer(topic, "n2", 1, room_message(9, "red", '2["own 9"]'))
    node.log.own(9)
    for keep in node.flush():
        copy.receive(keep)
    copy.offer(topic, "n2", 1, room_message(10, "red", '2["own 10"]'))
    assert len(copy.shadow) == 3

    copy.adopt(lambda: None)
    # And what arrives once the node is dead.
    copy.offer(topic, "n3", 1, room_message(7, "red", '2["m7"]'))
    copy.offer(topic, "n3", 1, room_message(7, "red", '2["m7"]'))  # a copy from another topic
    copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    entries = copy.hand_over(NS, pid, CLAIMANT)
    assert texts(entries, copy.offsets) == [
        '2["m2"]',
        '2["m3"]',
        '2["m4"]',
        '2["own 10"]',
        '2["m7"]',
    ]
    assert [e.counter for e in entries] == sorted(e.counter for e in entries)


async def test_an_offset_past_the_nodes_log_is_refused() -> None:
    """The node numbered a packet whose record died with it: the client's offset is one the
    keeper never heard of, and the recovery is refused rather than skip what follows."""
    node, copy, _ = await synced_pair()
    sid, pid, membership = node.connect()
    node.join(sid, membership, "red")
    node.write(("red",), '2["a"]')
    for keep in node.flush():
        copy.receive(keep)
    lost = node.write(("red",), '2["lost with the node"]')
    copy.adopt(lambda: None)
    with pytest.raises(RecoveryRefusedError) as refused:
        copy.lend_session(NS, pid, node.offsets.text(lost), CLAIMANT, 5.0)
    assert refused.value.reason == recovery.UNKNOWN_OFFSET
    with pytest.raises(RecoveryRefusedError) as again:
        copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    assert again.value.reason == recovery.UNKNOWN_SESSION  # released with the refusal


async def test_a_lost_keep_message_makes_the_copy_wait_for_a_sync() -> None:
    """A gap in the keep stream: the copy is not exact any more, and says so; a new sync
    makes it exact again. A node that dies meanwhile has its sessions refused."""
    node, copy, _ = await synced_pair()
    sid, pid, membership = node.connect()
    node.join(sid, membership, "red")
    assert node.flush()  # lost on the way
    node.write(("red",), '2["a"]')
    (keep,) = node.flush()
    assert not copy.receive(keep)
    assert not copy.synced
    node.log.sync()
    for keep in node.flush():
        assert copy.receive(keep)
    assert copy.synced and pid in copy.pids
    node.write(("red",), '2["b"]')
    assert node.flush()  # lost again
    node.write(("red",), '2["c"]')
    (keep,) = node.flush()
    assert not copy.receive(keep)
    emptied: list[bool] = []
    copy.adopt(lambda: emptied.append(True))
    assert emptied == [True]
    with pytest.raises(RecoveryRefusedError):
        copy.lend_session(NS, pid, None, CLAIMANT, 5.0)


async def test_a_shadow_past_the_history_bounds_breaks_the_copy() -> None:
    """A node that handles nothing while its rooms' traffic piles up at its keeper: past the
    bounds the copy cannot be exact, and its sessions are refused if the node dies."""
    node, copy, _ = await synced_pair(max_packets=3)
    _sid, pid, _membership = await in_red(node, copy)
    topic = wire.room_topic(NS, "red")
    for i in range(1, 5):
        copy.offer(topic, "n3", 1, room_message(i, "red", f'2["m{i}"]'))
    assert copy.broken == "shadow overflow"
    copy.adopt(lambda: None)
    with pytest.raises(RecoveryRefusedError):
        copy.lend_session(NS, pid, None, CLAIMANT, 5.0)


async def test_a_session_the_node_let_go_is_not_kept() -> None:
    """Disconnected on purpose (or handed over): GONE; the copy forgets it and its rooms."""
    node, copy, bus = await synced_pair()
    sid, pid, _membership = await in_red(node, copy)
    assert wire.room_topic(NS, "red") in bus.interest
    node.log.gone(NS, sid)
    for keep in node.flush():
        copy.receive(keep)
    assert sid not in copy.sessions and pid not in copy.pids
    assert not bus.interest


async def test_a_released_copy_says_so() -> None:
    """The node switched keepers: the old one is told to let go."""
    node, copy, _ = await synced_pair()
    node.log.switch(node_tag("n4", 1))
    released = node.sent[0]
    assert copy.receive(released)
    assert copy.broken == "released"


async def test_data_msgpack_cannot_carry_refuses_only_that_session() -> None:
    node, copy, _ = await synced_pair()
    _, pid, _ = node.connect(data=object())
    _, other, _ = node.connect(data={"ok": True})
    for keep in node.flush():
        assert copy.receive(keep)
    copy.adopt(lambda: None)
    with pytest.raises(RecoveryRefusedError) as refused:
        copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    assert refused.value.reason == recovery.UNMOVABLE_DATA
    session = copy.lend_session(NS, other, None, CLAIMANT, 5.0)
    assert not isinstance(session, bytes) and session.data == {"ok": True}


async def test_a_volatile_packets_number_reaches_the_keeper() -> None:
    """A volatile broadcast is numbered, not kept: the keeper still learns the number, so a
    client whose last packet was volatile recovers (with what came after it)."""
    node, copy, _ = await synced_pair()
    sid, pid, membership = node.connect()
    node.join(sid, membership, "red")
    volatile = node.offsets.next()
    node.log.numbered()
    node.write(("red",), '2["after"]')
    for keep in node.flush():
        assert copy.receive(keep)
    copy.adopt(lambda: None)
    copy.lend_session(NS, pid, node.offsets.text(volatile), CLAIMANT, 5.0)
    assert texts(copy.hand_over(NS, pid, CLAIMANT), copy.offsets) == ['2["after"]']


async def test_the_data_a_session_had_when_its_connection_was_lost_is_kept() -> None:
    node, copy, _ = await synced_pair()
    sid, pid, _ = node.connect(data={"step": 1})
    node.log.updated(NS, sid, {"step": 2})
    node.log.lost(NS, sid, {"step": 3})
    for keep in node.flush():
        assert copy.receive(keep)
    copy.adopt(lambda: None)
    session = copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    assert not isinstance(session, bytes) and session.data == {"step": 3}


async def test_a_record_that_makes_no_sense_asks_for_a_sync_and_crashes_nothing() -> None:
    """Another node's bad record (a bug or an older version): the copy is not exact until the
    node sends everything again; nothing raises."""
    node, copy, _ = await synced_pair()
    for record in ([99], [8, NS, "not a number", [], [], [], b"", None], "not a list", []):
        assert not copy.receive(wire.Keep(copy.seq + 1, 0, [record]))
        assert not copy.synced
        node.log.sync()
        for keep in node.flush():
            assert copy.receive(keep)
        assert copy.synced


async def test_a_room_the_node_asked_for_is_let_go_when_its_log_says_it_left() -> None:
    """The node's request for a room (before its JOIN arrives) and the JOIN itself hold one
    subscription; when the socket leaves, the keeper lets the room go."""
    node, copy, bus = await synced_pair()
    sid, _, membership = node.connect()
    for keep in node.flush():
        copy.receive(keep)
    topic = wire.room_topic(NS, "red")
    node.join(sid, membership, "red")
    (keep,) = node.flush()
    assert copy.receive(keep)  # the JOIN arrives before the request is served
    await copy.hold(NS, ["red"], False)
    assert bus.interest[topic] == 1
    membership.leave("red", node.offsets.last)
    node.log.left(NS, sid, "red", node.offsets.last, None)
    for keep in node.flush():
        assert copy.receive(keep)
    assert topic not in bus.interest
    assert topic not in copy.held


async def test_a_message_on_two_topics_handled_through_one_is_not_shadowed_again() -> None:
    """A broadcast to two rooms comes to the keeper on both topics; the node's watermark on
    the first prunes it; the copy that comes later on the second is not shadowed again (it
    would be replayed a second time)."""
    node, copy, _ = await synced_pair()
    sid, pid, membership = node.connect()
    node.join(sid, membership, "red")
    node.join(sid, membership, "blue")
    for keep in node.flush():
        copy.receive(keep)
    red, blue = wire.room_topic(NS, "red"), wire.room_topic(NS, "blue")
    both = wire.RoomMessage(1, NS, ("red", "blue"), (), (), False, frames('2["both"]').ws)
    copy.offer(red, "n3", 1, both)
    node.write(("red", "blue"), '2["both"]', ("n3", 1, 1))
    node.log.watermark("n3", 1, red, 1)
    for keep in node.flush():
        copy.receive(keep)
    copy.offer(blue, "n3", 1, both)
    assert not copy.shadow
    copy.adopt(lambda: None)
    copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    assert texts(copy.hand_over(NS, pid, CLAIMANT), copy.offsets) == ['2["both"]']


async def test_a_sync_brings_the_nodes_watermarks() -> None:
    """The copy lost part of the stream and its shadow kept filling with messages the node
    handled meanwhile; the sync carries the node's watermarks, so they are not replayed."""
    node, copy, _ = await synced_pair()
    sid, pid, membership = node.connect()
    node.join(sid, membership, "red")
    for keep in node.flush():
        copy.receive(keep)
    red = wire.room_topic(NS, "red")
    copy.offer(red, "n3", 1, room_message(1, "red", '2["m1"]'))
    node.write(("red",), '2["m1"]', ("n3", 1, 1))
    node.log.watermark("n3", 1, red, 1)
    assert node.flush()  # lost on the way
    node.log.sync()
    for keep in node.flush():
        assert copy.receive(keep)
    assert copy.synced and not copy.shadow
    copy.adopt(lambda: None)
    copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    assert texts(copy.hand_over(NS, pid, CLAIMANT), copy.offsets) == ['2["m1"]']


async def test_an_overflowing_shadow_asks_for_a_sync_and_recovers_with_it() -> None:
    node, copy, _ = await synced_pair(max_packets=2)
    sid, _, membership = node.connect()
    node.join(sid, membership, "red")
    for keep in node.flush():
        copy.receive(keep)
    red = wire.room_topic(NS, "red")
    for i in range(1, 4):
        copy.offer(red, "n3", 1, room_message(i, "red", f'2["m{i}"]'))
    assert copy.broken == "shadow overflow" and copy.wants_sync
    node.log.watermark("n3", 1, red, 3)
    node.log.sync()
    for keep in node.flush():
        assert copy.receive(keep)
    assert copy.synced and copy.broken is None and not copy.shadow


async def test_a_snapshot_in_several_messages_lets_no_room_go_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A snapshot bigger than a message: the copy is exact only at its END, and holds the
    rooms of its sessions from its first message on."""
    monkeypatch.setattr("roomcast.node.keeper.SNAPSHOT_CHUNK", 10)
    node, bus = Node(), FakeBus()
    sid, _, membership = node.connect()
    node.join(sid, membership, "red")
    for i in range(5):
        node.write(("red",), f'2["m{i}"]')
    copy = mirror(bus)
    node.log.switch(KEEPER)
    keeps = node.flush()
    assert len(keeps) > 2
    for keep in keeps[:-1]:
        assert copy.receive(keep)
        assert not copy.synced
        assert wire.room_topic(NS, "red") in bus.interest
    assert copy.receive(keeps[-1])
    assert copy.synced and len(copy.histories[NS]) == 5


async def test_a_session_record_of_the_wrong_shape_raises_nothing() -> None:
    _, copy, _ = await synced_pair()
    bad = [3, 7, "sid", "pid", [], 0, 120.0, [], [], 0, False]  # a namespace that is no string
    assert not copy.receive(wire.Keep(copy.seq + 1, 0, [bad]))
    assert not copy.synced


async def test_a_packet_that_is_a_bus_message_the_keeper_got_is_recorded_by_reference() -> None:
    """The node writes a bus message that came on a room's topic: its record carries only its
    number and the message's id; the keeper takes the frames from its own copy of the
    message and hands them over with the node's offset."""
    node, copy, _ = await synced_pair()
    _sid, pid, _ = await in_red(node, copy)
    red = wire.room_topic(NS, "red")
    msg = room_message(7, "red", '2["by reference"]')
    copy.offer(red, "n3", 1, msg)
    node.log.by_reference = ("n3", 1, 7)
    node.write(("red",), '2["by reference"]', ("n3", 1, 7))
    node.log.watermark("n3", 1, red, 7)
    (keep,) = node.flush()
    assert keep.records[0][0] == PKTREF and not any(type(f) is bytes for f in keep.records[0])
    assert copy.receive(keep)
    copy.adopt(lambda: None)
    copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    assert texts(copy.hand_over(NS, pid, CLAIMANT), copy.offsets) == ['2["by reference"]']


@pytest.mark.parametrize("comes", [True, False])
async def test_a_packet_by_reference_whose_message_comes_later_is_filled_or_refused(
    comes: bool,
) -> None:
    """The record comes before the bus message (it took another router): its place waits
    for it and is filled when it comes, even after the node died; if it never comes, the
    session is refused rather than replayed without it."""
    node, copy, _ = await synced_pair()
    _, pid, _ = await in_red(node, copy)
    red = wire.room_topic(NS, "red")
    for msg_id in (1, 2):
        node.log.by_reference = ("n3", 1, msg_id)
        node.write(("red",), f'2["m{msg_id}"]', ("n3", 1, msg_id))
        node.log.watermark("n3", 1, red, msg_id)
    for keep in node.flush():
        assert copy.receive(keep)
    copy.offer(red, "n3", 1, room_message(1, "red", '2["m1"]'))
    copy.adopt(lambda: None)
    if comes:
        copy.offer(red, "n3", 1, room_message(2, "red", '2["m2"]'))
    copy.lend_session(NS, pid, None, CLAIMANT, 5.0)
    if comes:
        assert texts(copy.hand_over(NS, pid, CLAIMANT), copy.offsets) == ['2["m1"]', '2["m2"]']
    else:
        with pytest.raises(RecoveryRefusedError) as refused:
            copy.hand_over(NS, pid, CLAIMANT)
        assert refused.value.reason == recovery.HISTORY_EVICTED
