"""A rolling restart under traffic, with connection state recovery: nothing lost, nothing twice.

Three nodes started by the CLI (uvloop) behind HAProxy in round robin with no affinity; the
official Node client, reconnecting by itself. Receivers join rooms, publishers (other clients,
in no room) publish numbered messages to those rooms without pause, while every node in turn
is drained (``roomcast drain``) and replaced by a freshly started node (a new tag) that takes
its place in the balancer, until none of the three original nodes is left; meanwhile two
receivers join a room and leave another. Each client whose node drains reconnects through the
balancer to some other node and recovers there: the same sid, every message once and in
order. Every wait is on an event: a client's report, a node's counters, a process's exit.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support.cluster_harness import Cluster, running_cluster, unique, wait_until
from support.haproxy import Balancer, balancer, needs_haproxy
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    JsClient,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
)
from support.timing import seconds

pytestmark = [pytest.mark.multinode, needs_haproxy, *JS_TEST_MARKS]

CONFIG = """
[recovery]
enabled = true
"""

#: socket.io-client's own reconnection, quick: a client whose node drains comes back at once.
RECONNECTING = {
    "reconnection": True,
    "reconnectionDelay": 50,
    "reconnectionDelayMax": 200,
    "randomizationFactor": 0.5,
}

ROOMS = 4
#: The rooms of each receiver, in turn (indexes into the test's rooms).
MEMBERSHIPS = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3)]
RECEIVERS = 18
#: The receivers' transports, in turn: WebSocket only, and long-polling only (each request of
#: a polling session may reach any node, which forwards it to the session's). Not polling then
#: WebSocket: when an upgrade's WebSocket dies after the probe's answer, socket.io-client
#: (engine.io-client 6.6) leaves its polling paused and is silent until its ping timeout
#: (pingInterval + pingTimeout, 45 s), which this test hit about once in 40 runs.
TRANSPORTS = ["websocket", "websocket", "polling"]
#: Receivers whose rooms change during the restart: (transport, their rooms at first, the room
#: they join once the first node is replaced, the room they leave once the second is).
MOVERS = [("polling", (0, 1), 3, 1), ("websocket", (2, 3), 1, 2)]
#: What each publisher publishes to: one room, or several at once (a member of two of them
#: gets the message once).
PUBLISHES = [(0,), (1,), (2,), (3,), (0, 2)]
#: The drain window: the node closes its connections spread over it.
DRAIN_WINDOW = 0.6
#: A publisher's pause between two publishes: the traffic's rate (nothing waits on it).
PACE = 0.03


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, "n1", "n2", "n3", extra_config=CONFIG) as c:
        yield c


@dataclass
class Publisher:
    """A client that publishes ``{"p": index, "n": 1, 2, ...}`` to its rooms, one at a time,
    each once its previous one is acked."""

    index: int
    client: JsClient
    rooms: list[str]
    #: The numbers acked, in order: each was published.
    acked: list[int] = field(default_factory=list)
    #: The number being published (0: none yet); the next one is sent after anything the
    #: test saw happen by now.
    current: int = 0
    #: Publishes whose client lost its connection before their ack (``socket has been
    #: disconnected``), published again under the same number. The node never read them: the
    #: relay's publish answers in the step that reads it, and a drain's close goes out after
    #: what was queued (were that wrong, receivers would get the number twice, and say so).
    retried: int = 0

    async def publish(self, n: int) -> None:
        driver = self.client.driver
        message = {"room": self.rooms, "event": "chat", "data": {"p": self.index, "n": n}}
        self.current = n
        while True:
            ref = driver.ref()
            acked = self.client.mine("ack", first_is(ref, key="ref"))
            since = len(driver.events)
            # Long enough for a reconnection and a recovery: the client buffers the publish
            # while it is away and sends it once it is back.
            driver.send(
                cmd="emit",
                id=self.client.id,
                event="publish",
                args=[message],
                ref=ref,
                timeout=20000,
            )
            ack = await driver.wait_for(
                acked,
                f"{self.client.id} ack of {n}",
                timeout=seconds(25),
                since=since,
            )
            if ack["error"] == "socket has been disconnected":
                self.retried += 1
                continue
            assert ack["error"] is None and ack["args"] == [{"ok": True}], ack
            self.acked.append(n)
            return

    async def run(self, stop: asyncio.Event) -> None:
        for n in itertools.count(1):
            if stop.is_set():
                return
            await self.publish(n)
            await asyncio.sleep(PACE)


@dataclass
class Receiver:
    """A client in some rooms, which may join one and leave another during the restart."""

    client: JsClient
    rooms: set[str]
    joins: str | None = None
    leaves: str | None = None
    #: By publisher: the first number sent once the join (the leave) was acked.
    joined_from: dict[int, int] = field(default_factory=dict)
    left_from: dict[int, int] = field(default_factory=dict)

    async def change(self, room: str, how: str, publishers: list[Publisher]) -> None:
        """Join or leave ``room``; note where each publisher was when the ack came."""
        [ack] = await self.client.call(how, room)
        assert ack["ok"] is True, ack
        marks = self.joined_from if how == "join" else self.left_from
        marks.update((p.index, p.current + 1) for p in publishers)

    def check(self, p: Publisher, got: list[int]) -> None:
        """What it got from ``p``: everything while it was in one of ``p``'s rooms, once, in
        order. A message published while it joined (left) may or may not reach it (the room
        is judged where and when the message is delivered), but nothing is skipped."""
        after_join = self.rooms | ({self.joins} if self.joins else set())
        after_leave = after_join - {self.leaves}
        member = tuple(bool(set(p.rooms) & r) for r in (self.rooms, after_join, after_leave))
        acked, where = p.acked, (self.client.id, p.index)
        if member == (True, True, True):
            assert got == acked, (*where, _diff(got, acked))
        elif member == (False, False, False):
            assert got == [], (*where, _diff(got, []))
        elif member == (False, True, True):  # joined: all from the join on, none skipped
            start = self.joined_from[p.index]
            tail = [n for n in acked if n >= start]
            assert got == acked[len(acked) - len(got) :], (*where, _diff(got, tail))
            assert set(tail) <= set(got), (*where, _diff(got, tail))
        elif member == (True, True, False):  # left: all until the leave, none after
            end = self.left_from[p.index]
            head = [n for n in acked if n < end]
            assert got == acked[: len(got)], (*where, _diff(got, head))
            assert all(n < end for n in got), (*where, _diff(got, head))
        else:
            raise AssertionError(f"{where}: not a membership this test makes: {member}")


def first_is(value: Any, key: Any = 0) -> Callable[[Any], bool]:
    """A predicate: ``x[key] == value``."""
    return lambda x: bool(x[key] == value)


def of_type(events: list[dict[str, Any]], kind: str) -> dict[str, list[dict[str, Any]]]:
    """The reports of ``kind`` (``connect``, ``disconnect``...), by client."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event["type"] == kind:
            out[event["id"]].append(event)
    return out


