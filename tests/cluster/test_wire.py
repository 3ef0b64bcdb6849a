"""The bus wire format: envelopes round-trip, topics are prefix-safe, garbage is a WireError."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast import ids
from roomcast.cluster import wire
from roomcast.cluster.wire import Kind
from roomcast.ids import NodeId, NodeTag, node_tag
from roomcast.protocol.frames import Frames
from roomcast.protocol.socketio import Encoded

TAG = NodeTag(bytes.fromhex("0102030405ff"))

BODIES: list[wire.Body] = [
    wire.RoomMessage(
        7,
        "/chat",
        ("a", "ünï", ""),
        ("x",),
        ("sid1", "sid2"),
        True,
        Frames(Encoded('2["ev",{"k":1}]', (b"\x00\xff", b""))).ws,
    ),
    wire.RoomMessage(8, "/", (), (), (), False, Frames(Encoded("2", ())).ws),
    wire.Request(3, TAG, 2, {"rooms": ["a", "b"], "n": 1, "nested": [None, 1.5]}),
    wire.Request(4, TAG, 1, None),
    wire.Reply(3, [{"id": "s1", "rooms": ["a"]}, b"bin"]),
    wire.Reply(5, None),
    wire.Delta(12, (("/", "a", 3), ("/chat", "a", 0)), 40),
    wire.Delta(1, (), 0),
    wire.Heartbeat(12, TAG, "127.0.0.1:8000", 40, 1700000000.25),
    wire.Heartbeat(13, TAG, "127.0.0.1:8000", 40, 1700000000.25, ("r1", "r2")),
    wire.SnapshotRequest(TAG),
    wire.Snapshot(12, TAG, "127.0.0.1:8000", 40, 1700000000.25, (("/", "a", 3), ("/x", "b", 1))),
    wire.Snapshot(0, TAG, "", 0, 0.0, ()),
    wire.Leave(),
    wire.Probe(2**40),
    wire.Keep(3, 17, [[1], [8, "/", 17, ["r"], [], [], b"\x81\x012", None]]),
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_round_trip(body: wire.Body) -> None:
    """Every envelope kind decodes to the header and body that were encoded."""
    data = wire.encode("node-1", 3, 99, body)
    header, decoded = wire.decode(data)
    assert header == wire.Header(header.kind, NodeId("node-1"), 3, 99)
    assert decoded == body
    assert type(decoded) is type(body)


def test_every_kind_is_covered() -> None:
    """The round-trip table exercises every envelope kind."""
    kinds = {wire.decode(wire.encode("n", 1, 1, b))[0].kind for b in BODIES}
    assert kinds == set(Kind)


def test_header_kind_matches_body() -> None:
    """The header's kind names the body's type."""
    expected = {
        wire.RoomMessage: Kind.ROOM,
        wire.Request: Kind.REQUEST,
        wire.Reply: Kind.REPLY,
        wire.Delta: Kind.DELTA,
        wire.Heartbeat: Kind.HEARTBEAT,
        wire.SnapshotRequest: Kind.SNAPSHOT_REQUEST,
        wire.Snapshot: Kind.SNAPSHOT,
        wire.Leave: Kind.LEAVE,
        wire.Probe: Kind.PROBE,
        wire.Keep: Kind.KEEP,
    }
    for body in BODIES:
        header, _ = wire.decode(wire.encode("n", 1, 1, body))
        assert header.kind is expected[type(body)]


def test_heartbeat_integer_start_time_decodes_as_float() -> None:
    """A start time sent as an integer decodes as a float (msgpack may shrink 5.0 to 5)."""
    data = _envelope(wire.WIRE_VERSION, Kind.HEARTBEAT, "n", 1, 1, 0, TAG, "", 0, 5, [])
    _, body = wire.decode(data)
    assert isinstance(body, wire.Heartbeat)
    assert body.started == 5.0 and isinstance(body.started, float)


names = st.text(max_size=12)
changes = st.tuples(names, names, st.integers(min_value=0, max_value=2**31))


@given(
    origin=names,
    incarnation=st.integers(min_value=0, max_value=2**62),
    seq=st.integers(min_value=0, max_value=2**62),
    body=st.one_of(
        st.builds(
            wire.RoomMessage,
            st.integers(min_value=0, max_value=2**62),
            names,
            st.lists(names, max_size=4).map(tuple),
            st.lists(names, max_size=4).map(tuple),
            st.lists(names, max_size=4).map(tuple),
            st.booleans(),
            st.builds(
                lambda text, attachments: Frames(Encoded(text, attachments)).ws,
                st.text(max_size=40),
                st.lists(st.binary(max_size=16), max_size=3).map(tuple),
            ),
        ),
        st.builds(
            wire.Delta,
            st.integers(min_value=0, max_value=2**62),
            st.lists(changes, max_size=5).map(tuple),
            st.integers(min_value=0, max_value=2**31),
        ),
        st.builds(
            wire.Snapshot,
            st.integers(min_value=0, max_value=2**62),
            st.binary(min_size=6, max_size=6),
            names,
            st.integers(min_value=0, max_value=2**31),
            st.floats(allow_nan=False),
            st.lists(changes, max_size=5).map(tuple),
        ),
    ),
)
def test_round_trip_property(origin: str, incarnation: int, seq: int, body: wire.Body) -> None:
    """Arbitrary names, texts and counts survive the round trip unchanged."""
    header, decoded = wire.decode(wire.encode(origin, incarnation, seq, body))
    assert (header.origin, header.incarnation, header.seq) == (origin, incarnation, seq)
    assert decoded == body


# --- topics -----------------------------------------------------------------------------------


def _prefix_free(a: bytes, b: bytes) -> bool:
    return a == b or not (a.startswith(b) or b.startswith(a))


def test_room_topic_a_is_not_a_prefix_of_ab() -> None:
    """Room ``a``'s topic is not a prefix of room ``ab``'s (nor the other way round)."""
    a, ab = wire.room_topic("/", "a"), wire.room_topic("/", "ab")
    assert a != ab
    assert not ab.startswith(a) and not a.startswith(ab)


def test_topic_lengths_are_fixed_per_kind() -> None:
    """Gossip is 1 byte, room and namespace topics 16, node topics 7, whatever the names."""
    assert wire.GOSSIP_TOPIC == b"G"
    for ns, room in [("/", ""), ("/", "a"), ("/chat", "x" * 5000), ("", "ü" * 3)]:
        assert len(wire.room_topic(ns, room)) == 16
        assert wire.room_topic(ns, room)[:1] == b"R"
        assert len(wire.namespace_topic(ns)) == 16
        assert wire.namespace_topic(ns)[:1] == b"A"
    for tag in (TAG, node_tag("n1", 1), bytes(6)):
        assert wire.node_topic(tag) == b"N" + tag
        assert len(wire.node_topic(tag)) == 1 + ids.TAG_BYTES


def test_namespace_separation() -> None:
    """The same room name in two namespaces has two topics; a namespace topic is neither."""
    assert wire.room_topic("/a", "r") != wire.room_topic("/b", "r")
    assert wire.room_topic("/", "r") != wire.room_topic("/r", "")
    assert wire.namespace_topic("/a") != wire.namespace_topic("/b")
    assert wire.namespace_topic("/a") != wire.room_topic("/a", "")


def test_topics_of_different_kinds_never_prefix_each_other() -> None:
    """Every kind starts with its own letter, so no topic of one kind prefixes another's."""
    topics = [
        wire.GOSSIP_TOPIC,
        wire.room_topic("/", "a"),
        wire.namespace_topic("/"),
        wire.node_topic(TAG),
    ]
    for i, a in enumerate(topics):
        for b in topics[i + 1 :]:
            assert _prefix_free(a, b)


