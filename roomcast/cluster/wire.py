"""The bus wire format: prefix-safe topics, versioned msgpack envelopes, batches.

A bus *message* is one ZeroMQ frame, ``topic + envelope``. Topics are fixed-length per kind (the
first byte names the kind), so ZeroMQ's prefix matching can never deliver room ``ab``'s traffic
to a subscriber of room ``a``, and anyone can split a message without decoding it:

=========  ============================================================  ======
topic      meaning                                                       length
=========  ============================================================  ======
``G``      gossip: membership deltas, heartbeats, departures             1
``R`` + h  room ``(namespace, room)``, h = BLAKE2b-120 of both names     16
``A`` + h  every socket of a namespace, h = BLAKE2b-120 of the name      16
``N`` + t  one node's direct topic, t = its 6-byte tag (also in its sids) 7
``E`` + t  a probe topic: only its one subscriber uses it, to prove links 7
=========  ============================================================  ======

The envelope is ``sender key (8 bytes) + kind (1 byte) + msgpack array [version, kind, origin,
incarnation, seq, *body]``; the prefix lets an endpoint drop its own envelopes without decoding
them (the router sends a room's traffic back to its publisher when it has members too); the full
room and namespace names travel inside it, the topic only routes. ``seq`` counts per
(origin, topic) so receivers can count what was lost and drop what comes late.

A *batch* is what a node hands a router: one ZeroMQ frame carrying every message the node
published through that router during one event-loop pass, ``BATCH_HEAD`` then, per message, its
length (4 bytes, big-endian) and its bytes. The router splits it and forwards each message
through its XPUB socket, which filters by topic. Batching makes a loop pass cost one wake-up of
each ZeroMQ I/O thread on the way instead of one per message (see README, "The cluster path").
"""

from __future__ import annotations

import enum
import functools
import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, NewType

import msgpack

from roomcast.ids import TAG_BYTES, NodeId, NodeTag

WIRE_VERSION: Final = 3

Topic = NewType("Topic", bytes)

GOSSIP_TOPIC: Final = Topic(b"G")
SENDER_BYTES: Final = 8  # an envelope opens with its sender's key, then one byte of kind
_PREFIX: Final = SENDER_BYTES + 1


