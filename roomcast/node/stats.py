"""The counters of one node, served by ``/health``, the admin API and ``/metrics``."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from roomcast.metrics import Histogram

#: Why the HTTP edge refused a connection (the keys of :attr:`NodeStats.http_refused`).
HEAD_TIMEOUT = "head timeout"
HEAD_TOO_LARGE = "head too large"
BODY_TIMEOUT = "body timeout"
BAD_REQUEST = "bad request"


@dataclass
class NodeStats:
    """Counters of one node (every part of the node that counts is handed this object)."""

    connections_opened: int = 0
    #: Sessions opened, by the transport they opened on (``polling``, ``websocket``).
    opened_by_transport: collections.Counter[str] = field(default_factory=collections.Counter)
    upgrades: int = 0  #: polling sessions upgraded to a WebSocket
    sockets: int = 0
    #: Socket.IO connects and disconnects (with their reason), by namespace: a dynamic
    #: namespace's children count under their parent's name, never under a client's.
    socket_connects: collections.Counter[str] = field(default_factory=collections.Counter)
    socket_disconnects: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )
    #: Engine.IO messages from clients (a Socket.IO packet, or one binary attachment of one).
    messages_in: int = 0
    #: Deliveries: broadcast packets written to this node's sockets, whoever broadcast them...
    messages_out: int = 0
    #: ... of which broadcasts that came by the bus (from another node, or an emitter).
    bus_deliveries: int = 0
    #: Broadcasts started on this node (their local recipients are in ``messages_out``)...
    broadcasts: int = 0
    #: ... and broadcasts from the bus delivered here (room messages and broadcasts with acks).
    bus_broadcasts: int = 0
    #: Packets written to one socket only: emits to it, acks, CONNECT, DISCONNECT...
    direct_out: int = 0
    #: Bytes of the sessions' traffic: read from and written to their WebSockets (frames, after
    #: the handshake), and their polling requests' and answers' bodies.
    ws_bytes_in: int = 0
    ws_bytes_out: int = 0
    polling_bytes_in: int = 0
    polling_bytes_out: int = 0
    volatile_dropped: int = 0
    #: Packets for a namespace the server had disconnected (sent before the client knew).
    late_packets: int = 0
    closed_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Connections the HTTP edge refused or closed before any session, by reason
    #: (``roomcast.node.listener``: head timeout, head too large, body timeout, bad request).
    http_refused: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Requests for another node's session served by forwarding them there
    #: (``roomcast.node.forward``), the bytes that crossed, the forwards that failed (the
    #: client got 400), and WebSockets spliced or relayed to their session's node.
    forwarded_requests: int = 0
    forwarded_bytes: int = 0
    forward_failed: int = 0
    spliced_websockets: int = 0
    #: Forwarded polling requests waiting for their owner's answer now (a gauge).
    forwards_in_flight: int = 0
    #: Connection state recovery (``roomcast.node.recovery``): CONNECTs that presented a pid to
    #: a recovery-enabled namespace, those recovered, those refused by reason (each attempt is
    #: one or the other), the packets replayed to recovered clients, and the sessions kept for
    #: recovery now (a gauge: ghosts of lost connections).
    recoveries_attempted: int = 0
    recoveries_succeeded: int = 0
    recoveries_refused: collections.Counter[str] = field(default_factory=collections.Counter)
    replayed_messages: int = 0
    sessions_kept: int = 0
    #: Kept sessions released before their window ended: a namespace had
    #: ``recovery.max_sessions`` kept already.
    sessions_dropped: int = 0
    #: Kept sessions handed over to another node whose client came back there.
    sessions_handed_over: int = 0
    #: As a keeper (``roomcast.node.keeper``): dead nodes whose copy this node adopted, those
    #: whose copy was not exact (their sessions lost), and copies found not exact while their
    #: node lived (a gap in its keep stream: everything was asked for again).
    keeper_adopted: int = 0
    keeper_lost: int = 0
    keeper_resyncs: int = 0
    #: What this node sent the Admin UI's viewers (the admin sockets of the whole cluster, one
    #: room broadcast each), by event: ``server_stats`` and the development events. Nothing
    #: moves while no admin socket is connected anywhere (``roomcast.node.admin_ui``).
    admin_ui_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    #: With ``metrics.enabled``: local recipients per broadcast started here, per broadcast
    #: from the bus, and seconds per join (None: not recorded).
    fanout: Histogram | None = None
    bus_fanout: Histogram | None = None
    join_seconds: Histogram | None = None
