"""CURVE on the bus with real processes: a router and nodes started by ``python -m roomcast``
with keys (``bus.curve``), the official client, intruders, the emitter and the CLI.

Nodes with allowed keys relay room traffic as on an open bus. An intruder (raw ZeroMQ sockets
of this process: no key, a key the router does not allow, or an allowed key expecting another
router key) neither receives anything, while a control subscriber with an allowed key does,
nor injects anything: a barrier published after its forged message arrives, the forgery never
does; the router counts every refusal. A node whose key is not allowed is deaf and says why
in its log, until its key is allowed and the router reloads (SIGHUP); revoking a key and
reloading makes it deaf again while the others carry on. Every wait is for an event.
"""

from __future__ import annotations

import functools
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
import zmq
from support.cluster_clients import Connect, clients
from support.cluster_harness import unique, wait_until
from support.curve_keys import ROUTER, CurveCluster, Keyring, running_curve_cluster
from support.js_harness import JS_TEST_MARKS, Driver, DriverProcess, connect_all, join
from zmq.utils.monitor import recv_monitor_message

from roomcast import config
from roomcast.cluster import wire
from roomcast.emitter import Emitter
from roomcast.protocol.frames import ws_text

pytestmark = [pytest.mark.multinode, pytest.mark.asyncio(loop_scope="module")]

NODES = ("n1", "n2")
F = TypeVar("F", bound=Callable[..., Any])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CurveCluster]:
    """A CURVE router and two nodes with allowed keys; "control" and "emitter" are allowed
    too, "stranger" is not (n3, when started, is not allowed either)."""
    directory = tmp_path_factory.mktemp("curve")
    keyring = Keyring(directory)
    keyring.allow("control", "emitter")
    keyring.public("stranger")
    async with running_curve_cluster(
        directory, *NODES, keyring=keyring, unallowed=frozenset({"n3"})
    ) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def connect() -> AsyncIterator[Connect]:
    """Connect python-socketio clients to nodes; disconnected at the end of the test."""
    async with clients() as factory:
        yield factory


@pytest_asyncio.fixture(loop_scope="module")
async def js(js_process: DriverProcess) -> AsyncIterator[Driver]:
    """A session with the official client's driver, on this module's loop."""
    driver = await Driver.open(js_process)
    try:
        yield driver
    finally:
        await driver.close()


async def refused(cluster: CurveCluster, reason: str | None = None) -> int:
    """How many handshakes the router refused for ``reason`` (None: for any)."""
    stats = await cluster.router_stats()
    count: int = (
        stats["curve_refused"] if reason is None else stats["curve_refused_by_reason"][reason]
    )
    return count


# --- nodes with allowed keys -----------------------------------------------------------------


def with_js_marks(test: F) -> F:
    """The marks of a JS client test (JS_TEST_MARKS), on one test of this module."""
    for mark in JS_TEST_MARKS:
        test = mark(test)
    return test


@with_js_marks
async def test_official_clients_talk_across_a_curve_bus(cluster: CurveCluster, js: Driver) -> None:
    """socket.io-client sockets on both nodes (WebSocket and polling) exchange room messages
    through the CURVE router, which let the nodes in and encrypts what it carries."""
    room = unique("curve")
    a = js.connect("a", cluster.nodes["n1"].url, "websocket")
    b = js.connect("b", cluster.nodes["n2"].url, "polling")
    await connect_all(a, b)
    await join(a, room)
    await join(b, room)
    await cluster.wait_room(room, {"n1": 1, "n2": 1})
    [ack] = await a.call("publish", {"room": room, "event": "chat", "data": "from n1"})
    assert ack == {"ok": True}
    await b.event("chat", lambda args: args == ["from n1"])
    [ack] = await b.call("publish", {"room": room, "event": "chat", "data": "from n2"})
    assert ack == {"ok": True}
    await a.event("chat", lambda args: args == ["from n2"])
    stats = await cluster.router_stats()
    assert stats["curve"] is True and stats["curve_accepted"] >= 4
    for node in NODES:
        bus = await cluster.bus(node)
        assert bus["curve"] is True and bus["link_problems"] == {}


# --- intruders ---------------------------------------------------------------------------------


class Intruder:
    """Raw ZeroMQ sockets towards the router: a SUB subscribed to everything and a PUB,
    both with the same keys, each watched by a monitor."""

    def __init__(
        self, cluster: CurveCluster, ctx: zmq.Context[zmq.Socket[bytes]], keys: str
    ) -> None:
        keyring = cluster.keyring
        self.sub = ctx.socket(zmq.SUB)
        self.pub = ctx.socket(zmq.PUB)
        self.monitors = []
        for sock in (self.sub, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
            if keys != "open":
                own = keyring.pair("stranger" if keys == "stranger" else "control")
                server = keyring.pair("impostor" if keys == "wrong-router" else ROUTER).public
                sock.setsockopt(zmq.CURVE_PUBLICKEY, own.public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, own.secret)
                sock.setsockopt(zmq.CURVE_SERVERKEY, server)
            self.monitors.append(sock.get_monitor_socket())
        self.events: list[int] = []
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"tcp://127.0.0.1:{cluster.xpub_port}")
        self.pub.connect(f"tcp://127.0.0.1:{cluster.xsub_port}")

    def _read(self) -> None:
        for monitor in self.monitors:
            while monitor.poll(0):
                self.events.append(int(recv_monitor_message(monitor)["event"]))

    def failures(self) -> int:
        """Handshakes that failed so far (either socket)."""
        self._read()
        failed = (
            zmq.EVENT_HANDSHAKE_FAILED_AUTH,
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        )
        return sum(1 for e in self.events if e in failed)

    def succeeded(self) -> bool:
        self._read()
        return zmq.EVENT_HANDSHAKE_SUCCEEDED in self.events

    def close(self) -> None:
        for sock in (*self.monitors, self.sub, self.pub):
            sock.close(0)