class WireError(Exception):
    """A bus message that cannot be decoded (counted and dropped by the receiver).

    ``reason`` is one of a few fixed names, safe to count by; ``detail`` may quote the peer.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Kind(enum.IntEnum):
    """Envelope kinds."""

    ROOM = 1  #: a Socket.IO packet for rooms (or a namespace, or sids)
    REQUEST = 2  #: a node-to-node request, on the target's direct topic
    REPLY = 3  #: the answer to a REQUEST, on the requester's direct topic
    DELTA = 4  #: membership changes of the origin
    HEARTBEAT = 5  #: the origin is alive; carries its facts sequence number
    SNAPSHOT_REQUEST = 6  #: "send me all your facts", on the owner's direct topic
    SNAPSHOT = 7  #: all facts of the origin, on the requester's direct topic
    LEAVE = 8  #: the origin is shutting down
    PROBE = 9  #: comes back through the router to prove a subscription is live
    KEEP = 10  #: what a node tells its keeper about its sessions, on the keeper's direct topic


@functools.lru_cache(maxsize=65_536)  # a hash per publish is measurable on the hot path
def room_topic(namespace: str, room: str) -> Topic:
    """The topic of one room of one namespace."""
    digest = hashlib.blake2b(f"{namespace}\x00{room}".encode(), digest_size=15).digest()
    return Topic(b"R" + digest)


def namespace_topic(namespace: str) -> Topic:
    """The topic of namespace-wide broadcasts."""
    return Topic(b"A" + hashlib.blake2b(namespace.encode(), digest_size=15).digest())


def node_topic(tag: bytes) -> Topic:
    """The direct topic of the node with ``tag``."""
    return Topic(b"N" + tag)


def probe_topic(tag: bytes) -> Topic:
    """A topic only its one subscriber uses: an emitter's, or a node's for checking routers;
    what comes back on it proves a link."""
    return Topic(b"E" + tag)


#: The topic kinds by first byte: their name (in counters) and their length.
TOPIC_KINDS: Final[dict[int, tuple[str, int]]] = {
    ord("G"): ("gossip", 1),
    ord("R"): ("room", 16),
    ord("A"): ("namespace", 16),
    ord("N"): ("node", 1 + TAG_BYTES),
    ord("E"): ("probe", 1 + TAG_BYTES),
}
#: Topic length by its first byte (the hot paths look this up per message).
TOPIC_BYTES: Final[dict[int, int]] = {first: size for first, (_, size) in TOPIC_KINDS.items()}


def split_message(frame: bytes | memoryview) -> tuple[Topic, int]:
    """The topic of a bus message and where its envelope starts; WireError ("bad topic") if
    its first byte names no topic kind, ("not an envelope") if nothing follows the topic."""
    size = TOPIC_BYTES.get(frame[0]) if frame else None
    if size is None:
        raise WireError("bad topic")
    if len(frame) <= size:
        raise WireError("not an envelope")
    return Topic(bytes(frame[:size])), size


BATCH_HEAD: Final = b"\xba" + bytes((WIRE_VERSION,))
_LENGTH = struct.Struct(">I")


def encode_batch(messages: Sequence[bytes]) -> bytes:
    """One frame carrying ``messages`` (each ``topic + envelope``) in order."""
    pack = _LENGTH.pack
    parts = [BATCH_HEAD]
    for message in messages:
        parts.append(pack(len(message)))
        parts.append(message)
    return b"".join(parts)


def split_batch(frame: bytes) -> Iterator[memoryview]:
    """The messages of a batch, in order; WireError at the first framing error (the messages
    before it have been yielded)."""
    if frame[:2] != BATCH_HEAD:
        raise WireError("not a batch")
    view = memoryview(frame)
    end = len(frame)
    offset = 2
    unpack = _LENGTH.unpack_from
    while offset < end:
        if offset + 4 > end:
            raise WireError("bad batch")
        (length,) = unpack(frame, offset)
        offset += 4
        if length == 0 or offset + length > end:
            raise WireError("bad batch")
        yield view[offset : offset + length]
        offset += length


# --- envelopes --------------------------------------------------------------------------------


# Header and RoomMessage are made for every message on the hot path: immutable NamedTuples
# (one tuple.__new__) instead of frozen dataclasses (whose __init__ sets each field through
# object.__setattr__, several times slower).


class Header(NamedTuple):
    """Who sent an envelope, and its place in the (origin, topic) sequence."""

    kind: Kind
    origin: NodeId
    incarnation: int
    seq: int


class RoomMessage(NamedTuple):
    """A Socket.IO packet for the members of some rooms, as the pre-built WebSocket frames the
    origin made once (:class:`roomcast.protocol.frames.Frames`): receivers write them as they
    are."""

    msg_id: int
    namespace: str
    rooms: tuple[str, ...]  #: empty: every socket of the namespace
    except_rooms: tuple[str, ...]
    except_sids: tuple[str, ...]
    volatile: bool
    ws: bytes


@dataclass(frozen=True, slots=True)
class Request:
    """A node-to-node request; answered by a :class:`Reply` on ``reply_to``."""

    request_id: int
    reply_to: NodeTag  #: the requester's tag
    kind: int  #: what is asked (the node's request kinds; the bus does not interpret it)
    fields: Any


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a :class:`Request`."""

    request_id: int
    payload: Any


@dataclass(frozen=True, slots=True)
class Delta:
    """Membership changes: ``(namespace, room, local count)``, count 0 meaning gone."""

    facts_seq: int
    changes: tuple[tuple[str, str, int], ...]
    connections: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The origin is alive; ``facts_seq`` lets receivers notice missed deltas."""

    facts_seq: int
    tag: NodeTag
    address: str
    connections: int
    started: float
    routers: tuple[str, ...] = ()  #: the routers that deliver the origin's own probes


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Ask the owner for all its facts, sent to ``reply_to``."""

    reply_to: NodeTag


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All facts of the origin as of ``facts_seq``."""

    facts_seq: int
    tag: NodeTag
    address: str
    connections: int
    started: float
    rooms: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, slots=True)
class Leave:
    """The origin leaves the cluster now."""


@dataclass(frozen=True, slots=True)
class Probe:
    """A nonce the origin waits to see come back through the router."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Keep:
    """Records of the origin's connection state recovery for the node that keeps a copy
    (:mod:`roomcast.node.keeper`), number ``seq`` of the origin's keep stream; ``last`` is
    the origin's offset counter when it sent them."""

    seq: int
    last: int
    records: list[Any]


Body = (
    RoomMessage
    | Request
    | Reply
    | Delta
    | Heartbeat
    | SnapshotRequest
    | Snapshot
    | Leave
    | Probe
    | Keep
)

