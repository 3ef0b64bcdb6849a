"""The Consul stand-in keeps Consul's documented semantics, driven through py-consul's client.

These pin what the consul discovery backend relies on: TTL checks and their expiry, reaping,
``?passing``, blocking queries with ``X-Consul-Index``, deregistration, and the error answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from consul.exceptions import ACLPermissionDenied, BadRequest
from support.consul_standin import ConsulStandin, StandinProcess, make_client, parse_duration

Entries = list[dict[str, Any]]


@pytest.fixture
async def standin() -> AsyncIterator[ConsulStandin]:
    """An in-process stand-in on a free port."""
    async with ConsulStandin() as agent:
        yield agent


@pytest.fixture
async def client(standin: ConsulStandin) -> AsyncIterator[Any]:
    """A py-consul client of ``standin``."""
    c = make_client(standin.port)
    yield c
    await c.close()


async def register(client: Any, sid: str, ttl: str = "10s", **check: Any) -> None:
    """Register service ``web`` instance ``sid`` with one TTL check."""
    ok = await client.agent.service.register(
        "web", service_id=sid, port=80, meta={"id": sid}, check={"TTL": ttl, **check}
    )
    assert ok


async def until(
    client: Any, service: str, predicate: Callable[[Entries], bool], timeout: float = 5.0
) -> tuple[int, Entries]:
    """Follow ``service`` with blocking queries until ``predicate`` holds for its entries."""
    index = 0
    async with asyncio.timeout(timeout):
        while True:
            raw, entries = await client.health.service(service, index=index or None, wait="5s")
            index = int(raw)
            if predicate(entries):
                return index, entries


def statuses(entries: Entries, sid: str) -> list[str]:
    """The statuses of the service checks of instance ``sid`` (not the node's serfHealth)."""
    for entry in entries:
        if entry["Service"]["ID"] == sid:
            return [c["Status"] for c in entry["Checks"] if c["ServiceID"] == sid]
    raise AssertionError(f"{sid} not in the health answer")


def test_go_durations_parse() -> None:
    """Durations are read as Go's time.ParseDuration reads them (numbers are nanoseconds)."""
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    assert parse_duration("0") == 0
    assert parse_duration(2_000_000_000) == 2
    with pytest.raises(ValueError):
        parse_duration("10")


async def test_new_ttl_check_is_critical_until_passed(client: Any) -> None:
    """A service's TTL check starts critical, as Consul's does, and passes once passed."""
    await register(client, "web-1")
    _, entries = await client.health.service("web")
    assert statuses(entries, "web-1") == ["critical"]
    checks = await client.agent.checks()
    assert checks["service:web-1"]["Name"] == "Service 'web' check"
    assert await client.agent.check.ttl_pass("service:web-1", notes="fine")
    _, entries = await client.health.service("web")
    assert statuses(entries, "web-1") == ["passing"]
    (check,) = [c for c in entries[0]["Checks"] if c["CheckID"] == "service:web-1"]
    assert check["Output"] == "fine"
    assert check["Type"] == "ttl"


async def test_initial_status_is_honoured(client: Any) -> None:
    """A check registered with Status starts in that status."""
    await register(client, "web-1", Status="passing")
    _, entries = await client.health.service("web")
    assert statuses(entries, "web-1") == ["passing"]


async def test_ttl_expiry_turns_the_check_critical(client: Any) -> None:
    """A check not renewed within its TTL turns critical with Consul's "TTL expired" output."""
    await register(client, "web-1", ttl="200ms", Status="passing")
    started = time.monotonic()
    _, entries = await until(client, "web", lambda e: statuses(e, "web-1") == ["critical"])
    assert time.monotonic() - started >= 0.15
    (check,) = [c for c in entries[0]["Checks"] if c["ServiceID"] == "web-1"]
    assert check["Output"] == "TTL expired"


async def test_passing_filter_keeps_entries_whose_every_check_passes(client: Any) -> None:
    """?passing drops critical and warning instances and keeps passing ones."""
    await register(client, "ok", Status="passing")
    await register(client, "warn", Status="passing")
    await register(client, "down")
    assert await client.agent.check.ttl_warn("service:warn")
    _, everything = await client.health.service("web")
    _, passing = await client.health.service("web", passing=True)
    assert sorted(e["Service"]["ID"] for e in everything) == ["down", "ok", "warn"]
    assert [e["Service"]["ID"] for e in passing] == ["ok"]
    assert {c["CheckID"] for c in passing[0]["Checks"]} == {"serfHealth", "service:ok"}


async def test_blocking_query_returns_on_change_with_a_higher_index(
    standin: ConsulStandin, client: Any
) -> None:
    """A query with ?index blocks until the service changes, then answers a higher index."""
    await register(client, "web-1")
    index, _ = await client.health.service("web")
    blocked = asyncio.create_task(client.health.service("web", index=index, wait="10s"))
    await asyncio.wait_for(standin.query_blocked.wait(), 5)
    assert not blocked.done()
    assert await client.agent.check.ttl_pass("service:web-1")
    new_index, entries = await asyncio.wait_for(blocked, 5)
    assert int(new_index) > int(index)
    assert statuses(entries, "web-1") == ["passing"]


async def test_blocking_query_times_out_with_the_same_index(client: Any) -> None:
    """Without a change, a blocking query answers after ``wait`` with the same index."""
    await register(client, "web-1")
    index, _ = await client.health.service("web")
    started = time.monotonic()
    same, entries = await client.health.service("web", index=index, wait="200ms")
    assert same == index
    assert time.monotonic() - started >= 0.2
    assert [e["Service"]["ID"] for e in entries] == ["web-1"]


async def test_unrelated_services_do_not_wake_a_watcher(client: Any) -> None:
    """Writes to another service leave a service's index, and its watchers, alone."""
    await register(client, "web-1")
    index, _ = await client.health.service("web")
    assert await client.agent.service.register("db", service_id="db-1", check={"TTL": "10s"})
    same, _ = await client.health.service("web", index=index, wait="100ms")
    assert same == index


async def test_repeated_identical_passes_do_not_change_the_index(client: Any) -> None:
    """Passing an already passing check with the same note is not a catalogue change."""
    await register(client, "web-1", Status="passing")
    index, _ = await client.health.service("web")
    assert await client.agent.check.ttl_pass("service:web-1")
    assert (await client.health.service("web"))[0] == index


async def test_deregister_removes_the_service_and_its_checks(client: Any) -> None:
    """Deregistration removes the instance and its check; an unknown id is a 404."""
    await register(client, "web-1")
    assert await client.agent.service.deregister("web-1")
    _, entries = await client.health.service("web")
    assert entries == []
    assert await client.agent.checks() == {}
    assert await client.agent.service.deregister("web-1") is False  # py-consul: 404 -> False


async def test_a_watcher_of_a_service_whose_last_instance_goes_wakes(
    standin: ConsulStandin, client: Any
) -> None:
    """Deregistering a service's last instance wakes its watchers (Consul's extinction index)."""
    await register(client, "web-1")
    index, _ = await client.health.service("web")
    blocked = asyncio.create_task(client.health.service("web", index=index, wait="10s"))
    await asyncio.wait_for(standin.query_blocked.wait(), 5)
    assert await client.agent.service.deregister("web-1")
    new_index, entries = await asyncio.wait_for(blocked, 5)
    assert int(new_index) > int(index)
    assert entries == []


async def test_deregister_critical_after_reaps_the_service(client: Any) -> None:
    """A service whose check stays critical for DeregisterCriticalServiceAfter is removed."""
    await register(client, "web-1", ttl="100ms", DeregisterCriticalServiceAfter="300ms")
    await register(client, "web-2", ttl="10s", Status="passing")
    _, entries = await until(client, "web", lambda e: len(e) == 1)
    assert entries[0]["Service"]["ID"] == "web-2"
    assert "web-1" not in await client.agent.services()
    assert "service:web-1" not in await client.agent.checks()


async def test_leaving_critical_stops_the_reaping_clock(client: Any) -> None:
    """A check passed before DeregisterCriticalServiceAfter elapses keeps its service."""
    await register(client, "web-1", DeregisterCriticalServiceAfter="200ms")
    assert await client.agent.check.ttl_pass("service:web-1")
    index, _ = await client.health.service("web")
    same, entries = await client.health.service("web", index=index, wait="500ms")
    assert same == index
    assert statuses(entries, "web-1") == ["passing"]


async def test_passing_an_unknown_check_is_a_404(client: Any) -> None:
    """Updating a check the agent does not know answers 404, as current Consul does."""
    assert await client.agent.check.ttl_pass("service:nope") is False


async def test_reregistration_keeps_the_check_status(client: Any) -> None:
    """Registering a service again keeps its existing check's status and output."""
    await register(client, "web-1")
    assert await client.agent.check.ttl_fail("service:web-1", notes="deaf")
    await register(client, "web-1", Status="passing")
    checks = await client.agent.checks()
    assert checks["service:web-1"]["Status"] == "critical"
    assert checks["service:web-1"]["Output"] == "deaf"


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        ({"a.b": "x"}, "Key contains invalid characters"),
        ({"consul-x": "x"}, "Key prefix 'consul-' is reserved"),
        ({"k": "v" * 513}, "Value is too long"),
        ({f"k{i}": "v" for i in range(65)}, "more than 64 key/value pairs"),
    ],
)
async def test_service_meta_is_validated_as_consul_does(
    client: Any, meta: dict[str, str], problem: str
) -> None:
    """Service meta breaking Consul's rules is refused with 400 "Invalid Service Meta"."""
    with pytest.raises(BadRequest, match=problem):
        await client.agent.service.register("web", meta=meta)


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        ({"HTTP": "http://x/", "Interval": "10s"}, "TTL checks only"),
        ({"TTL": "0s"}, "TTL must be > 0"),
        ({"TTL": "10s", "Status": "fine"}, "Status for checks must"),
        ({"TTL": "ten seconds"}, "invalid duration"),
    ],
)
async def test_bad_checks_are_refused(client: Any, check: dict[str, str], problem: str) -> None:
    """Check definitions the stand-in cannot honour are refused with 400."""
    with pytest.raises(BadRequest, match=problem):
        await client.agent.service.register("web", check=check)


