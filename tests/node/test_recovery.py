"""Connection state recovery's pure parts (roomcast/node/recovery.py): offsets, history,
membership in time, and which packets a reconnecting client missed. No event loop."""

from __future__ import annotations

import pytest

from roomcast.errors import RecoveryRefusedError
from roomcast.ids import node_tag, offset_text
from roomcast.node import recovery
from roomcast.node.recovery import (
    Entry,
    History,
    Membership,
    Offsets,
    PersistedSession,
    missed,
)
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

TAG = node_tag("n1", 1)
SID = "S" * 24


def packet(n: int) -> Frames:
    return Frames(sio.encode_event("/", "e", [n]))


def entry(n: int, rooms: tuple[str, ...] = (), except_rooms: tuple[str, ...] = ()) -> Entry:
    return Entry(n, rooms, except_rooms, (), packet(n))


def numbers(frames: list[Frames]) -> list[int]:
    return [sio.Decoder().feed(f.encoded.text).data[1] for f in frames]  # type: ignore[union-attr]


def session(membership: Membership) -> PersistedSession:
    return PersistedSession(
        "/", SID, "P" * 24, frozenset(membership.joined), {}, membership.first, membership, 60.0
    )


# --- offsets ---------------------------------------------------------------------------------


def test_offsets_number_from_one_in_the_nodes_spelling() -> None:
    """The counter starts at 1 and each offset names this node."""
    offsets = Offsets(TAG)
    assert [offsets.next(), offsets.next()] == [1, 2]
    assert offsets.text(2) == offset_text(TAG, 2)
    assert offsets.parse(offset_text(TAG, 2)) == 2
    assert offsets.parse(None) is None


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        ("garbage", recovery.INVALID_OFFSET),
        (12, recovery.INVALID_OFFSET),
        (offset_text(TAG, 3), recovery.UNKNOWN_OFFSET),  # never given
    ],
)
def test_offsets_a_node_cannot_read_are_refused(offset: object, reason: str) -> None:
    """Not an offset, or one never given: refused, named."""
    offsets = Offsets(TAG)
    offsets.next()
    offsets.next()
    with pytest.raises(RecoveryRefusedError) as info:
        offsets.parse(offset)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "offset", [offset_text(node_tag("n2", 1), 1), offset_text(node_tag("n1", 2), 9)]
)
def test_an_offset_of_another_node_or_incarnation_means_nothing_from_this_one(
    offset: str,
) -> None:
    """Another node's offset (or a restarted node's) is read as no offset: the client got
    nothing this node numbered in the session it presents."""
    offsets = Offsets(TAG)
    offsets.next()
    assert offsets.parse(offset) is None


# --- history ---------------------------------------------------------------------------------


def test_history_drops_the_oldest_past_its_packet_bound_and_raises_its_floor() -> None:
    """Past ``max_packets`` the oldest packets go; the floor is the last number dropped."""
    history = History(max_packets=3, max_bytes=10**6)
    for n in range(1, 6):
        history.record(entry(n))
    assert len(history) == 3 and history.floor == 2
    assert [e.counter for e in history.after(3)] == [4, 5]
    assert [e.counter for e in history.after(0)] == [3, 4, 5]


def test_history_drops_the_oldest_past_its_byte_bound() -> None:
    """Past ``max_bytes`` the oldest packets go until the rest fit."""
    size = packet(1).nbytes
    history = History(max_packets=100, max_bytes=2 * size)
    for n in range(1, 4):
        history.record(entry(n))
    assert [e.counter for e in history.after(0)] == [2, 3] and history.floor == 1
    assert history.nbytes == 2 * size


def test_cleared_history_keeps_its_floor() -> None:
    """Clearing a history raises its floor to the last packet it had."""
    history = History(10, 10**6)
    history.record(entry(4))
    history.clear()
    assert len(history) == 0 and history.floor == 4


# --- membership in time ------------------------------------------------------------------------


def test_a_socket_is_in_a_room_between_its_join_and_its_leave() -> None:
    """Packets numbered after the join and up to the leave reached the socket; a room joined
    again counts from the new join."""
    m = Membership(SID, first=0, keep=8)
    m.join("r", 3)
    m.leave("r", 6)
    m.join("r", 9)
    assert [c for c in range(1, 12) if m.was_in("r", c)] == [4, 5, 6, 10, 11]
    assert m.was_in(SID, 1)


