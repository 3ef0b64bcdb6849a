"""The node's HTTP edge against abuse, on a node started by the CLI (uvloop, as users run it).

Slowloris (silent peers, heads sent slowly, bodies that never come), oversized heads, and
malformed requests: each is answered (408, 431, 400) or closed within ``[http]``'s deadlines,
file descriptors and memory come back, the node logs no traceback, and a client afterwards is
served as before. Every wait is on an event (an answer, an end of stream, a counter), bounded
by the harness's timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from support.cluster_harness import NODE_READY, wait_until
from support.cluster_processes import TIMEOUT, Proc, clean_env, roomcast_argv

pytestmark = pytest.mark.asyncio(loop_scope="module")

HEAD_LIMIT = 4096
CONFIG = f"""
[node]
host = "127.0.0.1"
port = 0

[http]
idle_timeout_ms = 2000
body_timeout_ms = 2000
max_head_bytes = {HEAD_LIMIT}

[cluster]
enabled = false
"""
EIO = "/socket.io/?EIO=4&transport="


@dataclass
class EdgeNode:
    """A node process and where it listens."""

    proc: Proc
    url: str

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    def fds(self) -> int:
        """Open file descriptors of the node process."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self) -> int:
        """The node process's resident memory."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/admin/stats") as resp:
            assert resp.status == 200
            doc: dict[str, Any] = await resp.json()
            return doc

    async def open_polling_session(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(self.url + EIO + "polling") as r:
            text = await r.text()
        return str(json.loads(text[1:])["sid"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EdgeNode]:
    directory = tmp_path_factory.mktemp("edge")
    config = directory / "cluster.toml"
    config.write_text(CONFIG)
    argv = roomcast_argv(config, "node", "--id", "edge", "--host", "127.0.0.1", "--port", "0")
    proc = Proc("edge", argv, directory, clean_env())
    await proc.start()
    try:
        match = await proc.wait_line(NODE_READY)
        yield EdgeNode(proc, match.group(2))
    finally:
        await proc.stop()
    assert not [line for line in proc.lines if "Traceback" in line], proc.tail(80)


async def connect(node: EdgeNode) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", node.port)


async def until_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the node sends until it closes the connection."""
    async with asyncio.timeout(TIMEOUT):
        return await reader.read()


async def served_as_before(node: EdgeNode) -> None:
    """A polling handshake and a WebSocket session still work."""
    assert await node.open_polling_session()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(node.url + EIO + "websocket") as ws,
    ):
        msg = await ws.receive(timeout=TIMEOUT)
        assert isinstance(msg.data, str) and msg.data.startswith('0{"sid"')


async def test_slow_and_silent_peers_are_closed_and_their_sockets_released(
    node: EdgeNode,
) -> None:
    """Silent connections, heads that never end (first request and keep-alive), and POST
    bodies that never come are all closed within the deadlines (408 where a request was
    begun); the node's descriptors and memory return to where they were."""
    await served_as_before(node)  # the first sessions' one-time costs are paid
    fds_before, rss_before = node.fds(), node.rss_kib()
    refused_before = (await node.stats())["http_refused"]

    sids = [await node.open_polling_session() for _ in range(20)]

    async def connections(n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        return list(await asyncio.gather(*(connect(node) for _ in range(n))))

    # All at once, so that every one is still held when the count is taken.
    silent, partial, keepalive, posts = await asyncio.gather(
        connections(100), connections(100), connections(30), connections(len(sids))
    )
    for _, writer in partial:
        writer.write(b"GET " + EIO.encode() + b"polling HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow:")
    for _, writer in keepalive:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\n")
    for sid, (_, writer) in zip(sids, posts, strict=True):
        writer.write(
            f"POST {EIO}polling&sid={sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\n4hello".encode()
        )
    opened = len(silent) + len(partial) + len(keepalive) + len(posts)
    # Held (the baseline may still count a closing socket or two of the sessions before).
    await wait_until(lambda: node.fds() >= fds_before + opened - 10, what="connections held")

    answers = await asyncio.gather(
        *(until_eof(r) for r, _ in [*silent, *partial, *keepalive, *posts])
    )
    silent_got = answers[: len(silent)]
    partial_got = answers[len(silent) : len(silent) + len(partial)]
    keepalive_got = answers[len(silent) + len(partial) : -len(posts)]
    posts_got = answers[-len(posts) :]
    assert set(silent_got) == {b""}
    assert all(a.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for a in partial_got)
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in keepalive_got)
    assert all(a.count(b"HTTP/1.1") == 1 for a in keepalive_got)  # no answer to the half head
    assert all(a.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for a in posts_got)
    for _, writer in [*silent, *partial, *keepalive, *posts]:
        writer.close()

    await wait_until(lambda: node.fds() <= fds_before, what="descriptors back to the baseline")
    stats = await node.stats()
    refused = stats["http_refused"]
    assert refused.get("head timeout", 0) - refused_before.get("head timeout", 0) == 200
    assert refused.get("body timeout", 0) - refused_before.get("body timeout", 0) == 20
    assert stats["closed_by_reason"]["request timeout"] == 20  # the POSTs' sessions
    assert node.rss_kib() - rss_before < 16 * 1024  # nothing kept per connection
    await served_as_before(node)


