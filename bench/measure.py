"""Measuring one deployment: the load generator processes, the phases, and the CPU and
write-syscall figures of the server processes read from /proc meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import subprocess
import sys
import time
from array import array
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench import profile
from bench.loadgen import Phase, PhaseResult, WorkerConfig, now_us, worker_main
from bench.report import COLUMNS, LABELS, Row, format_cpu_parts, format_row
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
            cfg = WorkerConfig(HOST, ports, rooms, members, args.payload, args.spread)
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
    with deploy(scenario, name, log_dir, args.nodes) as deployment:
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
                    print(f"    server CPU: {format_cpu_parts(row)}", file=sys.stderr, flush=True)
                rows.append(row)
                time.sleep(0.5)
        finally:
            workers.close()
