"""The harness of the integration tests with python-socketio's ``AsyncClient``.

Every test that takes the ``connect`` fixture runs three times: WebSocket only, polling only,
and the default polling→WebSocket upgrade. Nothing here sleeps to synchronise: tests wait for
the event they expect (with a timeout), and prove that something did *not* arrive with a
round trip on the same connection (:func:`barrier`), which the server must answer after
anything it wrote to that connection before.

The fixtures are defined as ``<name>_fixture`` and registered under ``<name>`` (``transport``,
``connect``) by the test modules that import them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import socketio

import support.timing as support_timing
from roomcast.node.server import Server
from roomcast.node.sockets import Namespace, Socket

NodeFactory = Callable[..., Awaitable[Server]]  # the ``start_node`` fixture (tests/conftest.py)
TIMEOUT = support_timing.TIMEOUT

TRANSPORTS: dict[str, list[str] | None] = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": None,  # python-socketio's default: polling first, then the WebSocket upgrade
}

Connect = Callable[..., Awaitable[socketio.AsyncClient]]


@pytest.fixture(name="transport", params=list(TRANSPORTS))
def transport_fixture(request: pytest.FixtureRequest) -> str:
    """Which transports the clients of a test use."""
    return str(request.param)


@pytest.fixture(name="connect")
async def connect_fixture(start_node: NodeFactory, transport: str) -> AsyncIterator[Connect]:
    """Connect python-socketio clients with the test's transports; disconnects them at the end.

    Depends on ``start_node`` so that the clients go before the nodes do.
    """
    clients: list[socketio.AsyncClient] = []

    async def factory(
        server: Server,
        *,
        namespaces: list[str] | None = None,
        auth: Any = None,
        on: dict[str, Callable[..., Any]] | None = None,
        namespace_on: dict[tuple[str, str], Callable[..., Any]] | None = None,
        **client_options: Any,
    ) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False, **client_options)
        for event, handler in (on or {}).items():
            client.on(event, handler)
        for (event, ns), handler in (namespace_on or {}).items():
            client.on(event, handler, namespace=ns)
        clients.append(client)
        await client.connect(
            server.url,
            transports=TRANSPORTS[transport],
            namespaces=namespaces or ["/"],
            auth=auth,
            wait_timeout=TIMEOUT,
        )
        expected = "polling" if transport == "polling" else "websocket"
        assert client.transport() == expected
        return client

    yield factory
    for client in clients:
        await asyncio.wait_for(client.disconnect(), TIMEOUT)


class Inbox:
    """What some clients received, with a way to wait for it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()

    def handler(self, name: str, event: str) -> Callable[..., None]:
        """A client handler recording ``event`` under ``name``."""

        def record(*args: Any) -> None:
            self.events.append((name, event, args))
            self._changed.set()

        return record

    def got(self, name: str, event: str) -> list[tuple[Any, ...]]:
        """The argument tuples ``name`` received with ``event``, in order."""
        return [args for who, ev, args in self.events if who == name and ev == event]

    async def wait(self, name: str, event: str, count: int = 1) -> list[tuple[Any, ...]]:
        """Wait until ``name`` has received ``event`` at least ``count`` times."""
        async with asyncio.timeout(TIMEOUT):
            while len(self.got(name, event)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.got(name, event)


class Reasons:
    """The reasons the server's ``disconnect`` handlers saw, by socket id."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[str]] = {}

    def _future(self, sid: str) -> asyncio.Future[str]:
        if sid not in self._futures:
            self._futures[sid] = asyncio.get_running_loop().create_future()
        return self._futures[sid]

    def install(self, ns: Namespace) -> None:
        """Record the disconnect reasons of ``ns``."""

        def on_disconnect(socket: Socket, reason: str) -> None:
            self._future(socket.sid).set_result(reason)

        ns.on("disconnect", on_disconnect)

    async def of(self, sid: str) -> str:
        """Wait for the reason socket ``sid`` disconnected with."""
        return await asyncio.wait_for(asyncio.shield(self._future(sid)), TIMEOUT)


async def barrier(client: socketio.AsyncClient, namespace: str = "/") -> None:
    """A relay round trip: whatever the server wrote to ``client`` before it has arrived."""
    ack = await client.call("leave", "barrier", namespace=namespace, timeout=TIMEOUT)
    assert ack["ok"] is True


async def join(client: socketio.AsyncClient, *rooms: str, namespace: str = "/") -> None:
    """Join rooms through the built-in relay."""
    ack = await client.call("join", list(rooms), namespace=namespace, timeout=TIMEOUT)
    assert ack["ok"] is True, ack


def sid_of(client: socketio.AsyncClient, namespace: str = "/") -> str:
    """The client's socket id in ``namespace``."""
    sid = client.get_sid(namespace)
    assert isinstance(sid, str)
    return sid
