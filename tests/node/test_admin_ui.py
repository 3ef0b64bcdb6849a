"""The Admin UI's pure parts (session ids, features, what a socket looks like to the UI, the
aggregated events) and its namespace on one in-process node: the gate that keeps a node silent
while no admin socket is connected anywhere, and read-only mode."""

from __future__ import annotations

import contextlib
import copy
import json
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import socketio
from support.admin_ui_client import ADMIN_NS, AdminPeer, admin_clients, admin_ui_config
from support.cluster_harness import TIMEOUT, wait_until
from support.scrape import scrape

from roomcast.config import AdminUISettings
from roomcast.node import admin_ui
from roomcast.node.adapter import Handshake, SocketInfo
from roomcast.node.server import Server
from roomcast.node.stats import NodeStats

NodeFactory = Callable[..., Awaitable[Server]]  # the ``start_node`` fixture (tests/conftest.py)

KEY = admin_ui.session_key("$2b$04$" + "a" * 53)


def test_a_session_is_valid_with_its_key_until_it_expires() -> None:
    """A session id checks with the key it was issued with, until its expiry, and not with
    another key, nor altered."""
    session = admin_ui.new_session(KEY, now=1000.0, ttl=60.0)
    assert admin_ui.session_valid(KEY, session, 1059.0)
    assert not admin_ui.session_valid(KEY, session, 1060.0)
    assert not admin_ui.session_valid(admin_ui.session_key("other"), session, 1001.0)
    nonce, expiry, mac = session.split(".")
    assert not admin_ui.session_valid(KEY, f"{nonce}.{int(expiry) + 999}.{mac}", 1001.0)
    for garbage in (None, 42, "", "x", "a.b.c", "." * 200):
        assert not admin_ui.session_valid(KEY, garbage, 1001.0)


def test_features_follow_mode_and_readonly() -> None:
    """Commands unless read-only; every event in development mode; aggregated events always."""
    F = admin_ui.Feature
    dev = admin_ui.features(AdminUISettings())
    assert {F.EMIT, F.JOIN, F.LEAVE, F.DISCONNECT, F.ALL_EVENTS, F.AGGREGATED_EVENTS} <= set(dev)
    production = admin_ui.features(AdminUISettings(mode="production", readonly=True))
    assert production == [F.AGGREGATED_EVENTS]


def test_a_socket_is_serialized_as_the_ui_expects() -> None:
    """Id, namespace, rooms with its own, handshake fields, and dict data only."""
    headers = {"Origin": "http://x", "X-Forwarded-For": "1.2.3.4"}
    hs = Handshake(headers, {"EIO": "4"}, {}, "127.0.0.1", 1.5, "/socket.io/?EIO=4", False)
    info = SocketInfo("sid1", "/chat", frozenset({"lobby"}), {"user": "ann"}, hs, "n1", "websocket")
    out = admin_ui.serialize_socket(info)
    assert out["id"] == "sid1" and out["nsp"] == "/chat"
    assert out["transport"] == "websocket"
    assert out["rooms"] == ["lobby", "sid1"]
    assert out["data"] == {"user": "ann"}
    assert out["handshake"]["address"] == "1.2.3.4"
    assert out["handshake"]["xdomain"] is True
    assert out["handshake"]["issued"] == 1500
    assert out["handshake"]["time"] == "1970-01-01T00:00:01.500Z"
    bare = SocketInfo("s", "/", frozenset(), [1], None, "n1")
    assert admin_ui.serialize_socket(bare)["data"] == {}
    assert admin_ui.serialize_socket(bare)["handshake"] == {}


def test_aggregated_events_are_the_moves_since_the_last_stats() -> None:
    """Each counter's move since the previous stats, stamped with the second; disconnections by
    reason; nothing for counters that did not move."""
    stats = NodeStats()
    aggregates = admin_ui.Aggregates(stats)
    stats.connections_opened += 2
    stats.closed_by_reason["transport close"] += 1
    events = aggregates.take(12.7)
    assert {"timestamp": 12000, "type": "rawConnection", "count": 2} in events
    assert {
        "timestamp": 12000,
        "type": "rawDisconnection",
        "subType": "transport close",
        "count": 1,
    } in events
    assert len(events) == 2
    assert aggregates.take(13.0) == []


def admin_node_settings(**overrides: Any) -> dict[str, Any]:
    """``[admin_ui]`` of the tests as dotted overrides of an in-process node's settings."""
    table = tomllib.loads(admin_ui_config(**overrides))["admin_ui"]
    return {f"admin_ui.{k}": v for k, v in table.items()}


async def test_a_node_is_silent_until_an_admin_socket_connects(start_node: NodeFactory) -> None:
    """The node knows whether an admin socket is connected: it sends stats only then, and stops
    when the last one leaves; /metrics shows both (what it sent, whether anyone watches)."""
    server: Server = await start_node(**admin_node_settings())
    ui = server.admin_ui
    assert ui is not None and not ui.watched
    idle = await scrape(server.url + "/metrics")
    assert idle.value("roomcast_admin_ui_watched") == 0
    assert idle.total("roomcast_admin_ui_sent_total") == 0
    async with admin_clients() as connect_admin:
        admin = await connect_admin(server.url)
        await admin.wait_for("server_stats", namespace=ADMIN_NS)
        assert ui.watched
        watched = await scrape(server.url + "/metrics")
        assert watched.value("roomcast_admin_ui_watched") == 1
        sent = watched.value("roomcast_admin_ui_sent_total", event="server_stats")
        assert 1 <= sent <= server.stats.admin_ui_sent["server_stats"]  # it goes on sending
        await admin.client.disconnect()
        await wait_until(lambda: not ui.watched, what="the node to see nobody watching")


