"""The Admin UI's namespace on a cluster of processes, with a python-socketio client speaking as
the UI (``tests/support/admin_ui_client.py``): login and sessions valid on every node, one
``server_stats`` stream per node, ``all_sockets`` of the whole cluster, the commands acting
on sockets of another node than the UI's, and no admin traffic while no admin socket is
connected anywhere."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import zmq
from support.admin_ui_client import (
    ADMIN_NS,
    AdminPeer,
    ConnectAdmin,
    admin_clients,
    admin_ui_config,
    refused_login,
)
from support.cluster_clients import Connect, clients
from support.cluster_harness import Cluster, running_cluster, unique, wait_until

from roomcast.cluster import wire
from roomcast.node.admin_ui import VIEWERS

pytestmark = [pytest.mark.multinode, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """A router and two nodes serving the Admin UI."""
    async with running_cluster(
        tmp_path_factory.mktemp("admin-ui"), "n1", "n2", extra_config=admin_ui_config()
    ) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def connect() -> AsyncIterator[Connect]:
    async with clients() as factory:
        yield factory


@pytest_asyncio.fixture(loop_scope="module")
async def connect_admin() -> AsyncIterator[ConnectAdmin]:
    async with admin_clients() as factory:
        yield factory


def listed(admin: AdminPeer, sid: str) -> dict[str, Any] | None:
    """The socket ``sid`` in the UI's last ``all_sockets``."""
    sockets = admin.got("all_sockets", ADMIN_NS)[-1]
    return next((s for s in sockets if s["id"] == sid), None)


async def test_a_wrong_password_gets_the_uis_login_error(cluster: Cluster) -> None:
    """A wrong password, an unknown user and a forged session id are refused with the message
    the UI shows in its login form."""
    url = cluster.nodes["n1"].url
    for auth in (
        {"username": "admin", "password": "wrong"},
        {"username": "root", "password": "let me in"},
        {"sessionId": "00.99999999999.00"},
    ):
        assert await refused_login(url, auth) == {"message": "invalid credentials"}


async def test_login_gives_a_session_config_and_every_nodes_view(
    cluster: Cluster, connect: Connect, connect_admin: ConnectAdmin
) -> None:
    """The UI logged in on n1 gets a session id, the features, the sockets of both nodes with
    their rooms, and server_stats from each node as its own server."""
    room = unique("admin")
    a, b = await connect(cluster, "n1"), await connect(cluster, "n2")
    await a.join(room)
    await b.join(room)
    await cluster.wait_room(room, {"n1": 1, "n2": 1})
    admin = await connect_admin(cluster.nodes["n1"].url)
    [session] = await admin.wait_for("session", namespace=ADMIN_NS)
    assert isinstance(session, str) and session
    [config] = await admin.wait_for("config", namespace=ADMIN_NS)
    assert set(config["supportedFeatures"]) >= {"EMIT", "JOIN", "LEAVE", "DISCONNECT"}
    assert "ALL_EVENTS" in config["supportedFeatures"]
    # This node's sockets at once, then the cluster's.
    await admin.wait_for("all_sockets", count=2, namespace=ADMIN_NS)
    for peer in (a, b):
        entry = listed(admin, peer.sid)
        assert entry is not None, peer.sid
        assert entry["nsp"] == "/"
        assert set(entry["rooms"]) == {peer.sid, room}
        assert entry["transport"] == "websocket"
        assert entry["handshake"]["url"].startswith("/socket.io/")
    await wait_until(lambda: admin.stats_of("n1") and admin.stats_of("n2"), what="both servers")
    stats = admin.stats_of("n2")[-1]
    assert {"hostname", "pid", "uptime", "clientsCount", "pollingClientsCount"} <= set(stats)
    assert {"name": "/", "socketsCount": 1} in stats["namespaces"]


async def test_a_session_from_one_node_logs_in_on_the_other(
    cluster: Cluster, connect_admin: ConnectAdmin
) -> None:
    """The session id n1 issued lets the UI reconnect to n2 without the password (no store: the
    id is signed with a key both nodes derive from the config)."""
    first = await connect_admin(cluster.nodes["n1"].url)
    [session] = await first.wait_for("session", namespace=ADMIN_NS)
    again = await connect_admin(cluster.nodes["n2"].url, {"sessionId": session})
    await again.wait_for("config", namespace=ADMIN_NS)
    assert again.got("session", ADMIN_NS) == []


