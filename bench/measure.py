"""Measuring one deployment: the load generator processes, the phases, and the CPU and
write-syscall figures of the server processes read from /proc meanwhile (a load balancer's CPU
apart); in a cluster also the bytes each node received from its bus (bench/traffic.py) and
join latencies; behind a load balancer the requests the nodes forwarded to each other; in the
connect scenario the connection rate and the server's memory per connection; in the single
scenario, roomcast's memory with recovery off and on (its history, its kept sessions).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench import profile, traffic
from bench.idle import ConnectConfig, ConnectResult, idle_main
from bench.loadgen import Phase, PhaseResult, WorkerConfig, now_us, worker_main
from bench.report import (
    COLUMNS,
    SCALEOUT_COLUMNS,
    ConnectRow,
    JoinSample,
    MemoryRow,
    Results,
    Row,
    format_cpu_parts,
    format_row,
    percentile,
    server_label,
)
from bench.servers import HOST, Deployment, deploy, get_json


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


def rss_kb(pid: int) -> int | None:
    """The resident set size of a process, KB (``VmRSS`` of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def open_files_limit(pid: int) -> int | None:
    """The soft limit of open files of a process (``Max open files`` of /proc/PID/limits)."""
    try:
        with open(f"/proc/{pid}/limits") as fh:
            for line in fh:
                if line.startswith("Max open files"):
                    value = line.split()[3]
                    return None if value == "unlimited" else int(value)
    except (OSError, ValueError, IndexError):
        pass
    return None


def listen_overflows() -> int | None:
    """How often a listening socket's accept queue was full, machine-wide since boot
    (``TcpExt: ListenOverflows`` of /proc/net/netstat): connections then wait for a SYN
    retransmission, a second or more, which a connection rate shows."""
    try:
        with open("/proc/net/netstat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            with contextlib.suppress(KeyError, ValueError):
                return int(fields["ListenOverflows"])
    return None


def wait_idle(pid: int, timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` seconds) until a process stops using CPU: a server still
    closing thousands of sessions may not stop in time when asked to."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_seconds(pid)
        if now is None or now - last < 0.01:
            return
        last = now


#: The servers of the single scenario whose memory is read at each step (recovery off, on).
MEMORY_SERVERS = ("roomcast", "roomcast-recovery")


def settled_rss(pid: int) -> int | None:
    """A process's VmRSS (KB) once it has stopped using CPU (at most 5 s)."""
    wait_idle(pid)
    return rss_kb(pid)


def recovery_held(pid: int, log: Path, timeout: float = 5.0) -> dict[str, int] | None:
    """What recovery holds in the roomcast process ``pid`` (bench/roomcast_server.py), from the
    line it prints in ``log`` on SIGUSR1; None if no line came in ``timeout`` seconds."""

    def lines() -> list[str]:
        try:
            return [line for line in log.read_text().splitlines() if '{"recovery"' in line]
        except OSError:
            return []

    before = len(lines())
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = lines()
        if len(found) > before:
            held: dict[str, int] = json.loads(found[-1])["recovery"]
            return held
        time.sleep(0.05)
    return None


def clients_gone(port: int, timeout: float = 30.0) -> dict[str, Any] | None:
    """A roomcast node's ``/admin/stats`` once it has no connection nor socket left (None:
    not in ``timeout`` seconds, or it did not answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            doc: dict[str, Any] = get_json(f"http://{HOST}:{port}/admin/stats")
        except (OSError, ValueError):
            return None
        if doc.get("connections") == 0 and doc.get("sockets") == 0:
            return doc
        time.sleep(0.1)
    return None


def _sum_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def fanout_configs(
    args: argparse.Namespace, ports: tuple[int, ...], joiner: bool = False
) -> list[WorkerConfig]:
    """The configs of a fan-out scenario's ``--workers`` load generator processes (and the
    joiner's, when asked): every worker whole rooms, in turn."""
    members = args.clients // args.rooms
    configs = [
        WorkerConfig(
            HOST,
            ports,
            list(range(w, args.rooms, args.workers)),
            members,
            args.payload,
            args.spread,
        )
        for w in range(args.workers)
    ]
    if joiner:
        # A process of its own: a loop busy with room clients would delay reading its acks.
        configs.append(WorkerConfig(HOST, ports, [], members, args.payload, joiner=True))
    return configs


class Workers:
    """The load generator processes of one server's run: one per config, each running
    ``target`` (bench/loadgen.py's WebSocket workers unless told)."""

    def __init__(
        self,
        configs: Sequence[WorkerConfig],
        target: Callable[[Connection, Any], None] = worker_main,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        self.closed = False
        for cfg in configs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child, cfg), daemon=True)
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
        """Tell every worker to close its clients and quit, and wait (a second call does
        nothing)."""
        if self.closed:
            return
        self.closed = True
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
                and len(row.get("nodes", {})) == min(members, args.spread or len(admin_urls))
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
        where = f"scaleout{len(deployment.ports)}" if scenario == "scaleout" else scenario
        prefix = f"{name}-{mode}" if scenario == "single" else f"{where}-{name}-{label}-{mode}"
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
    joins: list[JoinSample] | None = None,
    route: str = "",
) -> Row:
    """One phase on a deployment; join latencies measured meanwhile go to ``joins``; polling
    clients send their requests by ``route`` (bench/polling.py)."""
    start = now_us() + 300_000
    t0 = start + int(args.warmup * 1e6)
    t1 = t0 + int(args.duration * 1e6)
    # Join latency under load: during the max phase of the cluster scenario only.
    n_joins = args.joins if joins is not None and mode == "max" else 0
    phase = Phase(mode, args.rate, args.window, start, t0, t1, args.drain, n_joins, route)
    workers.send(("phase", phase))
    sleep_until(t0)
    spies = start_profiles(args, scenario, name, mode, deployment)
    everyone = {label: proc.pid for label, proc in deployment.procs.items()}
    pids = {label: pid for label, pid in everyone.items() if label not in deployment.side}
    cpu0 = {label: cpu_seconds(pid) for label, pid in everyone.items()}
    busy0 = machine_busy_seconds()
    w0 = _sum_or_none([write_syscalls(pid) for pid in pids.values()])
    bus0 = traffic.sample(deployment) if scenario == "scaleout" else None
    batches0 = traffic.router_counts(deployment.router_url) if deployment.router_url else None
    forwarding = scenario == "balancer"
    fwd0 = traffic.forwarded(deployment.admin_urls) if forwarding else None
    sleep_until(t1)
    cpu1 = {label: cpu_seconds(pid) for label, pid in everyone.items()}
    busy1 = machine_busy_seconds()
    w1 = _sum_or_none([write_syscalls(pid) for pid in pids.values()])
    bus1 = traffic.sample(deployment) if scenario == "scaleout" else None
    fwd1 = traffic.forwarded(deployment.admin_urls) if forwarding else None
    batches1 = traffic.router_counts(deployment.router_url) if deployment.router_url else None
    bus = traffic.per_second(bus0, bus1)
    if scenario == "scaleout" and bus is None:
        print(f"  [{name}/{mode}: the nodes' bus bytes could not be read]", file=sys.stderr)
    results: list[PhaseResult] = [
        value for _, value in workers.receive(args.drain + args.warmup + args.duration + 30)
    ]
    finish_profiles(spies)
    if n_joins and joins is not None:
        joined = array("q", (x for r in results for x in r.join_latencies))
        errors = [e for r in results for e in r.errors]
        joins.append(JoinSample(name, "max", joined, errors))
    latencies = array("q", sorted(x for r in results for x in r.latencies))
    remote = array("q", sorted(x for r in results for x in r.remote_latencies))
    seconds = args.duration
    closed = sum(r.closed_clients for r in results)
    if closed:
        print(f"  [{name}/{mode}: {closed} clients were disconnected]", file=sys.stderr)
    offered = f"window {args.window}/room" if mode == "max" else f"{args.rate * args.rooms:g} pub/s"
    parts: dict[str, float] = {}
    for label in everyone:
        before, after = cpu0[label], cpu1[label]
        if before is not None and after is not None:
            parts[label] = (after - before) / seconds
    server_cpu = _sum_or_none([parts.get(label) for label in pids])
    side_cpu = _sum_or_none([parts.pop(label, None) for label in deployment.side])
    loadgen_cpu = sum(r.cpu_seconds for r in results) / seconds
    other_cpu = None
    if busy0 is not None and busy1 is not None and server_cpu is not None:
        other_cpu = max(
            0.0, (busy1 - busy0) / seconds - server_cpu - (side_cpu or 0.0) - loadgen_cpu
        )
    if forwarding and (fwd0 is None or fwd1 is None):
        print(f"  [{name}/{mode}: the nodes' forward counters could not be read]", file=sys.stderr)
    fwd = None if fwd0 is None or fwd1 is None else fwd1 - fwd0
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
        nodes=len(deployment.ports) if scenario == "scaleout" else 0,
        bus_in_per_node=None if bus is None else sum(bus) / len(bus),
        bus_in_max_node=None if bus is None else max(bus),
        bus_batch=traffic.messages_per_batch(batches0, batches1),
        balancer_cpu=side_cpu if deployment.side else None,
        requests_per_s=sum(r.requests for r in results) / seconds if route else None,
        forwarded_per_s=None if fwd is None else fwd.requests / seconds,
        forwarded_bytes_per_s=None if fwd is None else fwd.bytes / seconds,
        forward_failed=None if fwd is None else fwd.failed,
        spliced=None if fwd1 is None else fwd1.spliced,
    )


def idle_joins(args: argparse.Namespace, name: str, workers: Workers) -> JoinSample:
    """``--joins`` joins at idle, one after the other, by the joiner."""
    workers.send(("joins", args.joins))
    # The joiner stops after 60 s (and a join gives up after 10 s).
    replies = workers.receive(90)
    joined = array("q", (x for _, (latencies, _) in replies for x in latencies))
    errors = [e for _, (_, errs) in replies for e in errs]
    return JoinSample(name, "idle", joined, errors)


def bench_fanout(
    args: argparse.Namespace,
    scenario: str,
    name: str,
    log_dir: Path,
    results: Results,
    nodes: int,
) -> None:
    """Every phase on one server of a fan-out scenario (single, cluster, or scaleout with
    ``nodes`` nodes); each row is added to ``results`` as soon as it is measured."""
    if scenario == "scaleout":
        # Each room on exactly two nodes, whatever their number: a node then has members of
        # 2/N of the rooms, which is what interest routing can make use of.
        args = copy.copy(args)
        args.spread = 2
    cluster = scenario == "cluster"
    memory = scenario == "single" and name in MEMORY_SERVERS
    with deploy(scenario, name, log_dir, nodes) as deployment:
        pid = deployment.procs[name].pid if memory else 0
        label = server_label(scenario, name, nodes if scenario == "scaleout" else 0)
        began = time.monotonic()
        workers = Workers(fanout_configs(args, deployment.ports, cluster and args.joins > 0))
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
            joined_kb = settled_rss(pid) if memory else None
            joins = results.joins if cluster and args.joins > 0 else None
            if joins is not None:
                sample = idle_joins(args, name, workers)
                joins.append(sample)
                latencies = array("q", sorted(sample.latencies))
                p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
                if p50 is not None and p99 is not None:
                    print(
                        f"  join latency at idle: {len(latencies)} joins, p50 {p50:.2f} ms, "
                        f"p99 {p99:.2f} ms",
                        file=sys.stderr,
                    )
                for error in sample.errors:
                    print(f"  join latency at idle: {error}", file=sys.stderr)
            columns = SCALEOUT_COLUMNS if scenario == "scaleout" else COLUMNS[scenario]
            for mode in args.modes:
                row = run_phase(args, scenario, name, mode, workers, deployment, joins)
                print(f"  {format_row(row, columns)}", file=sys.stderr, flush=True)
                if len(row.cpu_parts) > 1:
                    print(f"    server CPU: {format_cpu_parts(row)}", file=sys.stderr, flush=True)
                results.rows.append(row)
                time.sleep(0.5)
            if memory:
                log = log_dir / f"{name}.log"
                port = deployment.ports[0]
                results.memory.append(memory_after(args, name, pid, port, log, joined_kb, workers))
        finally:
            workers.close()


def memory_after(
    args: argparse.Namespace,
    name: str,
    pid: int,
    port: int,
    log: Path,
    joined_kb: int | None,
    workers: Workers,
) -> MemoryRow:
    """The server's memory after the phases, then once every client dropped its connection
    (the workers close their WebSockets without a Socket.IO DISCONNECT: a lost connection,
    whose session recovery keeps); and what its history holds after the phases."""
    traffic_kb = settled_rss(pid)
    held = recovery_held(pid, log)
    workers.close()
    doc = clients_gone(port)
    if doc is None:
        print(f"  [{name}: its clients did not all leave in 30 s]", file=sys.stderr)
    gone_kb = settled_rss(pid)
    kept = None if doc is None else int(doc.get("sessions_kept", 0))
    row = MemoryRow(
        name,
        args.clients,
        joined_kb,
        traffic_kb,
        gone_kb,
        kept,
        None if held is None else held["history_packets"],
        None if held is None else held["history_bytes"],
    )
    print(
        f"  memory (VmRSS): {joined_kb} KB joined, {traffic_kb} KB after the phases "
        f"(history: {row.history_packets} packets, {row.history_bytes} bytes of frames), "
        f"{gone_kb} KB with the clients gone, {kept} sessions kept",
        file=sys.stderr,
        flush=True,
    )
    return row


def bench_connect(args: argparse.Namespace, name: str, log_dir: Path, results: Results) -> None:
    """The connect phase on one server: ``--idle-clients`` idle clients opened as fast as
    ``--connect-concurrency`` allows, the server's RSS before and after (each settled 1s)."""
    settle = 1.0
    with deploy("connect", name, log_dir) as deployment:
        pid = deployment.procs[name].pid
        limit = open_files_limit(pid)
        if limit is not None and limit < args.idle_clients + 64:
            print(
                f"connect/{name}: the server may open only {limit} files, fewer than "
                f"{args.idle_clients} clients need",
                file=sys.stderr,
            )
        ctx = multiprocessing.get_context("spawn")
        procs: list[BaseProcess] = []
        conns: list[Connection] = []
        share, extra = divmod(args.idle_clients, args.workers)
        lanes = max(1, args.connect_concurrency // args.workers)
        try:
            for w in range(args.workers):
                cfg = ConnectConfig(HOST, deployment.ports[0], share + (w < extra), lanes)
                parent, child = ctx.Pipe()
                idle = ctx.Process(target=idle_main, args=(child, cfg), daemon=True)
                idle.start()
                child.close()
                procs.append(idle)
                conns.append(parent)
            time.sleep(settle)  # the server idle since it started; the workers importing
            rss0 = rss_kb(pid)
            cpu0 = cpu_seconds(pid)
            overflows0 = listen_overflows()
            start = now_us() + 500_000  # after every worker has started, most likely
            for conn in conns:
                conn.send(("connect", start))
            done: list[ConnectResult] = []
            deadline = time.monotonic() + 60 + args.idle_clients / 50
            for conn in conns:
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError("the idle clients did not connect in time")
                done.append(conn.recv()[1])
            cpu1 = cpu_seconds(pid)
            overflows1 = listen_overflows()
            time.sleep(settle)
            rss1 = rss_kb(pid)
            connected = sum(r.connected for r in done)
            began = min(r.began for r in done)
            finished = max((r.finished for r in done if r.connected), default=began)
            row = ConnectRow(
                server=name,
                clients=args.idle_clients,
                connected=connected,
                failed=sum(r.failed for r in done),
                seconds=(finished - began) / 1e6,
                rss_before_kb=rss0,
                rss_after_kb=rss1,
                server_cpu=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                loadgen_cpu=sum(r.cpu_seconds for r in done),
                first_error=next((r.first_error for r in done if r.first_error), ""),
                listen_overflows=(
                    None if overflows0 is None or overflows1 is None else overflows1 - overflows0
                ),
            )
            print(
                f"connect/{name}: {connected} of {args.idle_clients} clients in "
                f"{row.seconds:.2f}s, server RSS {rss0} -> {rss1} KB (open files: server "
                f"{limit}, load generator {done[0].fd_limit})",
                file=sys.stderr,
            )
            results.connects.append(row)
        finally:
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.send(("quit", None))
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            for conn in conns:
                conn.close()
            wait_idle(pid)


def bench_server(
    args: argparse.Namespace,
    scenario: str,
    name: str,
    log_dir: Path,
    results: Results,
    nodes: int = 0,
) -> None:
    """One server in one scenario (``nodes``: a scale-out deployment's node count); what it
    measures is added to ``results`` as soon as it is (an interrupted bench prints what it
    has)."""
    if scenario == "connect":
        bench_connect(args, name, log_dir, results)
    else:
        bench_fanout(args, scenario, name, log_dir, results, nodes or args.nodes)
