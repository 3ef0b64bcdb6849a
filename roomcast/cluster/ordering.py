"""What a bus endpoint knows of each sender's sequence on each topic.

Every numbered envelope carries ``seq``, counting per (origin, topic) from 1. A receiver keeps
the last ``seq`` delivered per (origin incarnation, topic): a jump is a gap (messages lost on
the way, counted), and a number at or below the last is *late* (it took a slower router while
the topic changed owner): dropped and counted, never delivered out of order. ``seq`` 1 starts a
fresh sequence (a publisher that forgot the topic). Pure: no I/O.
"""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    """What to do with an envelope."""

    DELIVER = "deliver"
    LATE = "late"


class SequenceTracker:
    """The last sequence number delivered per (sender, topic); at most ``max_senders`` senders
    per topic (every emitter run and node restart is a new one: the one first seen longest ago
    is forgotten, and should it speak again, its next message starts a fresh sequence)."""

    __slots__ = ("_last", "max_senders")

    def __init__(self, max_senders: int) -> None:
        self.max_senders = max_senders
        self._last: dict[bytes, dict[tuple[str, int], int]] = {}

    def check(self, topic: bytes, origin: str, incarnation: int, seq: int) -> tuple[Verdict, int]:
        """Record ``seq``; returns whether to deliver it and how many messages went missing
        just before it."""
        seen = self._last.get(topic)
        if seen is None:
            seen = self._last[topic] = {}
        key = (origin, incarnation)
        last = seen.get(key)
        if last is None and len(seen) >= self.max_senders:
            del seen[next(iter(seen))]
        missing = 0
        if last is not None and seq != 1:
            if seq <= last:
                return Verdict.LATE, 0
            missing = seq - last - 1
        seen[key] = seq
        return Verdict.DELIVER, missing

    def forget(self, topic: bytes) -> None:
        """The topic was (re)subscribed or dropped: its senders start afresh."""
        self._last.pop(topic, None)

    def senders(self, topic: bytes) -> int:
        """How many senders of ``topic`` are tracked."""
        return len(self._last.get(topic, ()))
