"""The pyzmq bus against a real router on 127.0.0.1: exact joins, filtering, stats, garbage.

Every wait is for an event (a message arriving, a probe coming back), with a timeout; a barrier
message published after the one under test proves a negative, because one publisher's messages
on one router reach a subscriber in order.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import msgpack
import pytest
import zmq
from support.bus_inbox import Inbox, Message
from support.timing import TIMEOUT

from roomcast.cluster import wire
from roomcast.cluster.bus import Bus
from roomcast.cluster.wire import Topic
from roomcast.ids import node_tag
from roomcast.protocol.frames import ws_text
from roomcast.router.router import Router


def room(i: int, text: str = "") -> wire.RoomMessage:
    """A room message identified by ``i``."""
    return wire.RoomMessage(i, "/", ("r",), (), (), False, ws_text("4" + (text or f"2[{i}]")))


def is_msg(topic: Topic, msg_id: int) -> Callable[[Message], bool]:
    """Matches the room message ``msg_id`` on ``topic``."""
    return lambda m: m[0] == topic and isinstance(m[2], wire.RoomMessage) and m[2].msg_id == msg_id


def owner_id(bus: Bus, topic: Topic) -> str | None:
    """The router that carries ``topic`` for ``bus``."""
    link = bus.owner(topic)
    return None if link is None else link.id


def fresh_topic(label: str = "t") -> Topic:
    """A room topic nobody has used."""
    return wire.room_topic("/", f"{label}-{secrets.token_hex(6)}")


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    """A router on three ephemeral ports."""
    async with Router("127.0.0.1", 0, 0, 0, router_id="test-router") as r:
        yield r


BusFactory = Callable[..., Awaitable[tuple[Bus, Inbox]]]


@pytest.fixture
async def make_bus(router: Router) -> AsyncIterator[BusFactory]:
    """Start a bus connected to ``router`` whose publishing is proven live (its own probe came
    back), so nothing it publishes afterwards is lost to ZeroMQ's connection setup."""
    buses: list[Bus] = []
    counter = itertools.count(1)

    async def factory(
        routers: list[tuple[str, str, str]] | None = None,
        origin: str | None = None,
        usable: list[str] | None = None,
        **options: Any,
    ) -> tuple[Bus, Inbox]:
        n = next(counter)
        inbox = Inbox()
        name = origin or f"bus{n}"
        bus = Bus(
            name,
            n,
            routers or [("router", router.xsub_endpoint, router.xpub_endpoint)],
            inbox,
            **options,
        )
        await bus.__aenter__()
        buses.append(bus)
        if usable is not None:
            bus.set_usable(usable)
        await bus.subscribe(wire.node_topic(node_tag(name, n)), TIMEOUT)
        return bus, inbox

    try:
        yield factory
    finally:
        for bus in reversed(buses):
            await bus.__aexit__(None, None, None)


class RawSockets:
    """Raw ZeroMQ sockets for a test, each kept (so none is collected unclosed while the test
    runs) and closed with linger 0 at its end."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sockets: list[zmq.Socket[bytes]] = []

    def socket(self, kind: int) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(kind)
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def zmq_context() -> Iterator[RawSockets]:
    """Raw sockets (``zmq_context.socket(zmq.PUB)``), closed at the end of the test."""
    raw = RawSockets()
    try:
        yield raw
    finally:
        raw.close()


def batch(*messages: bytes) -> bytes:
    """A batch frame, as a node hands it to a router."""
    return wire.encode_batch(messages)


def message(topic: Topic, origin: str, incarnation: int, seq: int, body: wire.Body) -> bytes:
    """One bus message (topic + envelope)."""
    return topic + wire.encode(origin, incarnation, seq, body)


async def warm_up(
    raw: zmq.Socket[bytes],
    topic: Topic,
    inbox: Inbox,
    origin: str = "warm-up",
    batched: bool = True,
) -> None:
    """Send numbered messages from ``raw`` (batches, or plain messages when it stands in for
    a router) until one arrives: then ``raw`` is connected and its peer knows the
    subscription (a PUB drops everything before that)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    for seq in itertools.count(1):
        data = message(topic, origin, 1, seq, room(seq))
        raw.send(batch(data) if batched else data)
        try:
            await inbox.wait_for(lambda m: m[1].origin == origin, timeout=0.05)
            return
        except TimeoutError:
            if loop.time() > deadline:
                raise


