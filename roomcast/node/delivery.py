"""Cluster-wide delivery: broadcasts and the operations on the sockets they target.

Every operation of a :class:`~roomcast.node.broadcast.BroadcastOperator` acts on this node's
sockets at once and, unless it is ``.local``, on the other nodes that the membership replica
says hold targeted sockets: one envelope per target topic for an emit, a request with an
explicit responder set and a timeout for everything that needs an answer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from roomcast.errors import AckTimeoutError
from roomcast.ids import NodeId
from roomcast.protocol.frames import Frames

from .broadcast import BroadcastOperator, start_broadcast_with_ack, wait_acks, write_each
from .cluster import ClusterLink, ClusterTimeoutError, _target, infos_from_replies
from .sockets import SocketInfo

if TYPE_CHECKING:
    from roomcast.config import Settings

    from .server import NodeStats


class Delivery:
    """The :class:`~roomcast.node.server.Server`'s broadcasting half."""

    cluster: ClusterLink | None
    settings: Settings
    stats: NodeStats

    def broadcast(self, op: BroadcastOperator, frames: Frames) -> None:
        """Deliver a pre-encoded packet to every targeted socket in the cluster, once each.

        Local sockets get it now; other nodes get one envelope per target topic.
        """
        self.stats.messages_out += write_each(op.local_recipients(), frames, op.volatile_)
        if self.cluster is not None and not op.local_:
            self.cluster.publish(op, frames)

    def _remote(self, op: BroadcastOperator) -> set[NodeId]:
        if self.cluster is None or op.local_:
            return set()
        return self.cluster.involved(op)

    async def broadcast_with_ack(
        self, op: BroadcastOperator, event: str, args: tuple[Any, ...], timeout: float | None
    ) -> list[Any]:
        """Broadcast with acks; returns every recipient's answer, cluster-wide.

        Only the nodes that the replica says hold recipients are asked; each answers with its
        recipients' acks (or none), so the wait ends as soon as all have answered.
        """
        future, collector = start_broadcast_with_ack(op, event, args)
        nodes = self._remote(op)
        if not nodes:
            return await wait_acks(future, collector, timeout)
        assert self.cluster is not None
        wait = timeout if timeout is not None else self.settings.cluster.request_timeout_ms / 1000
        payload = {
            **_target(op),
            "event": event,
            "args": list(args),
            "volatile": op.volatile_,
            "timeout": wait,
        }
        remote_task = asyncio.ensure_future(
            self.cluster.request(nodes, "ack_broadcast", payload, wait + 0.5)
        )
        responses: list[Any] = []
        complete = True
        try:
            responses.extend(await wait_acks(future, collector, wait))
        except AckTimeoutError as exc:
            responses.extend(exc.responses)
            complete = False
        try:
            replies = await remote_task
        except ClusterTimeoutError as exc:
            replies = exc.partial
            complete = False
        for reply in replies.values():
            got = reply.get("responses", []) if isinstance(reply, dict) else []
            responses.extend(got)
            if not isinstance(reply, dict) or "error" in reply or len(got) < reply["expected"]:
                complete = False
        if not complete:
            raise AckTimeoutError("some recipients did not acknowledge in time", responses)
        return responses

    async def fetch_sockets(self, op: BroadcastOperator) -> list[SocketInfo]:
        """The targeted sockets, cluster-wide."""
        out = [s.info() for s in op.local_recipients()]
        nodes = self._remote(op)
        if nodes:
            assert self.cluster is not None
            out.extend(infos_from_replies(await self.cluster.request(nodes, "fetch", _target(op))))
        return out

    async def _apply_remote(self, op: BroadcastOperator, name: str, **extra: Any) -> None:
        nodes = self._remote(op)
        if nodes:
            assert self.cluster is not None
            await self.cluster.request(nodes, name, {**_target(op), **extra})

    async def sockets_join(self, op: BroadcastOperator, rooms: list[str]) -> None:
        """Make the targeted sockets join ``rooms``, cluster-wide."""
        for socket in list(op.local_recipients()):
            await socket.namespace.add_to_rooms(socket, rooms)
        await self._apply_remote(op, "join", args=rooms)

    async def sockets_leave(self, op: BroadcastOperator, rooms: list[str]) -> None:
        """Make the targeted sockets leave ``rooms``, cluster-wide."""
        for socket in list(op.local_recipients()):
            await socket.namespace.remove_from_rooms(socket, rooms)
        await self._apply_remote(op, "leave", args=rooms)

    async def disconnect_sockets(self, op: BroadcastOperator, close: bool) -> None:
        """Disconnect the targeted sockets, cluster-wide."""
        for socket in list(op.local_recipients()):
            socket.disconnect(close)
        await self._apply_remote(op, "disconnect", close=close)
