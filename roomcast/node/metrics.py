"""A node's ``/metrics``: its counters, read when Prometheus scrapes (see :mod:`roomcast.metrics`).

Nothing here runs on the hot path: :func:`node_metrics` reads the node's
:class:`~roomcast.node.stats.NodeStats`, its sessions and namespaces, and in a cluster its
bus counters, its replica of the other nodes and its discovery view, and yields one metric
family per series name. Labels take values from fixed sets only (transports, reasons,
sources, states) or names the node's own config and code chose (namespaces, a dynamic
namespace's pattern for its children, node ids): never a room, a sid or a peer's text.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.metrics_core import Metric

from roomcast import metrics
from roomcast.cluster import wire
from roomcast.cluster.membership import NodeStatus
from roomcast.discovery.metrics import discovery_metrics
from roomcast.protocol import reasons

from .adapter import Adapter
from .admin_ui import VIEWER_EVENTS, AdminUI
from .cluster import ClusterAdapter
from .engine import Connection
from .namespaces import Namespaces
from .recovery import REFUSALS
from .stats import BAD_REQUEST, BODY_TIMEOUT, HEAD_TIMEOUT, HEAD_TOO_LARGE, NodeStats

TRANSPORTS = ("polling", "websocket")
#: Every named reason a session or a socket ends with (anything else counts as "other").
REASONS = frozenset(
    value for name, value in vars(reasons).items() if name.isupper() and isinstance(value, str)
)
HTTP_REFUSALS = frozenset((HEAD_TIMEOUT, HEAD_TOO_LARGE, BODY_TIMEOUT, BAD_REQUEST))
#: Why a recovery was refused (``roomcast.node.recovery``'s reasons).
RECOVERY_REFUSALS = REFUSALS
SOURCES = ("local", "bus")
TOPIC_KINDS = frozenset(kind for kind, _ in wire.TOPIC_KINDS.values())
_TRANSPORT_SET = frozenset(TRANSPORTS)


class MetricsNode(Protocol):
    """What ``/metrics`` reads of a node."""

    stats: NodeStats
    adapter: Adapter
    namespace_registry: Namespaces
    draining: bool
    admin_ui: AdminUI | None

    @property
    def connections(self) -> dict[str, Connection]: ...

    @property
    def healthy(self) -> bool: ...


class NodeCollector:
    """The collector of one node's registry."""

    def __init__(self, node: MetricsNode) -> None:
        self.node = node

    def collect(self) -> list[Metric]:
        """Every family, read now."""
        families = list(node_metrics(self.node))
        if isinstance(self.node.adapter, ClusterAdapter):
            families += cluster_metrics(self.node.adapter)
        return families


