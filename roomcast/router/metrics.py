"""A router's ``/metrics``: its forwarding loop's counters, read when Prometheus scrapes.

The forwarding thread counts as it always does (:class:`~roomcast.router.router.RouterStats`,
and the CURVE guard's handshakes); :func:`router_metrics` reads them through
:meth:`Router.stats_dict` on the event loop's thread, as ``/stats`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.metrics_core import Metric

from roomcast import metrics

from .guard import BAD_HANDSHAKE, KEY_NOT_ALLOWED, NO_CURVE

CURVE_REFUSALS = frozenset((KEY_NOT_ALLOWED, NO_CURVE, BAD_HANDSHAKE))


class MetricsRouter(Protocol):
    """What ``/metrics`` reads of a router."""

    @property
    def healthy(self) -> bool: ...

    def stats_dict(self) -> dict[str, Any]: ...


def router_metrics(router: MetricsRouter) -> Iterator[Metric]:
    """The router's families (the CURVE ones only with ``bus.curve``)."""
    s = router.stats_dict()
    yield metrics.gauge(
        "roomcast_router_up", "1 while the forwarding loop runs, else 0.", int(router.healthy)
    )
    yield metrics.counter(
        "roomcast_router_batches_received",
        "Batch frames received from publishers (one per node per event-loop pass).",
        s["batches_in"],
    )
    yield metrics.counter(
        "roomcast_router_messages_received",
        "Messages received, split from batches.",
        s["messages_in"],
    )
    yield metrics.counter(
        "roomcast_router_received_bytes", "Bytes of the messages received.", s["bytes_in"]
    )
    yield metrics.counter(
        "roomcast_router_messages_sent",
        "Messages sent to subscribers: a message to 3 subscribers counts 3.",
        s["messages_out"],
    )
    yield metrics.counter(
        "roomcast_router_unrouted",
        "Messages no subscriber wanted (dropped here, by design).",
        s["unrouted"],
    )
    yield metrics.counter(
        "roomcast_router_malformed",
        "Frames that are not batches, and messages without a topic: dropped.",
        s["malformed"],
    )
    yield metrics.gauge("roomcast_router_topics", "Topics with subscribers now.", s["topics"])
    yield metrics.gauge(
        "roomcast_router_subscriptions",
        "Subscriptions now (a topic two nodes subscribe to counts 2).",
        s["subscriptions"],
    )
    yield metrics.labelled_counter(
        "roomcast_router_subscription_changes",
        "Subscriptions and unsubscriptions that reached the router.",
        "change",
        {"subscribe": s["subscribe_events"], "unsubscribe": s["unsubscribe_events"]},
    )
    if not s["curve"]:
        return
    refused = {
        metrics.bounded(reason, CURVE_REFUSALS): count
        for reason, count in s["curve_refused_by_reason"].items()
    }
    yield metrics.labelled_counter(
        "roomcast_router_curve_refused",
        "CURVE handshakes refused, by reason: key not allowed, no curve (a peer without keys), "
        "bad handshake (another router key expected, or garbage).",
        "reason",
        refused,
        CURVE_REFUSALS,
    )
    yield metrics.counter(
        "roomcast_router_curve_accepted", "CURVE handshakes that succeeded.", s["curve_accepted"]
    )
    yield metrics.counter(
        "roomcast_router_curve_cut",
        "Connections cut because their key was revoked (a reload of the allowed keys).",
        s["curve_cut"],
    )
    yield metrics.gauge(
        "roomcast_router_allowed_keys", "Public keys let in now.", s["allowed_keys"]
    )
    yield metrics.counter(
        "roomcast_router_key_reloads", "Reloads of the allowed keys that took.", s["key_reloads"]
    )
