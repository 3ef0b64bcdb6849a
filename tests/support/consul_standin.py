"""A stand-in for the parts of Consul's HTTP API that roomcast uses, with Consul's semantics.

Consul's binary cannot be installed on these machines, so the consul discovery backend is
tested against this (and against a real ``consul agent -dev`` when one is on PATH). It plays
one dev-mode agent, node ``standin`` of datacenter ``dc1``, whose catalogue is its own state.

In-process::

    async with ConsulStandin(port=0) as consul:
        consul.address          # "http://127.0.0.1:<port>"

As a process, so that a test can kill and restart it (it prints one line when listening)::

    cd tests && python -m support.consul_standin --port 8500 [--host 127.0.0.1] [--acl-token SECRET]

:class:`StandinProcess` drives that process from a test (start, SIGKILL, restart on the same
port); :func:`make_client` builds the py-consul client tests use to play other processes.

Endpoints, modelled on Consul's API documentation (agent, health, catalog, blocking queries):

* ``PUT /v1/agent/service/register``: ``Name`` (required), ``ID`` (default: the name),
  ``Tags``, ``Address``, ``Port``, ``Meta`` (validated as Consul does), ``Weights``,
  ``EnableTagOverride``, ``Check`` / ``Checks`` with ``TTL``, ``Status``, ``Notes``, ``Name``,
  ``CheckID``, ``DeregisterCriticalServiceAfter``; ``?replace-existing-checks``. Keys are
  matched case-insensitively, snake_case too (py-consul sends lower-case keys). A service's
  single check is ``service:<id>`` (``service:<id>:<n>`` when there are several). A new check
  starts ``critical`` unless ``Status`` says otherwise; re-registering keeps an existing
  check's status and output, as Consul's agent does.
* ``PUT /v1/agent/service/deregister/<id>``: 404 ``Unknown service ID`` when unknown.
* ``PUT /v1/agent/check/pass|warn|fail/<check id>?note=``: sets status and output and restarts
  the TTL; 404 ``Unknown check ID`` when unknown. A TTL not renewed in time turns the check
  critical with output ``TTL expired``. A check critical for ``DeregisterCriticalServiceAfter``
  takes its service (and the service's checks) away.
* ``GET /v1/health/service/<name>``: ``[{Node, Service, Checks}]`` (``Checks`` includes the
  node's ``serfHealth``), ``?passing`` (only entries whose every check passes), ``?tag=``,
  ``?dc=``, blocking with ``?index=`` and ``?wait=`` and the ``X-Consul-Index`` header.
* ``GET /v1/catalog/service/<name>``: the flat catalogue entries, blocking the same way.
* ``GET /v1/agent/services``, ``GET /v1/agent/checks``, ``GET /v1/status/leader``.

Indexes follow Consul's state store (``tests/consul_store.py``, which keeps the catalogue). A
blocking query with ``index=N`` returns as soon as the service's query index exceeds ``N``, or
after ``wait`` (default 5m, capped at 10m, plus up to wait/16 of jitter) with the same index.
``index`` absent or 0 answers at once.

Deviations from Consul, on purpose:

1. ``DeregisterCriticalServiceAfter`` below Consul's 1-minute minimum is honoured (tests use
   a few hundred ms), and the service goes exactly when the time is up (Consul raises the
   value to 1m, and its reaper runs every 30s, so it may take up to 30s longer).
2. Only TTL checks exist; a script/HTTP/TCP/gRPC check is refused with 400.
3. Changes reach the catalogue when the agent call returns (Consul's anti-entropy syncs within
   milliseconds), and a check's output change is indexed at once (Consul defers output-only
   changes up to ``check_update_interval``, 5m). A pass that changes neither status nor
   output is, as in Consul, no write at all.
4. ACLs: without ``acl_token`` any token is accepted; with it, every endpoint but
   ``/v1/status/leader`` answers 403 unless ``X-Consul-Token`` (or ``?token=``) matches.
5. ``?filter=`` is refused with 400; ``?near``, ``?stale``, ``?consistent``, ``?cached`` are
   ignored; one node, one datacenter, no peers or namespaces.
6. Blocked queries wake on a write to their service only through the index rules above;
   there is no hash-based blocking (``?hash=``) and no streaming backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from support.consul_store import (
    CRITICAL,
    PASSING,
    WARNING,
    BadRequest,
    Check,
    ConsulStore,
    Service,
    parse_duration,
)

DEFAULT_WAIT = 300.0  # seconds: Consul's default blocking wait (5m)
MAX_WAIT = 600.0  # Consul's cap (10m)
LEADER = "127.0.0.1:8300"


class ConsulStandin(ConsulStore):
    """One stand-in agent: ``async with ConsulStandin() as consul: consul.address``.

    The catalogue and its rules are :class:`consul_store.ConsulStore`'s; this is the HTTP API.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        acl_token: str = "",
        node_name: str = "standin",
        datacenter: str = "dc1",
    ) -> None:
        super().__init__(node_name=node_name, datacenter=datacenter)
        self.host = host
        self.port = port
        self.acl_token = acl_token
        self._runner: web.AppRunner | None = None
        #: Set whenever a blocking query starts waiting (tests wait on it instead of sleeping).
        self.query_blocked = asyncio.Event()

    @property
    def address(self) -> str:
        """The HTTP API's base URL."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> ConsulStandin:
        app = web.Application(middlewares=[self._acl])
        put, get = web.put, web.get
        app.add_routes(
            [
                put("/v1/agent/service/register", self._register),
                put("/v1/agent/service/deregister/{id:.+}", self._deregister),
                put("/v1/agent/check/pass/{id:.+}", self._check_update(PASSING)),
                put("/v1/agent/check/warn/{id:.+}", self._check_update(WARNING)),
                put("/v1/agent/check/fail/{id:.+}", self._check_update(CRITICAL)),
                get("/v1/agent/services", self._agent_services),
                get("/v1/agent/checks", self._agent_checks),
                get("/v1/health/service/{name}", self._health_service),
                get("/v1/catalog/service/{name}", self._catalog_service),
                get("/v1/status/leader", self._leader),
            ]
        )
        # A short shutdown: blocked queries are cut as a dying agent would cut them.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening, cut open connections, drop the state (a dev agent keeps none)."""
        for check in self.checks.values():
            check.cancel_timers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- agent endpoints ------------------------------------------------------------------

    @web.middleware
    async def _acl(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.acl_token and request.path != "/v1/status/leader":
            token = request.headers.get("X-Consul-Token") or request.query.get("token", "")
            if not token:
                return web.Response(status=403, text="Permission denied: anonymous token")
            if token != self.acl_token:
                return web.Response(status=403, text="ACL not found")
        return await handler(request)

    async def _register(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("Request decode failed: expected a JSON object")
            self._apply_registration(body, "replace-existing-checks" in request.query)
        except json.JSONDecodeError as exc:
            return web.Response(status=400, text=f"Request decode failed: {exc}")
        except BadRequest as exc:
            return web.Response(status=400, text=str(exc))
        return web.Response()

    async def _deregister(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if sid not in self.services:
            return web.Response(
                status=404,
                text=f'Unknown service ID "{sid}". Ensure that the service ID is passed, not '
                "the service name.",
            )
        self._remove_service(sid)
        return web.Response()

    def _check_update(self, status: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            cid = request.match_info["id"]
            check = self.checks.get(cid)
            if check is None:
                return web.Response(
                    status=404,
                    text=f'Unknown check ID "{cid}". Ensure that the check ID is passed, not '
                    "the check name.",
                )
            self._set_status(check, status, request.query.get("note", ""), renew=True)
            return web.Response()

        return handler

    async def _agent_services(self, request: web.Request) -> web.Response:
        body = {
            s.id: {
                "ID": s.id,
                "Service": s.name,
                "Tags": s.tags,
                "Meta": s.meta,
                "Port": s.port,
                "Address": s.address,
                "Weights": s.weights,
                "EnableTagOverride": s.enable_tag_override,
                "Datacenter": self.datacenter,
            }
            for s in self.services.values()
        }
        return web.json_response(body)

    async def _agent_checks(self, request: web.Request) -> web.Response:
        return web.json_response({c.id: self._check_json(c) for c in self.checks.values()})

    async def _leader(self, request: web.Request) -> web.Response:
        return web.json_response(LEADER)

    # --- catalogue queries ----------------------------------------------------------------

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            passing = _bool_param(request, "passing")
            index = await self._block(request, name)
        except BadRequest as exc:
            return web.Response(status=400, text=str(exc))
        entries = []
        for service in self._matching(request, name):
            checks = [self._serf_health(), *map(self._check_json, self._checks_of(service.id))]
            if passing and any(c["Status"] != PASSING for c in checks):
                continue
            entries.append(
                {
                    "Node": self._node_json(),
                    "Service": self._service_json(service),
                    "Checks": checks,
                }
            )
        return self._indexed(entries, index)

    async def _catalog_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            index = await self._block(request, name)
        except BadRequest as exc:
            return web.Response(status=400, text=str(exc))
        node = self._node_json()
        entries = [
            {
                "ID": self.node_id,
                "Node": self.node_name,
                "Address": node["Address"],
                "Datacenter": self.datacenter,
                "TaggedAddresses": node["TaggedAddresses"],
                "NodeMeta": node["Meta"],
                "ServiceKind": "",
                "ServiceID": s.id,
                "ServiceName": s.name,
                "ServiceTags": s.tags,
                "ServiceAddress": s.address,
                "ServiceWeights": s.weights,
                "ServiceMeta": s.meta,
                "ServicePort": s.port,
                "ServiceEnableTagOverride": s.enable_tag_override,
                "CreateIndex": s.create_index,
                "ModifyIndex": s.modify_index,
            }
            for s in self._matching(request, name)
        ]
        return self._indexed(entries, index)

    async def _block(self, request: web.Request, name: str) -> int:
        """Validate the common query parameters; wait as a blocking query; the index."""
        query = request.query
        if "filter" in query:
            raise BadRequest("the Consul stand-in does not implement ?filter")
        dc = query.get("dc", "")
        if dc and dc != self.datacenter:
            raise BadRequest(f"No path to datacenter {dc!r}")
        try:
            min_index = int(query.get("index", "0"))
            if min_index < 0:
                raise ValueError(min_index)
        except ValueError:
            raise BadRequest("Invalid index") from None
        try:
            wait = parse_duration(query["wait"]) if "wait" in query else 0.0
        except ValueError:
            raise BadRequest("Invalid wait time") from None
        wait = min(wait, MAX_WAIT) if wait > 0 else DEFAULT_WAIT
        if min_index > 0:
            self.query_blocked.set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait + random.uniform(0, wait / 16)
            while self.service_index(name) <= min_index:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()
                except TimeoutError:
                    break
        return max(self.service_index(name), 1)

    def _matching(self, request: web.Request, name: str) -> list[Service]:
        wanted = [t.lower() for t in request.query.getall("tag", [])]
        return [
            s
            for s in self._instances(name)
            if all(t in {x.lower() for x in s.tags} for t in wanted)
        ]

    def _indexed(self, body: Any, index: int) -> web.Response:
        response = web.json_response(body)
        response.headers["X-Consul-Index"] = str(index)
        response.headers["X-Consul-KnownLeader"] = "true"
        response.headers["X-Consul-LastContact"] = "0"
        return response

    def _node_json(self) -> dict[str, Any]:
        lan = "127.0.0.1"
        return {
            "ID": self.node_id,
            "Node": self.node_name,
            "Address": lan,
            "Datacenter": self.datacenter,
            "TaggedAddresses": {"lan": lan, "lan_ipv4": lan, "wan": lan, "wan_ipv4": lan},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    def _service_json(self, s: Service) -> dict[str, Any]:
        return {
            "ID": s.id,
            "Service": s.name,
            "Tags": s.tags,
            "Address": s.address,
            "Meta": s.meta,
            "Port": s.port,
            "Weights": s.weights,
            "EnableTagOverride": s.enable_tag_override,
            "CreateIndex": s.create_index,
            "ModifyIndex": s.modify_index,
        }

    def _check_json(self, c: Check) -> dict[str, Any]:
        service = self.services.get(c.service_id)
        return {
            "Node": self.node_name,
            "CheckID": c.id,
            "Name": c.name,
            "Status": c.status,
            "Notes": c.notes,
            "Output": c.output,
            "ServiceID": c.service_id,
            "ServiceName": c.service_name,
            "ServiceTags": service.tags if service else [],
            "Type": "ttl",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": c.create_index,
            "ModifyIndex": c.modify_index,
        }

    def _serf_health(self) -> dict[str, Any]:
        return {
            "Node": self.node_name,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": PASSING,
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }


def _bool_param(request: web.Request, name: str) -> bool:
    if name not in request.query:
        return False
    value = request.query[name].lower()
    if value in ("", "1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise BadRequest(f"Invalid value for ?{name}")


def make_client(port: int, token: str | None = None) -> Any:
    """A py-consul asyncio client of the agent (stand-in or real) on 127.0.0.1:``port``."""
    import consul.aio  # only the tests that talk to an agent need py-consul

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # py-consul's aiohttp arguments
        client = consul.aio.Consul(host="127.0.0.1", port=port, scheme="http")
    client.token = token  # not CONSUL_HTTP_TOKEN from the environment
    return client


class StandinProcess:
    """The stand-in as a child process, which a test can kill (SIGKILL, as a crash) and start
    again on the same port, with empty state (as a restarted dev agent)::

        async with StandinProcess() as consul:
            await consul.kill()
            await consul.start()
    """

    def __init__(self, port: int = 0, *, acl_token: str = "") -> None:
        self.port = port
        self.acl_token = acl_token
        self._process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        """The HTTP API's base URL (the port is known once started)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 10.0) -> None:
        """Start the process and wait for its "listening" line."""
        args = [sys.executable, "-m", "support.consul_standin", "--port", str(self.port)]
        if self.acl_token:
            args += ["--acl-token", self.acl_token]
        self._process = process = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,  # tests/: where ``support`` is found
        )
        assert process.stdout is not None
        async with asyncio.timeout(timeout):
            line = (await process.stdout.readline()).decode()
        match = re.search(r"listening on http://[^:]+:(\d+)", line)
        if match is None:
            await self.kill()
            raise RuntimeError(f"the consul stand-in did not start: {line!r}")
        self.port = int(match.group(1))

    async def kill(self) -> None:
        """SIGKILL the process (a crash: connections are cut, nothing is deregistered)."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def __aenter__(self) -> StandinProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()


def main(argv: list[str] | None = None) -> None:
    """Run a stand-in agent until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--acl-token", default="", help="require this X-Consul-Token")
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with ConsulStandin(args.host, args.port, acl_token=args.acl_token) as standin:
            print(f"consul-standin listening on {standin.address}", flush=True)
            await stop.wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
