"""A node's membership in the cluster: bus, discovery, gossip, heartbeats, the self-check.

:class:`ClusterMember` is an async context manager that owns everything a node needs to be a
member of the cluster, and nothing of Socket.IO: it registers with discovery, connects to the
routers that discovery lists (static or Consul alike), proves its gossip and direct
subscriptions, gossips this node's room counts into every other node's
:class:`~roomcast.cluster.membership.Replica`, keeps its own replica of theirs, heartbeats,
and runs the deaf-node self-check. If its start fails half-way, it unwinds whatever it had
started (discovery registration, bus sockets, tasks) before raising.

What arrives on the bus for this node that is not gossip (room traffic, requests, replies)
goes to the ``deliver`` callback; nodes going down are reported to ``node_down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

from roomcast.cluster import curve, wire
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
from roomcast.config import Settings, refuse_open_bus
from roomcast.discovery import Discovery, DiscoveryView, ServiceInstance, make_discovery
from roomcast.ids import NodeId, NodeTag, node_tag

from .health import Health

#: The envelopes that go to the node itself (the rest are the membership replica's).
_DELIVERED: Final = frozenset({wire.RoomMessage, wire.Request, wire.Reply, wire.Keep})

log = logging.getLogger("roomcast.cluster")

_MIN_CHECK_GAP = 0.02  # seconds between two router checks, at least

#: Receives what the bus brings this node that is not gossip.
Deliver = Callable[[Topic, wire.Header, wire.Body], None]


class ClusterMember:
    """One node's membership in the cluster (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        node_id: NodeId,
        incarnation: int,
        health: Health,
        connections: Callable[[], int],
        deliver: Deliver,
        node_down: Callable[[NodeId], None],
    ) -> None:
        self.settings = settings
        self.cs = settings.cluster
        self.node_id = node_id
        self.incarnation = incarnation
        self.tag: NodeTag = node_tag(node_id, incarnation)
        self.topic = wire.node_topic(self.tag)
        self.health = health
        self._connections = connections
        self._deliver = deliver
        self._node_down = node_down
        self.facts = LocalFacts(node_id, incarnation, "", time.time())
        self.replica = Replica(
            node_id, self.cs.suspect_after_ms / 1000, self.cs.down_after_ms / 1000
        )
        bus = settings.bus
        if settings.discovery.backend == "static":
            # The open-bus rule, at once for the routers of the file (Consul's routers are
            # checked by the bus as they appear).
            for i, router in enumerate(settings.discovery.routers):
                for side in ("xsub", "xpub"):
                    refuse_open_bus(
                        f"discovery.routers[{i}].{side}",
                        getattr(router, side),
                        curve=bus.curve,
                        allow_open_bus=bus.allow_open_bus,
                    )
        self.bus = Bus(
            node_id,
            incarnation,
            [],  # from the discovery view, once it is open
            self._on_message,
            hwm=self.cs.hwm,
            probe_retry=self.cs.probe_retry_ms / 1000,
            linger_ms=self.cs.leave_linger_ms,  # the LEAVE announcement must get out
            heartbeat_ms=self.cs.link_heartbeat_ms,
            link_timeout_ms=self.cs.link_timeout_ms,
            move_idle_ms=self.cs.move_idle_ms,
            on_links=self._links_changed,
            seq_topics=self.cs.seq_topics,
            owner_topics=self.cs.owner_topics,
            origins_per_topic=self.cs.origins_per_topic,
            curve=curve.client_keys(settings),  # read now: a bad key file fails the start
            allow_open_bus=bus.allow_open_bus,
        )
        self.discovery: Discovery = make_discovery(settings)
        self.consul = settings.discovery.backend == "consul"
        self._announced: tuple[str, ...] | None = None  # live routers in the last heartbeat
        self._check_now = asyncio.Event()
        self._started = False
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def join_timeout(self) -> float:
        """How long a subscription may take to become live."""
        return self.cs.join_timeout_ms / 1000

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, address: str) -> None:
        """Register with discovery as ``address``, connect to the routers, prove the gossip and
        direct subscriptions, announce; on failure, undo all of it and raise."""
        self.facts.address = address
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.discovery)  # deregisters on the way out
            await self.discovery.register(
                ServiceInstance.node(self.node_id, address, {"incarnation": str(self.incarnation)})
            )
            self.health.watchers.append(self._health_changed)
            stack.callback(self.health.watchers.remove, self._health_changed)
            stack.push_async_callback(self._cancel_health_tasks)
            self.bus.set_routers(self._healthy_routers(self.discovery.view()))
            await stack.enter_async_context(self.bus)
            # Both subscriptions are set whatever happens; only the proof may time out (no
            # router up yet): ZeroMQ delivers them when one comes, and the self-check tells.
            results = await asyncio.gather(
                self.bus.subscribe(wire.GOSSIP_TOPIC, self.join_timeout),
                self.bus.subscribe(self.topic, self.join_timeout),
                return_exceptions=True,
            )
            if any(isinstance(r, BaseException) for r in results):
                log.warning(
                    "no router answered yet%s; the node keeps trying in the background",
                    self._problems(),
                )
            await self.bus.check_routers(self.cs.self_check_timeout_ms / 1000)
            self._started = True
            self._update_usable()
            self._announce()
            stack.callback(self._say_goodbye)
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._housekeeping()),
                loop.create_task(self._self_check()),
                loop.create_task(self._watch_discovery()),
            ]
            stack.push_async_callback(self._cancel_tasks)
            self._stack = stack.pop_all()

    async def stop(self) -> None:
        """Announce departure, stop the tasks, deregister, disconnect from the bus."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Self:
        await self.start(self.facts.address)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _say_goodbye(self) -> None:
        self._started = False
        self.flush()
        for rid in self.bus.router_ids:  # through every router: one of them may be gone
            self.bus.publish(wire.GOSSIP_TOPIC, wire.Leave(), via=rid)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _cancel_health_tasks(self) -> None:
        for task in list(self._health_tasks):
            task.cancel()
        await asyncio.gather(*self._health_tasks, return_exceptions=True)

    # -- heartbeats and the self-check --------------------------------------------------------

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
        self.facts.connections = self._connections()
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
                    self.health.set_problem("deaf", None)
                deaf_checks = 0
            else:
                if deaf_checks == 0:
                    log.error(
                        "node %s is deaf: no router delivers its probes%s",
                        self.node_id,
                        self._problems() or " (none answered)",
                    )
                    self.health.set_problem("deaf", "no router delivers this node's probes")
                if deaf_checks % 5 == 0:
                    self.bus.resubscribe_all()
                deaf_checks += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), interval)
            await asyncio.sleep(_MIN_CHECK_GAP)  # a flapping link must not make checks spin

    def _problems(self) -> str:
        """Why routers refused this node, for a log line ("" when none did)."""
        problems = self.bus.link_problems()
        if not problems:
            return ""
        return " (" + "; ".join(f"router {rid}: {text}" for rid, text in problems.items()) + ")"

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
        cfg = self.settings.discovery.consul
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
                continue
            settling = loop.time() < settled_at
            routers = self._healthy_routers(view)
            if settling:
                listed = {r.id for r in view.routers}
                routers += [r for r in connected if r[0] not in listed]
            if routers or not self.bus.router_ids:
                # Consul listing no healthy router at all is more likely a glitch than the
                # truth: keep the last routers rather than go deaf on purpose.
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

    # -- gossip -------------------------------------------------------------------------------

    def room_counts(self, namespace: str, counts: dict[str, int]) -> None:
        """Record local member counts; they are gossiped after ``gossip_interval_ms``."""
        for room, count in counts.items():
            self.facts.set_count(namespace, room, count)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                self.cs.gossip_interval_ms / 1000, self.flush
            )

    def flush(self) -> None:
        """Send the pending membership delta now."""
        self._flush_handle = None
        self.facts.connections = self._connections()
        delta = self.facts.take_delta()
        if delta is not None:
            self.bus.publish(wire.GOSSIP_TOPIC, delta)

    def _on_message(self, topic: Topic, header: wire.Header, body: wire.Body) -> None:
        kind = type(body)
        if kind in _DELIVERED:
            self._deliver(topic, header, body)
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
                self._node_down(action.node)
            elif isinstance(action, NodeUp):
                log.info("node %s is up", action.node)

    # -- inspection ---------------------------------------------------------------------------

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
            "discovery": self.discovery_view(),
        }

    def freshness(self) -> float:
        """Age in seconds of the stalest live remote view (0 with no remote node)."""
        now = asyncio.get_running_loop().time()
        ages = [i.age for i in self.replica.info(now) if i.status is not NodeStatus.DOWN]
        return max(ages, default=0.0)
