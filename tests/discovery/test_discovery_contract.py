"""One contract suite for every discovery backend (STYLE.md #4).

The suite runs against ``static``, ``consul`` on the stand-in of Consul's HTTP API
(``tests/consul_standin.py``), and ``consul`` on a real ``consul agent -dev`` when the binary is
on PATH. Where static documents a different promise (its registrations are local, it has no
backend to lose), the test asserts that documented behaviour instead. The sources and fixtures
are in ``discovery_sources.py``; the consul-only promises in ``test_discovery_consul.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from support.discovery_sources import (
    NODE,
    OTHER_NODE,
    ROUTER,
    TIMEOUT,
    Opener,
    Predicate,
    Source,
    healthy_node,
    no_node,
    open_discovery_fixture,  # noqa: F401 (a fixture, taken as ``open_discovery``)
    source_fixture,  # noqa: F401 (a fixture, taken as ``source``)
    unhealthy_node,
    until,
)

from roomcast.discovery import (
    Discovery,
    DiscoveryUsageError,
    DiscoveryView,
    ServiceInstance,
    make_discovery,
)
from roomcast.discovery.consul import ConsulDiscovery
from roomcast.discovery.static import StaticDiscovery


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
