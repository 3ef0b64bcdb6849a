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
import contextlib
import ctypes
import functools
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench import profile
from bench.loadgen import Phase, PhaseResult, WorkerConfig, now_us, worker_main

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "bench" / "js"
HOST = "127.0.0.1"

SCENARIOS = ("single", "cluster")

SINGLE_SERVERS: dict[str, Callable[[int], list[str]]] = {
    "roomcast": lambda port: [sys.executable, "-m", "bench.roomcast_server", "--port", str(port)],
    "node": lambda port: ["node", str(JS_DIR / "server.mjs"), "--port", str(port)],
    "python-socketio": lambda port: [sys.executable, "-m", "bench.sio_server", "--port", str(port)],
}
CLUSTER_SERVERS = ("roomcast", "node")

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


# --- processes ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the bench process dies (Linux), and leave the
    terminal's process group so Ctrl-C reaches the bench only (which then stops the server)."""
    os.setpgrp()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nobody listens on right now."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` (on 127.0.0.1) and decode its JSON body; a non-2xx status raises."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def http_ok(url: str) -> bool:
    try:
        get_json(url, timeout=1.0)
    except (OSError, ValueError):
        return False
    return True


def child_env() -> dict[str, str]:
    """The servers' environment: no inherited ROOMCAST__ overrides (the bench's own config
    decides), unbuffered Python output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST__")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def started(
    label: str,
    argv: list[str],
    log_dir: Path,
    ready: Callable[[], bool],
    timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process, wait until ``ready()`` holds, and always stop it."""
    log_path = log_dir / f"{label}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} was not ready in {timeout:g}s:\n{_tail(log_path)}")
            time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc)
        if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
            print(f"[{label} exited with {proc.returncode}]\n{_tail(log_path)}", file=sys.stderr)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Deployment:
    """The running server processes of one server in one scenario."""

    ports: tuple[int, ...]  #: where clients connect; room members alternate between them
    procs: dict[str, subprocess.Popen[bytes]]  #: label -> process; their CPU is the server's
    python: tuple[str, ...] = ()  #: labels of the Python processes (py-spy can record them)
    admin_urls: tuple[str, ...] = ()  #: roomcast nodes, whose /admin/rooms shows membership


@contextlib.contextmanager
def single_server(name: str, log_dir: Path) -> Iterator[Deployment]:
    port = free_port()
    with started(name, SINGLE_SERVERS[name](port), log_dir, lambda: port_open(port)) as proc:
        python = (name,) if name in ("roomcast", "python-socketio") else ()
        yield Deployment((port,), {name: proc}, python)


def roomcast_config(path: Path, xsub: int, xpub: int, http: int, node_ports: list[int]) -> None:
    """A cluster.toml for one router and the nodes on ``node_ports``, all on 127.0.0.1."""
    nodes = ", ".join(f'"http://{HOST}:{p}"' for p in node_ports)
    path.write_text(
        f"""\
# Written by `python -m bench` for its cluster scenario.
[node]
host = "{HOST}"
shutdown_grace_ms = 500

[router]
host = "{HOST}"
xsub_port = {xsub}
xpub_port = {xpub}
http_port = {http}

[cluster]
enabled = true

[discovery]
backend = "static"
nodes = [{nodes}]

[[discovery.routers]]
xsub = "tcp://{HOST}:{xsub}"
xpub = "tcp://{HOST}:{xpub}"
http = "http://{HOST}:{http}"

[namespaces."/"]
"""
    )


@contextlib.contextmanager
def roomcast_cluster(log_dir: Path) -> Iterator[Deployment]:
    """``python -m roomcast router`` and two ``... node`` processes."""
    xsub, xpub, http, *node_ports = free_ports(5)
    config = log_dir / "cluster.toml"
    roomcast_config(config, xsub, xpub, http, node_ports)
    base = [sys.executable, "-m", "roomcast", "--config", str(config), "--log-level", "warning"]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        router_health = f"http://{HOST}:{http}/health"
        procs["router"] = stack.enter_context(
            started("router", [*base, "router"], log_dir, lambda: http_ok(router_health))
        )
        urls = []
        for i, port in enumerate(node_ports, 1):
            argv = [*base, "node", "--id", f"n{i}", "--host", HOST, "--port", str(port)]
            url = f"http://{HOST}:{port}"
            procs[f"n{i}"] = stack.enter_context(
                started(f"n{i}", argv, log_dir, functools.partial(http_ok, f"{url}/health"))
            )
            urls.append(url)
        yield Deployment(tuple(node_ports), procs, tuple(procs), tuple(urls))


def ensure_redis_server() -> str:
    """The redis-server executable; installs Debian's package when it is missing."""
    exe = shutil.which("redis-server")
    if exe is not None:
        return exe
    if shutil.which("apt-get") is None:
        raise RuntimeError("redis-server not found, and no apt-get to install it")
    print("node: installing redis-server (apt-get install -y redis-server)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"]
    if subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=False).returncode:
        # Maybe the package lists are missing or stale.
        subprocess.run(["apt-get", "update", "-q"], env=env, stdin=subprocess.DEVNULL, check=False)
        subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=False)
    exe = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if exe is None:
        raise RuntimeError("could not install redis-server")
    return exe