@given(st.lists(st.tuples(names, names), min_size=2, max_size=8, unique=True))
def test_room_topics_prefix_free_property(keys: list[tuple[str, str]]) -> None:
    """Distinct (namespace, room) pairs give distinct, mutually prefix-free topics."""
    topics = [wire.room_topic(ns, room) for ns, room in keys]
    assert len(set(topics)) == len(topics)
    for i, a in enumerate(topics):
        for b in topics[i + 1 :]:
            assert _prefix_free(a, b) and a != b


# --- sid tags ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", [TAG, bytes(6), b"\xff" * 6, node_tag("n1", 7)])
def test_tag_of_sid_round_trip(tag: bytes) -> None:
    """A sid that starts with ``tag_text(tag)`` yields ``tag`` back."""
    text = ids.tag_text(tag)
    assert len(text) == ids.TAG_CHARS
    assert ids.tag_of_sid(text + "random-sid-part_") == tag


_URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(st.binary(min_size=6, max_size=6), st.text(_URLSAFE, min_size=16, max_size=16))
def test_tag_of_sid_round_trip_property(tag: bytes, rest: str) -> None:
    """Any tag, with any 16-character random part, comes back from its sid."""
    assert ids.tag_of_sid(ids.tag_text(tag) + rest) == tag


