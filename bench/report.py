"""The results: one :class:`Row` per measured phase, join latencies (:class:`JoinSample`) and
connection figures (:class:`ConnectRow`), and the tables printed from them (the median of every
figure over ``--repeat`` rounds; join latencies of all rounds pooled).
"""

from __future__ import annotations

import argparse
import os
import statistics
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

#: What the rows of each scenario's table call a server.
LABELS = {
    ("cluster", "roomcast"): "roomcast 2+rtr",
    ("cluster", "roomcast-curve"): "roomcast CURVE",
    ("single", "roomcast-nometrics"): "roomcast no-metr",
    ("single", "roomcast-recovery"): "roomcast recov",
    ("cluster", "roomcast-recovery"): "roomcast recov",
    ("cluster", "node"): "node 2+redis",
    ("balancer", "poll-pinned"): "polling pinned",
    ("balancer", "poll-balanced"): "polling balanced",
    ("balancer", "ws-direct"): "ws direct",
    ("balancer", "ws-spliced"): "ws spliced",
}


def server_label(scenario: str, server: str, nodes: int = 0) -> str:
    """What the tables call ``server`` in ``scenario`` (``nodes``: a scale-out node count)."""
    if scenario == "scaleout":
        return f"roomcast {nodes}+rtr" if server == "roomcast" else f"{server} {nodes}+redis"
    return LABELS.get((scenario, server), server)


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
    nodes: int = 0  #: edge nodes of a scale-out deployment (0: another scenario)
    bus_in_per_node: float | None = None  #: bytes/s each node received from its bus, mean
    bus_in_max_node: float | None = None  #: ... and the most any node received
    #: The balancer scenario: cores HAProxy used (not in ``server_cpu``), the HTTP requests
    #: the polling clients sent per second, what the nodes forwarded to each other per second
    #: (requests, bytes), the forwards that failed, and the WebSockets spliced at the end.
    #: A roomcast cluster: the messages per batch its router received (a node's batch is what
    #: it published in one event-loop pass).
    bus_batch: float | None = None
    balancer_cpu: float | None = None
    requests_per_s: float | None = None
    forwarded_per_s: float | None = None
    forwarded_bytes_per_s: float | None = None
    forward_failed: int | None = None
    spliced: int | None = None

    @property
    def label(self) -> str:
        return server_label(self.scenario, self.server, self.nodes)

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


T = TypeVar("T")


@dataclass(frozen=True)
class Column(Generic[T]):
    """One column of a table of ``T`` rows: its title, width and how a row fills it."""

    title: str
    width: int
    cell: Callable[[T], str]
    left: bool = False


_COMMON_HEAD: tuple[Column[Row], ...] = (
    Column("server", 15, lambda r: r.label, left=True),
    Column("phase", 5, lambda r: r.mode, left=True),
    Column("offered", 14, lambda r: r.offered, left=True),
    Column("pub/s", 7, lambda r: _int(r.published_per_s)),
    Column("deliv msg/s", 11, lambda r: _int(r.delivered_per_s)),
    Column("p50 ms", 7, lambda r: _ms(r.p50_ms)),
    Column("p99 ms", 7, lambda r: _ms(r.p99_ms)),
    Column("max ms", 7, lambda r: _ms(r.max_ms)),
)
_PER_CPU_SECOND: Column[Row] = Column("deliv/srv-CPU-s", 15, lambda r: _int(r.per_cpu_second))
_COMMON_TAIL: tuple[Column[Row], ...] = (
    Column("missing", 7, lambda r: str(r.missing)),
    Column("srv CPU", 7, lambda r: _pct(r.server_cpu)),
    Column("gen CPU", 7, lambda r: _pct(r.loadgen_cpu)),
    Column("other", 5, lambda r: _pct(r.other_cpu)),
    _PER_CPU_SECOND,
)
_CPU_PER_DELIVERY: Column[Row] = Column("CPU µs/deliv", 12, lambda r: _num(r.cpu_us_per_delivery))
COLUMNS: dict[str, tuple[Column[Row], ...]] = {
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
        _CPU_PER_DELIVERY,
        Column("writes/deliv", 12, lambda r: _num(r.writes_per_delivery)),
    ),
}


def _line(cells: list[str], columns: tuple[Column[T], ...]) -> str:
    return "  ".join(
        cell.ljust(col.width) if col.left else cell.rjust(col.width)
        for cell, col in zip(cells, columns, strict=True)
    )


def format_row(row: T, columns: tuple[Column[T], ...]) -> str:
    return _line([col.cell(row) for col in columns], columns)


