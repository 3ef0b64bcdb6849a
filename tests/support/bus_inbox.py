"""A bus handler for tests of the bus itself: it records every message that arrives and lets a
test wait for the one it expects (never for time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from roomcast.cluster import wire
from roomcast.cluster.wire import Topic
from support.timing import TIMEOUT

#: What a bus handler is given: the topic, the envelope's header, its body.
Message = tuple[Topic, wire.Header, wire.Body]


class Inbox:
    """A bus handler that records what arrives and lets a test wait for a message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()

    def __call__(self, topic: Topic, header: wire.Header, body: wire.Body) -> None:
        self.messages.append((topic, header, body))
        self._arrived.set()

    async def wait_for(self, match: Callable[[Message], bool], timeout: float = TIMEOUT) -> Message:
        """The first recorded message that matches, waiting for it if need be."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.messages:
                    if match(message):
                        return message
                self._arrived.clear()
                await self._arrived.wait()

    def bodies(self, topic: Topic) -> list[wire.Body]:
        """Everything received on ``topic``, in order."""
        return [body for t, _, body in self.messages if t == topic]
