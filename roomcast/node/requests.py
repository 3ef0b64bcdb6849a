"""Node-to-node requests and their replies: frozen types, one kind number each.

The cluster adapter sends a request to exactly the nodes that may hold targeted sockets and
waits for one reply from each. Every request type has one handler in
:class:`~roomcast.node.cluster.ClusterAdapter`, the same local function the origin runs for its
own sockets. On the bus a request travels as ``wire.Request(request_id, reply_to, kind,
fields)`` and a reply as ``wire.Reply(request_id, [kind, *fields])``; :func:`decode_request` and
:func:`decode_reply` refuse anything malformed with :class:`RequestError` (the receiver counts
it and answers :class:`Failed`).

App data (event arguments, ``socket.data``, handshake fields) must be what msgpack carries:
anything else is a ``TypeError`` where it is sent, never silently turned into a string.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from roomcast.cluster.routing import Target
from roomcast.ids import Namespace

from .adapter import Handshake, SocketInfo


class RequestError(ValueError):
    """A request or reply from another node that does not have its kind's shape."""


class Kind(enum.IntEnum):
    """Request kinds (and the kinds of their replies)."""

    SERVER_SIDE_EMIT = 1
    FETCH_SOCKETS = 2
    ADD_SOCKETS = 3
    DEL_SOCKETS = 4
    DISCONNECT_SOCKETS = 5
    BROADCAST_WITH_ACK = 6
    CLAIM_SESSION = 7
    TAKE_SESSION = 8
    DROP_CLAIM = 9
    MIRROR_ROOMS = 10
    RESYNC_KEEP = 11
    RELEASE_SESSIONS = 12


class ReplyKind(enum.IntEnum):
    """Reply kinds."""

    ANSWER = 1
    SOCKETS = 2
    APPLIED = 3
    ACKS = 4
    FAILED = 5
    CLAIMED = 6
    MOVED = 7
    REFUSED = 8
    HANDED_OVER = 9


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSideEmit:
    """Run the server-event handler of ``event`` with ``args``."""

    event: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class FetchSockets:
    """Snapshot the targeted sockets."""

    target: Target


@dataclass(frozen=True, slots=True)
class AddSockets:
    """Make the targeted sockets join ``rooms``."""

    target: Target
    rooms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DelSockets:
    """Make the targeted sockets leave ``rooms``."""

    target: Target
    rooms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DisconnectSockets:
    """Disconnect the targeted sockets (``close``: their whole connections)."""

    target: Target
    close: bool


@dataclass(frozen=True, slots=True)
class BroadcastWithAck:
    """Emit ``event`` to the targeted sockets with an ack id; collect acks for ``timeout`` s."""

    target: Target
    event: str
    args: tuple[Any, ...]
    timeout: float


@dataclass(frozen=True, slots=True)
class ClaimSession:
    """Claim the session ``pid`` of ``namespace`` for a client back on the requesting node
    with ``offset`` (connection state recovery across nodes): answered :class:`Claimed`,
    :class:`Moved` or :class:`Refused`."""

    namespace: str
    pid: str
    offset: str | None


@dataclass(frozen=True, slots=True)
class TakeSession:
    """Hand the claimed session ``pid`` over: the requester proved its subscriptions to the
    session's rooms. Answered :class:`HandedOver` (the session is then the requester's) or
    :class:`Refused`."""

    namespace: str
    pid: str


@dataclass(frozen=True, slots=True)
class DropClaim:
    """The requester's connect for ``pid`` did not go through: the session stays kept, or,
    with ``release``, is released (its client was given a fresh session)."""

    namespace: str
    pid: str
    release: bool = False


@dataclass(frozen=True, slots=True)
class MirrorRooms:
    """The requester's keeper subscribes to ``rooms`` of ``namespace`` (and, with
    ``namespace_wide``, to the namespace's topic) and answers once the subscriptions are live:
    the requester's sockets are joining them (see :mod:`roomcast.node.keeper`)."""

    namespace: str
    rooms: tuple[str, ...]
    namespace_wide: bool


@dataclass(frozen=True, slots=True)
class ReleaseSessions:
    """The requester, keeper of this node, handed these sessions over while it took this node
    for dead: this node lets them go and points to where each went (pid, sid, node tag)."""

    sessions: tuple[tuple[str, str, bytes], ...]


