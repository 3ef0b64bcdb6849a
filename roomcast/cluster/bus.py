"""The pyzmq transport of the bus: one PUB to the router's XSUB, one SUB from its XPUB.

The router's XSUB side subscribes to everything, so every envelope a node publishes reaches the
router once, and the router's XPUB side forwards each topic only to its subscribers. That makes
a subscription provable: :meth:`Bus.subscribe` subscribes, then publishes a PROBE on the same
topic and returns only when the probe comes back through the router (DESIGN.md, "Router
mechanics that make joins exact"); from then on every message the router receives on that
topic is delivered here.

Reads are batched (one await, then everything already queued); undecodable envelopes are counted
and dropped; per (origin, topic) sequence numbers count what ZeroMQ dropped on the way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import zmq
import zmq.asyncio

from roomcast.cluster import wire
from roomcast.cluster.wire import Topic

log = logging.getLogger("roomcast.cluster")

Handler = Callable[[Topic, wire.Header, wire.Body], None]

_READ_BATCH = 2048


@dataclass
class BusStats:
    """Counters of one bus endpoint."""

    published: int = 0
    received: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    undecodable: int = 0
    gaps: int = 0  #: messages known lost (sequence jumps)
    probes_sent: int = 0
    send_dropped: int = 0  #: not sent: the outgoing queue was at its high-water mark
    subscriptions: int = 0
    last_received: float = 0.0
    errors_by_reason: dict[str, int] = field(default_factory=dict)


class Bus:
    """A node's (or an emitter's) connection to the routers.

    ``on_message(topic, header, body)`` is called for every decoded envelope that is not this
    endpoint's own (its own probes are consumed here).
    """

    def __init__(
        self,
        origin: str,
        incarnation: int,
        routers: list[tuple[str, str]],
        on_message: Handler,
        *,
        hwm: int = 100_000,
        probe_retry: float = 0.05,
        linger_ms: int = 0,
    ) -> None:
        self.origin = origin
        self.incarnation = incarnation
        self.routers = routers  # (xsub endpoint to publish to, xpub endpoint to read from)
        self.on_message = on_message
        self.stats = BusStats()
        self._hwm = hwm
        # How long closing may wait to hand queued envelopes to the router: 0 drops them; an
        # emitter (or a node's LEAVE) wants a short bound instead, so its last words go out.
        self._linger_ms = linger_ms
        self._probe_retry = probe_retry
        self._ctx: zmq.asyncio.Context | None = None
        self._pub: zmq.Socket[bytes] | None = None
        self._pub_owner: zmq.asyncio.Socket | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._sub_sync: zmq.Socket[bytes] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._seqs: dict[bytes, int] = {}
        self._last_seen: dict[bytes, dict[tuple[str, int], int]] = {}
        self._subscribed: dict[bytes, int] = {}
        self._nonces = itertools.count(1)
        self._probes: dict[int, asyncio.Future[None]] = {}
        self._live: dict[bytes, asyncio.Future[None]] = {}  # first probes still under way

    async def __aenter__(self) -> Bus:
        ctx = self._ctx = zmq.asyncio.Context()
        self._pub_owner = ctx.socket(zmq.PUB)  # keeps the socket alive; sends go through
        pub: zmq.Socket[bytes] = zmq.Socket.shadow(
            self._pub_owner.underlying
        )  # a plain (non-asyncio) shadow
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self._hwm)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self._hwm)
        for xsub, xpub in self.routers:
            pub.connect(xsub)
            sub.connect(xpub)
        self._pub = pub
        self._sub = sub
        self._sub_sync = zmq.Socket.shadow(sub.underlying)
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        for future in self._probes.values():
            future.cancel()
        for task in self._live.values():
            task.cancel()
        if self._sub is not None:
            self._sub.close(linger=0)
        if self._pub_owner is not None:
            self._pub_owner.close(linger=self._linger_ms)
        if self._ctx is not None:
            self._ctx.term()
        self._sub = self._pub = self._pub_owner = self._ctx = None

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, topic: Topic, body: wire.Body) -> None:
        """Send ``body`` on ``topic``; never blocks (ZeroMQ drops at the high-water mark, and
        receivers count the gap)."""
        pub = self._pub
        if pub is None:
            return
        seq = self._seqs.get(topic, 0) + 1
        self._seqs[topic] = seq
        data = wire.encode(self.origin, self.incarnation, seq, body)
        try:
            pub.send_multipart([topic, data], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.stats.send_dropped += 1
            return
        self.stats.published += 1
        self.stats.bytes_out += len(data) + len(topic)

    # -- subscriptions ------------------------------------------------------------------------

    async def subscribe(self, topic: Topic, timeout: float) -> None:
        """Add one interest in ``topic``; returns once the router delivers it here.

        Interests are counted: the first subscribes and probes, later ones wait for that probe
        (or return at once when it already came back), the last :meth:`unsubscribe` ends it.
        """
        count = self._subscribed.get(topic, 0)
        self._subscribed[topic] = count + 1
        if count == 0:
            assert self._sub is not None
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)
            self._last_seen.pop(topic, None)
            self.stats.subscriptions += 1
            self._live[topic] = asyncio.ensure_future(self.probe(topic, timeout))
        task = self._live.get(topic)
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._live.get(topic) is task:
                del self._live[topic]

    def unsubscribe(self, topic: Topic) -> None:
        """Drop one interest in ``topic``; the subscription goes when the last one does."""
        count = self._subscribed.get(topic, 0)
        if count <= 1:
            self._subscribed.pop(topic, None)
            if count == 1 and self._sub is not None:
                self._sub.setsockopt(zmq.UNSUBSCRIBE, topic)
                self._last_seen.pop(topic, None)
                self.stats.subscriptions -= 1
        else:
            self._subscribed[topic] = count - 1

    def subscribed(self, topic: Topic) -> bool:
        """Whether ``topic`` is subscribed."""
        return topic in self._subscribed

    def resubscribe_all(self) -> None:
        """Send every subscription again (after a router was replaced, belt and braces:
        ZeroMQ already resends them on reconnect)."""
        if self._sub is None:
            return
        for topic in self._subscribed:
            self._sub.setsockopt(zmq.UNSUBSCRIBE, topic)
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)

    async def probe(self, topic: Topic, timeout: float) -> None:
        """Publish probes on ``topic`` until one comes back (TimeoutError after ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        retry = self._probe_retry
        while True:
            nonce = next(self._nonces)
            future: asyncio.Future[None] = loop.create_future()
            self._probes[nonce] = future
            self.publish(topic, wire.Probe(nonce))
            self.stats.probes_sent += 1
            wait = min(retry, max(deadline - loop.time(), 0.0))
            try:
                await asyncio.wait_for(future, wait)
                return
            except TimeoutError:
                if loop.time() >= deadline:
                    raise TimeoutError(f"probe on {topic!r} did not come back") from None
                # The probe overtook the subscription (or was dropped): send another, with
                # a growing interval so an absent router costs little.
                retry = min(retry * 1.5, 1.0)
            finally:
                self._probes.pop(nonce, None)

    # -- reading ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        sub = self._sub
        sync = self._sub_sync
        assert sub is not None and sync is not None
        loop = asyncio.get_running_loop()
        while True:
            frames = await sub.recv_multipart(copy=True)
            self._handle(frames)
            for _ in range(_READ_BATCH):
                try:
                    frames = sync.recv_multipart(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                self._handle(frames)
            self.stats.last_received = loop.time()

    def _handle(self, frames: list[bytes]) -> None:
        stats = self.stats
        stats.received += 1
        if len(frames) != 2:
            self._count_error("frame count")
            return
        topic, data = frames
        stats.bytes_in += len(topic) + len(data)
        try:
            header, body = wire.decode(data)
        except wire.WireError as exc:
            self._count_error(exc.reason)
            return
        if header.origin == self.origin and header.incarnation == self.incarnation:
            if isinstance(body, wire.Probe):
                future = self._probes.get(body.nonce)
                if future is not None and not future.done():
                    future.set_result(None)
            return
        seen = self._last_seen.get(topic)
        if seen is None:
            seen = self._last_seen[topic] = {}
        key = (header.origin, header.incarnation)
        last = seen.get(key)
        if last is not None and header.seq > last + 1:
            stats.gaps += header.seq - last - 1
        if last is None or header.seq > last:
            seen[key] = header.seq
        if isinstance(body, wire.Probe):
            return
        try:
            self.on_message(Topic(topic), header, body)
        except Exception:
            log.exception("bus handler failed on %s", header.kind.name)

    def _count_error(self, reason: str) -> None:
        self.stats.undecodable += 1
        errors = self.stats.errors_by_reason
        errors[reason] = errors.get(reason, 0) + 1

    def stats_dict(self) -> dict[str, Any]:
        """The counters as JSON-able values."""
        s = self.stats
        return {
            "published": s.published,
            "received": s.received,
            "bytes_out": s.bytes_out,
            "bytes_in": s.bytes_in,
            "undecodable": s.undecodable,
            "gaps": s.gaps,
            "probes_sent": s.probes_sent,
            "send_dropped": s.send_dropped,
            "subscriptions": s.subscriptions,
            "errors": dict(s.errors_by_reason),
        }