async def get_json(url: str) -> tuple[int, Any]:
    """GET ``url``; its status and JSON body."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


# --- joins ------------------------------------------------------------------------------------


async def test_router_binds_three_ephemeral_ports(router: Router) -> None:
    """Port 0 gives the router three distinct real ports, reported in its endpoints."""
    ports = {router.xsub_port, router.xpub_port, router.http_port}
    assert len(ports) == 3 and 0 not in ports
    assert router.xsub_endpoint == f"tcp://127.0.0.1:{router.xsub_port}"
    assert router.xpub_endpoint == f"tcp://127.0.0.1:{router.xpub_port}"


async def test_message_right_after_subscribe_arrives(make_bus: BusFactory) -> None:
    """Once subscribe returns, the very next message on that topic arrives (50 fresh topics)."""
    a, _ = await make_bus()
    b, inbox = await make_bus()
    for i in range(50):
        topic = fresh_topic()
        await b.subscribe(topic, TIMEOUT)
        assert b.subscribed(topic)
        a.publish(topic, room(i))
        await inbox.wait_for(is_msg(topic, i))
    assert b.stats.gaps == 0
    assert b.stats.undecodable == 0


async def test_subscribe_returns_only_after_probe_round_trip(
    make_bus: BusFactory, router: Router
) -> None:
    """subscribe publishes at least one probe and returns only after one came back, when the
    router already counts the subscription; probes never reach the handler."""
    b, inbox = await make_bus()
    sent, published = b.stats.probes_sent, b.stats.published
    topics = router.stats_dict()["topics"]
    topic = fresh_topic()
    await b.subscribe(topic, TIMEOUT)
    assert router.stats_dict()["topics"] == topics + 1
    assert b.stats.probes_sent > sent
    assert b.stats.published > published
    assert not any(isinstance(body, wire.Probe) for _, _, body in inbox.messages)


def lonely_bus() -> Bus:
    """A bus whose one router is at two ports nobody listens on."""
    with zmq.Context() as ctx:
        socks = [ctx.socket(zmq.PULL) for _ in range(2)]
        ports = [s.bind_to_random_port("tcp://127.0.0.1") for s in socks]
        for s in socks:
            s.close(0)
    return Bus(
        "lonely",
        1,
        [("nobody", f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}")],
        Inbox(),
    )


async def test_subscribe_times_out_without_a_router() -> None:
    """With no router at the endpoints, subscribe raises TimeoutError after its timeout."""
    async with lonely_bus() as bus:
        with pytest.raises(TimeoutError):
            await bus.subscribe(fresh_topic(), 0.2)


async def test_the_last_unsubscribe_stops_a_proof_still_probing() -> None:
    """A subscription given up while its probes go unanswered (a socket left the room while
    its join waited): the join's wait ends, and no more probes are sent for it."""
    async with lonely_bus() as bus:
        topic = fresh_topic()
        waiting = asyncio.ensure_future(bus.subscribe(topic, 30.0))
        while bus.stats.probes_sent < 2:  # probing, unanswered
            await asyncio.sleep(0.01)
        bus.unsubscribe(topic)
        await waiting  # the wait ends: nothing to wait for
        sent = bus.stats.probes_sent
        await asyncio.sleep(0.3)  # a retry would have gone out by now (they start at 5 ms)
        assert bus.stats.probes_sent == sent


async def test_concurrent_subscribers_of_one_topic_share_the_probe(make_bus: BusFactory) -> None:
    """Several interests in one topic subscribe once; each waits for the live subscription and
    the topic stays subscribed until the last interest goes."""
    a, _ = await make_bus()
    b, inbox = await make_bus()
    topic = fresh_topic()
    subscriptions = b.stats.subscriptions
    await asyncio.gather(*(b.subscribe(topic, TIMEOUT) for _ in range(3)))
    assert b.stats.subscriptions == subscriptions + 1
    a.publish(topic, room(1))
    await inbox.wait_for(is_msg(topic, 1))
    b.unsubscribe(topic)
    b.unsubscribe(topic)
    assert b.subscribed(topic)
    b.unsubscribe(topic)
    assert not b.subscribed(topic)
    assert b.stats.subscriptions == subscriptions