async def test_keys_match_case_insensitively_and_in_snake_case(standin: ConsulStandin) -> None:
    """Registration keys are matched as Consul matches them: any case, or snake_case."""
    body = {
        "NAME": "web",
        "id": "web-1",
        "check": {"ttl": "100ms", "deregister_critical_service_after": "200ms"},
    }
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{standin.address}/v1/agent/service/register", json=body) as response,
    ):
        assert response.status == 200
    check = standin.checks["service:web-1"]
    assert (check.ttl, check.deregister_after) == (0.1, 0.2)


async def test_several_checks_are_numbered(client: Any) -> None:
    """A service with several checks gets check ids service:<id>:1, :2, ..."""
    ok = await client.agent.service.register(
        "web", service_id="web-1", check={"TTL": "10s"}, extra_checks=[{"TTL": "10s"}]
    )
    assert ok
    assert sorted(await client.agent.checks()) == ["service:web-1:1", "service:web-1:2"]


async def test_catalog_and_agent_endpoints_have_consul_shapes(client: Any) -> None:
    """The catalogue, agent and status endpoints answer Consul's shapes."""
    ok = await client.agent.service.register(
        "web", service_id="web-1", address="10.0.0.1", port=80, tags=["a"], meta={"k": "v"}
    )
    assert ok
    index, (entry,) = await client.catalog.service("web")
    assert int(index) >= 1
    assert entry["ServiceID"] == "web-1"
    assert (entry["ServiceAddress"], entry["ServicePort"], entry["ServiceMeta"]) == (
        "10.0.0.1",
        80,
        {"k": "v"},
    )
    _, tagged = await client.catalog.service("web", tag="A")  # tags match case-insensitively
    _, untagged = await client.catalog.service("web", tag="b")
    assert (len(tagged), untagged) == (1, [])
    services = await client.agent.services()
    assert services["web-1"]["Service"] == "web"
    assert await client.status.leader() == "127.0.0.1:8300"
    _, (health,) = await client.health.service("web")
    assert set(health) == {"Node", "Service", "Checks"}
    assert health["Node"]["Datacenter"] == "dc1"


