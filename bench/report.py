"""The results: one :class:`Row` per measured phase, and the tables printed from them (the
median of every figure over ``--repeat`` rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

#: What the rows of each scenario's table call a server.
LABELS = {
    ("cluster", "roomcast"): "roomcast 2+rtr",
    ("cluster", "node"): "node 2+redis",
}


@dataclass
class Row:
    """One line of a results table."""

    scenario: str
    server: str
    mode: str
    offered: str
    published_per_s: float
    delivered_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    remote_p50_ms: float | None  #: deliveries on another node than the publisher's
    remote_p99_ms: float | None
    missing: int
    server_cpu: float | None  #: cores, every server process of the scenario together
    loadgen_cpu: float  #: cores
    other_cpu: float | None  #: cores used by other processes meanwhile
    writes_per_delivery: float | None  #: the servers' write syscalls per delivery
    cpu_parts: dict[str, float] = field(default_factory=dict)  #: cores, per server process

    @property
    def label(self) -> str:
        return LABELS.get((self.scenario, self.server), self.server)

    @property
    def per_cpu_second(self) -> float | None:
        """Deliveries per second of server CPU: what the server makes of the CPU it got."""
        if not self.server_cpu:
            return None
        return self.delivered_per_s / self.server_cpu

    @property
    def cpu_us_per_delivery(self) -> float | None:
        """Server CPU microseconds per delivered message."""
        per_s = self.per_cpu_second
        return None if not per_s else 1e6 / per_s


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_cpu_parts(row: Row) -> str:
    return ", ".join(f"{label} {_pct(cores)}" for label, cores in row.cpu_parts.items())


@dataclass(frozen=True)
class Column:
    title: str
    width: int
    cell: Callable[[Row], str]
    left: bool = False


_COMMON_HEAD = (
    Column("server", 15, lambda r: r.label, left=True),
    Column("phase", 5, lambda r: r.mode, left=True),
    Column("offered", 14, lambda r: r.offered, left=True),
    Column("pub/s", 7, lambda r: _int(r.published_per_s)),
    Column("deliv msg/s", 11, lambda r: _int(r.delivered_per_s)),
    Column("p50 ms", 7, lambda r: _ms(r.p50_ms)),
    Column("p99 ms", 7, lambda r: _ms(r.p99_ms)),
    Column("max ms", 7, lambda r: _ms(r.max_ms)),
)
_COMMON_TAIL = (
    Column("missing", 7, lambda r: str(r.missing)),
    Column("srv CPU", 7, lambda r: _pct(r.server_cpu)),
    Column("gen CPU", 7, lambda r: _pct(r.loadgen_cpu)),
    Column("other", 5, lambda r: _pct(r.other_cpu)),
    Column("deliv/srv-CPU-s", 15, lambda r: _int(r.per_cpu_second)),
)
COLUMNS: dict[str, tuple[Column, ...]] = {
    "single": (
        *_COMMON_HEAD,
        *_COMMON_TAIL,
        Column("writes/deliv", 12, lambda r: _num(r.writes_per_delivery)),
    ),
    "cluster": (
        *_COMMON_HEAD,
        Column("rem p50", 7, lambda r: _ms(r.remote_p50_ms)),
        Column("rem p99", 7, lambda r: _ms(r.remote_p99_ms)),
        *_COMMON_TAIL,
        Column("CPU µs/deliv", 12, lambda r: _num(r.cpu_us_per_delivery)),
        Column("writes/deliv", 12, lambda r: _num(r.writes_per_delivery)),
    ),
}


def _line(cells: list[str], columns: tuple[Column, ...]) -> str:
    return "  ".join(
        cell.ljust(col.width) if col.left else cell.rjust(col.width)
        for cell, col in zip(cells, columns, strict=True)
    )


def format_row(row: Row, columns: tuple[Column, ...]) -> str:
    return _line([col.cell(row) for col in columns], columns)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(rows: list[Row]) -> list[Row]:
    """One row per (scenario, server, phase): the median of each figure over the repeats."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.scenario, row.server, row.mode), []).append(row)
    out = []
    for (scenario, server, mode), group in groups.items():
        labels = group[0].cpu_parts.keys()
        out.append(
            Row(
                scenario=scenario,
                server=server,
                mode=mode,
                offered=group[0].offered,
                published_per_s=statistics.median(r.published_per_s for r in group),
                delivered_per_s=statistics.median(r.delivered_per_s for r in group),
                p50_ms=_median([r.p50_ms for r in group]),
                p99_ms=_median([r.p99_ms for r in group]),
                max_ms=_median([r.max_ms for r in group]),
                remote_p50_ms=_median([r.remote_p50_ms for r in group]),
                remote_p99_ms=_median([r.remote_p99_ms for r in group]),
                missing=max(r.missing for r in group),
                server_cpu=_median([r.server_cpu for r in group]),
                loadgen_cpu=statistics.median(r.loadgen_cpu for r in group),
                other_cpu=_median([r.other_cpu for r in group]),
                writes_per_delivery=_median([r.writes_per_delivery for r in group]),
                cpu_parts={
                    label: statistics.median(r.cpu_parts.get(label, 0.0) for r in group)
                    for label in labels
                },
            )
        )
    return out


def print_table(args: argparse.Namespace, rows: list[Row]) -> None:
    members = args.clients // args.rooms
    half = members // 2
    for scenario in args.scenarios:
        summary = [row for row in summarize(rows) if row.scenario == scenario]
        columns = COLUMNS[scenario]
        print()
        if scenario == "single":
            print("SINGLE: one server process.")
        else:
            print(
                "CLUSTER: 2 nodes. roomcast 2+rtr = 2 roomcast nodes + 1 router (ZeroMQ); node "
                "2+redis = 2 Node socket.io@4\nprocesses + @socket.io/redis-adapter + "
                f"redis-server. Each room has {members - half} members on one node and {half} "
                "on the other\n(publisher on either, half the rooms each); 'rem' = deliveries "
                "on the other node than the publisher's."
            )
        print(
            f"fan-out: {args.clients} clients, {args.rooms} rooms of {members} "
            f"(1 publisher, {members - 1} receivers), {args.payload}-char payload, "
            f"{args.duration:g}s measured after {args.warmup:g}s warmup, "
            f"{args.workers} load generator process(es), {os.cpu_count()} CPUs"
            + (f", median of {args.repeat} runs" if args.repeat > 1 else "")
        )
        header = _line([col.title for col in columns], columns)
        print(header)
        print("-" * len(header))
        for row in summary:
            print(format_row(row, columns))
        if scenario == "cluster":
            for row in summary:
                print(f"  srv CPU of {row.label} {row.mode}: {format_cpu_parts(row)}")
    print()
    print(
        "max: closed loop, --window messages in flight per room; rate: open loop, --rate per room."
    )
    print("CPU columns are in cores (srv CPU: every server process of the scenario together);")
    print("'other' is what other processes used meanwhile (when high, the figures are disturbed);")
    print("deliv/srv-CPU-s is deliveries per second of server CPU (CPU µs/deliv its inverse),")
    print("the figure least sensitive to a noisy machine; writes/deliv is the server's write")
    print("system calls per delivered message (below 1: frames to one client were coalesced).")
