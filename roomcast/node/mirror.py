"""A keeper's copy of one node's sessions (:mod:`roomcast.node.keeper`): the keep stream's
records applied in order, the shadow of what the node had not handled yet, and, once the node
is dead, its sessions handed over as the node would have.

The keep stream: one :class:`~roomcast.cluster.wire.Keep` per pass of the node, numbered; each
record a list, its code first (below). A gap in the numbering, or a record that makes no
sense, leaves the copy not exact until the node sends everything again (``SYNC``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from roomcast.cluster import wire
from roomcast.cluster.bus import Bus
from roomcast.cluster.wire import Topic
from roomcast.errors import RecoveryRefusedError
from roomcast.ids import NodeId, NodeTag
from roomcast.protocol.frames import Frames

from . import recovery
from .recovery import Entry, History, Membership, Offsets, PersistedSession
from .requests import str_field, str_list

log = logging.getLogger("roomcast.keeper")

# Record codes of the keep stream (each record is a list, its code first).
SYNC: Final = 1  #: [SYNC]: what follows is all of the node's state; forget the copy
NS: Final = 2  #: [NS, ns, max_packets, max_bytes, floor]: a namespace's history bounds
SESS: Final = 3  #: [SESS, ns, sid, pid, [data] or [], first, window, joined, left, floor, lost]
JOIN: Final = 4  #: [JOIN, ns, sid, room, at, [data] or []]
LEAVE: Final = 5  #: [LEAVE, ns, sid, room, at, [data] or []]
LOST: Final = 6  #: [LOST, ns, sid, [data] or []]: its connection was lost (kept for recovery)
GONE: Final = 7  #: [GONE, ns, sid]: it will not be recovered on the node
PKT: Final = 8  #: [PKT, ns, counter, rooms, except_rooms, except_sids, ws, source or None]
CLEAR: Final = 9  #: [CLEAR, ns]: the namespace's history was emptied
WM: Final = 10  #: [WM, origin, incarnation, topic, msg_id]: handled up to msg_id
OWN: Final = 11  #: [OWN, msg_id]: the node's own broadcasts up to msg_id were handled
RELEASE: Final = 12  #: [RELEASE]: another node keeps this one now
DATA: Final = 13  #: [DATA, ns, sid, [data] or []]: its data now
END: Final = 14  #: [END]: the state a SYNC opened is all there (the copy is exact from here)
#: [PKTREF, ns, counter, origin, incarnation, msg_id]: a kept packet that is the bus message
#: (origin, incarnation, msg_id) the node got on a room or namespace topic: the keeper got it
#: too, on its own subscription, and takes its frames from there.
PKTREF: Final = 15

#: How many packets recorded by reference may wait for their bus message at once.
MAX_PENDING: Final = 65_536

#: How many shadowed messages the node was seen to handle are remembered: a copy of one that
#: comes later on another of its topics is not shadowed again.
HANDLED_KEYS: Final = 65_536


class _Unnumbered(Frames):
    """The frames of a packet recorded by reference: the bus message's, without the node's
    offset (added when the packet is handed over)."""

    __slots__ = ()


_MISSING: Final = _Unnumbered.from_ws(b"")  #: a packet whose bus message has not come yet


def _source(value: Any) -> tuple[str, int, int] | None:
    if value is None:
        return None
    origin, incarnation, msg_id = value
    if type(origin) is not str or type(incarnation) is not int or type(msg_id) is not int:
        raise ValueError("bad source")
    return (origin, incarnation, msg_id)


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError("expected an integer")
    return value


def _data(value: Any) -> list[Any]:
    if type(value) is not list or len(value) > 1:
        raise ValueError("bad data")
    return value


@dataclass
class _Session:
    """One socket of the kept node, as its log tells it."""

    namespace: str
    sid: str
    pid: str
    data: list[Any]  #: ``[data]``, or ``[]``: msgpack could not carry it
    window: float
    membership: Membership
    lost_at: float | None = None
    deadline: float = 0.0
    timer: asyncio.TimerHandle | None = None
    #: The node that claimed it, the client's offset, and the claim's expiry.
    lent: tuple[NodeTag, int | None, asyncio.TimerHandle] | None = None

    def rooms(self) -> list[str]:
        return [r for r in self.membership.joined if r != self.sid]


class _Shadow(NamedTuple):
    """A message for the kept node's rooms that it has not handled yet (as far as the keeper
    knows), and the topics it came on."""

    msg: wire.RoomMessage
    topics: set[bytes]


class Mirror:
    """A keeper's copy of one node's sessions (see the module's docstring)."""

    def __init__(
        self,
        node: NodeId,
        tag: NodeTag,
        incarnation: int,
        bus: Bus,
        join_timeout: float,
        max_rooms: int,
        handed_over: Callable[[str, str, NodeTag, float], None],
    ) -> None:
        self.node = node
        self.tag = tag
        self.incarnation = incarnation
        self.bus = bus
        self.join_timeout = join_timeout
        self.max_rooms = max_rooms
        self._handed_over = handed_over
        self.created = asyncio.get_running_loop().time()
        #: Since when the ring says another node keeps this one (None: it says this one).
        self.not_mine_since: float | None = None
        #: The node's counter as its log last said (what a client may present).
        self.offsets = Offsets(tag)
        self.seq = 0
        #: Exact: a SYNC and everything after it arrived, in order.
        self.synced = False
        self._syncing = False  # between a SYNC and its END
        #: Why the copy cannot be exact (None: it can).
        self.broken: str | None = None
        #: A new sync must be asked for (the copy broke while its node lives).
        self.wants_sync = False
        self.adopted = False
        self.histories: dict[str, History] = {}
        self.sessions: dict[str, _Session] = {}  # by sid
        self.pids: dict[str, str] = {}  # pid -> sid
        #: The sessions handed over since the node died: (pid, sid, the node they went to).
        self.handed: list[tuple[str, str, NodeTag]] = []
        # Topics: how many sessions want each, those the node asked for (until when), those
        # held on the bus (one interest each, with the proof of its subscription), and those
        # whose want changed since they were last looked at.
        self._refs: collections.Counter[Topic] = collections.Counter()
        self._requested: dict[Topic, float] = {}
        self.held: dict[Topic, asyncio.Future[None] | None] = {}
        self._dirty: set[Topic] = set()
        self.wm: dict[tuple[str, int, bytes], int] = {}
        self.own = 0
        self.shadow: dict[tuple[str, int, int], _Shadow] = {}
        self.streams: dict[tuple[str, int, bytes], collections.deque[tuple[int, Any]]] = {}
        self.shadow_bytes = 0
        self._handled: collections.OrderedDict[tuple[str, int, int], None] = (
            collections.OrderedDict()
        )
        #: Packets recorded by reference whose bus message has not come yet: (ns, number).
        self._pending: dict[tuple[str, int, int], tuple[str, int]] = {}
        self.tail = 0  #: the last number the keeper gave after adopting
        self._seen_tail: collections.OrderedDict[tuple[str, int, int], None] = (
            collections.OrderedDict()
        )
        self._on_empty: Callable[[], None] = lambda: None
        self._handed_until = 0.0
        self._forget_handed: asyncio.TimerHandle | None = None

    # -- the stream --------------------------------------------------------------------------

    def receive(self, keep: wire.Keep) -> bool:
        """Apply one message of the node's keep stream; False when the copy needs a new
        sync (a message was lost, or one did not make sense)."""
        records = keep.records
        syncing = bool(records) and type(records[0]) is list and records[0][:1] == [SYNC]
        if not syncing and (not (self.synced or self._syncing) or keep.seq != self.seq + 1):
            if self.synced:
                log.warning("keep stream of %s lost messages: its copy waits for a sync", self.node)
            self._unsync()
            self.seq = keep.seq
            return False
        self.seq = keep.seq
        try:
            for record in records:
                self._apply(record)
            self.offsets.last = max(self.offsets.last, _int(keep.last))
            self.sync_topics()
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            log.warning("bad keep record from %s: %s", self.node, exc)
            self._unsync()
            return False
        return True

    def _unsync(self) -> None:
        self.synced = False
        self._syncing = False

    def _apply(self, record: Any) -> None:
        if type(record) is not list or not record:
            raise ValueError("not a record")
        code = record[0]
        if code == PKTREF:
            _, ns, counter, origin, incarnation, msg_id = record
            ref = (str_field(origin), _int(incarnation), _int(msg_id))
            number = _int(counter)
            shadow = self.shadow.get(ref)
            if shadow is None:  # it has not come here yet: it fills the place when it does
                entry = Entry(number, (), (), (), _MISSING, ref)
                self._pending[ref] = (str_field(ns), number)
                if len(self._pending) > MAX_PENDING:
                    del self._pending[next(iter(self._pending))]
            else:
                m = shadow.msg
                frames = _Unnumbered.from_ws(m.ws)
                entry = Entry(number, m.rooms, m.except_rooms, m.except_sids, frames, ref)
            self.histories[str_field(ns)].record(entry)
        elif code == PKT:
            _, ns, counter, rooms, except_rooms, except_sids, ws, source = record
            if type(ws) is not bytes:
                raise ValueError("bad PKT")
            entry = Entry(
                _int(counter),
                str_list(rooms),
                str_list(except_rooms),
                str_list(except_sids),
                Frames.from_ws(ws),
                _source(source),
            )
            self.histories[str_field(ns)].record(entry)
        elif code == WM:
            _, origin, incarnation, topic, msg_id = record
            if type(topic) is not bytes:
                raise ValueError("bad WM")
            key = (str_field(origin), _int(incarnation), topic)
            if _int(msg_id) > self.wm.get(key, 0):
                self.wm[key] = msg_id
            self._prune(key, msg_id)
        elif code == OWN:
            self.own = max(self.own, _int(record[1]))
            mine = [k for k in self.streams if k[0] == self.node and k[1] == self.incarnation]
            for key in mine:
                self._prune(key, self.own)
        elif code in (JOIN, LEAVE):
            _, ns, sid, room, at, data = record
            session = self.sessions.get(str_field(sid))
            if session is None:
                return
            room, at = str_field(room), _int(at)
            joined = session.membership.joined
            topic = wire.room_topic(session.namespace, room)
            if code == JOIN:
                if room not in joined:
                    self._want(topic, 1)
                session.membership.join(room, at)
            else:
                if room in joined and room != sid:
                    self._want(topic, -1)
                session.membership.leave(room, at)
            session.data = _data(data)
        elif code == SESS:
            _, ns, sid, pid, data, first, window, joined, left, floor, lost = record
            ns, sid, pid = str_field(ns), str_field(sid), str_field(pid)
            if type(window) not in (int, float) or not math.isfinite(window) or window < 0:
                raise ValueError("bad window")
            if type(lost) is not bool or type(joined) is not list or type(left) is not list:
                raise ValueError("bad SESS")
            membership = Membership(sid, _int(first), self.max_rooms)
            membership.joined = {str_field(room): _int(at) for room, at in joined}
            membership.left.extend((str_field(r), _int(s), _int(u)) for r, s, u in left)
            membership.floor = _int(floor)
            session = _Session(ns, sid, pid, _data(data), float(window), membership)
            if lost:
                session.lost_at = asyncio.get_running_loop().time()
            self._forget(sid)
            self.sessions[sid] = session
            self.pids[pid] = sid
            self._count(session, 1)
        elif code in (LOST, DATA):
            _, _, sid, data = record
            session = self.sessions.get(str_field(sid))
            if session is not None:
                session.data = _data(data)
                if code == LOST:
                    session.lost_at = asyncio.get_running_loop().time()
        elif code == GONE:
            self._forget(str_field(record[2]))
        elif code == NS:
            _, ns, max_packets, max_bytes, floor = record
            history = self.histories.get(str_field(ns))
            if history is None:
                history = self.histories[ns] = History(_int(max_packets), _int(max_bytes))
            history.floor = max(history.floor, _int(floor))
        elif code == CLEAR:
            history = self.histories.get(str_field(record[1]))
            if history is not None:
                history.clear()
        elif code == SYNC:
            self._reset()
        elif code == END:
            if not self._syncing:
                raise ValueError("END without SYNC")
            self._syncing = False
            self.synced = True
        elif code == RELEASE:
            self._unsync()
            self.broken = "released"
        else:
            raise ValueError(f"unknown record {code!r}")

    def _reset(self) -> None:
        """A SYNC: the node's whole state follows (the shadow stays: the snapshot's
        watermarks prune it)."""
        self.synced = False
        self._syncing = True
        self.broken = None
        self.wants_sync = False
        self.histories.clear()
        for sid in list(self.sessions):
            self._forget(sid)
        for topic in self._requested:
            self._dirty.add(topic)
        self._requested.clear()
        self.wm.clear()
        self.own = 0

    def _forget(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        if self.pids.get(session.pid) == sid:
            del self.pids[session.pid]
        if session.timer is not None:
            session.timer.cancel()
        if session.lent is not None:
            session.lent[2].cancel()
        self._count(session, -1)

    # -- the topics it holds -----------------------------------------------------------------

    def _count(self, session: _Session, delta: int) -> None:
        """A session's topics: its namespace's, its rooms', and once the node is dead its
        sid's own (an emit to the sid of a dead node's socket goes on that topic)."""
        ns = session.namespace
        self._want(wire.namespace_topic(ns), delta)
        for room in session.rooms():
            self._want(wire.room_topic(ns, room), delta)
        if self.adopted:
            self._want(wire.room_topic(ns, session.sid), delta)

    def _want(self, topic: Topic, delta: int) -> None:
        count = self._refs[topic] + delta
        if count > 0:
            self._refs[topic] = count
        else:
            del self._refs[topic]
        self._dirty.add(topic)

    def wanted(self, topic: Topic) -> bool:
        """Whether the copy needs ``topic`` now."""
        return topic in self._refs or topic in self._requested

    def sync_topics(self) -> None:
        """Hold what is wanted, let go of what is not (not while a snapshot is arriving: a
        session of it may still come). Each interest is taken at once (a release that
        follows cannot come first)."""
        now = asyncio.get_running_loop().time()
        for topic, until in list(self._requested.items()):
            if until <= now:
                del self._requested[topic]
                self._dirty.add(topic)
        if self._syncing:
            for topic in self._dirty:
                if topic not in self.held and self.wanted(topic):
                    self.held[topic] = self.bus.hold(topic, self.join_timeout)
            return
        dirty, self._dirty = self._dirty, set()
        for topic in dirty:
            wanted = self.wanted(topic)
            if wanted and topic not in self.held:
                self.held[topic] = self.bus.hold(topic, self.join_timeout)
            elif not wanted and topic in self.held:
                del self.held[topic]
                self.bus.unsubscribe(topic)
                self._drop_shadow(topic)

    @property
    def proving(self) -> int:
        """Held topics whose subscription is not proved yet."""
        return sum(1 for f in self.held.values() if f is not None and not f.done())

    async def hold(self, namespace: str, rooms: Iterable[str], namespace_wide: bool) -> None:
        """Subscribe to ``rooms`` (and the namespace) for the node, proved: its sockets are
        joining them (its log will say so; until then, for at most twice the join timeout,
        the request holds them)."""
        topics = [wire.room_topic(namespace, r) for r in rooms]
        if namespace_wide:
            topics.append(wire.namespace_topic(namespace))
        until = asyncio.get_running_loop().time() + 2 * self.join_timeout
        for topic in topics:
            if topic not in self._refs:
                self._requested[topic] = until
                self._dirty.add(topic)
        self.sync_topics()
        waits = [self.bus.proved(t, self.held.get(t)) for t in topics if t in self.held]
        results = await asyncio.gather(*waits, return_exceptions=True)
        if any(isinstance(r, BaseException) for r in results):
            log.warning("rooms kept for %s were not proved live", self.node)

    def close(self) -> None:
        """Let everything go (what was handed over is still remembered)."""
        for topic in self.held:
            self.bus.unsubscribe(topic)
        self.held.clear()
        for sid in list(self.sessions):
            self._forget(sid)
        self._refs.clear()
        self._requested.clear()
        self._dirty.clear()
        self.shadow.clear()
        self.streams.clear()
        self.shadow_bytes = 0
        self.histories.clear()
        self._seen_tail.clear()
        self._handled.clear()
        self._pending.clear()

    def discard(self) -> None:
        """Let everything go, what was handed over too."""
        self.close()
        self.handed.clear()
        if self._forget_handed is not None:
            self._forget_handed.cancel()
            self._forget_handed = None

    # -- what the node has not handled yet ---------------------------------------------------

    def offer(self, topic: bytes, origin: str, incarnation: int, msg: wire.RoomMessage) -> None:
        """A message came on ``topic``: shadowed if the node may not have handled it, or, once
        the node is dead, kept in its history."""
        if topic not in self.held or msg.volatile:
            return
        msg_id = msg.msg_id
        key = (origin, incarnation, msg_id)
        if self._pending and key in self._pending:
            self._fill(key, msg)
        if self.adopted:
            self._keep_tail(
                key, msg.namespace, msg.rooms, msg.except_rooms, msg.except_sids, msg.ws
            )
            return
        if self.broken is not None:
            return
        stream = (origin, incarnation, topic)
        if msg_id <= self.wm.get(stream, 0):
            return  # handled already (its watermark came first)
        several = len(msg.rooms) > 1  # it comes on several topics
        if several and key in self._handled:
            return  # handled, and pruned, when it came on another topic
        if origin == self.node and incarnation == self.incarnation and msg_id <= self.own:
            return
        shadow = self.shadow.get(key)
        if shadow is None:
            shadow = self.shadow[key] = _Shadow(msg, set())
            self.shadow_bytes += len(msg.ws)
            history = self.histories.get(msg.namespace)
            if history is not None and (
                len(self.shadow) > history.max_packets or self.shadow_bytes > history.max_bytes
            ):
                log.warning("%s is too far behind its keeper: its copy waits for a sync", self.node)
                self.broken = "shadow overflow"
                self.wants_sync = True
                self.shadow.clear()
                self.streams.clear()
                self.shadow_bytes = 0
                return
        shadow.topics.add(topic)
        queue = self.streams.get(stream)
        if queue is None:
            queue = self.streams[stream] = collections.deque()
        queue.append((msg_id, key))

    def _fill(self, key: tuple[str, int, int], msg: wire.RoomMessage) -> None:
        """The bus message of a packet recorded by reference came: its place is filled."""
        ns, counter = self._pending.pop(key)
        history = self.histories.get(ns)
        if history is not None:
            targets = (msg.rooms, msg.except_rooms, msg.except_sids)
            history.fill(counter, Entry(counter, *targets, _Unnumbered.from_ws(msg.ws), key))

    def _prune(self, stream: tuple[str, int, bytes], upto: int) -> None:
        queue = self.streams.get(stream)
        if queue is None:
            return
        handled = self._handled
        while queue and queue[0][0] <= upto:
            _, key = queue.popleft()
            shadow = self.shadow.pop(key, None)
            if shadow is not None:
                self.shadow_bytes -= len(shadow.msg.ws)
                if len(shadow.msg.rooms) > 1:  # its copies on other topics may come later
                    handled[key] = None
                    if len(handled) > HANDLED_KEYS:
                        handled.popitem(last=False)
        if not queue:
            del self.streams[stream]

    def _drop_shadow(self, topic: Topic) -> None:
        """``topic`` is let go: what was shadowed only for it goes too."""
        for stream in [s for s in self.streams if s[2] == topic]:
            for _, key in self.streams.pop(stream):
                shadow = self.shadow.get(key)
                if shadow is None:
                    continue
                shadow.topics.discard(topic)
                if not shadow.topics:
                    del self.shadow[key]
                    self.shadow_bytes -= len(shadow.msg.ws)

    def _keep_tail(
        self,
        key: tuple[str, int, int],
        namespace: str,
        rooms: tuple[str, ...],
        except_rooms: tuple[str, ...],
        except_sids: tuple[str, ...],
        ws: bytes,
    ) -> None:
        history = self.histories.get(namespace)
        if history is None or key in self._seen_tail:
            return
        self._seen_tail[key] = None
        if len(self._seen_tail) > HANDLED_KEYS:
            self._seen_tail.popitem(last=False)
        self.tail += 1
        numbered = Frames.from_ws(ws).with_offset(self.offsets.text(self.tail))
        if numbered is not None:
            history.record(Entry(self.tail, rooms, except_rooms, except_sids, numbered, key))

    # -- the node died -----------------------------------------------------------------------

    def adopt(self, on_empty: Callable[[], None]) -> bool:
        """The node is down: its sessions are this keeper's to hand over, for their window;
        False when the copy was not exact (they are lost)."""
        self.adopted = True
        self._on_empty = on_empty
        if not self.synced or self.broken is not None:
            log.warning(
                "%s died; its copy here is not exact (%s): its sessions are lost",
                self.node,
                self.broken or "never complete",
            )
            self.close()
            on_empty()
            return False
        self.tail = self.offsets.last
        # What the history has (a packet the node wrote, whose watermark died with it) is
        # not the tail.
        logged = {e.source for h in self.histories.values() for e in h.entries() if e.source}
        self._seen_tail.update(dict.fromkeys(logged))
        for key, shadow in self.shadow.items():
            m = shadow.msg
            self._keep_tail(key, m.namespace, m.rooms, m.except_rooms, m.except_sids, m.ws)
        self.shadow.clear()
        self.streams.clear()
        self.shadow_bytes = 0
        loop = asyncio.get_running_loop()
        now = loop.time()
        for session in self.sessions.values():
            session.deadline = (session.lost_at or now) + session.window
            session.timer = loop.call_at(session.deadline, self._expire, session.sid)
            self._want(wire.room_topic(session.namespace, session.sid), 1)
        self.sync_topics()
        log.info("%s died: %d of its sessions kept here", self.node, len(self.sessions))
        self._check_empty()
        return True

    def _expire(self, sid: str) -> None:
        session = self.sessions.get(sid)
        if session is None or session.lent is not None:
            return
        self._release(sid)

    def _release(self, sid: str) -> None:
        self._forget(sid)
        self.sync_topics()
        self._check_empty()

    def _check_empty(self) -> None:
        """Once every session went: the copy is let go, but what was handed over is
        remembered for the rest of its windows (the node may be back: it was only taken for
        dead)."""
        if not self.adopted or self.sessions:
            return
        self.close()
        loop = asyncio.get_running_loop()
        left = self._handed_until - loop.time()
        if left <= 0 or not self.handed:
            self.handed.clear()
            self._on_empty()
        elif self._forget_handed is None:
            self._forget_handed = loop.call_later(left, self._check_handed)

    def _check_handed(self) -> None:
        self._forget_handed = None
        self._check_empty()

    # -- handing its sessions over (the holder's side of a handover) ---------------------------

    def lend_session(
        self, namespace: str, pid: str, offset: str | None, to: NodeTag, timeout: float
    ) -> PersistedSession | NodeTag:
        """As :meth:`LocalAdapter.lend_session`, for a session of the dead node."""
        sid = self.pids.get(pid)
        session = self.sessions.get(sid) if sid is not None else None
        if session is None:
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        if session.namespace != namespace:
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        if session.lent is not None:
            raise RecoveryRefusedError(recovery.SESSION_BUSY)
        loop = asyncio.get_running_loop()
        try:
            if loop.time() >= session.deadline:
                raise RecoveryRefusedError(recovery.SESSION_EXPIRED)
            if not session.data:
                raise RecoveryRefusedError(recovery.UNMOVABLE_DATA)
            after = self.offsets.parse(offset)
        except RecoveryRefusedError:
            self._release(session.sid)
            raise
        timer = loop.call_later(timeout, self.drop_claim, pid, to)
        session.lent = (to, after, timer)
        return self._persisted(session, session.deadline - loop.time())

    def _persisted(self, session: _Session, window: float) -> PersistedSession:
        return PersistedSession(
            session.namespace,
            session.sid,
            session.pid,
            frozenset(session.membership.joined),
            session.data[0] if session.data else None,
            session.membership.first,
            session.membership,
            max(0.0, window),
        )

    def lent_to(self, pid: str, by: NodeTag) -> PersistedSession | None:
        sid = self.pids.get(pid)
        session = self.sessions.get(sid) if sid is not None else None
        if session is None or session.lent is None or session.lent[0] != by:
            return None
        return self._persisted(session, session.deadline - asyncio.get_running_loop().time())

    def drop_claim(self, pid: str, by: NodeTag) -> None:
        sid = self.pids.get(pid)
        session = self.sessions.get(sid) if sid is not None else None
        if session is None or session.lent is None or session.lent[0] != by:
            return
        session.lent[2].cancel()
        session.lent = None
        if asyncio.get_running_loop().time() >= session.deadline:
            self._release(session.sid)

    def release_session(self, pid: str) -> None:
        sid = self.pids.get(pid)
        if sid is not None:
            self._release(sid)

    def hand_over(self, namespace: str, pid: str, to: NodeTag) -> list[Entry]:
        """As :meth:`LocalAdapter.hand_over`: the packets the client missed, judged as the
        dead node would have; the session is the node ``to``'s from now on."""
        sid = self.pids.get(pid)
        session = self.sessions.get(sid) if sid is not None else None
        if session is None or session.lent is None or session.lent[0] != to:
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        _, after, timer = session.lent
        timer.cancel()
        session.lent = None
        history = self.histories.get(session.namespace)
        try:
            if history is None or session.namespace != namespace:
                raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
            # What the node last numbered for anyone: whether it reached this socket is
            # judged packet by packet (a quiet socket whose packets were dropped is refused:
            # the keeper cannot tell they were not its).
            delivered = max(self.tail, self.offsets.last)
            persisted = self._persisted(session, 0.0)
            entries = [
                self._numbered(e)
                for e in recovery.missed_entries(history, persisted, delivered, after)
            ]
        except RecoveryRefusedError:
            self._release(session.sid)
            raise
        # Remembered (before the copy may empty: if the node was only taken for dead, it is
        # told), and this keeper's node points to the new one for the rest of the window, as
        # for a session of its own.
        self.handed.append((pid, session.sid, to))
        self._handed_until = max(self._handed_until, session.deadline)
        self._release(session.sid)
        left = max(0.0, session.deadline - asyncio.get_running_loop().time())
        self._handed_over(pid, session.sid, to, left)
        return entries

    def _numbered(self, entry: Entry) -> Entry:
        """``entry`` as the node wrote it (with its offset); a packet whose bus message never
        came cannot be handed over (``history evicted``: the replay would not be exact)."""
        frames = entry.frames
        if frames is _MISSING:
            raise RecoveryRefusedError(recovery.HISTORY_EVICTED)
        if isinstance(frames, _Unnumbered):
            numbered = Frames.from_ws(frames.ws).with_offset(self.offsets.text(entry.counter))
            if numbered is None:
                raise RecoveryRefusedError(recovery.HISTORY_EVICTED)
            return entry._replace(frames=numbered)
        return entry

    def describe(self) -> dict[str, Any]:
        """For inspection."""
        return {
            "node": str(self.node),
            "synced": self.synced,
            "broken": self.broken,
            "adopted": self.adopted,
            "sessions": len(self.sessions),
            "packets": sum(len(h) for h in self.histories.values()),
            "bytes": sum(h.nbytes for h in self.histories.values()),
            "shadow": len(self.shadow),
            "topics": len(self.held),
            "proving": self.proving,
        }
