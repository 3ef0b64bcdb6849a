"""What a bus endpoint sends: numbered envelopes, batched per router, through each topic's owner.

Every envelope but a probe carries a sequence number per topic (receivers count gaps and drop
late messages with it, :mod:`roomcast.cluster.ordering`). What is published during one
event-loop pass is queued per router and handed to it as one batch frame at the end of the
pass (:func:`wire.encode_batch`), or at once when the batch reaches ``_BATCH_BYTES``.
"""

from __future__ import annotations

import asyncio

import zmq

from roomcast.cluster import wire
from roomcast.cluster.inbound import BusStats
from roomcast.cluster.links import RouterLink, TopicOwners
from roomcast.cluster.wire import Topic

_BATCH_BYTES = 256 * 1024  # a batch this large is sent at once, not at the end of the pass


class Outbound:
    """Numbers, batches and sends a bus endpoint's envelopes (see the module's docstring).

    ``links`` and ``owners`` are the bus's own (shared, not copied): they change as routers
    come and go.
    """

    __slots__ = (
        "_encoder",
        "_flush_handle",
        "_links",
        "_loop",
        "_max_topics",
        "_owners",
        "_seqs",
        "stats",
    )

    def __init__(
        self,
        encoder: wire.Encoder,
        links: dict[str, RouterLink],
        owners: TopicOwners,
        stats: BusStats,
        max_topics: int,
    ) -> None:
        self._encoder = encoder
        self._links = links
        self._owners = owners
        self.stats = stats
        # Topics numbered at once: past this, the idlest topic's numbering is forgotten.
        self._max_topics = max_topics
        self._seqs: dict[bytes, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_handle: asyncio.Handle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Batches are flushed at the end of each pass of ``loop`` from now on."""
        self._loop = loop

    def stop(self) -> None:
        """Hand every router what is queued (last words), and schedule no more flushes."""
        self.flush()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def owner(self, topic: bytes) -> RouterLink | None:
        """The router that carries ``topic`` (see :meth:`TopicOwners.owner`)."""
        assert self._loop is not None
        return self._owners.owner(topic, self._links, self._loop.time())

    def publish(self, topic: Topic, body: wire.Body, via: str | None = None) -> None:
        """Send ``body`` on ``topic`` through its owner (or the router ``via``) at the end of
        this loop pass, in one batch with everything else published meanwhile; never blocks
        (ZeroMQ drops at the high-water mark, and receivers count the gap)."""
        link = self._links.get(via) if via is not None else self.owner(topic)
        if link is None:
            self.stats.no_router += 1
            return
        if type(body) is wire.Probe:
            # Probes are sent through each router in turn and some never come back: they are
            # not numbered (seq 0), so they can neither open a gap nor come late.
            message = topic + self._encoder.encode(0, body)
        else:
            seqs = self._seqs
            seq = seqs.get(topic, 0) + 1
            # Encoded before the number is taken: a body msgpack cannot carry (a TypeError for
            # the caller) must not open a gap.
            message = topic + self._encoder.encode(seq, body)
            seqs.pop(topic, None)
            seqs[topic] = seq  # most recently used last
            if len(seqs) > self._max_topics:
                # Forget the idlest topic: should it be used again, its numbering restarts at
                # 1, which receivers take as a fresh sequence (not a gap, not a late message).
                del seqs[next(iter(seqs))]
        link.queue.append(message)
        link.queued_bytes += len(message)
        self.stats.published += 1
        if link.queued_bytes >= _BATCH_BYTES:
            self._send(link)
        elif self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand every router its batch now (normally done at the end of each loop pass)."""
        self._flush_handle = None
        for link in self._links.values():
            if link.queue:
                self._send(link)

    def _send(self, link: RouterLink) -> None:
        queue, count = link.queue, len(link.queue)
        frame = wire.encode_batch(queue) if link.pub_up else b""
        queue.clear()
        link.queued_bytes = 0
        if not frame:
            # ZeroMQ would drop it (IMMEDIATE): say so. Only probes and last words (sent
            # through every router) and a bus with no connected router at all get here.
            self.stats.link_dropped += count
            return
        try:
            link.pub.send(frame, flags=zmq.NOBLOCK, copy=len(frame) < 65_536)
        except zmq.ZMQError:  # Again: at the high-water mark; else closed under us (shutdown)
            self.stats.send_dropped += count
            return
        self.stats.batches += 1
        self.stats.bytes_out += len(frame)
