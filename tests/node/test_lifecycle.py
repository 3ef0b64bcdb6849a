"""A start that fails half-way undoes what it had started (router, node, cluster member)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import zmq
from support.nodes import node_settings

from roomcast.ids import NodeId
from roomcast.node.health import Health
from roomcast.node.local import LocalAdapter
from roomcast.node.member import ClusterMember
from roomcast.node.server import Server
from roomcast.router.router import Router


def _router_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "roomcast-router" and t.is_alive()]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_router_with_a_busy_http_port_leaves_nothing_behind() -> None:
    """The HTTP port is taken: the router raises, and its forwarding thread, ZeroMQ sockets
    and context are gone (its bus ports can be bound again)."""
    before = _router_threads()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        router = Router("127.0.0.1", 0, 0, port, router_id="busy")
        with pytest.raises(OSError):
            await router.__aenter__()
    assert _router_threads() == before
    assert router._ctx is None
    ctx = zmq.Context()
    try:
        for bound in (router.xsub_port, router.xpub_port):
            sock = ctx.socket(zmq.XSUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(f"tcp://127.0.0.1:{bound}")  # raises if the router still held it
            sock.close(0)
    finally:
        ctx.term()


class _FailingAdapter(LocalAdapter):
    async def start(self, address: str) -> None:
        raise RuntimeError("cannot join")


class _NodeThatCannotJoin(Server):
    def _make_adapter(self) -> LocalAdapter:
        return _FailingAdapter(NodeId(self.node_id), self.tag, self.namespace_registry, self.stats)


async def test_node_whose_adapter_fails_to_start_releases_its_port() -> None:
    """The listener and aiohttp's runner opened before the failing step are closed: the
    port is free again and nothing answers on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _NodeThatCannotJoin(node_settings(**{"node.port": port}))
    with pytest.raises(RuntimeError, match="cannot join"):
        await server.__aenter__()
    assert _port_is_free(port)


async def test_cluster_member_whose_start_fails_undoes_what_it_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start that fails after the member registered with discovery and opened its bus (here:
    its first router check raises) deregisters, closes the bus, and leaves no health watcher
    and no task behind."""
    settings = node_settings(
        **{
            "cluster.enabled": True,
            "discovery.routers": [{"xsub": "tcp://127.0.0.1:1", "xpub": "tcp://127.0.0.1:2"}],
        }
    )
    health = Health()
    member = ClusterMember(
        settings, NodeId("n1"), 1, health, lambda: 0, lambda *_: None, lambda _: None
    )

    async def broken_check(timeout: float) -> dict[str, bool]:
        assert member.bus._ctx is not None  # the bus is open by now
        assert member.discovery.view().nodes  # and the node registered
        raise RuntimeError("check failed")

    monkeypatch.setattr(member.bus, "check_routers", broken_check)
    tasks_before = asyncio.all_tasks()
    with pytest.raises(RuntimeError, match="check failed"):
        await member.start("http://127.0.0.1:1")
    assert member.bus._ctx is None
    assert member.discovery.view().nodes == ()
    assert health.watchers == []
    assert asyncio.all_tasks() == tasks_before
