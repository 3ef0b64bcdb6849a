"""Scraping ``/metrics`` as Prometheus would, and reading what came back.

Every scrape is parsed by ``prometheus_client.parser`` (the reference parser of the text
format), never by a regex: what it cannot parse fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

import support.timing as support_timing

Key = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Scrape:
    """One scrape: every sample by (sample name, labels), and each family's type."""

    samples: dict[Key, float]
    types: dict[str, str]  #: family name -> counter, gauge, histogram...

    @classmethod
    def parse(cls, text: str) -> Scrape:
        """Parse the text format (duplicates are an error: each series appears once)."""
        samples: dict[Key, float] = {}
        types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in samples, f"series twice: {key}"
                samples[key] = sample.value
        return cls(samples, types)

    def value(self, name: str, **labels: str) -> float:
        """The value of one series (0 when absent: a counter not counted yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        """Whether the series is present."""
        return (name, frozenset(labels.items())) in self.samples

    def total(self, name: str, **labels: str) -> float:
        """The sum of the series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def delta(self, before: Scrape, name: str, **labels: str) -> float:
        """How much one series moved since ``before``."""
        return self.value(name, **labels) - before.value(name, **labels)

    def label_values(self) -> Iterator[tuple[str, str, str]]:
        """Every (sample name, label, value) of the scrape."""
        for name, labels in self.samples:
            for label, value in labels:
                yield name, label, value


async def scrape_status(url: str, **headers: str) -> tuple[int, str]:
    """GET ``url`` (a ``/metrics`` URL) with ``headers``: its status and body."""
    timeout = aiohttp.ClientTimeout(total=support_timing.PROCESS_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(url, headers=headers) as response,
    ):
        return response.status, await response.text()


async def scrape(url: str, **headers: str) -> Scrape:
    """Scrape ``url``; it must answer 200 in the text format."""
    status, text = await scrape_status(url, **headers)
    assert status == 200, (status, text)
    return Scrape.parse(text)
