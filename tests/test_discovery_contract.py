"""One contract suite for every discovery backend (STYLE.md #4), then the consul-only promises.

The suite runs against ``static``, ``consul`` on the stand-in of Consul's HTTP API
(``tests/consul_standin.py``), and ``consul`` on a real ``consul agent -dev`` when the binary is
on PATH. Where static documents a different promise (its registrations are local, it has no
backend to lose), the test asserts that documented behaviour instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import pytest
from consul_standin import ConsulStandin, StandinProcess, make_client

from roomcast.config import Settings
from roomcast.discovery import (
    Discovery,
    DiscoveryUsageError,
    DiscoveryView,
    ServiceInstance,
    make_discovery,
)
from roomcast.discovery.consul import ConsulDiscovery
from roomcast.discovery.static import StaticDiscovery

ROUTER = ServiceInstance.router(
    "r1", "tcp://127.0.0.1:6555", "tcp://127.0.0.1:6556", "http://127.0.0.1:6557"
)
NODE = ServiceInstance.node("n1", "http://127.0.0.1:3101")
OTHER_NODE = ServiceInstance.node("n2", "http://127.0.0.1:3102")
TIMEOUT = 10.0

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
    "the same tests run against tests/consul_standin.py"
)


def free_port() -> int:
    """A port nothing listens on (closed again at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    """The in-process Consul stand-in; a restart loses its state, as a dev agent's does."""

    name = "consul-standin"

    def __init__(self) -> None:
        self.port = free_port()
        self.agent: ConsulStandin | None = None

    async def start(self) -> None:
        self.agent = await ConsulStandin(port=self.port).__aenter__()

    async def stop(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            await agent.close()


class AgentSource(ConsulSource):
    """A real ``consul agent -dev`` on free ports."""

    name = "consul-agent"

    def __init__(self) -> None:
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None
        # The agent's log, shown if it fails to start; it lives as long as the process.
        self.output = tempfile.TemporaryFile()  # noqa: SIM115

    async def start(self) -> None:
        self.output.close()
        self.output = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = process = await asyncio.create_subprocess_exec(
            *("consul", "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1"),
            f"-http-port={self.port}",
            f"-serf-lan-port={free_port()}",
            f"-serf-wan-port={free_port()}",
            f"-server-port={free_port()}",
            *("-dns-port=-1", "-grpc-port=-1", "-hcl", "ports { grpc_tls = -1 }"),
            stdout=self.output,
            stderr=asyncio.subprocess.STDOUT,
        )
        # Ready once it has elected itself leader (polling: the agent offers no event).
        async with asyncio.timeout(30), aiohttp.ClientSession() as http:
            while True:
                if process.returncode is not None:
                    self.output.seek(0)
                    tail = self.output.read()[-2000:].decode(errors="replace")
                    raise RuntimeError(f"consul agent -dev exited:\n{tail}")
                with contextlib.suppress(aiohttp.ClientError):
                    url = f"http://127.0.0.1:{self.port}/v1/status/leader"
                    async with http.get(url) as response:
                        if response.status == 200 and (await response.json()):
                            return
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        self.output.close()


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


@pytest.fixture(params=SOURCES)
async def source(request: pytest.FixtureRequest) -> AsyncIterator[Source]:
    """Each backend's state, started for the test and stopped after it."""
    src = _make_source(request.param)
    await src.start()
    try:
        yield src
    finally:
        await src.stop()


@pytest.fixture(params=SOURCES[1:])
async def consul_source(request: pytest.FixtureRequest) -> AsyncIterator[ConsulSource]:
    """A Consul (stand-in or real agent) for the consul-only promises."""
    src = StandinSource() if request.param == "consul-standin" else AgentSource()
    await src.start()
    try:
        yield src
    finally:
        await src.stop()


Opener = Callable[..., Awaitable[Discovery]]


@pytest.fixture
async def open_discovery(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
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


async def observer(source: Source, mine: Discovery, open_discovery: Opener) -> Discovery:
    """Who sees ``mine``'s registration: another Discovery, or (static) ``mine`` itself."""
    return await open_discovery() if source.shared else mine


# --- the contract -----------------------------------------------------------------------------


async def test_factory_builds_the_configured_backend(source: Source) -> None:
    """make_discovery builds the backend that discovery.backend names."""
    expected = StaticDiscovery if source.name == "static" else ConsulDiscovery
    assert isinstance(make_discovery(source.settings()), expected)


async def test_entering_reads_the_backend(source: Source, open_discovery: Opener) -> None:
    """Once entered, the view is read (source_ok) and the local reads agree with it."""
    discovery = await open_discovery()
    view = discovery.view()
    assert view.source_ok and discovery.source_ok
    assert discovery.routers() == list(view.routers)
    assert discovery.nodes() == list(view.nodes)
    if source.name == "static":
        assert [r.xsub for r in view.routers] == ["tcp://127.0.0.1:5555"]
        assert [n.http for n in view.nodes] == ["http://127.0.0.1:3999"]


async def test_a_registered_router_is_listed_healthy(
    source: Source, open_discovery: Opener
) -> None:
    """A registered router appears, healthy, with the endpoints it registered."""
    discovery = await open_discovery()
    await discovery.register(ROUTER)
    view = await until(discovery, lambda v: v.router("r1") is not None)
    router = view.router("r1")
    assert router is not None
    assert (router.xsub, router.xpub, router.http, router.healthy) == (
        ROUTER.xsub,
        ROUTER.xpub,
        ROUTER.http,
        True,
    )
    assert router in view.healthy_routers
    assert router in discovery.routers()


async def test_a_registered_node_is_listed_healthy(source: Source, open_discovery: Opener) -> None:
    """A registered node appears, healthy, with its HTTP address."""
    discovery = await open_discovery()
    await discovery.register(NODE)
    view = await until(discovery, healthy_node("n1"))
    assert view.node("n1") in view.healthy_nodes
    assert [n.http for n in discovery.nodes() if n.id == "n1"] == [NODE.http]


async def test_registrations_reach_other_discoveries_only_when_shared(
    source: Source, open_discovery: Opener
) -> None:
    """Consul shows a registration to every process; static keeps it local (documented)."""
    mine, other = await open_discovery(), await open_discovery()
    await mine.register(NODE)
    await until(mine, healthy_node("n1"))
    if source.shared:
        await until(other, healthy_node("n1"))
    else:
        assert other.view().node("n1") is None


async def test_set_healthy_false_makes_the_instance_unhealthy(
    source: Source, open_discovery: Opener
) -> None:
    """set_healthy(False) lists the instance as unhealthy (not dropped); True heals it."""
    mine = await open_discovery()
    watcher = await observer(source, mine, open_discovery)
    await mine.register(NODE)
    await until(watcher, healthy_node("n1"))
    await mine.set_healthy(False, "deaf: no echo from the bus")
    await until(watcher, unhealthy_node("n1"))
    await mine.set_healthy(True, "hearing again")
    await until(watcher, healthy_node("n1"))


async def test_unhealthy_before_registering_registers_unhealthy(
    source: Source, open_discovery: Opener
) -> None:
    """An instance registered after set_healthy(False) first appears unhealthy."""
    mine = await open_discovery()
    watcher = await observer(source, mine, open_discovery)
    await mine.set_healthy(False, "draining")
    await mine.register(NODE)
    view = await until(watcher, lambda v: v.node("n1") is not None)
    node = view.node("n1")
    assert node is not None and not node.healthy


async def test_deregister_withdraws_the_instance(source: Source, open_discovery: Opener) -> None:
    """deregister() drops the instance from the views; doing it again is harmless."""
    mine = await open_discovery()
    watcher = await observer(source, mine, open_discovery)
    await mine.register(NODE)
    await until(watcher, healthy_node("n1"))
    await mine.deregister()
    await until(watcher, no_node("n1"))
    await mine.deregister()


async def test_exit_deregisters(source: Source, open_discovery: Opener) -> None:
    """Leaving ``async with`` withdraws the registration."""
    mine = make_discovery(source.settings())
    async with mine:
        watcher = await observer(source, mine, open_discovery)
        await mine.register(NODE)
        await until(watcher, healthy_node("n1"))
    if source.shared:
        await until(watcher, no_node("n1"))
    else:
        assert mine.view().node("n1") is None


async def test_registering_again_replaces_the_registration(
    source: Source, open_discovery: Opener
) -> None:
    """A Discovery holds one registration: registering another instance replaces it."""
    mine = await open_discovery()
    watcher = await observer(source, mine, open_discovery)
    await mine.register(NODE)
    await until(watcher, healthy_node("n1"))
    await mine.register(OTHER_NODE)
    await until(watcher, lambda v: v.node("n1") is None and healthy_node("n2")(v))


async def test_watch_first_yields_the_current_view(source: Source, open_discovery: Opener) -> None:
    """A new watch starts with the view as it is."""
    discovery = await open_discovery()
    async with contextlib.aclosing(discovery.watch()) as views:
        first = await anext(views)
    assert first == discovery.view()


async def test_watch_yields_each_change_with_a_growing_index(
    source: Source, open_discovery: Opener
) -> None:
    """Every change brings a new view, whose index is above the previous one."""
    discovery = await open_discovery()
    seen: list[DiscoveryView] = []

    async def next_until(views: AsyncIterator[DiscoveryView], wanted: Predicate) -> None:
        while not wanted(view := await anext(views)):
            seen.append(view)
        seen.append(view)

    async with asyncio.timeout(TIMEOUT), contextlib.aclosing(discovery.watch()) as views:
        seen.append(await anext(views))
        await discovery.register(NODE)
        await next_until(views, healthy_node("n1"))
        await discovery.set_healthy(False, "draining")
        await next_until(views, unhealthy_node("n1"))
    indexes = [v.index for v in seen]
    assert indexes == sorted(set(indexes))
    assert len(seen) >= 3


async def test_several_watchers_each_see_a_change(source: Source, open_discovery: Opener) -> None:
    """Concurrent watchers of one Discovery all see the same change."""
    discovery = await open_discovery()
    watchers = [asyncio.create_task(until(discovery, healthy_node("n1"))) for _ in range(3)]
    await discovery.register(NODE)
    views = await asyncio.wait_for(asyncio.gather(*watchers), TIMEOUT)
    assert all(healthy_node("n1")(v) for v in views)


async def test_watch_ends_when_the_discovery_exits(source: Source) -> None:
    """An iteration of watch() finishes when its Discovery exits."""
    discovery = make_discovery(source.settings())
    views: list[DiscoveryView] = []
    async with discovery:
        first_seen = asyncio.Event()

        async def follow() -> None:
            async for view in discovery.watch():
                views.append(view)
                first_seen.set()

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(first_seen.wait(), TIMEOUT)
    await asyncio.wait_for(follower, TIMEOUT)
    assert views


async def test_calls_outside_async_with_are_usage_errors(source: Source) -> None:
    """register, set_healthy, deregister and watch need a running Discovery; reads do not."""
    discovery = make_discovery(source.settings())
    for call in (
        lambda: discovery.register(NODE),
        lambda: discovery.set_healthy(False),
        discovery.deregister,
        lambda: anext(discovery.watch()),
    ):
        with pytest.raises(DiscoveryUsageError):
            await call()
    assert isinstance(discovery.view(), DiscoveryView)
    assert isinstance(discovery.routers(), list) and isinstance(discovery.nodes(), list)
    async with discovery:
        pass
    with pytest.raises(DiscoveryUsageError):
        await discovery.register(NODE)
    with pytest.raises(DiscoveryUsageError):
        await discovery.__aenter__()


def test_instances_are_validated() -> None:
    """A router needs xsub and xpub, a node none, and ids cannot hold '/' or spaces."""
    with pytest.raises(DiscoveryUsageError):
        ServiceInstance("router", "r1", "http://x")
    with pytest.raises(DiscoveryUsageError):
        ServiceInstance("node", "n1", "http://x", xsub="tcp://x:1")
    with pytest.raises(DiscoveryUsageError):
        ServiceInstance.node("a/b", "http://x")
    with pytest.raises(DiscoveryUsageError):
        ServiceInstance.node("n1", "")
    meta = {"zone": "a"}
    node = ServiceInstance.node("n1", "http://x", meta)
    meta["zone"] = "b"
    assert node.meta == {"zone": "a"}


async def test_an_unreachable_backend_keeps_the_last_view_and_recovers(
    source: Source, open_discovery: Opener
) -> None:
    """Losing the backend keeps the last view with source_ok False, raises nothing, and the
    view and the registration come back with it (static: never unreachable)."""
    mine = await open_discovery()
    await mine.register(ROUTER)
    before = await until(mine, lambda v: v.router("r1") is not None and v.source_ok)
    await source.stop()
    if not source.restartable:
        assert mine.view() == before and mine.source_ok
        return
    lost = await until(mine, lambda v: not v.source_ok)
    assert (lost.routers, lost.nodes) == (before.routers, before.nodes)
    assert mine.routers() == list(before.routers)
    await mine.set_healthy(True, "still forwarding")  # no exception while Consul is away
    await source.start()  # a restarted dev agent has forgotten the registration
    await until(mine, lambda v: v.source_ok and v.router("r1") is not None)


async def test_an_unreachable_backend_at_start_is_not_fatal(
    source: Source, open_discovery: Opener
) -> None:
    """Entering and registering with the backend down raise nothing; both catch up once it is
    up (static: never unreachable)."""
    await source.stop()
    mine = await open_discovery()
    await mine.register(NODE)
    if not source.restartable:
        assert mine.source_ok
        return
    assert not mine.source_ok
    assert mine.routers() == [] and mine.nodes() == []
    await source.start()
    await until(mine, lambda v: v.source_ok and healthy_node("n1")(v))


async def test_exit_never_raises_when_the_backend_is_gone(source: Source) -> None:
    """Exiting with the backend unreachable logs the failed deregistration and returns."""
    async with make_discovery(source.settings()) as mine:
        await mine.register(NODE)
        await until(mine, healthy_node("n1"))
        await source.stop()


# --- consul only ------------------------------------------------------------------------------


@pytest.fixture
async def raw(consul_source: ConsulSource) -> AsyncIterator[Any]:
    """A py-consul client of the test's Consul, playing other (or broken) processes."""
    client = make_client(consul_source.port)
    yield client
    await client.close()


async def test_a_process_that_stops_passing_turns_unhealthy_then_vanishes(
    raw: Any, open_discovery: Opener
) -> None:
    """An expired TTL lists the node unhealthy (not dropped); a vanished one is dropped."""
    watcher = await open_discovery()
    ok = await raw.agent.service.register(
        "roomcast-node",
        service_id="roomcast-node-crashed",
        meta={"id": "crashed", "http": "http://127.0.0.1:3199"},
        check={"TTL": "1s", "Status": "passing"},
    )
    assert ok
    await until(watcher, healthy_node("crashed"))
    await until(watcher, unhealthy_node("crashed"))  # nobody passes the check any more
    assert await raw.agent.service.deregister("roomcast-node-crashed")
    await until(watcher, no_node("crashed"))


async def test_malformed_services_are_skipped(raw: Any, open_discovery: Opener) -> None:
    """Services under our names without the meta roomcast needs are skipped, not fatal."""
    assert await raw.agent.service.register("roomcast-node", service_id="junk-1")
    assert await raw.agent.service.register(
        "roomcast-router", service_id="junk-2", meta={"id": "x", "http": "http://x"}
    )
    watcher = await open_discovery()  # its first read, done on entering, met both
    assert isinstance(watcher, ConsulDiscovery) and watcher.malformed >= 2
    assert watcher.source_ok
    mine = await open_discovery()
    await mine.register(NODE)
    view = await until(watcher, healthy_node("n1"))
    assert [n.id for n in view.nodes] == ["n1"] and view.routers == ()


async def test_a_registration_the_agent_forgot_is_made_again(
    raw: Any, open_discovery: Opener
) -> None:
    """A registration removed behind the process's back (reaped, agent restarted) returns."""
    watcher, mine = await open_discovery(), await open_discovery()
    await mine.register(NODE)
    await until(watcher, healthy_node("n1"))
    assert await raw.agent.service.deregister("roomcast-node-n1")
    index, entries = await raw.health.service("roomcast-node")
    async with asyncio.timeout(TIMEOUT):
        while not any(e["Service"]["ID"] == "roomcast-node-n1" for e in entries):
            index, entries = await raw.health.service("roomcast-node", index=index, wait="5s")
    await until(watcher, healthy_node("n1"))


async def test_an_instance_reaped_while_failing_stays_out_until_passing() -> None:
    """Reaped while failing, an instance is not put back critical; passing again brings it
    (stand-in only: a real agent reaps after a minute at the earliest)."""
    async with ConsulStandin() as agent, contextlib.AsyncExitStack() as stack:
        base = {**FAST, "discovery.backend": "consul", "discovery.consul.address": agent.address}
        reaped_fast = {**base, "discovery.consul.deregister_critical_after_ms": 300}
        watcher = await stack.enter_async_context(make_discovery(Settings().replace(**base)))
        mine = await stack.enter_async_context(make_discovery(Settings().replace(**reaped_fast)))
        await mine.set_healthy(False, "deaf")
        await mine.register(NODE)
        await until(watcher, unhealthy_node("n1"))
        await until(watcher, no_node("n1"))
        await mine.set_healthy(False, "still deaf")
        assert isinstance(mine, ConsulDiscovery) and not mine.registered
        assert "roomcast-node-n1" not in agent.services
        await mine.set_healthy(True, "hearing again")
        await until(watcher, healthy_node("n1"))


async def test_the_configured_acl_token_is_sent() -> None:
    """The token in discovery.consul.token reaches Consul (and only that one)."""
    async with ConsulStandin(acl_token="s3cret") as agent:
        base = {**FAST, "discovery.backend": "consul", "discovery.consul.address": agent.address}
        good = make_discovery(Settings().replace(**base, **{"discovery.consul.token": "s3cret"}))
        bad = make_discovery(Settings().replace(**base))
        async with good, bad:
            await good.register(NODE)
            await until(good, healthy_node("n1"))
            assert not bad.source_ok and bad.nodes() == []


async def test_a_killed_consul_is_survived() -> None:
    """Consul killed mid-query (SIGKILL) leaves the last view; a restart brings it back."""
    async with StandinProcess() as agent:
        base = {**FAST, "discovery.backend": "consul", "discovery.consul.address": agent.address}
        async with make_discovery(Settings().replace(**base)) as mine:
            await mine.register(ROUTER)
            await until(mine, lambda v: v.source_ok and v.router("r1") is not None)
            await agent.kill()
            lost = await until(mine, lambda v: not v.source_ok)
            assert lost.router("r1") is not None
            await agent.start()
            await until(mine, lambda v: v.source_ok and v.router("r1") is not None)
