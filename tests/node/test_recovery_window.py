"""How long a node keeps a lost session (LocalAdapter's persist_session / restore_session), on
an event loop whose clock the test moves: a session is recoverable until the last instant of
its window, and not after it; a claim under way holds it past its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Container
from typing import Any

import pytest

from roomcast.errors import RecoveryRefusedError
from roomcast.ids import NodeId, new_pid, new_sid, node_tag
from roomcast.node import recovery
from roomcast.node.adapter import Member
from roomcast.node.local import LocalAdapter
from roomcast.node.recovery import History, Membership, PersistedSession
from roomcast.node.stats import NodeStats

TAG = node_tag("n1", 1)
WINDOW = 120.0


class Ghost:
    """What the adapter reads of a ghost: its last offset."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.last_offset = 0
        self.connected = False


class OneNamespace:
    """A namespace with one ghost, recording what the adapter asks of it."""

    def __init__(self, ghost: Ghost) -> None:
        self._ghost: Ghost | None = ghost
        self.history: History | None = History(100, 10**6)
        self.released: list[str] = []

    def ghost(self, sid: str) -> Any:
        return self._ghost if self._ghost is not None and self._ghost.sid == sid else None

    def release(self, sid: str) -> None:
        self.released.append(sid)
        self._ghost = None

    def supersede(self, pid: str) -> bool:
        return False

    def recipients(self, *args: Any) -> Collection[Member]:
        return ()

    def sids(self) -> Container[str]:
        return ()

    def next_ack_id(self) -> int:
        return 0


class Sockets:
    def __init__(self, ns: OneNamespace) -> None:
        self.ns = ns

    def namespace(self, name: str) -> Any:
        return self.ns if name == "/" else None

    def room_counts(self, namespace: str | None) -> dict[tuple[str, str], int]:
        return {}

    def all(self) -> list[Any]:
        return [self.ns]


@pytest.fixture
async def clock(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[float]]:
    """The running loop's clock, moved by hand (``clock[0] += seconds``)."""
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    yield now


async def passes(clock: list[float], seconds: float) -> None:
    """Move the clock, and let every timer that is due run."""
    clock[0] += seconds
    for _ in range(3):
        await asyncio.sleep(0)


def kept() -> tuple[LocalAdapter, OneNamespace, PersistedSession]:
    sid, pid = new_sid(TAG), new_pid(TAG)
    ns = OneNamespace(Ghost(sid))
    adapter = LocalAdapter(NodeId("n1"), TAG, Sockets(ns), NodeStats())
    session = PersistedSession(
        "/", sid, pid, frozenset({sid}), {}, 0, Membership(sid, 0, 8), WINDOW
    )
    adapter.persist_session(session)
    return adapter, ns, session


async def test_recoverable_until_the_last_instant_of_its_window(clock: list[float]) -> None:
    """A quiet session is recovered near the very end of its window."""
    adapter, ns, session = kept()
    await passes(clock, WINDOW - 0.001)
    claim = await adapter.restore_session("/", session.pid, None)
    assert await claim.complete() == []
    assert adapter.stats.sessions_kept == 0 and ns.released == []


async def test_released_at_the_end_of_its_window(clock: list[float]) -> None:
    """When its window ends the session is released from its rooms, and then unknown."""
    adapter, ns, session = kept()
    await passes(clock, WINDOW)
    assert ns.released == [session.sid] and adapter.stats.sessions_kept == 0
    with pytest.raises(RecoveryRefusedError) as info:
        await adapter.restore_session("/", session.pid, None)
    assert info.value.reason == recovery.UNKNOWN_SESSION


async def test_a_claim_holds_the_session_past_its_window(clock: list[float]) -> None:
    """A session claimed before its window ended is not released while the claim is under
    way (the middleware runs): completed, it is recovered; cancelled after the window, it is
    released then."""
    adapter, ns, session = kept()
    await passes(clock, WINDOW - 1)
    claim = await adapter.restore_session("/", session.pid, None)
    with pytest.raises(RecoveryRefusedError) as info:
        await adapter.restore_session("/", session.pid, None)
    assert info.value.reason == recovery.SESSION_BUSY
    await passes(clock, 2)
    assert ns.released == []
    claim.cancel()
    assert ns.released == [session.sid]

    adapter, ns, session = kept()
    claim = await adapter.restore_session("/", session.pid, None)
    await passes(clock, WINDOW + 1)
    assert await claim.complete() == [] and ns.released == []


async def test_a_claim_cancelled_in_time_leaves_it_kept(clock: list[float]) -> None:
    """A claim cancelled within the window (the middleware refused) leaves the session kept,
    and recoverable by the next claim."""
    adapter, _, session = kept()
    (await adapter.restore_session("/", session.pid, None)).cancel()
    assert adapter.stats.sessions_kept == 1
    await passes(clock, WINDOW / 2)
    assert await (await adapter.restore_session("/", session.pid, None)).complete() == []
