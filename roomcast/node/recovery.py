"""Connection state recovery on one node: offsets, each namespace's history, membership in time.

Socket.IO >= 4.6's ``connectionStateRecovery`` (its ``SessionAwareAdapter``), made exact. A
client of a recovery-enabled namespace keeps the last string argument of the events it
handles (socket.io-client's ``_lastOffset``) and, when it reconnects, sends its private session
id and that offset in its CONNECT: ``{"pid": ..., "offset": ...}``. The node then restores the
socket (same sid, rooms, ``data``), writes every packet the client missed, each with its
offset, in order, before the CONNECT reply, and echoes the pid (the client reports
``recovered: true``), or, when it cannot do that exactly, gives the client a fresh session.

**Offsets.** :class:`Offsets` is the node's one counter. Every broadcast EVENT without an ack
that the node writes to a recovery-enabled namespace takes the next number, appended as the
packet's last argument in the node's spelling (:func:`roomcast.ids.offset_text`): the node that
*writes* a packet numbers it, so a packet from another node is re-framed once per receiving
node, never per recipient. Volatile broadcasts take a number too but are not kept: the last
string argument a client sees is then always an offset, never a volatile event's own string
(socket.io #5539), and a client whose last packet was volatile has missed nothing before it.

**History.** :class:`History` keeps, per namespace, the non-volatile packets the node wrote to
at least one of its sockets (connected or kept for recovery), with their target, within
``max_packets`` and ``max_bytes``; :attr:`History.floor` is the highest number it dropped.

**Membership in time.** :class:`Membership` records when a socket joined and left each room,
in the counter's numbers, so a replay holds exactly the packets the socket was sent: none to a
room from before it joined, those to a room it left later, none excluded by a room it was in.

**What a client missed** (:func:`missed`): every kept packet numbered after the client's offset
(after the socket's first number when the client sends none: socket.io #4888, and when its
offset is older than the socket, a leftover of an earlier session) that reached the socket. The
socket's last number (:attr:`Member.last_offset`, set on every non-volatile delivery, kept or
not) says whether it missed anything at all: a quiet session whose packets were dropped long
ago recovers (socket.io #5282). Only when a packet it may have missed was dropped is the
recovery refused (``history evicted``).
"""

from __future__ import annotations

import collections
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from roomcast.errors import RecoveryRefusedError
from roomcast.ids import NodeTag, parse_offset, tag_text
from roomcast.protocol import reasons
from roomcast.protocol.frames import Frames

#: Disconnect reasons after which a session is kept: the connection was lost, not ended on
#: purpose by either side (socket.io's ``RECOVERABLE_DISCONNECT_REASONS``, minus its
#: ``forced server close``, which roomcast's ``disconnect(close=True)`` means on purpose; plus
#: ``poll aborted``, a polling client gone with its request pending).
RECOVERABLE: Final = frozenset(
    {
        reasons.TRANSPORT_CLOSE,
        reasons.TRANSPORT_ERROR,
        reasons.PING_TIMEOUT,
        reasons.FORCED_CLOSE,
        reasons.SERVER_SHUTTING_DOWN,
        reasons.POLL_ABORTED,
    }
)

# Why a recovery was refused (the keys of ``recoveries_refused`` in /admin/stats).
UNKNOWN_SESSION: Final = "unknown session"  #: no such pid here: forged, or its window ended
OTHER_NODE: Final = "other node"  #: the pid of another node's session, with no node to ask
OLD_NODE_GONE: Final = "old node gone"  #: the node that keeps the session is down or silent
UNMOVABLE_DATA: Final = "data cannot travel"  #: ``socket.data`` msgpack cannot carry to a node
SESSION_EXPIRED: Final = "session expired"  #: presented after its window
SESSION_BUSY: Final = "session busy"  #: another CONNECT is recovering it right now
INVALID_OFFSET: Final = "invalid offset"  #: not an offset at all
#: Not raised since sessions move between nodes: an offset of another node (or incarnation)
#: means the client got nothing yet from the node that keeps its session (see
#: :meth:`Offsets.parse`). Kept as a label so that /metrics series do not change.
FOREIGN_OFFSET: Final = "foreign offset"
UNKNOWN_OFFSET: Final = "unknown offset"  #: a number this node never gave
#: A packet it may have missed is no longer kept (or, during a handover, would be past the
#: history's bounds).
HISTORY_EVICTED: Final = "history evicted"
CONNECT_REFUSED: Final = "connect refused"  #: middleware refused the recovered socket
CONNECTION_CLOSED: Final = "connection closed"  #: the connection ended during the connect

#: Every reason a recovery is refused for.
REFUSALS: Final = frozenset(
    {
        UNKNOWN_SESSION,
        OTHER_NODE,
        OLD_NODE_GONE,
        UNMOVABLE_DATA,
        SESSION_EXPIRED,
        SESSION_BUSY,
        INVALID_OFFSET,
        FOREIGN_OFFSET,
        UNKNOWN_OFFSET,
        HISTORY_EVICTED,
        CONNECT_REFUSED,
        CONNECTION_CLOSED,
    }
)


