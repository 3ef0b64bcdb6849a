"""Broadcasts: which sockets a message goes to, and collecting their acks.

A :class:`BroadcastOperator` is an immutable description (rooms, exceptions, flags) that the
server turns into deliveries: local sockets now, other nodes through the bus. Broadcasts with
acks share one ack id per node and a :class:`Collector` of the answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from roomcast.errors import AckTimeoutError
from roomcast.ids import room_names
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

if TYPE_CHECKING:
    from .sockets import Namespace, Socket, SocketInfo


class Collector:
    """Collects the acks of one broadcast with acks until every recipient answered."""

    __slots__ = ("ack_id", "expected", "future", "recipients", "responses")

    def __init__(self, future: asyncio.Future[list[Any]], ack_id: int = -1) -> None:
        self.future = future
        self.ack_id = ack_id
        self.expected = 0
        self.responses: list[Any] = []
        self.recipients: list[Socket] = []

    def release(self) -> None:
        """Forget the ack ids of recipients that never answered (the wait is over)."""
        for socket in self.recipients:
            if socket._acks.get(self.ack_id) is self:
                del socket._acks[self.ack_id]
        self.recipients.clear()

    def ack(self, args: list[Any]) -> None:
        self.responses.append(args[0] if args else None)
        self._check()

    def forget(self) -> None:
        """A recipient disconnected: it will never answer."""
        self.expected -= 1
        self._check()

    def _check(self) -> None:
        if len(self.responses) >= self.expected and not self.future.done():
            self.future.set_result(self.responses)


def write_each(sockets: Iterable[Socket], frames: Frames, volatile: bool) -> int:
    """Write one pre-built packet to each socket; returns how many took it."""
    n = 0
    for socket in sockets:
        if socket.conn.write(frames, volatile):
            n += 1
    return n


@dataclass(frozen=True, slots=True)
class BroadcastOperator:
    """An immutable description of a broadcast: rooms, exceptions, flags.

    ``to``/``in_``/``except_`` return new operators, so chains can be kept and reused.
    """

    namespace: Namespace
    rooms: frozenset[str] = frozenset()
    except_rooms: frozenset[str] = frozenset()
    except_sids: frozenset[str] = frozenset()
    volatile_: bool = False
    local_: bool = False
    timeout_: float | None = None

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Also target ``rooms`` (a socket in several targeted rooms gets one copy)."""
        return replace(self, rooms=self.rooms | frozenset(room_names(rooms)))

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Exclude members of ``rooms``, cluster-wide."""
        return replace(self, except_rooms=self.except_rooms | frozenset(room_names(rooms)))

    def except_sids_(self, *sids: str) -> BroadcastOperator:
        """Exclude these socket ids."""
        return replace(self, except_sids=self.except_sids | frozenset(sids))

    @property
    def volatile(self) -> BroadcastOperator:
        """Drop the message for any recipient that cannot take it right now."""
        return replace(self, volatile_=True)

    @property
    def local(self) -> BroadcastOperator:
        """Only sockets on this node."""
        return replace(self, local_=True)

    def timeout(self, seconds: float) -> BroadcastOperator:
        """The deadline of :meth:`emit_with_ack`."""
        return replace(self, timeout_=seconds)

    def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` to every targeted socket, once each. Encoded once."""
        enc = sio.encode_event(self.namespace.name, event, args)
        self.namespace.server.broadcast(self, Frames(enc))

    def send(self, *args: Any) -> None:
        """Emit a ``message`` event."""
        self.emit("message", *args)

    async def emit_with_ack(
        self, event: str, *args: Any, timeout: float | None = None
    ) -> list[Any]:
        """Send ``event`` and collect every recipient's ack (its first argument each).

        Raises :class:`AckTimeoutError` (with the answers so far in ``.responses``) when some
        recipients did not answer within ``timeout`` seconds.
        """
        return await self.namespace.server.broadcast_with_ack(
            self, event, args, timeout if timeout is not None else self.timeout_
        )

    async def fetch_sockets(self) -> list[SocketInfo]:
        """Every targeted socket, as :class:`SocketInfo`."""
        return await self.namespace.server.fetch_sockets(self)

    async def sockets_join(self, *rooms: str | Iterable[str]) -> None:
        """Make every targeted socket join ``rooms``."""
        await self.namespace.server.sockets_join(self, room_names(rooms))

    async def sockets_leave(self, *rooms: str | Iterable[str]) -> None:
        """Make every targeted socket leave ``rooms``."""
        await self.namespace.server.sockets_leave(self, room_names(rooms))

    async def disconnect_sockets(self, close: bool = False) -> None:
        """Disconnect every targeted socket (``close=True`` closes their connections)."""
        await self.namespace.server.disconnect_sockets(self, close)

    def local_recipients(self) -> Iterable[Socket]:
        """The targeted sockets on this node."""
        return self.namespace.registry.recipients(self.rooms, self.except_rooms, self.except_sids)


def start_broadcast_with_ack(
    op: BroadcastOperator, event: str, args: tuple[Any, ...] | list[Any]
) -> tuple[asyncio.Future[list[Any]], Collector]:
    """Write a broadcast with acks to the local recipients; returns the collector of answers."""
    ns = op.namespace
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[Any]] = loop.create_future()
    ack_id = ns.next_ack_id()
    collector = Collector(future, ack_id)
    frames = Frames(sio.encode_event(ns.name, event, args, ack_id))
    for socket in op.local_recipients():
        if socket.conn.write(frames, op.volatile_):
            socket._acks[ack_id] = collector
            collector.recipients.append(socket)
            collector.expected += 1
    collector._check()
    return future, collector


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