def percentile(sorted_values: array[int], q: float) -> float | None:
    """The ``q`` quantile of sorted µs values, in ms (nearest rank); None if there are none."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index] / 1000


def print_rows(columns: tuple[Column[T], ...], rows: Iterable[T]) -> None:
    """A table: the column titles, a rule, one line per row."""
    header = _line([col.title for col in columns], columns)
    print(header)
    print("-" * len(header))
    for row in rows:
        print(format_row(row, columns))


def _print_measured(
    args: argparse.Namespace, columns: tuple[Column[Row], ...], summary: list[Row]
) -> None:
    """How the figures were measured, the table, and each row's server CPU by process."""
    print(
        f"{args.duration:g}s measured after {args.warmup:g}s warmup, {args.workers} load "
        f"generator process(es), {os.cpu_count()} CPUs"
        + (f", median of {args.repeat} runs" if args.repeat > 1 else "")
    )
    print_rows(columns, summary)
    for row in summary:
        print(f"  srv CPU of {row.label} {row.mode}: {format_cpu_parts(row)}")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _max_or_none(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def summarize(rows: list[Row]) -> list[Row]:
    """One row per (scenario, nodes, server, phase): the median of each figure over the
    repeats."""
    groups: dict[tuple[str, int, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.scenario, row.nodes, row.server, row.mode), []).append(row)
    out = []
    for (scenario, nodes, server, mode), group in groups.items():
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
                nodes=nodes,
                bus_in_per_node=_median([r.bus_in_per_node for r in group]),
                bus_in_max_node=_median([r.bus_in_max_node for r in group]),
                bus_batch=_median([r.bus_batch for r in group]),
                balancer_cpu=_median([r.balancer_cpu for r in group]),
                requests_per_s=_median([r.requests_per_s for r in group]),
                forwarded_per_s=_median([r.forwarded_per_s for r in group]),
                forwarded_bytes_per_s=_median([r.forwarded_bytes_per_s for r in group]),
                forward_failed=_max_or_none([r.forward_failed for r in group]),
                spliced=_max_or_none([r.spliced for r in group]),
            )
        )
    return out


def print_table(args: argparse.Namespace, rows: list[Row]) -> None:
    """The fan-out tables of the single and cluster scenarios, and what their columns mean."""
    members = args.clients // args.rooms
    half = members // 2
    fanout = [s for s in args.scenarios if s in COLUMNS]
    if not fanout:
        return
    for scenario in fanout:
        summary = [row for row in summarize(rows) if row.scenario == scenario]
        columns = COLUMNS[scenario]
        print()
        if scenario == "single":
            print(
                "SINGLE: one server process (roomcast no-metr = roomcast with "
                "metrics.enabled = false; roomcast recov = roomcast\nwith connection state "
                "recovery on)."
            )
        else:
            print(
                "CLUSTER: 2 nodes. roomcast 2+rtr = 2 roomcast nodes + 1 router (ZeroMQ); "
                "roomcast CURVE = the same with\nits bus authenticated and encrypted (CURVE); "
                "roomcast recov = the same with connection state recovery on;\n"
                "node 2+redis = 2 Node socket.io@4 processes +\n@socket.io/redis-adapter + "
                f"redis-server. Each room has {members - half} members on one node and {half} "
                "on the other (publisher on\neither, half the rooms each); 'rem' = deliveries "
                "on the other node than the publisher's."
            )
        print(
            f"fan-out: {args.clients} clients, {args.rooms} rooms of {members} "
            f"(1 publisher, {members - 1} receivers), {args.payload}-char payload, "
            f"{args.duration:g}s measured after {args.warmup:g}s warmup, "
            f"{args.workers} load generator process(es), {os.cpu_count()} CPUs"
            + (f", median of {args.repeat} runs" if args.repeat > 1 else "")
        )
        print_rows(columns, summary)
        if scenario == "cluster":
            for row in summary:
                print(f"  srv CPU of {row.label} {row.mode}: {format_cpu_parts(row)}")
            print_curve_cost(summary)
        else:
            print_metrics_cost(summary)
        print_recovery_cost(summary)
    print()
    print(
        "max: closed loop, --window messages in flight per room; rate: open loop, --rate per room."
    )
    print("CPU columns are in cores (srv CPU: every server process of the scenario together);")
    print("'other' is what other processes used meanwhile (when high, the figures are disturbed);")
    print("deliv/srv-CPU-s is deliveries per second of server CPU (CPU µs/deliv its inverse),")
    print("the figure least sensitive to a noisy machine; writes/deliv is the server's write")
    print("system calls per delivered message (below 1: frames to one client were coalesced).")


