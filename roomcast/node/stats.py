"""The counters of one node, served by ``/health`` and the admin API."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

#: Why the HTTP edge refused a connection (the keys of :attr:`NodeStats.http_refused`).
HEAD_TIMEOUT = "head timeout"
HEAD_TOO_LARGE = "head too large"
BODY_TIMEOUT = "body timeout"
BAD_REQUEST = "bad request"


@dataclass
class NodeStats:
    """Counters of one node (every part of the node that counts is handed this object)."""

    connections_opened: int = 0
    sockets: int = 0
    messages_in: int = 0
    messages_out: int = 0
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
