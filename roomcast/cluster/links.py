"""A bus endpoint's routers: the links to each, and which router carries which topic.

:class:`RouterLink` is one router as an endpoint uses it (its PUB socket, the state of both
ZeroMQ connections, the batch queued for it). :class:`TopicOwners` chooses the router a topic
is published through: rendezvous hashing over the routers topics go to, sticky while a topic is
busy (see :meth:`TopicOwners.owner`). :func:`watch` and :func:`unwatch` follow a socket's
connections through a ZeroMQ socket monitor read by the event loop itself, handshakes that
fail included (:func:`handshake_problem` says why, for the logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

#: A handshake that failed: the router refused this endpoint, or they did not agree.
HANDSHAKE_FAILED = frozenset(
    {
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    }
)
#: ... of which ZeroMQ never retries the connection by itself (the endpoint must dial again).
NOT_RETRIED = frozenset({zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL})
_LINK_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)

#: Monitor events as a handler gets them: (endpoint, event, value).
EventHandler = Callable[[str, int, int], None]


class RouterLink:
    """One router as this endpoint uses it: the PUB socket towards its XSUB side, the state of
    both connections, and the messages queued for it during this loop pass."""

    __slots__ = (
        "backoff",
        "id",
        "monitor",
        "problems",
        "proven",
        "pub",
        "pub_up",
        "queue",
        "queued_bytes",
        "redials",
        "sub_up",
        "xpub",
        "xsub",
    )

    def __init__(self, rid: str, xsub: str, xpub: str, pub: zmq.Socket[bytes]) -> None:
        self.id = rid
        self.xsub = xsub
        self.xpub = xpub
        self.pub = pub
        self.monitor: zmq.Socket[bytes] | None = None
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        self.pub_up = False  # our PUB's connection to its XSUB side completed its handshake
        self.sub_up = False  # its XPUB side's connection to our SUB, likewise
        self.proven = False  # a check saw our probe come back through it since they came up
        #: Why a connection's last handshake failed, by side ("pub", "sub"); gone once one
        #: succeeds.
        self.problems: dict[str, str] = {}
        self.redials: dict[str, asyncio.TimerHandle] = {}  # by side: the next dial, scheduled
        self.backoff: dict[str, float] = {}  # by side: the wait before the next dial

    @property
    def connected(self) -> bool:
        """Both connections are up (proven or not)."""
        return self.pub_up and self.sub_up

    @property
    def live(self) -> bool:
        """Connected both ways and proven to deliver our subscriptions."""
        return self.connected and self.proven

    def mark(self, side: str, up: bool) -> bool:
        """The ``"pub"`` or ``"sub"`` connection went up or down; returns whether that changed
        anything (a link that goes down is no longer proven)."""
        if side == "pub":
            changed, self.pub_up = self.pub_up != up, up
        else:
            changed, self.sub_up = self.sub_up != up, up
        if changed and not up:
            self.proven = False
        return changed

    def close(self, linger_ms: int) -> None:
        for handle in self.redials.values():
            handle.cancel()
        self.redials.clear()
        self.pub.close(linger=linger_ms)


def handshake_problem(event: int, value: int, curve: bool) -> str:
    """What a failed handshake (a monitor ``event`` and its ``value``) means, for the logs."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"the router refused this process's key (ZAP status {value}: not an allowed key)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if curve:
                return "the router does not speak CURVE (its bus.curve is false)"
            return "the router requires CURVE (bus.curve is false here)"
        return f"the handshake failed (ZMTP protocol error {value:#x})"
    # The router closed the connection in the middle of the handshake.
    if curve:
        return (
            "the router dropped the CURVE handshake (is bus.router_public_key_file its key, "
            "and does it speak CURVE?)"
        )
    return "the router dropped the handshake (does it require CURVE? bus.curve is false here)"


class _Owner:
    """The router a topic is published through, and when it was last used."""

    __slots__ = ("generation", "last", "link")

    def __init__(self, link: RouterLink, last: float, generation: int) -> None:
        self.link = link
        self.last = last
        self.generation = generation