async def test_commands_act_on_another_nodes_sockets(
    cluster: Cluster, connect: Connect, connect_admin: ConnectAdmin
) -> None:
    """From the UI on n1: a socket of n2 is made to join a room, an emit to that room reaches
    it, it is made to leave, and it is disconnected."""
    room = unique("cmd")
    target = await connect(cluster, "n2")
    admin = await connect_admin(cluster.nodes["n1"].url)
    await admin.wait_for("config", namespace=ADMIN_NS)
    await admin.send("join", "/", room, target.sid)
    await cluster.wait_room(room, {"n2": 1})
    await admin.send("emit", "/", room, "from-ui", {"n": 1})
    await target.wait_for_value("from-ui", {"n": 1})
    await admin.send("leave", "/", room, target.sid)
    await cluster.wait_room(room, {})
    await admin.send("_disconnect", "/", False, target.sid)
    await target.wait_disconnected()


async def test_development_events_of_another_nodes_sockets(
    cluster: Cluster, connect: Connect, connect_admin: ConnectAdmin
) -> None:
    """The UI on n1 is told, live, of a socket on n2: its connection, the room it joins, the
    event it sends and the ack-less event it is sent, its disconnection with the reason."""
    room = unique("dev")
    admin = await connect_admin(cluster.nodes["n1"].url)
    # n2 sends to the UI once its replica shows the UI's socket (gossip): from then on.
    await wait_until(lambda: admin.stats_of("n2"), what="n2 to see the UI")
    peer = await connect(cluster, "n2")
    sid = peer.sid

    def about(event: str) -> list[Any]:
        return [
            args
            for args in admin.got(event, ADMIN_NS)
            if sid in args or (isinstance(args[0], dict) and args[0].get("id") == sid)
        ]

    await wait_until(lambda: about("socket_connected"), what="socket_connected")
    [(socket, _)] = about("socket_connected")
    assert socket["nsp"] == "/" and socket["rooms"] == [sid]
    await peer.join(room)
    await wait_until(lambda: about("room_joined"), what="room_joined")
    assert about("room_joined")[0][:3] == ("/", room, sid)
    assert any(args[2][0] == "join" for args in about("event_received"))
    await admin.send("_disconnect", "/", False, sid)
    await wait_until(lambda: about("socket_disconnected"), what="socket_disconnected")
    assert about("socket_disconnected")[0][:3] == ("/", sid, "server namespace disconnect")


async def admin_stats(cluster: Cluster, node: str) -> dict[str, Any]:
    stats: dict[str, Any] = await cluster.admin(node, "/admin/stats")
    return stats


async def sent_to_viewers(cluster: Cluster) -> dict[str, dict[str, int]]:
    """What each node has sent the admin sockets of the cluster, by event."""
    return {n: (await admin_stats(cluster, n))["admin_ui_sent"] for n in ("n1", "n2")}


async def nobody_watching(cluster: Cluster) -> bool:
    """Whether both nodes know that no admin socket is connected anywhere."""
    return not any([(await admin_stats(cluster, n))["admin_ui_watched"] for n in ("n1", "n2")])


class Tap:
    """A raw subscriber at the router's publishing side, on the topic of the admin sockets'
    room and on one room's: each bus message on them as (topic, origin, kind, bytes), in the
    order the router sent them. With one router, one node's messages keep their order."""

    def __init__(self, cluster: Cluster, room: str) -> None:
        self.viewers = wire.room_topic(ADMIN_NS, VIEWERS)
        self.room = wire.room_topic("/", room)
        self.heard: list[tuple[bytes, str, wire.Kind, bytes]] = []
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        for topic in (self.viewers, self.room):
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._sub.connect(f"tcp://127.0.0.1:{cluster.xpub_port}")

    def read(self) -> list[tuple[bytes, str, wire.Kind, bytes]]:
        """Everything heard so far."""
        while self._sub.poll(0):
            frame = self._sub.recv()
            topic, start = wire.split_message(frame)
            header, _ = wire.decode(frame, start)
            self.heard.append((topic, header.origin, header.kind, frame))
        return self.heard

    def position_of(self, marker: str) -> int | None:
        """The place just after the room message carrying ``marker``, once heard."""
        for i, (topic, _, _, frame) in enumerate(self.read()):
            if topic == self.room and marker.encode() in frame:
                return i + 1
        return None

    def viewers_from(self, node: str, start: int, end: int | None = None) -> int:
        """Messages of ``node`` to the admin sockets heard between two places. Probes of that
        topic are not the UI's traffic but the bus proving a subscription: one of an admin
        socket that left while joining is retried until the join's deadline."""
        heard = self.read()[start:end]
        return sum(
            1 for t, o, k, _ in heard if t == self.viewers and o == node and k == wire.Kind.ROOM
        )

    def close(self) -> None:
        self._sub.close(0)
        self._ctx.term()


@contextlib.contextmanager
def tapped(cluster: Cluster, room: str) -> Iterator[Tap]:
    tap = Tap(cluster, room)
    try:
        yield tap
    finally:
        tap.close()


async def fence(tap: Tap, fencer: Any, room: str) -> int:
    """``fencer`` (a member of ``room`` on n2) publishes a fresh marker to it; once the tap
    hears it, it has heard whatever n2 published before. Returns the place after it."""
    marker = unique("fence")
    await fencer.publish(room, "fence", marker)
    place: int = await wait_until(lambda: tap.position_of(marker), what="the tap to hear a fence")
    return place