def test_membership_forgets_old_leaves_and_raises_its_floor() -> None:
    """Past ``keep`` rooms left, the oldest are forgotten and the floor rises past them."""
    m = Membership(SID, first=0, keep=2)
    for i, room in enumerate("abc"):
        m.join(room, 2 * i)
        m.leave(room, 2 * i + 1)
    assert m.floor == 1 and not m.was_in("a", 1) and m.was_in("b", 3)


def test_was_sent_follows_the_registry_rule_at_the_time() -> None:
    """A packet reached the socket if it was then in a target room (or connected, for a
    namespace-wide one), not in an excluded room, and not excluded by sid."""
    m = Membership(SID, first=2, keep=8)
    m.join("r", 2)
    m.join("muted", 5)
    assert m.was_sent(entry(3, ("r",)), SID)
    assert not m.was_sent(entry(3, ("other",)), SID)
    assert m.was_sent(entry(3), SID)
    assert not m.was_sent(entry(2), SID)  # before it connected
    assert not m.was_sent(entry(6, ("r",), ("muted",)), SID)
    assert m.was_sent(entry(4, ("r",), ("muted",)), SID)  # before it was muted
    assert not m.was_sent(Entry(3, ("r",), (), (SID,), packet(3)), SID)
    assert m.was_sent(entry(3, (SID,)), SID)


# --- what a client missed ----------------------------------------------------------------------


def test_missed_is_what_reached_the_socket_after_the_clients_offset() -> None:
    """The packets after the client's offset that reached the socket, in order."""
    m = Membership(SID, first=0, keep=8)
    m.join("r", 0)
    history = History(100, 10**6)
    for n, rooms in enumerate([("r",), ("x",), ("r",), (), ("r",)], start=1):
        history.record(entry(n, rooms))
    assert numbers(missed(history, session(m), delivered=5, after=1)) == [3, 4, 5]
    assert numbers(missed(history, session(m), delivered=5, after=None)) == [1, 3, 4, 5]
    assert missed(history, session(m), delivered=5, after=5) == []


def test_a_client_with_no_offset_missed_what_came_after_its_socket_connected() -> None:
    """No offset (the client received nothing: socket.io #4888), or one older than the socket
    (left over from an earlier session): everything since the socket connected, nothing
    before it."""
    m = Membership(SID, first=2, keep=8)
    history = History(100, 10**6)
    for n in range(1, 5):
        history.record(entry(n))
    assert numbers(missed(history, session(m), delivered=4, after=None)) == [3, 4]
    assert numbers(missed(history, session(m), delivered=4, after=1)) == [3, 4]


def test_a_quiet_session_recovers_whatever_history_dropped_since() -> None:
    """A socket sent nothing since the client's offset recovers with nothing to replay, even
    when that offset's packet was dropped long ago (socket.io #5282)."""
    m = Membership(SID, first=0, keep=8)
    m.join("quiet", 0)
    history = History(2, 10**6)
    history.record(entry(1, ("quiet",)))
    for n in range(2, 10):
        history.record(entry(n, ("busy",)))
    assert history.floor > 1
    assert missed(history, session(m), delivered=1, after=1) == []
    assert missed(history, session(m), delivered=0, after=None) == []


def test_a_dropped_packet_the_client_may_have_missed_refuses_the_recovery() -> None:
    """When a packet after the client's offset was dropped and something reached the socket
    since, recovery is refused rather than partial."""
    m = Membership(SID, first=0, keep=8)
    history = History(2, 10**6)
    for n in range(1, 6):
        history.record(entry(n))
    with pytest.raises(RecoveryRefusedError) as info:
        missed(history, session(m), delivered=5, after=1)
    assert info.value.reason == recovery.HISTORY_EVICTED
    assert numbers(missed(history, session(m), delivered=5, after=3)) == [4, 5]


def test_a_forgotten_leave_refuses_what_it_cannot_judge() -> None:
    """Past the membership's floor (old leaves forgotten) recovery is refused, never guessed."""
    m = Membership(SID, first=0, keep=1)
    for i, room in enumerate("ab"):
        m.join(room, 2 * i)
        m.leave(room, 2 * i + 1)
    history = History(100, 10**6)
    for n in range(1, 6):
        history.record(entry(n))
    with pytest.raises(RecoveryRefusedError):
        missed(history, session(m), delivered=5, after=0)
    assert numbers(missed(history, session(m), delivered=5, after=1)) == [2, 3, 4, 5]
