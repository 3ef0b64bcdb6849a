"""Fan-out benchmark: roomcast against the official Node socket.io server, on one node, on a
cluster of two, scaled out to more nodes, and how fast they take connections; and what
roomcast's forwarding costs behind a load balancer with no affinity.

    python -m bench [--scenario single,cluster,scaleout,connect,balancer]
                    [--servers roomcast,roomcast-nometrics,roomcast-curve,roomcast-recovery,
                               node,python-socketio]
                    [--clients 1000] [--rooms 100] [--duration 10] [--modes max,rate]
                    [--rate 30] [--window 8] [--workers 1] [--repeat 1] [--profile DIR]
                    [--nodes 2] [--spread 0] [--joins 200]
                    [--scale 2,3,4] [--png bench-scaleout.png]
                    [--idle-clients 5000] [--connect-concurrency 100]
                    [--balancer-clients 200] [--balancer-rooms 20] [--balancer-rate 5]

Every server runs as processes of its own on 127.0.0.1; the load generator (bench/loadgen.py,
``--workers`` processes) opens ``--clients`` WebSockets, puts them in ``--rooms`` rooms of equal
size through the relay's ``join`` event, and makes the first member of each room publish with
the ``publish`` event. Every other member (publishers never receive their own messages, on any
server) records the latency from the message's send timestamp. Five scenarios (all by default):

* ``single``: one server process (roomcast, Node socket.io@4, python-socketio), and roomcast
  with ``metrics.enabled = false`` (roomcast-nometrics: the table then says what metrics cost
  on the hot path, CPU per delivery with and without), and roomcast with connection state
  recovery on (roomcast-recovery: ``recovery.enabled = true``, the same fan-out; the table
  then says what recovery costs per delivery, on / off as a ratio). For roomcast and
  roomcast-recovery the bench also reads the process's VmRSS (once its CPU settled) with the
  clients joined, after the phases (recovery on: its history is full by then, 10,000 packets
  at most), and after every client dropped its connection without a Socket.IO DISCONNECT
  (recovery on: every session kept), with ``sessions_kept`` from ``/admin/stats`` and, after
  the phases, the packets its history keeps and their frames' bytes (the server process
  prints them on SIGUSR1: roomcast exposes no such figure); the *RECOVERY MEMORY* table prints
  them and the differences between on and off.
* ``cluster``: ``--nodes`` (2) server processes and what connects them. roomcast: the nodes and
  1 router (``python -m roomcast router`` / ``node``, with a cluster.toml of free ports written
  to a temporary directory); roomcast-curve: the same with CURVE on the bus (keys made for the
  run; the table then says what authentication and encryption cost); roomcast-recovery: the
  same with connection state recovery on (its cost per delivery beside the open bus's);
  node: socket.io@4
  processes (bench/js/cluster-server.mjs) with the
  official Redis adapter and a Debian ``redis-server`` (installed with apt-get when missing).
  Every room has members on ``--spread`` nodes (0: all; with 2 nodes the clients of a room
  alternate between them), the publishers of half the rooms are on each node, and the closed
  loop of each room is driven by a member on another node than its publisher. python-socketio
  is not part of it. Join latency is measured here too (below).
* ``scaleout``: the cluster deployments at every node count of ``--scale`` (2, 3, 4), each room
  with members on exactly 2 nodes whatever their number (room r on nodes r and r+1, mod N),
  the same clients and rooms at every count, so the same offered load. Besides the fan-out
  figures, the bytes each edge node received from its bus per second (bench/traffic.py:
  roomcast's bus ``bytes_in`` counter; for Node, the TCP bytes its Redis connections received,
  from ``ss``): interest routing sends a node only the rooms it has members in, the Redis
  adapter every broadcast to every node. Drawn into ``--png`` (matplotlib, the ``bench``
  extra; skipped, saying so, when it is missing).
* ``connect``: one server process, ``--idle-clients`` idle clients (WebSocket + Socket.IO
  CONNECT, no room) opened with at most ``--connect-concurrency`` handshakes in flight:
  connections per second from the first connect to the last CONNECT ack, server RSS growth
  per connection (VmRSS before and after, each settled 1s) and server CPU per connection.
  The bench raises its soft limit of open files to the hard limit (the servers inherit it)
  and says when a server's limit is below what the clients need.
* ``balancer`` (roomcast only, bench/balancer.py): a cluster of ``--nodes`` nodes + 1 router
  and Debian's HAProxy (``make install-haproxy``) in front of it, ``--balancer-clients``
  clients in ``--balancer-rooms`` rooms spread over the nodes as in ``cluster``, the rate
  phase at ``--balancer-rate`` messages per second per room. Two comparisons, side by side:
  (1) Engine.IO long-polling clients (bench/polling.py), every request through HAProxy, either
  *pinned* (a frontend per node sends everything to the node of the session: what sticky
  sessions give) or *balanced* (round-robin, each request on its own, no affinity: a request
  reaching another node than its session's, (N-1)/N of them, is forwarded there); the same
  sessions carry both, each phase pinned then balanced. HAProxy runs in both, with the same
  options (a server connection per request, as tests/support/haproxy.py), and its CPU is
  reported apart from roomcast's. (2) WebSockets whose session was opened by a polling
  handshake on its node, upgraded on a WebSocket straight to it (*direct*) or to the next node,
  which splices the connection to the session's (*spliced*); no HAProxy. Besides the fan-out
  figures: the polling clients' HTTP requests per second and the nodes' forward counters
  (``/admin/stats``: forwarded requests and bytes per second, failed forwards, spliced
  WebSockets).

Before measuring, every room's publisher sends one probe message and the bench waits until all
members of the room, on every node, got it; for roomcast it also waits until every node's
``/admin/rooms`` shows every room with all its members (the gossiped membership converged).

Two phases per fan-out server (``--modes``):

* ``max``: closed loop, ``--window`` messages in flight per room: the room's next message is
  sent as soon as one of its members got the previous one. Shows the sustainable peak.
* ``rate``: open loop, ``--rate`` messages per second per room. Shows latency at a fixed load.

Figures are per phase: publishes/s and deliveries/s during the measured ``--duration`` (after
``--warmup``), latency percentiles of the messages sent in that window (in the cluster, also
those of the deliveries on another node than the publisher's), their deliveries still missing
``--drain`` seconds after it, and the CPU used by all the server processes of the scenario and
by the load generator. A benchmark, not a test: nothing here judges the numbers.

Join latency (cluster scenario, ``--joins`` samples, 0: off): one extra client on the first
node joins a fresh room name (no member anywhere: a roomcast node subscribes to it and waits for
its probe to come back through the router before acking) and leaves it, one join at a time;
the time from sending ``join`` to reading the ack. At idle (after setup, back to back) and
during the ``max`` phase (spread evenly over its measured window: 20 joins/s with the defaults).

The bus's floor (cluster scenario with roomcast, ``--no-floor`` to leave it out; bench/floor.py):
after the runs, the cluster's bus traffic on bare ZeroMQ (2 node processes, libzmq's own proxy
as the router, no roomcast code), at the rate phase's publishes per second and in bursts as
fast as it goes; the *BUS FLOOR* table prints its CPU per message, and per phase what the
2-node cluster spends per publish beyond one node (its CPU per publish over one node's, same
run: the bus, and the load split over two processes), what the phase's target leaves for it,
and the floor of that shape.

``--profile DIR`` records the Python server processes (roomcast's nodes and router too) with
py-spy during each measured window and prints their hottest functions (see bench/profile.py).
``make bench`` installs the Node servers (``npm ci`` in bench/js) and matplotlib, and passes
``BENCH_ARGS`` on.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench.balancer import bench_balancer
from bench.floor import bench_floor
from bench.measure import bench_server
from bench.plot import plot_scaleout
from bench.report import (
    Results,
    print_balancer,
    print_connects,
    print_floor,
    print_joins,
    print_memory,
    print_scaleout,
    print_table,
)
from bench.servers import CLUSTER_ONLY, CLUSTER_SERVERS, JS_DIR, SINGLE_ONLY, SINGLE_SERVERS

SCENARIOS = ("single", "cluster", "scaleout", "connect", "balancer")


def _names(value: str) -> list[str]:
    return [s for s in value.split(",") if s]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--scenario",
        default=",".join(SCENARIOS),
        help="single (one server process), cluster (2 nodes + router / + redis), scaleout "
        "(--scale nodes), connect (--idle-clients idle clients), balancer (roomcast's "
        "forwarding behind HAProxy); a comma-separated list",
    )
    parser.add_argument(
        "--servers",
        default="roomcast,roomcast-nometrics,roomcast-curve,roomcast-recovery,node,python-socketio",
        help="servers to run (cluster and scaleout run roomcast and node only; roomcast-curve, "
        "roomcast with CURVE on its bus, runs in the cluster scenario only; roomcast-nometrics, "
        "roomcast with metrics off, in the single scenario only; roomcast-recovery, roomcast "
        "with connection state recovery on, in the single and cluster scenarios)",
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
    parser.add_argument(
        "--joins",
        type=int,
        default=200,
        help="cluster: join-latency samples at idle and during the max phase (0: none)",
    )
    parser.add_argument(
        "--scale", default="2,3,4", help="scaleout: the node counts, each room on 2 of them"
    )
    parser.add_argument(
        "--png",
        type=Path,
        default=Path("bench-scaleout.png"),
        help="scaleout: where to draw its figure (needs matplotlib)",
    )
    parser.add_argument(
        "--idle-clients", type=int, default=5000, help="connect: idle clients to open"
    )
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=100,
        help="connect: handshakes in flight at most (all load generator processes together)",
    )
    parser.add_argument(
        "--balancer-clients", type=int, default=200, help="balancer: clients (polling, then ws)"
    )
    parser.add_argument("--balancer-rooms", type=int, default=20, help="balancer: rooms")
    parser.add_argument(
        "--balancer-rate", type=float, default=5.0, help="balancer: rate phase msgs/s per room"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every server")
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="cluster: do not measure the bus's floor on bare ZeroMQ (bench/floor.py)",
    )
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
    known = [*SINGLE_SERVERS, *CLUSTER_ONLY]
    for server in args.servers:
        if server not in known:
            parser.error(f"unknown server {server!r} (known: {', '.join(known)})")
    for mode in args.modes:
        if mode not in ("max", "rate"):
            parser.error(f"unknown phase {mode!r} (known: max, rate)")
    if args.rooms < 1 or args.clients < 2 * args.rooms or args.clients % args.rooms:
        parser.error("--clients must be a multiple of --rooms, with at least 2 per room")
    if not 1 <= args.workers <= args.rooms:
        parser.error("--workers must be between 1 and --rooms")
    if args.rate <= 0 or args.window < 1 or args.duration <= 0 or args.repeat < 1:
        parser.error("--rate, --window, --duration and --repeat must be positive")
    if args.nodes < 1 or args.joins < 0:
        parser.error("--nodes must be positive and --joins not negative")
    try:
        args.scale_counts = [int(n) for n in _names(args.scale)]
    except ValueError:
        parser.error("--scale: a comma-separated list of node counts, e.g. 2,3,4")
    if "scaleout" in args.scenarios and (not args.scale_counts or min(args.scale_counts) < 2):
        parser.error("--scale: node counts of at least 2 (each room has members on 2 nodes)")
    args.scale_text = ", ".join(str(n) for n in args.scale_counts)
    if args.idle_clients < args.workers or args.connect_concurrency < 1:
        parser.error("--idle-clients must be at least --workers; --connect-concurrency positive")
    if "balancer" in args.scenarios:
        rooms, clients = args.balancer_rooms, args.balancer_clients
        if rooms < 1 or clients < 2 * rooms or clients % rooms:
            parser.error(
                "--balancer-clients must be a multiple of --balancer-rooms, with at least 2 "
                "per room"
            )
        if args.workers > rooms or args.balancer_rate <= 0 or args.nodes < 2:
            parser.error(
                "balancer: --workers at most --balancer-rooms, --balancer-rate positive, "
                "--nodes at least 2"
            )
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]] | None:
    """The (scenario, server, nodes) runs of one round (nodes: the node count of a cluster,
    0 for one process); None when the Node servers are not installed."""
    runs: list[tuple[str, str, int]] = []
    for scenario in args.scenarios:
        if scenario in ("single", "connect"):
            runs += [
                (scenario, name, 0)
                for name in args.servers
                if name in SINGLE_SERVERS and (scenario == "single" or name not in SINGLE_ONLY)
            ]
            continue
        if scenario == "balancer":
            if "roomcast" in args.servers:
                runs.append((scenario, "roomcast", args.nodes))
            else:
                print("balancer: a roomcast scenario (add roomcast to --servers)", file=sys.stderr)
            continue
        servers = [
            name
            for name in args.servers
            if name in CLUSTER_SERVERS and (scenario == "cluster" or name not in CLUSTER_ONLY)
        ]
        for name in args.servers:
            if name not in servers and name not in (*CLUSTER_ONLY, *SINGLE_ONLY):
                print(f"{scenario}: {name} is not part of this scenario", file=sys.stderr)
        counts = args.scale_counts if scenario == "scaleout" else [args.nodes]
        # Node counts outermost: both servers of one count run close together in time.
        runs += [(scenario, name, n) for n in counts for name in servers]
    if any(name == "node" for _, name, _ in runs):
        needed = ["socket.io", "@socket.io/redis-adapter", "redis"]
        if shutil.which("node") is None or shutil.which("npm") is None:
            print("node: skipped (node or npm not found)", file=sys.stderr)
            return [run for run in runs if run[1] != "node"]
        if not all((JS_DIR / "node_modules" / pkg).is_dir() for pkg in needed):
            print("node: run `npm ci` in bench/js first (`make bench` does)", file=sys.stderr)
            return None
    return runs


def raise_fd_limit() -> None:
    """Raise the soft limit of open files to the hard limit: the servers inherit it (a
    Python server does not raise its own), and the connect scenario needs a descriptor per
    client on both sides."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            print(f"open files: could not raise {soft} to {hard}: {exc}", file=sys.stderr)
            return
        print(f"open files: soft limit raised from {soft} to {hard}", file=sys.stderr)


