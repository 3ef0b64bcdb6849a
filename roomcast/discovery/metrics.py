"""The discovery state as metric families, for ``/metrics`` on nodes and routers."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from roomcast import metrics

from .base import Discovery

_HEALTH = ("healthy", "critical")


def discovery_metrics(discovery: Discovery, backend: str) -> Iterator[Metric]:
    """What ``discovery`` (whose backend is ``backend``) knows now: whether its source
    answers, and the routers and nodes it lists, healthy or not."""
    view = discovery.view()
    yield metrics.labelled_gauge(
        "roomcast_discovery_source_ok",
        "1 while the discovery backend answers (static: always), 0 while it cannot be reached "
        "(the last known view is used meanwhile).",
        ("backend",),
        {(backend,): 1 if view.source_ok else 0},
    )
    routers = {(h,): 0 for h in _HEALTH}
    for router in view.routers:
        routers[(_HEALTH[0] if router.healthy else _HEALTH[1],)] += 1
    yield metrics.labelled_gauge(
        "roomcast_discovery_routers",
        "Routers the discovery view lists, by the health of their check.",
        ("health",),
        routers,
    )
    nodes = {(h,): 0 for h in _HEALTH}
    for node in view.nodes:
        nodes[(_HEALTH[0] if node.healthy else _HEALTH[1],)] += 1
    yield metrics.labelled_gauge(
        "roomcast_discovery_nodes",
        "Nodes the discovery view lists (static: discovery.nodes), by the health of their check.",
        ("health",),
        nodes,
    )