def node_metrics(node: MetricsNode) -> Iterator[Metric]:
    """The node's own families: connections, sockets, traffic, limits, forwarding, health."""
    s = node.stats
    transports = collections.Counter(c.transport_name for c in node.connections.values())
    yield metrics.labelled_gauge(
        "roomcast_connections",
        "Engine.IO sessions (client connections) open now, by their current transport.",
        ("transport",),
        {(t,): transports.get(t, 0) for t in TRANSPORTS},
    )
    yield metrics.labelled_counter(
        "roomcast_connections_opened",
        "Engine.IO sessions opened, by the transport they opened on.",
        "transport",
        s.opened_by_transport,
        TRANSPORTS,
    )
    yield metrics.labelled_counter(
        "roomcast_connections_closed",
        "Engine.IO sessions closed, by reason: the client's doing (transport close, ping "
        "timeout...), the server's, or a limit (payload too large, send buffer full...).",
        "reason",
        _bounded(s.closed_by_reason, REASONS),
        REASONS,  # every one from the start: the first close for a limit shows in increase()
    )
    yield metrics.counter(
        "roomcast_upgrades",
        "Polling sessions upgraded to a WebSocket.",
        s.upgrades,
    )
    sockets: dict[tuple[str, str], int] = {}
    rooms: dict[tuple[str], int] = {}
    for ns in node.namespace_registry.all():
        family = ns.family
        for t in TRANSPORTS:
            sockets.setdefault((family, t), 0)
        for socket in ns.sockets.values():
            t = metrics.bounded(socket.conn.transport_name, _TRANSPORT_SET)
            sockets[(family, t)] = sockets.get((family, t), 0) + 1
        rooms[(family,)] = rooms.get((family,), 0) + len(ns.registry.rooms())
    yield metrics.labelled_gauge(
        "roomcast_sockets",
        "Socket.IO sockets connected now, by namespace (a dynamic namespace's children under "
        "its pattern) and by the transport of their connection.",
        ("namespace", "transport"),
        sockets,
    )
    yield metrics.labelled_gauge(
        "roomcast_rooms",
        "Rooms with members on this node (sockets' own rooms not counted), by namespace.",
        ("namespace",),
        rooms,
    )
    yield metrics.labelled_counter(
        "roomcast_socket_connects",
        "Socket.IO connects (a socket joined a namespace), by namespace.",
        "namespace",
        s.socket_connects,
    )
    disconnects: dict[tuple[str, ...], int] = {}
    for (namespace, reason), count in s.socket_disconnects.items():
        key = (namespace, metrics.bounded(reason, REASONS))
        disconnects[key] = disconnects.get(key, 0) + count
    yield metrics.counter_by(
        "roomcast_socket_disconnects",
        "Socket.IO disconnects, by namespace and reason.",
        ("namespace", "reason"),
        disconnects,
    )
    yield metrics.counter(
        "roomcast_packets_received",
        "Engine.IO messages received from clients (a Socket.IO packet, or one binary "
        "attachment of one).",
        s.messages_in,
    )
    yield metrics.counter(
        "roomcast_packets_sent",
        "Socket.IO packets written to clients: broadcast deliveries and packets to one socket "
        "(its emits, acks, CONNECT...).",
        s.messages_out + s.direct_out,
    )
    yield metrics.labelled_counter(
        "roomcast_bytes_received",
        "Bytes received from clients: WebSocket frames after the handshake, polling request "
        "bodies.",
        "transport",
        {"websocket": s.ws_bytes_in, "polling": s.polling_bytes_in},
    )
    yield metrics.labelled_counter(
        "roomcast_bytes_sent",
        "Bytes sent to clients: WebSocket frames of Engine.IO packets, polling answer bodies.",
        "transport",
        {"websocket": s.ws_bytes_out, "polling": s.polling_bytes_out},
    )
    yield metrics.labelled_counter(
        "roomcast_broadcasts",
        "Broadcasts handled here: started on this node (local), or another node's or an "
        "emitter's that came by the bus (bus).",
        "source",
        {"local": s.broadcasts, "bus": s.bus_broadcasts},
    )
    yield metrics.labelled_counter(
        "roomcast_deliveries",
        "Broadcast packets written to this node's sockets, by where the broadcast started.",
        "source",
        {"local": s.messages_out - s.bus_deliveries, "bus": s.bus_deliveries},
    )
    fanout = {k: h for k, h in (("local", s.fanout), ("bus", s.bus_fanout)) if h is not None}
    if fanout:
        yield metrics.histogram(
            "roomcast_broadcast_fanout",
            "Sockets of this node one broadcast was written to, by where it started.",
            "source",
            fanout,
        )
    yield metrics.counter(
        "roomcast_volatile_dropped",
        "Volatile packets dropped because their socket could not take them at once.",
        s.volatile_dropped,
    )
    yield metrics.counter(
        "roomcast_late_packets",
        "Packets for a namespace the server had just disconnected, dropped.",
        s.late_packets,
    )
    yield metrics.labelled_counter(
        "roomcast_http_refused",
        "Connections the HTTP edge refused or closed before any session, by reason.",
        "reason",
        _bounded(s.http_refused, HTTP_REFUSALS),
        HTTP_REFUSALS,
    )
    yield metrics.counter(
        "roomcast_forwarded_requests",
        "Polling requests of another node's session forwarded there.",
        s.forwarded_requests,
    )
    yield metrics.counter(
        "roomcast_forwarded_bytes",
        "Bytes that crossed forwarded requests and spliced WebSockets, both ways.",
        s.forwarded_bytes,
    )
    yield metrics.counter(
        "roomcast_forward_failures",
        "Forwards and splices that failed (the client got 400, or its connection closed).",
        s.forward_failed,
    )
    yield metrics.counter(
        "roomcast_spliced_websockets",
        "WebSockets of another node's session spliced or relayed to it.",
        s.spliced_websockets,
    )
    yield metrics.gauge(
        "roomcast_forwards_in_flight",
        "Forwarded polling requests waiting for their owner's answer now.",
        s.forwards_in_flight,
    )
    yield metrics.counter(
        "roomcast_recoveries_attempted",
        "CONNECTs that presented a session to recover (connection state recovery).",
        s.recoveries_attempted,
    )
    yield metrics.counter(
        "roomcast_recoveries_succeeded",
        "Sessions recovered: same sid, rooms and data, every missed packet replayed.",
        s.recoveries_succeeded,
    )
    yield metrics.labelled_counter(
        "roomcast_recoveries_refused",
        "Recoveries refused (the client got a fresh session), by reason.",
        "reason",
        _bounded(s.recoveries_refused, RECOVERY_REFUSALS),
        RECOVERY_REFUSALS,
    )
    yield metrics.counter(
        "roomcast_replayed_messages",
        "Packets replayed to recovered clients.",
        s.replayed_messages,
    )
    yield metrics.gauge(
        "roomcast_sessions_kept",
        "Sessions of lost connections kept for recovery now.",
        s.sessions_kept,
    )
    yield metrics.counter(
        "roomcast_sessions_dropped",
        "Kept sessions released before their window ended (recovery.max_sessions).",
        s.sessions_dropped,
    )
    yield metrics.counter(
        "roomcast_sessions_handed_over",
        "Kept sessions handed over to another node, whose client came back there.",
        s.sessions_handed_over,
    )
    yield metrics.labelled_counter(
        "roomcast_admin_ui_sent",
        "Messages this node sent the Admin UI's viewers (every node's admin sockets), by event.",
        "event",
        _bounded(s.admin_ui_sent, VIEWER_EVENTS),
        VIEWER_EVENTS,
    )
    yield metrics.gauge(
        "roomcast_admin_ui_watched",
        "1 while an admin socket is connected to some node (this node sends the UI its stats).",
        1 if node.admin_ui is not None and node.admin_ui.watched else 0,
    )
    yield metrics.gauge(
        "roomcast_node_healthy",
        "1 while the node takes clients (its /health answers 200), else 0 (deaf, draining).",
        1 if node.healthy else 0,
    )
    yield metrics.gauge(
        "roomcast_node_draining",
        "1 once the node is draining (it takes no new session and will stop).",
        1 if node.draining else 0,
    )