async def test_readonly_has_no_commands(start_node: NodeFactory) -> None:
    """In read-only mode no command is announced, and none has a handler: one sent anyway is
    dropped as an unknown event."""
    server: Server = await start_node(**admin_node_settings(readonly=True))
    async with admin_clients() as connect_admin:
        admin = await connect_admin(server.url)
        [config] = await admin.wait_for("config", namespace=ADMIN_NS)
        assert config["supportedFeatures"] == ["AGGREGATED_EVENTS", "ALL_EVENTS"]
    namespace = server.namespace(ADMIN_NS)
    assert namespace is not None
    for command in ("emit", "join", "leave", "_disconnect"):
        assert namespace.handler(command) is None


@contextlib.asynccontextmanager
async def watched_client(
    server: Server,
) -> AsyncIterator[tuple[AdminPeer, socketio.AsyncClient, dict[str, Any]]]:
    """An admin socket on ``server``, then a python-socketio client on ``/``: the admin,
    the client, and the socket the UI was told connected (the client is disconnected at the
    end)."""
    async with admin_clients() as connect_admin:
        admin = await connect_admin(server.url)
        await admin.wait_for("all_sockets", count=2, namespace=ADMIN_NS)
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(server.url, transports=["websocket"], wait_timeout=TIMEOUT)
        try:
            [(socket, _)] = await admin.wait_for("socket_connected", namespace=ADMIN_NS)
            yield admin, client, socket
        finally:
            await client.disconnect()


async def test_app_data_the_wire_cannot_carry_never_breaks_a_connect(
    start_node: NodeFactory,
) -> None:
    """A socket whose data holds what JSON cannot carry connects as usual; the UI is told of it
    with that value's repr."""

    def setup(server: Server) -> None:
        @server.use
        def mark(socket: Any, auth: Any) -> None:
            socket.data["opaque"] = {1, 2}

    server: Server = await start_node(setup, **admin_node_settings())
    async with watched_client(server) as (_, client, socket):
        assert socket["id"] == client.get_sid("/")
        assert socket["data"] == {"opaque": "{1, 2}"}


async def test_an_upgrade_updates_the_sockets_transport(start_node: NodeFactory) -> None:
    """A raw Engine.IO client connects by long-polling, then upgrades: the UI is told it
    connected on polling, then that its transport is the WebSocket."""
    server: Server = await start_node(**admin_node_settings())
    base = server.url + "/socket.io/?EIO=4&transport="
    async with admin_clients() as connect_admin, aiohttp.ClientSession() as http:
        admin = await connect_admin(server.url)
        await admin.wait_for("all_sockets", count=2, namespace=ADMIN_NS)
        async with http.get(base + "polling") as r:
            eio_sid = json.loads((await r.text())[1:])["sid"]
        polling = f"{base}polling&sid={eio_sid}"
        async with http.post(polling, data="40") as r:
            assert r.status == 200
        async with http.get(polling) as r:
            sid = json.loads((await r.text())[2:])["sid"]  # 40{"sid": ...}
        [(socket, _)] = await admin.wait_for("socket_connected", namespace=ADMIN_NS)
        assert (socket["id"], socket["transport"]) == (sid, "polling")
        async with http.ws_connect(f"{base}websocket&sid={eio_sid}") as ws:
            await ws.send_str("2probe")
            assert await ws.receive_str() == "3probe"
            await ws.send_str("5")
            [update] = await admin.wait_for("socket_updated", namespace=ADMIN_NS)
            assert update == {"id": sid, "nsp": "/", "transport": "websocket"}


async def test_assigning_socket_data_updates_the_socket(start_node: NodeFactory) -> None:
    """As the original's proxy of ``socket.data``: what a middleware sets arrives with
    ``socket_connected``; each assignment to a key afterwards (in the connect handler, in an
    event handler, by ``update``) is one ``socket_updated`` with the whole data; a deletion
    alone sends nothing, and a copy of the data is a plain dict."""

    def setup(server: Server) -> None:
        @server.use
        def mark(socket: Any, auth: Any) -> None:
            socket.data["user"] = "ann"

        def connected(socket: Any, auth: Any) -> None:
            socket.data["lobby"] = True

        def rename(socket: Any, name: str) -> bool:
            socket.data.update(user=name)
            del socket.data["lobby"]
            socket.data.setdefault("renames", 1)
            return type(copy.copy(socket.data)) is dict

        server.on("connect", connected)
        server.on("rename", rename)

    server: Server = await start_node(setup, **admin_node_settings())
    async with watched_client(server) as (admin, client, socket):
        sid = client.get_sid("/")
        assert (socket["id"], socket["data"]) == (sid, {"user": "ann"})
        [update] = await admin.wait_for("socket_updated", namespace=ADMIN_NS)
        assert update == {"id": sid, "nsp": "/", "data": {"user": "ann", "lobby": True}}
        assert await client.call("rename", "bob", timeout=TIMEOUT) is True
        updates = await admin.wait_for("socket_updated", count=3, namespace=ADMIN_NS)
        assert [u["data"] for u in updates[1:]] == [
            {"user": "bob", "lobby": True},
            {"user": "bob", "renames": 1},
        ]
        assert all(u.keys() == {"id", "nsp", "data"} for u in updates)
