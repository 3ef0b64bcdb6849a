"""The consul discovery backend's own promises, beyond the contract every backend keeps.

They run against the stand-in of Consul's HTTP API (``tests/consul_standin.py``) and against a
real ``consul agent -dev`` when the binary is on PATH; the tests that need to reap fast, to set
an ACL token or to kill the agent run against the stand-in only. The contract suite is
``test_discovery_contract.py``; the sources and fixtures are in ``discovery_sources.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.consul_standin import ConsulStandin, StandinProcess, make_client
from support.discovery_sources import (
    FAST,
    NODE,
    ROUTER,
    TIMEOUT,
    ConsulSource,
    Opener,
    consul_source_fixture,  # noqa: F401 (a fixture, taken as ``consul_source``)
    healthy_node,
    no_node,
    open_discovery_fixture,  # noqa: F401 (a fixture, taken as ``open_discovery``)
    unhealthy_node,
    until,
)

from roomcast.config import Settings
from roomcast.discovery import make_discovery
from roomcast.discovery.consul import ConsulDiscovery


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
