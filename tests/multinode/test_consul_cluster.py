"""The cluster with consul discovery, as real processes: a Consul agent, routers and nodes.

The agent is the stand-in of ``tests/consul_standin.py`` run as a process (so that it can be
killed and restarted on the same port), and a real ``consul agent -dev`` too when ``consul`` is on
PATH. ``cluster.toml`` lists a decoy router that nobody runs: nodes can only find routers through
Consul. Traffic is counted with unique tokens, so a message delivered twice or lost shows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from support.cluster_clients import Connect, Peer, clients
from support.cluster_harness import (
    CONSUL_KINDS,
    HAVE_CONSUL,
    TIMEOUT,
    Cluster,
    consul_process,
    unique,
    wait_until,
)

from roomcast.cluster import wire

pytestmark = pytest.mark.multinode

NO_CONSUL = "the consul binary is not on PATH; these tests ran against the Consul stand-in"


@pytest.fixture(
    params=[
        pytest.param(kind, marks=pytest.mark.skipif(not HAVE_CONSUL, reason=NO_CONSUL))
        if kind == "agent"
        else kind
        for kind in CONSUL_KINDS
    ]
)
def consul_kind(request: pytest.FixtureRequest) -> str:
    """Which Consul agent the test runs against: the stand-in, or a real ``consul agent -dev``."""
    kind: str = request.param
    return kind


@pytest.fixture
async def consul(consul_kind: str) -> AsyncIterator[Any]:
    """A running Consul agent process on a free port, killed at the end of the test."""
    async with consul_process(consul_kind) as agent:
        yield agent


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Connect clients to nodes; they are disconnected at the end of the test."""
    async with clients() as factory:
        yield factory


@contextlib.asynccontextmanager
async def consul_cluster(
    directory: Path,
    address: str,
    *nodes: str,
    extra_routers: Iterable[str] = (),
    **options: Any,
) -> AsyncIterator[Cluster]:
    """Router ``r1`` (and ``extra_routers``), then ``nodes``, all discovering through the Consul
    agent at ``address``; always torn down."""
    cluster = Cluster(directory, consul=address, router_id="r1", **options)
    try:
        await cluster.start_router()
        for rid in extra_routers:
            await cluster.start_extra_router(rid)
        await asyncio.gather(*(cluster.start_node(n) for n in nodes))
        await cluster.converged()
        yield cluster
    finally:
        await cluster.close()


# --- helpers ----------------------------------------------------------------------------------


def owner(room: str, routers: list[str], namespace: str = "/") -> str:
    """The router that carries ``room``'s topic when ``routers`` are usable: the rendezvous
    hashing documented in :mod:`roomcast.cluster.bus` (highest hash of topic + router id)."""
    topic = wire.room_topic(namespace, room)
    return max(routers, key=lambda r: hashlib.blake2b(topic + r.encode(), digest_size=8).digest())


def spread_rooms(routers: list[str], per_router: int) -> dict[str, list[str]]:
    """Fresh rooms, at least ``per_router`` of them carried by each router, by owner."""
    by_owner: dict[str, list[str]] = {r: [] for r in routers}
    while min(len(rooms) for rooms in by_owner.values()) < per_router:
        room = unique("spread")
        by_owner[owner(room, routers)].append(room)
    return by_owner


