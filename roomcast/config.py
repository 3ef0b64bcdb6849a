"""The one loader of ``cluster.toml`` (+ environment overrides) into frozen, validated settings.

Every key has a default (the same values are written, commented, in the repository's
``cluster.toml``). Unknown keys and values of the wrong type or range are :class:`ConfigError`
naming the dotted key. Environment variables override the file:
``ROOMCAST__NODE__PORT=3001`` sets ``node.port``; values are parsed as TOML values when they can
be, else taken as strings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from roomcast.errors import ConfigError

ENV_PREFIX = "ROOMCAST__"


@dataclass(frozen=True)
class NodeSettings:
    """``[node]``: one edge node's identity and HTTP listener."""

    id: str = ""  #: empty: a random id is chosen at start
    host: str = "127.0.0.1"
    port: int = 3000
    path: str = "/socket.io/"
    cors_origins: tuple[str, ...] = ()  #: ``["*"]`` allows any origin
    app: str = ""  #: ``module:attr`` of an app setup function; empty: the built-in relay only
    shutdown_grace_ms: int = 2_000
    advertise: str = ""  #: the URL others reach this node at; empty: http://host:port
    admin_token: str = ""  #: bearer token for /admin/*; empty: loopback clients only
    drain_window_ms: int = 10_000  #: `roomcast drain` spreads reconnects over this long
    backlog: int = 511  #: the listening socket's queue of connections not yet accepted


@dataclass(frozen=True)
class HttpSettings:
    """``[http]``: the node's HTTP edge, what any TCP peer can reach before a session exists."""

    #: A connection is closed when no whole request head has arrived this long after it
    #: opened or after its last answer: idle keep-alive, a silent peer, a head sent slowly.
    idle_timeout_ms: int = 30_000
    #: A request body (a polling POST, an admin POST) must arrive whole this long after its
    #: head did: else ``408`` and the connection is closed.
    body_timeout_ms: int = 30_000
    #: Request line and headers, in bytes: past this, ``431`` and the connection is closed.
    max_head_bytes: int = 16_384
    #: PEM certificate chain and private key: with both, the node serves https and wss only.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: PEM file of the CA the CLI trusts when it asks nodes over https ("": the system's CAs).
    tls_ca_file: str = ""


@dataclass(frozen=True)
class EngineIOSettings:
    """``[engineio]``: Engine.IO parameters sent in the handshake, in milliseconds."""

    ping_interval_ms: int = 25_000
    ping_timeout_ms: int = 20_000
    max_payload: int = 1_000_000
    connect_timeout_ms: int = 45_000
    upgrade_timeout_ms: int = 10_000
    transports: tuple[str, ...] = ("polling", "websocket")
    allow_upgrades: bool = True


@dataclass(frozen=True)
class LimitSettings:
    """``[limits]``: every network input's bound; past one the session closes with a reason."""

    max_packets_per_body: int = 10_000
    max_attachments: int = 10
    max_ack_id: int = 2**53 - 1
    max_rooms_per_socket: int = 256
    max_namespaces_per_connection: int = 16
    max_pending_handlers: int = 1_024  #: async handlers of one socket running at once
    max_dynamic_namespaces: int = 10_000  #: children of dynamic namespaces existing at once
    send_buffer_bytes: int = 4 * 1024 * 1024
    max_buffered_packets: int = 10_000
    max_room_name_length: int = 256
    max_event_name_length: int = 128
    max_rooms_per_publish: int = 256  #: rooms one relayed ``publish`` may name


@dataclass(frozen=True)
class RecoverySettings:
    """``[recovery]``: connection state recovery (Socket.IO >= 4.6's ``connectionStateRecovery``),
    for every namespace; a namespace's own ``[namespaces."/name".recovery]`` table overrides any
    of these keys for it.

    A socket that loses its connection (transport closed or failed, ping timeout, node shutting
    down; not a deliberate disconnect by either side) is kept for ``max_disconnection_ms``: a
    client that reconnects within it gets the same sid, rooms and ``data`` back, with every
    broadcast it missed, or a fresh session (``recovered: false``), never a partial one.
    """

    enabled: bool = False
    #: How long a disconnected session is kept (Socket.IO's ``maxDisconnectionDuration``).
    max_disconnection_ms: int = 120_000
    #: Packets each namespace keeps for replay on this node (the oldest go first): a client that
    #: missed a packet no longer kept gets a fresh session.
    max_packets: int = 10_000
    #: ... and their bytes (their frames), whichever bound is reached first.
    max_bytes: int = 16 * 1024 * 1024
    #: A recovered socket skips the namespace's middleware (Socket.IO's ``skipMiddlewares``).
    skip_middlewares: bool = True
    #: Sessions each namespace keeps at once on a node: past it, the oldest kept one is
    #: released early (its client gets a fresh session), so that clients that connect and
    #: drop in a loop cannot pile up kept sessions.
    max_sessions: int = 10_000


