"""Official clients through a real load balancer with no affinity (Debian's HAProxy, round
robin, every request balanced on its own) in front of three nodes started by the CLI.

No session is sticky: each HTTP request of a polling session, and each WebSocket upgrade, may
land on any node, which forwards it to (or splices it with) the node that holds the session.
The proof that the balancer really spread the sessions comes from two independent sources that
must agree: HAProxy's own log (which server got which request of which sid) and the nodes'
forward counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.cluster_clients import Peer
from support.cluster_harness import TIMEOUT, Cluster, running_cluster, wait_until
from support.haproxy import Balancer, balancer, needs_haproxy
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    JsClient,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
)

pytestmark = [pytest.mark.multinode, needs_haproxy, *JS_TEST_MARKS]

EIO = "/socket.io/?EIO=4&transport="
UNKNOWN_SID = {"code": 1, "message": "Session ID unknown"}

#: Server-to-client acks: ``ask`` makes the server ask every member of a room, cluster-wide,
#: and returns their answers.
APP = """
def setup(server):
    ns = server.of("/")

    @ns.on("ask")
    async def ask(socket, room):
        return sorted(await ns.to(room).emit_with_ack("question", room, timeout=20.0))
"""

#: One line of HAProxy's ``option httplog``: the server that served it, the status, the request.
LOG_LINE = re.compile(r" nodes/(s\d+) \S+ (\d{3}) .*\"(GET|POST) (\S+) HTTP/1\.1\"")
SID = re.compile(r"[?&]sid=([A-Za-z0-9_-]+)")


@contextlib.asynccontextmanager
async def balanced_cluster(directory: Path) -> AsyncIterator[tuple[Cluster, Balancer]]:
    async with running_cluster(directory, "n1", "n2", "n3", app_source=APP) as cluster:
        urls = [node.url for node in cluster.nodes.values()]
        async with balancer(urls, directory) as lb:
            yield cluster, lb


async def owners(cluster: Cluster) -> dict[str, str]:
    """Which node a sid's first 8 characters (its node's tag) name, learnt from a handshake
    on each node."""
    found: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:
        for name, node in cluster.nodes.items():
            async with http.get(node.url + EIO + "polling") as resp:
                body = await resp.text()
            found[body[body.index('"sid":"') + 7 :][:8]] = name
    return found


async def forward_counters(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {n: await cluster.admin(n, "/admin/stats") for n in cluster.nodes}


@dataclass
class Member:
    """A client of the test: the official JS client or python-socketio, by name."""

    name: str
    room: str
    kind: str
    js: JsClient | None = None
    py: Peer | None = None

    async def call(self, event: str, *args: Any) -> Any:
        if self.js is not None:
            (answer,) = await self.js.call(event, *args)
            return answer
        assert self.py is not None
        return await self.py.call(event, *args)

    async def publish(self, event: str, data: Any) -> None:
        ack = await self.call("publish", {"room": self.room, "event": event, "data": data})
        assert ack == {"ok": True}, (self.name, ack)

    def got(self, event: str) -> list[Any]:
        if self.js is not None:
            return [args[0] for args in self.js.received(event)]
        assert self.py is not None
        return self.py.got(event)

    async def wait_for_each(self, event: str, values: list[str]) -> None:
        """Until ``event`` has arrived with each of ``values``."""
        if self.js is not None:
            for value in values:
                await self.js.event(event, [value].__eq__)
        else:
            assert self.py is not None
            for value in values:
                await self.py.wait_for_value(event, value)


def _log(lb: Balancer) -> list[re.Match[str]]:
    """The requests HAProxy has logged (each once it has ended)."""
    lines = lb.access_log.read_text().splitlines()
    return [m for m in map(LOG_LINE.search, lines) if m is not None]


def _served(request: re.Match[str]) -> bool:
    """Whether a logged request was answered 1xx or 2xx (a WebSocket's 101, a poll's 200)."""
    return request.group(2).startswith(("1", "2"))


async def test_official_clients_need_no_sticky_sessions(tmp_path: Path, js: Driver) -> None:
    """100 sessions (JS over polling only, JS polling then upgrading, python-socketio over
    polling only and upgrading) connect through the balancer, join 10 rooms of 10, get acks
    both ways and receive every member's publish exactly once; no request is answered 4xx or
    5xx, no client disconnects; the requests of almost every session were served by several
    nodes, and exactly those that reached a node other than their session's were forwarded."""
    async with balanced_cluster(tmp_path) as (cluster, lb):
        kinds = ["js-polling", "js-upgrade", "py-polling", "py-upgrade", "js-polling"]
        members: list[Member] = []
        for i in range(100):
            kind, name = kinds[i % len(kinds)], f"c{i:03d}"
            member = Member(name, f"room-{i % 10}", kind)
            if kind.startswith("js"):
                member.js = js.connect(
                    name,
                    lb.url,
                    kind.removeprefix("js-"),
                    replies={"question": {"args": [name]}},
                )
            else:
                member.py = Peer(name, "lb", ["/"])
                member.py.on("question", lambda room, name=name: name)
            members.append(member)

        async def start(m: Member) -> None:
            if m.js is not None:
                await m.js.connected()
            else:
                assert m.py is not None
                await m.py.client.connect(
                    lb.url,
                    transports=["polling"] if m.kind == "py-polling" else ["polling", "websocket"],
                    wait_timeout=TIMEOUT,
                )
            ack = await m.call("join", m.room)
            assert ack == {"ok": True, "rooms": [m.room]}, (m.name, ack)

        await asyncio.gather(*(start(m) for m in members))

        rooms: dict[str, list[Member]] = defaultdict(list)
        for m in members:
            rooms[m.room].append(m)

        # Client-to-server acks: every publish; then a fence behind it, from the same sender.
        async def speak(m: Member) -> None:
            await m.publish("news", m.name)
            await m.publish("fence", m.name)

        await asyncio.gather(*(speak(m) for m in members))
        others = {m.name: sorted(o.name for o in rooms[m.room] if o is not m) for m in members}
        await asyncio.gather(*(m.wait_for_each("fence", others[m.name]) for m in members))
        for m in members:
            assert sorted(m.got("news")) == others[m.name], m.name  # each once, no other
            assert sorted(m.got("fence")) == others[m.name], m.name

        # Server-to-client acks: the server asks every member of each room, wherever it is.
        answers = await asyncio.gather(*(room[0].call("ask", name) for name, room in rooms.items()))
        for (name, room), got in zip(rooms.items(), answers, strict=True):
            assert got == sorted(m.name for m in room), name

        # No reconnect, no refused request: one connect per JS client and no disconnect.
        connects = Counter(e["id"] for e in js.events if e["type"] == "connect")
        assert all(connects[m.name] == 1 for m in members if m.js is not None), connects
        dropped = [e for e in js.events if e["type"] in ("disconnect", "connect_error", "error")]
        assert dropped == []
        assert all(m.py.disconnects == [] for m in members if m.py is not None)
        answered = _log(lb)
        assert [line for line in answered if not _served(line)] == []

        for m in members:  # everyone leaves, so every request has ended and been logged
            if m.js is not None:
                m.js.disconnect()
            else:
                assert m.py is not None
                await m.py.client.disconnect()
        await _check_spread(cluster, lb, members)


