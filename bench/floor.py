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
  each node, a message or two per loop pass (uvloop's timers tick by the millisecond). What
  the nodes' pacing loop costs by itself (the same loop, sending nothing: in roomcast the pass
  that publishes is the one that read the client's message, which is not the bus's cost) is
  measured apart and taken out;
* ``burst k``: as fast as it goes, ``k`` messages per loop pass sent as one ZeroMQ message (a
  batch, as roomcast's nodes send), with at most 4 bursts per node in flight (a node sends
  again when its own burst came back). The proxy routes the batch whole, to both nodes, where
  roomcast's router splits it and sends each message on its own: so this shape is a lower
  bound of what the bus of ``k`` publishes per pass can cost, not just a floor of ZeroMQ's
  part.

The figure: server CPU (every thread of the three processes: the nodes' and the router's
ZeroMQ I/O threads too) per message published, split nodes / router. It is the least the bus of
a cluster shaped like roomcast's costs per publish on this machine: ``print_floor``
(bench/report.py) sets it beside what roomcast's bus costs, and what the cluster targets leave
for it, in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
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


def _router(xsub_endpoint: str, xpub_endpoint: str) -> None:
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xsub.bind(xsub_endpoint)
    xsub.send(b"\x01")  # everything, from every publisher (as roomcast's router)
    xpub = ctx.socket(zmq.XPUB)
    xpub.bind(xpub_endpoint)
    with contextlib.suppress(zmq.ContextTerminated):
        zmq.proxy(xsub, xpub)


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
    published: Synchronized[int],
    send_nothing: bool = False,
) -> None:
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
                published.value += count

        def read() -> None:
            while sub.get(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[operator]
                message = sub.recv(zmq.NOBLOCK)
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
            await asyncio.Event().wait()
        interval = 2.0 / rate  # the two nodes share the rate
        start = loop.time()
        while True:
            due = int((loop.time() - start) / interval)
            if send_nothing:
                published.value += due - state["next"]
                state["next"] = due
            elif due > state["next"]:
                send(due - state["next"])
            await asyncio.sleep(interval)

    uvloop.run(main())


def _measure(
    args: argparse.Namespace, shape: str, burst: int, rate: float, send_nothing: bool = False
) -> FloorRow | None:
    ctx = multiprocessing.get_context("spawn")
    xsub_port, xpub_port = free_ports(2)
    xsub, xpub = f"tcp://{HOST}:{xsub_port}", f"tcp://{HOST}:{xpub_port}"
    go = ctx.Event()
    counters = [ctx.Value("q", 0, lock=False) for _ in range(2)]
    with _processes() as procs:
        router = ctx.Process(target=_router, args=(xsub, xpub), daemon=True)
        router.start()
        procs.append(router)
        readies = []
        for me, counter in enumerate(counters):
            ready = ctx.Event()
            node = ctx.Process(
                target=_node,
                args=(me, xsub, xpub, args.rooms, burst, rate, ready, go, counter, send_nothing),
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
        cpu0 = [cpu_seconds(pid) for pid in pids]
        sent0 = sum(c.value for c in counters)
        time.sleep(args.duration)
        cpu1 = [cpu_seconds(pid) for pid in pids]
        sent = sum(c.value for c in counters) - sent0
    if sent <= 0 or None in cpu0 or None in cpu1:
        return None
    used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]  # type: ignore[operator]
    return FloorRow(
        shape,
        sent / args.duration,
        node_us=(used[1] + used[2]) / sent * 1e6,
        router_us=used[0] / sent * 1e6,
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
    pacing = _measure(args, "pacing", 0, rate, send_nothing=True)
    if paced is not None and pacing is not None:
        paced.node_us = max(0.0, paced.node_us - pacing.node_us)
        rows.append(paced)
    for k in BURSTS:
        row = _measure(args, f"burst {k}", k, 0.0)
        if row is not None:
            rows.append(row)
    return rows
