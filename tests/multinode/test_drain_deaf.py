"""The deaf-node self-check and ``roomcast drain``, with real processes.

A node that no router delivers its own probes to is *deaf*: it fails ``/health`` (and its Consul
check) until probes flow again. ``roomcast drain NODE`` takes a node out for a rolling deploy: no
new sessions, failing health, its clients closed spread over a window (clients with reconnection
and a list of node URLs land on another node), then a clean departure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from support.cluster_clients import Connect, Peer, clients
from support.cluster_harness import (
    CONSUL_KINDS,
    HAVE_CONSUL,
    TIMEOUT,
    Cluster,
    consul_process,
    running_cluster,
    unique,
    wait_until,
)

pytestmark = pytest.mark.multinode

NO_CONSUL = "the consul binary is not on PATH; these tests ran against the Consul stand-in"

#: A quicker self-check than the default (probe every 300 ms, give up after 300 ms).
SELF_CHECK = {"self_check_interval_ms": 300, "self_check_timeout_ms": 300}


@pytest.fixture(
    params=[
        pytest.param(kind, marks=pytest.mark.skipif(not HAVE_CONSUL, reason=NO_CONSUL))
        if kind == "agent"
        else kind
        for kind in CONSUL_KINDS
    ]
)
async def consul(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A running Consul agent process (the stand-in, or a real ``consul agent -dev``)."""
    async with consul_process(request.param) as agent:
        yield agent


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Connect clients to nodes; they are disconnected at the end of the test."""
    async with clients() as factory:
        yield factory


@contextlib.asynccontextmanager
async def consul_cluster(
    directory: Path, address: str, *nodes: str, **options: Any
) -> AsyncIterator[Cluster]:
    """Router ``r1`` and ``nodes`` discovering each other through the Consul agent at
    ``address``; always torn down."""
    async with running_cluster(
        directory, *nodes, consul=address, router_id="r1", **options
    ) as cluster:
        yield cluster


async def health(cluster: Cluster, node: str) -> tuple[int, dict[str, Any]] | None:
    """``node``'s /health, or None when it does not answer."""
    try:
        return await cluster.health(node)
    except (aiohttp.ClientError, TimeoutError):
        return None


def health_is(cluster: Cluster, node: str, status: int, problem: str) -> Callable[[], Any]:
    """A predicate: ``node``'s /health answers ``status`` with ``problem`` as its status."""

    async def check() -> bool:
        answer = await health(cluster, node)
        return answer is not None and answer[0] == status and answer[1]["status"] == problem

    return check


async def delivered(sender: Peer, receiver: Peer, room: str) -> bool:
    """One publish from ``sender`` to ``room`` reaches ``receiver`` (within a short bound)."""
    token = unique("probe")
    await sender.publish(room, "m", token)
    with contextlib.suppress(AssertionError):
        await receiver.wait_for_value("m", token, timeout=0.5)
    return token in receiver.got("m")


# --- the deaf-node self-check -----------------------------------------------------------------


async def test_deaf_nodes_fail_health_until_the_router_returns(
    tmp_path: Path, connect: Connect
) -> None:
    """With static discovery, when the only router dies every node's /health turns 503 with
    problem "deaf" within a few self-check intervals, and once a router is back on the same
    ports every /health is 200 again and cross-node traffic flows."""
    async with running_cluster(tmp_path, "n1", "n2", cluster_settings=SELF_CHECK) as cluster:
        room = unique("deaf")
        a = await connect(cluster, "n1", name="a")
        b = await connect(cluster, "n2", name="b")
        await a.join(room)
        await b.join(room)
        assert await delivered(a, b, room)
        router = cluster.router
        assert router is not None

        router.kill9()
        await router.wait()
        for node in ("n1", "n2"):
            await wait_until(
                health_is(cluster, node, 503, "deaf"), timeout=5, what=f"{node} to be deaf"
            )
            _, doc = await cluster.health(node)
            assert "probes" in doc["problems"]["deaf"]
            assert cluster.nodes[node].proc.running

        await cluster.start_router()
        for node in ("n1", "n2"):
            await wait_until(health_is(cluster, node, 200, "ok"), what=f"{node} to hear again")
        await wait_until(lambda: delivered(a, b, room), what="traffic from n1 to n2")
        await wait_until(lambda: delivered(b, a, room), what="traffic from n2 to n1")
        for node in ("n1", "n2"):
            proc = cluster.nodes[node].proc
            await proc.wait_line(re.compile(f"node {node} is deaf: no router delivers"))
            await proc.wait_line(re.compile(f"node {node} hears the bus again"))


