"""Consul discovery: register with the local agent, watch the catalogue with blocking queries.

Each process registers one service with the local Consul agent: nodes under
``discovery.consul.node_service``, routers under ``router_service``, with the service id
``<service>-<roomcast id>``. The service carries a TTL check, which a background task passes
(or fails, after :meth:`~ConsulDiscovery.set_healthy`) every ``check_interval_ms``; a process
that stops doing so turns critical after ``check_ttl_ms``, and Consul drops it after
``deregister_critical_after_ms`` critical. Service meta carries ``id``, ``http`` and, for
routers, ``xsub`` and ``xpub``.

Two background tasks watch ``/v1/health/service/<name>`` of both services with blocking
queries (``index`` + ``wait``). An instance is healthy when every check of its entry (the
service's and the Consul node's) is ``passing``; a critical (or warning) one is listed with
``healthy`` False, a vanished one is dropped. Consul being unreachable never stops the process:
the view keeps its last entries with ``source_ok`` False, registration and watches retry with
backoff, and a registration Consul forgot (agent restarted, service reaped) is made again.
A registration reaped while failing stays out until :meth:`~ConsulDiscovery.set_healthy`
reports it passing again, rather than flapping back in as critical.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import consul.aio
from consul.exceptions import ConsulException

from roomcast.config import DiscoverySettings
from roomcast.discovery.base import (
    Backoff,
    FailureLog,
    HubReads,
    Kind,
    Lifecycle,
    NodeEndpoint,
    RouterEndpoint,
    ServiceInstance,
    ViewHub,
    describe,
    enter,
    log,
    require_running,
)
from roomcast.ids import NodeId

Endpoint = RouterEndpoint | NodeEndpoint

_ANY_ADDRESS = {"", "0.0.0.0", "::"}  # Consul refuses these as a service address
_MAX_MALFORMED_REMEMBERED = 1024


class ConsulDiscovery(HubReads):
    """The :class:`~roomcast.discovery.base.Discovery` backed by a Consul agent."""

    def __init__(self, settings: DiscoverySettings) -> None:
        cfg = settings.consul
        self._cfg = cfg
        self._service_names: dict[Kind, str] = {
            "router": cfg.router_service,
            "node": cfg.node_service,
        }
        self._timeout = cfg.request_timeout_ms / 1000
        self._state = Lifecycle.NEW
        self._client: Any = None
        self._hub = ViewHub(source_ok=False)
        # The watches' halves of the view, and whether each half's last read succeeded.
        self._routers: tuple[RouterEndpoint, ...] = ()
        self._nodes: tuple[NodeEndpoint, ...] = ()
        self._read_ok: dict[Kind, bool] = {"router": False, "node": False}
        self._first_read: dict[Kind, asyncio.Event] = {}
        self._watchers: list[asyncio.Task[None]] = []
        # Registration: the instance, the health it should report, what Consul holds.
        self._lock = asyncio.Lock()  # one exchange about the registration at a time
        self._instance: ServiceInstance | None = None
        self._passing = True
        self._note = ""
        self._registered = False  # Consul acknowledged the current instance
        self._dormant = False  # reaped while failing: registers again once passing
        self._keeper: asyncio.Task[None] | None = None
        self._registration_log = FailureLog("consul registration")
        self._malformed_ids: set[str] = set()
        #: Catalogue entries skipped because they lack what roomcast needs (counted per read).
        self.malformed = 0

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def source_ok(self) -> bool:
        """Whether the last blocking query of both services succeeded."""
        return self._hub.current.source_ok

    @property
    def registered(self) -> bool:
        """Whether Consul acknowledged the current registration (False when there is none)."""
        return self._instance is not None and self._registered

    async def __aenter__(self) -> Self:
        self._state = enter(self._state)
        url = urlsplit(self._cfg.address)
        with warnings.catch_warnings():
            # py-consul hands aiohttp its deprecated ``verify_ssl`` argument.
            warnings.simplefilter("ignore", DeprecationWarning)
            client = consul.aio.Consul(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 80),
                scheme=url.scheme,
                verify=True,
            )
        # py-consul lets CONSUL_HTTP_TOKEN override the token; only config.py reads the
        # environment (STYLE.md #8), so the configured token is the one sent.
        client.token = self._cfg.token or None
        self._client = client
        for kind in ("router", "node"):
            self._first_read[kind] = asyncio.Event()
            task = asyncio.create_task(self._watch(kind), name=f"consul-watch-{kind}")
            self._watchers.append(task)
        # One bounded first read, so that a node can connect to the routers right away.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*(e.wait() for e in self._first_read.values()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is not Lifecycle.RUNNING:
            self._state = Lifecycle.CLOSED
            return
        self._state = Lifecycle.CLOSED
        try:
            await self._stop_keeper()
            async with self._lock:
                instance, self._instance = self._instance, None
                if instance is not None:
                    await self._withdraw(instance)
        finally:
            for task in self._watchers:
                task.cancel()
            await asyncio.gather(*self._watchers, return_exceptions=True)
            self._watchers.clear()
            self._hub.close()
            try:
                await self._client.close()
            except Exception as error:  # closing a session must not fail a shutdown
                log.debug("consul: closing the client failed: %s", describe(error))

    # --- registration -----------------------------------------------------------------------

    async def register(self, instance: ServiceInstance) -> None:
        """Register ``instance`` (replacing a previous registration) and keep it passing."""
        require_running(self._state, "register")
        async with self._lock:
            previous = self._instance
            if previous is not None and self._service_id(previous) != self._service_id(instance):
                await self._withdraw(previous)
            self._instance = instance
            self._registered = False
            self._dormant = False
            ok = await self._sync()
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep(ok), name="consul-keeper")

    async def set_healthy(self, passing: bool, note: str = "") -> None:
        """Pass or fail the TTL check now (with ``note`` as its output), and keep doing so."""
        require_running(self._state, "set_healthy")
        if passing != self._passing:
            log.info("consul: reporting %s (%s)", "passing" if passing else "failing", note)
        self._passing, self._note = passing, note
        async with self._lock:
            await self._sync()

    async def deregister(self) -> None:
        """Deregister the instance (one bounded attempt) and stop passing its check."""
        require_running(self._state, "deregister")
        await self._stop_keeper()
        async with self._lock:
            instance, self._instance = self._instance, None
            if instance is not None:
                await self._withdraw(instance)

    async def _keep(self, ok: bool) -> None:
        """Pass (or fail) the check every interval; retry with backoff when Consul fails.
        ``ok`` is the outcome of the attempt :meth:`register` just made."""
        backoff = Backoff(self._cfg.retry_min_ms / 1000, self._cfg.retry_max_ms / 1000)
        while True:
            if ok:
                backoff.reset()
                await asyncio.sleep(self._cfg.check_interval_ms / 1000)
            else:
                await asyncio.sleep(backoff.next())
            async with self._lock:
                if self._instance is None:
                    return
                ok = await self._sync()

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _sync(self) -> bool:
        """One bounded exchange making Consul hold the registration and its health; called
        with the lock held. Never raises on a Consul error: it is logged, and False returned."""
        instance = self._instance
        if instance is None or (self._dormant and not self._passing):
            return True
        sid = self._service_id(instance)
        try:
            async with asyncio.timeout(self._timeout):
                if not self._registered:
                    await self._register_service(instance)
                if not await self._report_check(sid):
                    # Consul no longer knows the check: the agent restarted or reaped us.
                    self._registered = False
                    if not self._passing:
                        self._dormant = True
                        log.warning(
                            "consul: %s was removed while failing; it registers again once passing",
                            sid,
                        )
                        self._registration_log.ok()
                        return True
                    log.warning("consul: %s vanished from the agent; registering it again", sid)
                    await self._register_service(instance)
                    if not await self._report_check(sid):
                        raise ConsulException(f"check of {sid} missing right after registering")
        except Exception as error:  # a Consul failure never leaves this task (STYLE.md #7)
            self._registration_log.failed(error)
            return False
        self._registration_log.ok()
        return True

    async def _register_service(self, instance: ServiceInstance) -> None:
        sid = self._service_id(instance)
        meta = {**instance.meta, "id": instance.id, "http": instance.http}
        if instance.kind == "router":
            meta.update(xsub=instance.xsub, xpub=instance.xpub)
        url = urlsplit(instance.http)
        host = url.hostname or ""
        check = {
            "TTL": f"{self._cfg.check_ttl_ms}ms",
            "DeregisterCriticalServiceAfter": f"{self._cfg.deregister_critical_after_ms}ms",
            # Registered in the state it reports: a joining node is not critical for a moment
            # (which every replica would take for the node going down).
            "Status": "passing" if self._passing else "critical",
            "Notes": "passed by the roomcast process itself",
        }
        accepted = await self._client.agent.service.register(
            self._service_names[instance.kind],
            service_id=sid,
            address=None if host in _ANY_ADDRESS else host,
            port=url.port,
            tags=["roomcast", instance.kind],
            meta=meta,
            check=check,
        )
        if not accepted:
            raise ConsulException(f"registration of {sid} was refused")
        self._registered = True
        self._dormant = False
        log.info("consul: registered %s", sid)

    async def _report_check(self, sid: str) -> bool:
        """Pass or fail the TTL check; False when Consul does not know it."""
        check = self._client.agent.check
        report = check.ttl_pass if self._passing else check.ttl_fail
        try:
            return bool(await report(f"service:{sid}", notes=self._note or None))
        except ConsulException as error:
            # Older agents answer 500 "does not have associated TTL" instead of 404.
            if "does not have associated TTL" in str(error):
                return False
            raise

    async def _withdraw(self, instance: ServiceInstance) -> None:
        """Deregister ``instance``: one bounded attempt, logged, never raising."""
        sid = self._service_id(instance)
        self._registered = False
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.agent.service.deregister(sid)
        except Exception as error:  # the TTL check expires and Consul reaps the service
            log.warning(
                "consul: deregistering %s failed (%s); Consul drops it once its check has "
                "been critical for %d ms",
                sid,
                describe(error),
                self._cfg.check_ttl_ms + self._cfg.deregister_critical_after_ms,
            )
        else:
            log.info("consul: deregistered %s", sid)

    def _service_id(self, instance: ServiceInstance) -> str:
        return f"{self._service_names[instance.kind]}-{instance.id}"

    # --- the view ---------------------------------------------------------------------------

    async def _watch(self, kind: Kind) -> None:
        """Follow one service with blocking queries, for as long as the Discovery runs."""
        name = self._service_names[kind]
        failures = FailureLog(f"consul watch of {name!r}")
        backoff = Backoff(self._cfg.retry_min_ms / 1000, self._cfg.retry_max_ms / 1000)
        wait = self._cfg.watch_wait_ms / 1000
        loop = asyncio.get_running_loop()
        index = 0
        while True:
            started = loop.time()
            # Consul adds up to wait/16 of jitter to a blocking query's wait.
            limit = wait * 17 / 16 + self._timeout if index else self._timeout
            try:
                async with asyncio.timeout(limit):
                    raw_index, entries = await self._client.health.service(
                        name, index=index or None, wait=f"{self._cfg.watch_wait_ms}ms"
                    )
                new_index = int(raw_index)
                endpoints = self._parse(kind, entries)
            except Exception as error:  # a Consul failure never leaves this task (STYLE.md #7)
                failures.failed(error)
                self._read_ok[kind] = False
                self._show_view()
                self._first_read[kind].set()
                index = 0  # read afresh once Consul answers: its index may have restarted
                await asyncio.sleep(backoff.next())
                continue
            failures.ok()
            backoff.reset()
            if kind == "router":
                self._routers = tuple(e for e in endpoints if isinstance(e, RouterEndpoint))
            else:
                self._nodes = tuple(e for e in endpoints if isinstance(e, NodeEndpoint))
            self._read_ok[kind] = True
            self._show_view()
            self._first_read[kind].set()
            # Consul's rules for blocking queries: reset an index that went backwards, treat
            # an index below 1 as 1, and rate-limit a loop whose queries do not block.
            previous, index = index, 0 if new_index < index else max(new_index, 1)
            if index == previous and loop.time() - started < self._cfg.retry_min_ms / 1000:
                await asyncio.sleep(self._cfg.retry_min_ms / 1000)

    def _show_view(self) -> None:
        source_ok = all(self._read_ok.values())
        was_ok = self._hub.current.source_ok
        self._hub.show(self._routers, self._nodes, source_ok)
        if source_ok and not was_ok:
            log.info("consul: catalogue read (%d routers, %d nodes)", *self._counts())
        elif was_ok and not source_ok:
            log.warning(
                "consul: unreachable; keeping the last known %d routers, %d nodes", *self._counts()
            )

    def _counts(self) -> tuple[int, int]:
        return len(self._routers), len(self._nodes)

    def _parse(self, kind: Kind, entries: Any) -> list[Endpoint]:
        """Endpoints from a ``/v1/health/service`` answer; an id listed twice keeps a healthy
        entry over an unhealthy one."""
        if not isinstance(entries, list):
            raise ConsulException(f"health answer is a {type(entries).__name__}, not a list")
        found: dict[str, Endpoint] = {}
        for entry in entries:
            endpoint = self._endpoint(kind, entry)
            if endpoint is None:
                continue
            known = found.get(endpoint.id)
            if known is None or (endpoint.healthy and not known.healthy):
                found[endpoint.id] = endpoint
        return list(found.values())

    def _endpoint(self, kind: Kind, entry: Any) -> Endpoint | None:
        service = entry.get("Service") if isinstance(entry, dict) else None
        if not isinstance(service, dict):
            self._skip("?", "an entry without a Service")
            return None
        sid = str(service.get("ID", "?"))
        meta = service.get("Meta") or {}
        checks = entry.get("Checks") or []
        if not isinstance(meta, dict) or not isinstance(checks, list):
            self._skip(sid, "malformed Meta or Checks")
            return None

        def text(key: str) -> str:
            value = meta.get(key)
            return value if isinstance(value, str) else ""

        ident, http = text("id"), text("http")
        if not ident or not http:
            self._skip(sid, "no 'id' and 'http' in its meta")
            return None
        healthy = all(isinstance(c, dict) and c.get("Status") == "passing" for c in checks)
        if kind == "node":
            return NodeEndpoint(NodeId(ident), http, healthy)
        xsub, xpub = text("xsub"), text("xpub")
        if not xsub or not xpub:
            self._skip(sid, "no 'xsub' and 'xpub' in its meta")
            return None
        return RouterEndpoint(ident, xsub, xpub, http, healthy)

    def _skip(self, sid: str, why: str) -> None:
        self.malformed += 1
        if sid not in self._malformed_ids:
            if len(self._malformed_ids) >= _MAX_MALFORMED_REMEMBERED:
                self._malformed_ids.clear()
            self._malformed_ids.add(sid)
            log.warning("consul: ignoring service %s: %s", sid, why)
