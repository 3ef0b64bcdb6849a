"""Connection state recovery across nodes: a session handed over to the node its client came
back to (:class:`Handovers` serves both sides for a node's cluster adapter).

A client presents the pid of a session another node keeps (the pid's tag names the node that
created it; a node that handed it over points to where it went). This node claims it
(:class:`~roomcast.node.requests.ClaimSession`), and learns its sid, rooms and data; it
subscribes to the session's rooms and namespace and proves the subscriptions, keeping
meanwhile, in an :class:`Incoming`, every packet that arrives for the session; once the
connect is admitted, it takes the session (:class:`~roomcast.node.requests.TakeSession`): the
old node answers with the kept packets the client missed after its offset (which names the
old node, whose counter it is), as it wrote them, and lets its ghost go. This node then
numbers those packets itself, then what it kept meanwhile minus what it already has (by bus
message id), and the socket takes its place in the same event-loop step. From then on the
session is this node's: it numbers everything it writes to it.

The packets of the old node that reached it before this node's subscriptions were live are
in the old node's history; those published after are in the :class:`Incoming`; the old node
cuts its history after the subscriptions were proved, and after a probe through every live
router came back on each of the session's topics (a packet a router forwarded to it before
may still be on its way on another connection), so the two overlap and miss nothing; per
origin, the old node's packets come first and the copies are dropped, so nothing is
reordered. After the handover the old node points to the new one for the rest of the window
(a later claim is sent there) and forwards broadcasts to the socket's sid, which are routed
to it by the sid's tag (except to the socket if it is in another room they name: it gets
them through that room). A node that has left takes its pointers with it: a claim on a pid
whose node is gone asks every live node, and the one that keeps the session claims it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from roomcast.cluster import wire
from roomcast.cluster.bus import Bus
from roomcast.cluster.membership import Replica
from roomcast.cluster.routing import Target
from roomcast.errors import ClusterTimeoutError, RecoveryRefusedError
from roomcast.ids import Namespace, NodeId, NodeTag, parse_offset, tag_of_pid, tag_of_sid
from roomcast.protocol.frames import Frames

from . import recovery
from . import requests as rq
from .adapter import SessionClaim, Spawn
from .keeper import NOT_KEPT, Keeping
from .local import LocalAdapter
from .recovery import Entry, History, Membership, Offsets, PersistedSession

#: How many times a claim follows a session that moved on (each hop a node that handed it
#: over); a session moves once per outage, so more is a loop.
MAX_HOPS = 4


class Holder(Protocol):
    """What keeps sessions that other nodes claim: this node's adapter, or its copy of a dead
    node's sessions (:class:`~roomcast.node.mirror.Mirror`)."""

    @property
    def offsets(self) -> Offsets: ...

    def lend_session(
        self, namespace: str, pid: str, offset: str | None, to: NodeTag, timeout: float
    ) -> PersistedSession | NodeTag: ...

    def lent_to(self, pid: str, by: NodeTag) -> PersistedSession | None: ...

    def drop_claim(self, pid: str, by: NodeTag) -> None: ...

    def release_session(self, pid: str) -> None: ...

    def hand_over(self, namespace: str, pid: str, to: NodeTag) -> list[Entry]: ...


class Incoming:
    """The packets that arrive for a session being handed over to this node, before its
    socket is in place, unnumbered, within its namespace's history bounds."""

    __slots__ = ("max_bytes", "max_packets", "namespace", "nbytes", "overflow", "packets", "rooms")

    def __init__(self, namespace: str, rooms: frozenset[str], history: History) -> None:
        self.namespace = namespace
        self.rooms = rooms  # the sid's own room included
        self.max_packets = history.max_packets
        self.max_bytes = history.max_bytes
        self.packets: list[tuple[Frames, rq.Source]] = []
        self.nbytes = 0
        #: More arrived than the history could keep: the recovery cannot be exact.
        self.overflow = False

    def offer(
        self,
        rooms: tuple[str, ...] | frozenset[str],
        except_rooms: tuple[str, ...] | frozenset[str],
        except_sids: tuple[str, ...] | frozenset[str],
        volatile: bool,
        frames: Frames,
        source: rq.Source,
    ) -> None:
        """Keep a broadcast of the namespace if it reaches the session (the registry's rule,
        for its rooms); volatile ones are not kept (as in a history)."""
        if volatile or self.overflow:
            return
        mine = self.rooms
        if rooms and not any(r in mine for r in rooms):
            return
        if any(s in mine for s in except_sids) or any(r in mine for r in except_rooms):
            return
        size = frames.nbytes
        if len(self.packets) >= self.max_packets or self.nbytes + size > self.max_bytes:
            self.overflow = True
            self.packets.clear()
            return
        self.packets.append((frames, source))
        self.nbytes += size


