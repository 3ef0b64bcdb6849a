"""The cluster membership replica: every node's facts, replicated by gossip. Pure, clock injected.

Each node is the single writer of its own facts (rooms with local member counts, connection
count, address). :class:`LocalFacts` turns its changes into numbered deltas; :class:`Replica`
holds everyone else's facts and decides, for each gossip message, what to apply and when to ask
for a snapshot. The rules (one home, STYLE.md #2):

* Per remote node the replica knows one *incarnation*. A message from an older incarnation is
  ignored; a newer incarnation (a restart) replaces the view and needs a snapshot.
* Deltas carry ``facts_seq``. While *synced*, delta ``seq + 1`` applies, older ones are
  duplicates, and a jump is a gap: the view becomes unsynced and a snapshot is requested.
  Deltas that arrive while unsynced are buffered (bounded) and replayed after the snapshot.
* Heartbeats carry the sender's current ``facts_seq``: one ahead of ours is a missed delta.
* Any message refreshes ``last_seen``. Without one for ``suspect_after`` the node is SUSPECT,
  for ``down_after`` it is DOWN and its facts are dropped. A LEAVE (graceful shutdown) or an
  external verdict (Consul's check going critical) makes it DOWN at once. A DOWN node that
  speaks again with the same incarnation is revived and resynced, unless it left: a LEAVE ends
  its incarnation, and messages of it that arrive later (a snapshot on another topic) are
  ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from roomcast.cluster import wire
from roomcast.ids import NodeId, NodeTag, node_tag

RoomKey = tuple[str, str]  # (namespace, room)

MAX_BUFFERED_DELTAS = 1024
FORGET_AFTER_DOWNS = 10  # a node down this many down_after periods is forgotten
SNAPSHOT_RETRY = 1.0  # seconds before an unanswered snapshot request is repeated


class NodeStatus(enum.Enum):
    """What the replica believes about a node."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class RequestSnapshot:
    """Action: ask ``node`` (at ``tag``) for its snapshot."""

    node: NodeId
    tag: NodeTag


@dataclass(frozen=True, slots=True)
class NodeDown:
    """Event: ``node`` is down (``reason``: timeout, left or external); its rooms are gone."""

    node: NodeId
    reason: str


@dataclass(frozen=True, slots=True)
class NodeUp:
    """Event: a node (or a new incarnation of one) appeared."""

    node: NodeId