def forged(room: str, text: str) -> bytes:
    """A well-formed batch with one room message from a made-up node."""
    body = wire.RoomMessage(1, "/", (room,), (), (), False, ws_text(f'42["chat","{text}"]'))
    return wire.encode_batch([wire.room_topic("/", room) + wire.encode("ghost", 1, 1, body)])


#: Intruders: (their keys, the reason the router counts). Without keys, either side may see
#: the mismatch first: the router counts "no curve" or "bad handshake".
INTRUDERS: dict[str, tuple[str, str | None]] = {
    "no key": ("open", None),
    "key not allowed": ("stranger", "key not allowed"),
    "wrong router key": ("wrong-router", "bad handshake"),
}


@pytest.mark.parametrize("intruder", list(INTRUDERS))
async def test_an_intruder_neither_hears_nor_injects(
    cluster: CurveCluster, connect: Connect, intruder: str
) -> None:
    """An intruder's handshakes fail (counted by the router); its SUB receives nothing while
    a control SUB with an allowed key receives the bus's traffic, and its forged room
    message never reaches the room's member, who gets a barrier published after it."""
    keys, reason = INTRUDERS[intruder]
    room = unique("guarded")
    member = await connect(cluster, "n1", name="member")
    sender = await connect(cluster, "n2", name="sender")
    await member.join(room)
    await sender.join(room)
    await cluster.wait_room(room, {"n1": 1, "n2": 1})
    refused_before = await refused(cluster, reason)

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    control = ctx.socket(zmq.SUB)
    control.setsockopt(zmq.LINGER, 0)
    pair = cluster.keyring.pair("control")
    control.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
    control.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)
    control.setsockopt(zmq.CURVE_SERVERKEY, cluster.keyring.pair(ROUTER).public)
    control.setsockopt(zmq.SUBSCRIBE, b"")
    control.connect(f"tcp://127.0.0.1:{cluster.xpub_port}")
    bad = Intruder(cluster, ctx, keys)
    received = 0

    def control_heard() -> bool:
        nonlocal received
        while control.poll(0):
            control.recv()
            received += 1
        return received >= 3

    try:
        bad.pub.send(forged(room, "forged before"))  # queued for a connection that never comes
        await wait_until(lambda: bad.failures() >= 2, what="both intruder handshakes to fail")
        await wait_until(
            lambda: refused_more(cluster, reason, refused_before + 2),
            what="the router counting the refusals",
        )
        bad.pub.send(forged(room, "forged after"))
        await sender.publish(room, "chat", "barrier")
        await member.wait_for_value("chat", "barrier")
        assert member.got("chat") == ["barrier"]

        # The control subscriber hears the bus (heartbeats, the room's messages); the
        # intruder has heard nothing, and never had a connection.
        await wait_until(control_heard, what="the control subscriber hearing the bus")
        with pytest.raises(zmq.Again):
            bad.sub.recv(zmq.NOBLOCK)
        assert not bad.succeeded()
    finally:
        bad.close()
        control.close(0)
        ctx.term()


async def refused_more(cluster: CurveCluster, reason: str | None, at_least: int) -> bool:
    """Whether the router refused at least ``at_least`` handshakes for ``reason``."""
    return await refused(cluster, reason) >= at_least


# --- the emitter and the CLI ---------------------------------------------------------------------


def emitter_config(cluster: CurveCluster, name: str) -> Path:
    """The cluster's ``cluster.toml`` plus a ``[bus]`` with ``name``'s keys."""
    keyring = cluster.keyring
    path = cluster.dir / f"{name}.toml"
    path.write_text(
        cluster.config.read_text()
        + f"""
[bus]
curve = true
secret_key_file = "{keyring.secret(name)}"
router_public_key_file = "{keyring.public(ROUTER)}"
"""
    )
    return path