@dataclass(frozen=True)
class NamespacePolicy:
    """``[namespaces."/name"]``: what the built-in relay lets clients of one namespace do."""

    name: str = "/"
    client_join: bool = True
    client_leave: bool = True
    publish: Literal["members", "any", "none"] = "members"
    echo: bool = False
    auth: Literal["none", "secret", "jwt"] = "none"
    secret: str = ""
    room_pattern: str = ""  #: a regex room names must match in full; empty: any name
    #: Connection state recovery for this namespace: ``[recovery]`` with this table's keys over it.
    recovery: RecoverySettings = field(default_factory=RecoverySettings)


@dataclass(frozen=True)
class RouterAddress:
    """One router as nodes see it."""

    xsub: str = "tcp://127.0.0.1:5555"  #: nodes publish here
    xpub: str = "tcp://127.0.0.1:5556"  #: nodes subscribe here
    http: str = "http://127.0.0.1:5557"  #: stats and health
    id: str = ""  #: empty: the xsub endpoint names the router
    #: With ``bus.curve``: this router's public key file; empty: ``bus.router_public_key_file``.
    public_key_file: str = ""

    @property
    def key(self) -> str:
        """The router's id as the bus and gossip name it."""
        return self.id or self.xsub


@dataclass(frozen=True)
class RouterSettings:
    """``[router]``: what ``roomcast router`` binds."""

    id: str = "router"
    host: str = "127.0.0.1"
    advertise_host: str = ""  #: the address nodes reach it at (registered in Consul); empty: host
    xsub_port: int = 5555
    xpub_port: int = 5556
    http_port: int = 5557
    hwm: int = 100_000
    #: With ``bus.curve``: the router's key pair (``NAME.key_secret`` from ``roomcast keys``).
    secret_key_file: str = ""
    #: With ``bus.curve``: the public keys (``*.key`` files) of the nodes and emitters let in.
    allowed_keys_dir: str = ""


@dataclass(frozen=True)
class BusSettings:
    """``[bus]``: who may use the cluster bus, and whether its traffic is encrypted (CURVE)."""

    #: true: every connection to a router is authenticated and encrypted (ZeroMQ's CURVE);
    #: routers let in only the keys of ``router.allowed_keys_dir``.
    curve: bool = False
    #: This node's (or emitter's) key pair: ``NAME.key_secret`` from ``roomcast keys``.
    secret_key_file: str = ""
    #: The routers' public key file (``NAME.key``), unless a router names its own.
    router_public_key_file: str = ""
    #: true: a bus without CURVE may leave this machine (a router bound, or routers reached,
    #: beyond loopback); false: such a router or node refuses to start.
    allow_open_bus: bool = False


