"""Single-node fan-out benchmark: roomcast against the official Node socket.io server.

    python -m bench [--servers roomcast,node,python-socketio] [--clients 1000] [--rooms 100]
                    [--duration 10] [--modes max,rate] [--rate 30] [--window 8] [--workers 1]
                    [--repeat 1] [--profile DIR]

Each server runs as a process of its own on 127.0.0.1; the load generator (bench/loadgen.py,
``--workers`` processes) opens ``--clients`` WebSockets, puts them in ``--rooms`` rooms of equal
size through the relay's ``join`` event, and makes the first member of each room publish with
the ``publish`` event. Every other member (publishers never receive their own messages, on any
server) records the latency from the message's send timestamp. Two phases per server:

* ``max``: closed loop, ``--window`` messages in flight per room: the room's next message is
  sent as soon as one of its members got the previous one. Shows the sustainable peak.
* ``rate``: open loop, ``--rate`` messages per second per room. Shows latency at a fixed load.

Figures are per phase: publishes/s and deliveries/s during the measured ``--duration`` (after
``--warmup``), latency percentiles of the messages sent in that window, their deliveries still
missing ``--drain`` seconds after it, and the CPU used by the server and by the load generator.
A benchmark, not a test: nothing here judges the numbers.

``--profile DIR`` records the Python servers with py-spy (``pip install py-spy``) during each
measured window and prints their hottest functions (see bench/profile.py). ``make bench``
installs the Node server (``npm ci`` in bench/js) and passes ``BENCH_ARGS`` on.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
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
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench import profile
from bench.loadgen import Phase, PhaseResult, WorkerConfig, now_us, worker_main

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "bench" / "js"
HOST = "127.0.0.1"

SERVERS: dict[str, Callable[[int], list[str]]] = {
    "roomcast": lambda port: [sys.executable, "-m", "bench.roomcast_server", "--port", str(port)],
    "node": lambda port: ["node", str(JS_DIR / "server.mjs"), "--port", str(port)],
    "python-socketio": lambda port: [sys.executable, "-m", "bench.sio_server", "--port", str(port)],
}


@dataclass
class Row:
    """One line of the results table."""

    server: str
    mode: str
    offered: str
    published_per_s: float
    delivered_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    missing: int
    server_cpu: float | None  #: cores
    loadgen_cpu: float  #: cores
    other_cpu: float | None  #: cores used by other processes meanwhile
    writes_per_delivery: float | None  #: the server's write syscalls per delivery

    @property
    def per_cpu_second(self) -> float | None:
        """Deliveries per second of server CPU: what the server makes of the CPU it got."""
        if not self.server_cpu:
            return None
        return self.delivered_per_s / self.server_cpu


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


@contextlib.contextmanager
def server_process(name: str, port: int, log_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until it accepts connections, and always stop it."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            SERVERS[name](port),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not listen on {port}") from None
                time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc)
        if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
            print(f"[{name} exited with {proc.returncode}]\n{_tail(log_path)}", file=sys.stderr)


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


class Workers:
    """The load generator processes of one server's run."""

    def __init__(self, args: argparse.Namespace, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        members = args.clients // args.rooms
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        for w in range(args.workers):
            rooms = list(range(w, args.rooms, args.workers))
            cfg = WorkerConfig(HOST, port, rooms, members, args.payload)
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


PYTHON_SERVERS = frozenset({"roomcast", "python-socketio"})


def run_phase(
    args: argparse.Namespace, name: str, mode: str, workers: Workers, server_pid: int
) -> Row:
    start = now_us() + 300_000
    t0 = start + int(args.warmup * 1e6)
    t1 = t0 + int(args.duration * 1e6)
    phase = Phase(mode, args.rate, args.window, start, t0, t1, args.drain)
    workers.send(("phase", phase))
    sleep_until(t0)
    spy_output = None
    if args.profile is not None and name in PYTHON_SERVERS:
        args.profile.mkdir(parents=True, exist_ok=True)
        spy_output = args.profile / f"{name}-{mode}.txt"
    spy = profile.record(server_pid, args.duration, spy_output) if spy_output else None
    cpu0, busy0, w0 = cpu_seconds(server_pid), machine_busy_seconds(), write_syscalls(server_pid)
    sleep_until(t1)
    cpu1, busy1, w1 = cpu_seconds(server_pid), machine_busy_seconds(), write_syscalls(server_pid)
    results: list[PhaseResult] = [
        value for _, value in workers.receive(args.drain + args.warmup + args.duration + 30)
    ]
    if spy is not None and spy_output is not None:
        _, err = spy.communicate()
        if spy.returncode == 0:
            print(profile.summarize(spy_output, top=15), file=sys.stderr)
        else:
            print(f"profile: py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)
    latencies = array("q", sorted(x for r in results for x in r.latencies))
    seconds = args.duration
    closed = sum(r.closed_clients for r in results)
    if closed:
        print(f"  [{name}/{mode}: {closed} clients were disconnected]", file=sys.stderr)
    offered = f"window {args.window}/room" if mode == "max" else f"{args.rate * args.rooms:g} pub/s"
    server_cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / seconds
    loadgen_cpu = sum(r.cpu_seconds for r in results) / seconds
    other_cpu = None
    if busy0 is not None and busy1 is not None and server_cpu is not None:
        other_cpu = max(0.0, (busy1 - busy0) / seconds - server_cpu - loadgen_cpu)
    delivered = sum(r.received_in_window for r in results)
    writes = None if w0 is None or w1 is None or not delivered else (w1 - w0) / delivered
    return Row(
        server=name,
        mode=mode,
        offered=offered,
        published_per_s=sum(r.published for r in results) / seconds,
        delivered_per_s=delivered / seconds,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=percentile(latencies, 1.0),
        missing=sum(r.expected for r in results) - len(latencies),
        server_cpu=server_cpu,
        loadgen_cpu=loadgen_cpu,
        other_cpu=other_cpu,
        writes_per_delivery=writes,
    )


def bench_server(args: argparse.Namespace, name: str, log_dir: Path) -> list[Row]:
    port = free_port()
    rows: list[Row] = []
    with server_process(name, port, log_dir) as proc:
        began = time.monotonic()
        workers = Workers(args, port)
        try:
            ready = workers.receive(90)
            clients = sum(n for _, n in ready)
            print(
                f"{name}: {clients} clients connected and joined in "
                f"{time.monotonic() - began:.1f}s",
                file=sys.stderr,
            )
            for mode in args.modes:
                row = run_phase(args, name, mode, workers, proc.pid)
                print(f"  {format_row(row)}", file=sys.stderr, flush=True)
                rows.append(row)
                time.sleep(0.5)
        finally:
            workers.close()
    return rows


# --- output -------------------------------------------------------------------------------------

COLUMNS = (
    ("server", 15),
    ("phase", 5),
    ("offered", 14),
    ("pub/s", 7),
    ("deliv msg/s", 11),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("max ms", 7),
    ("missing", 7),
    ("srv CPU", 7),
    ("gen CPU", 7),
    ("other", 5),
    ("deliv/srv-CPU-s", 15),
    ("writes/deliv", 12),
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _line(cells: tuple[str, ...]) -> str:
    return "  ".join(
        c.ljust(w) if i < 3 else c.rjust(w)
        for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def format_row(row: Row) -> str:
    return _line(
        (
            row.server,
            row.mode,
            row.offered,
            _int(row.published_per_s),
            _int(row.delivered_per_s),
            _ms(row.p50_ms),
            _ms(row.p99_ms),
            _ms(row.max_ms),
            str(row.missing),
            _pct(row.server_cpu),
            _pct(row.loadgen_cpu),
            _pct(row.other_cpu),
            _int(row.per_cpu_second),
            "-" if row.writes_per_delivery is None else f"{row.writes_per_delivery:.2f}",
        )
    )


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(rows: list[Row]) -> list[Row]:
    """One row per (server, phase): the median of each figure over the repeats."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.server, row.mode), []).append(row)
    out = []
    for (server, mode), group in groups.items():
        out.append(
            Row(
                server=server,
                mode=mode,
                offered=group[0].offered,
                published_per_s=statistics.median(r.published_per_s for r in group),
                delivered_per_s=statistics.median(r.delivered_per_s for r in group),
                p50_ms=_median([r.p50_ms for r in group]),
                p99_ms=_median([r.p99_ms for r in group]),
                max_ms=_median([r.max_ms for r in group]),
                missing=max(r.missing for r in group),
                server_cpu=_median([r.server_cpu for r in group]),
                loadgen_cpu=statistics.median(r.loadgen_cpu for r in group),
                other_cpu=_median([r.other_cpu for r in group]),
                writes_per_delivery=_median([r.writes_per_delivery for r in group]),
            )
        )
    return out


def print_table(args: argparse.Namespace, rows: list[Row]) -> None:
    members = args.clients // args.rooms
    print()
    print(
        f"fan-out: {args.clients} clients, {args.rooms} rooms of {members} "
        f"(1 publisher, {members - 1} receivers), {args.payload}-char payload, "
        f"{args.duration:g}s measured after {args.warmup:g}s warmup, "
        f"{args.workers} load generator process(es), {os.cpu_count()} CPUs"
        + (f", median of {args.repeat} runs" if args.repeat > 1 else "")
    )
    header = _line(tuple(name for name, _ in COLUMNS))
    print(header)
    print("-" * len(header))
    for row in summarize(rows):
        print(format_row(row))
    print(
        "max: closed loop, --window messages in flight per room; rate: open loop, --rate per room."
    )
    print("CPU columns are in cores; 'other' is what other processes used meanwhile (when high,")
    print("the figures are disturbed); deliv/srv-CPU-s is deliveries per second of server CPU,")
    print("the figure least sensitive to a noisy machine; writes/deliv is the server's write")
    print("system calls per delivered message (below 1: frames to one client were coalesced).")


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--servers", default="roomcast,node,python-socketio")
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
        help="record the Python servers with py-spy during each measured window, into DIR",
    )
    args = parser.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    for server in args.servers:
        if server not in SERVERS:
            parser.error(f"unknown server {server!r} (known: {', '.join(SERVERS)})")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C does, so that every server and worker is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if "node" in args.servers and not (JS_DIR / "node_modules" / "socket.io").is_dir():
        if shutil.which("npm") is None:
            print("node: skipped (npm not found)", file=sys.stderr)
            args.servers.remove("node")
        else:
            print("node: run `npm ci` in bench/js first (`make bench` does)", file=sys.stderr)
            return 2
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="roomcast-bench-") as log_dir:
            for _ in range(args.repeat):
                for name in args.servers:
                    try:
                        rows.extend(bench_server(args, name, Path(log_dir)))
                    except RuntimeError as exc:
                        print(f"{name}: failed: {exc}", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        print("\ninterrupted", file=sys.stderr)
        print_table(args, rows)
        return 130
    print_table(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
