"""The router: our own XSUB -> XPUB forwarding loop, with stats and a health endpoint.

Nodes' PUB sockets connect to the XSUB side, their SUB sockets to the XPUB side. The XSUB side
subscribes to everything, so each node publishes each message to the router once; the XPUB side
forwards a topic only to the nodes subscribed to it. Subscriptions are *not* forwarded upstream
(DESIGN.md: that would let a publisher filter out a new subscriber's first messages).

Nodes hand the router *batches* (one frame per node per event-loop pass, see
:mod:`roomcast.cluster.wire`); the loop splits each into its messages and sends them, in order,
through the XPUB socket one frame each. A message's topic is read from its first bytes (fixed
length per topic kind); nothing else of it is looked at.

The router holds no state a node cannot rebuild: when it restarts, nodes reconnect and ZeroMQ
resends their subscriptions. It looks at nothing but the topic frame. Because roomcast's topics
are fixed-length per kind, subscriptions match topics exactly, which lets the router count, per
message, how many subscribers it went to (and how many messages had none).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import zmq
from aiohttp import web

from roomcast.cluster import wire

log = logging.getLogger("roomcast.router")

_DRAIN = 4096
_EVENTS = int(zmq.EVENTS)  # plain ints: pyzmq's enums cost a lookup per call
_POLLIN = int(zmq.POLLIN)


@dataclass
class RouterStats:
    """Counters of the forwarding loop (written by its thread, read by the HTTP handlers)."""

    batches_in: int = 0  #: batch frames received (a node's messages of one loop pass)
    messages_in: int = 0
    messages_out: int = 0  #: deliveries: a message to 3 subscribers counts 3
    bytes_in: int = 0
    unrouted: int = 0  #: messages no subscriber wanted (dropped here by design)
    malformed: int = 0  #: frames that are not batches, and messages without a topic: dropped
    subscribe_events: int = 0
    unsubscribe_events: int = 0


class Router:
    """A running router: ``async with Router(...) as router: await router.serve_forever()``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        xsub_port: int = 5555,
        xpub_port: int = 5556,
        http_port: int = 5557,
        *,
        hwm: int = 100_000,
        router_id: str = "router",
        advertise_host: str = "",
    ) -> None:
        self.host = host
        self.advertise_host = advertise_host or host
        self.router_id = router_id
        self.xsub_port = xsub_port
        self.xpub_port = xpub_port
        self.http_port = http_port
        self.hwm = hwm
        self.stats = RouterStats()
        self.started = time.time()
        self._subscribers: dict[bytes, int] = {}
        self._lock = threading.Lock()  # guards _subscribers' changes against stats readers
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._thread: threading.Thread | None = None
        self._stop_endpoint = f"inproc://router-stop-{id(self)}"
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def xsub_endpoint(self) -> str:
        """Where nodes publish."""
        return f"tcp://{self.advertise_host}:{self.xsub_port}"

    @property
    def xpub_endpoint(self) -> str:
        """Where nodes subscribe."""
        return f"tcp://{self.advertise_host}:{self.xpub_port}"

    @property
    def http_url(self) -> str:
        """The stats and health endpoint."""
        return f"http://{self.advertise_host}:{self.http_port}"

    async def __aenter__(self) -> Router:
        self._stopped = asyncio.Event()
        self._ctx = zmq.Context()
        xsub = self._ctx.socket(zmq.XSUB)
        xpub = self._ctx.socket(zmq.XPUB)
        for sock in (xsub, xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.RCVHWM, self.hwm)
        xpub.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, for exact counts
        try:
            self.xsub_port = _bind(xsub, self.host, self.xsub_port)
            self.xpub_port = _bind(xpub, self.host, self.xpub_port)
        except zmq.ZMQError:
            xsub.close(0)
            xpub.close(0)
            self._ctx.term()
            raise
        xsub.send(b"\x01")  # subscribe to everything, from every publisher
        stop = self._ctx.socket(zmq.PAIR)
        stop.bind(self._stop_endpoint)
        self._stop_sender = stop
        self._thread = threading.Thread(
            target=self._forward, args=(xsub, xpub), name="roomcast-router", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._ready.wait, 5.0)
            app = web.Application()
            app.router.add_get("/health", self._health)
            app.router.add_get("/stats", self._stats)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.http_port, reuse_address=True)
            await site.start()
        except BaseException:
            # A busy HTTP port (or anything else): the forwarding thread, its sockets and the
            # ZeroMQ context go too, as they would at a normal exit.
            await self.__aexit__(None, None, None)
            raise
        address = self._runner.addresses[0] if self._runner.addresses else None
        if isinstance(address, tuple):
            self.http_port = int(address[1])
        log.info(
            "router %s: publish to %s, subscribe at %s, stats at %s",
            self.router_id,
            self.xsub_endpoint,
            self.xpub_endpoint,
            self.http_url,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._stop_sender.send(b"stop")
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)
            self._thread = None
            self._stop_sender.close(0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._stopped is not None:
            self._stopped.set()

    @property
    def healthy(self) -> bool:
        """Whether the forwarding loop is running."""
        return self._thread is not None and self._thread.is_alive() and self._error is None

    async def serve_forever(self) -> None:
        """Run until :meth:`stop` or cancellation."""
        assert self._stopped is not None, "use 'async with Router(...)' first"
        await self._stopped.wait()

    def stop(self) -> None:
        """Make :meth:`serve_forever` return."""
        if self._stopped is not None:
            self._stopped.set()

    # -- the forwarding loop (its own thread; zmq sockets never cross threads) ----------------

    def _forward(self, xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes]) -> None:
        assert self._ctx is not None
        stop = self._ctx.socket(zmq.PAIR)
        stop.connect(self._stop_endpoint)
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        self._ready.set()
        try:
            while True:
                ready = dict(poller.poll())
                if stop in ready:
                    return
                # Subscriptions first, always: a probe in the batch below must find the
                # subscription it follows here if ZeroMQ already holds it.
                self._take_subscriptions(xpub)
                if xsub in ready:
                    self._forward_batches(xsub, xpub)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM:
                self._error = exc
                log.exception("router loop failed")
        finally:
            stop.close(0)
            xsub.close(0)
            xpub.close(0)

    def _take_subscriptions(self, xpub: zmq.Socket[bytes]) -> None:
        """Count the (un)subscriptions that reached the XPUB side (for stats and to skip
        sending what nobody wants; ZeroMQ itself does the filtering)."""
        stats = self.stats
        subscribers = self._subscribers
        for _ in range(_DRAIN):
            # Asking first is cheaper than the exception of an empty recv (usually none waits).
            if not cast(int, xpub.get(_EVENTS)) & _POLLIN:
                return
            event = xpub.recv(zmq.NOBLOCK)
            if not event:
                continue
            topic = bytes(event[1:])
            with self._lock:
                if event[0] == 1:
                    stats.subscribe_events += 1
                    subscribers[topic] = subscribers.get(topic, 0) + 1
                elif event[0] == 0:
                    stats.unsubscribe_events += 1
                    left = subscribers.get(topic, 0) - 1
                    if left > 0:
                        subscribers[topic] = left
                    else:
                        subscribers.pop(topic, None)

    def _forward_batches(self, xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes]) -> None:
        """Split the batches waiting at the XSUB side and send their messages on, in order."""
        stats = self.stats
        subscribers = self._subscribers
        send = xpub.send
        for _ in range(_DRAIN):
            # Asking is cheaper than the exception of an empty recv.
            if not cast(int, xsub.get(_EVENTS)) & _POLLIN:
                return
            frame = xsub.recv(zmq.NOBLOCK)
            stats.batches_in += 1
            try:
                for message in wire.split_batch(frame):
                    try:
                        topic, _ = wire.split_message(message)
                    except wire.WireError:
                        stats.malformed += 1  # no topic, or nothing after it
                        continue
                    stats.messages_in += 1
                    stats.bytes_in += len(message)
                    count = subscribers.get(topic, 0)
                    if count == 0:
                        stats.unrouted += 1
                    else:
                        stats.messages_out += count
                        send(message, zmq.NOBLOCK)  # XPUB drops at its high-water mark
            except wire.WireError:
                # Not a batch (each frame of a multi-frame message counts once), or broken
                # framing: what came before the break went on, the rest is dropped.
                stats.malformed += 1

    # -- HTTP ---------------------------------------------------------------------------------

    def stats_dict(self) -> dict[str, Any]:
        """The counters, the topics with subscribers, and liveness."""
        s = self.stats
        with self._lock:
            topics = len(self._subscribers)
            subscriptions = sum(self._subscribers.values())
        return {
            "router": self.router_id,
            "status": "ok" if self._thread is not None and self._error is None else "failed",
            "xsub": self.xsub_endpoint,
            "xpub": self.xpub_endpoint,
            "uptime": round(time.time() - self.started, 3),
            "batches_in": s.batches_in,
            "messages_in": s.messages_in,
            "messages_out": s.messages_out,
            "bytes_in": s.bytes_in,
            "unrouted": s.unrouted,
            "malformed": s.malformed,
            "topics": topics,
            "subscriptions": subscriptions,
            "subscribe_events": s.subscribe_events,
            "unsubscribe_events": s.unsubscribe_events,
        }

    async def _health(self, request: web.Request) -> web.Response:
        ok = self.healthy
        return web.json_response(
            {"status": "ok" if ok else "failed", "router": self.router_id},
            status=200 if ok else 503,
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats_dict())


def _bind(sock: zmq.Socket[bytes], host: str, port: int) -> int:
    if port == 0:
        return sock.bind_to_random_port(f"tcp://{host}")
    sock.bind(f"tcp://{host}:{port}")
    return port
