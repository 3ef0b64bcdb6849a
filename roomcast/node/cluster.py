"""The node's side of the cluster: room-interest routing, gossip, and node-to-node requests.

:class:`ClusterLink` joins a :class:`~roomcast.node.server.Server` to the bus. It knows
Socket.IO (namespaces, sockets, encoded packets) and the bus's small API (publish, subscribe
with proof, unsubscribe), never ZeroMQ itself.

* A room's topic is subscribed when its first local member joins (the join returns once the
  subscription is live at the router) and unsubscribed when the last one leaves; a namespace's
  topic likewise follows its first and last local socket.
* A broadcast is delivered locally by the origin and published once per target topic; a
  receiver delivers each message once (copies from several topics are dropped by message id),
  using the frames encoded at the origin.
* Membership facts are gossiped (deltas batched every ``gossip_interval_ms``, heartbeats) into
  every node's :class:`~roomcast.cluster.membership.Replica`; requests go only to the nodes the
  replica names, with an explicit responder set and a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from roomcast.cluster import wire
from roomcast.cluster.bus import Bus
from roomcast.cluster.membership import (
    LocalFacts,
    NodeDown,
    NodeStatus,
    NodeUp,
    Replica,
    RequestSnapshot,
)
from roomcast.cluster.wire import Topic
from roomcast.discovery import Discovery, DiscoveryView, ServiceInstance, make_discovery
from roomcast.errors import RoomcastError
from roomcast.ids import NodeId, tag_of_sid
from roomcast.protocol.frames import Frames

from .broadcast import BroadcastOperator, start_broadcast_with_ack, write_each
from .sockets import Handshake, Namespace, SocketInfo

if TYPE_CHECKING:
    from roomcast.node.server import Server

log = logging.getLogger("roomcast.cluster")

_MIN_CHECK_GAP = 0.02  # seconds between two router checks, at least


class ClusterTimeoutError(RoomcastError):
    """Some nodes did not answer a cluster request in time; ``missing`` names them."""

    def __init__(self, op: str, missing: set[str], partial: dict[NodeId, Any]) -> None:
        super().__init__(f"{op}: no answer from {', '.join(sorted(missing))}")
        self.missing = missing
        self.partial = partial


@dataclass
class _Pending:
    op: str
    waiting: set[NodeId]
    future: asyncio.Future[None]
    replies: dict[NodeId, Any] = field(default_factory=dict)

    def settle(self) -> None:
        if not self.waiting and not self.future.done():
            self.future.set_result(None)


def _target(op: BroadcastOperator) -> dict[str, Any]:
    return {
        "ns": op.namespace.name,
        "rooms": sorted(op.rooms),
        "except_rooms": sorted(op.except_rooms),
        "except_sids": sorted(op.except_sids),
    }


def _info_to_wire(info: SocketInfo) -> dict[str, Any]:
    h = info.handshake
    return {
        "id": info.id,
        "ns": info.namespace,
        "rooms": sorted(info.rooms),
        "data": info.data,
        "node": info.node,
        "handshake": None
        if h is None
        else {
            "headers": h.headers,
            "query": h.query,
            "auth": h.auth,
            "address": h.address,
            "time": h.time,
            "url": h.url,
            "secure": h.secure,
        },
    }


def _info_from_wire(d: dict[str, Any]) -> SocketInfo:
    h = d.get("handshake")
    return SocketInfo(
        d["id"],
        d["ns"],
        frozenset(d["rooms"]),
        d.get("data"),
        None if h is None else Handshake(**h),
        d["node"],
    )


class ClusterLink:
    """One node's membership in the cluster (started and stopped by its Server)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        settings = server.settings
        self.cs = settings.cluster
        self.node_id = NodeId(server.node_id)
        self.incarnation = server.incarnation
        self.tag = server.tag
        self.topic = wire.node_topic(self.tag)
        self.facts = LocalFacts(server.node_id, self.incarnation, "", time.time())
        self.replica = Replica(
            server.node_id, self.cs.suspect_after_ms / 1000, self.cs.down_after_ms / 1000
        )
        routers = [(r.key, r.xsub, r.xpub) for r in settings.discovery.routers]
        self.bus = Bus(
            server.node_id,
            self.incarnation,
            routers,
            self._on_message,
            hwm=self.cs.hwm,
            probe_retry=self.cs.probe_retry_ms / 1000,
            linger_ms=500,  # the LEAVE announcement must get out
            heartbeat_ms=self.cs.link_heartbeat_ms,
            link_timeout_ms=self.cs.link_timeout_ms,
            move_idle_ms=self.cs.move_idle_ms,
            on_links=self._links_changed,
        )
        self._announced: tuple[str, ...] | None = None  # live routers in the last heartbeat
        self._check_now = asyncio.Event()
        self._started = False
        self._msg_ids = itertools.count(1)
        self._req_ids = itertools.count(1)
        self._seen: collections.OrderedDict[tuple[str, int, int], None] = collections.OrderedDict()
        self._pending: dict[int, _Pending] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.discovery: Discovery = make_discovery(settings)
        self.consul = settings.discovery.backend == "consul"
        self._health_tasks: set[asyncio.Task[None]] = set()
        self.received_rooms = 0  #: ROOM envelopes delivered here (for inspection and tests)

    @property
    def join_timeout(self) -> float:
        """How long a subscription may take to become live."""
        return self.cs.join_timeout_ms / 1000

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, address: str) -> None:
        """Register with discovery, connect to the routers, prove the gossip and direct
        subscriptions, announce."""
        self.facts.address = address
        await self.discovery.__aenter__()
        await self.discovery.register(
            ServiceInstance.node(self.node_id, address, {"incarnation": str(self.incarnation)})
        )
        self.server.health_watchers.append(self._health_changed)
        if self.consul:
            self.bus.set_routers(self._healthy_routers(self.discovery.view()))
        await self.bus.__aenter__()
        # Both subscriptions are set whatever happens; only the proof may time out (no router
        # up yet): ZeroMQ delivers the subscriptions when one comes, and the self-check tells.
        results = await asyncio.gather(
            self.bus.subscribe(wire.GOSSIP_TOPIC, self.join_timeout),
            self.bus.subscribe(self.topic, self.join_timeout),
            return_exceptions=True,
        )
        if any(isinstance(r, BaseException) for r in results):
            log.warning("no router answered yet; the node keeps trying in the background")
        await self.bus.check_routers(self.cs.self_check_timeout_ms / 1000)
        self._started = True
        self._update_usable()
        self._announce()
        loop = asyncio.get_running_loop()
        self._housekeeper = loop.create_task(self._housekeeping())
        self._checker = loop.create_task(self._self_check())
        self._watcher = loop.create_task(self._watch_discovery())

    async def stop(self) -> None:
        """Announce departure and disconnect from the bus."""
        self.flush()
        for rid in self.bus.router_ids:  # through every router: one of them may be gone
            self.bus.publish(wire.GOSSIP_TOPIC, wire.Leave(), via=rid)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for task in (self._housekeeper, self._checker, self._watcher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.discovery.__aexit__(None, None, None)  # deregisters
        for pending in self._pending.values():
            pending.future.cancel()
        await self.bus.__aexit__(None, None, None)

    async def _housekeeping(self) -> None:
        interval = self.cs.heartbeat_interval_ms / 1000
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + interval
        while True:
            await asyncio.sleep(min(interval, 0.1))
            now = loop.time()
            self._act(self.replica.tick(now))
            if now >= next_beat:
                next_beat = now + interval
                self._announce()

    def _announce(self) -> None:
        """Send a heartbeat now, naming the routers that deliver this node's probes (pending
        membership changes go first: a heartbeat's facts_seq covers them)."""
        self.flush()
        self.facts.connections = len(self.server.connections)
        live = tuple(self.bus.live_routers())
        self._announced = live
        self.bus.publish(wire.GOSSIP_TOPIC, self.facts.heartbeat(live))

    def _update_usable(self) -> None:
        """Publish only through routers that every live node hears (and we do)."""
        live = self.bus.live_routers()
        self.bus.set_usable(self.replica.routers_heard_by_all(live) or live)

    def _links_changed(self) -> None:
        """A link to a router came or went, or a check changed which routers are live: move
        topics now, tell the other nodes at once (they stop publishing through a router this
        node no longer hears without waiting for a heartbeat), and check at once a router
        that is connected but not proven yet."""
        if not self._started:
            return
        self._update_usable()
        if tuple(self.bus.live_routers()) != self._announced:
            self._announce()
        if set(self.bus.connected_routers()) - set(self.bus.live_routers()):
            self._check_now.set()

    async def _self_check(self) -> None:
        """The deaf-node self-check: probe every router (see :meth:`Bus.check_routers`).

        A router that stops delivering our probes is not used to publish (its topics move to
        the others); with none left the node is *deaf*: it fails ``/health`` (and its Consul
        check) so load balancers stop sending it clients, resubscribes everything, and
        recovers when probes flow again. Publishers use only the routers that every live
        node reports hearing, so no node misses a topic's traffic because of its router. A
        link coming up starts a check at once instead of at the next interval.
        """
        interval = self.cs.self_check_interval_ms / 1000
        timeout = self.cs.self_check_timeout_ms / 1000
        deaf_checks = 0
        while True:
            self._check_now.clear()
            await self.bus.check_routers(timeout)  # a change reaches _links_changed
            live = self.bus.live_routers()
            if live:
                if deaf_checks:
                    log.warning("node %s hears the bus again through %s", self.node_id, live)
                    self.server.set_unhealthy("deaf", None)
                deaf_checks = 0
            else:
                if deaf_checks == 0:
                    log.error("node %s is deaf: no router delivers its probes", self.node_id)
                    self.server.set_unhealthy("deaf", "no router delivers this node's probes")
                if deaf_checks % 5 == 0:
                    self.bus.resubscribe_all()
                deaf_checks += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), interval)
            await asyncio.sleep(_MIN_CHECK_GAP)  # a flapping link must not make checks spin

    # -- discovery ----------------------------------------------------------------------------

    @staticmethod
    def _healthy_routers(view: DiscoveryView) -> list[tuple[str, str, str]]:
        return [(r.id, r.xsub, r.xpub) for r in view.healthy_routers]

    def _health_changed(self, healthy: bool, note: str) -> None:
        task = asyncio.get_running_loop().create_task(self.discovery.set_healthy(healthy, note))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _watch_discovery(self) -> None:
        """Follow the catalogue: routers as they appear and go; nodes Consul calls critical
        or that vanished are down in the replica at once, before gossip would notice.

        After Consul was unreachable its catalogue may have been lost (a restarted dev agent)
        and is refilled as each process registers again, within its retry backoff and check
        interval: until then a node missing from it is not taken for gone (a node that really
        left said so by gossip; one that died turns critical once it registered, or times out),
        and a router missing from it is kept (dropping it here while other nodes still publish
        through it would lose their messages; a dead one is unused once the self-check says so).
        """
        cfg = self.server.settings.discovery.consul
        settle = (cfg.retry_max_ms + cfg.check_ttl_ms) / 1000
        loop = asyncio.get_running_loop()
        settled_at = 0.0  # until then, vanished nodes and routers are not taken for gone
        seen: set[str] = set()
        connected: list[tuple[str, str, str]] = []
        async for view in self.discovery.watch():
            if not self.consul:
                continue  # static: the routers are fixed and nodes learn of each other by gossip
            if not view.source_ok:
                settled_at = loop.time() + settle
            else:
                settling = loop.time() < settled_at
                routers = self._healthy_routers(view)
                if settling:
                    listed = {r.id for r in view.routers}
                    routers += [r for r in connected if r[0] not in listed]
                if routers or not self.bus.router_ids:
                    # Consul listing no healthy router at all is more likely a glitch than
                    # the truth: keep the last routers rather than go deaf on purpose.
                    self.bus.set_routers(routers)
                    connected = routers
                current = {str(n.id) for n in view.nodes}
                for node in view.nodes:
                    if not node.healthy and str(node.id) != self.node_id:
                        self._act(self.replica.mark_down(str(node.id), "consul: critical"))
                if settling:
                    seen |= current  # the catalogue is being refilled
                    continue
                for gone in seen - current:
                    if gone != self.node_id:
                        self._act(self.replica.mark_down(gone, "consul: deregistered"))
                seen = current

    def discovery_view(self) -> dict[str, Any]:
        """What the discovery backend says, for inspection beside the gossip view."""
        view = self.discovery.view()
        return {
            "backend": "consul" if self.consul else "static",
            "source_ok": view.source_ok,
            "routers": [
                {"id": r.id, "xsub": r.xsub, "xpub": r.xpub, "http": r.http, "healthy": r.healthy}
                for r in view.routers
            ],
            "nodes": [{"id": str(n.id), "http": n.http, "healthy": n.healthy} for n in view.nodes],
        }

    # -- membership ---------------------------------------------------------------------------

    async def rooms_changed(
        self, ns: str, counts: dict[str, int], joined: list[str], left: list[str]
    ) -> None:
        """A socket joined or left rooms: gossip the new ``counts``, follow room interest;
        returns once the rooms joined are live at the router."""
        self.room_counts(ns, counts)
        for room in left:
            self.bus.unsubscribe(wire.room_topic(ns, room))
        if joined:
            try:
                await asyncio.gather(
                    *(self.bus.subscribe(wire.room_topic(ns, r), self.join_timeout) for r in joined)
                )
            except TimeoutError:
                # No router answered: the socket is in its rooms here and the subscription is
                # set (ZeroMQ sends it when a router comes back); other nodes' messages wait
                # for that. Serving local clients beats failing their joins.
                log.warning("rooms %s of %s joined without a live router", joined, ns)

    async def namespace_entered(self, ns: str) -> None:
        """A socket is about to connect to ``ns``: receive its namespace-wide emits."""
        try:
            await self.bus.subscribe(wire.namespace_topic(ns), self.join_timeout)
        except TimeoutError:
            log.warning("socket connected to %s without a live router", ns)

    def namespace_exited(self, ns: str) -> None:
        """A socket of ``ns`` is gone."""
        self.bus.unsubscribe(wire.namespace_topic(ns))

    def room_counts(self, ns: str, counts: dict[str, int]) -> None:
        """Record local member counts; they are gossiped after ``gossip_interval_ms``."""
        for room, count in counts.items():
            self.facts.set_count(ns, room, count)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                self.cs.gossip_interval_ms / 1000, self.flush
            )

    def flush(self) -> None:
        """Send the pending membership delta now."""
        self._flush_handle = None
        self.facts.connections = len(self.server.connections)
        delta = self.facts.take_delta()
        if delta is not None:
            self.bus.publish(wire.GOSSIP_TOPIC, delta)

    # -- broadcasting -------------------------------------------------------------------------

    def _topics(self, ns: Namespace, rooms: frozenset[str]) -> list[Topic]:
        if not rooms:
            return [wire.namespace_topic(ns.name)]
        topics: list[Topic] = []
        seen_tags: set[bytes] = set()
        for room in rooms:
            if room in ns.sockets:
                continue  # a local sid: delivered locally
            tag = tag_of_sid(room)
            if tag is not None and self.replica.node_of_tag(tag) is not None:
                if tag not in seen_tags:
                    seen_tags.add(tag)
                    topics.append(wire.node_topic(tag))
                continue
            topics.append(wire.room_topic(ns.name, room))
        return topics

    def publish(self, op: BroadcastOperator, frames: Frames) -> None:
        """Publish a broadcast the origin already delivered locally, once per target topic."""
        ns = op.namespace
        body = wire.RoomMessage(
            next(self._msg_ids),
            ns.name,
            tuple(op.rooms),
            tuple(op.except_rooms),
            tuple(op.except_sids),
            op.volatile_,
            frames.ws,
        )
        for topic in self._topics(ns, op.rooms):
            self.bus.publish(topic, body)

    def _on_room(self, header: wire.Header, msg: wire.RoomMessage) -> None:
        if len(msg.rooms) > 1:
            key = (header.origin, header.incarnation, msg.msg_id)
            seen = self._seen
            if key in seen:
                return
            seen[key] = None
            if len(seen) > self.cs.dedup_window:
                seen.popitem(last=False)
        ns = self.server.namespace(msg.namespace)
        if ns is None:
            return
        self.received_rooms += 1
        recipients = ns.registry.recipients(msg.rooms, msg.except_rooms, msg.except_sids)
        if not recipients:
            return
        frames = Frames.from_ws(msg.ws)
        try:
            self.server.stats.messages_out += write_each(recipients, frames, msg.volatile)
        except ValueError:  # a polling recipient needs the packet, and the frames hold none
            log.warning("undecodable frames in a room message from %s", header.origin)

    # -- requests -----------------------------------------------------------------------------

    def involved(self, op: BroadcastOperator) -> set[NodeId]:
        """The remote nodes that may hold sockets targeted by ``op``."""
        if not op.rooms:
            return set(self.replica.alive())
        nodes = self.replica.nodes_with_rooms(op.namespace.name, op.rooms)
        for room in op.rooms:
            tag = tag_of_sid(room)
            node = self.replica.node_of_tag(tag) if tag is not None else None
            if node is not None:
                nodes.add(node)
        nodes.discard(self.node_id)
        return nodes

    async def request(
        self, nodes: set[NodeId], op: str, payload: Any, timeout: float | None = None
    ) -> dict[NodeId, Any]:
        """Send a request to ``nodes`` and collect every reply (ClusterTimeoutError if not)."""
        if not nodes:
            return {}
        request_id = next(self._req_ids)
        pending = _Pending(op, set(nodes), asyncio.get_running_loop().create_future())
        self._pending[request_id] = pending
        try:
            for node in nodes:
                tag = self.replica.tag(node)
                if tag is None:
                    pending.waiting.discard(node)
                    continue
                self.bus.publish(
                    wire.node_topic(tag), wire.Request(request_id, self.tag, op, payload)
                )
            pending.settle()
            wait = timeout if timeout is not None else self.cs.request_timeout_ms / 1000
            try:
                await asyncio.wait_for(asyncio.shield(pending.future), wait)
            except TimeoutError:
                raise ClusterTimeoutError(
                    op, {str(n) for n in pending.waiting}, dict(pending.replies)
                ) from None
            return pending.replies
        finally:
            self._pending.pop(request_id, None)

    def _reply(self, request: wire.Request, payload: Any) -> None:
        self.bus.publish(wire.node_topic(request.reply_to), wire.Reply(request.request_id, payload))

    def _on_reply(self, header: wire.Header, reply: wire.Reply) -> None:
        pending = self._pending.get(reply.request_id)
        if pending is None or header.origin not in pending.waiting:
            return
        pending.replies[header.origin] = reply.payload
        pending.waiting.discard(header.origin)
        pending.settle()

    def _on_request(self, header: wire.Header, request: wire.Request) -> None:
        self.server.spawn(self._serve(request))

    async def _serve(self, request: wire.Request) -> None:
        """Answer one request; every request gets exactly one reply, an error one included
        (the requester must never wait out its timeout because this node failed)."""
        try:
            reply = await self._answer(request)
        except Exception as exc:
            log.exception("cluster request %r failed", request.op)
            reply = {"error": type(exc).__name__}
        self._reply(request, reply)

    async def _answer(self, request: wire.Request) -> Any:
        server = self.server
        p = request.payload
        op = request.op
        if op == "server_event":
            return await server.run_server_event(p["event"], p["args"])
        ns = server.namespace(p["ns"])
        if ns is None:
            return {"count": 0, "sockets": [], "responses": [], "expected": 0}
        target = BroadcastOperator(
            ns,
            frozenset(p["rooms"]),
            frozenset(p["except_rooms"]),
            frozenset(p["except_sids"]),
            local_=True,
        )
        if op == "fetch":
            return {"sockets": [_info_to_wire(s.info()) for s in target.local_recipients()]}
        if op in ("join", "leave", "disconnect"):
            sockets = list(target.local_recipients())
            failed = 0
            for socket in sockets:
                try:
                    if op == "join":
                        await ns.add_to_rooms(socket, p["args"])
                    elif op == "leave":
                        await ns.remove_from_rooms(socket, p["args"])
                    else:
                        socket.disconnect(bool(p["close"]))
                except (RoomcastError, ValueError):
                    failed += 1  # that socket only (a limit, a refused name)
            # The delta goes out before the reply, through the same router, so the requester's
            # replica shows the new members when its request returns (read your writes).
            self.flush()
            return {"count": len(sockets) - failed, "failed": failed}
        if op == "ack_broadcast":
            if p["volatile"]:
                target = target.volatile
            future, collector = start_broadcast_with_ack(target, p["event"], p["args"])
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), p["timeout"])
            finally:
                collector.release()
            return {"responses": list(collector.responses), "expected": collector.expected}
        log.warning("unknown cluster request %r from %s", op, request.reply_to.hex())
        return {"error": "unknown request"}

    # -- bus input ----------------------------------------------------------------------------

    def _on_message(self, topic: Topic, header: wire.Header, body: wire.Body) -> None:
        if isinstance(body, wire.RoomMessage):
            self._on_room(header, body)
        elif isinstance(body, wire.Reply):
            self._on_reply(header, body)
        elif isinstance(body, wire.Request):
            self._on_request(header, body)
        elif isinstance(body, wire.SnapshotRequest):
            self.flush()
            self.bus.publish(wire.node_topic(body.reply_to), self.facts.snapshot())
        else:
            now = asyncio.get_running_loop().time()
            self._act(self.replica.receive(header, body, now))
            if isinstance(body, wire.Heartbeat):
                self._update_usable()  # which routers the others hear may have changed

    def _act(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, RequestSnapshot):
                self.bus.publish(wire.node_topic(action.tag), wire.SnapshotRequest(self.tag))
            elif isinstance(action, NodeDown):
                log.info("node %s is down (%s)", action.node, action.reason)
                self._update_usable()  # the routers it heard no longer have to be heard
                for pending in self._pending.values():
                    pending.waiting.discard(action.node)
                    pending.settle()
            elif isinstance(action, NodeUp):
                log.info("node %s is up", action.node)

    # -- inspection ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The replica as JSON: nodes, their status and freshness, and bus counters."""
        now = asyncio.get_running_loop().time()
        nodes = [
            {
                "node": str(i.node),
                "status": i.status.value,
                "address": i.address,
                "connections": i.connections,
                "rooms": i.rooms,
                "synced": i.synced,
                "age": round(i.age, 3),
                "incarnation": i.incarnation,
            }
            for i in self.replica.info(now)
        ]
        return {
            "node": str(self.node_id),
            "incarnation": self.incarnation,
            "address": self.facts.address,
            "nodes": nodes,
            "bus": self.bus.stats_dict(),
            "received_rooms": self.received_rooms,
            "discovery": self.discovery_view(),
        }

    def remote_rooms(self, ns: str | None) -> dict[tuple[str, str], dict[str, int]]:
        """Rooms held by live remote nodes: (namespace, room) -> {node: count}."""
        return {
            key: {str(n): c for n, c in holders.items()}
            for key, holders in self.replica.room_sizes(ns).items()
        }

    def freshness(self) -> float:
        """Age in seconds of the stalest live remote view (0 with no remote node)."""
        now = asyncio.get_running_loop().time()
        ages = [i.age for i in self.replica.info(now) if i.status is not NodeStatus.DOWN]
        return max(ages, default=0.0)


def infos_from_replies(replies: dict[NodeId, Any]) -> list[SocketInfo]:
    """Decode the sockets of ``fetch`` replies."""
    out: list[SocketInfo] = []
    for reply in replies.values():
        out.extend(_info_from_wire(d) for d in reply.get("sockets", []))
    return out