async def test_the_emitter_publishes_with_its_key(cluster: CurveCluster, connect: Connect) -> None:
    """An emitter (in this process, and ``roomcast emit``) with an allowed key reaches a
    room's members on every node; one with a key the router does not allow is refused and
    says so; ``roomcast status`` shows the router's CURVE and its refusals."""
    room = unique("emitted")
    members = [await connect(cluster, node, name=node) for node in NODES]
    for member in members:
        await member.join(room)
    await cluster.wait_room(room, {"n1": 1, "n2": 1})

    settings = config.load(emitter_config(cluster, "emitter"), env={})
    async with Emitter.from_settings(settings) as emitter:
        emitter.to(room).emit("news", "from the emitter")
    for member in members:
        await member.wait_for_value("news", "from the emitter")

    code, out, err = await cluster.cli(
        "--config", str(emitter_config(cluster, "emitter")), "emit", room, "news", '"from cli"'
    )
    assert code == 0, err
    for member in members:
        await member.wait_for_value("news", "from cli")

    before = await refused(cluster, "key not allowed")
    stranger = config.load(emitter_config(cluster, "stranger"), env={})
    with pytest.raises(ConnectionError, match="refused this process's key"):
        async with Emitter.from_settings(stranger, connect_timeout=1.0) as emitter:
            emitter.to(room).emit("news", "never")
    assert await refused(cluster, "key not allowed") >= before + 1
    code, out, err = await cluster.cli(
        "--config", str(emitter_config(cluster, "stranger")), "emit", room, "news", "--timeout", "1"
    )
    assert code == 1 and "refused this process's key" in err, (out, err)
    await members[1].publish(room, "news", "barrier")
    await members[0].wait_for_value("news", "barrier")
    assert "never" not in members[0].got("news")

    code, out, err = await cluster.cli("status", "--interval", "0")
    assert code == 0, err
    assert re.search(r"\bcurve, \d+ refused\b", out), out
    assert "bus: " in out and ", CURVE" in out


# --- a node the router does not let in ------------------------------------------------------------


async def test_a_node_is_let_in_by_a_reload_and_shut_out_by_another(
    cluster: CurveCluster, connect: Connect
) -> None:
    """A node whose key is not allowed is deaf, says in its log that the router refused its
    key, and is seen by no other node. Once its key is allowed and the router got SIGHUP, it
    joins the cluster and relays; once the key is revoked and the router got SIGHUP again,
    its connections are cut and it is deaf again, while the other nodes carry on."""
    assert cluster.router is not None
    before = await refused(cluster, "key not allowed")
    n3 = await cluster.start_node("n3", wait_healthy=False)
    await n3.proc.wait_line(
        re.compile(r"router \S+: \w+ link: the router refused this process's key")
    )
    await n3.proc.wait_line(re.compile(r"node n3 is deaf: no router delivers its probes \(router"))
    status, doc = await cluster.health("n3")
    assert status == 503 and doc["status"] == "deaf"
    assert await refused(cluster, "key not allowed") >= before + 2
    bus = await cluster.bus("n3")
    assert bus["connected_routers"] == []
    [problem] = bus["link_problems"].values()
    assert "refused this process's key" in problem
    for node in NODES:
        doc = await cluster.admin(node, "/admin/cluster")
        assert "n3" not in {n["node"] for n in doc["cluster"]["nodes"]}

    # Allowed, and reloaded: n3 redials, gets in, and relays.
    reloads = (await cluster.router_stats())["key_reloads"]
    cluster.keyring.allow("n3")
    os.kill(cluster.router.pid, signal.SIGHUP)
    await wait_until(lambda: reloaded(cluster, reloads + 1), what="the router to reload its keys")
    await wait_until(lambda: healthy(cluster, "n3"), what="n3 to hear the bus")
    await cluster.converged()
    room = unique("let-in")
    a = await connect(cluster, "n1", name="a")
    c = await connect(cluster, "n3", name="c")
    await a.join(room)
    await c.join(room)
    await cluster.wait_room(room, {"n1": 1, "n3": 1})
    await c.publish(room, "chat", "n3 is in")
    await a.wait_for_value("chat", "n3 is in")

    # Revoked, and reloaded: n3's connections are cut and it is refused again.
    cut = (await cluster.router_stats())["curve_cut"]
    cluster.keyring.revoke("n3")
    os.kill(cluster.router.pid, signal.SIGHUP)
    await wait_until(lambda: reloaded(cluster, reloads + 2), what="the second reload")
    await wait_until(lambda: cut_more(cluster, cut), what="the router cutting connections")
    await wait_until(lambda: not_healthy(cluster, "n3"), what="n3 to be deaf again")
    for node in NODES:
        await wait_until(functools.partial(healthy, cluster, node), what=f"{node} to be back")
    await cluster.converged(list(NODES))
    b = await connect(cluster, "n2", name="b")
    await b.join(room)
    await cluster.wait_room(room, {"n1": 1, "n2": 1}, on=list(NODES))
    await b.publish(room, "chat", "n1 and n2 carry on")
    await a.wait_for_value("chat", "n1 and n2 carry on")
    await n3.proc.stop()


async def reloaded(cluster: CurveCluster, count: int) -> bool:
    return bool((await cluster.router_stats())["key_reloads"] >= count)


async def cut_more(cluster: CurveCluster, before: int) -> bool:
    return bool((await cluster.router_stats())["curve_cut"] > before)


async def healthy(cluster: CurveCluster, node: str) -> bool:
    return (await cluster.health(node))[0] == 200


async def not_healthy(cluster: CurveCluster, node: str) -> bool:
    return (await cluster.health(node))[0] == 503