def forwards(
    rooms: tuple[str, ...], moved: dict[str, NodeTag]
) -> dict[NodeTag, tuple[list[str], list[str]]]:
    """Where a broadcast that came to this node for sockets it handed over goes: by the node
    each went to (``moved``), the sids in ``rooms`` it went to, and the other rooms of the
    broadcast, which the forwarded copy excepts: a socket in one of those gets the broadcast
    through that room's topic on its new node, and must not get it twice."""
    sids: dict[NodeTag, list[str]] = {}
    for room in rooms:
        tag = moved.get(room)
        if tag is not None:
            sids.setdefault(tag, []).append(room)
    if not sids:
        return {}
    others = [r for r in rooms if r not in moved]
    return {tag: (mine, others) for tag, mine in sids.items()}


def _rank(reply: rq.Reply) -> int:
    """Which of several nodes' replies to a claim counts: the keeper's claim first, then a
    pointer, then a refusal by a node that kept the session; last, the nodes that did not."""
    if isinstance(reply, rq.Claimed):
        return 0
    if isinstance(reply, rq.Moved):
        return 1
    if isinstance(reply, rq.Refused) and reply.reason not in (NOT_KEPT, recovery.UNKNOWN_SESSION):
        return 2
    return 3


def known_reason(reason: str) -> str:
    """A refusal reason another node sent, if it is one (a label must stay bounded)."""
    return reason if reason in recovery.REFUSALS else recovery.UNKNOWN_SESSION


