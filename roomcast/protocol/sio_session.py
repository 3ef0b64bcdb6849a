"""The Socket.IO state of one connection (socket.io's ``Client``), as a pure state machine.

Sans-I/O, like :class:`~roomcast.protocol.engineio.EngineSession`: :class:`SocketIOSession`
takes the connection's Engine.IO messages and the time in, and hands typed events out
(NamedTuples: one is made per packet, and a tuple is cheap to build). It owns what the protocol
says about a connection: which namespaces are connecting or connected, the
connect deadline, the per-connection namespace limit, and the table of acks the server waits
for. What the node runs (middleware, handlers) and what an ack resolves (a callback, a
broadcast's collector, a future) are the node's; the session keeps the latter as opaque
*waiters*.

Namespace states, per connection::

    (none) --CONNECT--> CONNECTING --connected()--> CONNECTED --client DISCONNECT--> (none)
                        CONNECTING --refused()----> (none)
                        CONNECTED  --disconnected()--> DISCONNECTED --CONNECT--> CONNECTING

Forbidden input is a :class:`~roomcast.errors.RemoteProtocolError` with a named reason (the node
closes the connection with it): a CONNECT for a namespace already connecting or connected
(``duplicate connect``), an EVENT, ACK or DISCONNECT for a namespace the client never connected
(``namespace not connected``), one namespace too many (``too many namespaces``), and every
decoding error of :class:`~roomcast.protocol.socketio.Decoder`. A packet for a namespace the
*server* disconnected is not an offence (the client may have sent it before it learned): it is a
:class:`LatePacket` event, which the node counts and drops.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from roomcast.errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio

W = TypeVar("W")  #: what the node waits for an ack with


class NamespaceState(enum.Enum):
    """Where a namespace is on one connection."""

    CONNECTING = "connecting"  #: CONNECT received; the node runs its middleware
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  #: by the server; the client may not know yet


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The per-connection limits."""

    max_namespaces: int = 10
    #: Seconds a connection may stay connected to no namespace.
    connect_timeout: float = 45.0
    decoder: sio.DecoderLimits = field(default_factory=sio.DecoderLimits)


class ConnectRequested(NamedTuple):
    """The client asks to connect to ``namespace``; the node answers with :meth:`connected`
    or :meth:`refused`."""

    namespace: str
    auth: Any


class EventReceived(NamedTuple):
    """An EVENT on a connected namespace; ``ack_id`` when the client wants an answer."""

    namespace: str
    args: list[Any]
    ack_id: int | None


class AckReceived(NamedTuple, Generic[W]):
    """The client acknowledged an emit the server waits for: ``waiter`` gets ``args``."""

    namespace: str
    waiter: W
    args: list[Any]


class DisconnectReceived(NamedTuple):
    """The client left a connected namespace."""

    namespace: str


class LatePacket(NamedTuple):
    """A packet for a namespace the server disconnected, sent before the client knew."""

    namespace: str
    type: sio.PacketType


class ConnectTimedOut(NamedTuple):
    """No namespace was connected within the connect timeout: the connection must close
    with ``connect timeout``."""

    after: float  #: the deadline that passed


SocketIOEvent = (
    ConnectRequested
    | EventReceived
    | AckReceived[Any]
    | DisconnectReceived
    | LatePacket
    | ConnectTimedOut
)