@contextlib.contextmanager
def node_redis_cluster(log_dir: Path) -> Iterator[Deployment]:
    """A redis-server and two socket.io processes with the Redis adapter."""
    redis_port, *node_ports = free_ports(3)
    redis_argv = [
        ensure_redis_server(),
        "--port",
        str(redis_port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(log_dir),
    ]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        procs["redis"] = stack.enter_context(
            started("redis", redis_argv, log_dir, lambda: port_open(redis_port))
        )
        for i, port in enumerate(node_ports, 1):
            argv = [
                "node",
                str(JS_DIR / "cluster-server.mjs"),
                "--port",
                str(port),
                "--redis",
                f"redis://{HOST}:{redis_port}",
            ]
            procs[f"node{i}"] = stack.enter_context(
                started(f"node{i}", argv, log_dir, functools.partial(port_open, port))
            )
        yield Deployment(tuple(node_ports), procs)


def deploy(
    scenario: str, name: str, log_dir: Path
) -> contextlib.AbstractContextManager[Deployment]:
    if scenario == "single":
        return single_server(name, log_dir)
    return roomcast_cluster(log_dir) if name == "roomcast" else node_redis_cluster(log_dir)


def machine_busy_seconds() -> float | None:
    """CPU seconds the machine's processes used (user + nice + system, every CPU, since boot),
    from /proc/stat; interrupt time is left out, as it is from a process's own figures."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:4]]
    except (OSError, ValueError):
        return None
    return sum(fields) / os.sysconf("SC_CLK_TCK")


def write_syscalls(pid: int) -> int | None:
    """How many write-type system calls a process made (``syscw`` of /proc/PID/io)."""
    try:
        with open(f"/proc/{pid}/io") as fh:
            for line in fh:
                if line.startswith("syscw:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (every thread of it), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sum_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


class Workers:
    """The load generator processes of one server's run."""

    def __init__(self, args: argparse.Namespace, ports: tuple[int, ...]) -> None:
        ctx = multiprocessing.get_context("spawn")
        members = args.clients // args.rooms
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        for w in range(args.workers):
            rooms = list(range(w, args.rooms, args.workers))
            cfg = WorkerConfig(HOST, ports, rooms, members, args.payload)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, cfg), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def receive(self, timeout: float) -> list[tuple[str, Any]]:
        """One message from every worker; a worker error or a timeout raises."""
        out = []
        deadline = time.monotonic() + timeout
        for conn in self.conns:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("the load generator did not answer in time")
            kind, value = conn.recv()
            if kind == "error":
                raise RuntimeError(f"load generator: {value}")
            out.append((kind, value))
        return out

    def send(self, message: tuple[str, Any]) -> None:
        for conn in self.conns:
            conn.send(message)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("quit", None))
        for proc in self.procs:
            proc.join(3)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()


def wait_for_membership(args: argparse.Namespace, admin_urls: tuple[str, ...]) -> float:
    """Poll every roomcast node's /admin/rooms until each room shows all its members, on as
    many nodes as there are; returns the seconds waited."""
    began = time.monotonic()
    members = args.clients // args.rooms
    wanted = {f"room-{i}" for i in range(args.rooms)}
    last = ""
    while True:
        pending = 0
        for url in admin_urls:
            try:
                body = get_json(f"{url}/admin/rooms?namespace=/")
            except (OSError, ValueError) as exc:
                last = f"{url}: {exc}"
                pending += 1
                continue
            complete = {
                row["room"]
                for row in body.get("rooms", [])
                if row.get("members") == members
                and len(row.get("nodes", {})) == min(members, len(admin_urls))
            }
            missing = wanted - complete
            if missing:
                last = f"{url}: {len(missing)} rooms incomplete, e.g. {min(missing)}"
                pending += 1
        if not pending:
            return time.monotonic() - began
        if time.monotonic() - began > 30:
            raise RuntimeError(f"cluster membership did not converge in 30s ({last})")
        time.sleep(0.05)


# --- measuring ----------------------------------------------------------------------------------


def percentile(sorted_values: array[int], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index] / 1000


def sleep_until(t: int) -> None:
    delay = (t - now_us()) / 1e6
    if delay > 0:
        time.sleep(delay)