class Offsets:
    """The node's one offset counter (every namespace's history is numbered from it)."""

    __slots__ = ("last", "prefix", "tag")

    def __init__(self, tag: NodeTag) -> None:
        self.tag = tag
        self.prefix = tag_text(tag)
        #: The last number given (0: none yet).
        self.last = 0

    def next(self) -> int:
        """A fresh number."""
        self.last += 1
        return self.last

    def text(self, counter: int) -> str:
        """The offset of ``counter``, as the client sees it."""
        return f"{self.prefix}{counter:x}"

    def parse(self, offset: Any) -> int | None:
        """The number of an offset a client presents (None: it presents none, or one of
        another node). Raises :class:`RecoveryRefusedError` for what is not an offset, or a
        number of this node's it never gave.

        An offset of another node (or incarnation) is the last packet the client got from a
        node that numbered its session before this one, or a leftover of an earlier session
        (socket.io-client keeps it until its first event): either way the client got nothing
        this node numbered for the session yet, which is what no offset means. Every packet
        a session was sent on the node that keeps it is numbered by that node, the packets
        another node handed over with it included, so this is exact.
        """
        if offset is None:
            return None
        parsed = parse_offset(offset) if isinstance(offset, str) else None
        if parsed is None:
            raise RecoveryRefusedError(INVALID_OFFSET)
        tag, counter = parsed
        if tag != self.tag:
            return None
        if counter > self.last:
            raise RecoveryRefusedError(UNKNOWN_OFFSET)
        return counter


class Entry(NamedTuple):
    """One kept packet: its number, its target, its frames (offset included)."""

    counter: int
    rooms: Collection[str]
    except_rooms: Collection[str]
    except_sids: Collection[str]
    frames: Frames
    #: The bus message it came in (origin, incarnation, message id), None when this node
    #: published it: what a node handing history over will deduplicate by.
    source: tuple[str, int, int] | None = None


class History:
    """The packets one namespace's sockets on this node were sent, oldest first, bounded."""

    __slots__ = ("_entries", "_sizes", "floor", "max_bytes", "max_packets", "nbytes")

    def __init__(self, max_packets: int, max_bytes: int) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self._entries: collections.deque[Entry] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        self.nbytes = 0
        #: Every packet numbered above this is kept (0: none was ever dropped).
        self.floor = 0

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, entry: Entry) -> None:
        """Keep ``entry`` (numbered above every kept one), dropping the oldest past a bound."""
        size = entry.frames.nbytes
        self._entries.append(entry)
        self._sizes.append(size)
        self.nbytes += size
        while len(self._entries) > self.max_packets or self.nbytes > self.max_bytes:
            self.floor = self._entries.popleft().counter
            self.nbytes -= self._sizes.popleft()

    def fill(self, counter: int, entry: Entry) -> None:
        """Put ``entry`` in the place of the kept packet numbered ``counter`` (if it is still
        kept: a copy's packet whose content came after its number)."""
        entries = self._entries
        for i in range(len(entries) - 1, -1, -1):
            if entries[i].counter == counter:
                entries[i] = entry
                return
            if entries[i].counter < counter:
                return

    def clear(self) -> None:
        """Drop everything (no socket of the namespace is left to need it)."""
        if self._entries:
            self.floor = self._entries[-1].counter
        self._entries.clear()
        self._sizes.clear()
        self.nbytes = 0

    def entries(self) -> Iterator[Entry]:
        """The kept packets, oldest first."""
        return iter(self._entries)

    def after(self, counter: int) -> Iterator[Entry]:
        """The kept packets numbered above ``counter``, in order."""
        newer: list[Entry] = []
        for entry in reversed(self._entries):
            if entry.counter <= counter:
                break
            newer.append(entry)
        return reversed(newer)


