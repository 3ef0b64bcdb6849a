"""Emit to rooms from a Python process that is not a node (a worker, a cron job, the CLI).

The emitter publishes through the routers exactly as a node does, but joins no room and takes
no part in gossip, so it is not counted as a node::

    async with Emitter(settings.discovery.routers) as emitter:
        emitter.of("/chat").to("lobby").except_("muted").emit("news", {"text": "hi"})

The packet is encoded once; every node with members of the rooms delivers it to them, once
each. A sid (from ``fetch_sockets`` or a handler) addresses one socket wherever it lives.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from roomcast.cluster import wire
from roomcast.cluster.bus import Bus
from roomcast.config import RouterAddress
from roomcast.ids import TAG_BYTES, room_names, tag_of_sid
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames


class Emitter:
    """A publish-only endpoint on the bus."""

    def __init__(
        self,
        routers: Sequence[RouterAddress],
        *,
        origin: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.origin = origin or f"emitter-{secrets.token_hex(4)}"
        self.connect_timeout = connect_timeout
        self._topic = wire.probe_topic(secrets.token_bytes(TAG_BYTES))
        self._msg_ids = itertools.count(1)
        self.bus = Bus(
            self.origin,
            time.time_ns() // 1000,
            [(r.key, r.xsub, r.xpub) for r in routers],
            lambda *_: None,
            linger_ms=2_000,
        )

    async def __aenter__(self) -> Emitter:
        await self.bus.__aenter__()
        try:
            # Our own probe coming back proves the router takes what we publish.
            await self.bus.subscribe(self._topic, self.connect_timeout)
        except TimeoutError:
            await self.bus.__aexit__(None, None, None)
            raise ConnectionError("no router answered") from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.bus.__aexit__(exc_type, exc, tb)

    def of(self, namespace: str) -> EmitterOperator:
        """Target a namespace."""
        return EmitterOperator(self, namespace)

    def to(self, *rooms: str | Iterable[str]) -> EmitterOperator:
        """Target rooms of the root namespace."""
        return EmitterOperator(self, "/").to(*rooms)

    def emit(self, event: str, *args: Any) -> None:
        """Emit to every socket of the root namespace."""
        EmitterOperator(self, "/").emit(event, *args)

    def publish(self, op: EmitterOperator, event: str, args: tuple[Any, ...]) -> int:
        """Encode once and publish on each target topic; returns the number of envelopes."""
        frames = Frames(sio.encode_event(op.namespace, event, args))
        body = wire.RoomMessage(
            next(self._msg_ids),
            op.namespace,
            tuple(sorted(op.rooms)),
            tuple(sorted(op.except_rooms)),
            (),
            op.volatile_,
            frames.ws,
        )
        topics: list[wire.Topic] = []
        if not op.rooms:
            topics.append(wire.namespace_topic(op.namespace))
        for room in op.rooms:
            topics.append(wire.room_topic(op.namespace, room))
            tag = tag_of_sid(room)
            if tag is not None:
                # Perhaps a sid: its node's direct topic (no node has members in a room named
                # like a live node's sid, since nodes refuse to join such names).
                topics.append(wire.node_topic(tag))
        for topic in topics:
            self.bus.publish(topic, body)
        return len(topics)


@dataclass(frozen=True, slots=True)
class EmitterOperator:
    """An immutable broadcast description, as :class:`roomcast.BroadcastOperator`."""

    emitter: Emitter
    namespace: str
    rooms: frozenset[str] = frozenset()
    except_rooms: frozenset[str] = frozenset()
    volatile_: bool = False

    def to(self, *rooms: str | Iterable[str]) -> EmitterOperator:
        """Also target ``rooms``."""
        return replace(self, rooms=self.rooms | frozenset(room_names(rooms)))

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> EmitterOperator:
        """Exclude the members of ``rooms``."""
        return replace(self, except_rooms=self.except_rooms | frozenset(room_names(rooms)))

    @property
    def volatile(self) -> EmitterOperator:
        """Drop the message for recipients that cannot take it now."""
        return replace(self, volatile_=True)

    def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` with ``args`` to every targeted socket, once each."""
        self.emitter.publish(self, event, args)
