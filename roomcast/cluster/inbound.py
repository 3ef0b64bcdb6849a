"""The receiving side of a bus endpoint: its SUB socket's messages, decoded and in order.

The SUB socket's file descriptor is watched by the event loop itself (no ``zmq.asyncio`` future
per read) and every queued message is handled in one pass. Our own envelopes coming back from
the router are dropped undecoded (by the sender key that opens them), probes resolve the waits
of :meth:`Bus.probe`, undecodable messages are counted and dropped, and the
:class:`~roomcast.cluster.ordering.SequenceTracker` drops what comes late and counts gaps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import zmq

from roomcast.cluster import wire
from roomcast.cluster.ordering import SequenceTracker, Verdict
from roomcast.cluster.wire import Topic

log = logging.getLogger("roomcast.cluster")

Handler = Callable[[Topic, wire.Header, wire.Body], None]
_SENDER_BYTES = wire.SENDER_BYTES  # module globals: read once per message on the hot path
_split = wire.split_message
_decode = wire.decode
_READ_BATCH = 4096  # messages handled per loop pass before yielding to other work
_ASK_FIRST = 4  # messages read per pass after checking ZMQ_EVENTS, before relying on EAGAIN
_EVENTS = int(zmq.EVENTS)  # plain ints: pyzmq's enums cost a lookup per call
_POLLIN = int(zmq.POLLIN)
_PROBE: int = wire.Kind.PROBE


@dataclass
class BusStats:
    """Counters of one bus endpoint."""

    published: int = 0
    batches: int = 0  #: batch frames handed to routers (several messages each)
    received: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    undecodable: int = 0
    gaps: int = 0  #: messages known lost (sequence jumps)
    gaps_by_topic: dict[str, int] = field(default_factory=dict)  #: by topic kind ("room", ...)
    probes_sent: int = 0
    send_dropped: int = 0  #: not sent: the outgoing queue was at its high-water mark
    no_router: int = 0  #: not sent: no router known at all
    late: int = 0  #: dropped: older than one already delivered from the same (origin, topic)
    link_lost: int = 0  #: connections to a router lost (either direction)
    link_dropped: int = 0  #: not sent: the topic's router had no connection
    handshakes_failed: int = 0  #: connections to a router whose handshake failed (CURVE)
    own: int = 0  #: our own envelopes back from the router, dropped undecoded
    subscriptions: int = 0
    last_received: float = 0.0
    errors_by_reason: dict[str, int] = field(default_factory=dict)


class Inbound:
    """Reads and dispatches what the SUB socket receives (see the module's docstring)."""

    def __init__(
        self,
        origin: str,
        incarnation: int,
        sender: bytes,
        on_message: Handler,
        stats: BusStats,
        probes: dict[int, asyncio.Future[None]],
        order: SequenceTracker,
    ) -> None:
        self.origin = origin
        self.incarnation = incarnation
        self._sender = sender
        self.on_message = on_message
        self.stats = stats
        self._probes = probes  # nonce -> the wait a probe of ours resolves
        self.order = order
        self.sub: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._read_handle: asyncio.Handle | None = None

    def start(self, loop: asyncio.AbstractEventLoop, sub: zmq.Socket[bytes]) -> int:
        """Read ``sub`` on ``loop`` from now on; returns the file descriptor watched."""
        self._loop = loop
        self.sub = sub
        # ZeroMQ's FD signals "something may have changed" (edge-triggered): every reader
        # pass drains until EAGAIN, and anything that touches the socket schedules one.
        fd = sub.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        loop.add_reader(fd, self.read)
        self.kick()
        return fd

    def stop(self, fd: int | None) -> None:
        """Stop reading."""
        if self._read_handle is not None:
            self._read_handle.cancel()
            self._read_handle = None
        if fd is not None and self._loop is not None:
            self._loop.remove_reader(fd)
        self.sub = None

    def kick(self) -> None:
        """Schedule a read pass: any call on the SUB socket may have consumed the edge of its
        file descriptor, so a message already queued would otherwise wait for the next one."""
        if self._read_handle is None and self._loop is not None and self.sub is not None:
            self._read_handle = self._loop.call_soon(self.read)

    def read(self) -> None:
        """Handle every message queued on the SUB socket (at most ``_READ_BATCH`` per pass)."""
        self._read_handle = None
        sub = self.sub
        if sub is None:
            return
        recv = sub.recv
        handle = self.handle
        n = 0
        try:
            # A bus message is one frame; the frames of a multi-frame message (never sent by
            # a router of ours) are taken one by one and fail to decode. The first few are
            # taken after asking whether one is there (cheap), the rest until ZeroMQ says
            # there are no more (an exception, dearer, but once per pass): a pass with one
            # message, the usual case at moderate rates, then raises nothing.
            while n < _ASK_FIRST:
                if not cast(int, sub.get(_EVENTS)) & _POLLIN:
                    break
                handle(recv(zmq.NOBLOCK))
                n += 1
            else:
                while n < _READ_BATCH:
                    handle(recv(zmq.NOBLOCK))
                    n += 1
                self.kick()  # more may be queued: go on in the next pass, after other work
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:  # closed under us (shutdown)
            log.debug("bus read stopped: %s", exc)
            return
        if n:
            self.stats.last_received = self._loop.time() if self._loop is not None else 0.0

    def handle(self, frame: bytes) -> None:
        stats = self.stats
        stats.received += 1
        stats.bytes_in += len(frame)
        try:
            topic, size = _split(frame)
            if len(frame) <= size + _SENDER_BYTES:
                raise wire.WireError("not an envelope")
            if frame.startswith(self._sender, size) and frame[size + _SENDER_BYTES] != _PROBE:
                stats.own += 1  # our own envelope back from the router: already delivered
                return
            header, body = _decode(frame, size)
        except wire.WireError as exc:
            self._count_error(exc.reason)
            return
        origin, incarnation, seq = header.origin, header.incarnation, header.seq
        if type(body) is wire.Probe:
            if origin == self.origin and incarnation == self.incarnation:
                future = self._probes.get(body.nonce)
                if future is not None and not future.done():
                    future.set_result(None)
            return  # another endpoint's probe: it is not part of its numbering (seq 0)
        if origin == self.origin and incarnation == self.incarnation:
            return
        verdict, missing = self.order.check(topic, origin, incarnation, seq)
        if verdict is Verdict.LATE:
            # Older than one already delivered: it took a slower path (a router that was
            # stalled, or the topic's previous owner). Delivering it now would break the order
            # of (origin, topic); its loss was counted as a gap when the newer one came.
            stats.late += 1
            return
        if missing:
            stats.gaps += missing
            kind = wire.TOPIC_KINDS[frame[0]][0]
            stats.gaps_by_topic[kind] = stats.gaps_by_topic.get(kind, 0) + missing
        try:
            self.on_message(topic, header, body)
        except Exception:
            log.exception("bus handler failed on %s", header.kind.name)

    def _count_error(self, reason: str) -> None:
        self.stats.undecodable += 1
        errors = self.stats.errors_by_reason
        errors[reason] = errors.get(reason, 0) + 1