@pytest.mark.parametrize("rest", ["", "short", "x" * 15, "x" * 17, "sixteen chars!!!"])
def test_tag_of_sid_needs_a_sids_shape(rest: str) -> None:
    """Only a 24-character base64url name is a sid: 8 of tag, 16 random."""
    assert ids.tag_of_sid(ids.tag_text(b"abcdef") + rest) is None


@pytest.mark.parametrize(
    "sid",
    ["", "short", "AAAAAAAA", "é" * 12, "AAAA!!!!suffix", "AAAAAA==suffix", "AA+/AAAAsuffix"],
)
def test_tag_of_sid_rejects_foreign_sids(sid: str) -> None:
    """A sid too short, or whose prefix is not the text of a 6-byte tag, has no tag."""
    assert ids.tag_of_sid(sid) is None


@given(st.binary(min_size=6, max_size=6))
def test_engine_sid_names_its_node(tag: bytes) -> None:
    """A fresh Engine.IO sid is 28 URL-safe characters and yields its node's tag back."""
    sid = ids.new_engine_sid(ids.NodeTag(tag))
    assert len(sid) == ids.ENGINE_SID_CHARS
    assert set(sid) <= set(_URLSAFE)
    assert ids.tag_of_engine_sid(sid) == tag


@pytest.mark.parametrize(
    "sid", ["", "x" * 20, "A" * 27, "A" * 29, "AAAAAAAA" + "!" * 20, "AA+/AAAA" + "x" * 20]
)
def test_tag_of_engine_sid_rejects_foreign_sids(sid: str) -> None:
    """Only a 28-character base64url name whose prefix is a tag's text names a node."""
    assert ids.tag_of_engine_sid(sid) is None


# --- garbage ----------------------------------------------------------------------------------


def _envelope(*items: Any) -> bytes:
    """Raw envelope parts, framed as :func:`wire.encode` frames them (sender key, kind byte)."""
    kind = items[1] if len(items) > 1 and isinstance(items[1], int) and 0 <= items[1] < 256 else 0
    data: bytes = msgpack.packb(list(items), use_bin_type=True)
    return wire.sender_key("ghost", 1) + bytes((kind,)) + data


V = wire.WIRE_VERSION
WS = b"\x81\x022"  # the frames of the packet "2"