Action = RequestSnapshot | NodeDown | NodeUp


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A read-only view of one node, with how fresh it is."""

    node: NodeId
    incarnation: int
    status: NodeStatus
    address: str
    connections: int
    rooms: int
    synced: bool
    age: float  #: seconds since the last message from it
    started: float


@dataclass
class _View:
    node: NodeId
    incarnation: int
    tag: NodeTag
    last_seen: float
    status: NodeStatus = NodeStatus.ALIVE
    facts_seq: int = 0
    synced: bool = False
    rooms: dict[RoomKey, int] = field(default_factory=dict)
    address: str = ""
    connections: int = 0
    started: float = 0.0
    routers: tuple[str, ...] = ()  #: routers that deliver its probes (from its heartbeats)
    buffered: dict[int, wire.Delta] = field(default_factory=dict)
    snapshot_asked: float | None = None
    left: bool = False  #: this incarnation ended with a LEAVE


class Replica:
    """Everyone else's facts, as this node knows them."""

    def __init__(
        self,
        self_id: str,
        suspect_after: float,
        down_after: float,
        *,
        max_buffered_deltas: int = MAX_BUFFERED_DELTAS,
        snapshot_retry: float = SNAPSHOT_RETRY,
        forget_after_downs: int = FORGET_AFTER_DOWNS,
    ) -> None:
        self.self_id = self_id
        self.suspect_after = suspect_after
        self.down_after = down_after
        self.max_buffered_deltas = max_buffered_deltas
        self.snapshot_retry = snapshot_retry
        self.forget_after_downs = forget_after_downs
        self._views: dict[NodeId, _View] = {}
        #: (namespace, room) -> {node: count}, for alive nodes only.
        self._room_index: dict[RoomKey, dict[NodeId, int]] = {}
        self._by_tag: dict[NodeTag, NodeId] = {}

    # -- input --------------------------------------------------------------------------------

    def receive(self, header: wire.Header, body: wire.Body, now: float) -> list[Action]:
        """Feed one gossip message (DELTA, HEARTBEAT, SNAPSHOT or LEAVE)."""
        if header.origin == self.self_id:
            return []
        actions: list[Action] = []
        view = self._view_for(header, now, actions)
        if view is None or view.left:
            return actions  # from before a restart, or late (or repeated) after a LEAVE
        view.last_seen = now
        if isinstance(body, wire.Leave):
            view.left = True
            if view.status is not NodeStatus.DOWN:
                self._down(view, "left", actions)
            return actions
        if view.status is not NodeStatus.ALIVE:
            if view.status is NodeStatus.DOWN:
                view.synced = False  # revived: its facts were dropped
                actions.append(NodeUp(view.node))
            view.status = NodeStatus.ALIVE
        if isinstance(body, wire.Delta):
            self._on_delta(view, body, now, actions)
        elif isinstance(body, wire.Heartbeat):
            view.address, view.connections, view.started = (
                body.address,
                body.connections,
                body.started,
            )
            view.routers = body.routers
            if not view.synced or body.facts_seq > view.facts_seq:
                view.synced = False
                self._ask_snapshot(view, now, actions)
        elif isinstance(body, wire.Snapshot):
            self._on_snapshot(view, body)
        return actions

    def _view_for(self, header: wire.Header, now: float, actions: list[Action]) -> _View | None:
        view = self._views.get(header.origin)
        if view is not None and header.incarnation < view.incarnation:
            return None  # a message from before a restart
        if view is None or header.incarnation > view.incarnation:
            if view is not None:
                self._set_rooms(view, {})
                self._by_tag.pop(view.tag, None)
            view = _View(
                header.origin, header.incarnation, node_tag(header.origin, header.incarnation), now
            )
            self._views[header.origin] = view
            self._by_tag[view.tag] = view.node
            actions.append(NodeUp(view.node))
            if header.kind is not wire.Kind.SNAPSHOT and header.kind is not wire.Kind.LEAVE:
                self._ask_snapshot(view, now, actions)
        return view

    def _on_delta(self, view: _View, delta: wire.Delta, now: float, actions: list[Action]) -> None:
        view.connections = delta.connections
        if not view.synced:
            if len(view.buffered) < self.max_buffered_deltas:
                view.buffered[delta.facts_seq] = delta
            self._ask_snapshot(view, now, actions)
            return
        if delta.facts_seq <= view.facts_seq:
            return  # duplicate
        if delta.facts_seq != view.facts_seq + 1:
            view.synced = False
            view.buffered[delta.facts_seq] = delta
            self._ask_snapshot(view, now, actions)
            return
        self._apply(view, delta)

    def _apply(self, view: _View, delta: wire.Delta) -> None:
        for ns, room, count in delta.changes:
            self._set_count(view, (ns, room), count)
        view.facts_seq = delta.facts_seq

    def _on_snapshot(self, view: _View, snap: wire.Snapshot) -> None:
        if snap.facts_seq < view.facts_seq:
            return  # a late answer to an earlier request: never roll the facts back
        view.address, view.connections, view.started = snap.address, snap.connections, snap.started
        if view.synced and snap.facts_seq == view.facts_seq:
            return  # we are already that fresh
        self._set_rooms(view, {(ns, room): count for ns, room, count in snap.rooms if count > 0})
        view.facts_seq = snap.facts_seq
        view.synced = True
        view.snapshot_asked = None
        # Replay buffered deltas that follow the snapshot.
        for seq in sorted(view.buffered):
            if seq == view.facts_seq + 1:
                self._apply(view, view.buffered[seq])
            elif seq > view.facts_seq + 1:
                view.synced = False  # still a hole: the next heartbeat asks again
                break
        view.buffered = {s: d for s, d in view.buffered.items() if s > view.facts_seq}

    def _ask_snapshot(self, view: _View, now: float, actions: list[Action]) -> None:
        if view.snapshot_asked is not None and now - view.snapshot_asked < self.snapshot_retry:
            return
        view.snapshot_asked = now
        actions.append(RequestSnapshot(view.node, view.tag))

    # -- time and external verdicts -----------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Advance suspicion timers; returns NodeDown events and snapshot retries."""
        actions: list[Action] = []
        forget_after = self.down_after * self.forget_after_downs
        for view in list(self._views.values()):
            if view.status is NodeStatus.DOWN:
                if now - view.last_seen >= forget_after:
                    # Long gone (node ids change across restarts): forget it, so the views
                    # do not grow for ever. Its stale messages are long gone too.
                    del self._views[view.node]
                    if self._by_tag.get(view.tag) == view.node:
                        del self._by_tag[view.tag]
                continue
            age = now - view.last_seen
            if age >= self.down_after:
                self._down(view, "timeout", actions)
            elif age >= self.suspect_after:
                view.status = NodeStatus.SUSPECT
            if view.status is not NodeStatus.DOWN and not view.synced:
                self._ask_snapshot(view, now, actions)
        return actions

    def mark_down(self, node: str, reason: str = "external") -> list[Action]:
        """An outside authority (Consul) says ``node`` is down."""
        view = self._views.get(NodeId(node))
        actions: list[Action] = []
        if view is not None and view.status is not NodeStatus.DOWN:
            self._down(view, reason, actions)
        return actions

    def _down(self, view: _View, reason: str, actions: list[Action]) -> None:
        view.status = NodeStatus.DOWN
        view.synced = False
        view.buffered.clear()
        view.snapshot_asked = None
        self._set_rooms(view, {})
        actions.append(NodeDown(view.node, reason))

    # -- room index ---------------------------------------------------------------------------

    def _set_count(self, view: _View, key: RoomKey, count: int) -> None:
        if count > 0:
            view.rooms[key] = count
            self._room_index.setdefault(key, {})[view.node] = count
        else:
            view.rooms.pop(key, None)
            holders = self._room_index.get(key)
            if holders is not None:
                holders.pop(view.node, None)
                if not holders:
                    del self._room_index[key]

    def _set_rooms(self, view: _View, rooms: dict[RoomKey, int]) -> None:
        for key in list(view.rooms):
            if key not in rooms:
                self._set_count(view, key, 0)
        for key, count in rooms.items():
            self._set_count(view, key, count)

    # -- reads --------------------------------------------------------------------------------

    def nodes_with_rooms(self, namespace: str, rooms: Iterable[str]) -> set[NodeId]:
        """Live nodes that hold members of any of ``rooms``."""
        out: set[NodeId] = set()
        for room in rooms:
            holders = self._room_index.get((namespace, room))
            if holders:
                out.update(holders)
        return out

    def nodes_in_namespace(self, namespace: str) -> set[NodeId]:
        """Live nodes; a node with sockets but no rooms in ``namespace`` is included (sid rooms
        are not gossiped), so this is every node not known to be down."""
        return {v.node for v in self._views.values() if v.status is not NodeStatus.DOWN}

    def alive(self) -> list[NodeId]:
        """Nodes not known to be down."""
        return [v.node for v in self._views.values() if v.status is not NodeStatus.DOWN]

    def routers_heard_by_all(self, candidates: list[str]) -> list[str]:
        """The ``candidates`` that every live node reports hearing its own probes through
        (a node that reported no routers yet is not counted against any)."""
        out = []
        for rid in candidates:
            if all(
                rid in v.routers
                for v in self._views.values()
                if v.status is not NodeStatus.DOWN and v.routers
            ):
                out.append(rid)
        return out

    def tag(self, node: str) -> NodeTag | None:
        """The direct-topic tag of ``node``'s current incarnation."""
        view = self._views.get(NodeId(node))
        return view.tag if view is not None else None

    def knows_tag(self, tag: NodeTag) -> bool:
        """Whether ``tag`` is the tag of a node this replica knows, down or not."""
        return tag in self._by_tag

    def address(self, node: str) -> str | None:
        """The address ``node`` announced (its base URL), if it is known and not down."""
        view = self._views.get(NodeId(node))
        if view is None or view.status is NodeStatus.DOWN or not view.address:
            return None
        return view.address

    def node_of_tag(self, tag: NodeTag) -> NodeId | None:
        """The live node whose current incarnation has ``tag`` (None once it is down: there
        is nobody to ask)."""
        node = self._by_tag.get(tag)
        if node is None or self._views[node].status is NodeStatus.DOWN:
            return None
        return node

    def room_sizes(self, namespace: str | None = None) -> dict[RoomKey, dict[NodeId, int]]:
        """Rooms held by live remote nodes, with each node's member count."""
        return {
            key: dict(holders)
            for key, holders in self._room_index.items()
            if namespace is None or key[0] == namespace
        }

    def info(self, now: float) -> list[NodeInfo]:
        """Every node ever seen, with its status and freshness."""
        return [
            NodeInfo(
                v.node,
                v.incarnation,
                v.status,
                v.address,
                v.connections,
                len(v.rooms),
                v.synced,
                now - v.last_seen,
                v.started,
            )
            for v in sorted(self._views.values(), key=lambda v: v.node)
        ]

    def facts(self, node: str) -> dict[RoomKey, int]:
        """The rooms of ``node`` as replicated here (for tests and inspection)."""
        view = self._views.get(NodeId(node))
        return dict(view.rooms) if view is not None else {}

    def status(self, node: str) -> NodeStatus | None:
        """What the replica believes about ``node``."""
        view = self._views.get(NodeId(node))
        return view.status if view is not None else None