async def test_oversized_heads_get_431_and_nothing_of_them_is_kept(node: EdgeNode) -> None:
    """A head over ``http.max_head_bytes`` is answered 431 and its connection closed: on a
    connection's first request (a WebSocket or polling handshake, read no further than the
    limit) and on a later keep-alive request; many such peers sending megabytes of headers
    cost the node no lasting memory."""
    refused_before = (await node.stats())["http_refused"].get("head too large", 0)
    rss_before = node.rss_kib()
    big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * 1000) for i in range(5))  # ~5 KB
    websocket_handshake = (
        f"GET {EIO}websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    ).encode()
    polling_handshake = f"GET {EIO}polling HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    heads = [
        websocket_handshake + big + b"\r\n",
        polling_handshake + big + b"\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + polling_handshake + big + b"\r\n",
    ]
    answers = []
    for head in heads:
        reader, writer = await connect(node)
        writer.write(head)
        answers.append(await until_eof(reader))
        writer.close()
    assert answers[0].startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert answers[1].startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    first, _, second = answers[2].partition(b"HTTP/1.1 431")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and second, answers[2]

    async def flood() -> bytes:
        reader, writer = await connect(node)
        writer.write(polling_handshake)
        try:
            for _ in range(1024):  # a megabyte of headers, if the node kept reading
                writer.write(b"X-Flood: " + b"f" * 1000 + b"\r\n")
                await writer.drain()
        except ConnectionError:
            pass  # the node answered and closed: our writes fail
        answer = await until_eof(reader)
        writer.close()
        return answer

    floods = await asyncio.gather(*(flood() for _ in range(50)))
    assert all(a.startswith(b"HTTP/1.1 431") for a in floods)
    refused = (await node.stats())["http_refused"].get("head too large", 0) - refused_before
    assert refused == len(heads) + len(floods)
    assert node.rss_kib() - rss_before < 16 * 1024  # not 50 MB of headers
    await served_as_before(node)


async def test_malformed_requests_are_answered_and_logged_in_one_line(node: EdgeNode) -> None:
    """Garbage HTTP (a bad version, a negative ``Content-Length``, a header without a colon)
    is answered 400 and counted; the node logs one line per request, no traceback."""
    before = (await node.stats())["http_refused"].get("bad request", 0)
    lines_before = len(node.proc.lines)
    garbage = [
        b"GET /health HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST " + EIO.encode() + b"polling HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
    ]
    for request in garbage:
        reader, writer = await connect(node)
        writer.write(request)
        answer = await until_eof(reader)
        writer.close()
        status_line = answer.partition(b"\r\n")[0]  # HTTP/1.0 for a version it cannot read
        assert status_line.endswith(b" 400 Bad Request"), answer
    await wait_until(
        lambda: (
            sum("malformed request" in line for line in node.proc.lines[lines_before:])
            == len(garbage)
        ),
        what="one log line per malformed request",
    )
    new_lines = node.proc.lines[lines_before:]
    assert not [line for line in new_lines if "Traceback" in line or "ERROR" in line], new_lines
    stats = await node.stats()
    assert stats["http_refused"]["bad request"] - before == len(garbage)
    await served_as_before(node)


async def admin_status(url: str, path: str = "/admin/stats", **headers: str) -> int:
    async with aiohttp.ClientSession() as http:
        method = http.post if path == "/admin/drain" else http.get
        async with method(url + path, headers=headers) as resp:
            return resp.status


async def test_admin_api_without_token_answers_only_loopback_names(node: EdgeNode) -> None:
    """With no ``admin_token``, ``/admin/*`` answers a loopback peer only if its ``Host`` is a
    loopback name or address and nothing says the request was relayed (``Origin``, forwarding
    headers, ``X-Real-IP``): the shapes of DNS rebinding and of a local proxy get 403."""
    port = node.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert await admin_status(node.url, Host=host) == 200, host
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        assert await admin_status(node.url, Host=host) == 403, host
        assert await admin_status(node.url, "/admin/drain", Host=host) == 403, host
    relayed = {
        "X-Real-IP": "203.0.113.7",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Host": "example.com",
        "Forwarded": "for=203.0.113.7",
        "Origin": "http://evil.example",
    }
    for name, value in relayed.items():
        assert await admin_status(node.url, **{name: value}) == 403, name
    async with aiohttp.ClientSession() as http, http.get(node.url + "/health") as resp:
        assert resp.status == 200  # not drained by any of the refused requests
        assert (await resp.json())["status"] == "ok"


async def test_admin_api_with_a_token_needs_it_from_anywhere(tmp_path: Path) -> None:
    """With ``admin_token`` set, ``/admin/*`` needs it as a bearer token, whatever the peer."""
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG)
    argv = roomcast_argv(config, "node", "--id", "tok", "--host", "127.0.0.1", "--port", "0")
    proc = Proc("tok", argv, tmp_path, clean_env(ROOMCAST__NODE__ADMIN_TOKEN="s3cret"))
    await proc.start()
    try:
        url = (await proc.wait_line(NODE_READY)).group(2)
        assert await admin_status(url) == 401
        assert await admin_status(url, Authorization="Bearer wrong") == 401
        assert await admin_status(url, Authorization="Bearer s3cret") == 200
        assert await admin_status(url, Authorization="Bearer s3cret", Host="example.com") == 200
    finally:
        await proc.stop()
