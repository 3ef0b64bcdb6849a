"""The adapter of a standalone node: every socket is one of this node's.

:class:`LocalAdapter` keeps the :class:`~roomcast.node.adapter.Adapter` contract with no other
node to reach. The cluster adapter extends it: each operation's local half (this node's
recipients) is the function here, and the same function serves other nodes' requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from roomcast.cluster.routing import Target
from roomcast.errors import AckTimeoutError, RoomcastError
from roomcast.ids import Namespace, NodeId, NodeTag, tag_of_sid
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

from .adapter import Adapter, Collector, LocalSockets, Member, RoomTable, SocketInfo
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

    async def start(self, address: str) -> None:
        pass  # nothing to reach

    async def stop(self) -> None:
        pass

    # -- membership: nothing to tell anyone ---------------------------------------------------

    async def rooms_changed(
        self, namespace: Namespace, counts: dict[str, int], joined: list[str], left: list[str]
    ) -> None:
        pass

    async def namespace_entered(self, namespace: Namespace) -> None:
        pass

    def namespace_exited(self, namespace: Namespace) -> None:
        pass

    # -- the local half of each operation -----------------------------------------------------

    def recipients(self, target: Target) -> Iterable[Member]:
        """This node's sockets that ``target`` reaches."""
        ns = self.sockets.namespace(target.namespace)
        if ns is None:
            return ()
        return ns.recipients(target.rooms, target.except_rooms, target.except_sids)

    def deliver(self, target: Target, frames: Frames) -> None:
        """Write a packet to this node's recipients."""
        self.stats.messages_out += write_each(self.recipients(target), frames, target.volatile)

    def emit_with_ack(
        self, target: Target, event: str, args: tuple[Any, ...]
    ) -> tuple[asyncio.Future[list[Any]], Collector]:
        """Write an event with one ack id to this node's recipients; returns the collector of
        their answers."""
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
        collector.check()
        return future, collector

    def snapshot(self, target: Target) -> list[SocketInfo]:
        """This node's recipients, as snapshots."""
        return [m.info() for m in self.recipients(target)]

    async def apply(
        self, target: Target, action: str, rooms: list[str], close: bool
    ) -> tuple[int, list[Exception]]:
        """Make this node's recipients ``join`` or ``leave`` rooms, or ``disconnect``; returns
        how many were asked and the refusals (a limit, a refused name: that socket only, the
        others still act)."""
        members = list(self.recipients(target))
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

    def names_a_socket(self, name: str) -> bool:
        return tag_of_sid(name) == self.tag

    def node_address(self, tag: NodeTag) -> str | None:
        return None  # there is no other node

    def room_table(self, namespace: str | None = None) -> RoomTable:
        return {
            key: {str(self.node_id): count}
            for key, count in self.sockets.room_counts(namespace).items()
        }

    def describe(self) -> dict[str, Any]:
        return {"standalone": True}