class SocketIOSession(Generic[W]):
    """One connection's Socket.IO state. Time is a float in seconds, passed in."""

    __slots__ = ("_acks", "_deadline", "_states", "decoder", "limits")

    def __init__(self, limits: SessionLimits, now: float) -> None:
        self.limits = limits
        self.decoder = sio.Decoder(limits.decoder)
        self._states: collections.OrderedDict[str, NamespaceState] = collections.OrderedDict()
        self._deadline: float | None = now + limits.connect_timeout
        self._acks: dict[tuple[str, int], W] = {}

    # -- state --------------------------------------------------------------------------------

    def state(self, namespace: str) -> NamespaceState | None:
        """Where ``namespace`` is on this connection (None: never connected, or left)."""
        return self._states.get(namespace)

    def _count(self, state: NamespaceState) -> int:
        return sum(1 for s in self._states.values() if s is state)

    # -- input --------------------------------------------------------------------------------

    def receive(self, data: str | bytes) -> list[SocketIOEvent]:
        """Feed one Engine.IO MESSAGE; returns what it means (nothing while a binary packet
        awaits attachments). Raises RemoteProtocolError on anything forbidden."""
        packet = self.decoder.feed(data)
        if packet is None:
            return []
        kind = packet.type
        ns = packet.namespace
        state = self._states.get(ns)
        if kind is sio.PacketType.CONNECT:
            return [self._connect(ns, state, packet.data)]
        if kind is sio.PacketType.CONNECT_ERROR:
            raise RemoteProtocolError(reasons.PARSE_ERROR, "client sent CONNECT_ERROR")
        if state is not NamespaceState.CONNECTED:
            if state is NamespaceState.DISCONNECTED:
                return [LatePacket(ns, kind)]
            raise RemoteProtocolError(reasons.NAMESPACE_NOT_CONNECTED, f"{kind.name} for {ns}")
        if kind is sio.PacketType.EVENT or kind is sio.PacketType.BINARY_EVENT:
            return [EventReceived(ns, packet.data, packet.id)]
        if kind is sio.PacketType.ACK or kind is sio.PacketType.BINARY_ACK:
            if packet.id is None:  # the decoder refuses it already
                raise RemoteProtocolError(reasons.INVALID_ACK_ID, "ACK without an id")
            waiter = self._acks.pop((ns, packet.id), None)
            # An ack nobody waits for any more (its wait timed out) is not an offence.
            return [] if waiter is None else [AckReceived(ns, waiter, packet.data)]
        # DISCONNECT
        del self._states[ns]
        return [DisconnectReceived(ns)]

    def _connect(self, ns: str, state: NamespaceState | None, auth: Any) -> ConnectRequested:
        if state is NamespaceState.CONNECTING or state is NamespaceState.CONNECTED:
            raise RemoteProtocolError(reasons.DUPLICATE_CONNECT, ns)
        live = self._count(NamespaceState.CONNECTING) + self._count(NamespaceState.CONNECTED)
        # Connects still under way count: a burst of CONNECTs must not get past the limit.
        if live >= self.limits.max_namespaces:
            raise RemoteProtocolError(reasons.TOO_MANY_NAMESPACES, f"limit {live}")
        self._states.pop(ns, None)
        self._states[ns] = NamespaceState.CONNECTING
        return ConnectRequested(ns, auth if auth is not None else {})

    # -- what the node decided ----------------------------------------------------------------

    def connected(self, namespace: str) -> None:
        """The node accepted the connect: the namespace is connected (and the connect deadline
        no longer applies)."""
        self._require(namespace, NamespaceState.CONNECTING, "connected")
        self._states[namespace] = NamespaceState.CONNECTED
        self._deadline = None

    def refused(self, namespace: str) -> None:
        """The node refused the connect (CONNECT_ERROR sent), or dropped it (the connection
        closed meanwhile)."""
        self._require(namespace, NamespaceState.CONNECTING, "refused")
        del self._states[namespace]

    def disconnected(self, namespace: str) -> list[W]:
        """The namespace's socket is gone (closed by the server, or with its connection);
        returns the waiters of its acks, which will never come."""
        state = self._states.get(namespace)
        if state is NamespaceState.CONNECTED:
            self._states[namespace] = NamespaceState.DISCONNECTED
            self._forget_disconnected()
        waiters = [w for (ns, _), w in self._acks.items() if ns == namespace]
        if waiters:
            self._acks = {k: w for k, w in self._acks.items() if k[0] != namespace}
        return waiters

    def _forget_disconnected(self) -> None:
        # A client can cycle through namespace names: remember only the last few it lost.
        gone = [ns for ns, s in self._states.items() if s is NamespaceState.DISCONNECTED]
        for ns in gone[: max(0, len(gone) - self.limits.max_namespaces)]:
            del self._states[ns]

    def _require(self, namespace: str, state: NamespaceState, what: str) -> None:
        if self._states.get(namespace) is not state:
            raise LocalProtocolError("invalid state", f"{what}: {namespace} is not {state.value}")

    # -- acks ---------------------------------------------------------------------------------

    def expect_ack(self, namespace: str, ack_id: int, waiter: W) -> None:
        """The server sent ``ack_id`` on ``namespace`` and waits with ``waiter``."""
        self._require(namespace, NamespaceState.CONNECTED, "expect_ack")
        self._acks[(namespace, ack_id)] = waiter

    def forget_ack(self, namespace: str, ack_id: int, waiter: W | None = None) -> None:
        """Stop waiting for ``ack_id`` (its wait is over); with ``waiter``, only if it is the
        one waiting."""
        key = (namespace, ack_id)
        if waiter is None or self._acks.get(key) is waiter:
            self._acks.pop(key, None)

    def pending_acks(self, namespace: str) -> int:
        """How many acks the server waits for on ``namespace``."""
        return sum(1 for ns, _ in self._acks if ns == namespace)

    # -- time ---------------------------------------------------------------------------------

    @property
    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must be called (None: no deadline)."""
        return self._deadline

    def on_timer(self, now: float) -> list[SocketIOEvent]:
        """The connect deadline: a connection with no namespace connected by then must go."""
        if self._deadline is None or now < self._deadline:
            return []
        self._deadline = None
        if self._count(NamespaceState.CONNECTED):
            return []
        return [ConnectTimedOut(now)]