async def _check_spread(cluster: Cluster, lb: Balancer, members: list[Member]) -> None:
    """The polling requests of almost every session went to several nodes; the nodes
    forwarded exactly the polling requests that reached a node other than their session's,
    and spliced the WebSockets that did."""
    tags = await owners(cluster)
    node_of_server = {lb.servers[node.url]: name for name, node in cluster.nodes.items()}

    def tally() -> tuple[int, int, dict[str, list[str]]]:
        forwarded = spliced = 0
        servers: dict[str, list[str]] = defaultdict(list)  # by sid: who served each request
        for match in _log(lb):
            server, _, _, url = match.groups()
            sid = SID.search(url)
            if sid is None:
                continue  # a handshake
            served_by = node_of_server[server]
            elsewhere = tags[sid.group(1)[:8]] != served_by
            servers[sid.group(1)].append(served_by)
            if "transport=polling" in url:
                forwarded += elsewhere
            else:
                spliced += elsewhere
        return forwarded, spliced, servers

    async def agree() -> bool:
        forwarded, spliced, _ = tally()
        stats = await forward_counters(cluster)
        counted = (
            sum(s["forwarded_requests"] for s in stats.values()),
            sum(s["spliced_websockets"] for s in stats.values()),
        )

        return counted == (forwarded, spliced)

    await wait_until(agree, what="HAProxy's log and the nodes' forward counters to agree")
    forwarded, spliced, servers = tally()
    assert len(servers) == len(members)  # a session: its sid's requests, polling or WebSocket
    # Polling-only sessions sent a dozen requests or more, the others a few: of those with 4
    # or more, the chance that round robin sent all to one node is at most 1 in 27 each.
    chatty = [nodes for nodes in servers.values() if len(nodes) >= 4]
    assert len(chatty) >= sum(m.kind.endswith("polling") for m in members)
    spread = [nodes for nodes in chatty if len(set(nodes)) > 1]
    assert len(spread) >= 0.9 * len(chatty), (len(spread), len(chatty))
    assert forwarded > len(members) and spliced > 0
    stats = await forward_counters(cluster)
    assert all(s["forward_failed"] == 0 for s in stats.values()), stats
    assert all(s["forwarded_requests"] > 0 for s in stats.values()), stats