class LocalFacts:
    """This node's own facts and the deltas that replicate them."""

    def __init__(self, node: str, incarnation: int, address: str, started: float) -> None:
        self.node = node
        self.incarnation = incarnation
        self.tag = node_tag(node, incarnation)
        self.address = address
        self.started = started
        self.connections = 0
        self.facts_seq = 0
        self.rooms: dict[RoomKey, int] = {}
        self._pending: dict[RoomKey, int] = {}

    def set_count(self, namespace: str, room: str, count: int) -> None:
        """Record the local member count of a room (0: the room is gone here)."""
        key = (namespace, room)
        if count > 0:
            self.rooms[key] = count
        else:
            self.rooms.pop(key, None)
        self._pending[key] = count

    @property
    def dirty(self) -> bool:
        """Whether changes wait to be sent."""
        return bool(self._pending)

    def take_delta(self) -> wire.Delta | None:
        """The batched changes since the last delta, as the next numbered delta."""
        if not self._pending:
            return None
        self.facts_seq += 1
        changes = tuple((ns, room, count) for (ns, room), count in self._pending.items())
        self._pending.clear()
        return wire.Delta(self.facts_seq, changes, self.connections)

    def heartbeat(self, routers: tuple[str, ...] = ()) -> wire.Heartbeat:
        """The heartbeat body (pending changes must be flushed first); ``routers`` are the
        routers that deliver this node's own probes."""
        return wire.Heartbeat(
            self.facts_seq, self.tag, self.address, self.connections, self.started, routers
        )

    def snapshot(self) -> wire.Snapshot:
        """Every fact as of ``facts_seq`` (pending changes must be flushed first)."""
        return wire.Snapshot(
            self.facts_seq,
            self.tag,
            self.address,
            self.connections,
            self.started,
            tuple((ns, room, count) for (ns, room), count in self.rooms.items()),
        )
