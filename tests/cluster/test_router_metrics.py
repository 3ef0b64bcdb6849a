"""A router's ``/metrics`` in one process: with a raw publisher and subscriber (nothing on the
bus but what the test sends), messages in, out, unrouted and malformed move by exactly that;
a CURVE router counts the handshakes it refused by reason; metrics off is 404; the access rule
is /admin's."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from support.cluster_harness import wait_until
from support.curve_keys import ROUTER, Keyring
from support.scrape import scrape, scrape_status
from support.timing import TIMEOUT

from roomcast.cluster import wire
from roomcast.cluster.bus import Bus
from roomcast.cluster.curve import ClientKeys
from roomcast.cluster.wire import Topic
from roomcast.config import MetricsSettings
from roomcast.protocol.frames import ws_text
from roomcast.router.router import Router


def room_message(text: str) -> wire.RoomMessage:
    return wire.RoomMessage(1, "/", ("r",), (), (), False, ws_text(f'42["chat","{text}"]'))


def fresh_topic() -> Topic:
    return wire.room_topic("/", f"room-{secrets.token_hex(6)}")


class Inbox:
    """Texts of the room messages a bus received."""

    def __init__(self) -> None:
        self.texts: list[bytes] = []
        self.arrived = asyncio.Event()

    def __call__(self, topic: Topic, header: wire.Header, body: wire.Body) -> None:
        if isinstance(body, wire.RoomMessage):
            self.texts.append(body.ws)
            self.arrived.set()

    async def wait_for(self, text: str) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not any(text.encode() in ws for ws in self.texts):
                self.arrived.clear()
                await self.arrived.wait()


async def start_bus(
    router: Router, name: str, inbox: Inbox, curve: ClientKeys | None = None
) -> Bus:
    endpoints = (f"tcp://127.0.0.1:{router.xsub_port}", f"tcp://127.0.0.1:{router.xpub_port}")
    bus = Bus(name, 1, [(ROUTER, *endpoints)], inbox, curve=curve)
    await bus.__aenter__()
    return bus


async def joined(pub: zmq.asyncio.Socket, sub: zmq.asyncio.Socket, topic: bytes) -> None:
    """Until the publisher's messages reach the subscriber through the router: a PUB drops
    what it sends before the router's subscription has reached it (ZeroMQ's slow joiner). A
    probe is sent until one arrives, then a last one, read up to, behind every earlier one."""
    for i in itertools.count():
        await pub.send(wire.encode_batch([topic + b"probe %d" % i]))
        if await sub.poll(100):
            break
    last = topic + b"probe last"
    await pub.send(wire.encode_batch([last]))
    while await asyncio.wait_for(sub.recv(), TIMEOUT) != last:
        pass


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    async with Router(
        "127.0.0.1", 0, 0, 0, router_id=ROUTER, metrics_settings=MetricsSettings()
    ) as r:
        yield r


async def test_router_counters_move_by_what_was_published(router: Router) -> None:
    """A raw publisher (no probes, no gossip: nothing but the test's frames) sends 2 batches: 4
    messages to a topic a raw subscriber holds, 1 to a topic nobody wants, 1 without a body.
    Messages in +5, sent +4, unrouted +1, malformed +1, bytes in by their sizes."""
    url = router.http_url + "/metrics"
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    pub = ctx.socket(zmq.PUB)
    try:
        topic = fresh_topic()
        sub.connect(f"tcp://127.0.0.1:{router.xpub_port}")
        sub.setsockopt(zmq.SUBSCRIBE, topic)
        await wait_until(lambda: router.stats_dict()["subscriptions"] == 1, what="subscribed")
        pub.connect(f"tcp://127.0.0.1:{router.xsub_port}")
        await joined(pub, sub, topic)
        before = await scrape(url)
        routed = [topic + f"message {i}".encode() for i in range(3)]
        unrouted = fresh_topic() + b"nobody wants this"
        await pub.send(wire.encode_batch([*routed, unrouted, topic]))  # topic alone: malformed
        await pub.send(wire.encode_batch([topic + b"barrier"]))
        received = [await asyncio.wait_for(sub.recv(), TIMEOUT) for _ in range(4)]
        assert received[-1] == topic + b"barrier"
        after = await scrape(url)
    finally:
        sub.close(0)
        pub.close(0)
        ctx.term()
    assert after.delta(before, "roomcast_router_batches_received_total") == 2
    assert after.delta(before, "roomcast_router_messages_received_total") == 5
    assert after.delta(before, "roomcast_router_messages_sent_total") == 4
    assert after.delta(before, "roomcast_router_unrouted_total") == 1
    assert after.delta(before, "roomcast_router_malformed_total") == 1
    sizes = sum(len(m) for m in (*routed, unrouted, topic + b"barrier"))
    assert after.delta(before, "roomcast_router_received_bytes_total") == sizes
    assert after.value("roomcast_router_subscriptions") == 1
    assert after.value("roomcast_router_topics") == 1
    assert after.value("roomcast_router_up") == 1
    assert not after.has("roomcast_router_curve_accepted_total")  # an open bus


async def test_router_metrics_access_and_off(router: Router) -> None:
    """The admin rule guards the router's /metrics; with metrics off it is 404 (and /stats is
    still there)."""
    url = router.http_url + "/metrics"
    assert (await scrape_status(url))[0] == 200
    assert (await scrape_status(url, Host="evil.example"))[0] == 403
    assert (await scrape_status(url, Origin="http://evil.example"))[0] == 403
    off = MetricsSettings(enabled=False)
    async with Router("127.0.0.1", 0, 0, 0, metrics_settings=off) as quiet:
        assert (await scrape_status(quiet.http_url + "/metrics"))[0] == 404
        assert (await scrape_status(quiet.http_url + "/stats"))[0] == 200
    guarded = Router("127.0.0.1", 0, 0, 0, metrics_settings=MetricsSettings(), admin_token="t")
    async with guarded:
        assert (await scrape_status(guarded.http_url + "/metrics"))[0] == 401
        ok = await scrape_status(guarded.http_url + "/metrics", Authorization="Bearer t")
        assert ok[0] == 200


async def test_a_curve_router_counts_refusals_by_reason(tmp_path: Path) -> None:
    """A bus without keys is refused ("no curve"), one with an allowed key is let in: the
    router's /metrics shows both, and agrees with its /stats."""
    keyring = Keyring(tmp_path)
    keyring.allow("good")
    settings = MetricsSettings()
    async with Router(
        "127.0.0.1", 0, 0, 0, router_id=ROUTER, curve=keyring.server(), metrics_settings=settings
    ) as router:
        url = router.http_url + "/metrics"
        good = await start_bus(router, "good", Inbox(), keyring.client("good"))
        bad = await start_bus(router, "bad", Inbox())
        try:
            await good.subscribe(fresh_topic(), TIMEOUT)
            await wait_until(
                lambda: router.stats_dict()["curve_refused_by_reason"]["no curve"] >= 2,
                what="both links of the keyless bus refused",
            )
            scraped = await scrape(url)
            assert scraped.value("roomcast_router_curve_refused_total", reason="no curve") >= 2
            assert (
                scraped.value("roomcast_router_curve_refused_total", reason="key not allowed") == 0
            )
            assert scraped.has("roomcast_router_curve_refused_total", reason="bad handshake")
            assert scraped.value("roomcast_router_curve_accepted_total") >= 2
            assert scraped.value("roomcast_router_allowed_keys") == 1
            assert scraped.value("roomcast_router_key_reloads_total") == 0
        finally:
            for bus in (good, bad):
                await bus.__aexit__(None, None, None)
