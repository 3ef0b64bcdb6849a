"""The discovery backends' sources, fixtures and view predicates, for the discovery tests.

``test_discovery_contract.py`` runs one suite against each source: ``static``, ``consul`` on the
stand-in of Consul's HTTP API (``support/consul_standin.py``), and ``consul`` on a real ``consul
agent -dev`` when the binary is on PATH; ``test_discovery_consul.py`` holds the consul-only
promises. The fixtures are defined as ``<name>_fixture`` and registered under ``<name>``: a test
module imports the ones its tests take.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest

from roomcast.config import Settings
from roomcast.discovery import Discovery, DiscoveryView, ServiceInstance, make_discovery
from support.consul import ConsulAgentProcess
from support.consul_standin import ConsulStandin
from support.timing import PROCESS_TIMEOUT

ROUTER = ServiceInstance.router(
    "r1", "tcp://127.0.0.1:6555", "tcp://127.0.0.1:6556", "http://127.0.0.1:6557"
)
NODE = ServiceInstance.node("n1", "http://127.0.0.1:3101")
OTHER_NODE = ServiceInstance.node("n2", "http://127.0.0.1:3102")
TIMEOUT = PROCESS_TIMEOUT

# Fast enough for tests, valid for a real agent too (whose reaping minimum is 1m).
FAST = {
    "discovery.consul.check_ttl_ms": 3_000,
    "discovery.consul.check_interval_ms": 100,
    "discovery.consul.watch_wait_ms": 2_000,
    "discovery.consul.request_timeout_ms": 1_000,
    "discovery.consul.retry_min_ms": 20,
    "discovery.consul.retry_max_ms": 200,
}

NO_CONSUL = (
    "the consul binary is not on PATH (it cannot be installed on these machines); "
    "the same tests run against tests/support/consul_standin.py"
)


class Source(Protocol):
    """Where a backend's state lives, as the tests drive it."""

    name: str
    shared: bool  #: other Discovery objects see a registration (static: no, it is local)
    restartable: bool  #: stop()/start() make the backend unreachable and back (static: no)

    def settings(self, **overrides: Any) -> Settings: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class StaticSource:
    """cluster.toml's routers and nodes: nothing to start."""

    name, shared, restartable = "static", False, False

    def settings(self, **overrides: Any) -> Settings:
        return Settings().replace(
            **{
                "discovery.backend": "static",
                "discovery.routers": [
                    {"xsub": "tcp://127.0.0.1:5555", "xpub": "tcp://127.0.0.1:5556"}
                ],
                "discovery.nodes": ["http://127.0.0.1:3999"],
                **overrides,
            }
        )

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class ConsulSource:
    """Settings pointing the consul backend at ``self.port``."""

    name, shared, restartable = "consul", True, True
    port = 0

    def settings(self, **overrides: Any) -> Settings:
        return Settings().replace(
            **{
                "discovery.backend": "consul",
                "discovery.consul.address": f"http://127.0.0.1:{self.port}",
                **FAST,
                **overrides,
            }
        )


class StandinSource(ConsulSource):
    """The in-process Consul stand-in; a restart loses its state, as a dev agent's does. It
    first binds port 0, and a restart takes the port it bound then."""

    name = "consul-standin"

    def __init__(self) -> None:
        self.port = 0
        self.agent: ConsulStandin | None = None

    async def start(self) -> None:
        self.agent = await ConsulStandin(port=self.port).__aenter__()
        self.port = self.agent.port

    async def stop(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            await agent.close()


class AgentSource(ConsulSource):
    """A real ``consul agent -dev`` on free ports (:class:`support.consul.ConsulAgentProcess`)."""

    name = "consul-agent"

    def __init__(self) -> None:
        self.agent = ConsulAgentProcess()
        self.port = self.agent.port

    async def start(self) -> None:
        await self.agent.start()

    async def stop(self) -> None:
        await self.agent.close()


SOURCES = [
    "static",
    "consul-standin",
    pytest.param(
        "consul-agent", marks=pytest.mark.skipif(not shutil.which("consul"), reason=NO_CONSUL)
    ),
]


def _make_source(name: str) -> Source:
    if name == "static":
        return StaticSource()
    return StandinSource() if name == "consul-standin" else AgentSource()


@pytest.fixture(name="source", params=SOURCES)
async def source_fixture(request: pytest.FixtureRequest) -> AsyncIterator[Source]:
    """Each backend's state, started for the test and stopped after it."""
    src = _make_source(request.param)
    await src.start()
    try:
        yield src
    finally:
        await src.stop()


@pytest.fixture(name="consul_source", params=SOURCES[1:])
async def consul_source_fixture(request: pytest.FixtureRequest) -> AsyncIterator[ConsulSource]:
    """A Consul (stand-in or real agent) for the consul-only promises."""
    src = StandinSource() if request.param == "consul-standin" else AgentSource()
    await src.start()
    try:
        yield src
    finally:
        await src.stop()


Opener = Callable[..., Awaitable[Discovery]]


@pytest.fixture(name="open_discovery")
async def open_discovery_fixture(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """``await open_discovery(**overrides)``: a running Discovery of the test's source, exited
    (before the source stops) at the end of the test."""
    src: Source = request.getfixturevalue(
        "source" if "source" in request.fixturenames else "consul_source"
    )
    async with contextlib.AsyncExitStack() as stack:

        async def opener(**overrides: Any) -> Discovery:
            return await stack.enter_async_context(make_discovery(src.settings(**overrides)))

        yield opener


async def until(
    discovery: Discovery, predicate: Predicate, timeout: float = TIMEOUT
) -> DiscoveryView:
    """Follow ``discovery.watch()`` until a view satisfies ``predicate``."""
    async with asyncio.timeout(timeout), contextlib.aclosing(discovery.watch()) as views:
        async for view in views:
            if predicate(view):
                return view
    raise AssertionError("the watch ended before the condition held")


Predicate = Callable[[DiscoveryView], bool]


def healthy_node(node_id: str) -> Predicate:
    """The view lists ``node_id`` as healthy."""
    return lambda v: (n := v.node(node_id)) is not None and n.healthy


def unhealthy_node(node_id: str) -> Predicate:
    """The view lists ``node_id`` as unhealthy."""
    return lambda v: (n := v.node(node_id)) is not None and not n.healthy


def no_node(node_id: str) -> Predicate:
    """The view does not list ``node_id``."""
    return lambda v: v.node(node_id) is None
