"""The scale-out figure: CPU per delivery and bus bytes per node against the node count, one
line per server (matplotlib, an optional dependency: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

from pathlib import Path

from bench.report import Row, scaleout_rows


def plot_mode(rows: list[Row]) -> str | None:
    """The phase the figure shows: ``rate`` (the same offered load at every node count, so
    the curves compare like with like), else ``max``; None without scale-out rows."""
    modes = {row.mode for row in rows if row.scenario == "scaleout"}
    for mode in ("rate", "max"):
        if mode in modes:
            return mode
    return None


def plot_scaleout(rows: list[Row], path: Path, title: str) -> str:
    """Draw the figure of the scale-out rows into ``path`` (PNG); returns what was done, to
    print beside the table (matplotlib missing: nothing drawn, and it says so)."""
    mode = plot_mode(rows)
    if mode is None:
        return "no scale-out figures to plot"
    try:
        import matplotlib
    except ImportError:
        return "PNG skipped: matplotlib is not installed (pip install -e '.[bench]')"
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    summary = [row for row in scaleout_rows(rows) if row.mode == mode]
    servers: dict[str, list[Row]] = {}
    for row in summary:
        servers.setdefault(row.server, []).append(row)
    names = {"roomcast": "roomcast + router", "node": "Node socket.io + Redis adapter"}
    fig, (cpu_ax, bus_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for server, group in servers.items():
        group.sort(key=lambda r: r.nodes)
        label = names.get(server, server)
        cpu = [(r.nodes, r.cpu_us_per_delivery) for r in group if r.cpu_us_per_delivery]
        bus = [(r.nodes, r.bus_in_per_node / 1000) for r in group if r.bus_in_per_node is not None]
        if cpu:
            cpu_ax.plot(*zip(*cpu, strict=True), marker="o", label=label)
        if bus:
            bus_ax.plot(*zip(*bus, strict=True), marker="o", label=label)
    counts = sorted({row.nodes for row in summary})
    cpu_ax.set_title("server CPU per delivery")
    cpu_ax.set_ylabel("CPU µs per delivery (all server processes)")
    bus_ax.set_title("bytes each node received from its bus")
    bus_ax.set_ylabel("KB/s per node (mean over the nodes)")
    for ax in (cpu_ax, bus_ax):
        ax.set_xlabel("edge nodes")
        ax.set_xticks(counts)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title} ({mode} phase)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"scale-out figure ({mode} phase): {path.resolve()}"
