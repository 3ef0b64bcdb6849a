"""The pure parts of a handover: what a claim keeps while it proves its subscriptions, where
an old node forwards a broadcast for a socket it handed over, and the requests' wire
shape."""

from __future__ import annotations

import msgpack
import pytest

from roomcast.ids import node_tag
from roomcast.node import requests as rq
from roomcast.node.handover import Incoming, forwards
from roomcast.node.recovery import History
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

SID = "sid-of-the-session"
B = node_tag("n2", 1)


def frames(text: str) -> Frames:
    return Frames(sio.Encoded(text, ()))


def incoming(max_packets: int = 10, max_bytes: int = 1 << 20) -> Incoming:
    return Incoming("/", frozenset({SID, "red", "blue"}), History(max_packets, max_bytes))


def test_a_claim_keeps_what_reaches_its_session_by_the_registry_rule() -> None:
    """Kept: its rooms, namespace-wide, its sid; not kept: other rooms, an except room or
    sid it is in, volatile packets."""
    inc = incoming()
    f = frames('2["x"]')
    inc.offer(("red",), (), (), False, f, ("n3", 1, 1))
    inc.offer((), (), (), False, f, ("n3", 1, 2))
    inc.offer((SID,), (), (), False, f, None)
    inc.offer(("green",), (), (), False, f, ("n3", 1, 3))
    inc.offer(("red",), ("blue",), (), False, f, ("n3", 1, 4))
    inc.offer(("red",), (), (SID,), False, f, ("n3", 1, 5))
    inc.offer(("red",), (), (), True, f, ("n3", 1, 6))
    assert [source for _, source in inc.packets] == [("n3", 1, 1), ("n3", 1, 2), None]
    assert not inc.overflow


def test_a_claim_past_the_history_bounds_overflows() -> None:
    """More than the history could keep: nothing is kept, and the claim cannot be exact."""
    inc = incoming(max_packets=2)
    for i in range(3):
        inc.offer(("red",), (), (), False, frames('2["x"]'), ("n3", 1, i))
    assert inc.overflow and inc.packets == []


def test_broadcasts_to_moved_sids_are_forwarded_excepting_their_other_rooms() -> None:
    """Sids the node handed over go to their new nodes; the broadcast's other rooms become
    except rooms of the copy (a socket in one gets it through that room, once)."""
    c = node_tag("n3", 1)
    moved = {"s1": B, "s2": B, "s3": c}
    assert forwards(("s1", "s3", "s2"), moved) == {B: (["s1", "s2"], []), c: (["s3"], [])}
    assert forwards(("s1", "red"), moved) == {B: (["s1"], ["red"])}
    assert forwards(("red",), moved) == {}
    assert forwards((), moved) == {}


@pytest.mark.parametrize(
    "request_",
    [
        rq.ClaimSession("/", "pid", None),
        rq.ClaimSession("/", "pid", "offset"),
        rq.TakeSession("/", "pid"),
        rq.DropClaim("/", "pid"),
        rq.DropClaim("/", "pid", release=True),
    ],
)
def test_handover_requests_travel(request_: rq.Request) -> None:
    """Each handover request decodes to itself."""
    kind, fields = rq.encode_request(request_)
    wire = msgpack.unpackb(msgpack.packb(fields, use_bin_type=True), raw=False)
    assert rq.decode_request(int(kind), wire) == request_


@pytest.mark.parametrize(
    "reply",
    [
        rq.Claimed("sid", ("red",), {"k": 1}, 12.5),
        rq.Moved(bytes(B)),
        rq.Refused("history evicted"),
        rq.HandedOver(((b"\x81\x01x", "off", ("n1", 2, 3)), (b"\x81\x01y", "off2", None))),
    ],
)
def test_handover_replies_travel(reply: rq.Reply) -> None:
    """Each handover reply decodes to itself, through msgpack as on the bus."""
    wire = msgpack.unpackb(msgpack.packb(rq.encode_reply(reply), use_bin_type=True), raw=False)
    assert rq.decode_reply(wire) == reply


def test_a_malformed_handover_reply_is_refused() -> None:
    """A packet that is not (frames, offset, source) is a RequestError."""
    with pytest.raises(rq.RequestError):
        rq.decode_reply([rq.ReplyKind.HANDED_OVER, [["not bytes", "o", None]]])
    with pytest.raises(rq.RequestError):
        rq.decode_request(rq.Kind.CLAIM_SESSION, ["/", "pid", 12])