async def replace(cluster: Cluster, lb: Balancer, old: str, new: str) -> None:
    """Drain ``old`` and put the fresh node ``new`` in its place in the balancer; returns once
    ``old`` has exited (every session it kept was taken over elsewhere) and the three nodes
    left see each other."""
    drained = cluster.nodes[old]
    code, _, err = await cluster.cli("drain", old, "--window", str(DRAIN_WINDOW))
    assert code == 0, err
    # The new node starts while the old one drains, and gets clients once every node knows
    # it (a client coming back to it is claimed from the node that keeps its session).
    fresh = await cluster.start_node(new)
    staying = [name for name in cluster.nodes if name != old]
    await cluster.converged(staying)  # the old node may have left already
    await lb.replace_backend(drained.url, fresh.url)
    assert await drained.proc.wait(seconds(30)) == 0
    del cluster.nodes[old]
    cluster.write_config()
    await cluster.converged(staying)


@pytest.mark.timeout(180)
async def test_a_rolling_restart_loses_nothing(
    cluster: Cluster, js: Driver, tmp_path: Path
) -> None:
    """n1, n2 and n3 drained and replaced in turn under steady numbered traffic: every
    client (receivers and publishers) reconnected only by recovering, kept its sid, and every
    receiver got each message published to its rooms exactly once, in each publisher's order."""
    rooms = [unique(f"room{i}") for i in range(ROOMS)]
    urls = [node.url for node in cluster.nodes.values()]
    async with balancer(urls, tmp_path) as lb:

        def connect(name: str, transport: str) -> JsClient:
            return js.connect(name, lb.url, transport, namespace="/any", options=RECONNECTING)

        receivers = [
            Receiver(
                connect(f"r{i:02d}", TRANSPORTS[i % 3]),
                {rooms[r] for r in MEMBERSHIPS[i % len(MEMBERSHIPS)]},
            )
            for i in range(RECEIVERS)
        ]
        receivers += [
            Receiver(connect(f"m{i}", transport), {rooms[r] for r in first}, rooms[j], rooms[k])
            for i, (transport, first, j, k) in enumerate(MOVERS)
        ]
        senders = [connect(f"p{i}", "websocket") for i in range(len(PUBLISHES))]
        clients = [r.client for r in receivers] + senders
        await asyncio.gather(*(c.connected() for c in clients))
        sids = {c.id: c.sid for c in clients}
        for r in receivers:
            [ack] = await r.client.call("join", sorted(r.rooms))
            assert ack["ok"] is True, ack
        # Round robin spread them: every node has clients to hand over.
        on = Counter(sid[:8] for sid in sids.values())
        assert len(on) == 3, on

        publishers = [
            Publisher(i, c, [rooms[r] for r in PUBLISHES[i]]) for i, c in enumerate(senders)
        ]
        movers = [r for r in receivers if r.joins is not None]
        stop = asyncio.Event()
        traffic = [asyncio.create_task(p.run(stop)) for p in publishers]
        try:
            # Traffic flows before the first drain.
            await wait_until(lambda: all(len(p.acked) >= 3 for p in publishers), what="traffic")
            await replace(cluster, lb, "n1", "n4")
            for m in movers:
                assert m.joins is not None
                await m.change(m.joins, "join", publishers)
            await replace(cluster, lb, "n2", "n5")
            for m in movers:
                assert m.leaves is not None
                await m.change(m.leaves, "leave", publishers)
            await replace(cluster, lb, "n3", "n6")
            stop.set()
            await asyncio.gather(*traffic)
        finally:
            stop.set()
            for task in traffic:
                task.cancel()
            await asyncio.gather(*traffic, return_exceptions=True)

        # Every receiver has the last message of each publisher to the rooms it is in now
        # (one router: each publisher's messages reach it in the order they were sent, its
        # node's reply that hands its session over included). What it had from the rooms it
        # left, it had before its leave was acked.
        for r in receivers:
            now = (r.rooms | ({r.joins} if r.joins else set())) - {r.leaves}
            for p in publishers:
                if set(p.rooms) & now:
                    last = first_is({"p": p.index, "n": p.acked[-1]})
                    try:
                        await r.client.event("chat", last)
                    except AssertionError as exc:
                        why = await _why_not(cluster, r, sorted(now))
                        raise AssertionError(f"{why}\n{exc}") from None

        # Exactly what each receiver had to get: once each, in order, nothing skipped.
        for r in receivers:
            got: dict[int, list[int]] = {p.index: [] for p in publishers}
            for args in r.client.received("chat"):
                got[args[0]["p"]].append(args[0]["n"])
            for p in publishers:
                r.check(p, got[p.index])

        # Some clients move once more as the last old node exits: a long poll it forwarded to
        # another node's session ends with it. Until every client is connected again, to a new
        # node. (socket.io-client reports
        # a disconnect for every connection it loses, even one that did not get as far as the
        # Socket.IO connect: only the last report says whether it is connected.)
        new_nodes = ("n4", "n5", "n6")
        pending: list[Any] = []

        async def settled() -> list[dict[str, Any]] | None:
            events = list(js.events)
            last: dict[str, str] = {}
            for event in events:
                if event["type"] in ("connect", "disconnect"):
                    last[event["id"]] = event["type"]
            away = [c.id for c in clients if last.get(c.id) != "connect"]
            stats = [await cluster.admin(name, "/admin/stats") for name in new_nodes]
            counts = [(s["sockets"], s["sessions_kept"]) for s in stats]
            pending[:] = [{c: _story(events, c) for c in away}, counts]
            if away or sum(n for n, _ in counts) != len(clients) or any(k for _, k in counts):
                return None
            return events

        try:
            events = await wait_until(settled, what="every client connected to a new node")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (away, (sockets, kept) per node: {pending})") from None

        # Each client reconnected only by recovering its session, under the same sid.
        ups = of_type(events, "connect")
        for c in clients:
            first, *again = ups[c.id]
            assert first["sid"] == sids[c.id]
            assert [e["recovered"] for e in again] == [True] * len(again), (c.id, again)
            assert {e["sid"] for e in again} <= {sids[c.id]}, (c.id, again)
            assert again, f"{c.id} was never moved"
        moved = sum(len(ups[c.id]) - 1 for c in clients)
        stats = [await cluster.admin(name, "/admin/stats") for name in new_nodes]
        assert all(not s["recoveries_refused"] for s in stats), stats
        refused = len([e for e in events if e["type"] == "connect_error"])
        print(
            f"{moved} recoveries ({refused} reconnection attempts refused first); published "
            f"{sum(len(p.acked) for p in publishers)}, retried {sum(p.retried for p in publishers)}"
        )