@dataclass(frozen=True)
class ClusterSettings:
    """``[cluster]``: the bus and the gossiped membership replica."""

    enabled: bool = False  #: false: a standalone node that joins no bus
    gossip_interval_ms: int = 5  #: how long membership changes are batched into one delta
    heartbeat_interval_ms: int = 500
    suspect_after_ms: int = 1_500
    down_after_ms: int = 3_000
    request_timeout_ms: int = 2_000  #: node-to-node requests (fetch sockets, acks, ...)
    join_timeout_ms: int = 5_000  #: how long a join may wait for its subscription to be live
    probe_retry_ms: int = 5  #: first wait before a probe is sent again (doubles, up to 1 s)
    self_check_interval_ms: int = 1_000  #: how often a node probes itself through each router
    self_check_timeout_ms: int = 500  #: a probe not back by then marks that router unusable
    link_heartbeat_ms: int = 250  #: ZMTP heartbeat interval on every link to a router
    link_timeout_ms: int = 1_000  #: a link silent this long is lost: its router is not used
    move_idle_ms: int = 250  #: a topic moves to a returning router only after this long idle
    hwm: int = 100_000  #: ZeroMQ high-water marks of the node's PUB and SUB sockets
    dedup_window: int = 65_536  #: message ids remembered to drop copies from several topics
    seq_topics: int = 65_536  #: topics a publisher numbers at once (the idlest restarts at 1)
    owner_topics: int = 65_536  #: topics whose router a publisher remembers
    origins_per_topic: int = 1_024  #: senders per topic whose order a receiver tracks
    leave_linger_ms: int = 500  #: how long a stopping node may take to get its LEAVE out
    max_buffered_deltas: int = 1_024  #: deltas kept per node while its snapshot is awaited
    snapshot_retry_ms: int = 1_000  #: an unanswered snapshot request is repeated after this
    forget_after_downs: int = 10  #: a node down this many down_after periods is forgotten
    #: A broadcast to more rooms than this goes once on its namespace's topic, not once per room.
    max_room_topics: int = 8
    #: Requests for another node's session are forwarded there (no sticky sessions needed).
    forward_requests: bool = True


@dataclass(frozen=True)
class ConsulSettings:
    """``[discovery.consul]``: the Consul backend, used when ``discovery.backend = "consul"``."""

    address: str = "http://127.0.0.1:8500"  #: the local Consul agent's HTTP API
    token: str = ""  #: ACL token sent as ``X-Consul-Token``; empty: none
    node_service: str = "roomcast-node"  #: the Consul service name nodes register under
    router_service: str = "roomcast-router"  #: ... and routers
    check_ttl_ms: int = 10_000  #: a registration not passed for this long turns critical
    check_interval_ms: int = 3_000  #: how often the TTL check is passed (below check_ttl_ms)
    deregister_critical_after_ms: int = 60_000  #: Consul drops a service critical this long
    watch_wait_ms: int = 30_000  #: the ``wait`` of each blocking query on the catalogue
    request_timeout_ms: int = 5_000  #: every other request to Consul
    retry_min_ms: int = 100  #: first retry delay after a Consul error; doubles up to retry_max_ms
    retry_max_ms: int = 10_000


@dataclass(frozen=True)
class DiscoverySettings:
    """``[discovery]``: how nodes find routers (and the CLI finds nodes)."""

    backend: Literal["static", "consul"] = "static"
    routers: tuple[RouterAddress, ...] = (RouterAddress(),)
    nodes: tuple[str, ...] = ()  #: node HTTP URLs the CLI may ask; empty: from ``[up]``
    consul: ConsulSettings = field(default_factory=ConsulSettings)


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: ``GET /metrics`` on every node and router, in Prometheus' text format."""

    enabled: bool = True  #: false: the path answers 404 and the histograms are not recorded
    path: str = "/metrics"
    #: Who may scrape: ``"admin"``, as ``/admin/*`` (loopback peers, or the bearer token
    #: ``node.admin_token`` when it is set, on routers too); ``"any"``: every peer.
    access: Literal["admin", "any"] = "admin"
    #: With ``access = "admin"``: peers in these networks (``"10.0.0.0/8"``, ``"192.0.2.7"``)
    #: may scrape without the token too (a request relayed by a proxy or a browser still not).
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdminUISettings:
    """``[admin_ui]``: the server side of socket.io's Admin UI (``@socket.io/admin-ui``), on a
    namespace of every node; an admin socket on any node sees and commands the whole cluster."""

    enabled: bool = False
    namespace: str = "/admin"
    username: str = "admin"
    #: The bcrypt hash of the password (``$2b$...``); required when enabled. The same on every
    #: node: the session ids it hands out are signed with a key derived from it.
    password_hash: str = ""
    #: ``"development"``: every socket's connections, rooms and events are sent to the UI too;
    #: ``"production"``: only the server stats and the socket list.
    mode: Literal["development", "production"] = "development"
    readonly: bool = False  #: true: the UI may look but not emit, join, leave or disconnect
    session_ttl_ms: int = 86_400_000  #: how long a session id lets the UI reconnect
    stats_interval_ms: int = 2_000  #: each node's ``server_stats`` to the UI, this often
    #: Origins whose pages may connect (the hosted UI is ``https://admin.socket.io``); their
    #: requests are answered with CORS headers allowing credentials. ``["*"]``: any origin.
    cors_origins: tuple[str, ...] = ("https://admin.socket.io",)


