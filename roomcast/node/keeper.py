"""Connection state recovery that survives its node: every node's sessions kept by another.

A node that is killed (``kill -9``, a crash, a lost machine) takes its memory with it: the
sessions it kept for recovery, the packets its sockets were sent and the order it wrote them
in. So each node streams what makes its sessions recoverable to a **keeper**, continuously,
not at the moment it goes: its sockets of recovery-enabled namespaces (sid, pid, ``data``),
when they joined and left their rooms in its numbering, and every packet it kept, with its
number and target (:class:`KeepLog`, the node's :class:`~roomcast.node.recovery.Journal`).
The keeper holds a :class:`Mirror` of it: the same histories and memberships, within the
same bounds.

**Who keeps whom.** A node's keeper is the live node that follows it on the ring of node
tags (:func:`keepers`): every node computes the same from the membership replica, with no
election. When that changes, the node sends its new keeper everything (a ``SYNC`` and its
whole state, then the live stream) and tells the old one to let its copy go.

**What nobody wrote yet.** A message published to a room just before its node died may not
have reached the node, or reached it and not been written: it is in no log. So the keeper
also subscribes to the rooms of the node's sessions (a node joining a room first gets its
keeper's subscription proved, :class:`~roomcast.node.requests.MirrorRooms`, before the join
returns) and keeps, in a *shadow*, what arrives there that the node has not handled yet: the
node reports, with its log, the last message it handled per (origin, incarnation, topic)
(its *watermarks*; its own broadcasts by their message ids), and the keeper drops from the
shadow what they pass. Per (origin, topic) the bus keeps order, so what the node handled is
exactly what lies at or below them.

**When the node dies** (the replica calls it down), the keeper *adopts* its copy: the
shadow's messages become packets of the history after the node's last number, in the order
they arrived, and so does whatever arrives for its rooms until every session is taken or its
window ends. A client of the dead node comes back anywhere: that node sees the pid's node is
down and claims the session from its keeper with the requests of a handover between live
nodes (:mod:`roomcast.node.handover`); the keeper hands over exactly what the client missed
after its offset, judged as the dead node would have (the offsets are the dead node's: a
number the keeper never heard of is ``unknown offset``, so a packet the node wrote in its
last instant, whose record died with it, refuses the recovery rather than skip it).

Never partial: a copy that lost part of its stream (a gap in the keep sequence), a shadow
that overflowed, or a keeper that had not yet received a full copy refuses its sessions
(``old node gone``), as does a dead node whose keeper died too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from roomcast.cluster import wire
from roomcast.cluster.bus import Bus
from roomcast.cluster.membership import Replica
from roomcast.cluster.wire import Topic
from roomcast.errors import ClusterTimeoutError
from roomcast.ids import SID_CHARS, NodeId, NodeTag, is_sid_shaped, node_tag

from . import requests as rq
from .adapter import LocalSockets, Spawn
from .mirror import (
    CLEAR,
    DATA,
    END,
    GONE,
    JOIN,
    LEAVE,
    LOST,
    NS,
    OWN,
    PKT,
    PKTREF,
    RELEASE,
    SESS,
    SYNC,
    WM,
    Mirror,
)
from .recovery import Entry, Journal, Membership, Offsets
from .stats import NodeStats

log = logging.getLogger("roomcast.keeper")

#: A keeper's reply to a claim on a session it does not keep (the claimant asks the next).
NOT_KEPT: Final = "not kept here"

#: About how many bytes of packets one snapshot message carries.
SNAPSHOT_CHUNK: Final = 1 << 20

#: How many streams' last handled message a node remembers for its keeper's snapshots.
HANDLED_STREAMS: Final = 65_536

#: The first bytes of the topics a node's keeper holds too (rooms', namespaces').
_SHARED_TOPICS: Final = frozenset((b"R", b"A"))


def keepers(tag: NodeTag, live: Iterable[NodeTag]) -> list[NodeTag]:
    """The live nodes after ``tag`` on the ring of tags, nearest first: the first keeps it."""
    others = sorted(t for t in set(live) if t != tag)
    after = [t for t in others if t > tag]
    return after + [t for t in others if t < tag]


def _carried(data: Any) -> list[Any]:
    """``data`` as a record carries it: ``[data]``, or ``[]`` when msgpack cannot."""
    return [data] if wire.can_carry(data) else []


class KeepLog(Journal):
    """The node's side: what it tells its keeper, one message per event-loop pass."""

    def __init__(
        self,
        sockets: LocalSockets,
        offsets: Offsets,
        publish: Callable[[NodeTag, wire.Keep], None],
    ) -> None:
        self.sockets = sockets
        self.offsets = offsets
        self._publish = publish
        #: The node that keeps this one (None: no other node is live).
        self.keeper: NodeTag | None = None
        #: Topics the keeper proved it holds for this node's rooms.
        self.mirrored: set[Topic] = set()
        #: Whether this node has sockets whose sessions recovery keeps (set as soon as one
        #: connects; recomputed as the keeper is followed).
        self.recovering = False
        #: The bus message being handled, when it came on a topic the keeper holds too (a
        #: room's or a namespace's): a packet that is it is recorded by reference.
        self.by_reference: tuple[str, int, int] | None = None
        #: Told when :attr:`keeper` or :attr:`recovering` change.
        self.on_change: Callable[[], None] = lambda: None
        #: Told when the first recoverable socket connects (the keeper is chosen then).
        self.on_recovering: Callable[[], None] = lambda: None
        self._records: list[list[Any]] = []
        self._wm: dict[tuple[str, int, bytes], int] = {}
        #: The last message handled per stream, for the snapshots (the most recent streams).
        self.handled: dict[tuple[str, int, bytes], int] = {}
        self._own = 0
        self._own_sent = 0
        self._last_sent = 0
        self._seq = 0
        self._announced: set[str] = set()
        self._flush: asyncio.Handle | None = None

    # -- the journal ---------------------------------------------------------------------------

    def _add(self, record: list[Any]) -> None:
        self._records.append(record)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def _namespace(self, namespace: str) -> None:
        if namespace in self._announced:
            return
        ns = self.sockets.namespace(namespace)
        history = ns.history if ns is not None else None
        if history is not None:
            self._announced.add(namespace)
            self._add([NS, namespace, history.max_packets, history.max_bytes, history.floor])

    def connected(
        self, namespace: str, sid: str, pid: str, data: Any, membership: Membership, window: float
    ) -> None:
        if not self.recovering:
            self.recovering = True
            self.on_change()
            self.on_recovering()  # a keeper now, sent everything (this socket follows)
        if self.keeper is not None:
            self._namespace(namespace)
            self._add(_session_record(namespace, sid, pid, data, membership, window, False))

    def joined(self, namespace: str, sid: str, room: str, at: int, data: Any) -> None:
        if self.keeper is not None:
            self._add([JOIN, namespace, sid, room, at, _carried(data)])

    def left(self, namespace: str, sid: str, room: str, at: int, data: Any) -> None:
        if self.keeper is not None:
            self._add([LEAVE, namespace, sid, room, at, _carried(data)])

    def updated(self, namespace: str, sid: str, data: Any) -> None:
        if self.keeper is not None:
            self._add([DATA, namespace, sid, _carried(data)])

    def lost(self, namespace: str, sid: str, data: Any) -> None:
        if self.keeper is not None:
            self._add([LOST, namespace, sid, _carried(data)])

    def gone(self, namespace: str, sid: str) -> None:
        if self.keeper is not None:
            self._add([GONE, namespace, sid])

    def packet(self, namespace: str, entry: Entry) -> None:
        if self.keeper is not None:
            self._namespace(namespace)
            source = entry.source
            if source is not None and source == self.by_reference:
                # The bus message it came as reached the keeper too: its number is enough.
                self._add([PKTREF, namespace, entry.counter, *source])
            else:
                self._add(_packet_record(namespace, entry))

    def cleared(self, namespace: str) -> None:
        if self.keeper is not None:
            self._add([CLEAR, namespace])

    def numbered(self) -> None:
        # No record: the next message's ``last`` says it (a client whose last packet was
        # volatile presents that number).
        if self.keeper is not None and self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def watermark(self, origin: str, incarnation: int, topic: bytes, msg_id: int) -> None:
        """This node is handling the message ``msg_id`` that came on ``topic``."""
        self._wm[(origin, incarnation, topic)] = msg_id
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def own(self, msg_id: int) -> None:
        """This node handled its own broadcast ``msg_id`` (delivered here, then published)."""
        self._own = msg_id
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send what the pass recorded."""
        self._flush = None
        records, self._records = self._records, []
        if self.keeper is not None:
            records.extend([WM, *key, msg_id] for key, msg_id in self._wm.items())
        self._fold_watermarks()
        if self.keeper is None:
            return
        if self._own != self._own_sent:
            self._own_sent = self._own
            records.append([OWN, self._own])
        if records or self._last_sent != self.offsets.last:
            self._send(records)

    def _fold_watermarks(self) -> None:
        """The pass's watermarks join :attr:`handled` (the most recent last)."""
        handled = self.handled
        for key, msg_id in self._wm.items():
            handled.pop(key, None)
            handled[key] = msg_id
        self._wm.clear()
        while len(handled) > HANDLED_STREAMS:
            del handled[next(iter(handled))]

    def _send(self, records: list[list[Any]]) -> None:
        assert self.keeper is not None
        self._seq += 1
        self._last_sent = self.offsets.last
        self._publish(self.keeper, wire.Keep(self._seq, self.offsets.last, records))

    # -- the keeper changes ------------------------------------------------------------------

    def switch(self, keeper: NodeTag | None) -> None:
        """``keeper`` keeps this node from now on: it gets everything; the old one lets go."""
        if keeper == self.keeper:
            return
        if self._flush is not None:
            self._flush.cancel()
        self.flush()  # what the old keeper was owed, then its release
        if self.keeper is not None:
            self._send([[RELEASE]])
        self.keeper = keeper
        self.on_change()
        self.mirrored.clear()
        self._announced.clear()
        if keeper is not None:
            self.sync()

    def sync(self) -> None:
        """Send the keeper all of this node's state (it forgets its copy first)."""
        if self.keeper is None:
            return
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._records = []  # all in the snapshot
        self._fold_watermarks()
        self._announced.clear()
        chunk: list[list[Any]] = [[SYNC]]
        size = 0
        recoverable = [ns for ns in self.sockets.all() if ns.history is not None]
        for ns in recoverable:  # sessions first: the keeper holds their rooms meanwhile
            name, history = ns.name, ns.history
            self._announced.add(name)
            chunk.append([NS, name, history.max_packets, history.max_bytes, history.floor])
            window = ns.window
            for sid, pid, data, membership, lost in ns.recoverable():
                chunk.append(_session_record(name, sid, pid, data, membership, window, lost))
        for ns in recoverable:
            for entry in ns.history.entries():
                chunk.append(_packet_record(ns.name, entry))
                size += entry.frames.nbytes
                if size >= SNAPSHOT_CHUNK:
                    self._send(chunk)
                    chunk, size = [], 0
        chunk.extend([WM, *key, msg_id] for key, msg_id in self.handled.items())
        chunk.append([OWN, self._own])
        self._own_sent = self._own
        chunk.append([END])
        self._send(chunk)

    def stop(self) -> None:
        """The node stops: nothing more is sent."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self.keeper = None


def _session_record(
    namespace: str,
    sid: str,
    pid: str,
    data: Any,
    membership: Membership,
    window: float,
    lost: bool,
) -> list[Any]:
    return [
        SESS,
        namespace,
        sid,
        pid,
        _carried(data),
        membership.first,
        window,
        [[room, at] for room, at in membership.joined.items()],
        [list(left) for left in membership.left],
        membership.floor,
        lost,
    ]


def _packet_record(namespace: str, entry: Entry) -> list[Any]:
    return [
        PKT,
        namespace,
        entry.counter,
        list(entry.rooms),
        list(entry.except_rooms),
        list(entry.except_sids),
        entry.frames.ws,
        None if entry.source is None else list(entry.source),
    ]


class Keeping:
    """Both sides for a node's cluster adapter: its own keep stream (:attr:`log`, its
    journal) and the copies it keeps of other nodes (:attr:`mirrors`)."""

    def __init__(
        self,
        sockets: LocalSockets,
        offsets: Offsets,
        node_id: NodeId,
        incarnation: int,
        bus: Bus,
        replica: Replica,
        spawn: Spawn,
        request: Callable[[set[NodeId], rq.Request], Awaitable[dict[NodeId, rq.Reply]]],
        join_timeout: float,
        down_after: float,
        max_rooms: int,
        stats: NodeStats,
        point: Callable[[str, str, NodeTag, float, bool], None],
    ) -> None:
        self.sockets = sockets
        self.stats = stats
        self._point = point
        self.tag = offsets.tag
        self.node_id = node_id
        self.incarnation = incarnation
        self.bus = bus
        self.replica = replica
        self._spawn = spawn
        self._request = request
        self.join_timeout = join_timeout
        self.down_after = down_after
        self.max_rooms = max_rooms
        self.log = KeepLog(sockets, offsets, self._publish)
        #: Copies of other nodes' sessions, by their tag.
        self.mirrors: dict[NodeTag, Mirror] = {}
        self._was_live: set[NodeTag] = set()
        self._live: set[NodeTag] = set()
        #: Told when a tag left the live set (its node died or restarted).
        self.on_gone: Callable[[], None] = lambda: None
        self._resync_asked: dict[NodeTag, float] = {}
        self._mirroring = False  # a copy here holds topics
        #: Whether room messages concern it at all: this node has recoverable sockets and a
        #: keeper, or keeps a copy that holds topics (with recovery off everywhere, never).
        self.active = False
        self.log.on_change = self._refresh
        self.log.on_recovering = self.reconcile

    def _publish(self, tag: NodeTag, keep: wire.Keep) -> None:
        self.bus.publish(wire.node_topic(tag), keep)

    def _refresh(self) -> None:
        self.active = (self.log.keeper is not None and self.log.recovering) or self._mirroring

    def _update_mirroring(self) -> None:
        self._mirroring = any(m.held for m in self.mirrors.values())
        self._refresh()

    def reconcile(self) -> None:
        """Follow the live nodes: this node's keeper (none while it has no recoverable
        socket: nothing is sent), the kept nodes that died, and copies nobody needs."""
        live = {self.tag}
        for node in self.replica.alive():
            tag = self.replica.tag(node)
            if tag is not None:
                live.add(tag)
        if live != self._live:
            gone = self._live - live
            self._live = live
            if gone:
                self.on_gone()  # a node died, or restarted (its old tag is gone)
        recovering = any(ns.history is not None for ns in self.sockets.all())
        if recovering != self.log.recovering:
            self.log.recovering = recovering
            self._refresh()
        order = keepers(self.tag, live)
        self.log.switch(order[0] if order and self.log.recovering else None)
        now = asyncio.get_running_loop().time()
        for tag, mirror in list(self.mirrors.items()):
            if mirror.adopted:
                if tag in live:
                    self._revived(tag, mirror)
                continue
            if tag in live:
                self._was_live.add(tag)
                # A copy this node is not the keeper of (a release that was lost, a ring
                # that moved on) goes once the ring has had time to settle.
                if keepers(tag, live)[:1] != [self.tag]:
                    if mirror.not_mine_since is None:
                        mirror.not_mine_since = now
                    elif now - mirror.not_mine_since > self.down_after:
                        mirror.close()
                        self._drop(tag)
                else:
                    mirror.not_mine_since = None
            elif tag in self._was_live:
                self._was_live.discard(tag)
                if mirror.adopt(lambda tag=tag: self._drop(tag)):  # type: ignore[misc]
                    self.stats.keeper_adopted += 1
                else:
                    self.stats.keeper_lost += 1
            elif now - mirror.created > 2 * self.down_after:
                mirror.close()  # of a node never seen live here: it died at once, or is gone
                self._drop(tag)
        self._update_mirroring()

    def _revived(self, tag: NodeTag, mirror: Mirror) -> None:
        """A node called down, whose copy this node adopted, speaks again (it was stalled or
        cut off): the sessions handed over meanwhile are not its any more; its copy starts
        again from a sync."""
        log.warning(
            "%s is back after it was called down: %d of its sessions were handed over meanwhile",
            mirror.node,
            len(mirror.handed),
        )
        handed = list(mirror.handed)
        mirror.discard()
        self._drop(tag)
        node = self.replica.node_of_tag(tag)
        if node is not None and handed:
            self._tell(node, rq.ReleaseSessions(tuple(handed)))

    def _handed_over(self, pid: str, sid: str, to: NodeTag, seconds: float) -> None:
        self.stats.sessions_handed_over += 1
        self._point(pid, sid, to, seconds, False)

    def _drop(self, tag: NodeTag) -> None:
        self.mirrors.pop(tag, None)
        self._resync_asked.pop(tag, None)
        self._was_live.discard(tag)
        self._update_mirroring()

    def stop(self) -> None:
        """The node stops: its copies go with it, and its own stream."""
        self.log.stop()
        for mirror in self.mirrors.values():
            mirror.discard()
        self.mirrors.clear()

    # -- bus input ---------------------------------------------------------------------------

    def on_keep(self, header: wire.Header, keep: wire.Keep) -> None:
        """A message of another node's keep stream."""
        tag = node_tag(header.origin, header.incarnation)
        mirror = self.mirrors.get(tag)
        if mirror is None:
            mirror = self.mirrors[tag] = Mirror(
                header.origin,
                tag,
                header.incarnation,
                self.bus,
                self.join_timeout,
                self.max_rooms,
                self._handed_over,
            )
        if mirror.adopted:
            return
        exact = mirror.receive(keep)
        if mirror.broken == "released":
            mirror.close()
            self._drop(tag)
        elif exact:
            if mirror.held and not self._mirroring:
                self._mirroring = True
                self._refresh()
        else:
            self._resync(header.origin, tag)

    def _resync(self, node: NodeId, tag: NodeTag) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._resync_asked.get(tag, -1e9) < 1.0:
            return  # asked already: the sync is on its way
        self._resync_asked[tag] = now
        self.stats.keeper_resyncs += 1
        self._tell(node, rq.ResyncKeep())

    def _tell(self, node: NodeId, request: rq.Request) -> None:
        """Send ``request`` to ``node``; its reply does not matter (a timeout neither)."""

        async def tell() -> None:
            with contextlib.suppress(ClusterTimeoutError):
                await self._request({node}, request)

        self._spawn(tell())

    def received(self, topic: bytes, header: wire.Header, msg: wire.RoomMessage) -> None:
        """A room message came on ``topic``: this node's watermark for its keeper, and the
        copies whose rooms it is for."""
        log = self.log
        if log.keeper is not None:
            ns = self.sockets.namespace(msg.namespace)
            if ns is not None and ns.history is not None:
                log.watermark(header.origin, header.incarnation, topic, msg.msg_id)
                # A room's or namespace's topic: the keeper holds it for this node's sockets
                # (not a sid's: a socket handed over here has its sid's topic to itself).
                shared = topic[:1] in _SHARED_TOPICS and not any(
                    len(r) == SID_CHARS and is_sid_shaped(r) for r in msg.rooms
                )
                log.by_reference = (
                    (header.origin, header.incarnation, msg.msg_id) if shared else None
                )
        for tag, mirror in self.mirrors.items():
            mirror.offer(topic, header.origin, header.incarnation, msg)
            if mirror.wants_sync:
                mirror.wants_sync = False
                self._resync(mirror.node, tag)

    def published(self, topics: list[Topic], msg: wire.RoomMessage) -> None:
        """This node published ``msg`` on ``topics`` (and delivered it here first)."""
        if self.log.keeper is not None:
            ns = self.sockets.namespace(msg.namespace)
            if ns is not None and ns.history is not None:
                self.log.own(msg.msg_id)
        for mirror in self.mirrors.values():
            for topic in topics:
                mirror.offer(topic, str(self.node_id), self.incarnation, msg)

    # -- the node's rooms, held by its keeper ------------------------------------------------

    async def mirror(self, namespace: str, rooms: list[str], namespace_wide: bool) -> None:
        """Return once this node's keeper holds ``rooms`` of ``namespace`` (and the namespace's
        topic) proved, or at once when it holds them already or there is no keeper."""
        keeper = self.log.keeper
        if keeper is None:
            return
        mirrored = self.log.mirrored
        wanted = [r for r in rooms if wire.room_topic(namespace, r) not in mirrored]
        ns_topic = wire.namespace_topic(namespace)
        namespace_wide = namespace_wide and ns_topic not in mirrored
        if not wanted and not namespace_wide:
            return
        node = self.replica.node_of_tag(keeper)
        if node is None:
            return
        try:
            replies = await self._request(
                {node}, rq.MirrorRooms(namespace, tuple(wanted), namespace_wide)
            )
        except ClusterTimeoutError:
            log.warning("the keeper of this node did not hold rooms %s of %s", wanted, namespace)
            return
        if node in replies and self.log.keeper == keeper:
            mirrored.update(wire.room_topic(namespace, r) for r in wanted)
            if namespace_wide:
                mirrored.add(ns_topic)

    def unmirrored(self, namespace: str, rooms: Iterable[str]) -> None:
        """This node has no member of ``rooms`` any more: a new one asks its keeper again."""
        for room in rooms:
            self.log.mirrored.discard(wire.room_topic(namespace, room))

    async def hold(self, by: NodeTag, request: rq.MirrorRooms) -> None:
        """Serve the node ``by``'s :class:`~roomcast.node.requests.MirrorRooms`."""
        mirror = self.mirrors.get(by)
        if mirror is not None and not mirror.adopted:
            self._mirroring = True
            self._refresh()
            await mirror.hold(request.namespace, request.rooms, request.namespace_wide)

    # -- sessions of dead nodes --------------------------------------------------------------

    async def holder(self, tag: NodeTag) -> Mirror | None:
        """The copy of the dead node ``tag``'s sessions, once this node adopted it (waiting
        for its own replica to call the node down, as the claimant's did); None when this
        node does not keep it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.down_after
        while True:
            mirror = self.mirrors.get(tag)
            if mirror is None:
                return None
            if mirror.adopted:
                return mirror
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(0.05)
            self.reconcile()

    def totals(self) -> dict[str, int]:
        """What the copies kept here hold now: sessions, packets and their bytes, messages
        in shadows."""
        out = {"sessions": 0, "packets": 0, "bytes": 0, "shadow": 0}
        for mirror in self.mirrors.values():
            out["sessions"] += len(mirror.sessions)
            out["packets"] += sum(len(h) for h in mirror.histories.values())
            out["bytes"] += sum(h.nbytes for h in mirror.histories.values())
            out["shadow"] += len(mirror.shadow)
        return out

    def describe(self) -> dict[str, Any]:
        """For inspection."""
        keeper = self.log.keeper
        return {
            "keeper": keeper.hex() if keeper is not None else None,
            "kept": {tag.hex(): m.describe() for tag, m in self.mirrors.items()},
        }
