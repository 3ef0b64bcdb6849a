"""The router: our own XSUB -> XPUB forwarding loop, with stats, metrics and a health endpoint.

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

With CURVE (``bus.curve``), both sockets are CURVE servers and :mod:`roomcast.router.guard`
lets in only the public keys of ``router.allowed_keys_dir``, counting every refused handshake;
:meth:`Router.reload_allowed_keys` (SIGHUP) reads the directory again. Without it, a router
bound beyond loopback refuses to start unless ``bus.allow_open_bus`` says otherwise.
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
from prometheus_client import CollectorRegistry

from roomcast import metrics
from roomcast.access import MetricsAccess
from roomcast.cluster import wire
from roomcast.cluster.curve import ServerKeys
from roomcast.config import MetricsSettings, refuse_open_bus
from roomcast.errors import ConfigError

from .guard import Guard
from .metrics import router_metrics

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
        curve: ServerKeys | None = None,
        allow_open_bus: bool = False,
        metrics_settings: MetricsSettings | None = None,
        admin_token: str = "",
    ) -> None:
        refuse_open_bus("router.host", host, curve=curve is not None, allow_open_bus=allow_open_bus)
        self.host = host
        self.advertise_host = advertise_host or host
        self.router_id = router_id
        self.xsub_port = xsub_port
        self.xpub_port = xpub_port
        self.http_port = http_port
        self.hwm = hwm
        #: CURVE keys: with them, only the allowed public keys get in (None: an open bus).
        self.curve = curve
        # Read now: a bad directory fails the start, not the first handshake.
        self._allowed = curve.load_allowed() if curve is not None else frozenset()
        self._guard: Guard | None = None
        self.key_reloads = 0  #: reloads of the allowed keys that took
        self.stats = RouterStats()
        self.started = time.time()
        self._subscribers: dict[bytes, int] = {}
        self._lock = threading.Lock()  # guards _subscribers' changes against stats readers
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._thread: threading.Thread | None = None
        self._control_endpoint = f"inproc://router-control-{id(self)}"
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        #: ``/metrics`` (None without it: ``metrics.enabled`` false, or no settings given);
        #: whoever runs the router may register more collectors (its discovery view).
        self.metrics_registry: CollectorRegistry | None = None
        self._metrics_route: tuple[str, MetricsAccess] | None = None
        if metrics_settings is not None and metrics_settings.enabled:
            self.metrics_registry = metrics.registry(
                metrics.FunctionCollector(lambda: router_metrics(self))
            )
            access = MetricsAccess(metrics_settings, admin_token)
            self._metrics_route = (metrics_settings.path, access)

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
        guard = None
        if self.curve is not None:
            guard = self._guard = Guard(self._ctx, self.curve, self._allowed)
        xsub = self._ctx.socket(zmq.XSUB)
        xpub = self._ctx.socket(zmq.XPUB)
        for sock in (xsub, xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.RCVHWM, self.hwm)
            if guard is not None:
                guard.secure(sock)
        xpub.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, for exact counts
        try:
            self.xsub_port = _bind(xsub, self.host, self.xsub_port)
            self.xpub_port = _bind(xpub, self.host, self.xpub_port)
        except zmq.ZMQError:
            xsub.close(0)
            xpub.close(0)
            if guard is not None:
                guard.close()
                self._guard = None
            self._ctx.term()
            raise
        if guard is not None:
            guard.bound(self.xsub_port)
            guard.bound(self.xpub_port)
        xsub.send(b"\x01")  # subscribe to everything, from every publisher
        control = self._ctx.socket(zmq.PAIR)
        control.bind(self._control_endpoint)
        self._control = control
        self._thread = threading.Thread(
            target=self._forward, args=(xsub, xpub), name="roomcast-router", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._ready.wait, 5.0)
            app = web.Application()
            app.router.add_get("/health", self._health)
            app.router.add_get("/stats", self._stats)
            if self.metrics_registry is not None and self._metrics_route is not None:
                path, access = self._metrics_route
                app.router.add_get(path, metrics.handler(self.metrics_registry, access))
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
        if self.curve is not None:
            log.info(
                "router %s: CURVE on, public key %s, %d allowed keys in %s",
                self.router_id,
                self.curve.own.public.decode(),
                len(self._allowed),
                self.curve.allowed_keys_dir,
            )
        else:
            log.info("router %s: the bus is open (no CURVE)", self.router_id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._control.send(b"stop")
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)
            self._thread = None
            self._control.close(0)
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
        control = self._ctx.socket(zmq.PAIR)
        control.connect(self._control_endpoint)
        guard = self._guard
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        for sock in guard.sockets() if guard is not None else ():
            poller.register(sock, zmq.POLLIN)
        self._ready.set()
        try:
            while True:
                ready = dict(poller.poll())
                if control in ready and not self._command(control.recv_multipart()):
                    return
                if guard is not None and len(ready) > (xsub in ready) + (xpub in ready):
                    guard.handle(ready)
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
            control.close(0)
            xsub.close(0)
            xpub.close(0)
            if guard is not None:
                guard.close()

    def _command(self, message: list[bytes]) -> bool:
        """Carry out a command of the event loop's thread; False: stop."""
        if message[0] == b"cut" and self._guard is not None:
            revoked = frozenset(message[1:])
            cut = self._guard.cut(revoked)
            log.warning(
                "router %s: %d connections cut (from where the %d revoked keys connected); "
                "their peers reconnect and are checked against the new keys",
                self.router_id,
                cut,
                len(revoked),
            )
            return True
        return message[0] != b"stop"

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

    # -- keys ---------------------------------------------------------------------------------

    def reload_allowed_keys(self) -> None:
        """Read ``router.allowed_keys_dir`` again (``roomcast router`` does on SIGHUP).

        Added keys get in from their next handshake. Connections from where a removed key
        came in are cut, so that key's peers are checked again, and refused (see
        :mod:`roomcast.router.guard`). A directory that cannot be read keeps the keys as
        they were.
        """
        if self.curve is None or self._guard is None:
            log.info("router %s: no keys to reload: the bus is open", self.router_id)
            return
        try:
            allowed = self.curve.load_allowed()
        except ConfigError as exc:
            log.error(
                "router %s: allowed keys not reloaded, kept as they were: %s", self.router_id, exc
            )
            return
        revoked = self._allowed - allowed
        log.info(
            "router %s: allowed keys reloaded: %d (%d added, %d removed)",
            self.router_id,
            len(allowed),
            len(allowed - self._allowed),
            len(revoked),
        )
        self._allowed = self._guard.allowed = allowed
        self.key_reloads += 1
        if revoked and self._thread is not None:
            self._control.send_multipart([b"cut", *sorted(revoked)])

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
            **self._curve_stats(),
        }

    def _curve_stats(self) -> dict[str, Any]:
        guard = self._guard
        refused = dict(guard.refused) if guard is not None else {}
        return {
            "curve": self.curve is not None,
            "curve_refused": sum(refused.values()),  #: handshakes refused, any reason
            "curve_refused_by_reason": refused,
            "curve_accepted": guard.accepted if guard is not None else 0,
            "curve_cut": guard.cut_connections if guard is not None else 0,
            "allowed_keys": len(self._allowed),
            "key_reloads": self.key_reloads,
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
