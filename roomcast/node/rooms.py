"""The local room registry of one namespace on one node.

Rooms exist only while they have members: the first join creates a room, the last leave deletes
it. The room named by a socket's sid is implicit (every socket is in it) and is not stored, so it
never costs a registry entry, nor, in a cluster, a subscription.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Generic, Protocol, TypeVar

from roomcast.ids import Room


class HasSid(Protocol):
    """A room member: anything with a socket id."""

    @property
    def sid(self) -> str: ...


M = TypeVar("M", bound=HasSid)  #: the member type (the node's Socket)


class RoomRegistry(Generic[M]):
    """Room → member sockets, for one namespace on this node."""

    __slots__ = ("_rooms", "_sockets")

    def __init__(self, sockets: dict[str, M]) -> None:
        self._rooms: dict[Room, set[M]] = {}
        self._sockets = sockets  # the namespace's sid → socket map (the implicit sid rooms)

    def add(self, socket: M, room: Room) -> bool:
        """Put ``socket`` in ``room``; returns True when this created the room."""
        members = self._rooms.get(room)
        if members is None:
            self._rooms[room] = {socket}
            return True
        members.add(socket)
        return False

    def discard(self, socket: M, room: Room) -> bool:
        """Take ``socket`` out of ``room``; returns True when this deleted the room."""
        members = self._rooms.get(room)
        if members is None or socket not in members:
            return False
        members.discard(socket)
        if not members:
            del self._rooms[room]
            return True
        return False

    def replace(self, old: M, new: M, rooms: Collection[str]) -> None:
        """Put ``new`` in ``old``'s place in ``rooms`` (the same sid: a recovered socket and
        its ghost); no room is created or deleted."""
        for room in rooms:
            members = self._rooms.get(Room(room))
            if members is not None and old in members:
                members.discard(old)
                members.add(new)

    def members(self, room: str) -> Collection[M]:
        """The local members of ``room`` (a sid names its own socket, and only that)."""
        socket = self._sockets.get(room)
        if socket is not None:
            return (socket,)
        return self._rooms.get(Room(room), ())

    def size(self, room: str) -> int:
        """How many local sockets are in ``room``."""
        return len(self.members(room))

    def rooms(self) -> dict[Room, int]:
        """Every (non-sid) room with its local member count."""
        return {room: len(members) for room, members in self._rooms.items()}

    def __contains__(self, room: object) -> bool:
        return room in self._rooms

    def recipients(
        self,
        rooms: Collection[str],
        except_rooms: Collection[str] = (),
        except_sids: Collection[str] = (),
    ) -> Collection[M]:
        """Local sockets in any of ``rooms`` (all when empty), minus those in ``except_rooms``
        or named in ``except_sids``; each socket once."""
        if not rooms:
            selected: Collection[M] = self._sockets.values()
        elif len(rooms) == 1:
            (room,) = rooms
            selected = self.members(room)
        else:
            union: set[M] = set()
            for room in rooms:
                union.update(self.members(room))
            selected = union
        if not except_rooms and not except_sids:
            return list(selected)
        excluded: set[M] = set()
        for room in except_rooms:
            excluded.update(self.members(room))
        return [s for s in selected if s not in excluded and s.sid not in except_sids]
