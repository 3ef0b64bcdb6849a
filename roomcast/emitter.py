"""Emit to rooms from a Python process that is not a node (a worker, a cron job, the CLI).

The emitter publishes through the routers exactly as a node does, but joins no room and takes
no part in gossip, so it is not counted as a node::

    async with Emitter.from_settings(settings) as emitter:
        emitter.of("/chat").to("lobby").except_("muted").emit("news", {"text": "hi"})

The packet is encoded once; every node with members of the rooms delivers it to them, once
each. A sid (from ``fetch_sockets`` or a handler) addresses one socket wherever it lives.

With ``bus.curve`` the emitter is a CURVE client like a node: its key pair is
``bus.secret_key_file``, and the routers must list its public key in their allowed keys.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from roomcast.cluster import routing, wire
from roomcast.cluster.bus import Bus
from roomcast.cluster.curve import ClientKeys, client_keys
from roomcast.cluster.routing import Target, TargetChain
from roomcast.config import RouterAddress, Settings, refuse_open_bus
from roomcast.ids import TAG_BYTES, namespace_name
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
        max_room_topics: int = routing.MAX_ROOM_TOPICS,
        curve: ClientKeys | None = None,
        allow_open_bus: bool = False,
    ) -> None:
        for i, router in enumerate(routers):  # the open-bus rule, as for a node
            for key in ("xsub", "xpub"):
                refuse_open_bus(
                    f"discovery.routers[{i}].{key}",
                    getattr(router, key),
                    curve=curve is not None,
                    allow_open_bus=allow_open_bus,
                )
        self.origin = origin or f"emitter-{secrets.token_hex(4)}"
        self.connect_timeout = connect_timeout
        #: A broadcast to more rooms goes once on its namespace's topic (see routing.topics).
        self.max_room_topics = max_room_topics
        self._topic = wire.probe_topic(secrets.token_bytes(TAG_BYTES))
        self._msg_ids = itertools.count(1)
        self.bus = Bus(
            self.origin,
            time.time_ns() // 1000,
            [(r.key, r.xsub, r.xpub) for r in routers],
            lambda *_: None,
            linger_ms=2_000,
            curve=curve,
            allow_open_bus=allow_open_bus,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> Emitter:
        """An emitter for the routers, keys and limits of ``settings`` (key files are read
        now: a bad one is a :class:`~roomcast.errors.ConfigError`); ``options`` go to the
        constructor."""
        options.setdefault("max_room_topics", settings.cluster.max_room_topics)
        return cls(
            settings.discovery.routers,
            curve=client_keys(settings),
            allow_open_bus=settings.bus.allow_open_bus,
            **options,
        )

    async def __aenter__(self) -> Emitter:
        await self.bus.__aenter__()
        try:
            # Our own probe coming back proves the router takes what we publish.
            await self.bus.subscribe(self._topic, self.connect_timeout)
        except TimeoutError:
            problems = self.bus.link_problems()
            await self.bus.__aexit__(None, None, None)
            why = "; ".join(f"router {rid}: {text}" for rid, text in problems.items())
            raise ConnectionError(
                f"no router answered ({why})" if why else "no router answered"
            ) from None
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
        return EmitterOperator(self, Target(namespace_name(namespace)))

    def to(self, *rooms: str | Iterable[str]) -> EmitterOperator:
        """Target rooms of the root namespace."""
        return self.of("/").to(*rooms)

    def emit(self, event: str, *args: Any) -> None:
        """Emit to every socket of the root namespace."""
        self.of("/").emit(event, *args)

    def broadcast(self, target: Target, event: str, args: tuple[Any, ...]) -> int:
        """Encode once and publish on each target topic; returns the number of envelopes."""
        frames = Frames(sio.encode_event(target.namespace, event, args))
        body = routing.room_message(next(self._msg_ids), target, frames.ws)
        # The emitter knows no node: a sid goes both ways.
        sent = routing.topics(target, max_room_topics=self.max_room_topics)
        for topic in sent:
            self.bus.publish(topic, body)
        return len(sent)


@dataclass(frozen=True, slots=True)
class EmitterOperator(TargetChain):
    """An immutable broadcast description, as :class:`roomcast.BroadcastOperator`
    (``to``/``in_``/``except_``/``volatile`` chain from :class:`TargetChain`)."""

    emitter: Emitter
    target: Target

    def retarget(self, target: Target) -> EmitterOperator:
        return EmitterOperator(self.emitter, target)

    def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` with ``args`` to every targeted socket, once each."""
        self.emitter.broadcast(self.target, event, args)
