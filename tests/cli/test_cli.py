"""The ``roomcast`` command line against a live cluster of processes, and ``roomcast up``.

Inspection commands (``status``, ``nodes``, ``rooms``, ``room``, ``emit``) run as processes with
the cluster's ``cluster.toml``; their human output names what it should, their ``--json``
output parses and carries the expected values, and with nothing reachable they fail with a
plain reason and exit code 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from support.cluster_clients import Connect, clients
from support.cluster_harness import (
    ROUTER_READY,
    Cluster,
    run_cli,
    running_cluster,
    unique,
    wait_until,
)
from support.ports import consecutive_free_ports, free_port, refused_ports

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """A router and two nodes; the CLI asks n1 first (``discovery.nodes``)."""
    async with running_cluster(tmp_path_factory.mktemp("cli"), "n1", "n2") as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def connect() -> AsyncIterator[Connect]:
    """Connect clients to nodes; they are disconnected at the end of the test."""
    async with clients() as factory:
        yield factory


async def only_rooms(cluster: Cluster, expected: dict[str, dict[str, int]]) -> None:
    """Wait until n1 (the node the CLI asks) sees exactly ``expected``: room -> {node: count}."""

    async def check() -> bool:
        doc = await cluster.admin("n1", "/admin/rooms")
        return {r["room"]: r["nodes"] for r in doc["rooms"]} == expected

    await wait_until(check, what=f"n1's rooms to be {expected}")


@pytest.mark.multinode
async def test_status_and_nodes(cluster: Cluster) -> None:
    """``status`` and ``nodes`` list both nodes alive and the router ok, as text and JSON."""
    code, out, err = await cluster.cli("status")
    assert code == 0, err
    assert "n1" in out and "alive (asked)" in out
    assert any(line.split()[:2] == ["n2", "alive"] for line in out.splitlines()), out
    assert "router" in out and " ok " in out
    # The bus's guard: this cluster's bus is open (no CURVE), as the router and n1 say.
    assert "open (no CURVE)" in out
    assert any(
        line.split()[:2] == ["router", "ok"] and line.endswith(" open") for line in out.splitlines()
    )

    assert "rates:" in out and "in/s" in out
    # The node's other counters, one line per subject; this cluster has no Admin UI.
    lines = out.splitlines()
    for subject in ("sessions", "packets", "bytes", "refused at the HTTP edge", "recovery"):
        assert any(line.startswith(subject + ": ") for line in lines), (subject, out)
    assert "admin UI: off" in lines and "metrics: /metrics" in lines

    code, out, err = await cluster.cli("status", "--json", "--interval", "0.2")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["stats"]["rates"]) == {"messages_in", "messages_out"}
    assert all(rate >= 0 for rate in doc["stats"]["rates"].values())
    assert set(doc["router_stats"][0]["rates"]) == {"messages_in", "messages_out"}
    assert doc["self"]["node"] == "n1"
    assert doc["asked"] == cluster.nodes["n1"].url
    assert [(n["node"], n["status"]) for n in doc["cluster"]["nodes"]] == [("n2", "alive")]
    (router,) = doc["router_stats"]
    assert router["status"] == "ok" and router["topics"] >= 3  # gossip and one per node

    code, out, err = await cluster.cli("nodes")
    assert code == 0, err
    assert out.splitlines()[0].split() == [
        "node",
        "gossip",
        "consul",
        "address",
        "conns",
        "rooms",
        "age",
        "s",
    ]
    assert cluster.nodes["n2"].url in out

    code, out, err = await cluster.cli("nodes", "--json", "--node", cluster.nodes["n2"].url)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["self"]["node"] == "n2"
    assert {n["node"]: n["status"] for n in doc["cluster"]["nodes"]} == {"n1": "alive"}


@pytest.mark.multinode
async def test_rooms_top_and_room_members(cluster: Cluster, connect: Connect) -> None:
    """``rooms --top 5`` lists the five largest rooms cluster-wide and ``room NAME --members``
    names each member socket and its node."""
    big, mid = unique("big"), unique("mid")
    small = [unique(f"small{i}") for i in range(5)]
    a1 = await connect(cluster, "n1")
    a2 = await connect(cluster, "n1")
    b1 = await connect(cluster, "n2")
    for peer in (a1, a2, b1):
        await peer.join(big)
    await a1.join(mid)
    await b1.join(mid)
    for room in small:
        await b1.join(room)
    expected = {big: {"n1": 2, "n2": 1}, mid: {"n1": 1, "n2": 1}} | {r: {"n2": 1} for r in small}
    await only_rooms(cluster, expected)

    code, out, err = await cluster.cli("rooms", "--top", "5", "--json")
    assert code == 0, err
    rows = json.loads(out)["rooms"]
    assert len(rows) == 5
    assert rows[0] == {"namespace": "/", "room": big, "members": 3, "nodes": {"n1": 2, "n2": 1}}
    assert rows[1] == {"namespace": "/", "room": mid, "members": 2, "nodes": {"n1": 1, "n2": 1}}
    assert {r["room"] for r in rows[2:]} <= set(small)

    code, out, err = await cluster.cli("rooms", "--top", "5")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[2].split() == ["/", big, "3", "n1,", "n2"]
    assert lines[-1].startswith("(5 rooms;")

    code, out, err = await cluster.cli("room", big, "--members")
    assert code == 0, err
    assert f"room {big!r} in /: 3 members" in out
    for peer in (a1, a2, b1):
        assert any(line.split()[:2] == [peer.sid, peer.node] for line in out.splitlines()), out

    code, out, err = await cluster.cli("room", big, "--members", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["members"] == 3 and doc["nodes"] == {"n1": 2, "n2": 1}
    assert sorted((s["id"], s["node"]) for s in doc["sockets"]) == sorted(
        (p.sid, p.node) for p in (a1, a2, b1)
    )

    code, out, err = await cluster.cli("room", unique("none"), "--json")
    assert code == 0, err
    assert json.loads(out)["members"] == 0


@pytest.mark.multinode
async def test_emit_reaches_clients_on_both_nodes(cluster: Cluster, connect: Connect) -> None:
    """``emit ROOM EVENT JSON`` delivers the parsed JSON to the room's members on every node."""
    room = unique("cli-emit")
    c1 = await connect(cluster, "n1")
    c2 = await connect(cluster, "n2")
    await c1.join(room)
    await c2.join(room)

    code, out, err = await cluster.cli("emit", room, "notice", '{"level": 2}')
    assert code == 0, err
    assert out.strip() == f"sent 'notice' to room {room!r}"
    for peer in (c1, c2):
        assert await peer.wait_for("notice") == [{"level": 2}]

    code, out, err = await cluster.cli("emit", room, "plain", "just text", "--json")
    assert code == 0, err
    assert json.loads(out)["ok"] is True
    for peer in (c1, c2):
        assert await peer.wait_for("plain") == ["just text"]


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["nodes", "--json"],
        ["rooms", "--top", "5"],
        ["room", "lobby", "--members"],
        ["emit", "lobby", "hello", "--timeout", "0.3"],
    ],
    ids=lambda a: a[0],
)
async def test_nothing_reachable_is_a_clear_error(tmp_path: Path, args: list[str]) -> None:
    """With no node and no router listening, a command explains what it could not reach on
    stderr, without a traceback, and exits 1."""
    with refused_ports(4) as ports:
        config = tmp_path / "cluster.toml"
        config.write_text(
            f"""\
[discovery]
nodes = ["http://127.0.0.1:{ports[0]}"]

[[discovery.routers]]
xsub = "tcp://127.0.0.1:{ports[1]}"
xpub = "tcp://127.0.0.1:{ports[2]}"
http = "http://127.0.0.1:{ports[3]}"
"""
        )
        code, out, err = await run_cli(config, *args, cwd=tmp_path)
    assert code == 1, (out, err)
    assert out == ""
    assert err.startswith("roomcast: no ")
    assert "Traceback" not in err


