"""Fan-out benchmark: roomcast against the official Node socket.io server, on one node and on two.

    python -m bench [--scenario single,cluster] [--servers roomcast,node,python-socketio]
                    [--clients 1000] [--rooms 100] [--duration 10] [--modes max,rate]
                    [--rate 30] [--window 8] [--workers 1] [--repeat 1] [--profile DIR]

Every server runs as processes of its own on 127.0.0.1; the load generator (bench/loadgen.py,
``--workers`` processes) opens ``--clients`` WebSockets, puts them in ``--rooms`` rooms of equal
size through the relay's ``join`` event, and makes the first member of each room publish with
the ``publish`` event. Every other member (publishers never receive their own messages, on any
server) records the latency from the message's send timestamp. Two scenarios:

* ``single``: one server process (roomcast, Node socket.io@4, python-socketio).
* ``cluster``: two server processes and what connects them. roomcast: 2 nodes and 1 router
  (``python -m roomcast router`` / ``node``, with a cluster.toml of free ports written to a
  temporary directory); node: 2 socket.io@4 processes (bench/js/cluster-server.mjs) with the
  official Redis adapter and a Debian ``redis-server`` (installed with apt-get when missing).
  Every room has members on both nodes (the clients of a room alternate between them), the
  publishers of half the rooms are on each node, and the closed loop of each room is driven by
  a member on the other node than its publisher. python-socketio is not part of it.

Before measuring, every room's publisher sends one probe message and the bench waits until all
members of the room, on both nodes, got it; for roomcast it also waits until every node's
``/admin/rooms`` shows every room with all its members (the gossiped membership converged).

Two phases per server:

* ``max``: closed loop, ``--window`` messages in flight per room: the room's next message is
  sent as soon as one of its members got the previous one. Shows the sustainable peak.
* ``rate``: open loop, ``--rate`` messages per second per room. Shows latency at a fixed load.

Figures are per phase: publishes/s and deliveries/s during the measured ``--duration`` (after
``--warmup``), latency percentiles of the messages sent in that window (in the cluster, also
those of the deliveries on the other node than the publisher's), their deliveries still missing
``--drain`` seconds after it, and the CPU used by all the server processes of the scenario and
by the load generator. A benchmark, not a test: nothing here judges the numbers.

``--profile DIR`` records the Python server processes (roomcast's nodes and router too) with
py-spy during each measured window and prints their hottest functions (see bench/profile.py).
``make bench`` installs the Node servers (``npm ci`` in bench/js) and passes ``BENCH_ARGS`` on.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench.measure import bench_server
from bench.report import Row, print_table
from bench.servers import CLUSTER_SERVERS, JS_DIR, SINGLE_SERVERS

SCENARIOS = ("single", "cluster")


def _names(value: str) -> list[str]:
    return [s for s in value.split(",") if s]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--scenario",
        default="single,cluster",
        help="single (one server process), cluster (2 nodes + router / + redis), or both",
    )
    parser.add_argument(
        "--servers",
        default="roomcast,node,python-socketio",
        help="servers to run (the cluster scenario runs roomcast and node only)",
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for stragglers")
    parser.add_argument("--modes", default="max,rate", help="phases to run: max, rate")
    parser.add_argument("--rate", type=float, default=30.0, help="rate phase: msgs/s per room")
    parser.add_argument("--window", type=int, default=8, help="max phase: msgs in flight/room")
    parser.add_argument("--payload", type=int, default=32, help="filler characters per message")
    parser.add_argument("--workers", type=int, default=1, help="load generator processes")
    parser.add_argument("--nodes", type=int, default=2, help="cluster: server processes")
    parser.add_argument(
        "--spread", type=int, default=0, help="cluster: nodes each room has members on (0: all)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every server")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the Python server processes with py-spy during each measured window, into DIR",
    )
    args = parser.parse_args(argv)
    args.scenarios = _names(args.scenario)
    args.servers = _names(args.servers)
    args.modes = _names(args.modes)
    for scenario in args.scenarios:
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
    if not args.scenarios:
        parser.error("--scenario: name at least one")
    for server in args.servers:
        if server not in SINGLE_SERVERS:
            parser.error(f"unknown server {server!r} (known: {', '.join(SINGLE_SERVERS)})")
    for mode in args.modes:
        if mode not in ("max", "rate"):
            parser.error(f"unknown phase {mode!r} (known: max, rate)")
    if args.rooms < 1 or args.clients < 2 * args.rooms or args.clients % args.rooms:
        parser.error("--clients must be a multiple of --rooms, with at least 2 per room")
    if not 1 <= args.workers <= args.rooms:
        parser.error("--workers must be between 1 and --rooms")
    if args.rate <= 0 or args.window < 1 or args.duration <= 0 or args.repeat < 1:
        parser.error("--rate, --window, --duration and --repeat must be positive")
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """The (scenario, server) runs of one round; None when the Node servers are not installed."""
    runs = [
        (scenario, name)
        for scenario in args.scenarios
        for name in args.servers
        if scenario == "single" or name in CLUSTER_SERVERS
    ]
    if "cluster" in args.scenarios:
        for name in args.servers:
            if name not in CLUSTER_SERVERS:
                print(f"cluster: {name} is not part of this scenario", file=sys.stderr)
    if any(name == "node" for _, name in runs):
        needed = ["socket.io", "@socket.io/redis-adapter", "redis"]
        if shutil.which("node") is None or shutil.which("npm") is None:
            print("node: skipped (node or npm not found)", file=sys.stderr)
            return [run for run in runs if run[1] != "node"]
        if not all((JS_DIR / "node_modules" / pkg).is_dir() for pkg in needed):
            print("node: run `npm ci` in bench/js first (`make bench` does)", file=sys.stderr)
            return None
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C does, so that every server and worker is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = plan(args)
    if runs is None:
        return 2
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="roomcast-bench-") as tmp:
            for _ in range(args.repeat):
                for scenario, name in runs:
                    log_dir = Path(tmp) / scenario / name
                    log_dir.mkdir(parents=True, exist_ok=True)
                    try:
                        bench_server(args, scenario, name, log_dir, rows)
                    except RuntimeError as exc:
                        print(f"{scenario}/{name}: failed: {exc}", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        print("\ninterrupted", file=sys.stderr)
        print_table(args, rows)
        return 130
    print_table(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