def variant_cost(base: Row, variant: Row, as_ratio: bool = False) -> str:
    """What a variant of a server cost in one phase against the base of the same run (CURVE
    against an open bus, metrics on against off): CPU per delivery (as a change, or
    ``as_ratio``: variant / base) and latency."""
    parts = []
    if base.cpu_us_per_delivery and variant.cpu_us_per_delivery:
        ratio = variant.cpu_us_per_delivery / base.cpu_us_per_delivery
        change = f"{ratio:.2f}x" if as_ratio else f"{(ratio - 1) * 100:+.1f}%"
        parts.append(
            f"CPU µs/deliv {_num(base.cpu_us_per_delivery)} -> "
            f"{_num(variant.cpu_us_per_delivery)} ({change})"
        )
    parts.append(f"deliv/s {_int(base.delivered_per_s)} -> {_int(variant.delivered_per_s)}")
    parts.append(
        f"p50/p99 ms {_ms(base.p50_ms)}/{_ms(base.p99_ms)} -> "
        f"{_ms(variant.p50_ms)}/{_ms(variant.p99_ms)}"
    )
    return ", ".join(parts)


def print_curve_cost(summary: list[Row]) -> None:
    """One line per phase comparing roomcast's cluster with and without CURVE on its bus."""
    rows = {(row.server, row.mode): row for row in summary}
    for mode in ("max", "rate"):
        open_row, curve_row = rows.get(("roomcast", mode)), rows.get(("roomcast-curve", mode))
        if open_row is not None and curve_row is not None:
            print(f"  CURVE on the bus, {mode}: {variant_cost(open_row, curve_row)}")


def print_metrics_cost(summary: list[Row]) -> None:
    """One line per phase comparing one roomcast node with metrics on (the default) and off."""
    rows = {(row.server, row.mode): row for row in summary}
    for mode in ("max", "rate"):
        off, on = rows.get(("roomcast-nometrics", mode)), rows.get(("roomcast", mode))
        if off is not None and on is not None:
            print(f"  metrics off -> on, {mode}: {variant_cost(off, on)}")


def print_recovery_cost(summary: list[Row]) -> None:
    """One line per phase comparing roomcast with connection state recovery off (the
    default) and on, in the same run."""
    rows = {(row.server, row.mode): row for row in summary}
    for mode in ("max", "rate"):
        off, on = rows.get(("roomcast", mode)), rows.get(("roomcast-recovery", mode))
        if off is not None and on is not None:
            print(f"  recovery off -> on, {mode}: {variant_cost(off, on, as_ratio=True)}")


# -- what recovery holds in memory (single scenario) ------------------------------------------


@dataclass
class MemoryRow:
    """A roomcast process's memory (VmRSS, KB, each read once its CPU settled) with the
    single scenario's clients: connected and joined, after the phases, and after every client
    dropped its connection (with recovery on, each one's session is then kept)."""

    server: str
    clients: int
    joined_kb: int | None
    traffic_kb: int | None
    gone_kb: int | None
    #: Sessions kept (``/admin/stats``) once the clients were gone; None: not read.
    sessions_kept: int | None
    #: After the phases: the packets the history keeps, and their frames' bytes (what
    #: ``recovery.max_bytes`` bounds), as the process reports them; None: not read.
    history_packets: int | None = None
    history_bytes: int | None = None


def _bytes_mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


MEMORY_COLUMNS: tuple[Column[MemoryRow], ...] = (
    Column("server", 15, lambda r: server_label("single", r.server), left=True),
    Column("clients", 7, lambda r: str(r.clients)),
    Column("joined MB", 9, lambda r: _mb(r.joined_kb)),
    Column("after phases MB", 15, lambda r: _mb(r.traffic_kb)),
    Column("history packets", 15, lambda r: _int(r.history_packets)),
    Column("frames MB", 9, lambda r: _bytes_mb(r.history_bytes)),
    Column("clients gone MB", 15, lambda r: _mb(r.gone_kb)),
    Column("sessions kept", 13, lambda r: _int(r.sessions_kept)),
)