async def arrived(peer: Peer, values: Iterable[Any], timeout: float, event: str = "m") -> bool:
    """Whether every one of ``values`` (as ``event``) reaches ``peer`` within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for value in values:
        try:
            await peer.wait_for_value(event, value, timeout=max(0.01, deadline - loop.time()))
        except AssertionError:
            return False
    return True


async def send_round(sender: Peer, rooms: Iterable[str], sent: list[str]) -> dict[str, str]:
    """Publish one fresh token to each room (recorded in ``sent``); ``{room: token}``."""
    tokens = {}
    for room in rooms:
        token = tokens[room] = unique(f"{sender.name}")
        sent.append(token)
        await sender.publish(room, "m", token)
    return tokens


def assert_exactly_once(peer: Peer, sent: list[str]) -> None:
    """``peer`` received nothing twice, and nothing that was not sent."""
    counts = collections.Counter(peer.got("m"))
    twice = {token: n for token, n in counts.items() if n > 1}
    assert not twice, f"{peer.name} received these more than once: {twice}"
    assert set(counts) <= set(sent), set(counts) - set(sent)


async def messages_in(cluster: Cluster, routers: list[str]) -> dict[str, int]:
    """Each router's ``messages_in`` counter (``r1`` is the cluster's first router)."""
    out = {}
    for rid in routers:
        stats = await cluster.router_stats(None if rid == "r1" else rid)
        assert stats["router"] == rid
        out[rid] = stats["messages_in"]
    return out


async def wait_catalogue(
    cluster: Cluster, service: str, expected: dict[str, str], timeout: float = TIMEOUT
) -> None:
    """Wait until Consul lists exactly ``expected`` (roomcast id -> check status) under
    ``service``."""

    async def listed() -> bool:
        return await cluster.consul_health(service) == expected

    try:
        await wait_until(listed, timeout=timeout, what=f"consul's {service} to be {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last: {await cluster.consul_health(service)}") from None


async def wait_bus_routers(cluster: Cluster, nodes: list[str], routers: list[str]) -> None:
    """Wait until each node's bus is connected to exactly ``routers`` and hears through all."""
    for node in nodes:

        async def connected(node: str = node) -> bool:
            bus = await cluster.bus(node)
            return bool(bus["routers"] == routers and bus["live_routers"] == routers)

        await wait_until(connected, what=f"{node}'s bus to use {routers}")


def log_lines(cluster: Cluster, name: str, pattern: str) -> list[str]:
    """The output lines of node ``name`` read so far that match ``pattern``."""
    proc = cluster.nodes[name].proc
    return [line for line in proc.lines if re.search(pattern, line)]


async def wait_log(cluster: Cluster, name: str, pattern: str) -> None:
    """Wait until node ``name`` has printed a line matching ``pattern`` (its output is read
    by another task, so a line may trail the state it reports)."""
    await cluster.nodes[name].proc.wait_line(re.compile(pattern))


async def wait_spread(
    cluster: Cluster, sender: Peer, receiver: Peer, by_owner: dict[str, list[str]], sent: list[str]
) -> dict[str, int]:
    """Publish rounds over every room until each router carried at least the publishes to its
    own rooms in one round (so the sender's node uses them all); the last round's deltas."""
    routers = sorted(by_owner)
    rooms = [room for rid in routers for room in by_owner[rid]]
    last: dict[str, int] = {}

    async def spread() -> bool:
        before = await messages_in(cluster, routers)
        tokens = await send_round(sender, rooms, sent)
        assert await arrived(receiver, tokens.values(), TIMEOUT)
        after = await messages_in(cluster, routers)
        last.update({rid: after[rid] - before[rid] for rid in routers})
        return all(last[rid] >= len(by_owner[rid]) for rid in routers)

    await wait_until(spread, what=f"publishes spread over {routers} (last round: {last})")
    return last


# --- scenarios --------------------------------------------------------------------------------


async def test_nodes_find_the_router_through_consul(
    tmp_path: Path, consul: Any, connect: Connect
) -> None:
    """Nodes and a router register with Consul, the nodes connect to the router Consul lists
    (not the decoy written in cluster.toml), clients on two nodes exchange relay messages, and
    ``roomcast status`` / ``nodes`` show Consul's view beside the gossip view."""
    async with consul_cluster(tmp_path, consul.address, "n1", "n2") as cluster:
        await wait_catalogue(cluster, "roomcast-router", {"r1": "passing"})
        await wait_catalogue(cluster, "roomcast-node", {"n1": "passing", "n2": "passing"})
        for node in ("n1", "n2"):
            doc = await cluster.admin(node, "/admin/cluster")
            assert doc["cluster"]["bus"]["routers"] == ["r1"]
            disc = doc["cluster"]["discovery"]
            assert disc["backend"] == "consul" and disc["source_ok"] is True
            assert [(r["id"], r["healthy"]) for r in disc["routers"]] == [("r1", True)]
            assert disc["routers"][0]["xsub"] != f"tcp://127.0.0.1:{cluster.decoy_port}"

        room = unique("chat")
        a = await connect(cluster, "n1", name="a")
        b = await connect(cluster, "n2", name="b")
        await a.join(room)
        await b.join(room)
        await a.publish(room, "say", "from-a")
        await b.publish(room, "say", "from-b")
        assert await b.wait_for("say") == ["from-a"]
        assert await a.wait_for("say") == ["from-b"]

        code, out, err = await cluster.cli("status", "--node", cluster.nodes["n1"].url)
        assert code == 0, err
        header = out.splitlines()[2].split()
        assert header[:3] == ["node", "gossip", "consul"], out
        rows = {line.split()[0]: line.split() for line in out.splitlines()[4:] if line.strip()}
        assert rows["n1"][1:4] == ["alive", "(asked)", "passing"], out
        assert rows["n2"][1:3] == ["alive", "passing"], out
        assert re.search(r"^r1\s+ok\s", out, re.M), out  # the router Consul lists, not the decoy

        code, out, err = await cluster.cli("nodes", "--json", "--node", cluster.nodes["n2"].url)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["cluster"]["discovery"]["backend"] == "consul"
        consul_view = {n["id"]: n["healthy"] for n in doc["cluster"]["discovery"]["nodes"]}
        assert consul_view == {"n1": True, "n2": True}


