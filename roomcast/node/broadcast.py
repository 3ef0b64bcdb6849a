"""Broadcast operators: socket.io's ``io.to(room).except(room).emit(...)`` chain.

A :class:`BroadcastOperator` is an immutable :class:`~roomcast.cluster.routing.Target` and the
:class:`~roomcast.node.adapter.Adapter` that carries out what is asked of it: ``emit`` reaches
every targeted socket in the cluster, once each; ``.local`` only this node's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from roomcast.cluster.routing import Target, TargetChain
from roomcast.ids import room_names
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

from .adapter import Adapter, SocketInfo


class BroadcastOperator(TargetChain):
    """An immutable description of a broadcast (``to``/``in_``/``except_``/``volatile`` return
    new operators, so chains can be kept and reused) and the operations on its sockets.

    A plain class with slots rather than a frozen dataclass: operators are made on the hot
    path (several per relayed publish), and a frozen dataclass's ``__init__`` and
    ``dataclasses.replace`` cost several times more.
    """

    __slots__ = ("ack_timeout", "adapter", "target")

    def __init__(self, adapter: Adapter, target: Target, ack_timeout: float | None = None) -> None:
        self.adapter = adapter
        self.target = target
        #: The deadline of :meth:`emit_with_ack` (seconds; None: the adapter's request timeout).
        self.ack_timeout = ack_timeout

    def __repr__(self) -> str:
        return f"BroadcastOperator({self.target!r}, ack_timeout={self.ack_timeout!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BroadcastOperator):
            return NotImplemented
        return (self.adapter, self.target, self.ack_timeout) == (
            other.adapter,
            other.target,
            other.ack_timeout,
        )

    def __hash__(self) -> int:
        return hash((id(self.adapter), self.target, self.ack_timeout))

    def retarget(self, target: Target) -> BroadcastOperator:
        return BroadcastOperator(self.adapter, target, self.ack_timeout)

    def except_sockets(self, *sids: str) -> BroadcastOperator:
        """Exclude these socket ids."""
        t = self.target
        return self.retarget(t._replace(except_sids=t.except_sids | frozenset(sids)))

    @property
    def local(self) -> BroadcastOperator:
        """Only sockets on this node."""
        return self.retarget(self.target._replace(local=True))

    def timeout(self, seconds: float) -> BroadcastOperator:
        """The deadline of :meth:`emit_with_ack`."""
        return BroadcastOperator(self.adapter, self.target, seconds)

    def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` to every targeted socket, once each. Encoded once."""
        enc = sio.encode_event(self.target.namespace, event, args)
        self.adapter.broadcast(self.target, Frames(enc))

    def send(self, *args: Any) -> None:
        """Emit a ``message`` event."""
        self.emit("message", *args)

    async def emit_with_ack(
        self, event: str, *args: Any, timeout: float | None = None
    ) -> list[Any]:
        """Send ``event`` and collect every recipient's ack (its first argument each).

        Raises :class:`~roomcast.errors.AckTimeoutError` (with the answers so far in
        ``.responses``) when some recipients did not answer within ``timeout`` seconds.
        """
        deadline = timeout if timeout is not None else self.ack_timeout
        return await self.adapter.broadcast_with_ack(self.target, event, args, deadline)

    async def fetch_sockets(self) -> list[SocketInfo]:
        """Every targeted socket, as :class:`~roomcast.node.adapter.SocketInfo`."""
        return await self.adapter.fetch_sockets(self.target)

    async def sockets_join(self, *rooms: str | Iterable[str]) -> None:
        """Make every targeted socket join ``rooms``."""
        await self.adapter.add_sockets(self.target, room_names(rooms))

    async def sockets_leave(self, *rooms: str | Iterable[str]) -> None:
        """Make every targeted socket leave ``rooms``."""
        await self.adapter.del_sockets(self.target, room_names(rooms))

    async def disconnect_sockets(self, close: bool = False) -> None:
        """Disconnect every targeted socket (``close=True`` closes their connections)."""
        await self.adapter.disconnect_sockets(self.target, close)


class Broadcasts(ABC):
    """socket.io's shortcuts from a namespace (or the server, for its root namespace) to a
    broadcast operator over all of its sockets: ``ns.to(room).emit(...)``, ``ns.emit(...)``."""

    __slots__ = ()

    @abstractmethod
    def operator(self) -> BroadcastOperator:
        """A broadcast to every socket, to narrow down."""

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Broadcast to ``rooms``."""
        return self.operator().to(*rooms)

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Broadcast to the namespace except ``rooms``."""
        return self.operator().except_(*rooms)

    @property
    def volatile(self) -> BroadcastOperator:
        """A volatile namespace-wide broadcast."""
        return self.operator().volatile

    @property
    def local(self) -> BroadcastOperator:
        """A namespace-wide broadcast to this node's sockets only."""
        return self.operator().local

    def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` to every socket of the namespace."""
        self.operator().emit(event, *args)

    async def emit_with_ack(
        self, event: str, *args: Any, timeout: float | None = None
    ) -> list[Any]:
        """Send ``event`` to every socket and collect their acks."""
        return await self.operator().emit_with_ack(event, *args, timeout=timeout)

    async def fetch_sockets(self) -> list[SocketInfo]:
        """Every socket of the namespace."""
        return await self.operator().fetch_sockets()

    async def sockets_join(self, *rooms: str | Iterable[str]) -> None:
        """Make every socket join ``rooms``."""
        await self.operator().sockets_join(*rooms)

    async def sockets_leave(self, *rooms: str | Iterable[str]) -> None:
        """Make every socket leave ``rooms``."""
        await self.operator().sockets_leave(*rooms)

    async def disconnect_sockets(self, close: bool = False) -> None:
        """Disconnect every socket."""
        await self.operator().disconnect_sockets(close)
