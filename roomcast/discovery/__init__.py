"""Discovery: how a process announces itself and finds the cluster's routers and nodes.

``make_discovery(settings)`` builds the backend ``discovery.backend`` names: ``static`` (the
routers written in ``cluster.toml``) or ``consul``. Both keep the contract written on
:class:`~roomcast.discovery.base.Discovery`::

    async with make_discovery(settings) as discovery:
        await discovery.register(ServiceInstance.node(node_id, "http://10.0.0.5:3000"))
        async for view in discovery.watch():
            connect_to(view.healthy_routers)
"""

from __future__ import annotations

from roomcast.config import Settings
from roomcast.discovery.base import (
    Discovery,
    DiscoveryUsageError,
    DiscoveryView,
    NodeEndpoint,
    RouterEndpoint,
    ServiceInstance,
)

__all__ = [
    "Discovery",
    "DiscoveryUsageError",
    "DiscoveryView",
    "NodeEndpoint",
    "RouterEndpoint",
    "ServiceInstance",
    "make_discovery",
]


def make_discovery(settings: Settings) -> Discovery:
    """The backend ``settings.discovery.backend`` names, not yet entered."""
    if settings.discovery.backend == "consul":
        # Imported here so that static deployments never import py-consul.
        from roomcast.discovery.consul import ConsulDiscovery

        return ConsulDiscovery(settings.discovery)
    from roomcast.discovery.static import StaticDiscovery

    return StaticDiscovery(settings.discovery)
