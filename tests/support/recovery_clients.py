"""What the connection state recovery tests do with official clients (``js_harness``):
publish through the relay, read what a client received and the offsets it kept."""

from __future__ import annotations

from typing import Any

from roomcast.ids import NodeTag, parse_offset
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


async def recover(client: JsClient, nth: int = 1) -> dict[str, Any]:
    """Reconnect and wait for a connect that recovered the same sid; returns its report."""
    sid = client.sid
    client.reconnect()
    event = await client.reconnected(nth)
    assert event["recovered"] is True, event
    assert event["sid"] == sid
    return event


async def refused(client: JsClient, nth: int = 1) -> dict[str, Any]:
    """Reconnect and wait for a connect that is a fresh session; returns its report."""
    old = client.sid
    client.reconnect()
    event = await client.reconnected(nth)
    assert event["recovered"] is False, event
    assert event["sid"] != old
    return event