class RemoteClaim(SessionClaim):
    """A session another node keeps, claimed for a client back on this node."""

    handed_over = True

    def __init__(
        self,
        adapter: Handovers,
        node: NodeId,
        namespace: Namespace,
        pid: str,
        claimed: rq.Claimed,
        history: History,
        keep: int,
    ) -> None:
        self.adapter = adapter
        self.node = node
        self.history = history
        rooms = frozenset((*claimed.rooms, claimed.sid))
        # Its numbers are this node's: set when the claim completes.
        self.session = PersistedSession(
            namespace,
            claimed.sid,
            pid,
            rooms,
            claimed.data,
            0,
            Membership(claimed.sid, 0, keep),
            claimed.window,
        )
        self.incoming = Incoming(namespace, rooms, history)
        self._rooms = [r for r in rooms if r != claimed.sid]
        #: The node the sid names, when not this one (a session created elsewhere).
        self.sid_tag = tag_of_sid(claimed.sid)
        if self.sid_tag == adapter.keeper.tag:
            self.sid_tag = None
        #: Whether the claim holds the sid's own topic: an emit to the sid of a socket whose
        #: node is down goes there.
        self.sid_topic = self.sid_tag is not None and not adapter.live_tag(self.sid_tag)
        self._done = False

    @property
    def rooms(self) -> list[str]:
        """The rooms whose subscriptions the claim holds (the sid's own room is not one)."""
        return self._rooms

    def _end(self) -> None:
        if self._done:
            return
        self._done = True
        self.adapter.incoming.pop(self.session.sid, None)
        rooms = [*self._rooms, self.session.sid] if self.sid_topic else self._rooms
        self.adapter.release_rooms(self.session.namespace, rooms)

    async def complete(self) -> list[Frames]:
        session = self.session
        try:
            reply = await self.adapter.ask_node(
                self.node, rq.TakeSession(session.namespace, session.pid)
            )
            if isinstance(reply, rq.Refused):
                raise RecoveryRefusedError(known_reason(reply.reason))
            if not isinstance(reply, rq.HandedOver):
                raise RecoveryRefusedError(recovery.OLD_NODE_GONE)
            handed: list[tuple[Frames, rq.Source]] = []
            for ws, offset, source in reply.packets:
                frames = Frames.from_ws(ws).without_offset(offset)
                if frames is None:
                    raise RecoveryRefusedError(recovery.INVALID_OFFSET)
                handed.append((frames, source))
            incoming = self.incoming
            seen = {source for _, source in handed if source is not None}
            todo = handed + [(f, s) for f, s in incoming.packets if s is None or s not in seen]
            history = self.history
            if (
                incoming.overflow
                or len(todo) > history.max_packets
                or sum(f.nbytes for f, _ in todo) > history.max_bytes
            ):
                raise RecoveryRefusedError(recovery.HISTORY_EVICTED)
        except RecoveryRefusedError:
            self._end()
            # Its client gets a fresh session: the old node must not keep a ghost of it (it
            # did not answer, or refused having released it already).
            self.adapter.tell_node(
                self.node, rq.DropClaim(session.namespace, session.pid, release=True)
            )
            raise
        # No await from here: the socket takes its place in the step this returns in.
        self._done = True
        self.adapter.incoming.pop(session.sid, None)
        if self.sid_tag is not None:
            self.adapter.foreign[(session.namespace, session.sid)] = self.sid_tag
            if self.sid_topic:  # the socket's now, until it is gone
                self.adapter.sid_topics.add((session.namespace, session.sid))
            else:
                self.adapter.nodes_down()  # its node may have died since the claim began
        self.adapter.keeper.forget_pointer(session.pid)  # it is back here, if it was here once
        offsets = self.adapter.offsets
        first = offsets.last
        membership = session.membership
        membership.first = first
        membership.joined = dict.fromkeys(session.rooms, first)
        out: list[Frames] = []
        own = (session.sid,)
        for frames, source in todo:
            counter = offsets.next()
            numbered = frames.with_offset(offsets.text(counter))
            if numbered is None:  # not an EVENT without ack (never kept): sent as it is
                out.append(frames)
                continue
            entry = Entry(counter, own, (), (), numbered, source)
            history.record(entry)
            self.adapter.keeper.journal.packet(session.namespace, entry)
            self.last_offset = counter
            out.append(numbered)
        return out

    def cancel(self, release: bool = False) -> None:
        """The connect did not go through: the old node keeps the session (``release``: lets
        it go, its client was given a fresh one)."""
        if self._done:
            return
        self._end()
        session = self.session
        self.adapter.tell_node(self.node, rq.DropClaim(session.namespace, session.pid, release))