def cluster_metrics(adapter: ClusterAdapter) -> Iterator[Metric]:
    """A cluster node's families: joins, its keeper's copies, its bus, its replica, its
    discovery view."""
    s = adapter.stats
    kept = adapter.keeping.totals()
    yield metrics.gauge(
        "roomcast_keeper_sessions",
        "Sessions of other nodes whose copy this node keeps (connection state recovery "
        "that survives their node).",
        kept["sessions"],
    )
    yield metrics.gauge(
        "roomcast_keeper_bytes",
        "Bytes of the packets those copies hold.",
        kept["bytes"],
    )
    yield metrics.counter(
        "roomcast_keeper_adopted",
        "Dead nodes whose copy this node adopted (their sessions recoverable here).",
        s.keeper_adopted,
    )
    yield metrics.counter(
        "roomcast_keeper_lost",
        "Dead nodes whose copy here was not exact (their sessions lost).",
        s.keeper_lost,
    )
    yield metrics.counter(
        "roomcast_keeper_resyncs",
        "Copies found not exact while their node lived (everything asked for again).",
        s.keeper_resyncs,
    )
    join = adapter.stats.join_seconds
    if join is not None:
        yield metrics.histogram(
            "roomcast_join_seconds",
            "Seconds a join took to return, new rooms' subscriptions proven live at the "
            "routers (a room this node already held costs no subscription).",
            "",
            {"": join},
        )
    bus = adapter.bus
    b = bus.stats
    yield metrics.counter(
        "roomcast_bus_published", "Messages published on the bus (probes included).", b.published
    )
    yield metrics.counter(
        "roomcast_bus_batches_sent", "Batch frames handed to routers (one per pass).", b.batches
    )
    yield metrics.counter("roomcast_bus_sent_bytes", "Bytes of the batches sent.", b.bytes_out)
    yield metrics.counter(
        "roomcast_bus_received",
        "Messages read from the bus (this node's own echoes and probes included).",
        b.received,
    )
    yield metrics.counter("roomcast_bus_received_bytes", "Bytes read from the bus.", b.bytes_in)
    yield metrics.labelled_counter(
        "roomcast_bus_gaps",
        "Messages known lost on the way (sequence numbers skipped), by topic kind.",
        "topic",
        _bounded(b.gaps_by_topic, TOPIC_KINDS),
        ("room", "gossip", "node", "namespace"),
    )
    yield metrics.labelled_counter(
        "roomcast_bus_undecodable",
        "Bus messages dropped because they could not be decoded, by reason.",
        "reason",
        b.errors_by_reason,
    )
    yield metrics.labelled_counter(
        "roomcast_bus_send_dropped",
        "Messages not sent: the router's queue was at its high-water mark (queue full), its "
        "link was down (link down), or no router was known (no router).",
        "reason",
        {"queue full": b.send_dropped, "link down": b.link_dropped, "no router": b.no_router},
    )
    yield metrics.counter(
        "roomcast_bus_late",
        "Messages dropped as older than one already delivered from the same sender and topic.",
        b.late,
    )
    yield metrics.counter("roomcast_bus_probes_sent", "Subscription probes sent.", b.probes_sent)
    yield metrics.counter(
        "roomcast_bus_link_lost", "Connections to a router lost (either side).", b.link_lost
    )
    yield metrics.counter(
        "roomcast_bus_handshakes_failed",
        "Connections to a router whose handshake failed (CURVE: a key refused).",
        b.handshakes_failed,
    )
    yield metrics.gauge(
        "roomcast_bus_subscriptions", "Topics this node subscribes to now.", b.subscriptions
    )
    described = bus.stats_dict()
    yield metrics.labelled_gauge(
        "roomcast_bus_routers",
        "Routers by state: known (connected to or trying), connected (both links up), live "
        "(its probes come back), in_use (publishing through it).",
        ("state",),
        {
            ("known",): len(described["routers"]),
            ("connected",): len(described["connected_routers"]),
            ("live",): len(described["live_routers"]),
            ("in_use",): len(described["routers_in_use"]),
        },
    )
    now = asyncio.get_running_loop().time()
    infos = adapter.replica.info(now)
    states = {(status.value,): 0 for status in NodeStatus}
    for info in infos:
        states[(info.status.value,)] += 1
    yield metrics.labelled_gauge(
        "roomcast_cluster_nodes",
        "Other nodes in this node's replica of the cluster, by state (down ones are forgotten "
        "after a while).",
        ("state",),
        states,
    )
    alive = [i for i in infos if i.status is not NodeStatus.DOWN]
    yield metrics.gauge(
        "roomcast_cluster_replica_age_seconds",
        "Seconds since the stalest live node was last heard from (0: no other node).",
        max((i.age for i in alive), default=0.0),
    )
    yield metrics.labelled_gauge(
        "roomcast_cluster_peer_age_seconds",
        "Seconds since each live node was last heard from.",
        ("peer",),
        {(str(i.node),): i.age for i in alive},
    )
    member = adapter.member
    yield from discovery_metrics(member.discovery, "consul" if member.consul else "static")


def _bounded(counts: Mapping[str, int], allowed: frozenset[str]) -> dict[str, int]:
    """``counts`` with every key outside ``allowed`` counted as ``other``."""
    out: dict[str, int] = {}
    for key, value in counts.items():
        label = metrics.bounded(key, allowed)
        out[label] = out.get(label, 0) + value
    return out