def summarize_memory(rows: list[MemoryRow]) -> list[MemoryRow]:
    """One row per server: the median of each figure over the repeats."""
    groups: dict[str, list[MemoryRow]] = {}
    for row in rows:
        groups.setdefault(row.server, []).append(row)
    return [
        MemoryRow(
            server,
            group[0].clients,
            _median_int([r.joined_kb for r in group]),
            _median_int([r.traffic_kb for r in group]),
            _median_int([r.gone_kb for r in group]),
            _median_int([r.sessions_kept for r in group]),
            _median_int([r.history_packets for r in group]),
            _median_int([r.history_bytes for r in group]),
        )
        for server, group in groups.items()
    ]


def _delta_kb(on: int | None, off: int | None) -> int | None:
    return None if on is None or off is None else on - off


def _signed_mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:+,.1f} MB"


def print_memory(args: argparse.Namespace, rows: list[MemoryRow]) -> None:
    """What connection state recovery holds in memory: the RSS of roomcast with recovery off
    and on at each point of the single scenario, and the differences."""
    if not rows:
        return
    summary = summarize_memory(rows)
    print()
    print(
        f"RECOVERY MEMORY (single scenario, one roomcast process): VmRSS with {args.clients} "
        "clients connected and joined,\nafter the phases (recovery on: the node's history, "
        "at most recovery.max_packets = 10,000 packets or\nmax_bytes = 16 MiB per namespace), "
        "and after every client dropped its connection (recovery on: each\nsession kept for "
        "max_disconnection_ms). Each read once the process's CPU settled"
        + (f"; median of {args.repeat} runs" if args.repeat > 1 else "")
        + "."
    )
    print_rows(MEMORY_COLUMNS, summary)
    by_server = {row.server: row for row in summary}
    off, on = by_server.get("roomcast"), by_server.get("roomcast-recovery")
    if off is None or on is None:
        return
    joined = _delta_kb(on.joined_kb, off.joined_kb)
    traffic = _delta_kb(on.traffic_kb, off.traffic_kb)
    gone = _delta_kb(on.gone_kb, off.gone_kb)
    history = None if traffic is None or joined is None else traffic - joined
    sessions = None if gone is None or traffic is None else gone - traffic
    kept = on.sessions_kept or 0
    each = f": {sessions * 1024 / kept:,.0f} bytes each" if sessions is not None and kept else ""
    packets = on.history_packets or 0
    per_packet = (
        f": {history * 1024 / packets:,.0f} bytes per packet kept" if history and packets else ""
    )
    print(
        f"  recovery off -> on: {_signed_mb(joined)} joined, {_signed_mb(traffic)} after the "
        f"phases, {_signed_mb(gone)} with the clients gone;\n  the history "
        f"{_signed_mb(history)} (after the phases, less joined{per_packet}), the {kept:,} "
        f"sessions kept\n  {_signed_mb(sessions)} (clients gone, less after the phases{each}). "
        "RSS rarely shrinks (freed memory stays with\n  the process): these are what the "
        "process grew by, and noisy; compare them within one run. frames MB: the\n  bytes of "
        "the kept packets' frames, which recovery.max_bytes bounds (the process's own count)."
    )


# -- the scale-out scenario -------------------------------------------------------------------


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:,.1f}"


SCALEOUT_COLUMNS: tuple[Column[Row], ...] = (
    Column("nodes", 5, lambda r: str(r.nodes)),
    *(col for col in _COMMON_HEAD if col.title != "max ms"),
    *(col for col in _COMMON_TAIL if col is not _PER_CPU_SECOND),
    _CPU_PER_DELIVERY,
    Column("bus in KB/s/node", 16, lambda r: _kb(r.bus_in_per_node)),
    Column("busiest node", 12, lambda r: _kb(r.bus_in_max_node)),
)


def scaleout_rows(rows: list[Row]) -> list[Row]:
    """The scale-out rows (medians over the repeats), by node count, then server and phase."""
    summary = [row for row in summarize(rows) if row.scenario == "scaleout"]
    order = {"roomcast": 0, "node": 1}
    return sorted(summary, key=lambda r: (r.nodes, r.mode, order.get(r.server, 2)))


