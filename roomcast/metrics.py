"""``GET /metrics`` in Prometheus' text format: the pieces nodes and routers share.

Counters are not kept twice: a process's collector (:mod:`roomcast.node.metrics`,
:mod:`roomcast.router.metrics`) reads the counters the process keeps anyway (its stats
objects) when Prometheus scrapes, and turns them into metric families; nothing on the hot path
knows about Prometheus. The two distributions that have no counter of their own (join latency,
broadcast fan-out) are recorded by a :class:`Histogram`, where the event happens (once per
join, once per broadcast: never per delivery), and only with ``metrics.enabled``.

Every process has a registry of its own (several nodes may share a process, as in the tests),
served by :func:`handler` behind the access rule of :mod:`roomcast.access`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from roomcast.access import MetricsAccess

K = TypeVar("K", bound=tuple[str, ...])  #: label values, one per label
#: A family with label values (a counter or a gauge).
F = TypeVar("F", CounterMetricFamily, GaugeMetricFamily)

#: Seconds a join may take: from a room this node already holds (no subscription: ~0) to the
#: proof of a new subscription through a router, and to ``cluster.join_timeout_ms`` (5 s).
JOIN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Local recipients of one broadcast.
FANOUT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 50_000)


class Histogram:
    """A histogram with fixed buckets: ``observe`` costs a bisection and two additions.

    ``counts[i]`` holds the observations in bucket ``i`` alone (``bounds[i - 1] < v <=
    bounds[i]``; the last one is ``+Inf``); :meth:`buckets` makes them cumulative, as
    Prometheus wants, at scrape time.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        assert list(self.bounds) == sorted(set(self.bounds)), "bounds must increase"
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of ``value``."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, ``+Inf`` last (HistogramMetricFamily's shape)."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else _le(bound), total))
        return out


def _le(bound: float) -> str:
    # Prometheus' own clients print bounds as floats ("1.0"); a bound is the same series
    # whatever its spelling only if every client of one metric spells it alike.
    return repr(float(bound))


# -- families ---------------------------------------------------------------------------------


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """An unlabelled counter (``name`` without ``_total``: the family adds it)."""
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    """An unlabelled gauge."""
    return GaugeMetricFamily(name, doc, value=value)


def labelled_counter(
    name: str, doc: str, label: str, values: Mapping[str, float], known: Iterable[str] = ()
) -> CounterMetricFamily:
    """A counter with one label: a series per key of ``values``, and a zero one for each
    ``known`` value not counted yet (so that ``rate()`` sees a series from its start)."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key in sorted({*known, *values}):
        family.add_metric([key], values.get(key, 0))
    return family


def counter_by(
    name: str, doc: str, labels: Sequence[str], values: Mapping[K, float]
) -> CounterMetricFamily:
    """A counter with several labels: one series per key (a tuple of label values)."""
    return _series(CounterMetricFamily(name, doc, labels=list(labels)), values)


def labelled_gauge(
    name: str, doc: str, labels: Sequence[str], values: Mapping[K, float]
) -> GaugeMetricFamily:
    """A gauge with labels: one series per key (a tuple of label values)."""
    return _series(GaugeMetricFamily(name, doc, labels=list(labels)), values)


def _series(family: F, values: Mapping[K, float]) -> F:
    """``family`` with one series per key of ``values`` (a tuple of label values), sorted."""
    for key in sorted(values):
        family.add_metric(list(key), values[key])
    return family


def histogram(
    name: str, doc: str, label: str, histograms: Mapping[str, Histogram]
) -> HistogramMetricFamily:
    """A histogram family with one label, a series set per :class:`Histogram`."""
    family = HistogramMetricFamily(name, doc, labels=[label] if label else None)
    for key in sorted(histograms):
        h = histograms[key]
        family.add_metric([key] if label else [], h.buckets(), h.sum)
    return family


def bounded(value: str, allowed: frozenset[str], other: str = "other") -> str:
    """``value`` when it is one of ``allowed``, else ``other``: a label never takes a value
    from outside a known set (a peer's text, a room, a sid)."""
    return value if value in allowed else other


# -- serving ----------------------------------------------------------------------------------


class FunctionCollector:
    """A collector that calls ``collect`` (a process's reader of its own counters)."""

    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        """The families, read now."""
        return list(self._collect())


def registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own for one process (never the library's global one)."""
    reg = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        reg.register(collector)
    return reg


def handler(
    reg: CollectorRegistry, access: MetricsAccess
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of ``/metrics``: the access rule, then ``reg`` in the text format
    (or OpenMetrics, when the scraper asks for it), gzipped when the scraper accepts it."""
    serve = make_aiohttp_handler(reg)

    async def metrics(request: web.Request) -> web.StreamResponse:
        refused = access.refusal(request)
        if refused == 401:
            return web.Response(status=401, text="unauthorized: the admin token is needed\n")
        if refused is not None:
            return web.Response(status=403, text="forbidden: see metrics.access\n")
        return await serve(request)

    return metrics
