"""The node's HTTP surface besides Engine.IO: ``/health``, the admin API and ``/metrics``.

``/admin/*`` answers loopback clients only, unless ``node.admin_token`` is set, in which case it
needs that token as a bearer token (the CLI sends it): the admin rule of :mod:`roomcast.access`.
Requests after a connection's first (keep-alive) get the edge's head limit here
(:meth:`NodeHTTP._edge_guard`); the first one got it from the listener
(:mod:`roomcast.node.listener`). Everything here is a read of the node's
state (its registry and its replica of the cluster) except ``POST /admin/drain``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from roomcast import metrics
from roomcast.access import MetricsAccess, admin_refusal
from roomcast.cluster.routing import Target
from roomcast.config import Settings
from roomcast.ids import namespace_name

from .adapter import Adapter, RoomTable
from .admin_ui import AdminUI
from .endpoint import EngineEndpoint
from .engine import Connection
from .namespaces import Namespaces
from .stats import HEAD_TOO_LARGE, NodeStats

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminNode(Protocol):
    """What the health check and the admin API read of a node (and the one thing they do to
    it: drain)."""

    node_id: str
    settings: Settings
    stats: NodeStats
    adapter: Adapter
    endpoint: EngineEndpoint
    namespace_registry: Namespaces
    draining: bool
    metrics_registry: CollectorRegistry | None
    admin_ui: AdminUI | None

    @property
    def connections(self) -> dict[str, Connection]: ...

    @property
    def public_url(self) -> str: ...

    @property
    def healthy(self) -> bool: ...

    def health(self) -> dict[str, Any]: ...

    def room_table(self, namespace: str | None = None) -> RoomTable: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Any: ...

    async def drain(self, window: float) -> None: ...


def build_app(node: AdminNode) -> web.Application:
    """The aiohttp application of ``node``: Engine.IO path, health, admin API."""
    return NodeHTTP(node).build()


class NodeHTTP:
    """Request handlers bound to one node."""

    def __init__(self, server: AdminNode) -> None:
        self.server = server

    def build(self) -> web.Application:
        app = web.Application(
            middlewares=[self._edge_guard, self._cors_middleware, self._admin_guard]
        )
        endpoint = self.server.endpoint
        path = self.server.settings.node.path
        app.router.add_route("*", path, endpoint.handle)
        app.router.add_route("*", path.rstrip("/"), endpoint.handle)
        app.router.add_get("/health", self._health)
        app.router.add_get("/admin/stats", self._admin_stats)
        app.router.add_get("/admin/rooms", self._admin_rooms)
        app.router.add_get("/admin/room", self._admin_room)
        app.router.add_get("/admin/cluster", self._admin_cluster)
        app.router.add_post("/admin/drain", self._admin_drain)
        registry = self.server.metrics_registry
        if registry is not None:
            settings = self.server.settings
            access = MetricsAccess(settings.metrics, settings.node.admin_token)
            app.router.add_get(settings.metrics.path, metrics.handler(registry, access))
        return app

    @web.middleware
    async def _edge_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A request whose line and headers exceed ``http.max_head_bytes`` is answered 431 and
        its connection closed: nothing of it is kept."""
        if head_bytes(request) > self.server.settings.http.max_head_bytes:
            self.server.stats.http_refused[HEAD_TOO_LARGE] += 1
            response = web.Response(status=431, text="Request Header Fields Too Large")
            response.force_close()
            return response
        return await handler(request)

    @web.middleware
    async def _cors_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        settings = self.server.settings
        origins = settings.node.cors_origins
        if settings.admin_ui.enabled:
            # The UI is a page of another origin (admin.socket.io, or one the operator hosts).
            origins += settings.admin_ui.cors_origins
        origin = request.headers.get("Origin")
        if origin and origins and ("*" in origins or origin in origins) and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST"
                response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                    "Access-Control-Request-Headers", "content-type"
                )
        return response

    @web.middleware
    async def _admin_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """``/admin/*`` follows the admin rule (:mod:`roomcast.access`): ``node.admin_token``
        as a bearer token, or without a token set, loopback clients only, and not requests a
        browser or a proxy relays nor ones whose ``Host`` is not a loopback name: a web page
        open on the node's host must not be able to drain it."""
        if request.path.startswith("/admin/"):
            refused = admin_refusal(request, self.server.settings.node.admin_token)
            if refused == 401:
                return web.json_response({"error": "unauthorized"}, status=401)
            if refused is not None:
                return web.json_response({"error": "admin API is loopback-only"}, status=403)
        return await handler(request)

    async def _admin_drain(self, request: web.Request) -> web.Response:
        window_ms = request.query.get("window_ms", "")
        window = (
            int(window_ms) / 1000
            if window_ms.isdigit()
            else self.server.settings.node.drain_window_ms / 1000
        )
        if not self.server.draining:
            self.server.spawn(self.server.drain(window))
        return web.json_response({"node": self.server.node_id, "draining": True, "window": window})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self.server.health(), status=200 if self.server.healthy else 503)

    async def _admin_stats(self, request: web.Request) -> web.Response:
        s, ui = self.server.stats, self.server.admin_ui
        metrics_settings = self.server.settings.metrics
        return web.json_response(
            {
                "node": self.server.node_id,
                "connections": len(self.server.connections),
                "connections_opened": s.connections_opened,
                "opened_by_transport": dict(s.opened_by_transport),
                "upgrades": s.upgrades,
                "sockets": s.sockets,
                "socket_connects": dict(s.socket_connects),
                "messages_in": s.messages_in,
                "messages_out": s.messages_out,
                "bus_deliveries": s.bus_deliveries,
                "broadcasts": s.broadcasts,
                "bus_broadcasts": s.bus_broadcasts,
                "direct_out": s.direct_out,
                "bytes_in": {"websocket": s.ws_bytes_in, "polling": s.polling_bytes_in},
                "bytes_out": {"websocket": s.ws_bytes_out, "polling": s.polling_bytes_out},
                "volatile_dropped": s.volatile_dropped,
                "late_packets": s.late_packets,
                "closed_by_reason": dict(s.closed_by_reason),
                "http_refused": dict(s.http_refused),
                "forwarded_requests": s.forwarded_requests,
                "forwarded_bytes": s.forwarded_bytes,
                "forward_failed": s.forward_failed,
                "spliced_websockets": s.spliced_websockets,
                "forwards_in_flight": s.forwards_in_flight,
                "recoveries_attempted": s.recoveries_attempted,
                "recoveries_succeeded": s.recoveries_succeeded,
                "recoveries_refused": dict(s.recoveries_refused),
                "replayed_messages": s.replayed_messages,
                "sessions_kept": s.sessions_kept,
                "sessions_dropped": s.sessions_dropped,
                "sessions_handed_over": s.sessions_handed_over,
                "keeper_adopted": s.keeper_adopted,
                "keeper_lost": s.keeper_lost,
                "keeper_resyncs": s.keeper_resyncs,
                # None: a standalone node (nobody to keep).
                "kept_for_others": self.server.adapter.kept_for_others(),
                # None: the Admin UI is off; else whether an admin socket is connected anywhere.
                "admin_ui_watched": None if ui is None else ui.watched,
                "admin_ui_sent": dict(s.admin_ui_sent),
                # Where Prometheus scrapes this node (None: metrics are off).
                "metrics": metrics_settings.path if metrics_settings.enabled else None,
            }
        )

    def _local_facts(self) -> dict[str, Any]:
        return {
            "node": self.server.node_id,
            "address": self.server.public_url,
            "status": "alive",
            "connections": len(self.server.connections),
            "sockets": self.server.stats.sockets,
            "rooms": len(self.server.namespace_registry.room_counts(None)),
            "messages_in": self.server.stats.messages_in,
            "messages_out": self.server.stats.messages_out,
        }

    async def _admin_cluster(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"self": self._local_facts(), **self.server.adapter.describe()}
        if not body["standalone"]:
            body["routers"] = [
                {"xsub": r.xsub, "xpub": r.xpub, "http": r.http}
                for r in self.server.settings.discovery.routers
            ]
        return web.json_response(body)

    def _freshness(self) -> float:
        return round(self.server.adapter.freshness(), 3)

    async def _admin_rooms(self, request: web.Request) -> web.Response:
        namespace = request.query.get("namespace") or None
        rows: list[dict[str, Any]] = [
            {"namespace": ns, "room": room, "members": sum(nodes.values()), "nodes": nodes}
            for (ns, room), nodes in self.server.room_table(namespace).items()
        ]
        rows.sort(key=lambda r: (-r["members"], r["namespace"], r["room"]))
        top = request.query.get("top")
        if top is not None and top.isdigit():
            rows = rows[: int(top)]
        return web.json_response({"freshness": self._freshness(), "rooms": rows})

    async def _admin_room(self, request: web.Request) -> web.Response:
        namespace = request.query.get("namespace", "/")
        name = request.query.get("name", "")
        nodes = self.server.room_table(namespace).get((namespace, name), {})
        body: dict[str, Any] = {
            "namespace": namespace,
            "room": name,
            "members": sum(nodes.values()),
            "nodes": nodes,
            "freshness": self._freshness(),
        }
        if request.query.get("members") and nodes:
            target = Target(namespace_name(namespace), frozenset((name,)))
            infos = await self.server.adapter.fetch_sockets(target)
            body["sockets"] = [
                {"id": i.id, "node": i.node, "rooms": sorted(i.rooms)} for i in infos
            ]
        return web.json_response(body)


def head_bytes(request: web.BaseRequest) -> int:
    """The size of ``request``'s line and headers as sent (give or take the spaces)."""
    size = len(request.method) + len(request.raw_path) + 12  # "GET / HTTP/1.1\r\n"
    for name, value in request.raw_headers:
        size += len(name) + len(value) + 4  # ": " and "\r\n"
    return size