def print_scaleout(args: argparse.Namespace, rows: list[Row]) -> None:
    """The scale-out table: per node count and server, CPU per delivery and bus bytes."""
    summary = scaleout_rows(rows)
    if not summary:
        return
    members = args.clients // args.rooms
    print()
    print(
        f"SCALE-OUT: {args.scale_text} edge nodes. roomcast N+rtr = N roomcast nodes + 1 router; "
        "node N+redis = N Node socket.io@4\nprocesses + @socket.io/redis-adapter + "
        f"redis-server. Every room has members on exactly 2 nodes ({members - members // 2} "
        f"+ {members // 2}), room r on\nnodes r and r+1 (mod N); the same {args.clients} "
        f"clients and {args.rooms} rooms at every N, so the offered load is the same."
    )
    _print_measured(args, SCALEOUT_COLUMNS, summary)
    print(
        "bus in = what one edge node received from its bus per second (mean over the nodes; "
        "busiest: the most any node\ngot). roomcast: the node's bus bytes_in counter "
        "(/admin/cluster; ZeroMQ message bytes, its own envelopes\nback from the router "
        "included); node: TCP bytes its Redis connections received (ss -tinp, RESP framing\n"
        "included). See bench/traffic.py."
    )


# -- the balancer scenario --------------------------------------------------------------------


def _per_delivery(cores: float | None, row: Row) -> str:
    """CPU µs per delivered message of ``cores``."""
    if cores is None or not row.delivered_per_s:
        return "-"
    return f"{cores * 1e6 / row.delivered_per_s:.2f}"


def _forwarded_share(row: Row) -> str:
    if row.forwarded_per_s is None or not row.requests_per_s:
        return "-"
    return f"{row.forwarded_per_s / row.requests_per_s * 100:.0f}%"


BALANCER_COLUMNS: tuple[Column[Row], ...] = (
    Column("clients", 16, lambda r: r.label, left=True),
    *(col for col in _COMMON_HEAD[1:] if col.title != "max ms"),
    Column("missing", 7, lambda r: str(r.missing)),
    Column("srv CPU", 7, lambda r: _pct(r.server_cpu)),
    Column("HAProxy", 7, lambda r: _pct(r.balancer_cpu)),
    Column("gen CPU", 7, lambda r: _pct(r.loadgen_cpu)),
    Column("other", 5, lambda r: _pct(r.other_cpu)),
    _CPU_PER_DELIVERY,
    Column("HAProxy µs/deliv", 16, lambda r: _per_delivery(r.balancer_cpu, r)),
    Column("HTTP req/s", 10, lambda r: _int(r.requests_per_s)),
    Column("fwd req/s", 9, lambda r: _int(r.forwarded_per_s)),
    Column("fwd", 4, _forwarded_share),
    Column("fwd KB/s", 8, lambda r: _kb(r.forwarded_bytes_per_s)),
    Column("fwd failed", 10, lambda r: "-" if r.forward_failed is None else str(r.forward_failed)),
    Column("spliced WS", 10, lambda r: "-" if r.spliced is None else str(r.spliced)),
)

#: The order of the balancer table's rows: polling (pinned, then balanced), then WebSocket.
_BALANCER_ORDER = {"poll-pinned": 0, "poll-balanced": 1, "ws-direct": 2, "ws-spliced": 3}


def balancer_rows(rows: list[Row]) -> list[Row]:
    """The balancer rows (medians over the repeats): polling then WebSocket, each by phase,
    the two ways to reach a session side by side."""
    summary = [row for row in summarize(rows) if row.scenario == "balancer"]

    def key(row: Row) -> tuple[int, str, int]:
        rank = _BALANCER_ORDER.get(row.server, 4)
        return rank // 2, row.mode, rank

    return sorted(summary, key=key)


def print_balancer(args: argparse.Namespace, rows: list[Row]) -> None:
    """The balancer table: what forwarding a request, or splicing a WebSocket, to the node
    of its session costs."""
    summary = balancer_rows(rows)
    if not summary:
        return
    members = args.balancer_clients // args.balancer_rooms
    print()
    print(
        f"BALANCER: {args.nodes} roomcast nodes + 1 router, {args.balancer_clients} clients in "
        f"{args.balancer_rooms} rooms of {members} (spread over the nodes as in the cluster "
        f"scenario);\nrate phase: {args.balancer_rate:g} msgs/s per room. polling: Engine.IO "
        "long-polling clients, through HAProxy in both rows (1 thread,\na server connection "
        "per request): pinned = every request to the node of its session (an HAProxy "
        "frontend per\nnode: what sticky sessions give); balanced = every request round-robin "
        "over the nodes, no affinity: a node\nforwards a request for another's session there "
        "(HTTP). The same sessions, opened on the same nodes, in both\nrows. ws: WebSockets "
        "whose session was opened by polling on its node, then upgraded on a WebSocket to\n"
        "that node (direct) or to the next one, which splices it to the session's node "
        "(spliced); no HAProxy."
    )
    _print_measured(args, BALANCER_COLUMNS, summary)
    print(
        "srv CPU: the roomcast processes (nodes + router), HAProxy's apart (and its CPU µs per "
        "delivery). HTTP req/s:\nthe requests the polling clients sent; fwd req/s, fwd KB/s: "
        "what the nodes forwarded to each other\n(their forwarded_requests and forwarded_bytes "
        "counters: bodies both ways, every byte of a spliced\nWebSocket); fwd: the share of "
        "the requests forwarded; fwd failed: forwards that failed in the window\n(the client "
        "got 400); spliced WS: WebSockets spliced so far."
    )