def print_report(args: argparse.Namespace, results: Results) -> None:
    """Every table of what was measured, the scale-out figure beside its table."""
    print_table(args, results.rows)
    print_memory(args, results.memory)
    print_joins(args, results.joins)
    print_floor(args, results.rows, results.floor)
    print_scaleout(args, results.rows)
    if any(row.scenario == "scaleout" for row in results.rows):
        title = f"{args.clients} clients in {args.rooms} rooms, each room on 2 nodes"
        print(plot_scaleout(results.rows, args.png, title))
    print_connects(args, results.connects)
    print_balancer(args, results.rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C does, so that every server and worker is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = plan(args)
    if runs is None:
        return 2
    raise_fd_limit()
    results = Results()
    try:
        with tempfile.TemporaryDirectory(prefix="roomcast-bench-") as tmp:
            for _ in range(args.repeat):
                for scenario, name, nodes in runs:
                    where = f"{name}-{nodes}" if scenario == "scaleout" else name
                    log_dir = Path(tmp) / scenario / where
                    log_dir.mkdir(parents=True, exist_ok=True)
                    try:
                        if scenario == "balancer":
                            bench_balancer(args, log_dir, results)
                        else:
                            bench_server(args, scenario, name, log_dir, results, nodes)
                    except RuntimeError as exc:
                        print(f"{scenario}/{where}: failed: {exc}", file=sys.stderr)
            if args.floor and ("cluster", "roomcast", args.nodes) in runs:
                results.floor = bench_floor(args)
    except (KeyboardInterrupt, SystemExit):
        print("\ninterrupted", file=sys.stderr)
        print_report(args, results)
        return 130
    print_report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