class TopicOwners:
    """Which router carries each topic (at most ``max_topics`` remembered)."""

    def __init__(self, move_idle: float, max_topics: int) -> None:
        self.move_idle = move_idle
        self.max_topics = max_topics
        self.ids: list[str] = []  #: the routers topics go to now
        self._owners: dict[bytes, _Owner] = {}
        self._generation = 0  # bumped whenever ids changes

    def update(self, links: dict[str, RouterLink], usable: list[str]) -> None:
        """The routers topics go to: the usable ones this endpoint is connected to; failing
        that, the live ones; failing that, any connected one (ZeroMQ drops the rest)."""
        ids = [r for r in usable if links[r].pub_up]
        if not ids:
            ids = sorted(r for r, link in links.items() if link.live)
        if not ids:
            ids = sorted(r for r, link in links.items() if link.pub_up)
        if not ids:
            ids = sorted(links)
        if ids != self.ids:
            self.ids = ids
            self._generation += 1

    def owner(self, topic: bytes, links: dict[str, RouterLink], now: float) -> RouterLink | None:
        """The router that carries ``topic``: rendezvous hashing over the routers topics go
        to, except that a topic stays with its router, while that one is still usable, until
        it has been idle for ``move_idle`` seconds (its last messages could otherwise be
        overtaken on the new path and dropped as late)."""
        entry = self._owners.get(topic)
        if entry is not None:
            if entry.generation == self._generation:
                entry.last = now
                return entry.link
            link = entry.link
            if (
                now - entry.last < self.move_idle
                and link.id in self.ids
                and links.get(link.id) is link
            ):
                entry.last = now  # busy: stays (and is looked at again at its next publish)
                return link
        ids = self.ids
        if not ids:
            return None
        if len(ids) == 1:
            link = links[ids[0]]
        else:
            best = max(
                ids, key=lambda rid: hashlib.blake2b(topic + rid.encode(), digest_size=8).digest()
            )
            link = links[best]
        owners = self._owners
        if entry is None and len(owners) >= self.max_topics:
            # Forget the topics idle long enough to move anyway; if none is, start over.
            idle = [t for t, e in owners.items() if now - e.last >= self.move_idle]
            for t in idle or list(owners):
                del owners[t]
        owners[topic] = _Owner(link, now, self._generation)
        return link


def set_heartbeats(sock: zmq.Socket[bytes], heartbeat_ms: int, link_timeout_ms: int) -> None:
    """ZMTP heartbeats on ``sock``'s connections (none when ``heartbeat_ms`` is 0)."""
    if heartbeat_ms > 0:
        timeout = link_timeout_ms or 3 * heartbeat_ms
        sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
        sock.setsockopt(zmq.HEARTBEAT_TTL, timeout)


def watch(
    loop: asyncio.AbstractEventLoop,
    sock: zmq.Socket[bytes],
    handler: EventHandler,
) -> zmq.Socket[bytes]:
    """A socket monitor on ``sock`` whose events (connection made, lost, refused) go to
    ``handler(endpoint, event, value)``, read by ``loop``."""
    monitor: zmq.Socket[bytes] = sock.get_monitor_socket(_LINK_EVENTS)
    fd = monitor.getsockopt(zmq.FD)
    assert isinstance(fd, int)

    def drain() -> None:
        while True:
            try:
                message = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return  # closed under us (shutdown)
            endpoint = message["endpoint"]
            handler(
                endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint),
                int(message["event"]),
                int(message["value"]),
            )

    loop.add_reader(fd, drain)
    loop.call_soon(drain)  # events may be queued already (edge-triggered FD)
    return monitor


def unwatch(
    loop: asyncio.AbstractEventLoop | None,
    sock: zmq.Socket[bytes],
    monitor: zmq.Socket[bytes] | None,
) -> None:
    """Stop the monitor :func:`watch` started."""
    if monitor is None:
        return
    with contextlib.suppress(zmq.ZMQError, ValueError, OSError):
        fd = monitor.getsockopt(zmq.FD)
        if loop is not None and isinstance(fd, int):
            loop.remove_reader(fd)
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close(0)
