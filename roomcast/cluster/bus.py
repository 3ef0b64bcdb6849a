"""The pyzmq transport of the bus: a PUB per router, one SUB connected to every router.

The router's XSUB side subscribes to everything, so every envelope a node publishes reaches the
router once, and the router's XPUB side forwards each topic only to its subscribers. That makes
a subscription provable: :meth:`Bus.subscribe` subscribes, then publishes a PROBE on the same
topic and returns only when the probe comes back through the router (DESIGN.md, "Router
mechanics that make joins exact"); from then on every message the router receives on that
topic is delivered here.

**Several routers.** The one SUB socket is connected to every router, so each subscription is
held by all of them; each envelope is published through exactly *one* router, the topic's
owner by rendezvous hashing over the *usable* routers (see :meth:`Bus.set_usable`). So topics,
and the load, are spread over the routers, no message travels twice (no duplicate delivery),
and a router's loss costs only what was queued in it: its topics move to the others as soon
as the publisher stops using it, and subscribers need not move at all. Receivers still drop an
envelope whose (origin, topic) sequence number they have already passed, in case one arrives
by two routers while a topic changes owner.

**Links and failover.** Each router is reached through two ZeroMQ connections, this
endpoint's PUB to its XSUB side and the SUB to its XPUB side. Both carry ZMTP heartbeats
(``heartbeat_ms``, ``link_timeout_ms``), so a router that dies or a link that stalls silently is
noticed within ``link_timeout_ms``, and a socket monitor reports every connection made and lost
at once. A PUB socket is ``ZMQ_IMMEDIATE``: nothing is queued for a router that is not
connected, and what was queued when a connection is lost is dropped with it (never replayed
into a router that comes back at the same address; receivers count the loss as a gap). A
router is *live* while both links are up and this endpoint's probes come back through it
(:meth:`check_routers`); its topics move to the other routers the moment a link goes down.
When it comes back, it is live again only once a probe on a topic subscribed after the new
connection came back through it (so the router holds every subscription ZeroMQ resent), and a
topic moves back to it only after that topic was idle for ``move_idle_ms`` (nothing of it can
be in flight through its current router any more). ``on_links`` is told of every change.

**Batches.** What a node publishes during one event-loop pass is queued per router and handed
to that router as one batch frame at the end of the pass (:mod:`roomcast.cluster.outbound`); the
router splits it and forwards each message by topic. A pass of 50 publishes then wakes each
ZeroMQ I/O thread on the way once instead of 50 times, which is most of what a message costs
at moderate rates. Order is kept: a router forwards a batch's messages in order, and batches
from one node in the order they were sent.

**CURVE.** With :class:`~roomcast.cluster.curve.ClientKeys`, every connection to a router is a
CURVE client expecting that router's public key (set before each ``connect``: one SUB socket
reaches routers with different keys). A router that refuses this endpoint's key, or does not
speak CURVE, makes the handshake fail: that is logged once per link and side with what it
means, counted (``handshakes_failed``), shown by :meth:`Bus.link_problems`, and the connection
is dialled again with a growing wait (ZeroMQ gives up on such a connection for good), so a key
the router allows later is let in without a restart. Without keys, a router that is not on
this machine is not connected at all unless ``allow_open_bus`` says so (the open-bus rule,
:func:`roomcast.config.refuse_open_bus`).

Reads are batched too: the SUB socket's file descriptor is watched by the event loop itself
(no ``zmq.asyncio`` future per read) and every queued message is handled in one pass.
Undecodable messages are counted and dropped; per (origin, topic) sequence numbers count what
was lost on the way, and a message older than one already delivered from the same origin and
topic (it took a slower router while the topic changed owner) is dropped and counted, never
delivered out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any

import zmq

from roomcast.cluster import wire
from roomcast.cluster.curve import ClientKeys, make_client
from roomcast.cluster.inbound import BusStats, Handler, Inbound
from roomcast.cluster.links import (
    HANDSHAKE_FAILED,
    NOT_RETRIED,
    EventHandler,
    RouterLink,
    TopicOwners,
    handshake_problem,
    set_heartbeats,
    unwatch,
    watch,
)
from roomcast.cluster.ordering import SequenceTracker
from roomcast.cluster.outbound import Outbound
from roomcast.cluster.wire import Topic
from roomcast.config import is_loopback
from roomcast.ids import TAG_BYTES

log = logging.getLogger("roomcast.cluster")

_REDIAL_FIRST = 0.1  #: seconds before dialling a router again after a refused handshake...
_REDIAL_MAX = 2.0  #: ... doubling up to this


class Bus:
    """A node's (or an emitter's) connection to the routers.

    ``on_message(topic, header, body)`` is called for every decoded envelope that is not this
    endpoint's own (its own probes are consumed here).
    """

    def __init__(
        self,
        origin: str,
        incarnation: int,
        routers: list[tuple[str, str, str]],
        on_message: Handler,
        *,
        hwm: int = 100_000,
        probe_retry: float = 0.005,
        linger_ms: int = 0,
        heartbeat_ms: int = 0,
        link_timeout_ms: int = 0,
        move_idle_ms: int = 250,
        on_links: Callable[[], None] | None = None,
        seq_topics: int = 65_536,
        owner_topics: int = 65_536,
        origins_per_topic: int = 1_024,
        curve: ClientKeys | None = None,
        allow_open_bus: bool = False,
    ) -> None:
        self.origin = origin
        self.incarnation = incarnation
        encoder = wire.Encoder(origin, incarnation)
        self.stats = BusStats()
        self._hwm = hwm
        # How long closing may wait to hand queued envelopes to the router: 0 drops them; an
        # emitter (or a node's LEAVE) wants a short bound instead, so its last words go out.
        self._linger_ms = linger_ms
        self._probe_retry = probe_retry
        self._heartbeat_ms = heartbeat_ms
        self._link_timeout_ms = link_timeout_ms
        self.on_links = on_links
        #: This endpoint's CURVE keys and its routers' (None: an open bus).
        self.curve = curve
        self._allow_open_bus = allow_open_bus
        self._not_connected: set[str] = set()  # routers refused by the open-bus rule (logged)
        self._wanted = list(routers)  # (id, xsub endpoint, xpub endpoint)
        self._links: dict[str, RouterLink] = {}
        self._usable: list[str] = []  # what set_usable named (routers every node hears)
        self._owners = TopicOwners(move_idle_ms / 1000, owner_topics)
        self._sub_monitor: zmq.Socket[bytes] | None = None
        self._subscribe_ops = 0  # subscriptions made (a router's proof must cover them)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sub: zmq.Socket[bytes] | None = None
        self._sub_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._order = SequenceTracker(origins_per_topic)
        self._subscribed: dict[bytes, int] = {}
        self._nonces = itertools.count(1)
        self._probes: dict[int, asyncio.Future[None]] = {}
        self._live: dict[bytes, asyncio.Future[None]] = {}  # first probes still under way
        self._inbound = Inbound(
            origin,
            incarnation,
            encoder.sender,
            on_message,
            self.stats,
            self._probes,
            self._order,
        )
        self._kick = self._inbound.kick
        # Memory bounds: topics numbered at once, topics whose owner is remembered (above),
        # and senders per topic whose order is tracked (each table drops its oldest past these).
        self._outbound = Outbound(encoder, self._links, self._owners, self.stats, seq_topics)
        #: See :meth:`Outbound.publish` (bound here: it is called for every message).
        self.publish = self._outbound.publish
        #: See :meth:`Outbound.flush`.
        self.flush = self._outbound.flush
        #: See :meth:`Outbound.owner`.
        self.owner = self._outbound.owner

    @property
    def on_message(self) -> Handler:
        """What is called for every decoded envelope that is not this endpoint's own."""
        return self._inbound.on_message

    @on_message.setter
    def on_message(self, handler: Handler) -> None:
        self._inbound.on_message = handler

    async def __aenter__(self) -> Bus:
        self._loop = loop = asyncio.get_running_loop()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._ctx = ctx
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self._hwm)
        set_heartbeats(sub, self._heartbeat_ms, self._link_timeout_ms)
        if self.curve is not None:
            sub.setsockopt(zmq.CURVE_PUBLICKEY, self.curve.own.public)
            sub.setsockopt(zmq.CURVE_SECRETKEY, self.curve.own.secret)
        self._sub = sub
        self._sub_monitor = watch(loop, sub, self._on_sub_events)
        self._sub_fd = self._inbound.start(loop, sub)
        self._outbound.start(loop)
        self.set_routers(self._wanted)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._outbound.stop()  # last words (a LEAVE) go out with the linger links close with
        self._inbound.stop(self._sub_fd)
        self._sub_fd = None
        for future in self._probes.values():
            future.cancel()
        first_probes = list(self._live.values())
        for task in first_probes:
            task.cancel()
        # Awaited, so none is left pending (or logs "Task was destroyed") once we return.
        await asyncio.gather(*first_probes, return_exceptions=True)
        if self._sub is not None:
            unwatch(self._loop, self._sub, self._sub_monitor)
            self._sub.close(linger=0)
        for link in self._links.values():
            unwatch(self._loop, link.pub, link.monitor)
            link.close(self._linger_ms)
        self._links.clear()
        if self._ctx is not None:
            self._ctx.term()
        self._sub = self._ctx = None
        self._sub_monitor = None

    # -- links --------------------------------------------------------------------------------

    def _on_pub_events(self, rid: str) -> EventHandler:
        def handler(endpoint: str, event: int, value: int) -> None:
            link = self._links.get(rid)
            if link is not None:
                self._link_event(link, "pub", event, value)

        return handler

    def _on_sub_events(self, endpoint: str, event: int, value: int) -> None:
        for link in self._links.values():
            if link.xpub == endpoint:
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    # Make the SUB socket take the new connection in now (commands are
                    # processed by this call), so a subscription made from here on travels
                    # behind the ones ZeroMQ resends on it.
                    assert self._sub is not None
                    self._sub.getsockopt(zmq.EVENTS)
                    self._kick()
                self._link_event(link, "sub", event, value)
                return

    def _link_event(self, link: RouterLink, side: str, event: int, value: int) -> None:
        if event in HANDSHAKE_FAILED:
            self._handshake_failed(link, side, event, value)
            return
        up = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
        if up:
            link.backoff.pop(side, None)
            if link.problems.pop(side, None) is not None:
                log.warning("router %s: %s link: let in after all", link.id, side)
        if not link.mark(side, up):
            return
        if not up:
            self.stats.link_lost += 1
            log.warning("router %s: %s link lost", link.id, side)
        else:
            log.info("router %s: %s link up", link.id, side)
        self._update_owners()
        if self.on_links is not None:
            self.on_links()

    def _handshake_failed(self, link: RouterLink, side: str, event: int, value: int) -> None:
        """A router refused this endpoint (or they did not agree): say so once, count it, and
        dial again later if ZeroMQ will not (a node keeps trying; its self-check tells)."""
        self.stats.handshakes_failed += 1
        problem = handshake_problem(event, value, self.curve is not None)
        first = side not in link.problems  # logged once until a handshake succeeds
        link.problems[side] = problem
        if first:
            log.error("router %s: %s link: %s; retrying", link.id, side, problem)
            if self.on_links is not None:
                self.on_links()
        if event in NOT_RETRIED and side not in link.redials and self._loop is not None:
            delay = link.backoff.get(side, _REDIAL_FIRST)
            link.backoff[side] = min(delay * 2, _REDIAL_MAX)
            link.redials[side] = self._loop.call_later(delay, self._redial, link, side)

    def _redial(self, link: RouterLink, side: str) -> None:
        """Connect ``link``'s ``side`` again (ZeroMQ dropped it after a refused handshake)."""
        link.redials.pop(side, None)
        if self._links.get(link.id) is not link or self._sub is None:
            return  # removed (or closed) meanwhile
        if side == "pub":
            with contextlib.suppress(zmq.ZMQError):  # ZeroMQ may have forgotten it already
                link.pub.disconnect(link.xsub)
            link.pub.connect(link.xsub)
        else:
            with contextlib.suppress(zmq.ZMQError):
                self._sub.disconnect(link.xpub)
            self._connect_sub(link)

    def _connect_sub(self, link: RouterLink) -> None:
        assert self._sub is not None
        if self.curve is not None:
            # ZeroMQ takes the server key at connect: each router may have its own.
            key = self.curve.router_key(link.id)
            assert key is not None
            self._sub.setsockopt(zmq.CURVE_SERVERKEY, key)
        self._sub.connect(link.xpub)

    def link_problems(self) -> dict[str, str]:
        """Routers whose last handshake failed, and why (empty when every one succeeded)."""
        return {
            rid: "; ".join(f"{side} link: {text}" for side, text in sorted(link.problems.items()))
            for rid, link in sorted(self._links.items())
            if link.problems
        }

    def _may_connect(self, rid: str, xsub: str, xpub: str) -> bool:
        """The open-bus rule, and a key for every router with CURVE (logged once a router)."""
        if self.curve is not None:
            if self.curve.router_key(rid) is not None:
                return True
            why = "no public key is known for it (bus.router_public_key_file)"
        elif self._allow_open_bus or (is_loopback(xsub) and is_loopback(xpub)):
            return True
        else:
            why = (
                "it is not on this machine and the bus is open (bus.curve = false; "
                "bus.allow_open_bus = true would allow it)"
            )
        if rid not in self._not_connected:
            self._not_connected.add(rid)
            log.error("router %s (%s) not connected: %s", rid, xsub, why)
        return False

    # -- routers ------------------------------------------------------------------------------

    def set_routers(self, routers: list[tuple[str, str, str]]) -> None:
        """Connect to exactly these routers ``(id, xsub, xpub)``; new ones start unused until
        :meth:`set_usable` names them (or until no usable one is left)."""
        self._wanted = list(routers)
        if self._ctx is None or self._sub is None:
            return
        wanted = {r[0]: r for r in routers}
        for rid in list(self._links):
            if rid not in wanted:
                link = self._links.pop(rid)
                with contextlib.suppress(zmq.ZMQError):  # never connected: nothing to undo
                    self._sub.disconnect(link.xpub)
                self.stats.send_dropped += len(link.queue)
                unwatch(self._loop, link.pub, link.monitor)
                link.close(0)
                log.info("router %s removed", rid)
        for rid, (_, xsub, xpub) in wanted.items():
            if rid in self._links or not self._may_connect(rid, xsub, xpub):
                continue
            pub = self._ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            pub.setsockopt(zmq.SNDHWM, self._hwm)
            # Queue nothing for a router we are not connected to, and drop what was queued
            # with a connection that is lost: never replay it into a router that comes back.
            pub.setsockopt(zmq.IMMEDIATE, 1)
            set_heartbeats(pub, self._heartbeat_ms, self._link_timeout_ms)
            if self.curve is not None:
                key = self.curve.router_key(rid)
                assert key is not None  # checked by _may_connect
                make_client(pub, self.curve.own, key)
            link = self._links[rid] = RouterLink(rid, xsub, xpub, pub)
            assert self._loop is not None
            link.monitor = watch(self._loop, pub, self._on_pub_events(rid))
            pub.connect(xsub)
            self._connect_sub(link)
        self._usable = [r for r in self._usable if r in self._links]
        self._update_owners()
        self._kick()

    def set_usable(self, ids: list[str]) -> None:
        """Choose topic owners among these routers only (the ones every node hears)."""
        usable = sorted(i for i in ids if i in self._links)
        if usable != self._usable:
            self._usable = usable
            self._update_owners()

    def _update_owners(self) -> None:
        self._owners.update(self._links, self._usable)

    @property
    def router_ids(self) -> list[str]:
        """Every router this bus is connected to."""
        return sorted(self._links)

    # -- subscriptions ------------------------------------------------------------------------

    async def subscribe(self, topic: Topic, timeout: float) -> None:
        """Add one interest in ``topic``; returns once the router delivers it here.

        Interests are counted: the first subscribes and probes, later ones wait for that probe
        (or return at once when it already came back), the last :meth:`unsubscribe` ends it.
        """
        await self.proved(topic, self.hold(topic, timeout))

    def hold(self, topic: Topic, timeout: float) -> asyncio.Future[None] | None:
        """Add one interest in ``topic`` now (an :meth:`unsubscribe` right after it undoes it);
        returns what proves it live (None: nothing to wait for), for :meth:`proved`."""
        count = self._subscribed.get(topic, 0)
        self._subscribed[topic] = count + 1
        if count == 0:
            assert self._sub is not None
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)
            self._subscribe_ops += 1
            self._kick()
            self._order.forget(topic)
            self.stats.subscriptions += 1
            if not self._links:
                return None  # no router known yet: ZeroMQ sends it when one connects
            self._live[topic] = asyncio.ensure_future(self._prove(topic, timeout))
        return self._live.get(topic)

    async def proved(self, topic: Topic, task: asyncio.Future[None] | None) -> None:
        """Wait for the proof :meth:`hold` returned (TimeoutError as :meth:`subscribe`); a
        proof given up (the topic's last interest went meanwhile) ends the wait too."""
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise  # the waiter itself is cancelled
        finally:
            if task.done() and self._live.get(topic) is task:
                del self._live[topic]

    def unsubscribe(self, topic: Topic) -> None:
        """Drop one interest in ``topic``; the subscription goes when the last one does (and
        its proof, if it is still probing: nobody waits for it any more)."""
        count = self._subscribed.get(topic, 0)
        if count <= 1:
            self._subscribed.pop(topic, None)
            proof = self._live.pop(topic, None)
            if proof is not None and not proof.done():
                proof.cancel()
            if count == 1 and self._sub is not None:
                self._sub.setsockopt(zmq.UNSUBSCRIBE, topic)
                self._kick()
                self._order.forget(topic)
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
        self._kick()

    async def probe(
        self,
        topic: Topic,
        timeout: float,
        via: str | None = None,
        abandon_dead: bool = False,
        needs_live: bool = True,
    ) -> None:
        """Publish probes on ``topic`` (through its owner, or ``via``) until one comes back;
        TimeoutError after ``timeout``, or as soon as ``via`` is not live (not connected,
        with ``needs_live=False``) when ``abandon_dead``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        retry = self._probe_retry
        # Any probe of this call coming back proves the subscription (each was sent after
        # it): a slow first probe must not be ignored because a retry went out meanwhile.
        future: asyncio.Future[None] = loop.create_future()
        nonces: list[int] = []
        try:
            while True:
                nonce = next(self._nonces)
                nonces.append(nonce)
                self._probes[nonce] = future
                self.publish(topic, wire.Probe(nonce), via)
                self.stats.probes_sent += 1
                wait = min(retry, max(deadline - loop.time(), 0.0))
                try:
                    await asyncio.wait_for(asyncio.shield(future), wait)
                    return
                except TimeoutError:
                    if abandon_dead and via is not None:
                        link = self._links.get(via)
                        if link is None or not (link.live if needs_live else link.connected):
                            # The router died (or went) meanwhile: nobody publishes through it.
                            raise TimeoutError(f"router {via} is gone") from None
                    if loop.time() >= deadline:
                        raise TimeoutError(f"probe on {topic!r} did not come back") from None
                    # The probe overtook the subscription (or was dropped, or is slow): send
                    # another, with a growing interval so an absent router costs little.
                    retry = min(retry * 2, 1.0)
        finally:
            for nonce in nonces:
                self._probes.pop(nonce, None)
            future.cancel()

    async def fence(self, topic: Topic, timeout: float) -> None:
        """Return once every message that a live router forwarded on ``topic`` (subscribed
        here) before now has reached this node: a probe through each router came back
        behind it. TimeoutError as :meth:`subscribe`'s proof."""
        await self._prove(topic, timeout)

    async def _prove(self, topic: Topic, timeout: float) -> None:
        """Prove a new subscription through every live router (any of them may become the
        topic's owner for some publisher), or through the owner when none is known live."""
        live = self.live_routers()
        if len(live) <= 1:
            await self.probe(topic, timeout, via=live[0] if live else None)
            return
        results = await asyncio.gather(
            *(self.probe(topic, timeout, via=rid, abandon_dead=True) for rid in live),
            return_exceptions=True,
        )
        now_live = set(self.live_routers())
        proven = [r for r, res in zip(live, results, strict=True) if res is None]
        # A router that died (or was removed) meanwhile does not fail the proof; one that the
        # latest check still calls live does.
        failed = [
            r for r, res in zip(live, results, strict=True) if res is not None and r in now_live
        ]
        if not proven or failed:
            raise TimeoutError(f"subscription to {topic!r} not proven through {failed or live}")

    async def check_routers(self, timeout: float) -> dict[str, bool]:
        """Probe every connected router at once; returns which delivered the probe back
        within ``timeout`` (the deaf-node self-check, and how a router becomes live).

        The probes go on a topic subscribed just now, after every connection that was up
        at the time, so a probe that comes back proves that the router holds every
        subscription ZeroMQ sent it on this connection before. A router that is not live
        yet becomes live only if no other subscription was made meanwhile (it might not be
        proven through that router); it is checked again at once.
        """
        sub = self._sub
        assert sub is not None and self._loop is not None
        topic = wire.probe_topic(secrets.token_bytes(TAG_BYTES))
        ops = self._subscribe_ops
        sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._kick()
        ids = self.connected_routers()

        async def one(rid: str) -> bool:
            try:
                await self.probe(topic, timeout, via=rid, abandon_dead=True, needs_live=False)
            except TimeoutError:
                return False
            return True

        try:
            results = dict(zip(ids, await asyncio.gather(*(one(r) for r in ids)), strict=True))
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sub.setsockopt(zmq.UNSUBSCRIBE, topic)
            self._kick()
        quiet = self._subscribe_ops == ops
        changed = False
        recheck = False
        for rid, link in self._links.items():
            ok = results.get(rid, False) and link.connected
            if ok and not link.proven and not quiet:
                ok, recheck = False, True
            if ok != link.proven:
                link.proven, changed = ok, True
                log.info("router %s is %s", rid, "live" if ok else "not live")
        if changed:
            self._update_owners()
            if self.on_links is not None:
                self.on_links()
        if recheck and self.on_links is not None:
            self._loop.call_soon(self.on_links)
        return results

    def live_routers(self) -> list[str]:
        """Routers both of whose links are up and whose last check delivered our probe."""
        return sorted(rid for rid, link in self._links.items() if link.live)

    def connected_routers(self) -> list[str]:
        """Routers both of whose links are up, proven or not."""
        return sorted(rid for rid, link in self._links.items() if link.connected)

    def stats_dict(self) -> dict[str, Any]:
        """The counters as JSON-able values."""
        s = self.stats
        return {
            "published": s.published,
            "batches": s.batches,
            "received": s.received,
            "bytes_out": s.bytes_out,
            "bytes_in": s.bytes_in,
            "undecodable": s.undecodable,
            "gaps": s.gaps,
            "gaps_by_topic": dict(s.gaps_by_topic),
            "probes_sent": s.probes_sent,
            "send_dropped": s.send_dropped,
            "no_router": s.no_router,
            "late": s.late,
            "link_lost": s.link_lost,
            "link_dropped": s.link_dropped,
            "connected_routers": self.connected_routers(),
            "routers_in_use": list(self._owners.ids),
            "routers": self.router_ids,
            "live_routers": self.live_routers(),
            "subscriptions": s.subscriptions,
            "errors": dict(s.errors_by_reason),
            "curve": self.curve is not None,
            "handshakes_failed": s.handshakes_failed,
            "link_problems": self.link_problems(),
        }
