"""Debian's HAProxy as the tests run it (``support/haproxy.py``), in front of three tiny aiohttp
backends in this process: it balances every request on its own, even successive requests on
one kept-alive client connection; passes request bodies intact and WebSockets through; holds
its port so that every connection reaches it; and is gone once its block has ended.

Skipped only when haproxy is missing outside CI and ``make test`` (which installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from support.cluster_harness import wait_until
from support.haproxy import balancer, needs_haproxy, server_address
from support.timing import TIMEOUT

NAMES = ("alpha", "beta", "gamma")

Backends = dict[str, str]  #: backend base URL -> the name it answers


def backend_app(name: str) -> web.Application:
    """A backend that says who it is: ``GET /who`` answers its name, ``POST /echo`` the body
    (with its name in ``X-Backend``), ``/ws`` is a WebSocket answering ``name:text`` to a text
    message and echoing a binary one."""

    async def who(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), headers={"X-Backend": name})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for message in socket_:
            if message.type is aiohttp.WSMsgType.TEXT:
                await socket_.send_str(f"{name}:{message.data}")
            elif message.type is aiohttp.WSMsgType.BINARY:
                await socket_.send_bytes(message.data)
        return socket_

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/who", who)
    app.router.add_post("/echo", echo)
    app.router.add_get("/ws", ws)
    return app


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    """Three backends on 127.0.0.1 port 0, by base URL."""
    async with contextlib.AsyncExitStack() as stack:
        out: Backends = {}
        for name in NAMES:
            runner = web.AppRunner(backend_app(name), access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            out[f"http://{host}:{port}"] = name
        yield out


def one_connection_session() -> tuple[aiohttp.ClientSession, list[int]]:
    """A client session holding at most one connection, and the list it appends to every time
    it opens one (so a test can tell that its requests shared a kept-alive connection)."""
    opened: list[int] = []

    async def on_open(_session: Any, _ctx: SimpleNamespace, _params: Any) -> None:
        opened.append(1)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_open)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        trace_configs=[trace],
    )
    return session, opened


def assert_round_robin(answers: list[str], names: set[str]) -> None:
    """Every ``len(names)`` successive answers name every backend once, in a fixed order."""
    n = len(names)
    for i in range(len(answers) - n + 1):
        assert set(answers[i : i + n]) == names, answers
    assert all(answers[i] == answers[i + n] for i in range(len(answers) - n)), answers


@needs_haproxy
async def test_one_kept_alive_client_connection_reaches_every_backend_in_turn(
    backends: Backends, tmp_path: Path
) -> None:
    """Nine GETs in a row on one client connection go to the three backends in turn, three
    each, as HAProxy's own counters agree."""
    async with balancer(list(backends), tmp_path) as lb:
        session, opened = one_connection_session()
        async with session:
            answers = []
            for _ in range(9):
                async with session.get(f"{lb.url}/who") as response:
                    assert response.status == 200
                    answers.append(await response.text())
        assert len(opened) == 1, "the client opened more than one connection"
        assert_round_robin(answers, set(NAMES))
        expected = dict.fromkeys(backends, 3)

        async def counted() -> bool:
            return await lb.request_counts() == expected

        await wait_until(counted, what=f"haproxy's request counts to be {expected}")


@needs_haproxy
async def test_post_bodies_pass_intact_to_every_backend(backends: Backends, tmp_path: Path) -> None:
    """POST bodies (binary, up to 1 MiB) come back from the backends byte for byte, whichever
    backend each one reached: all three do, on one client connection."""
    bodies = [os.urandom(size) for size in (0, 1, 4096, 65537, 1024 * 1024, 7)]
    async with balancer(list(backends), tmp_path) as lb:
        session, opened = one_connection_session()
        seen = []
        async with session:
            for body in bodies:
                async with session.post(f"{lb.url}/echo", data=body) as response:
                    assert response.status == 200
                    assert await response.read() == body
                    seen.append(response.headers["X-Backend"])
        assert len(opened) == 1
        assert_round_robin(seen, set(NAMES))


