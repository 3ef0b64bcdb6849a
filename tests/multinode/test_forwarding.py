"""Any node serves any request of any session (nodes started by the CLI, on uvloop).

The requests of one Engine.IO session are sent to different nodes by hand here, as a load
balancer without affinity would: polling GETs and POSTs for another node's session are
forwarded there; a WebSocket upgrade is spliced to it; unknown sids, forged ones and sids of a
dead node get the official ``400 Session ID unknown``. ``test_load_balancer.py`` runs the
official clients through a real balancer.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from support.cluster_clients import Connect, clients
from support.cluster_harness import TIMEOUT, Cluster, running_cluster, unique, wait_until

from roomcast.ids import node_tag, tag_text

pytestmark = [pytest.mark.multinode, pytest.mark.asyncio(loop_scope="module")]

EIO = "/socket.io/?EIO=4&transport="
UNKNOWN_SID = {"code": 1, "message": "Session ID unknown"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path_factory.mktemp("fwd"), "n1", "n2", "n3") as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(loop_scope="module")
async def connect() -> AsyncIterator[Connect]:
    async with clients() as factory:
        yield factory


async def handshake(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + EIO + "polling") as resp:
        assert resp.status == 200
        return str(json.loads((await resp.text())[1:])["sid"])


async def get(http: aiohttp.ClientSession, url: str, sid: str) -> tuple[int, str]:
    async with http.get(f"{url}{EIO}polling&sid={sid}") as resp:
        return resp.status, await resp.text()


async def post(http: aiohttp.ClientSession, url: str, sid: str, body: str) -> tuple[int, str]:
    async with http.post(
        f"{url}{EIO}polling&sid={sid}",
        data=io.BytesIO(body.encode()),
        headers={"Content-Type": "text/plain"},
    ) as resp:
        return resp.status, await resp.text()


async def forwards(cluster: Cluster, node: str) -> dict[str, Any]:
    stats: dict[str, Any] = await cluster.admin(node, "/admin/stats")
    return stats


async def test_polling_requests_of_a_session_served_by_every_node(
    cluster: Cluster, http: aiohttp.ClientSession, connect: Connect
) -> None:
    """A session opened on n1 connects its namespace through n2, joins a room through n3,
    receives a publish from a client on n2 through n2 (a long-poll that waits through the
    forward), and the forward counters say so."""
    urls = {name: node.url for name, node in cluster.nodes.items()}
    before = {n: (await forwards(cluster, n))["forwarded_requests"] for n in urls}
    sid = await handshake(http, urls["n1"])
    assert await post(http, urls["n2"], sid, "40") == (200, "ok")
    status, text = await get(http, urls["n3"], sid)
    assert status == 200 and text.startswith('40{"sid":"'), text
    room = unique("fwd")
    assert await post(http, urls["n2"], sid, f'421["join","{room}"]') == (200, "ok")
    status, text = await get(http, urls["n3"], sid)
    assert (status, text) == (200, f'431[{{"ok":true,"rooms":["{room}"]}}]')

    waiting = asyncio.ensure_future(get(http, urls["n2"], sid))  # a long-poll, forwarded
    sender = await connect(cluster, "n2", name="sender")
    await sender.join(room)
    await sender.publish(room, "news", "through the forward")
    status, text = await asyncio.wait_for(waiting, TIMEOUT)
    assert (status, text) == (200, '42["news","through the forward"]')

    after = {n: (await forwards(cluster, n))["forwarded_requests"] for n in urls}
    assert after["n1"] == before["n1"]  # the owner forwards nothing
    assert after["n2"] - before["n2"] == 3
    assert after["n3"] - before["n3"] == 2

    code, out, err = await cluster.cli("status", "--node", urls["n2"])
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("forwarded for other nodes"))
    assert f": {after['n2']} requests, " in line, line
    code, out, err = await cluster.cli("status", "--json", "--node", urls["n3"])
    assert code == 0, err
    assert json.loads(out)["stats"]["forwarded_requests"] == after["n3"]


async def test_many_waiting_long_polls_do_not_hold_up_other_forwards(cluster: Cluster) -> None:
    """150 long-polls of n1's sessions wait through n2 (more than an HTTP client's usual
    connection pool); a POST forwarded by n2 meanwhile is served at once, and wakes its
    session's waiting GET."""
    urls = {name: node.url for name, node in cluster.nodes.items()}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sids = await asyncio.gather(*(handshake(http, urls["n1"]) for _ in range(150)))
        polls = [asyncio.ensure_future(get(http, urls["n2"], sid)) for sid in sids]
        try:

            async def waiting() -> bool:
                return bool((await forwards(cluster, "n2"))["forwards_in_flight"] == 150)

            await wait_until(waiting, what="150 long-polls waiting through n2")
            assert await post(http, urls["n2"], sids[0], "40") == (200, "ok")
            status, text = await asyncio.wait_for(polls[0], TIMEOUT)
            assert status == 200 and text.startswith('40{"sid":"'), text
            assert not any(p.done() for p in polls[1:])
        finally:
            for p in polls:
                p.cancel()
            await asyncio.gather(*polls, return_exceptions=True)