# --- roomcast up --------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """Whether a process exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.multinode
@pytest.mark.parametrize("to", ["process", "group"])
async def test_up_serves_and_stops_on_sigint(tmp_path: Path, connect: Connect, to: str) -> None:
    """``roomcast up`` starts a router and two nodes that relay across nodes, and SIGINT (to it,
    or to its whole process group as Ctrl-C does) stops it with exit code 0 and no child left."""
    # Picked, not bound to port 0: ``up`` starts the router and the nodes from one cluster.toml,
    # so the nodes read the router's ports there before it has bound them, and node i takes
    # base_port + i (which this test checks).
    base_port = consecutive_free_ports(2)
    cluster = Cluster(
        tmp_path,
        up_nodes=2,
        up_base_port=base_port,
        router_ports=(free_port(), free_port(), free_port()),
    )
    try:
        up = cluster.spawn("up", "up")
        await up.start()
        await up.wait_line(ROUTER_READY)
        for i, name in enumerate(("n1", "n2")):
            match = await up.wait_line(re.compile(rf"^\[{name} *\] node {name} ready: (\S+)"))
            assert match.group(1) == f"http://127.0.0.1:{base_port + i}"
            cluster.add_node(name, match.group(1), up)
        await cluster.converged()

        room = unique("up")
        c1 = await connect(cluster, "n1")
        c2 = await connect(cluster, "n2")
        await c1.join(room)
        await c2.join(room)
        await c1.publish(room, "hello", "across")
        assert await c2.wait_for("hello") == ["across"]

        children = children_of(up.pid)
        assert len(children) == 3, children  # the router and two nodes
        if to == "group":
            os.killpg(up.pid, signal.SIGINT)
        else:
            os.kill(up.pid, signal.SIGINT)
        assert await up.wait() == 0, up.tail()
        assert [pid for pid in children if alive(pid)] == []
        assert not [line for line in up.lines if "Traceback" in line or "exited with" in line]
    finally:
        await cluster.close()