async def test_unsubscribe_stops_delivery(make_bus: BusFactory, router: Router) -> None:
    """After unsubscribe, messages on the topic no longer arrive (a barrier proves it)."""
    a, _ = await make_bus()
    b, inbox = await make_bus()
    topic = fresh_topic("gone")
    await b.subscribe(topic, TIMEOUT)
    a.publish(topic, room(1))
    await inbox.wait_for(is_msg(topic, 1))
    b.unsubscribe(topic)
    assert not b.subscribed(topic)
    # A subscription made after the unsubscription travels behind it to the router: once its
    # probe is back, the router has applied the unsubscription too.
    barrier = fresh_topic("barrier")
    await b.subscribe(barrier, TIMEOUT)
    unrouted = router.stats.unrouted
    a.publish(topic, room(2))
    a.publish(barrier, room(3))  # same publisher, same router: arrives after room(2) would
    await inbox.wait_for(is_msg(barrier, 3))
    assert inbox.bodies(topic) == [room(1)]
    assert router.stats.unrouted == unrouted + 1  # nobody wanted room(2)


async def test_room_a_never_receives_room_ab(make_bus: BusFactory) -> None:
    """A subscriber to room ``a`` gets none of the traffic of ``ab``, ``a\\x00`` or ``aa``."""
    a, _ = await make_bus()
    b, inbox = await make_bus()
    room_a = wire.room_topic("/", "a")
    await b.subscribe(room_a, TIMEOUT)
    others = [wire.room_topic("/", name) for name in ("ab", "a\x00", "aa", "", "A", "b")] + [
        wire.room_topic("/other", "a"),
        wire.namespace_topic("/"),
        wire.namespace_topic("a"),
    ]
    for i, topic in enumerate(others):
        a.publish(topic, room(100 + i))
    a.publish(room_a, room(1))  # the barrier
    await inbox.wait_for(is_msg(room_a, 1))
    assert [(t, body) for t, _, body in inbox.messages] == [(room_a, room(1))]


async def test_two_subscribers_each_get_one_copy(make_bus: BusFactory, router: Router) -> None:
    """A message to a topic with two subscribers reaches each once; the publisher's own copy
    never reaches its handler."""
    a, inbox_a = await make_bus()
    b, inbox_b = await make_bus()
    c, inbox_c = await make_bus()
    topic = fresh_topic()
    await b.subscribe(topic, TIMEOUT)
    await c.subscribe(topic, TIMEOUT)
    await a.subscribe(topic, TIMEOUT)
    b.publish(topic, room(7))
    await inbox_a.wait_for(is_msg(topic, 7))
    await inbox_c.wait_for(is_msg(topic, 7))
    b.publish(topic, room(8))  # barrier for b's own copy of 7
    await inbox_a.wait_for(is_msg(topic, 8))
    await inbox_c.wait_for(is_msg(topic, 8))
    await b.subscribe(fresh_topic(), TIMEOUT)  # b's copies of 7 and 8 came back before this
    assert inbox_b.bodies(topic) == []
    assert len(inbox_a.bodies(topic)) == len(inbox_c.bodies(topic)) == 2


# --- router stats and HTTP --------------------------------------------------------------------