@dataclass(frozen=True, slots=True)
class ResyncKeep:
    """The requester keeps a copy of this node's sessions and lost part of its keep stream:
    send it everything again."""


Request = (
    ServerSideEmit
    | FetchSockets
    | AddSockets
    | DelSockets
    | DisconnectSockets
    | BroadcastWithAck
    | ClaimSession
    | TakeSession
    | DropClaim
    | MirrorRooms
    | ResyncKeep
    | ReleaseSessions
)

#: Where a handed-over packet came in on the bus (origin, incarnation, message id); None for
#: a broadcast the old node wrote and did not publish.
Source = tuple[str, int, int] | None

# --- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """A server-event handler's answer."""

    value: Any


@dataclass(frozen=True, slots=True)
class Sockets:
    """The targeted sockets of one node."""

    sockets: tuple[SocketInfo, ...]


@dataclass(frozen=True, slots=True)
class Applied:
    """How many targeted sockets took a join, leave or disconnect, and how many refused."""

    count: int
    failed: int


@dataclass(frozen=True, slots=True)
class Acks:
    """The acks one node collected, of ``expected`` recipients."""

    responses: tuple[Any, ...]
    expected: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The node could not serve the request: ``error`` names why."""

    error: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """The session is claimed for the requester: what it keeps of the socket, and the
    seconds left of its window."""

    sid: str
    rooms: tuple[str, ...]
    data: Any
    window: float


@dataclass(frozen=True, slots=True)
class Moved:
    """The session was handed over to the node whose tag is ``tag``: ask it."""

    tag: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """The session cannot be recovered exactly, for ``reason`` (one of
    :mod:`roomcast.node.recovery`'s); the old node released it."""

    reason: str


@dataclass(frozen=True, slots=True)
class HandedOver:
    """The packets the client missed, in order, as the old node wrote them (``ws``, with its
    ``offset``), each with its :data:`Source`."""

    packets: tuple[tuple[bytes, str, Source], ...]


Reply = Answer | Sockets | Applied | Acks | Failed | Claimed | Moved | Refused | HandedOver

# --- encoding ---------------------------------------------------------------------------------


def _target_out(t: Target) -> list[Any]:
    return [t.namespace, sorted(t.rooms), sorted(t.except_rooms), sorted(t.except_sids), t.volatile]


def str_list(value: Any) -> tuple[str, ...]:
    """``value`` if it is a list of strings (as a tuple); else RequestError (a ValueError)."""
    if type(value) is not list or any(type(v) is not str for v in value):
        raise RequestError("expected a list of strings")
    return tuple(value)


def str_field(value: Any) -> str:
    """``value`` if it is a string; else RequestError (a ValueError)."""
    if type(value) is not str:
        raise RequestError("expected a string")
    return value


def _target_in(value: Any) -> Target:
    if type(value) is not list or len(value) != 5 or type(value[4]) is not bool:
        raise RequestError("bad target")
    ns, rooms, except_rooms, except_sids, volatile = value
    return Target(
        Namespace(str_field(ns)),
        frozenset(str_list(rooms)),
        frozenset(str_list(except_rooms)),
        frozenset(str_list(except_sids)),
        volatile,
    )


def encode_request(request: Request) -> tuple[Kind, list[Any]]:
    """The kind and fields of ``request`` as msgpack-ready values."""
    if isinstance(request, ServerSideEmit):
        return Kind.SERVER_SIDE_EMIT, [request.event, list(request.args)]
    if isinstance(request, FetchSockets):
        return Kind.FETCH_SOCKETS, [_target_out(request.target)]
    if isinstance(request, AddSockets):
        return Kind.ADD_SOCKETS, [_target_out(request.target), list(request.rooms)]
    if isinstance(request, DelSockets):
        return Kind.DEL_SOCKETS, [_target_out(request.target), list(request.rooms)]
    if isinstance(request, DisconnectSockets):
        return Kind.DISCONNECT_SOCKETS, [_target_out(request.target), request.close]
    if isinstance(request, ClaimSession):
        return Kind.CLAIM_SESSION, [request.namespace, request.pid, request.offset]
    if isinstance(request, TakeSession):
        return Kind.TAKE_SESSION, [request.namespace, request.pid]
    if isinstance(request, DropClaim):
        return Kind.DROP_CLAIM, [request.namespace, request.pid, request.release]
    if isinstance(request, MirrorRooms):
        return Kind.MIRROR_ROOMS, [request.namespace, list(request.rooms), request.namespace_wide]
    if isinstance(request, ResyncKeep):
        return Kind.RESYNC_KEEP, []
    if isinstance(request, ReleaseSessions):
        return Kind.RELEASE_SESSIONS, [[list(s) for s in request.sessions]]
    return Kind.BROADCAST_WITH_ACK, [
        _target_out(request.target),
        request.event,
        list(request.args),
        request.timeout,
    ]


def decode_request(kind: int, fields: Any) -> Request:
    """The request of ``kind`` with ``fields``; RequestError when they do not fit."""
    if type(fields) is not list:
        raise RequestError("request fields are not a list")
    try:
        k = Kind(kind)
    except ValueError:
        raise RequestError(f"unknown request kind {kind}") from None
    try:
        if k is Kind.SERVER_SIDE_EMIT:
            event, args = fields
            if type(args) is not list:
                raise RequestError("bad arguments")
            return ServerSideEmit(str_field(event), tuple(args))
        if k is Kind.FETCH_SOCKETS:
            (target,) = fields
            return FetchSockets(_target_in(target))
        if k is Kind.ADD_SOCKETS or k is Kind.DEL_SOCKETS:
            target, rooms = fields
            cls = AddSockets if k is Kind.ADD_SOCKETS else DelSockets
            return cls(_target_in(target), str_list(rooms))
        if k is Kind.DISCONNECT_SOCKETS:
            target, close = fields
            if type(close) is not bool:
                raise RequestError("bad close flag")
            return DisconnectSockets(_target_in(target), close)
        if k is Kind.CLAIM_SESSION:
            ns, pid, offset = fields
            if offset is not None and type(offset) is not str:
                raise RequestError("bad offset")
            return ClaimSession(str_field(ns), str_field(pid), offset)
        if k is Kind.TAKE_SESSION:
            ns, pid = fields
            return TakeSession(str_field(ns), str_field(pid))
        if k is Kind.DROP_CLAIM:
            ns, pid, release = fields
            if type(release) is not bool:
                raise RequestError("bad release flag")
            return DropClaim(str_field(ns), str_field(pid), release)
        if k is Kind.MIRROR_ROOMS:
            ns, rooms, namespace_wide = fields
            if type(namespace_wide) is not bool:
                raise RequestError("bad namespace flag")
            return MirrorRooms(str_field(ns), str_list(rooms), namespace_wide)
        if k is Kind.RESYNC_KEEP:
            if fields:
                raise RequestError("bad RESYNC_KEEP fields")
            return ResyncKeep()
        if k is Kind.RELEASE_SESSIONS:
            (sessions,) = fields
            if type(sessions) is not list:
                raise RequestError("bad sessions")
            out = []
            for item in sessions:
                pid, sid, tag = item
                if type(tag) is not bytes:
                    raise RequestError("bad tag")
                out.append((str_field(pid), str_field(sid), tag))
            return ReleaseSessions(tuple(out))
        target, event, args, timeout = fields
        if type(args) is not list or type(timeout) not in (int, float) or timeout < 0:
            raise RequestError("bad ack broadcast")
        return BroadcastWithAck(_target_in(target), str_field(event), tuple(args), float(timeout))
    except (TypeError, ValueError) as exc:  # wrong number of fields
        if isinstance(exc, RequestError):
            raise
        raise RequestError(f"bad {k.name} fields") from None


def _info_out(info: SocketInfo) -> list[Any]:
    h = info.handshake
    hs = None if h is None else [h.headers, h.query, h.auth, h.address, h.time, h.url, h.secure]
    return [info.id, info.namespace, sorted(info.rooms), info.data, hs, info.node, info.transport]


def _info_in(value: Any) -> SocketInfo:
    # 6 fields from a node older than the transport's (a rolling upgrade), 7 from this
    # version, more from a newer one: fields it added are left for it (so that a rolling
    # upgrade past a later field does not break fetch_sockets between the versions).
    if type(value) is not list or len(value) < 6:
        raise RequestError("bad socket info")
    sid, ns, rooms, data, hs, node = value[:6]
    transport = value[6] if len(value) > 6 else None
    if transport is not None and type(transport) is not str:
        raise RequestError("bad socket info")
    handshake = None
    if hs is not None:
        if type(hs) is not list or len(hs) != 7:
            raise RequestError("bad handshake")
        headers, query, auth, address, time, url, secure = hs
        if not (
            type(headers) is dict
            and type(query) is dict
            and type(auth) is dict
            and (address is None or type(address) is str)
            and type(time) in (int, float)
            and type(secure) is bool
        ):
            raise RequestError("bad handshake")
        handshake = Handshake(headers, query, auth, address, float(time), str_field(url), secure)
    return SocketInfo(
        str_field(sid),
        str_field(ns),
        frozenset(str_list(rooms)),
        data,
        handshake,
        str_field(node),
        transport,
    )


def encode_reply(reply: Reply) -> list[Any]:
    """``reply`` as msgpack-ready values, its kind first."""
    if isinstance(reply, Answer):
        return [ReplyKind.ANSWER, reply.value]
    if isinstance(reply, Sockets):
        return [ReplyKind.SOCKETS, [_info_out(i) for i in reply.sockets]]
    if isinstance(reply, Applied):
        return [ReplyKind.APPLIED, reply.count, reply.failed]
    if isinstance(reply, Acks):
        return [ReplyKind.ACKS, list(reply.responses), reply.expected]
    if isinstance(reply, Claimed):
        return [ReplyKind.CLAIMED, reply.sid, list(reply.rooms), reply.data, reply.window]
    if isinstance(reply, Moved):
        return [ReplyKind.MOVED, reply.tag]
    if isinstance(reply, Refused):
        return [ReplyKind.REFUSED, reply.reason]
    if isinstance(reply, HandedOver):
        packets = [
            [ws, offset, None if src is None else list(src)] for ws, offset, src in reply.packets
        ]
        return [ReplyKind.HANDED_OVER, packets]
    return [ReplyKind.FAILED, reply.error]


def _packet_in(value: Any) -> tuple[bytes, str, Source]:
    if type(value) is not list or len(value) != 3 or type(value[0]) is not bytes:
        raise RequestError("bad handed-over packet")
    ws, offset, src = value
    source: Source = None
    if src is not None:
        if type(src) is not list or len(src) != 3:
            raise RequestError("bad packet source")
        origin, incarnation, msg_id = src
        if type(incarnation) is not int or type(msg_id) is not int:
            raise RequestError("bad packet source")
        source = (str_field(origin), incarnation, msg_id)
    return ws, str_field(offset), source


def decode_reply(value: Any) -> Reply:
    """The reply encoded as ``value``; RequestError when it does not fit its kind."""
    if type(value) is not list or not value or type(value[0]) is not int:
        raise RequestError("reply is not a list")
    kind, *fields = value
    try:
        if kind == ReplyKind.ANSWER:
            (answer,) = fields
            return Answer(answer)
        if kind == ReplyKind.SOCKETS:
            (infos,) = fields
            if type(infos) is not list:
                raise RequestError("bad sockets")
            return Sockets(tuple(_info_in(i) for i in infos))
        if kind == ReplyKind.APPLIED:
            count, failed = fields
            if type(count) is not int or type(failed) is not int:
                raise RequestError("bad counts")
            return Applied(count, failed)
        if kind == ReplyKind.ACKS:
            responses, expected = fields
            if type(responses) is not list or type(expected) is not int:
                raise RequestError("bad acks")
            return Acks(tuple(responses), expected)
        if kind == ReplyKind.FAILED:
            (error,) = fields
            return Failed(str_field(error))
        if kind == ReplyKind.CLAIMED:
            sid, rooms, data, window = fields
            if type(window) not in (int, float) or window < 0:
                raise RequestError("bad window")
            return Claimed(str_field(sid), str_list(rooms), data, float(window))
        if kind == ReplyKind.MOVED:
            (tag,) = fields
            if type(tag) is not bytes:
                raise RequestError("bad tag")
            return Moved(tag)
        if kind == ReplyKind.REFUSED:
            (reason,) = fields
            return Refused(str_field(reason))
        if kind == ReplyKind.HANDED_OVER:
            (packets,) = fields
            if type(packets) is not list:
                raise RequestError("bad packets")
            return HandedOver(tuple(_packet_in(p) for p in packets))
    except ValueError as exc:  # wrong number of fields
        if isinstance(exc, RequestError):
            raise
        raise RequestError("bad reply fields") from None
    raise RequestError(f"unknown reply kind {kind}")
