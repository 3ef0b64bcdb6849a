"""The balancer scenario: what it costs a roomcast cluster to serve clients through a load
balancer with no affinity, forwarding each request to the node of its session.

One roomcast cluster (``--nodes`` nodes + 1 router, as the cluster scenario runs it) and one
HAProxy (Debian's, as the tests use it: tests/support/haproxy.py) in front of it, with:

* a round-robin frontend over every node, balancing each request on its own: no cookie, no
  stick table, ``option http-server-close`` and ``http-reuse never`` (the client's connection
  is kept alive, every server-side connection carries one request), so the next request of a
  client goes to the next node whatever the previous one did;
* one *pinned* frontend per node, sending everything to that node with the same options: the
  way sticky sessions would, through the same HAProxy, so that the balanced and pinned rows
  differ only in where requests land. HAProxy's CPU is measured apart from the servers'.

Two comparisons, on the same cluster, each with ``--balancer-clients`` clients in
``--balancer-rooms`` rooms (members spread over the nodes as in the cluster scenario) and
``--balancer-rate`` messages per second per room in the rate phase:

1. polling clients (bench/polling.py), opened through their node's pinned frontend, then
   measured with every request pinned, then with every request round-robin (the same
   sessions, each phase of ``--modes`` in turn for both routes);
2. WebSocket clients whose session is opened by a polling handshake on its node, upgraded on
   a WebSocket to that node (``direct``) or to the next one, which splices the connection to
   the session's node (``spliced``); no HAProxy; new clients (and sessions) for each.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.loadgen import WorkerConfig
from bench.measure import Workers, run_phase, wait_for_membership
from bench.polling import PollingConfig, UpgradeConfig, polling_main, upgrading_main
from bench.report import BALANCER_COLUMNS, Results, format_cpu_parts, format_row, server_label
from bench.servers import HOST, Deployment, free_ports, port_open, roomcast_cluster, started

SCENARIO = "balancer"


def haproxy_path() -> str | None:
    """The ``haproxy`` executable: on PATH, or where Debian puts it (``/usr/sbin``, which a
    non-root PATH may lack)."""
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"
    return found


def haproxy_config(nodes: Sequence[int], balanced: int, pinned: Sequence[int], maxconn: int) -> str:
    """``haproxy.cfg``: the round-robin frontend on ``balanced`` over the nodes on ``nodes``,
    and a frontend on ``pinned[i]`` for node ``i`` alone; ``maxconn`` client connections."""
    servers = "".join(f"    server n{i} {HOST}:{port}\n" for i, port in enumerate(nodes, 1))
    text = f"""\
# Written by `python -m bench` for its balancer scenario (see bench/balancer.py).
global
    # One thread: a few thousand requests per second need no more, and the machine is small.
    nbthread 1
    # HAProxy asks for 2 file descriptors per connection: more than the limit, it fails.
    maxconn {maxconn}

defaults
    mode http
    # Per-request balancing: the client side stays kept alive, each server-side connection
    # carries one request and is closed, so no request follows its predecessor's server.
    option http-server-close
    http-reuse never
    retries 3
    option redispatch 1
    timeout connect 2s
    # Longer than a long-poll (a ping interval, 25 s).
    timeout client 60s
    timeout server 60s
    timeout http-request 30s
    timeout http-keep-alive 60s
    timeout tunnel 1h

frontend balanced
    bind {HOST}:{balanced}
    default_backend nodes

backend nodes
    balance roundrobin
{servers}"""
    for i, (node, port) in enumerate(zip(nodes, pinned, strict=True), 1):
        text += f"""
frontend pinned_n{i}
    bind {HOST}:{port}
    default_backend node_n{i}

backend node_n{i}
    server n{i} {HOST}:{node}