def _story(events: list[dict[str, Any]], client: str) -> list[tuple[Any, ...]]:
    """A client's last connects, disconnects and errors, with the detail of each."""
    kinds = {"connect": "recovered", "disconnect": "reason", "connect_error": "message"}
    return [
        (e["type"], e[kinds[e["type"]]], e.get("transport"), e.get("engine"))
        for e in events
        if e.get("id") == client and e["type"] in kinds
    ][-12:]


async def _why_not(cluster: Cluster, r: Receiver, rooms: list[str]) -> str:
    """What a receiver that is not getting messages looks like: its last reports, what its
    client says, where the nodes see its socket."""
    c = r.client
    lines = [f"{c.id} (sid {c.sid}), its last reports:"]
    mine = [e for e in c.driver.events if e.get("id") == c.id][-25:]
    lines += [f"  {str(e)[:240]}" for e in mine]
    lines.append(f"  client now: {await c.info()}")
    for room in rooms:
        doc = await cluster.admin("n4", f"/admin/room?namespace=/any&name={room}&members=1")
        found = [m for m in doc.get("sockets", []) if m["id"] == c.sid]
        lines.append(f"  {room}: {doc['nodes']}, its socket: {found}")
    for name in ("n4", "n5", "n6"):
        st = await cluster.admin(name, "/admin/stats")
        keys = ("connections", "sockets", "sessions_kept", "recoveries_succeeded", "upgrades")
        lines.append(f"  {name}: { ({k: st[k] for k in keys}) }")
    return "\n".join(lines)


def _diff(got: list[int], expected: list[int]) -> dict[str, Any]:
    """What differs between the numbers received and those expected: missing, twice, order."""
    seen = Counter(got)
    return {
        "missing": sorted(set(expected) - set(got)),
        "twice": sorted(n for n, k in seen.items() if k > 1),
        "unexpected": sorted(set(got) - set(expected)),
        "in order": got == sorted(got),
        "count": (len(got), len(expected)),
    }