class Membership:
    """When one socket joined and left its rooms, in the numbers of the node's offsets.

    A socket is in a room for the packets numbered above its join and up to its leave. The
    log of rooms left holds at most ``keep`` of them; older ones are forgotten and
    :attr:`floor` rises past them (a packet numbered at or below it cannot be judged).
    """

    __slots__ = ("first", "floor", "joined", "keep", "left")

    def __init__(self, sid: str, first: int, keep: int) -> None:
        #: The counter when the socket connected (it was sent nothing numbered up to it).
        self.first = first
        self.keep = keep
        self.joined: dict[str, int] = {sid: first}
        self.left: collections.deque[tuple[str, int, int]] = collections.deque()
        self.floor = 0

    def join(self, room: str, at: int) -> None:
        """The socket joined ``room`` when the counter was at ``at``."""
        self.joined.setdefault(room, at)

    def leave(self, room: str, at: int) -> None:
        """The socket left ``room`` when the counter was at ``at``."""
        since = self.joined.pop(room, None)
        if since is None:
            return
        if since < at:  # in it for no packet at all: nothing to remember
            self.left.append((room, since, at))
            if len(self.left) > self.keep:
                self.floor = max(self.floor, self.left.popleft()[2])

    def was_in(self, room: str, counter: int) -> bool:
        """Whether the socket was in ``room`` for the packet numbered ``counter``."""
        since = self.joined.get(room)
        if since is not None and since < counter:
            return True
        return any(r == room and since < counter <= until for r, since, until in self.left)

    def was_sent(self, entry: Entry, sid: str) -> bool:
        """Whether the broadcast ``entry`` reached this socket (the registry's rule, applied
        to the rooms the socket was in when the packet was numbered)."""
        c = entry.counter
        if sid in entry.except_sids:
            return False
        if entry.rooms:
            if not any(self.was_in(room, c) for room in entry.rooms):
                return False
        elif not self.was_in(sid, c):  # namespace-wide: sent to it if it was connected
            return False
        return not any(self.was_in(room, c) for room in entry.except_rooms)


class RecoverableSocket(NamedTuple):
    """A socket recovery knows on its node: connected, or kept after its connection was lost
    (``lost``)."""

    sid: str
    pid: str
    data: Any
    membership: Membership
    lost: bool


class Journal:
    """Told every change of what makes this node's sessions recoverable: sockets of
    recovery-enabled namespaces, their rooms in time, the packets kept (a cluster node tells
    its keeper, :mod:`roomcast.node.keeper`; a standalone node tells nobody: these do
    nothing)."""

    __slots__ = ()

    def connected(
        self, namespace: str, sid: str, pid: str, data: Any, membership: Membership, window: float
    ) -> None:
        """A socket connected here (new, or its session handed over to this node)."""

    def joined(self, namespace: str, sid: str, room: str, at: int, data: Any) -> None:
        """It joined ``room`` when the counter was at ``at`` (``data``: its data now)."""

    def left(self, namespace: str, sid: str, room: str, at: int, data: Any) -> None:
        """It left ``room`` when the counter was at ``at``."""

    def updated(self, namespace: str, sid: str, data: Any) -> None:
        """Its ``data`` now (its ``connect`` handler ran)."""

    def lost(self, namespace: str, sid: str, data: Any) -> None:
        """Its connection was lost: it is kept for recovery, with ``data``."""

    def gone(self, namespace: str, sid: str) -> None:
        """It will not be recovered here (disconnected on purpose, released, handed over)."""

    def packet(self, namespace: str, entry: Entry) -> None:
        """``entry`` was kept in the namespace's history."""

    def numbered(self) -> None:
        """The node gave a number to a packet it did not keep (a volatile one)."""

    def cleared(self, namespace: str) -> None:
        """The namespace's history was emptied (no socket left to need it)."""


@dataclass(frozen=True, slots=True)
class PersistedSession:
    """A socket that lost its connection, kept for recovery (socket.io's ``SessionToPersist``:
    sid, pid, rooms, data), with what makes its recovery exact.

    While it is kept, the socket stays a member of its rooms on its node (a *ghost*: it takes
    no packet, but its rooms' traffic keeps reaching the node and is kept in history), so the
    node's room interest (in a cluster, its bus subscriptions) does not change.
    """

    namespace: str
    sid: str
    pid: str
    rooms: frozenset[str]
    data: Any
    #: The counter when the socket connected: it missed nothing numbered up to it.
    first: int
    #: When the socket joined and left its rooms (no longer changes: a ghost does not move).
    membership: Membership
    #: Seconds the session is kept (its namespace's ``max_disconnection_ms``).
    window: float


def missed_entries(
    history: History, session: PersistedSession, delivered: int, after: int | None
) -> list[Entry]:
    """The kept packets of ``history`` a client of ``session`` missed, in order.

    ``delivered`` is the number of the last packet sent to the socket (kept or not); ``after``
    the number of the client's offset (None: it has none). Raises
    :class:`RecoveryRefusedError` (``history evicted``) when a packet it may have missed is no
    longer known.
    """
    start = session.first if after is None or after < session.first else after
    if delivered <= start:
        return []  # nothing was sent to it since: whatever was dropped, it missed nothing
    if start < history.floor or start < session.membership.floor:
        raise RecoveryRefusedError(HISTORY_EVICTED)
    membership, sid = session.membership, session.sid
    return [e for e in history.after(start) if membership.was_sent(e, sid)]


def missed(
    history: History, session: PersistedSession, delivered: int, after: int | None
) -> list[Frames]:
    """The packets of ``history`` a client of ``session`` missed, in order, with their offsets
    (:func:`missed_entries`' frames)."""
    return [e.frames for e in missed_entries(history, session, delivered, after)]
