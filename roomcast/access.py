"""Who may read a process's operator surfaces: a node's ``/admin/*``, and ``/metrics`` on nodes
and routers.

**The admin rule.** With a token set (``node.admin_token``), a request needs it as a bearer
token, whatever its peer (401 without it). Without a token, only a loopback peer is answered,
and only if its ``Host`` is a loopback name or address and the request carries no ``Origin``
or forwarding header (403 otherwise): a web page that rebinds its DNS name to 127.0.0.1 (its
``Host`` is its own name), or a local proxy relaying someone else's request, cannot reach it.

``/metrics`` follows the same rule by default (``metrics.access = "admin"``), and may also let
in, without the token, peers of ``metrics.networks`` (the Prometheus servers) whose request
carries no ``Origin`` or forwarding header; ``metrics.access = "any"`` lets in every peer.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from aiohttp import web

from roomcast.config import MetricsSettings

#: Headers that mark a request a browser or a proxy relayed.
RELAYED = ("Origin", "X-Forwarded-For", "X-Forwarded-Host", "Forwarded", "X-Real-IP")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def admin_refusal(request: web.BaseRequest, token: str) -> int | None:
    """The status the admin rule refuses ``request`` with (401, 403), or None: let in."""
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return 401
        return None
    if (
        not is_loopback(request.remote)
        or not is_loopback_host(request.headers.get("Host", ""))
        or relayed(request)
    ):
        return 403
    return None


class MetricsAccess:
    """Who may scrape ``/metrics``: ``metrics.access``, ``metrics.networks`` and the admin
    token (see the module's docstring)."""

    def __init__(self, settings: MetricsSettings, token: str) -> None:
        self.open = settings.access == "any"
        self.token = token
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in settings.networks
        )

    def refusal(self, request: web.BaseRequest) -> int | None:
        """The status ``request`` is refused with (401, 403), or None: let in."""
        if self.open:
            return None
        if self.networks and in_networks(request.remote, self.networks) and not relayed(request):
            return None
        return admin_refusal(request, self.token)


def relayed(request: web.BaseRequest) -> bool:
    """Whether ``request`` carries a header a browser or a proxy relaying it would add."""
    headers = request.headers
    return any(h in headers for h in RELAYED)


def in_networks(address: str | None, networks: Sequence[Network]) -> bool:
    """Whether ``address`` (a peer's, as text) is in one of ``networks``."""
    ip = _ip(address)
    return ip is not None and any(ip in network for network in networks)


def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback: ``localhost`` (or a name under
    it), a loopback address, with or without a port."""
    if host.startswith("["):  # an IPv6 literal, [::1]:port
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or is_loopback(name)


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (an IP address as text) is a loopback address."""
    ip = _ip(address)
    return ip is not None and ip.is_loopback


def _ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's IPv4 peer
    return ip
