"""The Adapter contract: how a node's broadcasts and socket operations reach their sockets.

This is Socket.IO's own seam (its ``Adapter`` class, which the Redis, Postgres and cluster
adapters implement; centrifuge's ``Broker`` and Phoenix.PubSub's adapter are the same idea). The
rest of the node never asks whether it is clustered: namespaces, sockets and broadcast operators
hand every operation that may reach beyond this node's own sockets to the adapter.

Two implementations: :class:`~roomcast.node.local.LocalAdapter` (a standalone node) and
:class:`~roomcast.node.cluster.ClusterAdapter` (interest routing over the bus, requests to the
involved nodes only). One contract test suite runs against both
(``tests/node/test_adapter_contract.py``).

The adapter reaches this node's sockets through :class:`LocalSockets` (the node's namespaces),
never through the node's server object, and knows a socket only as a :class:`Member`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Container, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from roomcast.cluster.routing import Target
from roomcast.ids import Namespace, NodeId, NodeTag
from roomcast.protocol.frames import Frames

from .recovery import History, Journal, Offsets, PersistedSession, RecoverableSocket

#: A server-to-server event handler: ``handler(*args)``, sync or async; its result is the answer.
ServerEventHandler = Callable[..., Any]
#: Runs a coroutine as a task the node owns (cancelled at shutdown, its errors logged).
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]
#: (namespace, room) -> {node: local member count}.
RoomTable = dict[tuple[str, str], dict[str, int]]


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the client presented when its socket connected (socket.io's ``socket.handshake``)."""

    headers: dict[str, str]
    query: dict[str, str]
    auth: dict[str, Any]
    address: str | None
    time: float
    url: str
    secure: bool


@dataclass(frozen=True, slots=True)
class SocketInfo:
    """A snapshot of a socket, local or on another node (socket.io's ``RemoteSocket``)."""

    id: str
    namespace: str
    rooms: frozenset[str]
    data: Any
    handshake: Handshake | None
    node: str
    #: The transport of its connection when the snapshot was taken (``polling``,
    #: ``websocket``); None from a node that does not say.
    transport: str | None = None


class Collector:
    """Collects the acks of one broadcast with acks until every recipient answered."""

    __slots__ = ("ack_id", "expected", "future", "recipients", "responses")

    def __init__(self, future: asyncio.Future[list[Any]], ack_id: int = -1) -> None:
        self.future = future
        self.ack_id = ack_id
        self.expected = 0
        self.responses: list[Any] = []
        self.recipients: list[Member] = []

    def release(self) -> None:
        """Forget the ack ids of recipients that never answered (the wait is over)."""
        for member in self.recipients:
            member.forget_ack(self.ack_id, self)
        self.recipients.clear()

    def ack(self, args: list[Any]) -> None:
        """A recipient answered ``args`` (its first argument is the response)."""
        self.responses.append(args[0] if args else None)
        self.check()

    def forget(self) -> None:
        """A recipient disconnected: it will never answer."""
        self.expected -= 1
        self.check()

    def check(self) -> None:
        """Resolve the future once every expected answer is in."""
        if len(self.responses) >= self.expected and not self.future.done():
            self.future.set_result(self.responses)


class Member(Protocol):
    """A socket of this node, as the adapter sees it."""

    #: The number of the last non-volatile packet with an offset sent to it (0: none), set by
    #: the adapter on every such delivery, whether the socket took it or not.
    last_offset: int

    @property
    def sid(self) -> str:
        """The socket id (also its private room)."""
        ...

    @property
    def connected(self) -> bool:
        """False for a *ghost*: a socket kept for recovery after its connection was lost, still
        a member of its rooms, taking no packet; snapshots and room operations skip it."""
        ...

    def write(self, frames: Frames, volatile: bool = False) -> bool:
        """Send a pre-built packet; returns whether the socket took it."""
        ...

    def expect_ack(self, ack_id: int, collector: Collector) -> None:
        """Route the ack ``ack_id`` from this socket to ``collector``."""
        ...

    def forget_ack(self, ack_id: int, collector: Collector) -> None:
        """Stop routing ``ack_id`` to ``collector`` (the wait is over)."""
        ...

    def info(self) -> SocketInfo:
        """A snapshot of the socket."""
        ...

    async def join(self, *rooms: str | Iterable[str]) -> None:
        """Join rooms (returns once traffic to them reaches the socket)."""
        ...

    async def leave(self, *rooms: str | Iterable[str]) -> None:
        """Leave rooms."""
        ...

    def disconnect(self, close: bool = False) -> None:
        """Disconnect from the namespace (``close``: the whole connection)."""
        ...