async def test_router_counts_messages_in_out_and_unrouted(
    make_bus: BusFactory, router: Router
) -> None:
    """messages_in counts what reached the router, messages_out each delivery, unrouted the
    messages nobody subscribed to; the HTTP /stats view shows the same numbers."""
    a, _ = await make_bus()
    b, inbox_b = await make_bus()
    c, inbox_c = await make_bus()
    topic, nobody = fresh_topic(), fresh_topic("nobody")
    await b.subscribe(topic, TIMEOUT)
    await c.subscribe(topic, TIMEOUT)
    before = router.stats_dict()
    for i in range(10):
        a.publish(topic, room(i))
    a.publish(nobody, room(99))
    a.publish(topic, room(10))  # barrier: the router handled everything before it
    await inbox_b.wait_for(is_msg(topic, 10))
    await inbox_c.wait_for(is_msg(topic, 10))
    after = router.stats_dict()
    assert after["messages_in"] - before["messages_in"] == 12
    assert after["messages_out"] - before["messages_out"] == 11 * 2
    assert after["unrouted"] - before["unrouted"] == 1
    assert after["malformed"] == before["malformed"]
    assert after["bytes_in"] > before["bytes_in"]
    status, body = await get_json(router.http_url + "/stats")
    assert status == 200
    for key in ("messages_in", "messages_out", "unrouted", "malformed"):
        assert body[key] == after[key]
    assert body["router"] == "test-router"
    assert body["status"] == "ok"
    assert body["xsub"] == router.xsub_endpoint and body["xpub"] == router.xpub_endpoint
    # three node topics (one per bus), and `topic` twice
    assert (body["topics"], body["subscriptions"], body["subscribe_events"]) == (4, 5, 5)


async def test_health_endpoint_answers(router: Router) -> None:
    """/health answers 200 with the router's id while the forwarding loop runs."""
    status, body = await get_json(router.http_url + "/health")
    assert status == 200
    assert body == {"status": "ok", "router": "test-router"}


async def test_router_stats_follow_subscriptions(make_bus: BusFactory, router: Router) -> None:
    """The router counts a bus's subscription once it is live and forgets it on unsubscribe."""
    b, _ = await make_bus()
    topic = fresh_topic()
    await b.subscribe(topic, TIMEOUT)
    assert router.stats_dict()["topics"] == 2  # b's node topic and `topic`
    b.unsubscribe(topic)
    await b.subscribe(fresh_topic(), TIMEOUT)  # travels behind the unsubscription
    stats = router.stats_dict()
    assert stats["topics"] == 2
    assert stats["unsubscribe_events"] == 1


# --- garbage and gaps -------------------------------------------------------------------------


def _packb(*items: Any) -> bytes:
    """Raw envelope parts, framed as :func:`wire.encode` frames them (sender key, kind byte)."""
    kind = items[1] if len(items) > 1 and isinstance(items[1], int) and 0 <= items[1] < 256 else 0
    data: bytes = msgpack.packb(list(items), use_bin_type=True)
    return wire.sender_key("ghost", 1) + bytes((kind,)) + data


async def test_garbage_through_the_router_is_counted_and_dropped(
    make_bus: BusFactory, router: Router, zmq_context: RawSockets
) -> None:
    """Frames that are not batches, broken batch framing and messages without a known topic
    stop at the router (malformed); undecodable envelopes are counted by the receiving bus by
    reason; valid messages still flow, those of a batch cut short by bad framing included."""
    b, inbox = await make_bus()
    topic = fresh_topic()
    await b.subscribe(topic, TIMEOUT)
    raw = zmq_context.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(router.xsub_endpoint)
    await warm_up(raw, topic, inbox)
    malformed = router.stats.malformed
    raw.send(topic)  # not a batch
    raw.send_multipart([topic, b"x", b"y"])  # 3 frames, none a batch
    raw.send(wire.BATCH_HEAD + b"\x00\x00\x00\x09abc")  # a length past the end
    raw.send(batch(b"Zunknown topic kind", message(topic, "raw", 1, 1, room(40))))
    raw.send(
        batch(
            topic + b"\xc1not msgpack",
            topic + _packb(wire.WIRE_VERSION + 1, wire.Kind.LEAVE, "raw", 1, 1),
            topic + _packb(wire.WIRE_VERSION, 99, "raw", 1, 1),
            topic + _packb(wire.WIRE_VERSION, wire.Kind.DELTA, "raw", 1, 1, "x"),
            topic + _packb("not", "an", "envelope"),
            message(topic, "raw", 1, 2, room(42)),  # valid, after the garbage
        )
    )
    _, header, _ = await inbox.wait_for(is_msg(topic, 42))
    assert header.origin == "raw"
    assert [body.msg_id for body in inbox.bodies(topic) if isinstance(body, wire.RoomMessage)][
        -2:
    ] == [40, 42]
    assert router.stats.malformed == malformed + 6
    assert b.stats.undecodable == 5
    assert b.stats.errors_by_reason == {
        "not msgpack": 1,
        "wire version": 1,
        "unknown kind": 1,
        "bad DELTA body": 1,
        "not an envelope": 1,
    }
    stats = b.stats_dict()
    assert stats["undecodable"] == 5 and stats["errors"] == b.stats.errors_by_reason
    # The bus keeps delivering.
    a, _ = await make_bus()
    a.publish(topic, room(43))
    await inbox.wait_for(is_msg(topic, 43))