@dataclass(frozen=True)
class UpSettings:
    """``[up]``: the local cluster ``roomcast up`` starts."""

    nodes: int = 2
    host: str = "127.0.0.1"
    base_port: int = 3000  #: node i listens on base_port + i
    app: str = ""


@dataclass(frozen=True)
class Settings:
    """The whole, frozen configuration of a roomcast process."""

    node: NodeSettings = field(default_factory=NodeSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    engineio: EngineIOSettings = field(default_factory=EngineIOSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    namespaces: tuple[NamespacePolicy, ...] = (NamespacePolicy(),)
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    admin_ui: AdminUISettings = field(default_factory=AdminUISettings)
    up: UpSettings = field(default_factory=UpSettings)

    def namespace_policy(self, name: str) -> NamespacePolicy | None:
        """The relay policy of ``name``, if the config declares that namespace."""
        for policy in self.namespaces:
            if policy.name == name:
                return policy
        return None

    def recovery_of(self, name: str) -> RecoverySettings:
        """The connection state recovery of namespace ``name``: its own table's when the config
        declares it, else ``[recovery]``."""
        policy = self.namespace_policy(name)
        return policy.recovery if policy is not None else self.recovery

    def replace(self, **sections: Any) -> Settings:
        """A copy with whole sections replaced, or with dotted overrides:
        ``settings.replace(**{"node.port": 0})``."""
        data = to_dict(self)
        for key, value in sections.items():
            _set_dotted(data, key.split("."), value)
        return from_dict(data)


# --- loading --------------------------------------------------------------------------------


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load ``path`` (or only the defaults when None) and apply environment overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        _resolve_paths(data, Path(path).parent)
    for name, raw in (os.environ if env is None else env).items():
        if name.startswith(ENV_PREFIX):
            keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
            _set_dotted(data, keys, _parse_env_value(raw))
    return from_dict(data)


#: The keys whose values are paths of files or directories (and ``discovery.routers`` entries'
#: ``public_key_file`` too): in a config file, a relative one is relative to that file.
PATH_KEYS: Final = (
    ("http", "tls_cert_file"),
    ("http", "tls_key_file"),
    ("http", "tls_ca_file"),
    ("router", "secret_key_file"),
    ("router", "allowed_keys_dir"),
    ("bus", "secret_key_file"),
    ("bus", "router_public_key_file"),
)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make the relative paths of a config file's :data:`PATH_KEYS` relative to ``base``,
    the file's directory (where they were written from), not to the working directory. A
    value of the wrong type is left for validation to name."""

    def resolved(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(base / value)
        return value

    for section, key in PATH_KEYS:
        table = data.get(section)
        if isinstance(table, dict) and key in table:
            table[key] = resolved(table[key])
    discovery = data.get("discovery")
    routers = discovery.get("routers") if isinstance(discovery, dict) else None
    if isinstance(routers, list):
        for router in routers:
            if isinstance(router, dict) and "public_key_file" in router:
                router["public_key_file"] = resolved(router["public_key_file"])


def from_dict(data: Mapping[str, Any]) -> Settings:
    """Validate a plain mapping (the shape of ``cluster.toml``) into :class:`Settings`."""
    raw = dict(data)
    namespaces_raw = raw.pop("namespaces", None)
    settings: Settings = _build(Settings, raw, "", skip={"namespaces"})
    # A namespace's recovery table overrides [recovery] key by key.
    recovery = raw.get("recovery", {})
    if namespaces_raw is None:
        namespaces_raw = {"/": {}}
    if not isinstance(namespaces_raw, Mapping):
        raise ConfigError("namespaces: expected a table of namespace tables")
    policies = []
    for name, table in namespaces_raw.items():
        if not isinstance(name, str) or not name.startswith("/"):
            raise ConfigError(f"namespaces.{name}: a namespace name starts with '/'")
        if not isinstance(table, Mapping):
            raise ConfigError(f"namespaces.{name}: expected a table")
        if "name" in table:  # the table's key is the name; a second one would be ignored
            raise ConfigError(f"namespaces.{name}.name: unknown key (the table key names it)")
        own = table.get("recovery", {})
        if not isinstance(own, Mapping):
            raise ConfigError(f"namespaces.{name}.recovery: expected a table")
        merged = {**table, "name": name, "recovery": {**recovery, **own}}
        policies.append(_build(NamespacePolicy, merged, f"namespaces.{name}"))
    settings = dataclasses.replace(settings, namespaces=tuple(policies))
    _check(settings)
    return settings


def to_dict(settings: Settings) -> dict[str, Any]:
    """The inverse of :func:`from_dict` (namespaces as a table keyed by name)."""
    out: dict[str, Any] = {}
    recovery = dataclasses.asdict(settings.recovery)
    for f in dataclasses.fields(settings):
        if f.name == "namespaces":
            out["namespaces"] = {}
            for p in settings.namespaces:
                table = {k: v for k, v in dataclasses.asdict(p).items() if k != "name"}
                # Only what differs from [recovery]: a later change of [recovery] reaches it.
                own = {k: v for k, v in table.pop("recovery").items() if recovery[k] != v}
                if own:
                    table["recovery"] = own
                out["namespaces"][p.name] = table
        else:
            out[f.name] = dataclasses.asdict(getattr(settings, f.name))
    return out


def _set_dotted(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = data.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys)}: {key} is not a table")
        data = child
    data[keys[-1]] = value


class _EnvValue(str):
    """A raw environment value: parsed as a TOML value unless the key is a string."""

    __slots__ = ()


def _parse_env_value(raw: str) -> Any:
    return _EnvValue(raw)


def _from_env(value: _EnvValue) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return str(value)


def _build(cls: type[Any], table: Mapping[str, Any], path: str, skip: set[str] = set()) -> Any:  # noqa: B006
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path or '<root>'}: expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"{_join(path, key)}: unknown key")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name not in table:
            continue
        kwargs[f.name] = _coerce(hints[f.name], table[f.name], _join(path, f.name))
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if isinstance(value, _EnvValue):
        value = str(value) if hint is str else _from_env(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{path}: must be one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list")
        return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        for arm in typing.get_args(hint):
            try:
                return _coerce(arm, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: invalid value {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string")
        return value
    raise ConfigError(f"{path}: unsupported setting type {hint!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _positive(settings: Any, section: str, *names: str) -> None:
    for name in names:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{section}.{name}: must be positive")


def _check(s: Settings) -> None:
    _positive(
        s.engineio,
        "engineio",
        "ping_interval_ms",
        "ping_timeout_ms",
        "max_payload",
        "connect_timeout_ms",
        "upgrade_timeout_ms",
    )
    _positive(s.limits, "limits", *(f.name for f in dataclasses.fields(s.limits)))
    _positive(s.http, "http", "idle_timeout_ms", "body_timeout_ms", "max_head_bytes")
    if bool(s.http.tls_cert_file) != bool(s.http.tls_key_file):
        raise ConfigError("http.tls_key_file: tls_cert_file and tls_key_file go together")
    _positive(s.node, "node", "backlog")
    if not 0 <= s.node.port <= 65535:
        raise ConfigError("node.port: must be between 0 and 65535")
    if not (s.node.path.startswith("/") and s.node.path.endswith("/")):
        raise ConfigError("node.path: must start and end with '/'")
    for i, t in enumerate(s.engineio.transports):
        if t not in ("polling", "websocket"):
            raise ConfigError(f"engineio.transports[{i}]: must be 'polling' or 'websocket'")
    _positive(
        s.cluster,
        "cluster",
        *(f.name for f in dataclasses.fields(s.cluster) if f.type == "int"),
    )
    if s.cluster.suspect_after_ms >= s.cluster.down_after_ms:
        raise ConfigError("cluster.down_after_ms: must be greater than cluster.suspect_after_ms")
    if s.cluster.link_timeout_ms <= s.cluster.link_heartbeat_ms:
        raise ConfigError("cluster.link_timeout_ms: must be greater than cluster.link_heartbeat_ms")
    if s.up.nodes < 1:
        raise ConfigError("up.nodes: must be at least 1")
    if s.cluster.enabled and not s.discovery.routers and s.discovery.backend == "static":
        raise ConfigError("discovery.routers: static discovery needs at least one router")
    _check_consul(s.discovery.consul)
    _check_metrics(s)
    _check_admin_ui(s.admin_ui)
    if s.admin_ui.enabled and s.namespace_policy(s.admin_ui.namespace) is not None:
        raise ConfigError(f"admin_ui.namespace: {s.admin_ui.namespace} is a relay namespace")
    if not s.engineio.transports:
        raise ConfigError("engineio.transports: at least one transport")
    _positive(
        s.recovery, "recovery", "max_disconnection_ms", "max_packets", "max_bytes", "max_sessions"
    )
    for p in s.namespaces:
        _positive(
            p.recovery,
            f"namespaces.{p.name}.recovery",
            "max_disconnection_ms",
            "max_packets",
            "max_bytes",
            "max_sessions",
        )
        if p.auth != "none" and not p.secret:
            raise ConfigError(f"namespaces.{p.name}.secret: required when auth = {p.auth!r}")
        if p.room_pattern:
            try:
                re.compile(p.room_pattern)
            except re.error as exc:
                raise ConfigError(f"namespaces.{p.name}.room_pattern: {exc}") from exc


def _check_admin_ui(a: AdminUISettings) -> None:
    _positive(a, "admin_ui", "session_ttl_ms", "stats_interval_ms")
    if not a.namespace.startswith("/"):
        raise ConfigError("admin_ui.namespace: a namespace name starts with '/'")
    if a.enabled and not re.fullmatch(r"\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}", a.password_hash):
        raise ConfigError(
            "admin_ui.password_hash: a bcrypt hash is required when enabled "
            "(python -c 'import bcrypt; print(bcrypt.hashpw(b\"...\", bcrypt.gensalt()).decode())')"
        )


def _check_metrics(s: Settings) -> None:
    path = s.metrics.path
    if not path.startswith("/") or path.endswith("/") or "?" in path or "#" in path:
        raise ConfigError("metrics.path: a path such as /metrics (no trailing '/')")
    taken = ("/health", "/stats", s.node.path.rstrip("/"))
    if path in taken or path.startswith(("/admin/", s.node.path)):
        raise ConfigError(f"metrics.path: {path} is taken by another route")
    for i, network in enumerate(s.metrics.networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"metrics.networks[{i}]: expected an address or a network (10.0.0.0/8), "
                f"not {network!r}"
            ) from None


def _check_consul(c: ConsulSettings) -> None:
    section = "discovery.consul"
    _positive(c, section, *(f.name for f in dataclasses.fields(c) if f.name.endswith("_ms")))
    if c.check_interval_ms >= c.check_ttl_ms:
        raise ConfigError(f"{section}.check_interval_ms: must be less than check_ttl_ms")
    if c.retry_min_ms > c.retry_max_ms:
        raise ConfigError(f"{section}.retry_max_ms: must not be less than retry_min_ms")
    if c.watch_wait_ms > 300_000:  # py-consul's HTTP session gives up on a request after 5m
        raise ConfigError(f"{section}.watch_wait_ms: at most 300000 (5 minutes)")
    if not re.fullmatch(r"https?://[^/\s]+/?", c.address):
        raise ConfigError(f"{section}.address: expected http://host:port or https://host:port")
    for name in ("node_service", "router_service"):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", getattr(c, name)):
            raise ConfigError(f"{section}.{name}: letters, digits, '-' and '_' only")


# --- the open-bus rule -----------------------------------------------------------------------


def is_loopback(address: str) -> bool:
    """Whether ``address`` stays on this machine: a host, a ZeroMQ endpoint or a URL naming
    127.0.0.0/8, ``::1`` or ``localhost``, or an ``ipc://`` / ``inproc://`` endpoint.

    Names are not resolved: any other name (and a wildcard such as ``0.0.0.0`` or ``*``) counts
    as reaching beyond the machine.
    """
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = address
    if "://" in address:
        try:
            host = urlsplit(address).hostname or ""
        except ValueError:
            return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_open_bus(key: str, address: str, *, curve: bool, allow_open_bus: bool) -> None:
    """The open-bus rule: without CURVE the bus may not leave this machine unless the config
    says so (``bus.allow_open_bus``); a :class:`ConfigError` naming ``key`` otherwise."""
    if curve or allow_open_bus or is_loopback(address):
        return
    raise ConfigError(
        f"{key}: {address} is not a loopback address and the bus is open (bus.curve = false): "
        "set bus.curve = true with keys (see `roomcast keys`), or bus.allow_open_bus = true "
        "to carry the bus unauthenticated and in the clear"
    )