class LocalNamespace(Protocol):
    """One namespace of this node, as the adapter sees it."""

    def recipients(
        self,
        rooms: Collection[str],
        except_rooms: Collection[str] = (),
        except_sids: Collection[str] = (),
    ) -> Collection[Member]:
        """This node's sockets in any of ``rooms`` (all when empty), minus the members of
        ``except_rooms`` and the sockets named in ``except_sids``, each once."""
        ...

    def sids(self) -> Container[str]:
        """The sids of this node's sockets in the namespace."""
        ...

    def next_ack_id(self) -> int:
        """A fresh ack id of the namespace (shared with its sockets' own emits)."""
        ...

    @property
    def history(self) -> History | None:
        """What the namespace's sockets on this node were sent, for recovery (None: recovery
        is off in this namespace)."""
        ...

    def ghost(self, sid: str) -> Member | None:
        """The ghost of ``sid`` (a socket kept for recovery), if it is one."""
        ...

    def release(self, sid: str) -> None:
        """The ghost of ``sid`` will not be recovered: it leaves its rooms and is forgotten."""
        ...

    def supersede(self, pid: str) -> bool:
        """If a connected socket has ``pid``, its client is back on another connection: the
        old one is closed as lost (so the socket is kept); returns whether that happened."""
        ...

    @property
    def name(self) -> Namespace:
        """The namespace's name."""
        ...

    @property
    def window(self) -> float:
        """Seconds a session of the namespace is kept for recovery."""
        ...

    def has_pid(self, pid: str) -> bool:
        """Whether a socket connected here has the session ``pid``."""
        ...

    def recoverable(self) -> list[RecoverableSocket]:
        """This node's sockets of the namespace that recovery knows (connected and kept)."""
        ...


class LocalSockets(Protocol):
    """This node's namespaces, as the adapter sees them."""

    def namespace(self, name: str) -> LocalNamespace | None:
        """The existing namespace ``name``."""
        ...

    def room_counts(self, namespace: str | None) -> dict[tuple[str, str], int]:
        """(namespace, room) -> local member count, for one namespace or all."""
        ...

    def all(self) -> list[Any]:
        """Every namespace (each a :class:`LocalNamespace`)."""
        ...


class SessionClaim(ABC):
    """A persisted session that a reconnecting client is recovering (see
    :meth:`Adapter.restore_session`): the node runs the namespace's middleware, if it must,
    then completes or cancels the claim. Nobody else can claim the session meanwhile."""

    #: What was kept of the socket: its sid, rooms and data come back with it.
    session: PersistedSession
    #: The number of the last packet with an offset the socket was sent (set by
    #: :meth:`complete`).
    last_offset: int = 0
    #: Whether the session came from another node: its socket has no ghost here and joins
    #: its rooms, whose interest the claim already holds (:meth:`Adapter.rooms_adopted`).
    handed_over: bool = False

    @abstractmethod
    async def complete(self) -> list[Frames]:
        """The packets the client missed, in order, each with this node's offset. From now on
        the session is the caller's, which puts its new socket in the ghost's place, or for a
        session handed over, in its rooms, in the event-loop step this coroutine returns in (a
        packet written after it must reach the new socket). Raises
        :class:`~roomcast.errors.RecoveryRefusedError` when exact recovery became impossible
        meanwhile (the session is then released, on whichever node kept it)."""

    @abstractmethod
    def cancel(self) -> None:
        """The connect did not go through: the session stays persisted for the rest of its
        window."""