class Handovers:
    """Both sides of handing sessions between nodes, for a node's cluster adapter: claiming
    another node's session for a client back here, and serving other nodes' claims on the
    sessions ``keeper`` (the adapter) keeps."""

    def __init__(
        self,
        keeper: LocalAdapter,
        keeping: Keeping,
        bus: Bus,
        replica: Replica,
        request: Callable[[set[NodeId], rq.Request], Awaitable[dict[NodeId, rq.Reply]]],
        spawn: Spawn,
        join_timeout: float,
        request_timeout: float,
        max_rooms: int,
        next_msg_id: Callable[[], int],
    ) -> None:
        self.keeper = keeper
        self.keeping = keeping
        self.bus = bus
        self.replica = replica
        self._request = request
        self._spawn = spawn
        self.join_timeout = join_timeout
        self.request_timeout = request_timeout
        self.max_rooms = max_rooms
        self._next_msg_id = next_msg_id
        #: Sessions being handed over to this node, by sid.
        self.incoming: dict[str, Incoming] = {}
        #: The sockets handed over to this node whose sid names another node (the node's
        #: tag), and those whose sid's topic this node holds: their node is down, and an emit
        #: to their sid goes on that topic (while it lives, it gets them and forwards them).
        self.foreign: dict[tuple[str, str], NodeTag] = {}
        self.sid_topics: set[tuple[str, str]] = set()
        self._proving_sids = 0

    @property
    def offsets(self) -> Offsets:
        """The node's offset counter."""
        return self.keeper.offsets

    # -- the new node's side ------------------------------------------------------------------

    async def claim(self, namespace: str, pid: str, offset: Any) -> SessionClaim:
        """Claim ``pid`` from the node that keeps it, following where it moved; then hold its
        rooms here, proved, keeping what arrives for it."""
        if offset is not None and (not isinstance(offset, str) or parse_offset(offset) is None):
            raise RecoveryRefusedError(recovery.INVALID_OFFSET)
        ns = self.keeper.sockets.namespace(namespace)
        history = ns.history if ns is not None else None
        if history is None:
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        tag = self.keeper.moved_to(pid) or tag_of_pid(pid)
        request = rq.ClaimSession(namespace, pid, offset)
        for _ in range(MAX_HOPS):
            if tag is None:
                raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
            node = self.replica.node_of_tag(tag) if tag != self.keeper.tag else None
            if tag == self.keeper.tag:
                # Created here, not here now, and this node forgot where it went (its pointer
                # lasts the window it had here): the node that has it says so.
                node, reply = await self._ask_every_node(request, gone=False)
            elif node is None:
                node, reply = await self._ask_every_node(request, gone=True)
            else:
                try:
                    reply = await self.ask_node(node, request)
                except RecoveryRefusedError:
                    if not await self._went_down(node):
                        raise
                    node, reply = await self._ask_every_node(request, gone=True)
                else:
                    if isinstance(reply, rq.Refused) and reply.reason == recovery.UNKNOWN_SESSION:
                        node, reply = await self._ask_every_node(request, gone=False)
            if not isinstance(reply, rq.Moved):
                break
            tag = NodeTag(reply.tag)
        else:
            raise RecoveryRefusedError(recovery.UNKNOWN_SESSION)
        if isinstance(reply, rq.Refused):
            raise RecoveryRefusedError(known_reason(reply.reason))
        if not isinstance(reply, rq.Claimed) or reply.sid in self.incoming:
            raise RecoveryRefusedError(recovery.OLD_NODE_GONE)
        claim = RemoteClaim(self, node, Namespace(namespace), pid, reply, history, self.max_rooms)
        self.incoming[reply.sid] = claim.incoming
        topics = [wire.namespace_topic(namespace)]
        topics += [wire.room_topic(namespace, r) for r in claim.rooms]
        if claim.sid_topic:
            topics.append(wire.room_topic(namespace, reply.sid))
        try:
            await asyncio.gather(
                *(self.bus.subscribe(t, self.join_timeout) for t in topics),
                # This node's keeper holds them too before the session is this node's.
                self.keeping.mirror(namespace, claim.rooms, True),
            )
        except TimeoutError:
            claim.cancel(release=True)
            raise RecoveryRefusedError(recovery.OLD_NODE_GONE) from None
        except BaseException:
            claim.cancel()
            raise
        return claim

    async def _went_down(self, node: NodeId) -> bool:
        """Whether ``node``, silent, is down (waiting as long as the replica may take to say
        so)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.keeping.down_after
        while node in self.replica.alive():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _ask_every_node(
        self, request: rq.ClaimSession, gone: bool
    ) -> tuple[NodeId, rq.Reply]:
        """The node the pid names does not know the session: it is ``gone`` (dead, or drained
        and left: its pointers went with it), or it forgot where the session went. Ask every
        live node at once, this one included: the one that keeps the session claims it (the
        dead node's keeper, from its copy, or the node it was handed over to) and the others
        say they do not keep it; ``old node gone`` (``unknown session`` for a node that lives)
        when none does. For a gone node, asked again for as long as the replica may take to
        know every node (this node may have just started: the client of a node that was
        killed and started again comes back to it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.keeping.down_after if gone else 0.0)
        while True:
            nodes = [self.keeper.node_id, *self.replica.alive()]
            results = await asyncio.gather(
                *(self.ask_node(n, request) for n in nodes), return_exceptions=True
            )
            replies = [
                (n, r)
                for n, r in zip(nodes, results, strict=True)
                if not isinstance(r, BaseException)
            ]
            replies.sort(key=lambda item: _rank(item[1]))
            if replies and _rank(replies[0][1]) < 3:
                for node, reply in replies[1:]:
                    if isinstance(reply, rq.Claimed):  # a stale copy too: it keeps it
                        self.tell_node(node, rq.DropClaim(request.namespace, request.pid))
                return replies[0]
            if loop.time() >= deadline:
                reason = recovery.OLD_NODE_GONE if gone else recovery.UNKNOWN_SESSION
                raise RecoveryRefusedError(reason)
            await asyncio.sleep(0.2)

    async def ask_node(self, node: NodeId, request: rq.Request) -> rq.Reply:
        """``node``'s reply to a handover request (``old node gone`` when none comes in the
        request timeout, or the node went down meanwhile); this node's own answered here."""
        if node == self.keeper.node_id:
            assert isinstance(request, rq.ClaimSession | rq.TakeSession | rq.DropClaim)
            return await self.serve(request, self.keeper.tag)
        try:
            replies = await self._request({node}, request)
        except ClusterTimeoutError:
            raise RecoveryRefusedError(recovery.OLD_NODE_GONE) from None
        reply = replies.get(node)
        if reply is None or isinstance(reply, rq.Failed):
            raise RecoveryRefusedError(recovery.OLD_NODE_GONE)
        return reply

    def tell_node(self, node: NodeId, request: rq.Request) -> None:
        """Send ``request`` to ``node``; its reply does not matter."""

        async def tell() -> None:
            with contextlib.suppress(ClusterTimeoutError, RecoveryRefusedError):
                await self.ask_node(node, request)

        self._spawn(tell())

    def live_tag(self, tag: NodeTag) -> bool:
        """Whether the node ``tag`` names is live."""
        return self.replica.node_of_tag(tag) is not None

    def sid_gone(self, namespace: str, sid: str) -> None:
        """A socket is gone: the sid topic held for it, if any, goes too."""
        self.foreign.pop((namespace, sid), None)
        if (namespace, sid) in self.sid_topics:
            self.sid_topics.discard((namespace, sid))
            self.bus.unsubscribe(wire.room_topic(namespace, sid))

    def nodes_down(self) -> None:
        """Some node went down: the sids of this node's sockets that it named are reached
        through their own topics from now on."""
        for key, tag in self.foreign.items():
            if key not in self.sid_topics and not self.live_tag(tag):
                self.sid_topics.add(key)
                self._spawn(self._hold_sid(wire.room_topic(*key)))

    async def _hold_sid(self, topic: wire.Topic) -> None:
        self._proving_sids += 1
        try:
            with contextlib.suppress(TimeoutError):
                await self.bus.subscribe(topic, self.join_timeout)
        finally:
            self._proving_sids -= 1

    def describe(self) -> dict[str, int]:
        """For inspection: sockets here whose sid names another node, the sid topics held
        (their node is down), and those not proved yet."""
        return {
            "foreign_sids": len(self.foreign),
            "sid_topics": len(self.sid_topics),
            "proving": self._proving_sids,
        }

    def release_rooms(self, namespace: str, rooms: list[str]) -> None:
        """Drop the interest a claim took in ``namespace`` and ``rooms``."""
        self.bus.unsubscribe(wire.namespace_topic(namespace))
        for room in rooms:
            self.bus.unsubscribe(wire.room_topic(namespace, room))

    def offer(
        self, namespace: str, t: Target | wire.RoomMessage, frames: Frames, source: rq.Source
    ) -> None:
        """A broadcast this node writes: kept for the sessions being handed over it reaches."""
        for incoming in self.incoming.values():
            if incoming.namespace == namespace:
                incoming.offer(t.rooms, t.except_rooms, t.except_sids, t.volatile, frames, source)

    # -- the old node's side ------------------------------------------------------------------

    def forward(self, msg: wire.RoomMessage) -> None:
        """A broadcast that came here for sockets this node handed over goes on to their
        nodes."""
        for tag, (sids, others) in forwards(msg.rooms, self.keeper.moved_sids).items():
            body = msg._replace(
                msg_id=self._next_msg_id(),
                rooms=tuple(sids),
                except_rooms=(*msg.except_rooms, *others),
            )
            self.bus.publish(wire.node_topic(tag), body)

    async def serve(
        self, request: rq.ClaimSession | rq.TakeSession | rq.DropClaim, by: NodeTag
    ) -> rq.Reply:
        """Serve the node ``by``'s claim on a session this node keeps (or handed over), its
        taking it, or its word that it will not."""
        keeper = await self._holder(request.namespace, request.pid, by)
        if keeper is None:
            return rq.Refused(NOT_KEPT)
        if isinstance(request, rq.TakeSession):
            return await self._hand_over(keeper, request, by)
        if isinstance(request, rq.DropClaim):
            if request.release and keeper.lent_to(request.pid, by) is not None:
                keeper.release_session(request.pid)
            else:
                keeper.drop_claim(request.pid, by)
            return rq.Answer(None)
        # Long enough for the claimant to prove its subscriptions, run its middleware and
        # take the session; a claimant that died meanwhile lets it go after that.
        hold = self.join_timeout + 2 * self.request_timeout
        try:
            found = keeper.lend_session(request.namespace, request.pid, request.offset, by, hold)
        except RecoveryRefusedError as exc:
            return rq.Refused(exc.reason)
        if not isinstance(found, PersistedSession):
            return rq.Moved(found)
        if not wire.can_carry(found.data):
            keeper.release_session(found.pid)
            return rq.Refused(recovery.UNMOVABLE_DATA)
        rooms = tuple(sorted(r for r in found.rooms if r != found.sid))
        return rq.Claimed(found.sid, rooms, found.data, found.window)

    async def _holder(self, namespace: str, pid: str, by: NodeTag) -> Holder | None:
        """What keeps ``pid`` here for the claimant ``by``: this node (its own sessions, those
        handed over to it, connected or kept, and its pointers), or its copy of the dead node
        that created it; None: nothing here."""
        local = self.keeper
        ns = local.sockets.namespace(namespace)
        if local.keeps(pid) or (ns is not None and ns.has_pid(pid)):
            return local
        tag = tag_of_pid(pid)
        if tag is None or tag == local.tag or tag == by:
            return local  # ours, or the claimant's own: it is not dead, its copy is no holder
        if tag not in self.keeping.mirrors and self.replica.node_of_tag(tag) is not None:
            return local  # a live node's session that came this way (through a pointer)
        # The claimant saw the node die; this node may see it a moment later.
        return await self.keeping.holder(tag)

    async def _hand_over(self, keeper: Holder, request: rq.TakeSession, by: NodeTag) -> rq.Reply:
        """Hand a session the node ``by`` claimed over, once every message a router had for
        its rooms before ``by`` proved its own subscriptions is in this node's history (a
        router may have forwarded it here just before, on another connection than the
        request's)."""
        session = keeper.lent_to(request.pid, by)
        if session is None:
            return rq.Refused(recovery.UNKNOWN_SESSION)
        ns = session.namespace
        topics = [wire.namespace_topic(ns)]
        topics += [wire.room_topic(ns, r) for r in session.rooms if r != session.sid]
        if keeper is not self.keeper:  # a dead node's copy: an emit to the sid comes on its topic
            topics.append(wire.room_topic(ns, session.sid))
        try:
            # Half the request timeout: the claimant waits that long for the answer.
            wait = self.request_timeout / 2
            await asyncio.gather(*(self.bus.fence(t, wait) for t in topics))
        except TimeoutError:
            keeper.release_session(request.pid)
            return rq.Refused(recovery.OLD_NODE_GONE)
        try:
            entries = keeper.hand_over(request.namespace, request.pid, by)
        except RecoveryRefusedError as exc:
            return rq.Refused(exc.reason)
        text = keeper.offsets.text
        return rq.HandedOver(tuple((e.frames.ws, text(e.counter), e.source) for e in entries))