async def test_deaf_node_fails_its_consul_check(
    tmp_path: Path, consul: Any, connect: Connect
) -> None:
    """With Consul, a node that hears no router fails its Consul check (critical at the agent)
    as well as /health, and passes both again once the router is back."""
    async with consul_cluster(
        tmp_path, consul.address, "n1", "n2", cluster_settings=SELF_CHECK
    ) as cluster:
        room = unique("deaf")
        a = await connect(cluster, "n1", name="a")
        b = await connect(cluster, "n2", name="b")
        await a.join(room)
        await b.join(room)
        assert await delivered(a, b, room)
        router = cluster.router
        assert router is not None

        router.kill9()
        await router.wait()

        async def nodes_critical() -> bool:
            nodes = await cluster.consul_health("roomcast-node")
            return nodes == {"n1": "critical", "n2": "critical"}

        await wait_until(nodes_critical, timeout=5, what="both node checks critical")
        for node in ("n1", "n2"):
            assert (await cluster.health(node))[0] == 503

        await cluster.start_router()

        async def nodes_passing() -> bool:
            nodes = await cluster.consul_health("roomcast-node")
            return nodes == {"n1": "passing", "n2": "passing"}

        await wait_until(nodes_passing, what="both node checks passing again")
        for node in ("n1", "n2"):
            await wait_until(health_is(cluster, node, 200, "ok"), what=f"{node} healthy")
        await wait_until(lambda: delivered(a, b, room), what="traffic from n1 to n2")
        await wait_until(lambda: delivered(b, a, room), what="traffic from n2 to n1")


# --- drain ------------------------------------------------------------------------------------


