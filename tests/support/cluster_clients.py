"""python-socketio clients on the nodes of a :class:`cluster_harness.Cluster`.

A :class:`Peer` records every event it receives, per namespace, and waits for what it expects
(with a timeout, never a sleep); :func:`clients` connects peers and always disconnects them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import socketio

from support.cluster_harness import TIMEOUT, Cluster


class Peer:
    """A python-socketio client on one node, recording every event it receives."""

    def __init__(self, name: str, node: str, namespaces: list[str]) -> None:
        self.name = name
        self.node = node
        self.namespaces = namespaces
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, str, tuple[Any, ...]]] = []  #: (namespace, event, args)
        self.disconnects: list[Any] = []  #: the reasons python-socketio gave
        self._changed = asyncio.Event()
        for ns in namespaces:
            self.client.on("*", self._recorder(ns), namespace=ns)
            self.client.on("disconnect", self._on_disconnect, namespace=ns)

    def _recorder(self, ns: str) -> Callable[..., None]:
        def record(event: str, *args: Any) -> None:
            self.events.append((ns, event, args))
            self._changed.set()

        return record

    def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnects.append(reason)
        self._changed.set()

    def on(self, event: str, handler: Callable[..., Any], namespace: str = "/") -> None:
        """Handle ``event`` with ``handler`` (its return value is the ack) instead of recording."""
        self.client.on(event, handler, namespace=namespace)

    @property
    def sid(self) -> str:
        """The socket id in the first namespace (the root one by default)."""
        sid = self.client.get_sid(self.namespaces[0])
        assert isinstance(sid, str)
        return sid

    # -- talking to the node ------------------------------------------------------------------

    async def call(self, event: str, *args: Any, namespace: str = "/") -> Any:
        """Emit ``event`` with ``args`` and return the server's ack."""
        data: Any = args[0] if len(args) == 1 else (args if args else None)
        return await self.client.call(event, data, namespace=namespace, timeout=TIMEOUT)

    async def join(self, *rooms: str, namespace: str = "/") -> list[str]:
        """Join ``rooms`` through the relay; returns the rooms the socket is in."""
        ack = await self.call("join", list(rooms), namespace=namespace)
        assert ack["ok"] is True, ack
        rooms_now: list[str] = ack["rooms"]
        return rooms_now

    async def publish(
        self, room: str | list[str], event: str, data: Any = None, namespace: str = "/"
    ) -> None:
        """Publish through the relay (the ack says the node accepted it)."""
        ack = await self.call(
            "publish", {"room": room, "event": event, "data": data}, namespace=namespace
        )
        assert ack == {"ok": True}, ack

    # -- what arrived -------------------------------------------------------------------------

    def got(self, event: str, namespace: str = "/") -> list[Any]:
        """The arguments of every ``event`` received (one value per event when it had one)."""
        return [
            args[0] if len(args) == 1 else args
            for ns, ev, args in self.events
            if ns == namespace and ev == event
        ]

    async def _wait(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name} timed out waiting for {what}; it got {self.events!r}"
            ) from None

    async def wait_for(
        self, event: str, count: int = 1, namespace: str = "/", timeout: float = TIMEOUT
    ) -> list[Any]:
        """Wait until ``event`` was received at least ``count`` times; returns them all."""
        await self._wait(
            lambda: len(self.got(event, namespace)) >= count, f"{count} x {event!r}", timeout
        )
        return self.got(event, namespace)

    async def wait_for_value(
        self, event: str, value: Any, namespace: str = "/", timeout: float = TIMEOUT
    ) -> None:
        """Wait until ``event`` with ``value`` (its one argument) was received."""
        await self._wait(
            lambda: value in self.got(event, namespace), f"{event!r} {value!r}", timeout
        )

    async def wait_disconnected(self, timeout: float = TIMEOUT) -> Any:
        """Wait until the server disconnected this client; returns the reason."""
        await self._wait(lambda: bool(self.disconnects), "a disconnect", timeout)
        return self.disconnects[0]


Connect = Callable[..., Awaitable[Peer]]


@contextlib.asynccontextmanager
async def clients() -> AsyncIterator[Connect]:
    """``async with clients() as connect``: ``peer = await connect(cluster, "n1")`` is a
    WebSocket client on a node; every client is disconnected when the block ends."""
    peers: list[Peer] = []

    async def connect(
        cluster: Cluster, node: str, name: str | None = None, namespaces: list[str] | None = None
    ) -> Peer:
        namespaces = namespaces or ["/"]
        peer = Peer(name or f"{node}-client{len(peers)}", node, namespaces)
        peers.append(peer)
        await peer.client.connect(
            cluster.nodes[node].url,
            transports=["websocket"],
            namespaces=namespaces,
            wait_timeout=TIMEOUT,
        )
        return peer

    try:
        yield connect
    finally:
        for peer in peers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.client.disconnect(), TIMEOUT)