class Adapter(ABC):
    """The contract every adapter keeps.

    Delivery
        :meth:`broadcast` delivers a packet to every socket the target reaches, cluster-wide,
        **once each** (a socket in several targeted rooms, or targeted through several topics,
        gets one copy), and to nobody else; this node's recipients get it before the call
        returns. Messages from one publisher to one target arrive in the order published.
        Volatile broadcasts may skip recipients that cannot take them right now; nothing else
        is dropped silently (a bus gap is counted). ``target.local`` restricts every operation
        to this node's sockets.
    Membership
        The node's namespaces report their sockets' room changes (:meth:`rooms_changed`) and
        namespace entries and exits. When :meth:`rooms_changed` returns for a join, a message
        published to those rooms afterwards by anyone, on any node, reaches the socket (a join
        is exact); in a cluster without a live router the join still succeeds locally, and
        the subscription goes live when a router comes back.
    Cluster-wide operations
        :meth:`broadcast_with_ack`, :meth:`fetch_sockets`, :meth:`add_sockets`,
        :meth:`del_sockets`, :meth:`disconnect_sockets` and :meth:`server_side_emit` act on
        this node's sockets and on the other nodes that may hold targeted sockets, asking only
        those (never every node to be safe), with an explicit set of expected responders and a
        deadline: a node that goes down while asked stops being waited for; one that does not
        answer in time makes the call raise :class:`~roomcast.errors.ClusterTimeoutError`
        (with the answers that did come) or, for acks, :class:`~roomcast.errors.
        AckTimeoutError` (with the responses so far). App data that cannot travel raises
        ``TypeError`` at the caller; a node that failed to serve a request answers with its
        error, raised at the caller as :class:`~roomcast.errors.ClusterRequestError`.
    Recovery
        In a namespace with recovery on, every broadcast EVENT without an ack that this node
        writes gets this node's next offset (:attr:`offsets`) as its last argument, framed once
        per node; each recipient's ``last_offset`` is set, and non-volatile ones are kept in
        the namespace's history (:mod:`~roomcast.node.recovery`). :meth:`persist_session`
        keeps a socket whose connection was lost for its window, as a ghost member of its
        rooms (the room interest of the node does not change), then releases it.
        :meth:`restore_session` claims it for a client that presents its pid and last offset;
        the claim's :meth:`~SessionClaim.complete` gives exactly the packets the client
        missed, or refuses: never a partial recovery. Something that is no offset, a number
        of this node's never given, a window passed, a history that dropped a packet the
        client may have missed: refused, with a named reason. An offset of another node (or
        incarnation) means the client got nothing this node numbered in the session.
        A pid of a session another node keeps (its tag names that node, or this node handed
        it over and points to where it went) is claimed from that node: this node holds the
        session's rooms, proved, before the old node cuts its history, and the claim's
        :meth:`~SessionClaim.complete` gives the old node's kept packets after the client's
        offset, then what reached this node meanwhile and the old node did not have (by bus
        message id), all numbered by this node; the old node lets its ghost go and forwards
        what still comes to it for the socket's sid. A node that is down, or does not answer
        within the request timeout: refused (``old node gone``); a standalone node has no
        other node to ask (``other node``). :meth:`sessions_settled` says when a node keeps no
        session any more (a draining node waits for it).
    Reads
        :meth:`room_table` and :meth:`names_a_socket` answer from local state (this node's
        registry and its replica of the others), never with a request.
    Lifecycle
        :meth:`start` returns once the adapter is ready (or raises, having undone everything it
        started); :meth:`stop` undoes it.
    """

    node_id: NodeId
    tag: NodeTag
    #: This node's offset counter (connection state recovery).
    offsets: Offsets
    #: Told every change of what makes this node's sessions recoverable.
    journal: Journal

    def __init__(self) -> None:
        self._server_handlers: dict[str, ServerEventHandler] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    @abstractmethod
    async def start(self, address: str) -> None:
        """Start serving; ``address`` is the URL other nodes and tools know this node by."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop serving (idempotent)."""

    # -- membership reports from this node's sockets ------------------------------------------

    @abstractmethod
    async def rooms_changed(
        self, namespace: Namespace, counts: dict[str, int], joined: list[str], left: list[str]
    ) -> None:
        """A socket joined or left rooms; ``counts`` are the rooms' new local sizes. Returns
        once the rooms joined receive every message published to them from now on."""

    @abstractmethod
    async def namespace_entered(self, namespace: Namespace) -> None:
        """A socket is about to connect to ``namespace``: returns once namespace-wide
        broadcasts reach it."""

    @abstractmethod
    def namespace_exited(self, namespace: Namespace) -> None:
        """A socket of ``namespace`` is gone."""

    def kept_for_others(self) -> dict[str, int] | None:
        """What this node keeps of other nodes' sessions now (sessions, packets, bytes,
        shadow: see :mod:`roomcast.node.keeper`); None for a standalone node."""
        return None

    @abstractmethod
    def socket_gone(self, namespace: Namespace, sid: str) -> None:
        """The socket ``sid`` of ``namespace`` (or its ghost) is gone for good (after
        :meth:`namespace_exited`): what was held for it alone can go."""

    @abstractmethod
    def rooms_adopted(self, namespace: Namespace, counts: dict[str, int]) -> None:
        """A socket recovered from another node joined rooms (``counts``: their new local
        sizes) whose subscriptions, and the namespace's, its claim made and proved: they are
        the socket's now, as if it had joined them (:meth:`rooms_changed`) and entered the
        namespace."""

    # -- delivery and cluster-wide operations -------------------------------------------------

    @abstractmethod
    def broadcast(self, target: Target, frames: Frames) -> None:
        """Deliver a pre-encoded packet to every socket ``target`` reaches, once each."""

    @abstractmethod
    async def broadcast_with_ack(
        self, target: Target, event: str, args: tuple[Any, ...], timeout: float | None
    ) -> list[Any]:
        """Broadcast an event with an ack id; returns every recipient's answer."""

    @abstractmethod
    async def fetch_sockets(self, target: Target) -> list[SocketInfo]:
        """Every socket ``target`` reaches, as a snapshot."""

    @abstractmethod
    async def add_sockets(self, target: Target, rooms: list[str]) -> None:
        """Make every socket ``target`` reaches join ``rooms``."""

    @abstractmethod
    async def del_sockets(self, target: Target, rooms: list[str]) -> None:
        """Make every socket ``target`` reaches leave ``rooms``."""

    @abstractmethod
    async def disconnect_sockets(self, target: Target, close: bool) -> None:
        """Disconnect every socket ``target`` reaches (``close``: their whole connections)."""

    @abstractmethod
    async def server_side_emit(
        self, event: str, args: tuple[Any, ...], timeout: float | None = None
    ) -> list[Any]:
        """Run ``event``'s server-event handler on every other node; returns their answers."""

    # -- connection state recovery ------------------------------------------------------------

    @abstractmethod
    def persist_session(self, session: PersistedSession) -> None:
        """Keep ``session`` (its socket, now a ghost of its namespace, lost its connection)
        for ``session.window`` seconds, then release it (:meth:`LocalNamespace.release`)
        unless it was restored."""

    @abstractmethod
    def release_session(self, pid: str) -> None:
        """Stop keeping ``pid`` before its window ends, and release its ghost."""

    @abstractmethod
    async def restore_session(self, namespace: str, pid: Any, offset: Any) -> SessionClaim:
        """Claim the persisted session ``pid`` of ``namespace`` for a client whose last packet
        had ``offset`` (None: it had none); the arguments are as the client sent them. The pid
        of a socket still connected here is taken over: its old connection is deemed lost (the
        client noticed before this node did) and the socket kept, then claimed. The pid of a
        session another node keeps is claimed from that node, and the claim returns once this
        node holds the session's rooms (see Recovery above); the other node keeps it until
        the claim completes or is cancelled. Raises
        :class:`~roomcast.errors.RecoveryRefusedError` with a named reason when it cannot be
        recovered exactly (a known session is then released, on whichever node keeps it: its
        client gets a fresh one)."""

    @abstractmethod
    async def sessions_settled(self) -> None:
        """Returns once this node keeps no session: each was recovered, handed over to the
        node its client came back to, or released (a draining node waits for this)."""

    def on_server_event(self, event: str, handler: ServerEventHandler) -> None:
        """Answer ``event`` from other nodes with ``handler(*args)``."""
        self._server_handlers[event] = handler

    def server_event_handler(self, event: str) -> ServerEventHandler | None:
        """The handler registered for ``event``."""
        return self._server_handlers.get(event)

    # -- reads --------------------------------------------------------------------------------

    @abstractmethod
    def names_a_socket(self, name: str) -> bool:
        """Whether ``name`` is (or could be) the sid of a socket of a node this adapter knows:
        such a name is that socket's private room, never a room to join."""

    @abstractmethod
    def node_address(self, tag: NodeTag) -> str | None:
        """The address (base URL) of the live node, other than this one, whose current
        incarnation has ``tag``: where a request for one of its sessions is forwarded. None
        for this node, an unknown tag, or a node that is down."""

    @abstractmethod
    def room_table(self, namespace: str | None = None) -> RoomTable:
        """Every room with members (in ``namespace``, or all), cluster-wide."""

    @abstractmethod
    def room_held(self, namespace: str, room: str) -> bool:
        """Whether some node (this one included) has members in ``room``: a local read of this
        node's registry and of the replica, cheap enough to ask before every send (the Admin
        UI asks it before sending anything to its viewers)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The adapter's view for the admin API (``standalone`` or the cluster's replica)."""

    def freshness(self) -> float:
        """Age in seconds of the stalest view of another node (0 when there is none)."""
        return 0.0