async def life_of_a_socket(cluster: Cluster, connect: Connect, listener: Any, room: str) -> str:
    """A socket on n2 connects, joins ``room``, publishes to it (``listener`` on n1 receives
    it) and disconnects (n2 counts one socket less); returns its sid. Each step is done when
    this returns: what n2 tells the UI of it is sent (or not) in the step itself."""
    sockets = (await admin_stats(cluster, "n2"))["sockets"]
    peer = await connect(cluster, "n2")
    sid = peer.sid
    await peer.join(room)
    await peer.publish(room, "tick", sid)
    await listener.wait_for_value("tick", sid)
    await peer.client.disconnect()

    async def gone() -> bool:
        return bool((await admin_stats(cluster, "n2"))["sockets"] == sockets)

    await wait_until(gone, what="n2 to count the socket gone")
    return sid


async def test_no_admin_socket_anywhere_means_no_admin_traffic(
    cluster: Cluster, connect: Connect, connect_admin: ConnectAdmin
) -> None:
    """While no admin socket is connected to any node, a socket's life on n2 (connect, join,
    publish, disconnect) puts no message for the UI on the bus (a raw subscriber of the
    router hears none from n2) and neither node counts one sent; an admin socket on n1 is told
    of such a socket on n2 live, through the bus; once it is gone and both nodes know it, n2 is
    silent again."""
    room = unique("quiet")
    listener = await connect(cluster, "n1")
    fencer = await connect(cluster, "n2")
    await listener.join(room)
    await fencer.join(room)
    await cluster.wait_room(room, {"n1": 1, "n2": 1})
    with tapped(cluster, room) as tap:

        async def tap_live() -> bool:  # its subscription reached the router
            await fencer.publish(room, "warm-up", None)
            return any(b"warm-up" in frame for t, _, _, frame in tap.read() if t == tap.room)

        await wait_until(tap_live, what="the tap's subscription to be live")
        await wait_until(lambda: nobody_watching(cluster), what="earlier tests' UIs to be gone")
        start, before = await fence(tap, fencer, room), await sent_to_viewers(cluster)
        await life_of_a_socket(cluster, connect, listener, room)
        assert tap.viewers_from("n2", start, await fence(tap, fencer, room)) == 0
        assert await sent_to_viewers(cluster) == before

        admin = await connect_admin(cluster.nodes["n1"].url)
        await wait_until(lambda: admin.stats_of("n2"), what="n2 to see the UI")  # gossip
        sid = await life_of_a_socket(cluster, connect, listener, room)
        for event in ("socket_connected", "room_joined", "event_received", "socket_disconnected"):

            def about(event: str = event) -> list[Any]:
                return [args for args in admin.got(event, ADMIN_NS) if sid in str(args)]

            await wait_until(about, what=event)
        # The tap hears what n2 sends the UI (as n1 does, from the same router).
        await wait_until(lambda: tap.viewers_from("n2", start), what="the tap to hear n2's")
        moved = await sent_to_viewers(cluster)
        assert moved["n2"]["socket_connected"] > before["n2"].get("socket_connected", 0)

        await admin.client.disconnect()
        await wait_until(lambda: nobody_watching(cluster), what="both nodes to see the UI gone")
        start, quiet = await fence(tap, fencer, room), await sent_to_viewers(cluster)
        await life_of_a_socket(cluster, connect, listener, room)
        assert tap.viewers_from("n2", start, await fence(tap, fencer, room)) == 0
        assert await sent_to_viewers(cluster) == quiet


async def test_a_silent_node_costs_the_ui_only_its_own_sockets(
    tmp_path: Path, connect: Connect, connect_admin: ConnectAdmin
) -> None:
    """n3 killed -9 and not yet known down: the UI on n1 gets n1's sockets at once, then the
    cluster's with n2's and without n3's (after the request deadline, never forever)."""
    slow_down = {"suspect_after_ms": 60_000, "down_after_ms": 120_000, "request_timeout_ms": 500}
    async with running_cluster(
        tmp_path, "n1", "n2", "n3", extra_config=admin_ui_config(), cluster_settings=slow_down
    ) as c:
        here, there, silent = [await connect(c, n) for n in ("n1", "n2", "n3")]
        silent_sid = silent.sid
        c.nodes["n3"].proc.kill9()
        admin = await connect_admin(c.nodes["n1"].url)
        first, second = await admin.wait_for("all_sockets", count=2, namespace=ADMIN_NS)
        assert {s["id"] for s in first if s["nsp"] == "/"} == {here.sid}
        assert {s["id"] for s in second if s["nsp"] == "/"} == {here.sid, there.sid}
        assert silent_sid not in {s["id"] for s in second}