# -- join latency (cluster scenario) ----------------------------------------------------------


@dataclass
class JoinSample:
    """Join latencies (µs) measured on one server, ``idle`` or under the ``max`` phase."""

    server: str
    condition: str  #: "idle" or "max"
    latencies: array[int]
    errors: list[str] = field(default_factory=list)


@dataclass
class JoinRow:
    """One server's join latencies, every round pooled, sorted (µs)."""

    server: str
    idle: array[int]
    loaded: array[int]  #: during the max phase

    @property
    def label(self) -> str:
        return server_label("cluster", self.server)


def join_rows(samples: list[JoinSample]) -> list[JoinRow]:
    """Pool the samples of every round per server and condition."""
    rows: dict[str, JoinRow] = {}
    for sample in samples:
        row = rows.setdefault(sample.server, JoinRow(sample.server, array("q"), array("q")))
        (row.idle if sample.condition == "idle" else row.loaded).extend(sample.latencies)
    for row in rows.values():
        row.idle = array("q", sorted(row.idle))
        row.loaded = array("q", sorted(row.loaded))
    return list(rows.values())


JOIN_COLUMNS: tuple[Column[JoinRow], ...] = (
    Column("server", 15, lambda r: r.label, left=True),
    Column("idle n", 6, lambda r: str(len(r.idle))),
    Column("p50 ms", 7, lambda r: _ms(percentile(r.idle, 0.50))),
    Column("p99 ms", 7, lambda r: _ms(percentile(r.idle, 0.99))),
    Column("max ms", 7, lambda r: _ms(percentile(r.idle, 1.0))),
    Column("max-load n", 10, lambda r: str(len(r.loaded))),
    Column("p50 ms", 7, lambda r: _ms(percentile(r.loaded, 0.50))),
    Column("p99 ms", 7, lambda r: _ms(percentile(r.loaded, 0.99))),
    Column("max ms", 7, lambda r: _ms(percentile(r.loaded, 1.0))),
)


def print_joins(args: argparse.Namespace, samples: list[JoinSample]) -> None:
    """The join-latency table: p50 / p99 at idle and under the max phase, per server."""
    if not samples:
        return
    print()
    print(
        f"JOIN LATENCY (cluster scenario, {args.nodes} nodes): one client on the first node "
        "joins a fresh room (no member\nanywhere) and leaves it, one join at a time; from "
        "sending `join` to reading its ack. idle: after setup,\nback to back; max-load: "
        "spread over the measured window of the max phase."
    )
    print_rows(JOIN_COLUMNS, join_rows(samples))
    for sample in samples:
        for error in sample.errors:
            print(f"  {sample.server} {sample.condition}: {error}")


# -- the bus's floor (bench/floor.py) ---------------------------------------------------------


@dataclass
class FloorRow:
    """One shape of bus traffic on bare ZeroMQ: messages per second and CPU per message."""

    burst: int  #: messages per loop pass, as fast as it goes; 0: the rate phase's rate
    messages_per_s: float
    node_us: float  #: both nodes' CPU (every thread) per message published, microseconds
    router_us: float  #: the router's
    received: float  #: messages the nodes received per message published, over the 2 expected

    @property
    def shape(self) -> str:
        return f"burst {self.burst}" if self.burst else "rate"

    @property
    def total_us(self) -> float:
        return self.node_us + self.router_us


FLOOR_COLUMNS: tuple[Column[FloorRow], ...] = (
    Column("shape", 10, lambda r: r.shape, left=True),
    Column("msgs/s", 10, lambda r: _int(r.messages_per_s)),
    Column("nodes µs/msg", 13, lambda r: f"{r.node_us:.1f}"),
    Column("router µs/msg", 14, lambda r: f"{r.router_us:.1f}"),
    Column("total µs/msg", 13, lambda r: f"{r.total_us:.1f}"),
    Column("received", 8, lambda r: _pct(r.received)),
)