def _other_sid(old: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: bool(event["sid"] != old)


async def test_a_polling_sessions_node_killed_costs_only_its_sessions(
    tmp_path: Path, js: Driver
) -> None:
    """kill -9 of the node that holds some polling sessions, while their clients poll through
    the balancer: those clients lose their session (its sid is then answered with the official
    400 by every node), reconnect through the balancer to a live node and rejoin. The other
    sessions keep their sid and connection, except those whose request was passing through the
    dead node at that moment (HAProxy answered it 502, as any dead hop would): those reconnect
    too, and HAProxy's log names exactly them."""
    async with balanced_cluster(tmp_path) as (cluster, lb):
        reconnecting = {"reconnection": True, "reconnectionDelay": 100, "reconnectionDelayMax": 200}
        clients = [js.connect(f"p{i}", lb.url, "polling", options=reconnecting) for i in range(12)]
        engines: dict[str, str] = {}
        for c in clients:
            engines[c.id] = (await c.connected())["engine"]
            await c.call("join", "all")
        tags = await owners(cluster)
        victim = tags[clients[0].sid[:8]]
        victim_server = lb.servers[cluster.nodes[victim].url]
        owned = {c.id for c in clients if tags[c.sid[:8]] == victim}
        sids = {c.id: c.sid for c in clients}
        logged_before = len(_log(lb))

        def cut_in_transit() -> set[str]:
            """The clients of other nodes' sessions whose request the dead node was carrying."""
            cut = set()
            for request in _log(lb)[logged_before:]:
                sid = SID.search(request.group(4))
                if request.group(1) == victim_server and not _served(request) and sid:
                    cut |= {c for c, e in engines.items() if e == sid.group(1)}
            return cut - owned

        async def back(c: JsClient) -> None:
            """Wait until ``c`` reconnected to a live node with a new sid, and rejoin."""
            event = await js.wait_for(c.mine("connect", _other_sid(sids[c.id])), f"{c.id} back")
            assert tags[event["sid"][:8]] != victim
            c.sid = event["sid"]
            await c.call("join", "all")

        async with aiohttp.ClientSession() as http:
            # A raw session of the victim, polled through the balancer after the kill.
            async with http.get(cluster.nodes[victim].url + EIO + "polling") as resp:
                body = await resp.text()
            raw = body[body.index('"sid":"') + 7 :][:28]

            cluster.nodes[victim].proc.kill9()
            by_id = {c.id: c for c in clients}
            for cid in sorted(owned):
                assert await by_id[cid].disconnected() == "transport error"
                await back(by_id[cid])
            for _ in range(6):  # round robin: every live node answers it, none knows it
                async with http.get(f"{lb.url}{EIO}polling&sid={raw}") as resp:
                    assert resp.status == 400
                    assert await resp.json() == UNKNOWN_SID
            cut = cut_in_transit()
            for cid in sorted(cut):
                await back(by_id[cid])

        untouched = [c for c in clients if c.id not in owned | cut]
        assert untouched, "nothing left to compare"
        await untouched[0].call("publish", {"room": "all", "event": "after", "data": "kill"})
        for c in clients:
            if c is not untouched[0]:
                await c.event("after")
        for c in untouched:
            assert (await c.info())["sid"] == sids[c.id]
        dropped = {e["id"] for e in js.events if e["type"] == "disconnect"}
        assert dropped == owned | cut_in_transit()
