"""Static discovery: the routers and nodes written in ``cluster.toml``.

This is the embedded default (DESIGN.md, Discovery): no external service, nodes learn of each
other by gossip. What it promises, beyond the :class:`~roomcast.discovery.base.Discovery`
contract:

* The configured routers are always listed, always healthy, with their configured ``id`` (by
  default their ``xsub`` endpoint: :attr:`~roomcast.config.RouterAddress.key`). The configured
  node URLs are listed as healthy nodes whose id is the URL (the config names no node id).
* A registration is local to this Discovery: its own view lists the registered instance (with
  the health :meth:`~StaticDiscovery.set_healthy` gave it), in place of a configured entry with
  the same address (a router's ``xsub``, a node's ``http``), else added. Other processes, and
  other Discovery objects, never see it; they learn of nodes through gossip.
* :meth:`~StaticDiscovery.deregister` and exit withdraw it from this view. ``source_ok`` is
  always True: there is no backend to lose.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from roomcast.config import DiscoverySettings
from roomcast.discovery.base import (
    HubReads,
    Lifecycle,
    NodeEndpoint,
    RouterEndpoint,
    ServiceInstance,
    ViewHub,
    enter,
    log,
    require_running,
)
from roomcast.ids import NodeId


class StaticDiscovery(HubReads):
    """The :class:`~roomcast.discovery.base.Discovery` of a fixed configuration."""

    def __init__(self, settings: DiscoverySettings) -> None:
        self._config_routers = tuple(
            RouterEndpoint(id=r.key, xsub=r.xsub, xpub=r.xpub, http=r.http, healthy=True)
            for r in settings.routers
        )
        self._config_nodes = tuple(
            NodeEndpoint(id=NodeId(url), http=url, healthy=True) for url in settings.nodes
        )
        self._hub = ViewHub(True, self._config_routers, self._config_nodes)
        self._state = Lifecycle.NEW
        self._instance: ServiceInstance | None = None
        self._passing = True

    @property
    def source_ok(self) -> bool:
        """Always True: the configuration cannot become unreachable."""
        return True

    async def __aenter__(self) -> Self:
        self._state = enter(self._state)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is Lifecycle.CLOSED:
            return
        self._state = Lifecycle.CLOSED
        self._instance = None
        self._show_view()
        self._hub.close()

    async def register(self, instance: ServiceInstance) -> None:
        """List ``instance`` in this Discovery's own view (nowhere else)."""
        require_running(self._state, "register")
        self._instance = instance
        log.info("static discovery: %s %s registered locally", instance.kind, instance.id)
        self._show_view()

    async def set_healthy(self, passing: bool, note: str = "") -> None:
        """Record the instance's health; this Discovery's own view follows it."""
        require_running(self._state, "set_healthy")
        if passing != self._passing:
            log.info("static discovery: %s (%s)", "passing" if passing else "failing", note)
        self._passing = passing
        self._show_view()

    async def deregister(self) -> None:
        """Withdraw the local registration, if any."""
        require_running(self._state, "deregister")
        self._instance = None
        self._show_view()

    def _show_view(self) -> None:
        routers, nodes = self._config_routers, self._config_nodes
        inst = self._instance
        if inst is not None and inst.kind == "router":
            me = RouterEndpoint(inst.id, inst.xsub, inst.xpub, inst.http, self._passing)
            routers = (*(r for r in routers if r.xsub != inst.xsub), me)
        elif inst is not None:
            own = NodeEndpoint(NodeId(inst.id), inst.http, self._passing)
            url = inst.http.rstrip("/")
            nodes = (*(n for n in nodes if n.http.rstrip("/") != url), own)
        self._hub.show(routers, nodes, True)
