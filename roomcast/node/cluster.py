"""The cluster adapter: interest routing over the bus, and requests to the involved nodes only.

:class:`ClusterAdapter` keeps the :class:`~roomcast.node.adapter.Adapter` contract for a node
that is a :class:`~roomcast.node.member.ClusterMember`. It knows namespaces, rooms and
pre-encoded packets, and the bus's small API (publish, subscribe with proof, unsubscribe),
never ZeroMQ itself.

* A room's topic is subscribed when its first local member joins (the join returns once the
  subscription is live at the router) and unsubscribed when the last one leaves; a namespace's
  topic likewise follows its first and last local socket.
* A broadcast is delivered locally by the origin and published once per target topic
  (:func:`roomcast.cluster.routing.topics`); a receiver delivers each message once (copies from
  several topics are dropped by message id), writing the frames encoded at the origin.
* An operation that needs answers is a typed request (:mod:`roomcast.node.requests`) sent to the
  nodes the membership replica names, with an explicit responder set and a deadline; each kind
  is served by the same local function the origin runs for its own sockets.
* A session another node keeps is claimed from it with typed requests, and handed over
  (:mod:`roomcast.node.handover`); this node serves other nodes' claims on its own sessions.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from roomcast.cluster import routing, wire
from roomcast.cluster.routing import Target
from roomcast.cluster.wire import Topic
from roomcast.config import Settings
from roomcast.errors import AckTimeoutError, ClusterRequestError, ClusterTimeoutError
from roomcast.ids import Namespace, NodeId, NodeTag, tag_of_sid
from roomcast.protocol.frames import Frames

from . import requests as rq
from .adapter import LocalSockets, RoomTable, SessionClaim, SocketInfo, Spawn
from .handover import Handovers
from .health import Health
from .keeper import Keeping
from .local import LocalAdapter, wait_acks, write_each
from .member import ClusterMember
from .stats import NodeStats

log = logging.getLogger("roomcast.cluster")


@dataclass
class _Pending:
    kind: rq.Kind
    waiting: set[NodeId]
    future: asyncio.Future[None]
    replies: dict[NodeId, rq.Reply] = field(default_factory=dict)

    def settle(self) -> None:
        if not self.waiting and not self.future.done():
            self.future.set_result(None)


class ClusterAdapter(LocalAdapter):
    """The adapter of a node in a cluster (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        node_id: NodeId,
        incarnation: int,
        sockets: LocalSockets,
        stats: NodeStats,
        health: Health,
        spawn: Spawn,
        connections: Callable[[], int],
    ) -> None:
        self.member = ClusterMember(
            settings, node_id, incarnation, health, connections, self._on_bus, self._node_down
        )
        super().__init__(node_id, self.member.tag, sockets, stats)
        self.cs = settings.cluster
        self.replica = self.member.replica
        self.bus = self.member.bus
        self._spawn = spawn
        self._msg_ids = itertools.count(1)
        self._req_ids = itertools.count(1)
        self._seen: collections.OrderedDict[tuple[str, int, int], None] = collections.OrderedDict()
        self._pending: dict[int, _Pending] = {}
        self.received_rooms = 0  #: room envelopes delivered here (for inspection and tests)
        self.keeping = Keeping(
            sockets,
            self.offsets,
            node_id,
            incarnation,
            self.bus,
            self.replica,
            spawn,
            self.request,
            self.member.join_timeout,
            self.cs.down_after_ms / 1000,
            settings.limits.max_rooms_per_socket,
            stats,
            self.point,
        )
        self.journal = self.keeping.log
        self._keeping_task: asyncio.Task[None] | None = None
        self.keeping.on_gone = lambda: self.handovers.nodes_down()
        self.handovers = Handovers(
            self,
            self.keeping,
            self.bus,
            self.replica,
            self.request,
            spawn,
            self.member.join_timeout,
            self.cs.request_timeout_ms / 1000,
            settings.limits.max_rooms_per_socket,
            lambda: next(self._msg_ids),
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, address: str) -> None:
        await self.member.start(address)
        self._keeping_task = asyncio.ensure_future(self._follow_keepers())

    async def stop(self) -> None:
        if self._keeping_task is not None:
            self._keeping_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeping_task
        self.keeping.stop()
        self.stop_recovery()
        await self.member.stop()
        for pending in self._pending.values():
            pending.future.cancel()

    # -- membership ---------------------------------------------------------------------------

    async def _follow_keepers(self) -> None:
        """Which node keeps this one, and which kept nodes died, as the replica changes."""
        while True:
            try:
                self.keeping.reconcile()
            except Exception:
                log.exception("following the keepers failed")
            await asyncio.sleep(0.1)

    async def rooms_changed(
        self, namespace: Namespace, counts: dict[str, int], joined: list[str], left: list[str]
    ) -> None:
        self.member.room_counts(namespace, counts)
        for room in left:
            self.bus.unsubscribe(wire.room_topic(namespace, room))
        keeping = self.keeping
        kept = keeping.log.keeper is not None and self._recovers(namespace)
        if kept:
            keeping.unmirrored(namespace, [r for r in left if not counts.get(r)])
        if joined:
            timeout = self.member.join_timeout
            loop = asyncio.get_running_loop()
            start = loop.time()
            # With recovery on, this node's keeper hears these rooms too before the join
            # returns: what is published to them from now on survives this node.
            mirror = keeping.mirror(namespace, joined, False) if kept else None
            try:
                await asyncio.gather(
                    *(self.bus.subscribe(wire.room_topic(namespace, r), timeout) for r in joined),
                    *((mirror,) if mirror is not None else ()),
                )
            except TimeoutError:
                # No router answered: the socket is in its rooms here and the subscription is
                # set (ZeroMQ sends it when a router comes back); other nodes' messages wait
                # for that. Serving local clients beats failing their joins.
                log.warning("rooms %s of %s joined without a live router", joined, namespace)
            if self.stats.join_seconds is not None:
                self.stats.join_seconds.observe(loop.time() - start)

    async def namespace_entered(self, namespace: Namespace) -> None:
        kept = self.keeping.log.keeper is not None and self._recovers(namespace)
        mirror = self.keeping.mirror(namespace, [], True) if kept else None
        try:
            await asyncio.gather(
                self.bus.subscribe(wire.namespace_topic(namespace), self.member.join_timeout),
                *((mirror,) if mirror is not None else ()),
            )
        except TimeoutError:
            log.warning("socket connected to %s without a live router", namespace)

    def _recovers(self, namespace: str) -> bool:
        ns = self.sockets.namespace(namespace)
        return ns is not None and ns.history is not None

    def namespace_exited(self, namespace: Namespace) -> None:
        self.bus.unsubscribe(wire.namespace_topic(namespace))

    def kept_for_others(self) -> dict[str, int]:
        return self.keeping.totals()

    def socket_gone(self, namespace: Namespace, sid: str) -> None:
        self.handovers.sid_gone(namespace, sid)

    def rooms_adopted(self, namespace: Namespace, counts: dict[str, int]) -> None:
        self.member.room_counts(namespace, counts)

    # -- broadcasting -------------------------------------------------------------------------

    def broadcast(self, target: Target, frames: Frames) -> None:
        if target.local:
            self.deliver(target, frames)
            return
        msg_id = next(self._msg_ids)
        # Kept with the bus message it goes out as: a node this one hands a session over to
        # gets it from the bus too, and drops the copy it has.
        source = (str(self.node_id), self.member.incarnation, msg_id)
        if self.handovers.incoming:
            self.handovers.offer(target.namespace, target, frames, source)
        self.deliver(target, frames, source)
        ns = self.sockets.namespace(target.namespace)
        local_sids = ns.sids() if ns is not None else ()
        body = routing.room_message(msg_id, target, frames.ws)
        topics = routing.topics(
            target,
            local_sids=local_sids,
            sid_node=self._is_live_tag,
            max_room_topics=self.cs.max_room_topics,
        )
        for topic in topics:
            self.bus.publish(topic, body)
        if self.keeping.active:
            self.keeping.published(topics, body)
        if target.rooms and self.moved_sids:
            self.handovers.forward(body)  # sids this node handed over: no topic reaches them

    def _is_live_tag(self, tag: NodeTag) -> bool:
        return self.replica.node_of_tag(tag) is not None

    def _on_room(self, header: wire.Header, msg: wire.RoomMessage) -> None:
        if len(msg.rooms) > 1:
            key = (header.origin, header.incarnation, msg.msg_id)
            seen = self._seen
            if key in seen:
                return
            seen[key] = None
            if len(seen) > self.cs.dedup_window:
                seen.popitem(last=False)
        if msg.rooms and self.moved_sids:
            self.handovers.forward(msg)
        ns = self.sockets.namespace(msg.namespace)
        if ns is None:
            return
        if self.handovers.incoming:
            source = (header.origin, header.incarnation, msg.msg_id)
            self.handovers.offer(msg.namespace, msg, Frames.from_ws(msg.ws), source)
        self.received_rooms += 1
        recipients = ns.recipients(msg.rooms, msg.except_rooms, msg.except_sids)
        delivered = 0
        if recipients:
            frames = Frames.from_ws(msg.ws)
            history = ns.history
            try:
                if history is None:
                    delivered = write_each(recipients, frames, msg.volatile)
                else:
                    # Numbered by this node, as it writes it: re-framed once here, for every
                    # recipient (the origin's offset is its own business).
                    source = (header.origin, header.incarnation, msg.msg_id)
                    to = (msg.rooms, msg.except_rooms, msg.except_sids)
                    delivered = self.write_numbered(
                        msg.namespace, history, recipients, frames, msg.volatile, to, source
                    )
            except ValueError:  # a polling recipient needs the packet, and the frames hold none
                log.warning("undecodable frames in a room message from %s", header.origin)
        self.count_broadcast(delivered, from_bus=True)

    # -- cluster-wide operations --------------------------------------------------------------

    def involved(self, target: Target) -> set[NodeId]:
        """The remote nodes that may hold sockets ``target`` reaches."""
        if target.local:
            return set()
        if not target.rooms:
            nodes = set(self.replica.alive())
        else:
            nodes = self.replica.nodes_with_rooms(target.namespace, target.rooms)
            for room in target.rooms:
                tag = tag_of_sid(room)
                node = self.replica.node_of_tag(tag) if tag is not None else None
                if node is not None:
                    nodes.add(node)
        nodes.discard(self.node_id)
        return nodes

    async def broadcast_with_ack(
        self, target: Target, event: str, args: tuple[Any, ...], timeout: float | None
    ) -> list[Any]:
        """Only the nodes that the replica says hold recipients are asked; each answers with
        its recipients' acks, so the wait ends as soon as all have answered."""
        nodes = self.involved(target)
        if not nodes:
            future, collector = self.emit_with_ack(target, event, args)
            return await wait_acks(future, collector, timeout)
        wait = timeout if timeout is not None else self.cs.request_timeout_ms / 1000
        request_id = self._send(nodes, rq.BroadcastWithAck(target, event, args, wait))
        remote_task = asyncio.ensure_future(self._collect(request_id, wait + 0.5))
        future, collector = self.emit_with_ack(target, event, args)
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
            if isinstance(reply, rq.Acks):
                responses.extend(reply.responses)
                complete = complete and len(reply.responses) >= reply.expected
            else:
                complete = False
        if not complete:
            raise AckTimeoutError("some recipients did not acknowledge in time", responses)
        return responses

    async def fetch_sockets(self, target: Target) -> list[SocketInfo]:
        out = self.snapshot(target)
        for reply in (await self._ask(rq.FetchSockets(target))).values():
            if isinstance(reply, rq.Sockets):
                out.extend(reply.sockets)
        return out

    async def add_sockets(self, target: Target, rooms: list[str]) -> None:
        await self.apply_here(target, "join", rooms, False)
        await self._ask(rq.AddSockets(target, tuple(rooms)))

    async def del_sockets(self, target: Target, rooms: list[str]) -> None:
        await self.apply_here(target, "leave", rooms, False)
        await self._ask(rq.DelSockets(target, tuple(rooms)))

    async def disconnect_sockets(self, target: Target, close: bool) -> None:
        await self.apply_here(target, "disconnect", [], close)
        await self._ask(rq.DisconnectSockets(target, close))

    async def server_side_emit(
        self, event: str, args: tuple[Any, ...], timeout: float | None = None
    ) -> list[Any]:
        nodes = set(self.replica.alive())
        replies = await self.request(nodes, rq.ServerSideEmit(event, args), timeout)
        return [r.value if isinstance(r, rq.Answer) else None for r in replies.values()]

    async def _ask(
        self, request: rq.FetchSockets | rq.AddSockets | rq.DelSockets | rq.DisconnectSockets
    ) -> dict[NodeId, rq.Reply]:
        """Send a targeted request to the involved nodes; a node's failure is raised."""
        replies = await self.request(self.involved(request.target), request)
        for node, reply in replies.items():
            if isinstance(reply, rq.Failed):
                raise ClusterRequestError(rq.encode_request(request)[0].name, node, reply.error)
        return replies

    async def request(
        self, nodes: set[NodeId], request: rq.Request, timeout: float | None = None
    ) -> dict[NodeId, rq.Reply]:
        """Send ``request`` to ``nodes`` and collect every reply (ClusterTimeoutError if some
        do not answer in time; TypeError, before anything is sent, if it cannot travel)."""
        return await self._collect(self._send(nodes, request), timeout)

    def _send(self, nodes: set[NodeId], request: rq.Request) -> int:
        """Publish ``request`` to ``nodes`` now; returns its id (0: nobody to ask)."""
        if not nodes:
            return 0
        kind, fields = rq.encode_request(request)
        request_id = next(self._req_ids)
        pending = _Pending(kind, set(nodes), asyncio.get_running_loop().create_future())
        # App data msgpack cannot carry raises TypeError at the first publish, before any
        # node was asked (every node gets the same fields).
        for node in nodes:
            tag = self.replica.tag(node)
            if tag is None:
                pending.waiting.discard(node)
                continue
            self.bus.publish(wire.node_topic(tag), wire.Request(request_id, self.tag, kind, fields))
        self._pending[request_id] = pending
        pending.settle()
        return request_id

    async def _collect(self, request_id: int, timeout: float | None) -> dict[NodeId, rq.Reply]:
        """Wait for the replies of a request sent by :meth:`_send`."""
        pending = self._pending.get(request_id)
        if pending is None:
            return {}
        try:
            wait = timeout if timeout is not None else self.cs.request_timeout_ms / 1000
            try:
                await asyncio.wait_for(asyncio.shield(pending.future), wait)
            except TimeoutError:
                raise ClusterTimeoutError(
                    pending.kind.name.lower(),
                    {str(n) for n in pending.waiting},
                    dict(pending.replies),
                ) from None
            return pending.replies
        finally:
            self._pending.pop(request_id, None)

    def _node_down(self, node: NodeId) -> None:
        self.keeping.reconcile()
        for pending in self._pending.values():
            pending.waiting.discard(node)
            pending.settle()

    # -- serving other nodes' requests --------------------------------------------------------

    async def _serve(self, request: wire.Request) -> None:
        """Answer one request; every request gets exactly one reply, a failure included (the
        requester must never wait out its timeout because this node failed)."""
        reply: rq.Reply
        try:
            reply = await self._answer(
                rq.decode_request(request.kind, request.fields), request.reply_to
            )
            payload = rq.encode_reply(reply)
            self.bus.publish(
                wire.node_topic(request.reply_to), wire.Reply(request.request_id, payload)
            )
            return
        except rq.RequestError as exc:
            log.warning("bad cluster request from %s: %s", request.reply_to.hex(), exc)
            reply = rq.Failed("RequestError")
        except Exception as exc:
            log.exception("cluster request of kind %s failed", request.kind)
            reply = rq.Failed(type(exc).__name__)
        failed = rq.encode_reply(reply)
        self.bus.publish(wire.node_topic(request.reply_to), wire.Reply(request.request_id, failed))

    async def _answer(self, request: rq.Request, by: NodeTag) -> rq.Reply:
        if isinstance(request, rq.ClaimSession | rq.TakeSession | rq.DropClaim):
            return await self.handovers.serve(request, by)
        if isinstance(request, rq.ServerSideEmit):
            return rq.Answer(await self.run_server_event(request.event, request.args))
        if isinstance(request, rq.MirrorRooms):
            await self.keeping.hold(by, request)
            return rq.Answer(None)
        if isinstance(request, rq.ResyncKeep):
            if by == self.keeping.log.keeper:
                self.keeping.log.sync()
            return rq.Answer(None)
        if isinstance(request, rq.ReleaseSessions):
            for pid, sid, tag in request.sessions:
                self.let_go(pid, sid, NodeTag(tag))
            return rq.Answer(None)
        target = request.target._replace(local=True)
        if isinstance(request, rq.FetchSockets):
            return rq.Sockets(tuple(self.snapshot(target)))
        if isinstance(request, rq.BroadcastWithAck):
            future, collector = self.emit_with_ack(
                target, request.event, request.args, from_bus=True
            )
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), request.timeout)
            finally:
                collector.release()
            return rq.Acks(tuple(collector.responses), collector.expected)
        if isinstance(request, rq.AddSockets):
            count, refused = await self.apply(target, "join", list(request.rooms), False)
        elif isinstance(request, rq.DelSockets):
            count, refused = await self.apply(target, "leave", list(request.rooms), False)
        else:
            count, refused = await self.apply(target, "disconnect", [], request.close)
        # The delta goes out before the reply, through the same router, so the requester's
        # replica shows the new members when its request returns (read your writes).
        self.member.flush()
        return rq.Applied(count - len(refused), len(refused))

    # -- connection state recovery across nodes ----------------------------------------------

    async def restore_elsewhere(self, namespace: str, pid: str, offset: Any) -> SessionClaim:
        return await self.handovers.claim(namespace, pid, offset)

    async def run_server_event(self, event: str, args: tuple[Any, ...]) -> Any:
        """Run the local handler of a server-to-server event; returns its answer."""
        handler = self.server_event_handler(event)
        if handler is None:
            return None
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            log.exception("server event handler %r failed", event)
            return None
        return result

    # -- bus input ----------------------------------------------------------------------------

    def _on_bus(self, topic: Topic, header: wire.Header, body: wire.Body) -> None:
        if type(body) is wire.RoomMessage:
            if self.keeping.active:
                self.keeping.received(topic, header, body)
                self._on_room(header, body)
                # Only the packet this message is can be recorded by reference (not a later
                # one with the same source: a handed-over packet is addressed to its socket).
                self.keeping.log.by_reference = None
            else:
                self._on_room(header, body)
        elif type(body) is wire.Keep:
            self.keeping.on_keep(header, body)
        elif isinstance(body, wire.Reply):
            self._on_reply(header, body)
        elif isinstance(body, wire.Request):
            self._spawn(self._serve(body))

    def _on_reply(self, header: wire.Header, reply: wire.Reply) -> None:
        pending = self._pending.get(reply.request_id)
        if pending is None or header.origin not in pending.waiting:
            return
        try:
            decoded = rq.decode_reply(reply.payload)
        except rq.RequestError as exc:
            log.warning("bad cluster reply from %s: %s", header.origin, exc)
            decoded = rq.Failed("RequestError")
        pending.replies[header.origin] = decoded
        pending.waiting.discard(header.origin)
        pending.settle()

    # -- reads --------------------------------------------------------------------------------

    def names_a_socket(self, name: str) -> bool:
        tag = tag_of_sid(name)
        return tag is not None and (tag == self.tag or self.replica.knows_tag(tag))

    def node_address(self, tag: NodeTag) -> str | None:
        if tag == self.tag:
            return None
        node = self.replica.node_of_tag(tag)
        return self.replica.address(node) if node is not None else None

    def room_table(self, namespace: str | None = None) -> RoomTable:
        table: RoomTable = {
            key: {str(n): c for n, c in holders.items()}
            for key, holders in self.replica.room_sizes(namespace).items()
        }
        for key, count in self.sockets.room_counts(namespace).items():
            table.setdefault(key, {})[str(self.node_id)] = count
        return table

    def room_held(self, namespace: str, room: str) -> bool:
        return super().room_held(namespace, room) or bool(
            self.replica.nodes_with_rooms(namespace, (room,))
        )

    def describe(self) -> dict[str, Any]:
        cluster = self.member.describe()
        cluster["received_rooms"] = self.received_rooms
        cluster["keeping"] = self.keeping.describe()
        cluster["handovers"] = self.handovers.describe()
        return {"standalone": False, "cluster": cluster}

    def freshness(self) -> float:
        return self.member.freshness()
