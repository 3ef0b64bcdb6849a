"""What the connection state recovery tests do with official clients (``js_harness``):
publish through the relay, read what a client received and the offsets it kept, lose a
client's connection and reconnect it; and, for an in-process node, watch its namespace.

A node keeps the session of a client that lost its connection before its ``disconnect``
handler runs (:meth:`Watch.lost`); tests of nodes in other processes wait for
``sessions_kept`` in ``/admin/stats`` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from roomcast.ids import NodeTag, parse_offset
from roomcast.node import recovery
from roomcast.node.server import Server
from roomcast.node.sockets import Namespace, Socket
from support.js_harness import JsClient


async def publish(
    client: JsClient, room: str | list[str], *values: Any, event: str = "chat"
) -> None:
    """Publish each value to ``room`` through the relay, one after the other, acked."""
    for value in values:
        message = {"room": room, "event": event, "data": value}
        assert await client.call("publish", message) == [{"ok": True}]


def values(client: JsClient, event: str = "chat") -> list[Any]:
    """The first argument of every ``event`` the client received, in order."""
    return [args[0] for args in client.received(event)]


def offsets(client: JsClient, event: str = "chat") -> list[str]:
    """The offset (last argument) of every ``event`` the client received, in order."""
    return [args[-1] for args in client.received(event)]


async def got(client: JsClient, value: Any, event: str = "chat") -> None:
    """Until the client has received ``event`` with ``value``."""
    await client.event(event, lambda args: args[0] == value)


def assert_numbered(tag: NodeTag | None, found: list[str]) -> None:
    """Offsets of the node with ``tag``, strictly increasing."""
    parsed = [parse_offset(o) for o in found]
    assert all(p is not None and p[0] == tag for p in parsed), found
    counters = [p[1] for p in parsed if p is not None]
    assert counters == sorted(set(counters)), found


async def recover(client: JsClient, nth: int = 1, url: str | None = None) -> dict[str, Any]:
    """Reconnect (to ``url``, another node, when given) and wait for a connect that recovered
    the same sid; returns its report."""
    sid = client.sid
    client.reconnect(url)
    event = await client.reconnected(nth)
    assert event["recovered"] is True, event
    assert event["sid"] == sid
    return event


async def refused(client: JsClient, nth: int = 1, url: str | None = None) -> dict[str, Any]:
    """Reconnect (to ``url``, another node, when given) and wait for a connect that is a fresh
    session; returns its report."""
    old = client.sid
    client.reconnect(url)
    event = await client.reconnected(nth)
    assert event["recovered"] is False, event
    assert event["sid"] != old
    return event


class Watch:
    """The server side of one namespace: every connect and disconnect, in order, awaitable
    (a recovered socket connects again under the same sid)."""

    def __init__(self, ns: Namespace) -> None:
        self.connects: list[Socket] = []
        self.disconnects: list[tuple[str, str]] = []
        self._changed = asyncio.Condition()
        ns.on("connect", self._connect)
        ns.on("disconnect", self._disconnect)

    async def _connect(self, socket: Socket, auth: Any) -> None:
        if not socket.recovered:
            socket.data["first seen"] = len(self.connects)
        async with self._changed:
            self.connects.append(socket)
            self._changed.notify_all()

    async def _disconnect(self, socket: Socket, reason: str) -> None:
        async with self._changed:
            self.disconnects.append((socket.sid, reason))
            self._changed.notify_all()

    async def _until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(done)

    async def lost(self, sid: str, nth: int = 0) -> str:
        """The reason of ``sid``'s ``nth`` disconnect (once its handler ran, the node has
        decided whether to keep the session)."""
        await self._until(lambda: sum(1 for s, _ in self.disconnects if s == sid) > nth)
        return [r for s, r in self.disconnects if s == sid][nth]

    async def socket(self, sid: str, nth: int = 0) -> Socket:
        """The server-side socket of ``sid``'s ``nth`` connect."""
        await self._until(lambda: sum(1 for s in self.connects if s.sid == sid) > nth)
        return [s for s in self.connects if s.sid == sid][nth]


async def lose_connection(client: JsClient, watch: Watch, nth: int = 0, how: str = "close") -> None:
    """Cut the client's connection (its ``nth`` disconnect) and wait until the node has kept
    its session."""
    lost_before = sum(1 for sid, _ in watch.disconnects if sid == client.sid)
    client.cut(how)
    reason = await watch.lost(client.sid, lost_before)
    assert reason in recovery.RECOVERABLE, reason
    await client.disconnected(nth)


def leaks_nothing(server: Server) -> None:
    """No session kept, no ghost left."""
    assert server.stats.sessions_kept == 0
    assert not any(ns.ghosts for ns in server.namespaces())
