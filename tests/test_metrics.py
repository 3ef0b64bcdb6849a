"""The pieces /metrics shares (roomcast.metrics): the fixed-bucket histogram and the families,
checked through the reference parser of the text format."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from support.scrape import Scrape

from roomcast import metrics


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    """An observation equal to a bound falls in that bound's bucket; buckets add up, +Inf last."""
    h = metrics.Histogram((1, 5, 10))
    for value in (0, 1, 2, 5, 7, 10, 11, 500):
        h.observe(value)
    assert h.buckets() == [("1.0", 2), ("5.0", 4), ("10.0", 6), ("+Inf", 8)]
    assert h.count == 8 and h.sum == 536


def test_families_parse_with_the_reference_parser() -> None:
    """Counters get ``_total``, histograms their buckets, count and sum, per label value."""
    fanout = metrics.Histogram(metrics.FANOUT_BUCKETS)
    fanout.observe(3)

    def collect() -> Iterator[Metric]:
        yield metrics.counter("roomcast_things", "Things.", 4)
        yield metrics.labelled_counter("roomcast_why", "Why.", "reason", {"b": 2}, ("a",))
        yield metrics.histogram("roomcast_fanout", "Fan-out.", "source", {"local": fanout})

    reg = metrics.registry(metrics.FunctionCollector(collect))
    scraped = Scrape.parse(generate_latest(reg).decode())
    assert scraped.value("roomcast_things_total") == 4
    assert scraped.value("roomcast_why_total", reason="a") == 0
    assert scraped.has("roomcast_why_total", reason="a")
    assert scraped.value("roomcast_why_total", reason="b") == 2
    assert scraped.value("roomcast_fanout_bucket", source="local", le="2.0") == 0
    assert scraped.value("roomcast_fanout_bucket", source="local", le="5.0") == 1
    assert scraped.value("roomcast_fanout_count", source="local") == 1
    assert scraped.types == {
        "roomcast_things": "counter",
        "roomcast_why": "counter",
        "roomcast_fanout": "histogram",
    }


def test_bounded_labels() -> None:
    """A value outside the known set is counted as ``other``."""
    assert metrics.bounded("ping timeout", frozenset({"ping timeout"})) == "ping timeout"
    assert metrics.bounded("room-123", frozenset({"ping timeout"})) == "other"