class Roamer:
    """A python-socketio client with reconnection on, which tries the node URLs in turn (as a
    client given a list of nodes, or a load balancer would), recording its (dis)connections."""

    def __init__(self, name: str, urls: list[str]) -> None:
        self.name = name
        self.urls = urls
        self.attempts = 0
        self.url = ""  #: the URL of the latest (re)connection attempt
        self.client = socketio.AsyncClient(
            reconnection=True,
            reconnection_delay=0.05,
            reconnection_delay_max=0.2,
            randomization_factor=0.0,
        )
        self.connected_to: list[str] = []
        self.disconnected_at: list[float] = []
        self.got: list[Any] = []
        self.changed = asyncio.Event()
        self.client.on("connect", self._on_connect)
        self.client.on("disconnect", self._on_disconnect)
        self.client.on("m", self._on_m)

    def next_url(self) -> str:
        """The next node to try."""
        self.url = self.urls[self.attempts % len(self.urls)]
        self.attempts += 1
        return self.url

    def _on_connect(self) -> None:
        self.connected_to.append(self.url)
        self.changed.set()

    def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnected_at.append(asyncio.get_running_loop().time())
        self.changed.set()

    def _on_m(self, data: Any) -> None:
        self.got.append(data)
        self.changed.set()

    async def wait(self, done: Callable[[], bool], what: str) -> None:
        """Wait until ``done()`` holds."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not done():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.name} timed out waiting for {what}") from None

    async def call(self, event: str, data: Any) -> Any:
        """Emit with an ack."""
        return await self.client.call(event, data, timeout=TIMEOUT)


def reconnected(roamer: Roamer) -> bool:
    """The roamer is connected for the second time (to the other node)."""
    return len(roamer.connected_to) == 2


def got_welcome(roamer: Roamer) -> bool:
    """The roamer received the "welcome" message."""
    return "welcome" in roamer.got


async def test_drain_moves_clients_and_leaves(
    tmp_path: Path, consul: Any, connect: Connect
) -> None:
    """``roomcast drain n1 --window 1`` fails n1's health at once, refuses new sessions with
    503, closes its clients spread over the window (they reconnect to n2), then n1 exits 0 and
    leaves: the other replica sees it down at once (gossip's down_after is 30 s here), Consul
    drops it, and ``roomcast nodes`` shows the gossip and consul columns."""
    gossip = {"suspect_after_ms": 20_000, "down_after_ms": 30_000}
    async with (
        consul_cluster(tmp_path, consul.address, "n1", "n2", cluster_settings=gossip) as cluster,
        contextlib.AsyncExitStack() as stack,
    ):
        urls = [cluster.nodes["n1"].url, cluster.nodes["n2"].url]
        room = unique("drain")
        stay = await connect(cluster, "n2", name="stay")
        await stay.join(room)
        roamers = [Roamer(f"roamer{i}", urls) for i in range(6)]
        for roamer in roamers:
            await roamer.client.connect(
                roamer.next_url, transports=["websocket"], wait_timeout=TIMEOUT
            )
            stack.push_async_callback(roamer.client.shutdown)
            assert roamer.connected_to == [urls[0]]
            assert (await roamer.call("join", [room]))["ok"] is True
        await cluster.wait_room(room, {"n1": 6, "n2": 1}, on=["n2"])

        n1 = cluster.nodes["n1"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        drain = asyncio.ensure_future(cluster.cli("drain", "n1", "--window", "1"))
        await wait_until(health_is(cluster, "n1", 503, "draining"), what="n1 to fail /health")
        async with cluster.session.get(f"{n1.url}/socket.io/?EIO=4&transport=polling") as resp:
            assert resp.status == 503  # no new session
        code, out, err = await drain
        assert code == 0, err
        assert "n1 is draining" in out and "1.0 s" in out

        for roamer in roamers:
            await roamer.wait(functools.partial(reconnected, roamer), "a reconnection")
            assert roamer.connected_to[1] == urls[1], roamer.connected_to
        disconnects = sorted(r.disconnected_at[0] for r in roamers)
        assert all(t >= started for t in disconnects)
        # Spread over the window (one every 1/6 s ideally), not a reconnect storm.
        assert disconnects[-1] - disconnects[0] >= 0.25, disconnects
        assert await n1.proc.wait() == 0

        # n2 saw n1 leave at once: down, with a reason other than gossip's timeout.
        async def n1_down() -> bool:
            doc = await cluster.admin("n2", "/admin/cluster")
            return {n["node"]: n["status"] for n in doc["cluster"]["nodes"]} == {"n1": "down"}

        await wait_until(n1_down, timeout=3, what="n2 to see n1 down")
        await cluster.nodes["n2"].proc.wait_line(
            re.compile(r"node n1 is down \((left|consul: deregistered)\)")
        )

        # The roamers, now on n2, are in the room again and reachable from the cluster.
        async def n1_gone() -> bool:
            return await cluster.consul_health("roomcast-node") == {"n2": "passing"}

        await wait_until(n1_gone, what="consul to drop n1")
        for roamer in roamers:
            assert (await roamer.call("join", [room]))["ok"] is True
        await stay.publish(room, "m", "welcome")
        for roamer in roamers:
            await roamer.wait(functools.partial(got_welcome, roamer), "the message on n2")
        assert (await roamers[0].call("publish", {"room": room, "event": "m", "data": "hi"})) == {
            "ok": True
        }
        await stay.wait_for_value("m", "hi")

        n2 = cluster.nodes["n2"].url
        code, out, err = await cluster.cli("nodes", "--node", n2)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["node", "gossip", "consul"], out
        rows = {line.split()[0]: line.split() for line in lines[2:]}
        assert rows["n1"][1:3] == ["down", "absent"], out
        assert rows["n2"][1:4] == ["alive", "(asked)", "passing"], out
        code, out, err = await cluster.cli("nodes", "--json", "--node", n2)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["cluster"]["discovery"]["backend"] == "consul"
        assert [(n["id"], n["healthy"]) for n in doc["cluster"]["discovery"]["nodes"]] == [
            ("n2", True)
        ]
        assert [(n["node"], n["status"]) for n in doc["cluster"]["nodes"]] == [("n1", "down")]


@pytest.mark.parametrize("leaving", ["drain", "sigterm"])
async def test_a_leaving_node_answers_the_polls_it_forwards_before_it_goes(
    tmp_path: Path, leaving: str
) -> None:
    """A long-poll of n1's session that a load balancer sent through n2 is forwarded to n1;
    when n2 drains meanwhile (it has no client of its own), or is stopped with a shutdown
    grace longer than the poll's wait, it stays until that poll has its answer (here the
    session's next ping) and only then leaves: the client gets the ping, not a cut connection,
    and its session on n1 goes on."""
    engine = (
        "\n[engineio]\nping_interval_ms = 4000\nping_timeout_ms = 20000\n"
        "\n[node]\nshutdown_grace_ms = 15000\n"
    )
    async with running_cluster(tmp_path, "n1", "n2", extra_config=engine) as cluster:
        n1, n2 = cluster.nodes["n1"].url, cluster.nodes["n2"].url
        eio = "/socket.io/?EIO=4&transport=polling"
        http = cluster.session
        async with http.get(n1 + eio) as resp:
            sid = json.loads((await resp.text())[1:])["sid"]
        async with http.post(f"{n1}{eio}&sid={sid}", data=b"40") as resp:
            assert resp.status == 200
        async with http.get(f"{n1}{eio}&sid={sid}") as resp:
            assert (await resp.text()).startswith("40")
        # The long-poll, through n2 (forwarded to n1), waiting for the session's next ping.
        poll = asyncio.ensure_future(http.get(f"{n2}{eio}&sid={sid}"))

        async def forwarding() -> bool:
            stats = await cluster.admin("n2", "/admin/stats")
            return bool(stats["forwards_in_flight"] == 1)

        await wait_until(forwarding, what="n2 to forward the poll")
        n2_proc = cluster.nodes["n2"].proc
        if leaving == "drain":
            code, _, err = await cluster.cli("drain", "n2", "--window", "0.1")
            assert code == 0, err
        else:
            assert n2_proc.process is not None
            n2_proc.process.terminate()
        async with await poll as resp:
            assert (resp.status, await resp.text()) == (200, "2")  # the ping, not a cut
        assert await n2_proc.wait() == 0
        async with http.post(f"{n1}{eio}&sid={sid}", data=b"3") as resp:
            assert (resp.status, await resp.text()) == (200, "ok")  # the session goes on


async def test_a_draining_node_closes_the_websockets_it_splices_over_its_window(
    tmp_path: Path,
) -> None:
    """WebSockets of n1's sessions whose upgrade landed on n2 (spliced there to n1, or
    relayed when the handshake came on a kept-alive connection aiohttp served) are closed by
    n2's drain spread over its window, as its own connections are, not all at once when it
    exits: their clients do not come back in one burst."""
    async with (
        running_cluster(tmp_path, "n1", "n2") as cluster,
        contextlib.AsyncExitStack() as stack,
    ):
        n1, n2 = cluster.nodes["n1"].url, cluster.nodes["n2"].url
        eio = "/socket.io/?EIO=4&transport="
        sockets = []
        for i in range(6):
            # Every other one on a connection that served a request first (relayed).
            http = await stack.enter_async_context(aiohttp.ClientSession())
            async with http.get(n1 + eio + "polling") as resp:
                sid = json.loads((await resp.text())[1:])["sid"]
            if i % 2:
                async with http.get(n2 + "/health") as resp:
                    assert resp.status == 200
            ws = await http.ws_connect(f"{n2.replace('http', 'ws')}{eio}websocket&sid={sid}")
            await ws.send_str("2probe")
            assert (await ws.receive(timeout=TIMEOUT)).data == "3probe"
            await ws.send_str("5")
            sockets.append(ws)
        assert (await cluster.admin("n2", "/admin/stats"))["spliced_websockets"] == 6
        loop = asyncio.get_running_loop()

        async def closed(ws: aiohttp.ClientWebSocketResponse) -> float:
            """When the node closed it (no message comes before: no ping is due yet)."""
            message = await ws.receive(timeout=TIMEOUT)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
            return loop.time()

        waits = [asyncio.ensure_future(closed(ws)) for ws in sockets]
        code, _, err = await cluster.cli("drain", "n2", "--window", "1")
        assert code == 0, err
        times = sorted(await asyncio.gather(*waits))
        # Spread over the window (one every 1/6 s ideally), not a reconnect storm.
        assert times[-1] - times[0] >= 0.25, times
        assert await cluster.nodes["n2"].proc.wait() == 0