@needs_haproxy
async def test_a_websocket_passes_through_and_stays_on_its_backend(
    backends: Backends, tmp_path: Path
) -> None:
    """A WebSocket through HAProxy is upgraded by one backend and stays with it (a tunnel):
    text and binary messages go both ways, and it closes cleanly. Plain requests meanwhile
    go on being spread; the WebSocket took one turn of the rotation."""
    async with balancer(list(backends), tmp_path) as lb:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            ws = await http.ws_connect(f"{lb.url}/ws")
            try:
                replies = []
                for i in range(6):
                    await ws.send_str(f"hello {i}")
                    replies.append(await ws.receive_str(timeout=TIMEOUT))
                owner = replies[0].split(":")[0]
                assert owner in NAMES
                assert replies == [f"{owner}:hello {i}" for i in range(6)]
                blob = os.urandom(200_000)
                await ws.send_bytes(blob)
                assert await ws.receive_bytes(timeout=TIMEOUT) == blob
                others = []
                for _ in range(4):  # while the WebSocket is open
                    async with http.get(f"{lb.url}/who") as response:
                        others.append(await response.text())
                assert_round_robin([owner, *others], set(NAMES))
            finally:
                await ws.close()
            assert ws.close_code == aiohttp.WSCloseCode.OK


@needs_haproxy
async def test_it_holds_its_port_and_every_connection_reaches_it(
    backends: Backends, tmp_path: Path
) -> None:
    """While HAProxy runs, its port cannot be bound by another socket (with or without
    SO_REUSEADDR), and fresh connections, one per request, are all answered (none reaches
    the non-listening socket holding the port, which would refuse it)."""
    async with balancer(list(backends), tmp_path) as lb:
        for reuse_addr in (False, True):
            with socket.socket() as intruder:
                if reuse_addr:
                    intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with pytest.raises(OSError) as caught:
                    intruder.bind(("127.0.0.1", lb.port))
                assert caught.value.errno == errno.EADDRINUSE
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def who() -> str:
                async with http.get(f"{lb.url}/who") as response:
                    assert response.status == 200
                    return await response.text()

            answers = [await who() for _ in range(30)]
            assert_round_robin(answers, set(NAMES))
            concurrent = await asyncio.gather(*(who() for _ in range(30)))
            assert sorted(concurrent) == sorted(NAMES * 10)


@needs_haproxy
async def test_haproxy_is_gone_after_the_block(backends: Backends, tmp_path: Path) -> None:
    """Once the ``async with`` has ended, the HAProxy process no longer exists; its config and
    its log (one line per request) stay in tmp_path."""
    async with balancer(list(backends), tmp_path) as lb:
        pid = lb.proc.pid
        assert lb.proc.running
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{lb.url}/who") as response,
        ):
            assert response.status == 200
    assert not lb.proc.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "balance roundrobin" in lb.config_path.read_text()
    assert lb.proc.log_path.exists()
    assert '"GET /who HTTP/1.1"' in lb.access_log.read_text()


async def test_only_plain_http_backends_and_non_sticky_balancing_are_accepted(
    tmp_path: Path,
) -> None:
    """Backends other than ``http://host:port`` and a balance that pins clients fail clearly,
    before anything starts."""
    assert server_address("http://127.0.0.1:41234") == "127.0.0.1:41234"
    assert server_address("http://[::1]:80/") == "[::1]:80"
    for bad in ("https://127.0.0.1:443", "ws://127.0.0.1:1", "http://127.0.0.1", "http://h:1/x"):
        with pytest.raises(ValueError, match="backend"):
            server_address(bad)

    for backends, balance, message in [
        (["https://127.0.0.1:8443"], "roundrobin", "only http://"),
        (["http://127.0.0.1:8080"], "source", "balance 'source'"),
        ([], "roundrobin", "at least one"),
    ]:
        with pytest.raises(ValueError, match=message):
            async with balancer(backends, tmp_path, balance=cast(Any, balance)):
                raise AssertionError("started")
    assert not list(tmp_path.iterdir())