async def test_garbage_frames_reaching_a_bus_directly_are_counted(
    make_bus: BusFactory, router: Router, zmq_context: RawSockets
) -> None:
    """A second "router" that sends frames without a topic or an envelope, multi-frame
    messages or garbage envelopes to a bus is counted by the bus (by reason) and does not
    stop it."""
    fake_xpub = zmq_context.socket(zmq.PUB)
    fake_xpub.setsockopt(zmq.LINGER, 0)
    fake_port = fake_xpub.bind_to_random_port("tcp://127.0.0.1")
    sink = zmq_context.socket(zmq.SUB)  # where the bus's PUB connects; never subscribes
    sink.setsockopt(zmq.LINGER, 0)
    sink_port = sink.bind_to_random_port("tcp://127.0.0.1")
    b, inbox = await make_bus(
        routers=[
            ("real", router.xsub_endpoint, router.xpub_endpoint),
            ("fake", f"tcp://127.0.0.1:{sink_port}", f"tcp://127.0.0.1:{fake_port}"),
        ],
        usable=["real"],  # publish (and probe) through the real router only
    )
    topic = fresh_topic()
    await b.subscribe(topic, TIMEOUT)  # proven through the real router, held by both
    await warm_up(fake_xpub, topic, inbox, batched=False)
    fake_xpub.send(topic)  # a topic and nothing else
    fake_xpub.send_multipart([topic, b"a", b"b"])  # one frame each: no envelope, 2 bad topics
    fake_xpub.send(topic + b"\x92\x01\x02")  # a msgpack list, too short to be an envelope
    fake_xpub.send(topic + _packb(0, wire.Kind.LEAVE, "x", 1, 1))
    fake_xpub.send(message(topic, "fake", 1, 1, room(5)))
    await inbox.wait_for(is_msg(topic, 5))
    assert b.stats.errors_by_reason == {
        "not an envelope": 3,
        "bad topic": 2,
        "wire version": 1,
    }
    assert b.stats.undecodable == 6
    a, _ = await make_bus()
    a.publish(topic, room(6))
    await inbox.wait_for(is_msg(topic, 6))


async def test_sequence_gaps_are_counted(
    make_bus: BusFactory, router: Router, zmq_context: RawSockets
) -> None:
    """Skipped sequence numbers count as gaps per (origin, incarnation, topic); an older
    number than one delivered is late: dropped and counted, never delivered out of order (its
    loss stays in the gaps); a restart at 1 (a new incarnation, or a topic the publisher had
    forgotten) is neither."""
    b, inbox = await make_bus()
    t1, t2 = fresh_topic("one"), fresh_topic("two")
    await b.subscribe(t1, TIMEOUT)
    await b.subscribe(t2, TIMEOUT)
    raw = zmq_context.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(router.xsub_endpoint)
    await warm_up(raw, t1, inbox)
    assert b.stats.gaps == 0

    def send(topic: Topic, origin: str, incarnation: int, seq: int) -> None:
        raw.send(batch(message(topic, origin, incarnation, seq, room(seq))))

    for seq in (1, 2, 5, 6, 10):  # 3, 4, 7, 8, 9 lost: 5
        send(t1, "x", 1, seq)
    send(t1, "x", 1, 8)  # older than 10: late, dropped (still one of the 5 lost)
    send(t1, "x", 1, 11)
    send(t2, "x", 1, 1)  # another topic counts on its own
    send(t2, "x", 1, 3)  # 2 lost: 1
    send(t1, "x", 2, 1)  # a new incarnation starts over
    send(t1, "x", 2, 2)
    send(t1, "y", 1, 7)  # another origin's first message is no gap
    send(t1, "y", 1, 9)  # 8 lost: 1
    await inbox.wait_for(
        lambda m: m[0] == t1 and m[1].origin == "y" and m[1].seq == 9  # the last one
    )
    assert b.stats.gaps == 7
    assert b.stats.late == 1
    # Messages after a gap are still delivered, in order.
    xs = [(h.incarnation, h.seq) for t, h, _ in inbox.messages if t == t1 and h.origin == "x"]
    assert xs == [(1, 1), (1, 2), (1, 5), (1, 6), (1, 10), (1, 11), (2, 1), (2, 2)]