def start_profiles(
    args: argparse.Namespace, scenario: str, name: str, mode: str, deployment: Deployment
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    if args.profile is None or not deployment.python:
        return []
    args.profile.mkdir(parents=True, exist_ok=True)
    spies = []
    for label in deployment.python:
        prefix = f"{name}-{mode}" if scenario == "single" else f"cluster-{name}-{label}-{mode}"
        output = args.profile / f"{prefix}.txt"
        spy = profile.record(deployment.procs[label].pid, args.duration, output)
        if spy is not None:
            spies.append((spy, output))
    return spies


def finish_profiles(spies: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    for spy, output in spies:
        _, err = spy.communicate()
        if spy.returncode == 0:
            print(profile.summarize(output, top=15), file=sys.stderr)
        else:
            print(f"profile: py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)


def run_phase(
    args: argparse.Namespace,
    scenario: str,
    name: str,
    mode: str,
    workers: Workers,
    deployment: Deployment,
) -> Row:
    start = now_us() + 300_000
    t0 = start + int(args.warmup * 1e6)
    t1 = t0 + int(args.duration * 1e6)
    phase = Phase(mode, args.rate, args.window, start, t0, t1, args.drain)
    workers.send(("phase", phase))
    sleep_until(t0)
    spies = start_profiles(args, scenario, name, mode, deployment)
    pids = {label: proc.pid for label, proc in deployment.procs.items()}
    cpu0 = {label: cpu_seconds(pid) for label, pid in pids.items()}
    busy0 = machine_busy_seconds()
    w0 = _sum_or_none([write_syscalls(pid) for pid in pids.values()])
    sleep_until(t1)
    cpu1 = {label: cpu_seconds(pid) for label, pid in pids.items()}
    busy1 = machine_busy_seconds()
    w1 = _sum_or_none([write_syscalls(pid) for pid in pids.values()])
    results: list[PhaseResult] = [
        value for _, value in workers.receive(args.drain + args.warmup + args.duration + 30)
    ]
    finish_profiles(spies)
    latencies = array("q", sorted(x for r in results for x in r.latencies))
    remote = array("q", sorted(x for r in results for x in r.remote_latencies))
    seconds = args.duration
    closed = sum(r.closed_clients for r in results)
    if closed:
        print(f"  [{name}/{mode}: {closed} clients were disconnected]", file=sys.stderr)
    offered = f"window {args.window}/room" if mode == "max" else f"{args.rate * args.rooms:g} pub/s"
    parts: dict[str, float] = {}
    for label in pids:
        before, after = cpu0[label], cpu1[label]
        if before is not None and after is not None:
            parts[label] = (after - before) / seconds
    server_cpu = sum(parts.values()) if len(parts) == len(pids) else None
    loadgen_cpu = sum(r.cpu_seconds for r in results) / seconds
    other_cpu = None
    if busy0 is not None and busy1 is not None and server_cpu is not None:
        other_cpu = max(0.0, (busy1 - busy0) / seconds - server_cpu - loadgen_cpu)
    delivered = sum(r.received_in_window for r in results)
    writes = None if w0 is None or w1 is None or not delivered else (w1 - w0) / delivered
    return Row(
        scenario=scenario,
        server=name,
        mode=mode,
        offered=offered,
        published_per_s=sum(r.published for r in results) / seconds,
        delivered_per_s=delivered / seconds,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=percentile(latencies, 1.0),
        remote_p50_ms=percentile(remote, 0.50),
        remote_p99_ms=percentile(remote, 0.99),
        missing=sum(r.expected for r in results) - len(latencies),
        server_cpu=server_cpu,
        loadgen_cpu=loadgen_cpu,
        other_cpu=other_cpu,
        writes_per_delivery=writes,
        cpu_parts=parts,
    )


def bench_server(
    args: argparse.Namespace, scenario: str, name: str, log_dir: Path, rows: list[Row]
) -> None:
    """Run every phase on one server of one scenario; each row is added to ``rows`` as soon as
    it is measured (an interrupted bench still prints what it has)."""
    label = LABELS.get((scenario, name), name)
    with deploy(scenario, name, log_dir) as deployment:
        began = time.monotonic()
        workers = Workers(args, deployment.ports)
        try:
            ready = workers.receive(90)
            clients = sum(n for _, (n, _) in ready)
            probe = max(seconds for _, (_, seconds) in ready)
            note = ""
            if deployment.admin_urls:
                waited = wait_for_membership(args, deployment.admin_urls)
                note = f", every node's /admin/rooms complete {waited:.2f}s later"
            print(
                f"{scenario}/{label}: {clients} clients connected and joined in "
                f"{time.monotonic() - began:.1f}s, probe delivered to every member in "
                f"{probe:.2f}s{note}",
                file=sys.stderr,
            )
            for mode in args.modes:
                row = run_phase(args, scenario, name, mode, workers, deployment)
                print(f"  {format_row(row, COLUMNS[scenario])}", file=sys.stderr, flush=True)
                if len(row.cpu_parts) > 1:
                    print(f"    server CPU: {_parts(row)}", file=sys.stderr, flush=True)
                rows.append(row)
                time.sleep(0.5)
        finally:
            workers.close()


# --- output -------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _parts(row: Row) -> str:
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
                print(f"  srv CPU of {row.label} {row.mode}: {_parts(row)}")
    print()
    print(
        "max: closed loop, --window messages in flight per room; rate: open loop, --rate per room."
    )
    print("CPU columns are in cores (srv CPU: every server process of the scenario together);")
    print("'other' is what other processes used meanwhile (when high, the figures are disturbed);")
    print("deliv/srv-CPU-s is deliveries per second of server CPU (CPU µs/deliv its inverse),")
    print("the figure least sensitive to a noisy machine; writes/deliv is the server's write")
    print("system calls per delivered message (below 1: frames to one client were coalesced).")


# --- command line -------------------------------------------------------------------------------


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