async def test_second_router_appears_and_carries_traffic(
    tmp_path: Path, consul: Any, connect: Connect
) -> None:
    """A router started later appears in Consul, every node connects to it, and publishes are
    spread over both routers by the hash of their topic, each delivered exactly once."""
    async with consul_cluster(tmp_path, consul.address, "n1", "n2") as cluster:
        by_owner = spread_rooms(["r1", "r2"], per_router=8)
        rooms = [room for rid in ("r1", "r2") for room in by_owner[rid]]
        a = await connect(cluster, "n1", name="a")
        b = await connect(cluster, "n2", name="b")
        await a.join(*rooms)
        await b.join(*rooms)
        sent: list[str] = []

        # One router: it carries everything.
        before = await messages_in(cluster, ["r1"])
        assert await arrived(b, (await send_round(a, rooms, sent)).values(), TIMEOUT)
        assert (await messages_in(cluster, ["r1"]))["r1"] - before["r1"] >= len(rooms)

        await cluster.start_extra_router("r2")
        await wait_catalogue(cluster, "roomcast-router", {"r1": "passing", "r2": "passing"})
        await wait_bus_routers(cluster, ["n1", "n2"], ["r1", "r2"])
        # The nodes' subscriptions reached the new router (its subscribers are the nodes).
        await wait_until(
            lambda: _subscriptions(cluster, "r2"), what="subscriptions at the new router"
        )

        await wait_spread(cluster, a, b, by_owner, sent)
        # Both directions, through both routers, once more.
        for sender, receiver in ((a, b), (b, a)):
            tokens = await send_round(sender, rooms, sent)
            assert await arrived(receiver, tokens.values(), TIMEOUT)
        assert_exactly_once(a, sent)
        assert_exactly_once(b, sent)
        assert len(b.got("m")) == len(sent) - len(rooms)  # every token a sent, once
        assert len(a.got("m")) == len(rooms)


async def _subscriptions(cluster: Cluster, rid: str) -> bool:
    return bool((await cluster.router_stats(rid))["subscriptions"] > 0)


async def test_killed_router_traffic_moves_to_the_other(
    tmp_path: Path, consul: Any, connect: Connect
) -> None:
    """After kill -9 of one of two routers, rooms it carried are delivered again through the
    other within a bounded time (once Consul marks it critical or the self-check drops it),
    rooms the survivor carried never lose a message, no client receives a message twice, and
    (with gossip timings as by default) no node takes another for down meanwhile."""
    timings = {
        "suspect_after_ms": 1500,
        "down_after_ms": 3000,
        "self_check_interval_ms": 300,
        "self_check_timeout_ms": 300,
    }
    async with consul_cluster(
        tmp_path, consul.address, "n1", "n2", extra_routers=["r2"], cluster_settings=timings
    ) as cluster:
        await wait_bus_routers(cluster, ["n1", "n2"], ["r1", "r2"])
        by_owner = spread_rooms(["r1", "r2"], per_router=6)
        rooms = by_owner["r1"] + by_owner["r2"]
        a = await connect(cluster, "n1", name="a")
        b = await connect(cluster, "n2", name="b")
        await a.join(*rooms)
        await b.join(*rooms)
        sent: list[str] = []
        await wait_spread(cluster, a, b, by_owner, sent)

        dead = cluster.extra_routers["r2"].proc
        dead.kill9()
        await dead.wait()

        survivor_tokens: list[str] = []  # to rooms r1 carries: none may be lost
        rounds = 0

        async def flowing() -> bool:
            nonlocal rounds
            rounds += 1
            ok = True
            for sender, receiver in ((a, b), (b, a)):
                tokens = await send_round(sender, rooms, sent)
                survivor_tokens.extend(tokens[room] for room in by_owner["r1"])
                ok = await arrived(receiver, tokens.values(), 0.5) and ok
            return ok

        await wait_until(flowing, timeout=15, what="every room delivered through r1")
        for _ in range(3):  # and it stays so
            for sender, receiver in ((a, b), (b, a)):
                tokens = await send_round(sender, rooms, sent)
                assert await arrived(receiver, tokens.values(), TIMEOUT), rounds

        got = set(a.got("m")) | set(b.got("m"))
        lost_on_survivor = [t for t in survivor_tokens if t not in got]
        assert not lost_on_survivor, f"{len(lost_on_survivor)} lost on r1 in {rounds} rounds"
        assert_exactly_once(a, sent)
        assert_exactly_once(b, sent)

        # Consul has it critical (or already dropped it); the nodes let it go.
        async def r2_not_passing() -> bool:
            routers = await cluster.consul_health("roomcast-router") or {}
            return routers.get("r1") == "passing" and routers.get("r2") != "passing"

        await wait_until(r2_not_passing, what="r2 critical in Consul")
        await wait_bus_routers(cluster, ["n1", "n2"], ["r1"])
        for node in ("n1", "n2"):
            assert not log_lines(cluster, node, r"node n\d is down"), node


