"""What a broadcast targets, and which bus topics carry it there.

Shared by everything that publishes room traffic: the node's cluster adapter and the
:class:`~roomcast.emitter.Emitter`. A :class:`Target` is the immutable description of a
broadcast (namespace, rooms, exceptions, flags); :class:`TargetChain` is the builder API on it
(``to``/``in_``/``except_``/``volatile``) that the node's ``BroadcastOperator`` and the emitter's
operator both expose; :func:`topics` is the one rule that maps a target to the topics it is
published on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Iterable
from typing import NamedTuple, Self

from roomcast.cluster import wire
from roomcast.cluster.wire import Topic
from roomcast.ids import Namespace, NodeTag, room_names, tag_of_sid


class Target(NamedTuple):
    """Which sockets a broadcast (or a cluster-wide operation) reaches.

    Every socket of ``namespace`` in any of ``rooms`` (every socket of it when ``rooms`` is
    empty), minus the members of ``except_rooms`` and the sockets named in ``except_sids``. A
    socket's sid is a room holding just that socket. ``volatile``: a recipient that cannot take
    the message right now does not get it. ``local``: this node's sockets only.

    A NamedTuple rather than a frozen dataclass: one is made per broadcast, and a tuple is
    several times cheaper to build.
    """

    namespace: Namespace
    rooms: frozenset[str] = frozenset()
    except_rooms: frozenset[str] = frozenset()
    except_sids: frozenset[str] = frozenset()
    volatile: bool = False
    local: bool = False


class TargetChain(ABC):
    """The chainable builder over a :class:`Target`: each call returns a new object, so a chain
    can be kept and reused. Subclasses say how to rebuild themselves around a new target."""

    __slots__ = ()

    #: What this chain targets so far (a subclass's field).
    target: Target

    @abstractmethod
    def retarget(self, target: Target) -> Self:
        """The same object, around ``target``."""

    def to(self, *rooms: str | Iterable[str]) -> Self:
        """Also target ``rooms`` (a socket in several targeted rooms gets one copy)."""
        t = self.target
        return self.retarget(t._replace(rooms=t.rooms | frozenset(room_names(rooms))))

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> Self:
        """Exclude the members of ``rooms``, cluster-wide."""
        t = self.target
        return self.retarget(t._replace(except_rooms=t.except_rooms | frozenset(room_names(rooms))))

    @property
    def volatile(self) -> Self:
        """Drop the message for any recipient that cannot take it right now."""
        return self.retarget(self.target._replace(volatile=True))


#: Rooms a broadcast may name and still go once per room topic (``cluster.max_room_topics``).
MAX_ROOM_TOPICS = 8


def topics(
    target: Target,
    *,
    local_sids: Container[str] = (),
    sid_node: Callable[[NodeTag], bool | None] = lambda tag: None,
    max_room_topics: int = MAX_ROOM_TOPICS,
) -> list[Topic]:
    """The topics that carry a broadcast to ``target``'s sockets on other nodes.

    A namespace-wide broadcast goes on the namespace's topic; a room on its room topic. A
    broadcast to more than ``max_room_topics`` rooms goes once on the namespace's topic too
    (every node with a socket in the namespace holds that subscription, and picks the
    recipients among its own sockets): the bus then carries its data and room list once per
    receiving node, not once per room, at the price of reaching nodes with no member. A room
    named like a sid goes to the issuing node's direct topic when ``sid_node(tag)`` says that
    node is live (True), on its room topic alone when it says the tag is no node's (False), and
    on both when it cannot tell (None: an emitter knows no nodes; no node has members in a room
    named like a live node's sid, since nodes refuse to join such names). Sids in
    ``local_sids`` are delivered by the publisher itself and need no topic.
    """
    if not target.rooms or len(target.rooms) > max_room_topics:
        return [wire.namespace_topic(target.namespace)]
    out: list[Topic] = []
    tags: set[NodeTag] = set()
    for room in target.rooms:
        if room in local_sids:
            continue
        tag = tag_of_sid(room)
        live = None if tag is None else sid_node(tag)
        if tag is not None and live is not False:
            if tag not in tags:
                tags.add(tag)
                out.append(wire.node_topic(tag))
            if live:
                continue
        out.append(wire.room_topic(target.namespace, room))
    return out


def room_message(msg_id: int, target: Target, ws: bytes) -> wire.RoomMessage:
    """The envelope body of a broadcast to ``target``, carrying its pre-built WebSocket
    frames."""
    return wire.RoomMessage(
        msg_id,
        target.namespace,
        tuple(target.rooms),
        tuple(target.except_rooms),
        tuple(target.except_sids),
        target.volatile,
        ws,
    )