#: The cluster targets (issue 7): 2 nodes + router deliver per server CPU-second at least this
#: share of one roomcast node (max phase), and spend per delivery at most this share of Node +
#: Redis's CPU (rate phase).
MAX_TARGET_OF_SINGLE = 0.75
RATE_TARGET_OF_REDIS = 0.6


def _floor_for(floor: list[FloorRow], mode: str, batch: float | None) -> FloorRow | None:
    """The floor shape of a phase: ``rate``; for max, the biggest burst not above roomcast's
    messages per batch (burst 1 when unknown)."""
    if mode == "rate":
        return next((f for f in floor if not f.burst), None)
    fitting = [f for f in floor if 0 < f.burst <= (batch or 1)]
    return max(fitting, key=lambda f: f.burst, default=None)


def bus_budget(rows: list[Row], floor: list[FloorRow], mode: str) -> str | None:
    """One phase: what the 2-node cluster spends per publish beyond what one node does (the
    bus, and splitting the load over two processes; same run), what the phase's target
    leaves for it, and the floor of that shape."""
    summary = {(r.scenario, r.server, r.mode): r for r in summarize(rows)}
    single = summary.get(("single", "roomcast", mode))
    cluster = summary.get(("cluster", "roomcast", mode))
    redis = summary.get(("cluster", "node", mode))
    if single is None or cluster is None or not cluster.published_per_s:
        return None
    one, two = single.cpu_us_per_delivery, cluster.cpu_us_per_delivery
    if one is None or two is None:
        return None
    per_publish = cluster.delivered_per_s / cluster.published_per_s
    if mode == "max":
        allowed, target = one / MAX_TARGET_OF_SINGLE, f"{MAX_TARGET_OF_SINGLE}x one node"
    elif redis is not None and redis.cpu_us_per_delivery is not None:
        allowed = RATE_TARGET_OF_REDIS * redis.cpu_us_per_delivery
        target = f"{RATE_TARGET_OF_REDIS}x node 2+redis's CPU/deliv"
    else:
        return None
    shape = _floor_for(floor, mode, cluster.bus_batch)
    batch = "" if cluster.bus_batch is None else f", {cluster.bus_batch:.1f} msgs per batch"
    return (
        f"  {mode}: the cluster spends {(two - one) * per_publish:.1f} µs per publish over one "
        f"node (({two:.2f} - {one:.2f}) µs/deliv x {per_publish:.1f} deliv/publish{batch}); "
        f"the target ({target}) leaves it {(allowed - one) * per_publish:.1f}; "
        + (
            "no floor measured"
            if shape is None
            else f"bare ZeroMQ's floor ({shape.shape}) is {shape.total_us:.1f}"
        )
    )


def print_floor(args: argparse.Namespace, rows: list[Row], floor: list[FloorRow]) -> None:
    """The floor table and, per phase, roomcast's bus cost against its budget and the floor."""
    if not floor:
        return
    print()
    print(
        "BUS FLOOR (bench/floor.py): the cluster scenario's bus traffic on bare ZeroMQ, no "
        "roomcast code: 2 node processes\n(uvloop, PUB + SUB on every room topic, so each "
        "message reaches both, its publisher's echo too) and libzmq's\nown proxy as the "
        f"router, one frame per loop pass. rate: {args.rate * args.rooms:g} msgs/s (the "
        "nodes' pacing loop taken out);\nburst k: as fast as it goes, k messages per pass, "
        "routed whole (a lower bound). Measured once, after the rounds,\nwith nothing else "
        "running. Server CPU per message published; received: of the 2 copies each should "
        "get."
    )
    print_rows(FLOOR_COLUMNS, floor)
    for mode in ("max", "rate"):
        line = bus_budget(rows, floor, mode)
        if line is not None:
            print(line)


# -- the connect scenario ---------------------------------------------------------------------


@dataclass
class ConnectRow:
    """One server's connect phase: idle clients opened, how fast, and what they cost it."""

    server: str
    clients: int  #: asked for
    connected: int
    failed: int
    seconds: float  #: first connect started → last Socket.IO CONNECT ack read
    rss_before_kb: int | None  #: the server process's VmRSS before, settled
    rss_after_kb: int | None  #: ... with every client connected, settled
    server_cpu: float | None  #: CPU seconds the server used while they connected
    loadgen_cpu: float  #: CPU seconds the idle-client workers used meanwhile
    first_error: str = ""
    #: accept queues found full meanwhile (machine-wide): each costs a SYN retransmission
    listen_overflows: int | None = None

    @property
    def per_second(self) -> float | None:
        """Connections per second."""
        return self.connected / self.seconds if self.seconds > 0 else None

    @property
    def kb_per_connection(self) -> float | None:
        """Server RSS growth per connected client, KB (1024 bytes, as /proc says)."""
        if self.rss_before_kb is None or self.rss_after_kb is None or not self.connected:
            return None
        return (self.rss_after_kb - self.rss_before_kb) / self.connected

    @property
    def cpu_us_per_connection(self) -> float | None:
        """Server CPU microseconds per connection (handshake, upgrade, Socket.IO CONNECT)."""
        if self.server_cpu is None or not self.connected:
            return None
        return self.server_cpu * 1e6 / self.connected


