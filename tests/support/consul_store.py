"""The catalogue of the Consul stand-in (``support/consul_standin.py``), with Consul's semantics.

One dev-mode agent's state: its services, their TTL checks, and the raft index. Registrations
are validated and applied here, as Consul's agent and state store do; the stand-in's HTTP layer
(:class:`consul_standin.ConsulStandin`, a subclass) parses requests and renders answers.

Index semantics as Consul's state store: every write takes the next raft index and stamps the
services it touches; a service's query index is its last write, or, while no instance of it
exists, the index at which the last service of any name went extinct (else the catalogue's
highest index). A TTL not renewed in time turns its check critical (``TTL expired``); a check
critical for ``DeregisterCriticalServiceAfter`` takes its service, and the service's checks,
away (exactly when the time is up, even below Consul's 1-minute minimum).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_META_KEY = re.compile(r"[a-zA-Z0-9_-]+")
_OTHER_CHECK_KINDS = (
    *("http", "tcp", "udp", "args", "script", "grpc", "h2ping", "dockercontainerid"),
    *("aliasnode", "aliasservice", "interval"),
)


def parse_duration(value: Any) -> float:
    """Seconds from a Go duration (``"10s"``, ``"1m30s"``, ``"250ms"``) or a number of ns."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return value / 1e9
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}")
    text, sign = value.strip(), 1.0
    if text[:1] in ("+", "-"):
        sign, text = (-1.0 if text[0] == "-" else 1.0), text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f'time: invalid duration "{value}"')
    total, pos = 0.0, 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f'time: invalid duration "{value}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def _normalise(table: dict[str, Any]) -> dict[str, Any]:
    """Consul matches JSON keys case-insensitively and accepts snake_case."""
    return {k.lower().replace("_", ""): v for k, v in table.items()}


class BadRequest(Exception):
    """A 400 with Consul's message."""


@dataclass
class Service:
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    weights: dict[str, int]
    enable_tag_override: bool
    create_index: int
    modify_index: int


@dataclass
class Check:
    id: str
    name: str
    service_id: str
    service_name: str
    notes: str
    ttl: float
    deregister_after: float  # 0: never reaped
    status: str
    output: str = ""
    create_index: int = 0
    modify_index: int = 0
    critical_since: float | None = None
    ttl_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    reap_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def cancel_timers(self) -> None:
        for timer in (self.ttl_timer, self.reap_timer):
            if timer is not None:
                timer.cancel()
        self.ttl_timer = self.reap_timer = None


