"""The bus's floor: what ZeroMQ alone costs for the cluster scenario's bus traffic, with no
roomcast code at all, measured in the same run as roomcast's cluster.

Three processes on 127.0.0.1, wired as a roomcast cluster's are: a *router*, libzmq's own proxy
(``zmq.proxy`` between an XSUB and an XPUB socket: C, no Python per message), and two *nodes*,
each a PUB socket connected to the router's XSUB side and a SUB socket connected to its XPUB
side, subscribed to every room's topic (in the cluster scenario every room has members on both
nodes, so every message goes to both: to the other node, and back to its publisher, the echo
roomcast's nodes get too). A node is a uvloop event loop that reads its SUB socket from the
loop as roomcast's bus does (the socket's file descriptor, then ``ZMQ_EVENTS`` and
non-blocking reads until none is left) and publishes messages of roomcast's size (a topic of a
room plus the envelope of the bench's message) on the rooms' topics, in turn. Two shapes:

* ``rate``: the cluster rate phase's publishes per second (``--rate`` x ``--rooms``), half on
  each node, the messages of a loop pass (one or two: uvloop's timers tick by the
  millisecond) in one batch, as roomcast's nodes send them. What the nodes' pacing loop costs
  by itself (the same loop, sending nothing: in roomcast the pass that publishes is the one
  that read the client's message, which is not the bus's cost) is measured apart, per pass,
  and taken out for as many passes as the sending run made;
* ``burst k``: as fast as it goes, ``k`` messages per loop pass sent as one ZeroMQ message (a
  batch, as roomcast's nodes send), with at most 4 bursts per node in flight (a node sends
  again when its own burst came back). The proxy routes the batch whole, to both nodes, where
  roomcast's router splits it and sends each message on its own: so this shape is a lower
  bound of what the bus of ``k`` publishes per pass can cost, not just a floor of ZeroMQ's
  part.

The figure: server CPU (every thread of the three processes: the nodes' and the router's
ZeroMQ I/O threads too) per message published, split nodes / router, and the share of the
copies the nodes should receive that they did. It runs alone on the machine (after the bench's
rounds), where every message that arrives alone wakes a sleeping thread: for a cluster that
sends each pass's messages at once through a router process, as roomcast's does, it is the
least the bus costs per publish on this machine: ``print_floor``
(bench/report.py) sets it beside what roomcast's bus costs, and what the cluster targets leave
for it, in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

import zmq

from bench.measure import cpu_seconds
from bench.report import FloorRow
from bench.servers import HOST, free_ports

#: Bytes of one bus message of the bench: a room topic (17) and the envelope of a 32-character
#: message (measured on roomcast's own encoder).
MESSAGE_BYTES = 118
BURSTS = (1, 8, 32)
_IN_FLIGHT = 4  #: bursts a node has sent and not yet seen come back
_TOPIC_BYTES = 17
_WARMUP = 1.0
_READY_TIMEOUT = 10.0
_ROUTER_HWM = 100_000
_PUBLISHED, _RECEIVED, _PASSES = 0, 1, 2  #: a node's shared counts


def _exit_with(parent: int) -> None:
    """End this process when the bench that started it is gone (even SIGKILLed)."""
    if os.getppid() != parent:
        os._exit(0)


def _router(xsub_endpoint: str, xpub_endpoint: str, parent: int) -> None:
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xpub = ctx.socket(zmq.XPUB)
    for sock in (xsub, xpub):  # roomcast's router's default (router.hwm)
        sock.setsockopt(zmq.SNDHWM, _ROUTER_HWM)
        sock.setsockopt(zmq.RCVHWM, _ROUTER_HWM)
    xsub.bind(xsub_endpoint)
    xsub.send(b"\x01")  # everything, from every publisher (as roomcast's router)
    xpub.bind(xpub_endpoint)
    threading.Thread(target=zmq.proxy, args=(xsub, xpub), daemon=True).start()
    while True:
        time.sleep(0.5)
        _exit_with(parent)


def _topics(rooms: int) -> list[bytes]:
    return [b"r" + i.to_bytes(4, "big") * 4 for i in range(rooms)]


def _node(
    me: int,
    xsub_endpoint: str,
    xpub_endpoint: str,
    rooms: int,
    burst: int,
    rate: float,
    ready: Any,
    go: Any,
    counts: Any,
    parent: int,
    send_nothing: bool = False,
) -> None:
    """One node (see the module's docstring). ``counts``: a shared array of the messages it
    published, the messages it received, and its pacing loop's passes, while running."""
    import asyncio

    import uvloop

    topics = _topics(rooms)
    filler = b"x" * (MESSAGE_BYTES - _TOPIC_BYTES - 2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.connect(xsub_endpoint)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(xpub_endpoint)
        for topic in topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        state = {"in_flight": 0, "next": 0, "running": False, "subscribed": False}
        mine = bytes((me,))

        def send(count: int, batch: bool = False) -> None:
            n = state["next"]
            if batch:  # one message: the first one's topic, then every message whole
                message = b"".join(
                    topics[(n + i) % rooms] + mine + b"L" + filler for i in range(count)
                )
                pub.send(message, zmq.NOBLOCK)
            else:
                for i in range(count):
                    pub.send(topics[(n + i) % rooms] + mine + b"L" + filler, zmq.NOBLOCK)
            state["next"] = n + count
            if state["running"]:
                counts[_PUBLISHED] += count

        def read() -> None:
            while sub.get(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[operator]
                message = sub.recv(zmq.NOBLOCK)
                if state["running"]:
                    counts[_RECEIVED] += len(message) // MESSAGE_BYTES
                # The byte after the topic says whose it is.
                if message[_TOPIC_BYTES] == me:
                    if message[_TOPIC_BYTES + 1] == ord("L") and burst:
                        state["in_flight"] -= 1
                        loop.call_soon(pump)
                    elif topics[0] == message[:_TOPIC_BYTES] and message.endswith(b"?"):
                        state["subscribed"] = True

        def pump() -> None:
            while state["in_flight"] < _IN_FLIGHT:
                state["in_flight"] += 1
                send(burst, batch=True)

        loop.add_reader(sub.getsockopt(zmq.FD), read)
        # The slow joiner: probe until our own probe comes back through the router.
        while not state["subscribed"]:
            pub.send(topics[0] + mine + b"-?", zmq.NOBLOCK)
            await asyncio.sleep(0.01)
            read()
        ready.set()
        await loop.run_in_executor(None, go.wait)
        state["running"] = True
        if burst:
            pump()
            while True:
                await asyncio.sleep(0.5)
                _exit_with(parent)
        interval = 2.0 / rate  # the two nodes share the rate
        start = loop.time()
        while True:
            due = int((loop.time() - start) / interval)
            counts[_PASSES] += 1
            if send_nothing:
                counts[_PUBLISHED] += due - state["next"]
                state["next"] = due
            elif due > state["next"]:
                send(due - state["next"], batch=True)  # a pass's messages, in one batch
            if not counts[_PASSES] % 1000:
                _exit_with(parent)
            await asyncio.sleep(interval)

    uvloop.run(main())


@dataclass
class _Measured:
    """One shape's window: messages published and received, pacing passes, CPU seconds."""

    seconds: float
    published: int
    received: int
    passes: int
    node_cpu: float
    router_cpu: float


def _measure(
    args: argparse.Namespace, shape: str, burst: int, rate: float, nothing: bool = False
) -> _Measured | None:
    """One shape (``nothing``: the rate shape's pacing loop alone, sending nothing)."""
    ctx = multiprocessing.get_context("spawn")
    xsub_port, xpub_port = free_ports(2)
    xsub, xpub = f"tcp://{HOST}:{xsub_port}", f"tcp://{HOST}:{xpub_port}"
    go = ctx.Event()
    parent = os.getpid()
    counts = [ctx.Array("q", 3, lock=False) for _ in range(2)]
    with _processes() as procs:
        router = ctx.Process(target=_router, args=(xsub, xpub, parent), daemon=True)
        router.start()
        procs.append(router)
        readies = []
        for me, shared in enumerate(counts):
            ready = ctx.Event()
            node = ctx.Process(
                target=_node,
                args=(
                    me,
                    xsub,
                    xpub,
                    args.rooms,
                    burst,
                    rate,
                    ready,
                    go,
                    shared,
                    parent,
                    nothing,
                ),
                daemon=True,
            )
            node.start()
            procs.append(node)
            readies.append(ready)
        if not all(ready.wait(_READY_TIMEOUT) for ready in readies):
            print(f"  [floor {shape}: the nodes did not get through the router]")
            return None
        go.set()
        time.sleep(_WARMUP)
        pids = [p.pid for p in procs if p.pid is not None]

        def sample() -> tuple[float, list[float | None], list[int]]:
            at = time.monotonic()
            cpu = [cpu_seconds(pid) for pid in pids]
            return at, cpu, [sum(c[i] for c in counts) for i in range(3)]

        t0, cpu0, n0 = sample()
        time.sleep(args.duration)
        t1, cpu1, n1 = sample()
    if n1[_PUBLISHED] <= n0[_PUBLISHED] or None in cpu0 or None in cpu1:
        return None
    used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]  # type: ignore[operator]
    return _Measured(
        t1 - t0,
        n1[_PUBLISHED] - n0[_PUBLISHED],
        n1[_RECEIVED] - n0[_RECEIVED],
        n1[_PASSES] - n0[_PASSES],
        node_cpu=used[1] + used[2],
        router_cpu=used[0],
    )


def _row(burst: int, m: _Measured, node_cpu: float | None = None) -> FloorRow:
    nodes = m.node_cpu if node_cpu is None else node_cpu
    return FloorRow(
        burst,
        m.published / m.seconds,
        node_us=nodes / m.published * 1e6,
        router_us=m.router_cpu / m.published * 1e6,
        received=m.received / (2 * m.published),
    )


@contextlib.contextmanager
def _processes() -> Iterator[list[BaseProcess]]:
    procs: list[BaseProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(5)


def bench_floor(args: argparse.Namespace) -> list[FloorRow]:
    """Every shape, one after the other (see the module's docstring)."""
    rows = []
    rate = args.rate * args.rooms
    paced = _measure(args, "rate", 0, rate)
    pacing = _measure(args, "pacing", 0, rate, nothing=True)
    if paced is not None and pacing is not None and pacing.passes:
        # The pacing loop's own cost, per pass, times the passes it made while sending.
        pacing_cpu = pacing.node_cpu / pacing.passes * paced.passes
        rows.append(_row(0, paced, paced.node_cpu - pacing_cpu))
    for k in BURSTS:
        measured = _measure(args, f"burst {k}", k, 0.0)
        if measured is not None:
            rows.append(_row(k, measured))
    return rows