CONNECT_COLUMNS: tuple[Column[ConnectRow], ...] = (
    Column("server", 15, lambda r: r.server, left=True),
    Column("clients", 7, lambda r: str(r.connected)),
    Column("failed", 6, lambda r: str(r.failed)),
    Column("seconds", 7, lambda r: f"{r.seconds:.2f}"),
    Column("conn/s", 7, lambda r: _int(r.per_second)),
    Column("RSS before MB", 13, lambda r: _mb(r.rss_before_kb)),
    Column("RSS after MB", 12, lambda r: _mb(r.rss_after_kb)),
    Column("KB/conn", 7, lambda r: _num(r.kb_per_connection)),
    Column("srv CPU µs/conn", 15, lambda r: _int(r.cpu_us_per_connection)),
    Column("gen CPU s", 9, lambda r: f"{r.loadgen_cpu:.2f}"),
    Column("accept ovf", 10, lambda r: _int(r.listen_overflows)),
)


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:,.1f}"


def _median_int(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present)) if present else None


def summarize_connects(rows: list[ConnectRow]) -> list[ConnectRow]:
    """One row per server: the median of each figure over the repeats."""
    groups: dict[str, list[ConnectRow]] = {}
    for row in rows:
        groups.setdefault(row.server, []).append(row)
    out = []
    for server, group in groups.items():
        out.append(
            ConnectRow(
                server=server,
                clients=group[0].clients,
                connected=round(statistics.median(r.connected for r in group)),
                failed=max(r.failed for r in group),
                seconds=statistics.median(r.seconds for r in group),
                rss_before_kb=_median_int([r.rss_before_kb for r in group]),
                rss_after_kb=_median_int([r.rss_after_kb for r in group]),
                server_cpu=_median([r.server_cpu for r in group]),
                loadgen_cpu=statistics.median(r.loadgen_cpu for r in group),
                first_error=next((r.first_error for r in group if r.first_error), ""),
                listen_overflows=_median_int([r.listen_overflows for r in group]),
            )
        )
    return out


def print_connects(args: argparse.Namespace, rows: list[ConnectRow]) -> None:
    """The connect table: connection rate and server memory per idle connection."""
    if not rows:
        return
    print()
    print(
        f"CONNECT: {args.idle_clients} idle WebSocket clients (Engine.IO handshake + Socket.IO "
        'CONNECT to "/", no room)\nagainst one server process, at most '
        f"{args.connect_concurrency} handshakes in flight, from {args.workers} load generator "
        "process(es).\nconn/s: from the first connect to the last CONNECT ack. RSS: VmRSS of "
        "the server process (Node: the node\nprocess) before and after, each read after 1s of "
        "settling; KB/conn: RSS growth / clients connected;\nsrv CPU µs/conn: the server's "
        "CPU while they connected, per connection;\naccept ovf: how often a listen "
        "queue was full meanwhile (machine-wide TcpExt ListenOverflows; each such\nconnection "
        "waits for a SYN retransmission)"
        + (f"; median of {args.repeat} runs" if args.repeat > 1 else "")
        + "."
    )
    summary = summarize_connects(rows)
    print_rows(CONNECT_COLUMNS, summary)
    for row in summary:
        if row.first_error:
            print(f"  {row.server}: {row.failed} failed, e.g. {row.first_error}")


@dataclass
class Results:
    """Everything a bench run measured so far (an interrupted run prints what it has)."""

    rows: list[Row] = field(default_factory=list)  #: fan-out phases, every scenario
    joins: list[JoinSample] = field(default_factory=list)  #: the cluster scenario
    connects: list[ConnectRow] = field(default_factory=list)  #: the connect scenario
    floor: list[FloorRow] = field(default_factory=list)  #: the cluster scenario's bus floor
    memory: list[MemoryRow] = field(default_factory=list)  #: the single scenario, roomcast