class ConsulStore:
    """The state of one stand-in agent, node ``node_name`` of datacenter ``datacenter``."""

    def __init__(self, *, node_name: str = "standin", datacenter: str = "dc1") -> None:
        self.node_name = node_name
        self.datacenter = datacenter
        self.node_id = str(uuid.uuid4())
        self.index = 1  # the node's own registration
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        self._service_index: dict[str, int] = {}
        self._extinction_index = 0
        self._changed = asyncio.Event()

    # --- the state store ------------------------------------------------------------------

    def _commit(self, names: Iterable[str]) -> int:
        """One raft write touching the services ``names``."""
        self.index += 1
        for name in names:
            self._service_index[name] = self.index
            if not self._instances(name):
                self._extinction_index = self.index
        self._changed.set()
        self._changed = asyncio.Event()
        return self.index

    def _instances(self, name: str) -> list[Service]:
        return sorted((s for s in self.services.values() if s.name == name), key=lambda s: s.id)

    def service_index(self, name: str) -> int:
        """The ``X-Consul-Index`` of queries about service ``name``."""
        if self._instances(name):
            return self._service_index[name]
        return self._extinction_index or self.index

    def _checks_of(self, service_id: str) -> list[Check]:
        return sorted(
            (c for c in self.checks.values() if c.service_id == service_id), key=lambda c: c.id
        )

    def _set_status(self, check: Check, status: str, output: str, *, renew: bool) -> None:
        loop = asyncio.get_running_loop()
        if renew:  # an update through the API restarts the TTL
            if check.ttl_timer is not None:
                check.ttl_timer.cancel()
            check.ttl_timer = loop.call_later(check.ttl, self._expire, check.id)
        if (status, output) == (check.status, check.output):
            return
        check.status, check.output = status, output
        self._track_critical(check)
        check.modify_index = self._commit([check.service_name])

    def _track_critical(self, check: Check) -> None:
        """Start or stop the clock of DeregisterCriticalServiceAfter."""
        loop = asyncio.get_running_loop()
        if check.status != CRITICAL:
            check.critical_since = None
            if check.reap_timer is not None:
                check.reap_timer.cancel()
                check.reap_timer = None
            return
        if check.critical_since is None:
            check.critical_since = loop.time()
        if check.deregister_after > 0 and check.reap_timer is None:
            due = check.critical_since + check.deregister_after - loop.time()
            check.reap_timer = loop.call_later(max(0.0, due), self._reap, check.id)

    def _expire(self, check_id: str) -> None:
        check = self.checks.get(check_id)
        if check is not None:
            check.ttl_timer = None
            self._set_status(check, CRITICAL, "TTL expired", renew=False)

    def _reap(self, check_id: str) -> None:
        check = self.checks.get(check_id)
        if check is None or check.status != CRITICAL:
            return
        check.reap_timer = None
        if check.service_id in self.services:
            self._remove_service(check.service_id)

    def _remove_service(self, service_id: str) -> None:
        service = self.services.pop(service_id)
        for check in self._checks_of(service_id):
            check.cancel_timers()
            del self.checks[check.id]
        self._commit([service.name])

    # --- registration ---------------------------------------------------------------------

    def _apply_registration(self, raw: dict[str, Any], replace_existing_checks: bool) -> None:
        body = _normalise(raw)
        name = _field(body, "name", str, "")
        if not name:
            raise BadRequest("Missing service name")
        sid = _field(body, "id", str, "") or name
        tags = _field(body, "tags", list, [])
        address = _field(body, "address", str, "")
        port = _field(body, "port", int, 0)
        meta = _field(body, "meta", dict, {})
        weights = _field(body, "weights", dict, {}) or {"Passing": 1, "Warning": 1}
        tag_override = _field(body, "enabletagoverride", bool, False)
        if not all(isinstance(t, str) for t in tags):
            raise BadRequest("Request decode failed: Tags must be strings")
        if address in ("0.0.0.0", "::", "[::]"):
            raise BadRequest("Invalid service address")
        if not 0 <= port <= 65535:
            raise BadRequest("Request decode failed: Port out of range")
        _validate_meta(meta)
        definitions = []
        if body.get("check"):
            definitions.append(body["check"])
        definitions += _field(body, "checks", list, [])
        checks = [_check_definition(d) for d in definitions]

        existing = self.services.get(sid)
        next_index = self.index + 1
        service = Service(
            id=sid,
            name=name,
            tags=list(tags),
            address=address,
            port=port,
            meta=dict(meta),
            weights=dict(weights),
            enable_tag_override=tag_override,
            create_index=existing.create_index if existing else next_index,
            modify_index=next_index,
        )
        self.services[sid] = service
        new_ids = set()
        loop = asyncio.get_running_loop()
        for i, definition in enumerate(checks):
            cid = definition["id"] or (
                f"service:{sid}" if len(checks) == 1 else f"service:{sid}:{i + 1}"
            )
            new_ids.add(cid)
            previous = self.checks.get(cid)
            check = Check(
                id=cid,
                name=definition["name"] or f"Service '{name}' check",
                service_id=sid,
                service_name=name,
                notes=definition["notes"],
                ttl=definition["ttl"],
                deregister_after=definition["deregister_after"],
                status=definition["status"] or CRITICAL,
                create_index=previous.create_index if previous else next_index,
                modify_index=next_index,
            )
            if previous is not None:  # Consul restores a re-registered check's state
                check.status, check.output = previous.status, previous.output
                check.critical_since = previous.critical_since
                previous.cancel_timers()
            self.checks[cid] = check
            check.ttl_timer = loop.call_later(check.ttl, self._expire, cid)
            self._track_critical(check)
        if replace_existing_checks:
            for stale in [c for c in self._checks_of(sid) if c.id not in new_ids]:
                stale.cancel_timers()
                del self.checks[stale.id]
        names = {name} | ({existing.name} if existing else set())
        self._commit(names)


def _field(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"Request decode failed: {key}: expected {kind.__name__}")
    return value


def _validate_meta(meta: dict[str, Any]) -> None:
    """Consul's ``ValidateServiceMetadata``."""
    if len(meta) > 64:
        raise BadRequest(
            "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs"
        )
    for key, value in meta.items():
        if not isinstance(value, str):
            raise BadRequest("Request decode failed: Meta values must be strings")
        if key == "":
            problem = "Key cannot be blank"
        elif len(key) > 128:
            problem = "Key is too long (limit: 128 characters)"
        elif not _META_KEY.fullmatch(key):
            problem = "Key contains invalid characters"
        elif key.startswith("consul-"):
            problem = "Key prefix 'consul-' is reserved for internal use"
        elif len(value) > 512:
            problem = "Value is too long (limit: 512 characters)"
        else:
            continue
        pair = f"('{key}', '{value}')"
        raise BadRequest(f"Invalid Service Meta: Couldn't load metadata pair {pair}: {problem}")


def _check_definition(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequest("Request decode failed: a check is a JSON object")
    check = _normalise(raw)
    status = _field(check, "status", str, "")
    if status and status not in (PASSING, WARNING, CRITICAL):
        raise BadRequest("Status for checks must 'passing', 'warning', 'critical'")
    if check.get("ttl") is None:
        if any(check.get(kind) for kind in _OTHER_CHECK_KINDS):
            raise BadRequest("Invalid check: the Consul stand-in implements TTL checks only")
        raise BadRequest("Invalid check: TTL must be > 0 for TTL checks")
    try:
        ttl = parse_duration(check["ttl"])
        deregister = check.get("deregistercriticalserviceafter")
        deregister_after = 0.0 if deregister in (None, "") else parse_duration(deregister)
    except ValueError as exc:
        raise BadRequest(f"Request decode failed: {exc}") from None
    if ttl <= 0:
        raise BadRequest("Invalid check: TTL must be > 0 for TTL checks")
    return {
        "id": _field(check, "checkid", str, "") or _field(check, "id", str, ""),
        "name": _field(check, "name", str, ""),
        "notes": _field(check, "notes", str, ""),
        "status": status,
        "ttl": ttl,
        "deregister_after": max(0.0, deregister_after),
    }