GARBAGE: dict[str, bytes] = {
    "empty": b"",
    "reserved byte": wire.sender_key("n", 1) + b"\x08\xc1\xc1\xc1",
    "truncated": wire.encode("n", 1, 1, BODIES[0])[:-3],
    "trailing bytes": wire.encode("n", 1, 1, wire.Leave()) + b"\x00",
    "not a list": wire.sender_key("n", 1) + b"\x00" + msgpack.packb({"v": 1}),
    "a string": wire.sender_key("n", 1) + b"\x00" + msgpack.packb("hello"),
    "kind byte differs": wire.sender_key("n", 1) + b"\x05" + msgpack.packb([V, 8, "n", 1, 1]),
    "short list": _envelope(V, Kind.LEAVE, "n", 1),
    "wrong version": _envelope(V + 1, Kind.LEAVE, "n", 1, 1),
    "version zero": _envelope(0, Kind.LEAVE, "n", 1, 1),
    "unknown kind": _envelope(V, 99, "n", 1, 1),
    "kind as string": _envelope(V, "ROOM", "n", 1, 1),
    "origin not str": _envelope(V, Kind.LEAVE, b"n", 1, 1),
    "incarnation not int": _envelope(V, Kind.LEAVE, "n", "1", 1),
    "seq not int": _envelope(V, Kind.LEAVE, "n", 1, 1.0),
    "room missing fields": _envelope(V, Kind.ROOM, "n", 1, 1, 7, "/"),
    "room ns not str": _envelope(V, Kind.ROOM, "n", 1, 1, 7, 5, [], [], [], False, WS),
    "room frames str": _envelope(V, Kind.ROOM, "n", 1, 1, 7, "/", [], [], [], False, "42"),
    "room frames not text": _envelope(V, Kind.ROOM, "n", 1, 1, 7, "/", [], [], [], False, b"\x82"),
    "room rooms not list": _envelope(V, Kind.ROOM, "n", 1, 1, 7, "/", "a", [], [], False, WS),
    "room room not str": _envelope(V, Kind.ROOM, "n", 1, 1, 7, "/", [1], [], [], False, WS),
    "room msg_id str": _envelope(V, Kind.ROOM, "n", 1, 1, "7", "/", [], [], [], False, WS),
    "room extra field": _envelope(V, Kind.ROOM, "n", 1, 1, 7, "/", [], [], [], False, WS, 0),
    "request reply_to str": _envelope(V, Kind.REQUEST, "n", 1, 1, 1, "tag", "op", None),
    "request kind not int": _envelope(V, Kind.REQUEST, "n", 1, 1, 1, TAG, "fetch", None),
    "request tag not 6 bytes": _envelope(V, Kind.REQUEST, "n", 1, 1, 1, b"abc", 2, None),
    "request id not int": _envelope(V, Kind.REQUEST, "n", 1, 1, None, TAG, "op", None),
    "reply id not int": _envelope(V, Kind.REPLY, "n", 1, 1, "1", None),
    "reply missing payload": _envelope(V, Kind.REPLY, "n", 1, 1, 1),
    "delta seq not int": _envelope(V, Kind.DELTA, "n", 1, 1, "1", [], 0),
    "delta changes not list": _envelope(V, Kind.DELTA, "n", 1, 1, 1, {"a": 1}, 0),
    "delta short change": _envelope(V, Kind.DELTA, "n", 1, 1, 1, [["/", "a"]], 0),
    "delta count str": _envelope(V, Kind.DELTA, "n", 1, 1, 1, [["/", "a", "3"]], 0),
    "delta room bytes": _envelope(V, Kind.DELTA, "n", 1, 1, 1, [["/", b"a", 3]], 0),
    "heartbeat tag str": _envelope(V, Kind.HEARTBEAT, "n", 1, 1, 1, "tag", "addr", 0, 0.0, []),
    "heartbeat started str": _envelope(V, Kind.HEARTBEAT, "n", 1, 1, 1, TAG, "addr", 0, "0", []),
    "heartbeat address int": _envelope(V, Kind.HEARTBEAT, "n", 1, 1, 1, TAG, 5, 0, 0.0, []),
    "heartbeat routers int": _envelope(V, Kind.HEARTBEAT, "n", 1, 1, 1, TAG, "a", 0, 0.0, [1]),
    "heartbeat short": _envelope(V, Kind.HEARTBEAT, "n", 1, 1, 1, TAG, "addr", 0, 0.0),
    "snapshot request str": _envelope(V, Kind.SNAPSHOT_REQUEST, "n", 1, 1, "tag"),
    "snapshot request empty": _envelope(V, Kind.SNAPSHOT_REQUEST, "n", 1, 1),
    "snapshot rooms bad": _envelope(V, Kind.SNAPSHOT, "n", 1, 1, 1, TAG, "a", 0, 0.0, [1]),
    "snapshot seq float": _envelope(V, Kind.SNAPSHOT, "n", 1, 1, 1.5, TAG, "a", 0, 0.0, []),
    "probe nonce str": _envelope(V, Kind.PROBE, "n", 1, 1, "x"),
    "probe no nonce": _envelope(V, Kind.PROBE, "n", 1, 1),
}