async def test_handler_errors_do_not_stop_the_bus(make_bus: BusFactory) -> None:
    """A handler that raises is logged; the next messages are still delivered."""
    a, _ = await make_bus()
    b, inbox = await make_bus()
    topic = fresh_topic()
    await b.subscribe(topic, TIMEOUT)
    calls = 0

    def explode(t: Topic, h: wire.Header, body: wire.Body) -> None:
        nonlocal calls
        calls += 1
        inbox(t, h, body)
        if calls == 1:
            raise RuntimeError("handler bug")

    b.on_message = explode
    a.publish(topic, room(1))
    a.publish(topic, room(2))
    await inbox.wait_for(is_msg(topic, 2))
    assert calls == 2


# --- two routers: links and failover ---------------------------------------------------------


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll a bus's own state (changed by its socket monitors) until ``predicate`` holds."""
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.01)  # a polling interval, not a synchronisation
    assert predicate(), what


async def test_a_router_that_goes_away_loses_its_topics_at_once(make_bus: BusFactory) -> None:
    """When a router's connections close, its topics go through the other router at once
    (the socket monitor tells, no check is waited for), nothing is sent to it any more, and
    the loss of the link is counted."""
    async with Router("127.0.0.1", 0, 0, 0, router_id="r2") as r2:
        second = Router("127.0.0.1", 0, 0, 0, router_id="r1")
        r1 = await second.__aenter__()
        try:
            routers = [
                ("r1", r1.xsub_endpoint, r1.xpub_endpoint),
                ("r2", r2.xsub_endpoint, r2.xpub_endpoint),
            ]
            a, _ = await make_bus(routers=routers, usable=["r1", "r2"])
            b, inbox = await make_bus(routers=routers, usable=["r1", "r2"])
            await a.check_routers(TIMEOUT)
            await b.check_routers(TIMEOUT)
            assert a.live_routers() == b.live_routers() == ["r1", "r2"]
            # A topic that r1 carries, subscribed through both.
            topic = next(t for t in (fresh_topic() for _ in range(100)) if owner_id(a, t) == "r1")
            await b.subscribe(topic, TIMEOUT)
            a.publish(topic, room(1))
            await inbox.wait_for(is_msg(topic, 1))
        finally:
            await second.__aexit__(None, None, None)
        await wait_for(lambda: a.stats_dict()["routers_in_use"] == ["r2"], "a to drop r1")
        assert a.stats.link_lost >= 1 and a.live_routers() == ["r2"]
        owner = a.owner(topic)
        assert owner is not None and owner.id == "r2"
        a.publish(topic, room(2))
        await inbox.wait_for(is_msg(topic, 2))
        assert b.stats.gaps == 0 and b.stats.late == 0


async def test_senders_remembered_per_topic_are_bounded(make_bus: BusFactory) -> None:
    """Every emitter run and node restart is a new sender on a topic; a receiver tracks the
    order of at most ``origins_per_topic`` of them (the one first seen longest ago goes), and a
    forgotten sender that speaks again starts a fresh sequence: nothing is lost or refused."""
    receiver, inbox = await make_bus(origins_per_topic=3)
    topic = fresh_topic()
    await receiver.subscribe(topic, TIMEOUT)
    senders = [(await make_bus())[0] for _ in range(6)]
    for i, sender in enumerate(senders):
        sender.publish(topic, room(i))
        await inbox.wait_for(is_msg(topic, i))
    assert receiver._order.senders(topic) == 3
    senders[0].publish(topic, room(100))  # forgotten: its seq 2 is taken as a fresh start
    await inbox.wait_for(is_msg(topic, 100))
    assert receiver.stats.gaps == 0 and receiver.stats.late == 0
    assert receiver._order.senders(topic) == 3