async def test_killed_node_is_dropped_through_consul(
    tmp_path: Path, consul: Any, connect: Connect
) -> None:
    """After kill -9 of a node, its TTL check expires and every surviving replica marks it down
    because Consul says so, long before gossip's down_after (30 s here) could."""
    gossip = {"suspect_after_ms": 20_000, "down_after_ms": 30_000}
    async with consul_cluster(
        tmp_path, consul.address, "n1", "n2", "n3", cluster_settings=gossip
    ) as cluster:
        room = unique("k")
        for node in ("n1", "n2", "n3"):
            await (await connect(cluster, node, name=node)).join(room)
        await cluster.wait_room(room, {"n1": 1, "n2": 1, "n3": 1})

        cluster.nodes["n3"].proc.kill9()
        await cluster.nodes["n3"].proc.wait()

        for node in ("n1", "n2"):

            async def down(node: str = node) -> bool:
                doc = await cluster.admin(node, "/admin/cluster")
                status = {n["node"]: n["status"] for n in doc["cluster"]["nodes"]}
                return bool(status["n3"] == "down")

            # Bounded well below suspect_after: only Consul can explain it.
            await wait_until(down, timeout=10, what=f"{node} to see n3 down")
            await wait_log(cluster, node, r"node n3 is down \(consul: (critical|deregistered)\)")
        await cluster.wait_room(room, {"n1": 1, "n2": 1}, on=["n1", "n2"])
        code, out, err = await cluster.cli("nodes", "--node", cluster.nodes["n1"].url)
        assert code == 0, err
        row = next(line.split() for line in out.splitlines() if line.startswith("n3 "))
        assert row[1] == "down" and row[2] in ("critical", "absent"), out