_KIND_OF: Final[dict[type, Kind]] = {
    RoomMessage: Kind.ROOM,
    Request: Kind.REQUEST,
    Reply: Kind.REPLY,
    Delta: Kind.DELTA,
    Heartbeat: Kind.HEARTBEAT,
    SnapshotRequest: Kind.SNAPSHOT_REQUEST,
    Snapshot: Kind.SNAPSHOT,
    Leave: Kind.LEAVE,
    Probe: Kind.PROBE,
    Keep: Kind.KEEP,
}


_KIND_BYTE: Final = {kind: bytes((kind,)) for kind in Kind}


def _fields(body: Body) -> list[Any]:
    if isinstance(body, RoomMessage):
        return list(body)  # msgpack packs the tuples of names as arrays
    if isinstance(body, Request):
        return [body.request_id, body.reply_to, body.kind, body.fields]
    if isinstance(body, Reply):
        return [body.request_id, body.payload]
    if isinstance(body, Delta):
        return [body.facts_seq, [list(c) for c in body.changes], body.connections]
    if isinstance(body, Heartbeat):
        return [
            body.facts_seq,
            body.tag,
            body.address,
            body.connections,
            body.started,
            list(body.routers),
        ]
    if isinstance(body, SnapshotRequest):
        return [body.reply_to]
    if isinstance(body, Snapshot):
        return [
            body.facts_seq,
            body.tag,
            body.address,
            body.connections,
            body.started,
            [list(r) for r in body.rooms],
        ]
    if isinstance(body, Probe):
        return [body.nonce]
    if isinstance(body, Keep):
        return [body.seq, body.last, body.records]
    return []  # Leave


def sender_key(origin: str, incarnation: int) -> bytes:
    """The 8 bytes that open every envelope of one incarnation of an endpoint."""
    return hashlib.blake2b(f"{origin}:{incarnation}".encode(), digest_size=SENDER_BYTES).digest()