async def test_bad_query_parameters_are_400(standin: ConsulStandin) -> None:
    """An invalid index or wait is refused with 400, as Consul does."""
    async with aiohttp.ClientSession() as http:
        for query in ("index=x", "index=1&wait=soon", "passing=maybe", "filter=x"):
            url = f"{standin.address}/v1/health/service/web?{query}"
            async with http.get(url) as response:
                assert response.status == 400, query


async def test_acl_token_is_enforced_when_configured() -> None:
    """With an ACL token configured, requests without it are refused with 403."""
    async with ConsulStandin(acl_token="s3cret") as agent:
        anonymous, authorised = make_client(agent.port), make_client(agent.port, "s3cret")
        try:
            with pytest.raises(ACLPermissionDenied):
                await anonymous.health.service("web")
            assert await anonymous.status.leader() == "127.0.0.1:8300"
            assert (await authorised.health.service("web"))[1] == []
        finally:
            await anonymous.close()
            await authorised.close()


async def test_process_mode_survives_a_kill_and_restart_on_the_same_port() -> None:
    """As a process the stand-in can be killed and restarted on its port, with empty state."""
    async with StandinProcess() as agent:
        client = make_client(agent.port)
        try:
            await register(client, "web-1")
            await agent.kill()
            with pytest.raises(aiohttp.ClientError):
                await client.health.service("web")
            port = agent.port
            await agent.start()
            assert agent.port == port
            assert (await client.health.service("web"))[1] == []
        finally:
            await client.close()