"""
    return text


@contextlib.contextmanager
def haproxy(
    log_dir: Path, nodes: Sequence[int], clients: int
) -> Iterator[tuple[subprocess.Popen[bytes], int, tuple[int, ...]]]:
    """HAProxy in front of the nodes on ``nodes``, for ``clients`` polling clients: its
    process, the round-robin frontend's port and each node's pinned frontend port (in
    ``nodes`` order)."""
    exe = haproxy_path()
    if exe is None:
        raise RuntimeError("haproxy not found (`make install-haproxy` installs Debian's)")
    balanced, *pinned = free_ports(1 + len(nodes))
    config = log_dir / "haproxy.cfg"
    # Two connections per client, and one more for a while as it closes.
    config.write_text(haproxy_config(nodes, balanced, pinned, 3 * clients + 100))
    ports = [balanced, *pinned]
    argv = [exe, "-f", str(config), "-db"]
    with started("haproxy", argv, log_dir, lambda: all(port_open(p) for p in ports)) as proc:
        yield proc, balanced, tuple(pinned)


def balancer_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the balancer's clients, rooms and rate in the places the measuring code
    reads them (``--clients``, ``--rooms``, ``--rate``), members on every node."""
    args = copy.copy(args)
    args.clients = args.balancer_clients
    args.rooms = args.balancer_rooms
    args.rate = args.balancer_rate
    args.spread = 0
    args.joins = 0
    return args


def worker_rooms(args: argparse.Namespace) -> list[list[int]]:
    """The rooms of each load generator process, in turn."""
    return [list(range(w, args.rooms, args.workers)) for w in range(args.workers)]


def measure(
    args: argparse.Namespace,
    deployment: Deployment,
    results: Results,
    what: str,
    configs: Sequence[WorkerConfig],
    target: Callable[[Connection, Any], None],
    names: Sequence[tuple[str, str]],
) -> None:
    """Start the load generator processes of ``configs``, wait until every node shows every
    room complete, then run each phase of ``--modes`` for each (server name, route) of
    ``names`` in turn (the routes of one phase side by side in time)."""
    began = time.monotonic()
    workers = Workers(configs, target)
    try:
        ready = workers.receive(90)
        clients = sum(n for _, (n, _) in ready)
        waited = wait_for_membership(args, deployment.admin_urls)
        print(
            f"{SCENARIO}/{what}: {clients} clients connected and joined in "
            f"{time.monotonic() - began:.1f}s, every node's /admin/rooms complete "
            f"{waited:.2f}s later",
            file=sys.stderr,
        )
        for mode in args.modes:
            for name, route in names:
                row = run_phase(args, SCENARIO, name, mode, workers, deployment, route=route)
                print(f"  {format_row(row, BALANCER_COLUMNS)}", file=sys.stderr, flush=True)
                print(f"    server CPU: {format_cpu_parts(row)}", file=sys.stderr, flush=True)
                results.rows.append(row)
                time.sleep(0.5)
    finally:
        workers.close()


def bench_balancer(args: argparse.Namespace, log_dir: Path, results: Results) -> None:
    """Both comparisons of the scenario (see the module's docstring) on one cluster; each
    row is added to ``results`` as soon as it is measured."""
    args = balancer_args(args)
    members = args.clients // args.rooms
    with (
        roomcast_cluster(log_dir, args.nodes) as cluster,
        haproxy(log_dir, cluster.ports, args.clients) as (proc, balanced, pinned),
    ):
        deployment = dataclasses.replace(
            cluster, procs={**cluster.procs, "haproxy": proc}, side=("haproxy",)
        )
        polling = [
            PollingConfig(HOST, pinned, rooms, members, args.payload, balanced_port=balanced)
            for rooms in worker_rooms(args)
        ]
        routes = [("poll-pinned", "pinned"), ("poll-balanced", "balanced")]
        measure(args, deployment, results, "polling", polling, polling_main, routes)
        for spliced in (False, True):
            name = "ws-spliced" if spliced else "ws-direct"
            upgrading = [
                UpgradeConfig(HOST, cluster.ports, rooms, members, args.payload, spliced=spliced)
                for rooms in worker_rooms(args)
            ]
            what = server_label(SCENARIO, name)
            measure(args, deployment, results, what, upgrading, upgrading_main, [(name, "")])