@pytest.mark.parametrize("data", list(GARBAGE.values()), ids=list(GARBAGE))
def test_decode_rejects_garbage(data: bytes) -> None:
    """Malformed envelopes, other wire versions, unknown kinds and wrong types are WireErrors."""
    with pytest.raises(wire.WireError):
        wire.decode(data)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("reserved byte", "not msgpack"),
        ("trailing bytes", "not msgpack"),
        ("a string", "not an envelope"),
        ("short list", "not an envelope"),
        ("wrong version", "wire version"),
        ("unknown kind", "unknown kind"),
        ("kind as string", "unknown kind"),
        ("origin not str", "bad header"),
        ("room missing fields", "bad ROOM body"),
        ("room frames not text", "bad ROOM frames"),
        ("delta count str", "bad membership change"),
        ("probe nonce str", "bad PROBE body"),
    ],
)
def test_wire_error_reason_is_a_fixed_name(name: str, reason: str) -> None:
    """A WireError's reason names the fault without quoting the peer's data (it is counted)."""
    with pytest.raises(wire.WireError) as info:
        wire.decode(GARBAGE[name])
    assert info.value.reason == reason


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_wire_error(data: bytes) -> None:
    """Arbitrary bytes either decode or raise WireError, never another exception."""
    with contextlib.suppress(wire.WireError):
        wire.decode(data)


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.floats(),
            st.text(max_size=5),
            st.binary(max_size=7),
            st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3),
        ),
        max_size=12,
    ),
    st.sampled_from(list(Kind)),
)
def test_decode_of_wrongly_typed_fields_is_wire_error(fields: list[Any], kind: Kind) -> None:
    """Well-formed msgpack with a valid header but arbitrary body fields never escapes as
    anything but a WireError."""
    with contextlib.suppress(wire.WireError):
        wire.decode(_envelope(V, int(kind), "n", 1, 1, *fields))


# --- bus messages and batches -----------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        wire.GOSSIP_TOPIC,
        wire.room_topic("/", "a"),
        wire.namespace_topic("/chat"),
        wire.node_topic(TAG),
        wire.probe_topic(TAG),
    ],
    ids=["gossip", "room", "namespace", "node", "probe"],
)
def test_split_message_finds_each_topic_kind(topic: wire.Topic) -> None:
    """A bus message splits into its topic and envelope by the topic's first byte alone."""
    envelope = wire.encode("n", 1, 1, wire.Leave())
    found, start = wire.split_message(topic + envelope)
    assert found == topic
    assert wire.decode(topic + envelope, start) == wire.decode(envelope)


@pytest.mark.parametrize("frame", [b"", b"Zabc", b"G", wire.node_topic(TAG)])
def test_split_message_without_a_topic_and_envelope_is_a_wire_error(frame: bytes) -> None:
    """An unknown topic kind, or nothing after the topic, is a WireError."""
    with pytest.raises(wire.WireError):
        wire.split_message(frame)


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20))
def test_batch_round_trip(messages: list[bytes]) -> None:
    """A batch gives back its messages, in order, unchanged."""
    assert [bytes(m) for m in wire.split_batch(wire.encode_batch(messages))] == messages


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xba",
        b"\xba\x01" + b"\x00\x00\x00\x01a",  # another wire version
        wire.BATCH_HEAD + b"\x00\x00",  # a length cut short
        wire.BATCH_HEAD + b"\x00\x00\x00\x05abc",  # a message cut short
        wire.BATCH_HEAD + b"\x00\x00\x00\x00",  # an empty message
    ],
)
def test_broken_batches_are_wire_errors(frame: bytes) -> None:
    """Frames that are not well-formed batches raise WireError."""
    with pytest.raises(wire.WireError):
        list(wire.split_batch(frame))
