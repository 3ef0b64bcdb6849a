"""The discovery contract, its value types, and the pieces every backend shares.

A backend (:mod:`~roomcast.discovery.static`, :mod:`~roomcast.discovery.consul`) implements
:class:`Discovery`; ``tests/discovery/test_discovery_contract.py`` runs one suite against each
of them (STYLE.md #4). The promises are written on :class:`Discovery`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import re
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Literal, Protocol, Self, TypeVar

from roomcast.errors import RoomcastError
from roomcast.ids import NodeId

log = logging.getLogger("roomcast.discovery")

Kind = Literal["node", "router"]

_ID = re.compile(r"[^/\s]{1,128}")


class DiscoveryUsageError(RoomcastError):
    """Our own code misused a :class:`Discovery` (a call outside ``async with``, a bad instance).

    Backend failures are never raised; this is only for mistakes of the calling code.
    """


@dataclass(frozen=True)
class ServiceInstance:
    """What one process announces: a node (``http``) or a router (``xsub``, ``xpub``, ``http``).

    ``meta`` is extra string metadata published with the instance (the backend's own keys win).
    Build one with :meth:`node` or :meth:`router`.
    """

    kind: Kind
    id: str  #: the node id, or the router id; no '/' or whitespace, at most 128 characters
    http: str  #: a node's base URL (``http://host:port``); a router's stats/health URL
    xsub: str = ""  #: routers only: where nodes publish
    xpub: str = ""  #: routers only: where nodes subscribe
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in ("node", "router"):
            raise DiscoveryUsageError(
                f"instance kind must be 'node' or 'router', not {self.kind!r}"
            )
        if not _ID.fullmatch(self.id):
            raise DiscoveryUsageError(f"invalid instance id {self.id!r}")
        if not self.http:
            raise DiscoveryUsageError("an instance needs its http address")
        if self.kind == "router" and not (self.xsub and self.xpub):
            raise DiscoveryUsageError("a router instance needs its xsub and xpub endpoints")
        if self.kind == "node" and (self.xsub or self.xpub):
            raise DiscoveryUsageError("a node instance has no xsub/xpub endpoints")
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @classmethod
    def node(cls, id: str, http: str, meta: Mapping[str, str] | None = None) -> ServiceInstance:
        """A node reachable at ``http``."""
        return cls("node", id, http, meta=meta or {})

    @classmethod
    def router(
        cls, id: str, xsub: str, xpub: str, http: str, meta: Mapping[str, str] | None = None
    ) -> ServiceInstance:
        """A router: nodes publish to ``xsub``, subscribe at ``xpub``; ``http`` serves stats."""
        return cls("router", id, http, xsub, xpub, meta=meta or {})


@dataclass(frozen=True, slots=True)
class RouterEndpoint:
    """A router as the discovery view reports it."""

    id: str
    xsub: str
    xpub: str
    http: str
    healthy: bool  #: its check passes; False: critical (or warning), treat it as unusable


@dataclass(frozen=True, slots=True)
class NodeEndpoint:
    """A node as the discovery view reports it."""

    id: NodeId
    http: str
    healthy: bool  #: its check passes; False: critical (or warning), treat the node as down


@dataclass(frozen=True, slots=True)
class DiscoveryView:
    """One snapshot of what the backend knows, sorted by id.

    ``index`` is this Discovery's own version counter: it grows by one with every new view
    (it is not a Consul index). ``source_ok`` is False while the backend cannot be reached;
    the entries are then the last known ones.
    """

    routers: tuple[RouterEndpoint, ...]
    nodes: tuple[NodeEndpoint, ...]
    source_ok: bool
    index: int

    @property
    def healthy_routers(self) -> tuple[RouterEndpoint, ...]:
        """The routers whose check passes: the ones to be connected to."""
        return tuple(r for r in self.routers if r.healthy)

    @property
    def healthy_nodes(self) -> tuple[NodeEndpoint, ...]:
        """The nodes whose check passes; the others are down for every replica at once."""
        return tuple(n for n in self.nodes if n.healthy)

    def router(self, router_id: str) -> RouterEndpoint | None:
        """The router ``router_id``, if the view has it."""
        return next((r for r in self.routers if r.id == router_id), None)

    def node(self, node_id: str) -> NodeEndpoint | None:
        """The node ``node_id``, if the view has it."""
        return next((n for n in self.nodes if n.id == node_id), None)


class Discovery(Protocol):
    """How a process announces itself and learns the cluster's routers and nodes.

    The promises every backend keeps (the contract suite pins each one):

    * **Lifecycle.** ``async with`` starts it and owns its tasks (STYLE.md #9). Entering never
      raises on a backend error: with the backend unreachable it starts with ``source_ok``
      False and keeps retrying. It may make one bounded first read so that the view is filled
      when ``__aenter__`` returns. ``register``, ``set_healthy``, ``deregister`` and ``watch``
      outside ``async with`` raise :class:`DiscoveryUsageError`; a Discovery is entered once.
    * **Registration.** :meth:`register` announces one instance, healthy unless
      :meth:`set_healthy` said otherwise, and keeps it announced (a TTL check passed every
      check interval, re-registering when the backend forgot it while it reports passing)
      until :meth:`deregister` or exit. One Discovery holds at most one registration:
      registering again replaces it. :meth:`set_healthy` (also allowed before
      :meth:`register`) reports the instance's own health now and keeps reporting it; the
      views' ``healthy`` follows it. The latest call wins, so a synchronous health callback
      may fire it off as a task. These calls make one bounded attempt, leave the retries to a
      background task, and never raise on a backend error.
    * **Views.** :meth:`view`, :meth:`routers` and :meth:`nodes` are local, non-blocking reads
      of the last known view; they never raise. An instance whose check fails or expired is
      listed with ``healthy`` False; one that vanished (deregistered, reaped) is dropped.
    * **Watching.** :meth:`watch` yields the current view first, then a new view each time the
      routers, the nodes (health included) or ``source_ok`` change. A slow consumer gets the
      latest view, not every intermediate one; ``index`` grows with each view. Several
      watchers may run at once; each iteration ends when the Discovery exits.
    * **Failures.** While the backend is unreachable the view keeps its last known entries
      with ``source_ok`` False, and recovers by itself. Backend errors are logged as one line
      when a failure starts or changes and one when it ends (never a traceback per retry),
      retried with exponential backoff, and never propagate out of a call or a task.
      Malformed entries from the backend are skipped and logged once each.
    * **Exit** cancels and awaits every task, deregisters what was registered (one bounded
      attempt: if it fails, the backend's TTL expiry takes over), ends the watchers and closes
      connections. It never raises on a backend error.
    """

    @property
    def source_ok(self) -> bool:
        """Whether the last exchange with the backend succeeded (static: always True)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def register(self, instance: ServiceInstance) -> None:
        """Announce ``instance`` and keep it announced until :meth:`deregister` or exit."""
        ...

    async def set_healthy(self, passing: bool, note: str = "") -> None:
        """Report this process's own health (``note`` says why) now, and keep reporting it."""
        ...

    async def deregister(self) -> None:
        """Withdraw the registration, if any, and stop keeping it alive."""
        ...

    def view(self) -> DiscoveryView:
        """The last known view (local read; never raises)."""
        ...

    def routers(self) -> list[RouterEndpoint]:
        """The last known routers, healthy or not (local read; never raises)."""
        ...

    def nodes(self) -> list[NodeEndpoint]:
        """The last known nodes, healthy or not (local read; never raises)."""
        ...

    def watch(self) -> AsyncGenerator[DiscoveryView, None]:
        """The current view, then every change, until the Discovery exits."""
        ...


# --- shared machinery -----------------------------------------------------------------------


class Lifecycle(enum.Enum):
    """A Discovery's states: NEW -> RUNNING (``__aenter__``) -> CLOSED (``__aexit__``).

    There is no way back: a closed Discovery is not entered again.
    """

    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


def require_running(state: Lifecycle, what: str) -> None:
    """Raise :class:`DiscoveryUsageError` unless ``state`` allows ``what``."""
    if state is not Lifecycle.RUNNING:
        raise DiscoveryUsageError(f"{what} needs a running Discovery (inside 'async with')")


def enter(state: Lifecycle) -> Lifecycle:
    """The state after ``__aenter__``; entering twice (or after exit) is an error."""
    if state is not Lifecycle.NEW:
        raise DiscoveryUsageError(f"a Discovery is entered once (it is {state.value})")
    return Lifecycle.RUNNING


class ViewHub:
    """Holds the current :class:`DiscoveryView` and serves :meth:`watch` (one home for both
    backends' watch semantics: first the current view, then the latest on each change)."""

    def __init__(
        self,
        source_ok: bool,
        routers: tuple[RouterEndpoint, ...] = (),
        nodes: tuple[NodeEndpoint, ...] = (),
    ) -> None:
        self.current = DiscoveryView(_by_id(routers), _by_id(nodes), source_ok, 0)
        self._changed = asyncio.Event()
        self._closed = False

    def show(
        self,
        routers: tuple[RouterEndpoint, ...],
        nodes: tuple[NodeEndpoint, ...],
        source_ok: bool,
    ) -> bool:
        """Make a new view if anything differs from the current one; True if it did."""
        routers, nodes = _by_id(routers), _by_id(nodes)
        cur = self.current
        if (routers, nodes, source_ok) == (cur.routers, cur.nodes, cur.source_ok):
            return False
        self.current = DiscoveryView(routers, nodes, source_ok, cur.index + 1)
        self._wake()
        return True

    def close(self) -> None:
        """End every :meth:`watch` iteration (after it has seen the current view)."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def watch(self) -> AsyncGenerator[DiscoveryView, None]:
        """The current view, then each newer one (skipping those a slow consumer missed)."""
        seen = -1
        while True:
            view = self.current
            if view.index > seen:
                seen = view.index
                yield view
                continue
            if self._closed:
                return
            await self._changed.wait()


_E = TypeVar("_E", RouterEndpoint, NodeEndpoint)


def _by_id(entries: tuple[_E, ...]) -> tuple[_E, ...]:
    return tuple(sorted(entries, key=lambda e: e.id))


class Backoff:
    """Exponential retry delays from ``low`` to ``high`` seconds, with jitter so that a fleet
    that lost its backend at the same moment does not retry in lockstep."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = max(low, high)
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next retry."""
        delay = min(self.high, self.low * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return max(self.low, random.uniform(delay / 2, delay))

    def reset(self) -> None:
        """Start again from ``low`` (after a success)."""
        self.attempts = 0


def describe(exc: BaseException) -> str:
    """One short line for a log: the exception's type and message."""
    text = " ".join(str(exc).split()) or "no detail"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


class FailureLog:
    """Logs a run of failures of one activity as one WARNING line, and one INFO line when it
    ends: a Consul outage costs two lines per activity, not a traceback per retry."""

    def __init__(self, what: str, logger: logging.Logger = log) -> None:
        self.what = what
        self.failures = 0
        self._log = logger
        self._last = ""

    def failed(self, exc: BaseException) -> None:
        """Count a failure; log it if it starts a run or differs from the previous one."""
        self.failures += 1
        text = describe(exc)
        if self.failures == 1 or text != self._last:
            self._log.warning("%s failed: %s (retrying with backoff)", self.what, text)
        else:
            self._log.debug("%s failed again (%d): %s", self.what, self.failures, text)
        self._last = text

    def ok(self) -> None:
        """The activity succeeded: end the run of failures, if any."""
        if self.failures:
            self._log.info("%s recovered after %d failed attempts", self.what, self.failures)
        self.failures = 0
        self._last = ""


class HubReads:
    """The reads every backend serves the same way from its :class:`ViewHub`."""

    _hub: ViewHub
    _state: Lifecycle

    def view(self) -> DiscoveryView:
        """The last known view."""
        return self._hub.current

    def routers(self) -> list[RouterEndpoint]:
        """The last known routers, healthy or not."""
        return list(self._hub.current.routers)

    def nodes(self) -> list[NodeEndpoint]:
        """The last known nodes, healthy or not."""
        return list(self._hub.current.nodes)

    def watch(self) -> AsyncGenerator[DiscoveryView, None]:
        """The current view, then one per change, until exit."""
        require_running(self._state, "watch")
        return self._hub.watch()