class Encoder:
    """Encodes the envelopes of one endpoint (one origin and incarnation).

    What every envelope of a kind repeats (sender key, kind byte, the msgpack array's header,
    version, kind, origin, incarnation) is packed once per kind; each envelope then packs
    only its sequence number and body.
    """

    __slots__ = ("_packer", "_prefixes", "incarnation", "origin", "sender")

    def __init__(self, origin: str, incarnation: int, sender: bytes | None = None) -> None:
        self.origin = origin
        self.incarnation = incarnation
        self.sender = sender or sender_key(origin, incarnation)
        # One Packer, reused: msgpack.packb builds a new one per call. App data that msgpack
        # cannot carry is a TypeError for the publisher (never silently a string).
        self._packer = msgpack.Packer(use_bin_type=True)
        self._prefixes: dict[tuple[Kind, int], bytes] = {}

    def encode(self, seq: int, body: Body) -> bytes:
        """The envelope of ``body``, number ``seq`` of its (origin, topic) sequence."""
        kind = _KIND_OF[type(body)]
        fields = _fields(body)
        prefix = self._prefixes.get((kind, len(fields)))
        if prefix is None:
            prefix = self._prefix(kind, len(fields))
        tail: bytes = self._packer.pack([seq, *fields])
        # The tail was packed as an array of its own: drop that array's header (1 byte up to
        # 15 items, 3 up to 65535) and let the prefix's header count it all.
        return prefix + tail[1 if len(fields) < 15 else 3 :]

    def _prefix(self, kind: Kind, nfields: int) -> bytes:
        count = 4 + 1 + nfields  # version, kind, origin, incarnation; seq; the body
        pack = self._packer.pack
        header = bytes((0x90 | count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
        prefix: bytes = (
            self.sender
            + _KIND_BYTE[kind]
            + header
            + pack(WIRE_VERSION)
            + pack(int(kind))
            + pack(self.origin)
            + pack(self.incarnation)
        )
        self._prefixes[(kind, nfields)] = prefix
        return prefix


def can_carry(value: Any) -> bool:
    """Whether msgpack carries ``value`` (app data a node sends another)."""
    try:
        msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def encode(
    origin: str, incarnation: int, seq: int, body: Body, sender: bytes | None = None
) -> bytes:
    """One envelope, ready to follow its topic in a bus message.

    It opens with the sender's key and the kind, outside the msgpack part, so a node can drop
    its own envelopes coming back through the router without decoding them.
    """
    return Encoder(origin, incarnation, sender).encode(seq, body)


def _str_tuple(value: Any) -> tuple[str, ...]:
    if type(value) is not list:
        raise WireError("expected a list of strings")
    for item in value:
        if type(item) is not str:
            raise WireError("expected a list of strings")
    return tuple(value)


def _triples(value: Any) -> tuple[tuple[str, str, int], ...]:
    if not isinstance(value, list):
        raise WireError("expected a list of changes")
    out = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
            or not isinstance(item[2], int)
        ):
            raise WireError("bad membership change")
        out.append((item[0], item[1], item[2]))
    return tuple(out)


_KINDS: Final[dict[int, Kind]] = {int(kind): kind for kind in Kind}


def decode(data: bytes, start: int = 0) -> tuple[Header, Body]:
    """Decode the envelope at ``data[start:]`` (a bus message's envelope starts after its
    topic); anything malformed or of another wire version is a WireError."""
    if len(data) - start <= _PREFIX:
        raise WireError("not an envelope")
    try:
        items = msgpack.unpackb(
            memoryview(data)[start + _PREFIX :], raw=False, strict_map_key=False
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError("not msgpack") from exc
    if type(items) is not list or len(items) < 5:
        raise WireError("not an envelope")
    version, kind_value, origin, incarnation, seq, *f = items
    if version != WIRE_VERSION:
        raise WireError("wire version", repr(version))
    kind = _KINDS.get(kind_value) if type(kind_value) is int else None
    if kind is None:
        raise WireError("unknown kind", repr(kind_value))
    if data[start + SENDER_BYTES] != kind:
        raise WireError("bad header", "kind byte")
    if type(origin) is not str or type(incarnation) is not int or type(seq) is not int:
        raise WireError("bad header")
    header = Header(kind, NodeId(origin), incarnation, seq)
    try:
        return header, _body(kind, f)
    except (ValueError, TypeError, IndexError) as exc:
        raise WireError(f"bad {kind.name} body") from exc


def _body(kind: Kind, f: list[Any]) -> Body:
    if kind is Kind.ROOM:
        msg_id, ns, rooms, except_rooms, except_sids, volatile, ws = f
        if type(ns) is not str or type(ws) is not bytes or type(msg_id) is not int:
            raise WireError("bad ROOM body")
        if ws[:1] != b"\x81":  # the packet's frames open with a final text frame
            raise WireError("bad ROOM frames")
        return RoomMessage(
            msg_id,
            ns,
            _str_tuple(rooms),
            _str_tuple(except_rooms),
            _str_tuple(except_sids),
            volatile is True,
            ws,
        )
    if kind is Kind.REQUEST:
        request_id, reply_to, request_kind, fields = f
        if not isinstance(request_id, int) or not _is_tag(reply_to):
            raise WireError("bad REQUEST body")
        if type(request_kind) is not int:
            raise WireError("bad REQUEST kind")
        return Request(request_id, NodeTag(reply_to), request_kind, fields)
    if kind is Kind.REPLY:
        request_id, payload = f
        if not isinstance(request_id, int):
            raise WireError("bad REPLY body")
        return Reply(request_id, payload)
    if kind is Kind.DELTA:
        facts_seq, changes, connections = f
        if not isinstance(facts_seq, int) or not isinstance(connections, int):
            raise WireError("bad DELTA body")
        return Delta(facts_seq, _triples(changes), connections)
    if kind is Kind.HEARTBEAT:
        facts_seq, tag, address, connections, started, routers = f
        _check_node_fields(kind, facts_seq, tag, address, connections, started)
        return Heartbeat(facts_seq, tag, address, connections, float(started), _str_tuple(routers))
    if kind is Kind.SNAPSHOT_REQUEST:
        (reply_to,) = f
        if not _is_tag(reply_to):
            raise WireError("bad SNAPSHOT_REQUEST body")
        return SnapshotRequest(NodeTag(reply_to))
    if kind is Kind.SNAPSHOT:
        facts_seq, tag, address, connections, started, rooms = f
        _check_node_fields(kind, facts_seq, tag, address, connections, started)
        return Snapshot(facts_seq, tag, address, connections, float(started), _triples(rooms))
    if kind is Kind.LEAVE:
        return Leave()
    if kind is Kind.KEEP:
        seq, last, records = f
        if type(seq) is not int or type(last) is not int or type(records) is not list:
            raise WireError("bad KEEP body")
        return Keep(seq, last, records)
    (nonce,) = f
    if not isinstance(nonce, int):
        raise WireError("bad PROBE body")
    return Probe(nonce)


def _is_tag(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == TAG_BYTES


def _check_node_fields(
    kind: Kind, facts_seq: Any, tag: Any, address: Any, connections: Any, started: Any
) -> None:
    """The fields HEARTBEAT and SNAPSHOT share."""
    if not (
        isinstance(facts_seq, int)
        and _is_tag(tag)
        and isinstance(address, str)
        and isinstance(connections, int)
        and isinstance(started, int | float)
    ):
        raise WireError(f"bad {kind.name} body")
