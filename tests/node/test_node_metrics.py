"""``GET /metrics`` of an in-process node, scraped and parsed as Prometheus would, during
traffic: every counter moves by exactly what the test did, the access rule is /admin's, label
values never come from clients, and a node with metrics off serves none."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import socketio
from support.bad_input_harness import RawPolling, RawWebSocket
from support.cluster_harness import wait_until
from support.python_client_harness import NodeFactory
from support.scrape import Scrape, scrape, scrape_status
from support.timing import TIMEOUT

from roomcast.node.metrics import RECOVERY_REFUSALS
from roomcast.node.server import Server


@contextlib.asynccontextmanager
async def websocket_clients(
    server: Server, count: int, namespace: str = "/", **handlers: Any
) -> AsyncIterator[list[socketio.AsyncClient]]:
    """``count`` python-socketio clients on WebSocket, disconnected at the end."""
    clients = [socketio.AsyncClient(reconnection=False) for _ in range(count)]
    try:
        for client in clients:
            for event, handler in handlers.items():
                client.on(event, handler, namespace=namespace)
            await client.connect(
                server.url, transports=["websocket"], namespaces=[namespace], wait_timeout=TIMEOUT
            )
        yield clients
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), TIMEOUT)


def metrics_url(server: Server) -> str:
    return server.url + "/metrics"


async def test_counters_move_by_what_the_clients_did(node: Server) -> None:
    """3 connects, 3 joins and a publish to the room: connections, sockets, packets,
    broadcasts, deliveries and the fan-out histogram move by exactly that; a disconnect
    counts once, with its namespace."""
    url = metrics_url(node)
    before = await scrape(url)
    got: asyncio.Queue[Any] = asyncio.Queue()
    async with websocket_clients(node, 3, news=got.put_nowait) as clients:
        for client in clients:
            ack = await client.call("join", "lobby", timeout=TIMEOUT)
            assert ack["ok"] is True
        ack = await clients[0].call(
            "publish", {"room": "lobby", "event": "news", "data": 1}, timeout=TIMEOUT
        )
        assert ack == {"ok": True}
        for _ in range(2):
            assert await asyncio.wait_for(got.get(), TIMEOUT) == 1
        after = await scrape(url)
        assert after.delta(before, "roomcast_connections_opened_total", transport="websocket") == 3
        assert after.delta(before, "roomcast_connections_opened_total", transport="polling") == 0
        assert after.value("roomcast_connections", transport="websocket") == 3
        assert after.value("roomcast_sockets", namespace="/", transport="websocket") == 3
        assert after.delta(before, "roomcast_socket_connects_total", namespace="/") == 3
        assert after.value("roomcast_rooms", namespace="/") == 1
        # In: 3 CONNECT, 3 join, 1 publish. Out: 3 CONNECT answers, 4 acks, 2 deliveries.
        assert after.delta(before, "roomcast_packets_received_total") == 7
        assert after.delta(before, "roomcast_packets_sent_total") == 9
        assert after.delta(before, "roomcast_broadcasts_total", source="local") == 1
        assert after.delta(before, "roomcast_deliveries_total", source="local") == 2
        assert after.delta(before, "roomcast_deliveries_total", source="bus") == 0
        fanout = "roomcast_broadcast_fanout"
        assert after.delta(before, f"{fanout}_count", source="local") == 1
        assert after.delta(before, f"{fanout}_sum", source="local") == 2
        assert after.delta(before, f"{fanout}_bucket", source="local", le="1.0") == 0
        assert after.delta(before, f"{fanout}_bucket", source="local", le="2.0") == 1
        assert after.types[fanout] == "histogram"

        await clients[2].disconnect()

        async def two_left() -> Scrape | None:
            now = await scrape(url)
            gone = now.value("roomcast_sockets", namespace="/", transport="websocket") == 2
            return (
                now
                if gone and now.value("roomcast_connections", transport="websocket") == 2
                else None
            )

        gone = await wait_until(two_left, TIMEOUT, "the third client gone")
        assert (
            gone.total("roomcast_socket_disconnects_total", namespace="/")
            - before.total("roomcast_socket_disconnects_total", namespace="/")
            == 1
        )
        assert (
            gone.total("roomcast_connections_closed_total")
            - before.total("roomcast_connections_closed_total")
            == 1
        )


async def test_bytes_and_packets_of_raw_sessions(node: Server) -> None:
    """A raw WebSocket and a raw polling session: the bytes in and out move by exactly the
    frames and bodies that crossed, per transport."""
    url = metrics_url(node)
    async with aiohttp.ClientSession() as http:
        ws = await RawWebSocket.open(http, node)
        poll = await RawPolling.open(http, node)
        before = await scrape(url)
        join = '421["join","room-a"]'
        await ws.send(join)
        (ack,) = await ws.receive()
        assert ack.startswith("431[")
        body = '422["join","room-b"]'
        status, post_answer = await poll.post(body)
        assert status == 200
        status, get_answer = await poll.get()
        assert status == 200 and get_answer.startswith("432[")
        after = await scrape(url)
        await ws.ws.close()
    assert len(join) < 126 and len(ack) < 126  # one-byte lengths: 2-byte frame heads
    assert after.delta(before, "roomcast_bytes_received_total", transport="websocket") == (
        2 + 4 + len(join)  # a client's frames are masked: 4 bytes of mask
    )
    assert after.delta(before, "roomcast_bytes_sent_total", transport="websocket") == 2 + len(ack)
    assert after.delta(before, "roomcast_bytes_received_total", transport="polling") == len(body)
    assert after.delta(before, "roomcast_bytes_sent_total", transport="polling") == len(
        post_answer.encode()
    ) + len(get_answer.encode())
    assert after.delta(before, "roomcast_packets_received_total") == 2
    assert after.delta(before, "roomcast_packets_sent_total") == 2


async def test_a_limit_close_counts_its_reason(start_node: NodeFactory) -> None:
    """A session closed for a limit adds one to that reason, for the session and its socket."""
    server: Server = await start_node(**{"engineio.max_payload": 4096})
    url = metrics_url(server)
    async with aiohttp.ClientSession() as http:
        raw = await RawWebSocket.open(http, server)
        before = await scrape(url)
        await raw.send("4" + "x" * 5000)
        code, _ = await raw.close_frame()
        assert code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG

        async def socket_gone() -> Scrape | None:
            now = await scrape(url)
            return (
                now
                if now.value("roomcast_sockets", namespace="/", transport="websocket") == 0
                else None
            )

        after = await wait_until(socket_gone, TIMEOUT, "the socket gone")
    reason = "payload too large"
    assert after.delta(before, "roomcast_connections_closed_total", reason=reason) == 1
    assert (
        after.total("roomcast_connections_closed_total")
        - before.total("roomcast_connections_closed_total")
        == 1
    )
    assert (
        after.delta(before, "roomcast_socket_disconnects_total", namespace="/", reason=reason) == 1
    )


async def test_acked_broadcasts_are_broadcasts_too(node: Server) -> None:
    """A broadcast with acks counts as one broadcast and one delivery per recipient."""
    url = metrics_url(node)
    async with websocket_clients(node, 2, question=lambda *_: "yes") as clients:
        for client in clients:
            await client.call("join", "panel", timeout=TIMEOUT)
        before = await scrape(url)
        answers = await node.of("/").to("panel").timeout(TIMEOUT).emit_with_ack("question")
        assert answers == ["yes", "yes"]
        after = await scrape(url)
    assert after.delta(before, "roomcast_broadcasts_total", source="local") == 1
    assert after.delta(before, "roomcast_deliveries_total", source="local") == 2
    assert after.delta(before, "roomcast_broadcast_fanout_sum", source="local") == 2


async def test_no_label_value_comes_from_a_client(start_node: NodeFactory) -> None:
    """After many sockets in many rooms, a dynamic namespace's children and a client's junk
    reasons, no label value is a room, a sid, an Engine.IO sid or a namespace a client named."""

    def setup(server: Server) -> None:
        server.of(re.compile(r"/dyn-\d+"))

    server: Server = await start_node(setup=setup)
    rooms = [f"room-{i}-secret" for i in range(40)]
    sids: set[str] = set()
    async with websocket_clients(server, 10) as clients:
        for i, client in enumerate(clients):
            ack = await client.call("join", rooms[i * 4 : i * 4 + 4], timeout=TIMEOUT)
            assert ack["ok"] is True
            sids.add(client.get_sid("/"))
            await client.call("publish", {"room": rooms[i * 4], "event": "e"}, timeout=TIMEOUT)
        async with (
            websocket_clients(server, 3, namespace="/dyn-1") as dyn,
            websocket_clients(server, 2, namespace="/dyn-22") as dyn2,
        ):
            sids |= {c.get_sid("/dyn-1") for c in dyn} | {c.get_sid("/dyn-22") for c in dyn2}
            engine_sids = set(server.connections)
            result = await scrape(metrics_url(server))
            sockets = result.value("roomcast_sockets", namespace="/dyn-\\d+", transport="websocket")
            assert sockets == 5
    values = {value for _, _, value in result.label_values()}
    forbidden = set(rooms) | sids | engine_sids | {"/dyn-1", "/dyn-22"}
    assert not values & forbidden
    assert not [v for v in values if any(r in v for r in rooms)]
    assert result.value("roomcast_rooms", namespace="/") == 40
    assert result.value("roomcast_socket_connects_total", namespace="/dyn-\\d+") == 5


def lan_address() -> str | None:
    """An address of this machine that is not loopback (None: it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # no packet is sent: this picks the route only
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_metrics_follow_the_admin_rule(start_node: NodeFactory) -> None:
    """Without a token: loopback peers naming a loopback host only (a foreign Host, Origin or
    a forwarding header gets 403, like /admin/*); with a token, it is needed (401 without)."""
    server: Server = await start_node()
    url = metrics_url(server)
    assert (await scrape_status(url))[0] == 200
    assert (await scrape_status(url, Host="localhost"))[0] == 200
    for headers in (
        {"Host": "evil.example"},
        {"Origin": "http://evil.example"},
        {"X-Forwarded-For": "203.0.113.7"},
        {"Forwarded": "for=203.0.113.7"},
    ):
        assert (await scrape_status(url, **headers))[0] == 403, headers
        assert (await scrape_status(server.url + "/admin/stats", **headers))[0] == 403, headers
    guarded: Server = await start_node(**{"node.admin_token": "s3cret"})
    url = metrics_url(guarded)
    assert (await scrape_status(url))[0] == 401
    assert (await scrape_status(url, Authorization="Bearer wrong"))[0] == 401
    assert (await scrape_status(url, Authorization="Bearer s3cret", Host="node.example"))[0] == 200


async def test_metrics_from_another_host(start_node: NodeFactory) -> None:
    """A peer that is not loopback gets 403, unless ``metrics.networks`` lists it (and then
    only without forwarding headers), or ``metrics.access = "any"``; /admin stays closed."""
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    wide = {"node.host": "0.0.0.0"}
    closed: Server = await start_node(**wide)
    listed: Server = await start_node(**wide, **{"metrics.networks": [f"{address}/32"]})
    anyone: Server = await start_node(**wide, **{"metrics.access": "any"})
    assert (await scrape_status(f"http://{address}:{closed.port}/metrics"))[0] == 403
    from_lan = f"http://{address}:{listed.port}"
    assert (await scrape_status(from_lan + "/metrics"))[0] == 200
    assert (await scrape_status(from_lan + "/metrics", **{"X-Real-IP": "1.2.3.4"}))[0] == 403
    assert (await scrape_status(from_lan + "/admin/stats"))[0] == 403
    assert (await scrape_status(f"http://{address}:{anyone.port}/metrics"))[0] == 200


async def test_metrics_off_serves_nothing_and_records_nothing(start_node: NodeFactory) -> None:
    """With ``metrics.enabled`` false the path is 404 and no histogram is kept; the node and
    its admin API work as before."""
    server: Server = await start_node(**{"metrics.enabled": False})
    assert (await scrape_status(metrics_url(server)))[0] == 404
    assert server.stats.fanout is None and server.stats.join_seconds is None
    async with websocket_clients(server, 2) as clients:
        for client in clients:
            await client.call("join", "r", timeout=TIMEOUT)
        await clients[0].call("publish", {"room": "r", "event": "e"}, timeout=TIMEOUT)
    assert server.stats.messages_out == 1
    moved: Server = await start_node(**{"metrics.path": "/internal/prometheus"})
    assert (await scrape_status(metrics_url(moved)))[0] == 404
    assert (await scrape_status(moved.url + "/internal/prometheus"))[0] == 200


async def test_recovery_counters(start_node: NodeFactory) -> None:
    """With recovery on: a raw client whose connection is lost is kept (the gauge says 1),
    comes back with its pid and is recovered; a forged pid is refused for its reason. The
    series move by exactly that."""
    node = await start_node(**{"recovery.enabled": True})
    url = metrics_url(node)
    before = await scrape(url)
    async with aiohttp.ClientSession() as http:
        first = await RawWebSocket.open(http, node, connect=False)
        await first.send("40")
        (reply,) = await first.receive()
        assert reply.startswith('40{"sid":'), reply
        connected = json.loads(reply[2:])
        await first.ws.close()  # the connection is lost: the session is kept

        async def kept() -> bool:
            return (await scrape(url)).value("roomcast_sessions_kept") == 1

        await wait_until(kept, what="the lost session kept")

        again = await RawWebSocket.open(http, node, connect=False)
        await again.send("40" + json.dumps({"pid": connected["pid"]}))
        (reply,) = await again.receive()
        assert json.loads(reply[2:]) == connected  # the same sid and pid: recovered

        forged = await RawWebSocket.open(http, node, connect=False)
        await forged.send("40" + json.dumps({"pid": connected["pid"][:8] + "x" * 16}))
        (reply,) = await forged.receive()
        assert json.loads(reply[2:])["sid"] != connected["sid"]  # a fresh session
        for raw in (again, forged):
            await raw.ws.close()
    after = await scrape(url)
    assert after.delta(before, "roomcast_recoveries_attempted_total") == 2
    assert after.delta(before, "roomcast_recoveries_succeeded_total") == 1
    refused = "roomcast_recoveries_refused_total"
    assert after.delta(before, refused, reason="unknown session") == 1
    assert sum(after.delta(before, refused, reason=r) for r in RECOVERY_REFUSALS) == 1
    assert after.delta(before, "roomcast_replayed_messages_total") == 0