async def test_consul_restart_everything_registers_again(
    tmp_path: Path, consul: Any, connect: Connect
) -> None:
    """When the Consul agent is killed and restarted empty on the same port, every node and
    router registers again, and the cluster keeps serving throughout: publishes spread over two
    routers are all delivered while Consul is away and while the catalogue refills, /health
    stays 200, no replica drops a live node and no node drops a live router."""
    async with consul_cluster(
        tmp_path, consul.address, "n1", "n2", extra_routers=["r2"]
    ) as cluster:
        everyone = {"n1": "passing", "n2": "passing"}
        routers = {"r1": "passing", "r2": "passing"}
        await wait_catalogue(cluster, "roomcast-node", everyone)
        await wait_catalogue(cluster, "roomcast-router", routers)
        await wait_bus_routers(cluster, ["n1", "n2"], ["r1", "r2"])
        by_owner = spread_rooms(["r1", "r2"], per_router=4)
        rooms = by_owner["r1"] + by_owner["r2"]
        a = await connect(cluster, "n1", name="a")
        b = await connect(cluster, "n2", name="b")
        await a.join(*rooms)
        await b.join(*rooms)
        sent: list[str] = []
        await wait_spread(cluster, a, b, by_owner, sent)

        async def exchange() -> None:
            for sender, receiver in ((a, b), (b, a)):
                tokens = await send_round(sender, rooms, sent)
                assert await arrived(receiver, tokens.values(), TIMEOUT)

        await consul.kill()
        for node in ("n1", "n2"):

            async def lost(node: str = node) -> bool:
                doc = await cluster.admin(node, "/admin/cluster")
                return doc["cluster"]["discovery"]["source_ok"] is False

            await wait_until(lost, what=f"{node} to notice Consul is gone")
        await exchange()  # the last known cluster keeps working
        for node in ("n1", "n2"):
            assert (await cluster.health(node))[0] == 200
            unreachable = (
                r"WARNING .*consul: unreachable; keeping the last known 2 routers, 2 nodes"
            )
            await wait_log(cluster, node, unreachable)

        await consul.start()

        async def refilled() -> bool:
            await exchange()  # every round delivered while processes register again
            nodes = await cluster.consul_health("roomcast-node")
            return nodes == everyone and await cluster.consul_health("roomcast-router") == routers

        await wait_until(refilled, what="everything registered again")
        for node in ("n1", "n2"):

            async def back(node: str = node) -> bool:
                await exchange()
                disc = (await cluster.admin(node, "/admin/cluster"))["cluster"]["discovery"]
                return disc["source_ok"] is True and [
                    (n["id"], n["healthy"]) for n in disc["nodes"]
                ] == [("n1", True), ("n2", True)]

            await wait_until(back, what=f"{node} to read the new catalogue")
        await wait_bus_routers(cluster, ["n1", "n2"], ["r1", "r2"])
        await wait_spread(cluster, a, b, by_owner, sent)
        for node in ("n1", "n2"):
            assert (await cluster.health(node))[0] == 200
            await wait_log(
                cluster, node, f"roomcast-node-{node} vanished from the agent; registering"
            )
            assert not log_lines(cluster, node, r"node n\d is down"), node
            assert not log_lines(cluster, node, r"router r\d removed"), node
            assert not log_lines(cluster, node, "Traceback"), node
        assert_exactly_once(a, sent)
        assert_exactly_once(b, sent)


async def test_consul_unreachable_at_start(
    tmp_path: Path, consul_kind: str, connect: Connect
) -> None:
    """A node started while Consul is unreachable starts anyway, serves its local clients, says
    so in one clear log line per activity (no tracebacks), and registers and joins the cluster
    once Consul comes up."""
    async with consul_process(consul_kind, start=False) as consul:
        cluster = Cluster(tmp_path, consul=consul.address, router_id="r1")
        try:
            await cluster.start_router()
            await cluster.start_node("n1", wait_healthy=False)
            proc = cluster.nodes["n1"].proc
            failed = re.compile(r"WARNING.* consul .*failed: .+ \(retrying with backoff\)")
            await proc.wait_line(failed)

            room = unique("local")
            a = await connect(cluster, "n1", name="a")
            b = await connect(cluster, "n1", name="b")
            await a.join(room)
            await b.join(room)
            await a.publish(room, "m", "local")
            assert await b.wait_for("m") == ["local"]

            await consul.start()
            await wait_catalogue(cluster, "roomcast-router", {"r1": "passing"})
            await wait_catalogue(cluster, "roomcast-node", {"n1": "passing"})
            await proc.wait_line(re.compile(r"recovered after \d+ failed attempts"))
            await wait_until(lambda: _status_is(cluster, "n1", 200), what="n1 healthy once routed")

            await cluster.start_node("n2")
            await cluster.converged()
            c = await connect(cluster, "n2", name="c")
            await c.join(room)
            await a.publish(room, "m", "cross")
            assert await c.wait_for("m") == ["cross"]
            await c.publish(room, "m", "back")
            assert await a.wait_for("m") == ["back"]
            assert await b.wait_for("m", 3) == ["local", "cross", "back"]

            assert proc.running
            warnings = [line for line in proc.lines if failed.search(line)]
            # One line when each activity starts failing (registration, two watches), not one
            # per retry; a change of error may add one.
            assert 1 <= len(warnings) <= 6, "\n".join(warnings)
            assert not [line for line in proc.lines if "Traceback" in line]
        finally:
            await cluster.close()


async def _status_is(cluster: Cluster, node: str, status: int) -> bool:
    return (await cluster.health(node))[0] == status
