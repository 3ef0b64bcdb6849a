"""The adapter of a standalone node: every socket is one of this node's.

:class:`LocalAdapter` keeps the :class:`~roomcast.node.adapter.Adapter` contract with no other
node to reach. The cluster adapter extends it: each operation's local half (this node's
recipients) is the function here, and the same function serves other nodes' requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from roomcast.cluster.routing import Target
from roomcast.errors import AckTimeoutError, RecoveryRefusedError, RoomcastError
from roomcast.ids import Namespace, NodeId, NodeTag, tag_of_pid, tag_of_sid
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

from . import recovery
from .adapter import (
    Adapter,
    Collector,
    LocalSockets,
    Member,
    RoomTable,
    SessionClaim,
    SocketInfo,
)
from .recovery import Entry, History, Journal, Offsets, PersistedSession
from .stats import NodeStats

log = logging.getLogger("roomcast.node")


def write_each(members: Iterable[Member], frames: Frames, volatile: bool) -> int:
    """Write one pre-built packet to each member; returns how many took it."""
    n = 0
    for member in members:
        if member.write(frames, volatile):
            n += 1
    return n


async def wait_acks(
    future: asyncio.Future[list[Any]], collector: Collector, timeout: float | None
) -> list[Any]:
    """Wait for a collector to fill; on timeout raise with the answers received so far."""
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        raise AckTimeoutError(
            f"{collector.expected - len(collector.responses)} of {collector.expected} "
            "recipients did not acknowledge in time",
            list(collector.responses),
        ) from None
    finally:
        collector.release()


@dataclass
class _Kept:
    """A persisted session on this node: until when, its expiry, whether it is claimed (and,
    when another node claimed it, which one, the client's offset, and the claim's expiry)."""

    session: PersistedSession
    deadline: float
    timer: asyncio.TimerHandle
    claimed: bool = False
    lent: tuple[NodeTag, int | None, asyncio.TimerHandle] | None = None


@dataclass
class _Moved:
    """A session this node handed over: the node it went to, until its window ends."""

    to: NodeTag
    sid: str
    timer: asyncio.TimerHandle


class _LocalClaim(SessionClaim):
    """A claim on a session this node keeps."""

    def __init__(self, adapter: LocalAdapter, kept: _Kept, after: int | None) -> None:
        self.adapter = adapter
        self.kept = kept
        self.session = kept.session
        self.after = after

    async def complete(self) -> list[Frames]:
        adapter, session = self.adapter, self.session
        ns = adapter.sockets.namespace(session.namespace)
        ghost = ns.ghost(session.sid) if ns is not None else None
        history = ns.history if ns is not None else None
        try:
            if ghost is None or history is None:  # recovery was turned off meanwhile
                raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
            packets = recovery.missed(history, session, ghost.last_offset, self.after)
        except RecoveryRefusedError:
            adapter.release_session(session.pid)
            raise
        adapter.forget_session(session.pid)
        self.last_offset = ghost.last_offset
        return packets

    def cancel(self) -> None:
        kept = self.kept
        kept.claimed = False
        if asyncio.get_running_loop().time() >= kept.deadline:
            self.adapter.release_session(self.session.pid)


class LocalAdapter(Adapter):
    """A standalone node's adapter (and the local half of the cluster's)."""

    def __init__(
        self, node_id: NodeId, tag: NodeTag, sockets: LocalSockets, stats: NodeStats
    ) -> None:
        super().__init__()
        self.node_id = node_id
        self.tag = tag
        self.sockets = sockets
        self.stats = stats
        self.offsets = Offsets(tag)
        #: Told what makes this node's sessions recoverable (a cluster node's keeper hears it).
        self.journal = Journal()
        self._kept: dict[str, _Kept] = {}  # persisted sessions by pid
        self._none_kept = asyncio.Event()
        self._none_kept.set()
        self._moved: dict[str, _Moved] = {}  # sessions handed over, by pid
        #: The sids of sessions this node handed over: the node each went to.
        self.moved_sids: dict[str, NodeTag] = {}

    async def start(self, address: str) -> None:
        pass  # nothing to reach

    async def stop(self) -> None:
        self.stop_recovery()

    def stop_recovery(self) -> None:
        """Forget every persisted session (the node is stopping)."""
        for kept in self._kept.values():
            kept.timer.cancel()
            if kept.lent is not None:
                kept.lent[2].cancel()
        self.stats.sessions_kept -= len(self._kept)
        self._kept.clear()
        self._none_kept.set()
        for moved in self._moved.values():
            moved.timer.cancel()
        self._moved.clear()
        self.moved_sids.clear()

    # -- membership: nothing to tell anyone ---------------------------------------------------

    async def rooms_changed(
        self, namespace: Namespace, counts: dict[str, int], joined: list[str], left: list[str]
    ) -> None:
        pass

    async def namespace_entered(self, namespace: Namespace) -> None:
        pass

    def namespace_exited(self, namespace: Namespace) -> None:
        pass

    def socket_gone(self, namespace: Namespace, sid: str) -> None:
        pass

    def rooms_adopted(self, namespace: Namespace, counts: dict[str, int]) -> None:
        pass

    # -- the local half of each operation -----------------------------------------------------

    def recipients(self, target: Target) -> Iterable[Member]:
        """This node's sockets that ``target`` reaches."""
        ns = self.sockets.namespace(target.namespace)
        if ns is None:
            return ()
        return ns.recipients(target.rooms, target.except_rooms, target.except_sids)

    def deliver(
        self, target: Target, frames: Frames, source: tuple[str, int, int] | None = None
    ) -> None:
        """Write a packet to this node's recipients (a broadcast started here; with an offset
        where recovery is on; ``source``: the bus message it also goes out as)."""
        delivered = 0
        ns = self.sockets.namespace(target.namespace)
        if ns is not None:
            recipients = ns.recipients(target.rooms, target.except_rooms, target.except_sids)
            history = ns.history
            if history is None:
                delivered = write_each(recipients, frames, target.volatile)
            elif recipients:
                delivered = self.write_numbered(
                    target.namespace,
                    history,
                    recipients,
                    frames,
                    target.volatile,
                    (target.rooms, target.except_rooms, target.except_sids),
                    source,
                )
        self.count_broadcast(delivered, from_bus=False)

    def write_numbered(
        self,
        namespace: str,
        history: History,
        recipients: Collection[Member],
        frames: Frames,
        volatile: bool,
        to: tuple[Collection[str], Collection[str], Collection[str]],
        source: tuple[str, int, int] | None = None,
    ) -> int:
        """Write a broadcast to recipients in a recovery-enabled namespace with this node's next
        offset, framed once; keep it in ``namespace``'s ``history`` unless it is volatile (and
        tell the journal). ``to`` is its target
        (rooms, except rooms, except sids), ``source`` the bus message it came in. Returns how
        many recipients took it."""
        counter = self.offsets.next()
        numbered = frames.with_offset(self.offsets.text(counter))
        if numbered is None:  # not an EVENT without ack: nothing to number
            return write_each(recipients, frames, volatile)
        if volatile:
            self.journal.numbered()
        else:
            entry = Entry(counter, *to, numbered, source)
            history.record(entry)
            self.journal.packet(namespace, entry)
            for member in recipients:
                member.last_offset = counter
        return write_each(recipients, numbered, volatile)

    def emit_with_ack(
        self, target: Target, event: str, args: tuple[Any, ...], from_bus: bool = False
    ) -> tuple[asyncio.Future[list[Any]], Collector]:
        """Write an event with one ack id to this node's recipients; returns the collector of
        their answers (``from_bus``: for another node's broadcast, as counted)."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        ns = self.sockets.namespace(target.namespace)
        if ns is None:
            collector = Collector(future)
        else:
            ack_id = ns.next_ack_id()
            collector = Collector(future, ack_id)
            frames = Frames(sio.encode_event(target.namespace, event, args, ack_id))
            for member in ns.recipients(target.rooms, target.except_rooms, target.except_sids):
                if member.write(frames, target.volatile):
                    member.expect_ack(ack_id, collector)
                    collector.recipients.append(member)
                    collector.expected += 1
        self.count_broadcast(collector.expected, from_bus)
        collector.check()
        return future, collector

    def count_broadcast(self, delivered: int, from_bus: bool) -> None:
        """Count a broadcast and its ``delivered`` local deliveries (``from_bus``: another
        node's, or an emitter's)."""
        stats = self.stats
        stats.messages_out += delivered
        if from_bus:
            stats.bus_deliveries += delivered
            stats.bus_broadcasts += 1
            fanout = stats.bus_fanout
        else:
            stats.broadcasts += 1
            fanout = stats.fanout
        if fanout is not None:
            fanout.observe(delivered)

    def snapshot(self, target: Target) -> list[SocketInfo]:
        """This node's recipients, as snapshots (ghosts are not sockets any more)."""
        return [m.info() for m in self.recipients(target) if m.connected]

    async def apply(
        self, target: Target, action: str, rooms: list[str], close: bool
    ) -> tuple[int, list[Exception]]:
        """Make this node's recipients ``join`` or ``leave`` rooms, or ``disconnect``; returns
        how many were asked and the refusals (a limit, a refused name: that socket only, the
        others still act)."""
        members = [m for m in self.recipients(target) if m.connected]
        refused: list[Exception] = []
        for member in members:
            try:
                if action == "join":
                    await member.join(rooms)
                elif action == "leave":
                    await member.leave(rooms)
                else:
                    member.disconnect(close)
            except (RoomcastError, ValueError) as exc:
                refused.append(exc)
        return len(members), refused

    async def apply_here(self, target: Target, action: str, rooms: list[str], close: bool) -> None:
        """:meth:`apply` for the caller's own node: the first refusal is raised to it."""
        _, refused = await self.apply(target, action, rooms, close)
        if refused:
            raise refused[0]

    # -- the contract -------------------------------------------------------------------------

    def broadcast(self, target: Target, frames: Frames) -> None:
        self.deliver(target, frames)

    async def broadcast_with_ack(
        self, target: Target, event: str, args: tuple[Any, ...], timeout: float | None
    ) -> list[Any]:
        future, collector = self.emit_with_ack(target, event, args)
        return await wait_acks(future, collector, timeout)

    async def fetch_sockets(self, target: Target) -> list[SocketInfo]:
        return self.snapshot(target)

    async def add_sockets(self, target: Target, rooms: list[str]) -> None:
        await self.apply_here(target, "join", rooms, False)

    async def del_sockets(self, target: Target, rooms: list[str]) -> None:
        await self.apply_here(target, "leave", rooms, False)

    async def disconnect_sockets(self, target: Target, close: bool) -> None:
        await self.apply_here(target, "disconnect", [], close)

    async def server_side_emit(
        self, event: str, args: tuple[Any, ...], timeout: float | None = None
    ) -> list[Any]:
        return []  # no other node

    # -- connection state recovery: sessions this node keeps ---------------------------------

    def persist_session(self, session: PersistedSession) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(session.window, self._expire, session.pid)
        self.forget_pointer(session.pid)  # it came back here since this node handed it over
        self._kept[session.pid] = _Kept(session, loop.time() + session.window, timer)
        self._none_kept.clear()
        self.stats.sessions_kept += 1

    async def restore_session(self, namespace: str, pid: Any, offset: Any) -> SessionClaim:
        kept = self._kept_here(namespace, pid)
        if kept is None:
            if isinstance(pid, str) and tag_of_pid(pid) is not None:
                return await self.restore_elsewhere(namespace, pid, offset)
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        after = self._claim_kept(kept, namespace, offset)
        return _LocalClaim(self, kept, after)

    async def restore_elsewhere(self, namespace: str, pid: str, offset: Any) -> SessionClaim:
        """Claim ``pid``, a session this node does not keep: another node's (its tag names
        it), or one this node handed over, or forgot: a standalone node has none to ask."""
        if tag_of_pid(pid) == self.tag and pid not in self._moved:
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        raise RecoveryRefusedError(recovery.OTHER_NODE)

    def _kept_here(self, namespace: str, pid: Any) -> _Kept | None:
        """The session ``pid`` if this node keeps it (a socket of ``namespace`` still connected
        with that pid is first taken over: its client is back on another connection)."""
        if not isinstance(pid, str):
            return None
        kept = self._kept.get(pid)
        if kept is None:
            ns = self.sockets.namespace(namespace)
            if ns is not None and ns.supersede(pid):
                return self._kept.get(pid)
        return kept

    def _claim_kept(self, kept: _Kept, namespace: str, offset: Any) -> int | None:
        """Claim a kept session for a client with ``offset``; returns the offset's number.
        Raises :class:`RecoveryRefusedError` (a session that can never be recovered now is
        released: its client gets a fresh one)."""
        if kept.session.namespace != namespace:
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        if kept.claimed:
            raise RecoveryRefusedError(recovery.SESSION_BUSY)
        try:
            if asyncio.get_running_loop().time() >= kept.deadline:
                raise RecoveryRefusedError(recovery.SESSION_EXPIRED)
            after = self.offsets.parse(offset)
        except RecoveryRefusedError:
            self.release_session(kept.session.pid)
            raise
        kept.claimed = True
        return after

    # -- handing a session over to another node (served for the cluster's requests) ----------

    def lend_session(
        self, namespace: str, pid: str, offset: str | None, to: NodeTag, timeout: float
    ) -> PersistedSession | NodeTag:
        """Claim ``pid`` for a client back on the node ``to``: returns the session, or the tag
        of the node it was handed over to. The claim ends after ``timeout`` seconds unless
        :meth:`hand_over` took it (the node ``to`` may die meanwhile). Raises
        :class:`RecoveryRefusedError` as :meth:`restore_session` does."""
        kept = self._kept_here(namespace, pid)
        if kept is None:
            # A pointer only when the session is not here: it may have come back since.
            moved = self._moved.get(pid)
            if moved is not None:
                return moved.to
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        after = self._claim_kept(kept, namespace, offset)
        timer = asyncio.get_running_loop().call_later(timeout, self.drop_claim, pid, to)
        kept.lent = (to, after, timer)
        return kept.session

    def let_go(self, pid: str, sid: str, to: NodeTag) -> None:
        """The session ``pid`` (socket ``sid``) went to the node ``to`` while this node was
        taken for dead: a socket still connected with it is closed, it is not kept, and this
        node points to ``to`` for what was left of its window."""
        for ns in self.sockets.all():
            ns.supersede(pid)
        kept = self._kept.get(pid)
        left = 0.0
        if kept is not None:
            left = max(0.0, kept.deadline - asyncio.get_running_loop().time())
            self.release_session(pid)
        if left > 0:
            self.point(pid, sid, to, left)

    def keeps(self, pid: str) -> bool:
        """Whether this node keeps the session ``pid``, or handed it over (a pointer)."""
        return pid in self._kept or pid in self._moved

    def moved_to(self, pid: str) -> NodeTag | None:
        """The node this node handed the session ``pid`` over to (None: it did not)."""
        moved = self._moved.get(pid)
        return moved.to if moved is not None else None

    def lent_to(self, pid: str, by: NodeTag) -> PersistedSession | None:
        """The session ``pid`` if the node ``by`` claimed it."""
        kept = self._kept.get(pid)
        if kept is None or kept.lent is None or kept.lent[0] != by:
            return None
        return kept.session

    def drop_claim(self, pid: str, by: NodeTag) -> None:
        """The node ``by`` will not take ``pid`` after all: it stays kept (or, past its
        window, is released)."""
        kept = self._kept.get(pid)
        if kept is None or kept.lent is None or kept.lent[0] != by:
            return
        kept.lent[2].cancel()
        kept.lent = None
        kept.claimed = False
        if asyncio.get_running_loop().time() >= kept.deadline:
            self.release_session(pid)

    def hand_over(self, namespace: str, pid: str, to: NodeTag) -> list[Entry]:
        """The session ``pid`` that the node ``to`` claimed is its own now: returns the kept
        packets its client missed, in order; the ghost leaves its rooms, and this node points
        to ``to`` for the rest of the window. Raises :class:`RecoveryRefusedError` when exact
        recovery became impossible (the session is then released)."""
        kept = self._kept.get(pid)
        if kept is None or kept.lent is None or kept.lent[0] != to:
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        session = kept.session
        _, after, timer = kept.lent
        timer.cancel()
        ns = self.sockets.namespace(session.namespace)
        ghost = ns.ghost(session.sid) if ns is not None else None
        history = ns.history if ns is not None else None
        try:
            if ghost is None or history is None or session.namespace != namespace:
                raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
            entries = recovery.missed_entries(history, session, ghost.last_offset, after)
        finally:
            self.release_session(pid)
        left = max(0.0, kept.deadline - asyncio.get_running_loop().time())
        self.point(pid, session.sid, to, left)
        self.stats.sessions_handed_over += 1
        return entries

    def point(self, pid: str, sid: str, to: NodeTag, seconds: float, forward: bool = True) -> None:
        """The session ``pid`` (socket ``sid``) went to the node ``to``: claims on it are sent
        there for ``seconds``, and, with ``forward``, broadcasts to ``sid`` that come here go
        on to it (an emit to the sid of a socket whose node is dead does not come here: the
        new node holds the sid's topic)."""
        self.forget_pointer(pid)
        timer = asyncio.get_running_loop().call_later(seconds, self.forget_pointer, pid)
        self._moved[pid] = _Moved(to, sid, timer)
        if forward:
            self.moved_sids[sid] = to

    def forget_pointer(self, pid: str) -> None:
        """Forget where ``pid`` went (its window ended here, or it is back on this node)."""
        moved = self._moved.pop(pid, None)
        if moved is not None:
            moved.timer.cancel()
            self.moved_sids.pop(moved.sid, None)

    def forget_session(self, pid: str) -> None:
        """Stop keeping ``pid`` (restored: its socket is live again)."""
        kept = self._kept.pop(pid, None)
        if kept is not None:
            kept.timer.cancel()
            self.stats.sessions_kept -= 1
            if not self._kept:
                self._none_kept.set()

    def release_session(self, pid: str) -> None:
        kept = self._kept.get(pid)
        if kept is None:
            return
        if kept.lent is not None:
            kept.lent[2].cancel()
        self.forget_session(pid)
        ns = self.sockets.namespace(kept.session.namespace)
        if ns is not None:
            ns.release(kept.session.sid)

    def _expire(self, pid: str) -> None:
        kept = self._kept.get(pid)
        if kept is None or kept.claimed:  # a claim cancelled late releases it then
            return
        loop = asyncio.get_running_loop()
        if loop.time() < kept.deadline:
            # A loop may run a timer a little early (uvloop rounds to milliseconds): the
            # session is kept for its whole window.
            kept.timer = loop.call_at(kept.deadline, self._expire, pid)
            return
        self.release_session(pid)

    async def sessions_settled(self) -> None:
        await self._none_kept.wait()

    def names_a_socket(self, name: str) -> bool:
        return tag_of_sid(name) == self.tag

    def node_address(self, tag: NodeTag) -> str | None:
        return None  # there is no other node

    def room_table(self, namespace: str | None = None) -> RoomTable:
        return {
            key: {str(self.node_id): count}
            for key, count in self.sockets.room_counts(namespace).items()
        }

    def room_held(self, namespace: str, room: str) -> bool:
        ns = self.sockets.namespace(namespace)
        return ns is not None and bool(ns.recipients((room,)))

    def describe(self) -> dict[str, Any]:
        return {"standalone": True}