async def test_a_websocket_upgrade_on_another_node_is_spliced_to_the_owner(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A polling session of n1 upgrades through a WebSocket opened on n2: the probe, the
    upgrade and the messages after it travel through n2 to n1, both ways."""
    urls = {name: node.url for name, node in cluster.nodes.items()}
    spliced_before = (await forwards(cluster, "n2"))["spliced_websockets"]
    sid = await handshake(http, urls["n1"])
    assert await post(http, urls["n1"], sid, "40") == (200, "ok")
    await get(http, urls["n1"], sid)  # the CONNECT's answer
    ws_url = urls["n2"].replace("http", "ws") + f"{EIO}websocket&sid={sid}"
    async with aiohttp.ClientSession() as fresh, fresh.ws_connect(ws_url) as ws:  # a new TCP
        await ws.send_str("2probe")
        assert (await ws.receive(timeout=TIMEOUT)).data == "3probe"
        await ws.send_str("5")
        room = unique("ws")
        await ws.send_str(f'421["join","{room}"]')
        assert (await ws.receive(timeout=TIMEOUT)).data == f'431[{{"ok":true,"rooms":["{room}"]}}]'
    assert (await forwards(cluster, "n2"))["spliced_websockets"] == spliced_before + 1


async def test_a_websocket_handshake_on_a_kept_alive_connection_is_relayed(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A WebSocket handshake that is not the first request of its connection (aiohttp parsed
    it) is relayed message by message to the owner: text and binary, both ways."""
    urls = {name: node.url for name, node in cluster.nodes.items()}
    sid = await handshake(http, urls["n1"])
    assert await post(http, urls["n1"], sid, "40") == (200, "ok")
    await get(http, urls["n1"], sid)
    relayed_before = (await forwards(cluster, "n3"))["spliced_websockets"]
    connector = aiohttp.TCPConnector(limit=1)  # one connection: the handshake reuses it
    async with aiohttp.ClientSession(connector=connector) as one:
        async with one.get(urls["n3"] + "/health") as resp:
            assert resp.status == 200
        ws_url = urls["n3"].replace("http", "ws") + f"{EIO}websocket&sid={sid}"
        async with one.ws_connect(ws_url) as ws:
            await ws.send_str("2probe")
            assert (await ws.receive(timeout=TIMEOUT)).data == "3probe"
            await ws.send_str("5")
            room = unique("kept")
            await ws.send_str(f'421["join","{room}"]')
            assert (
                await ws.receive(timeout=TIMEOUT)
            ).data == f'431[{{"ok":true,"rooms":["{room}"]}}]'
            # A binary event: the placeholder text, then the attachment as a binary message.
            await ws.send_str(
                '451-2["publish",{"room":"'
                + room
                + '","event":"x","data":{"_placeholder":true,"num":0}}]'
            )
            await ws.send_bytes(b"\x00\x01\x02")
            assert (await ws.receive(timeout=TIMEOUT)).data == '432[{"ok":true}]'
    assert (await forwards(cluster, "n3"))["spliced_websockets"] == relayed_before + 1


async def test_unknown_forged_and_foreign_sids_get_session_id_unknown(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A sid no node issued, one forged with a live node's tag, and one of a node tag that no
    live node has are all answered with the official 400, on every node."""
    urls = [node.url for node in cluster.nodes.values()]
    real = await handshake(http, cluster.nodes["n3"].url)  # n3's tag, then 20 random chars
    forged = real[:8] + "A" * 20
    assert forged != real
    stranger = tag_text(node_tag("gone", 1)) + "B" * 20
    for url in urls:
        for sid in ("nope", forged, stranger):
            async with http.get(f"{url}{EIO}polling&sid={sid}") as resp:
                assert resp.status == 400, (url, sid)
                assert await resp.json() == UNKNOWN_SID


async def test_a_body_over_max_payload_is_refused_through_the_forward(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A POST over ``max_payload`` sent to another node gets the owner's refusal (413), as if
    it had been sent there, and only ``max_payload`` + 1 bytes of it cross between nodes."""
    urls = {name: node.url for name, node in cluster.nodes.items()}
    sid = await handshake(http, urls["n3"])
    before = (await forwards(cluster, "n1"))["forwarded_bytes"]
    status, _ = await post(http, urls["n1"], sid, "4" + "x" * 2_000_000)
    assert status == 413
    crossed = (await forwards(cluster, "n1"))["forwarded_bytes"] - before
    assert crossed < 1_000_000 + 2 + 1_000  # the truncated body and a small answer
    status, text = await get(http, urls["n3"], sid)  # the owner closed the session
    assert status == 400 or text == "1", (status, text)


async def test_an_owner_that_stops_or_dies_costs_its_sessions_only(
    tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession
) -> None:
    """A long-poll forwarded to an owner that stopped answering (SIGSTOP) gets the official
    400 after the forward's deadline; so does one for an owner killed with SIGKILL; the
    forwarding node keeps nothing of either, and serves its own sessions throughout."""
    fast = (
        "[engineio]\nping_interval_ms = 1000\nping_timeout_ms = 1000\n"
        "[http]\nbody_timeout_ms = 500\n"
    )
    directory = tmp_path_factory.mktemp("fwd-stop")
    async with running_cluster(directory, "a", "b", extra_config=fast) as small:
        a, b = small.nodes["a"], small.nodes["b"]
        sid = await handshake(http, a.url)
        assert await post(http, a.url, sid, "40") == (200, "ok")
        await get(http, a.url, sid)
        failed = (await small.admin("b", "/admin/stats"))["forward_failed"]

        # A POST to b whose body never arrives: b answers 408 as a itself would have.
        port = int(b.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {EIO}polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            "Content-Type: text/plain\r\n\r\n4x".encode()
        )
        head = await asyncio.wait_for(reader.read(), TIMEOUT)  # b closes after answering
        writer.close()
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert (await small.admin("b", "/admin/stats"))["http_refused"]["body timeout"] == 1

        a.proc.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            status, text = await asyncio.wait_for(get(http, b.url, sid), TIMEOUT)
            assert (status, json.loads(text)) == (400, UNKNOWN_SID)
            own = await handshake(http, b.url)  # b serves its own sessions meanwhile
            assert await post(http, b.url, own, "40") == (200, "ok")
        finally:
            a.proc.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        stats = await small.admin("b", "/admin/stats")
        assert stats["forward_failed"] == failed + 1
        assert stats["connections"] == 1  # its own session only: nothing kept of the forward

        a.proc.kill9()
        status, text = await get(http, b.url, sid)
        assert (status, json.loads(text)) == (400, UNKNOWN_SID)
        own = await handshake(http, b.url)
        assert await post(http, b.url, own, "40") == (200, "ok")
