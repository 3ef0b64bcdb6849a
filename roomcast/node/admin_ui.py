"""The server side of socket.io's Admin UI (``@socket.io/admin-ui``), cluster-wide.

The UI connects to one namespace (``admin_ui.namespace``) of any node and speaks the events of
the original's ``lib/index.ts``: ``session``, ``config``, ``server_stats``, ``all_sockets``, the
development-mode events, and the commands ``emit``, ``join``, ``leave``, ``_disconnect``.
What differs from the original is where things come from:

* **Sessions need no store.** A session id is ``nonce.expiry.mac``, the MAC keyed by a hash of
  ``admin_ui.password_hash``, which every node of the cluster reads from the same config: any
  node checks a session another node issued.
* **Every node speaks for itself.** Each node sends its own ``server_stats`` (one server per
  node in the UI) to the admin sockets of the whole cluster, as a room broadcast.
* **Nothing is sent when nobody looks.** Every admin socket is in the room :data:`VIEWERS`; the
  membership replica tells every node whether that room has members anywhere
  (:meth:`Adapter.room_held`, a local read), and a node sends stats and events only then.
* **Commands are cluster-wide** through the adapter (``sockets_join``, ``disconnect_sockets``,
  a room broadcast), and ``all_sockets`` is the adapter's ``fetch_sockets``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket as socket_module
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

import bcrypt

from roomcast.cluster.routing import Target
from roomcast.config import AdminUISettings
from roomcast.errors import ClusterTimeoutError, ConnectRefusedError, RoomcastError
from roomcast.ids import Namespace as NamespaceName

from .adapter import Adapter, SocketInfo
from .broadcast import BroadcastOperator
from .requests import Sockets
from .stats import NodeStats

log = logging.getLogger("roomcast.node.admin_ui")

#: The room of the admin namespace every admin socket is in: whether it has members anywhere
#: is what every node asks before it sends the UI anything.
VIEWERS = "roomcast:admin-ui"
#: What a refused login gets (the UI shows this message in its login form).
INVALID_CREDENTIALS = "invalid credentials"
#: Session ids issued and not yet sent (their socket is connecting) kept at most.
ISSUED_KEPT = 1024
#: Concurrent bcrypt checks per node: each takes a core for a few hundred milliseconds.
LOGIN_CHECKS = 2
#: What a node sends the viewers (counted by event in ``NodeStats.admin_ui_sent``).
VIEWER_EVENTS = frozenset(
    (
        "server_stats",
        "socket_connected",
        "socket_updated",
        "socket_disconnected",
        "room_joined",
        "room_left",
        "event_received",
        "event_sent",
    )
)


class Feature(enum.StrEnum):
    """What the UI may offer (``typed-events.ts``' ``Feature``)."""

    EMIT = "EMIT"
    JOIN = "JOIN"
    LEAVE = "LEAVE"
    DISCONNECT = "DISCONNECT"
    MJOIN = "MJOIN"
    MLEAVE = "MLEAVE"
    MDISCONNECT = "MDISCONNECT"
    AGGREGATED_EVENTS = "AGGREGATED_EVENTS"
    ALL_EVENTS = "ALL_EVENTS"


def features(settings: AdminUISettings) -> list[Feature]:
    """The features the ``config`` event announces: commands unless read-only, every event in
    development mode."""
    out: list[Feature] = []
    if not settings.readonly:
        out += [Feature.EMIT, Feature.JOIN, Feature.LEAVE, Feature.DISCONNECT]
        out += [Feature.MJOIN, Feature.MLEAVE, Feature.MDISCONNECT]
    out.append(Feature.AGGREGATED_EVENTS)
    if settings.mode == "development":
        out.append(Feature.ALL_EVENTS)
    return out


# -- sessions (pure) ---------------------------------------------------------------------------


def session_key(password_hash: str) -> bytes:
    """The key session ids are signed with: the same on every node sharing the password hash,
    and new whenever the password changes (which ends every session)."""
    return hashlib.sha256(b"roomcast admin-ui session\0" + password_hash.encode()).digest()


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()[:32]


def new_session(key: bytes, now: float, ttl: float) -> str:
    """A session id valid until ``now + ttl`` on every node with the same key."""
    body = f"{secrets.token_hex(8)}.{int(now + ttl)}"
    return f"{body}.{_mac(key, body)}"


def session_valid(key: bytes, session: object, now: float) -> bool:
    """Whether ``session`` was issued with ``key`` and has not expired at ``now``."""
    if not isinstance(session, str) or len(session) > 128:
        return False
    body, _, mac = session.rpartition(".")
    _, _, expiry = body.partition(".")
    if not expiry.isdigit() or not hmac.compare_digest(mac, _mac(key, body)):
        return False
    return now < int(expiry)


# -- what the UI is sent (pure) ------------------------------------------------------------------


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def serialize_socket(info: SocketInfo) -> dict[str, Any]:
    """A socket as the UI lists it (``SerializedSocket``). The client id is the socket id: one
    client per socket in the UI's "Clients" view."""
    handshake: dict[str, Any] = {}
    hs = info.handshake
    if hs is not None:
        headers = {k.lower(): v for k, v in hs.headers.items()}
        handshake = {
            "address": headers.get("x-forwarded-for") or hs.address,
            "headers": headers,
            "query": hs.query,
            "issued": int(hs.time * 1000),
            "secure": hs.secure,
            "time": _iso(hs.time),
            "url": hs.url,
            "xdomain": "origin" in headers,
        }
    return {
        "id": info.id,
        "clientId": info.id,
        "transport": info.transport,
        "nsp": info.namespace,
        "data": serialize_data(info.data),
        "handshake": handshake,
        "rooms": sorted(info.rooms | {info.id}),
    }


def serialize_data(data: Any) -> dict[str, Any]:
    """A socket's ``data`` as the UI shows it: a dict's string keys, each value JSON can carry
    (anything else as its repr); nothing for data that is not a dict."""
    if not isinstance(data, dict):
        return {}
    return {k: _plain(v) for k, v in data.items() if isinstance(k, str)}


def _plain(value: Any) -> Any:
    """``value`` if JSON can carry it, else its repr (app data may hold anything)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


#: (event type of the UI's dashboard, NodeStats counter) for the aggregated events.
_COUNTED: tuple[tuple[str, Callable[[NodeStats], int]], ...] = (
    ("rawConnection", lambda s: s.connections_opened),
    ("packetsIn", lambda s: s.messages_in),
    ("packetsOut", lambda s: s.messages_out + s.direct_out),
    ("bytesIn", lambda s: s.ws_bytes_in + s.polling_bytes_in),
    ("bytesOut", lambda s: s.ws_bytes_out + s.polling_bytes_out),
)


class Aggregates:
    """The ``aggregatedEvents`` of a node's ``server_stats``: what its counters moved by since
    the previous stats, stamped with the second they are sent in."""

    def __init__(self, stats: NodeStats) -> None:
        self._stats = stats
        self._last = self._read()

    def _read(self) -> dict[tuple[str, str | None], int]:
        s = self._stats
        out: dict[tuple[str, str | None], int] = {
            (kind, None): count(s) for kind, count in _COUNTED
        }
        for reason, n in s.closed_by_reason.items():
            out[("rawDisconnection", reason)] = n
        return out

    def take(self, now: float) -> list[dict[str, Any]]:
        """The moves since the last call, as the UI's ``NamespaceEvent`` list."""
        current = self._read()
        stamp = int(now) * 1000
        out = []
        for (kind, sub), n in current.items():
            moved = n - self._last.get((kind, sub), 0)
            if moved > 0:
                event: dict[str, Any] = {"timestamp": stamp, "type": kind, "count": moved}
                if sub is not None:
                    event["subType"] = sub
                out.append(event)
        self._last = current
        return out


# -- the namespace -------------------------------------------------------------------------------


class Connection(Protocol):
    """An Engine.IO connection of this node, as the stats see it."""

    @property
    def transport_name(self) -> str: ...


class NodeNamespace(Protocol):
    """A namespace of this node, as the stats and the socket list see it."""

    @property
    def name(self) -> str: ...

    @property
    def sockets(self) -> Mapping[str, Any]: ...


class AdminSocket(Protocol):
    """An admin socket (a :class:`~roomcast.node.sio_socket.Socket`), as the namespace uses it."""

    @property
    def id(self) -> str: ...

    def emit(self, event: str, *args: Any) -> None: ...

    async def join(self, *rooms: str | Iterable[str]) -> None: ...


class ObservedNamespace(Protocol):
    @property
    def name(self) -> str: ...


class ObservedSocket(Protocol):
    """A socket of this node, as the development-mode events describe it."""

    @property
    def sid(self) -> str: ...

    @property
    def namespace(self) -> ObservedNamespace: ...

    def info(self) -> SocketInfo: ...


class AdminNamespace(Protocol):
    """The admin namespace (a :class:`~roomcast.node.sockets.Namespace`): where handlers go."""

    def on(self, event: str, handler: Callable[..., Any] | None = None) -> Any: ...

    def use(self, middleware: Callable[..., Any]) -> Any: ...


class AdminUI:
    """The Admin UI's namespace on one node, and its stats task (an async context manager).

    It is handed what it reads: the adapter (cluster-wide operations, the replica's answer to
    "is anyone looking"), the node's counters, connections and namespaces.
    """

    def __init__(
        self,
        settings: AdminUISettings,
        node_id: str,
        adapter: Adapter,
        stats: NodeStats,
        connections: Callable[[], Mapping[str, Connection]],
        namespaces: Callable[[], Iterable[NodeNamespace]],
        known_namespaces: Callable[[], Iterable[str]],
    ) -> None:
        self.settings = settings
        self.node_id = node_id
        self.adapter = adapter
        self.name = NamespaceName(settings.namespace)
        self._stats = stats
        self._connections = connections
        self._namespaces = namespaces
        self._known_namespaces = known_namespaces
        self._key = session_key(settings.password_hash)
        self._features = features(settings)
        self._development = settings.mode == "development"
        self._aggregates = Aggregates(stats)
        self._started = time.monotonic()
        self._hostname = socket_module.gethostname()
        self._logins = asyncio.Semaphore(LOGIN_CHECKS)
        self._issued: dict[str, str] = {}  # sid -> session id, from middleware to connect
        self._task: asyncio.Task[None] | None = None
        self.viewers = BroadcastOperator(adapter, Target(self.name, frozenset((VIEWERS,))))

    def install(self, namespace: AdminNamespace) -> None:
        """Register the middleware and handlers on the admin namespace."""
        namespace.use(self._authenticate)
        namespace.on("connect", self._connected)
        namespace.on("disconnect", self._disconnected)
        if not self.settings.readonly:
            namespace.on("emit", self._emit)
            namespace.on("join", self._join)
            namespace.on("leave", self._leave)
            namespace.on("_disconnect", self._disconnect)

    @property
    def watched(self) -> bool:
        """Whether an admin socket is connected to some node (a local read of the replica)."""
        return self.adapter.room_held(self.name, VIEWERS)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> AdminUI:
        self._task = asyncio.create_task(self._send_stats(), name="admin-ui-stats")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _to_viewers(self, event: str, *args: Any) -> None:
        """Send ``event`` to the admin sockets of the whole cluster, and count it."""
        self.viewers.emit(event, *args)
        self._stats.admin_ui_sent[event] += 1

    async def _send_stats(self) -> None:
        interval = self.settings.stats_interval_ms / 1000
        while True:
            if self.watched:
                try:
                    self._to_viewers("server_stats", self.server_stats(time.time()))
                except Exception:
                    log.exception("server_stats not sent")
            else:
                self._aggregates.take(time.time())  # the next stats count from now
            await asyncio.sleep(interval)  # a period, not a synchronisation

    def server_stats(self, now: float) -> dict[str, Any]:
        """This node's ``server_stats``: one server of the UI."""
        connections = self._connections()
        polling = sum(1 for c in connections.values() if c.transport_name == "polling")
        return {
            "serverId": self.node_id,
            "hostname": self._hostname,
            "pid": os.getpid(),
            "uptime": time.monotonic() - self._started,
            "clientsCount": len(connections),
            "pollingClientsCount": polling,
            "aggregatedEvents": self._aggregates.take(now),
            "namespaces": [
                {"name": ns.name, "socketsCount": len(ns.sockets)} for ns in self._namespaces()
            ],
        }

    # -- the admin sockets --------------------------------------------------------------------

    async def _authenticate(self, socket: AdminSocket, auth: Any) -> None:
        """Basic auth as the original: a valid session id, or the username and the password
        (checked against the bcrypt hash), which issues a new session id."""
        auth = auth if isinstance(auth, dict) else {}
        if session_valid(self._key, auth.get("sessionId"), time.time()):
            return
        username, password = auth.get("username"), auth.get("password")
        if (
            isinstance(username, str)
            and isinstance(password, str)
            and hmac.compare_digest(username.encode(), self.settings.username.encode())
            and await self._check_password(password)
        ):
            ttl = self.settings.session_ttl_ms / 1000
            if len(self._issued) >= ISSUED_KEPT:
                # Logins whose connection went before its connect handler ran.
                del self._issued[next(iter(self._issued))]
            self._issued[socket.id] = new_session(self._key, time.time(), ttl)
            return
        raise ConnectRefusedError(INVALID_CREDENTIALS)

    async def _check_password(self, password: str) -> bool:
        secret = password.encode()
        if len(secret) > 72:  # bcrypt's limit: a longer one was never a password here
            return False
        hashed = self.settings.password_hash.encode()
        async with self._logins:
            return await asyncio.to_thread(bcrypt.checkpw, secret, hashed)

    async def _connected(self, socket: AdminSocket, auth: Any) -> None:
        session = self._issued.pop(socket.id, None)
        if session is not None:
            socket.emit("session", session)
        socket.emit("config", {"supportedFeatures": [str(f) for f in self._features]})
        await socket.join(VIEWERS)
        if self._development:
            await self._send_all_sockets(socket)

    def _disconnected(self, socket: AdminSocket, reason: str) -> None:
        self._issued.pop(socket.id, None)

    async def _send_all_sockets(self, socket: AdminSocket) -> None:
        """``all_sockets`` twice: this node's sockets at once, then the cluster's. The UI
        replaces its list with each, so a node that went silent (not yet known down) delays
        only its own part: the second list comes after the request deadline, with the
        answers of every other node."""
        names = sorted(set(self._known_namespaces()))
        here = await self.all_sockets(names, local=True)
        socket.emit("all_sockets", here)
        socket.emit("all_sockets", await self.all_sockets(names))

    async def all_sockets(self, names: list[str], local: bool = False) -> list[dict[str, Any]]:
        """The sockets of namespaces ``names`` on this node (``local``) or in the cluster, all
        namespaces asked at once; a node that does not answer in time is left out (the
        others' answers are kept)."""
        found = await asyncio.gather(*(self._sockets_of(name, local) for name in names))
        return [serialize_socket(info) for infos in found for info in infos]

    async def _sockets_of(self, name: str, local: bool) -> list[SocketInfo]:
        op = self._operator(name)
        try:
            return await (op.local if local else op).fetch_sockets()
        except ClusterTimeoutError as exc:
            log.warning("sockets of %s listed without %s", name, sorted(exc.missing))
            found = await op.local.fetch_sockets()
            for reply in exc.partial.values():
                if isinstance(reply, Sockets):
                    found.extend(reply.sockets)
            return found
        except RoomcastError as exc:
            log.warning("sockets of %s not listed: %s", name, exc)
            return []

    # -- development mode: what happens to this node's sockets (SocketEvents) -----------------

    def _telling(self) -> bool:
        return self._development and self.watched

    def _tell(self, event: str, *args: Any) -> None:
        """Send an event to the viewers; a failure (app data the wire cannot carry) is logged,
        never raised into the path of the socket it describes."""
        try:
            self._to_viewers(event, *args)
        except Exception:
            log.warning("admin event %s not sent", event, exc_info=True)

    def socket_connected(self, socket: ObservedSocket) -> None:
        """``socket_connected`` (the socket as ``all_sockets`` lists it, and when)."""
        if self._telling():
            serialized = serialize_socket(socket.info())
            self._tell("socket_connected", serialized, _iso(time.time()))

    def socket_disconnected(self, socket: ObservedSocket, reason: str) -> None:
        """``socket_disconnected`` with the reason."""
        if self._telling():
            name = socket.namespace.name
            self._tell("socket_disconnected", name, socket.sid, reason, _iso(time.time()))

    def socket_updated(self, socket: ObservedSocket) -> None:
        """``socket_updated`` with the transport: its connection was upgraded."""
        if self._telling():
            info = socket.info()
            update = {"id": info.id, "nsp": info.namespace, "transport": info.transport}
            self._tell("socket_updated", update)

    def data_assigned(self, socket: ObservedSocket) -> None:
        """``socket_updated`` with the data: a key of ``socket.data`` was assigned."""
        if self._telling():
            info = socket.info()
            update = {"id": info.id, "nsp": info.namespace, "data": serialize_data(info.data)}
            self._tell("socket_updated", update)

    def room_joined(self, socket: ObservedSocket, room: str) -> None:
        """``room_joined``."""
        if self._telling():
            name = socket.namespace.name
            self._tell("room_joined", name, room, socket.sid, _iso(time.time()))

    def room_left(self, socket: ObservedSocket, room: str) -> None:
        """``room_left``."""
        if self._telling():
            name = socket.namespace.name
            self._tell("room_left", name, room, socket.sid, _iso(time.time()))

    def event_received(self, socket: ObservedSocket, data: list[Any]) -> None:
        """``event_received``: an event from a client of an app namespace (its ack dropped)."""
        name = socket.namespace.name
        if name != self.name and self._telling():
            self._tell("event_received", name, socket.sid, data, _iso(time.time()))

    def event_sent(self, socket: ObservedSocket, data: list[Any]) -> None:
        """``event_sent``: an event emitted to one socket of an app namespace (broadcasts are
        not reported per recipient: that would multiply each by its audience)."""
        name = socket.namespace.name
        if name != self.name and self._telling():
            self._tell("event_sent", name, socket.sid, data, _iso(time.time()))

    # -- commands (cluster-wide) --------------------------------------------------------------

    def _operator(self, nsp: str, room: Any = None) -> BroadcastOperator:
        op = BroadcastOperator(self.adapter, Target(NamespaceName(nsp)))
        return op.to(room) if isinstance(room, str) and room else op

    async def _emit(self, socket: AdminSocket, nsp: Any, room: Any, event: Any, *args: Any) -> None:
        if _namespace(nsp) and isinstance(event, str):
            self._operator(nsp, room).emit(event, *args)

    async def _join(self, socket: AdminSocket, nsp: Any, room: Any, filter: Any = None) -> None:
        if _namespace(nsp) and isinstance(room, str) and room:
            await self._command(self._operator(nsp, filter).sockets_join(room))

    async def _leave(self, socket: AdminSocket, nsp: Any, room: Any, filter: Any = None) -> None:
        if _namespace(nsp) and isinstance(room, str) and room:
            await self._command(self._operator(nsp, filter).sockets_leave(room))

    async def _disconnect(
        self, socket: AdminSocket, nsp: Any, close: Any = False, filter: Any = None
    ) -> None:
        if _namespace(nsp):
            await self._command(self._operator(nsp, filter).disconnect_sockets(close is True))

    async def _command(self, operation: Any) -> None:
        try:
            await operation
        except RoomcastError as exc:  # a node's refusal or silence: the others did act
            log.warning("admin command incomplete: %s", exc)


def _namespace(nsp: Any) -> bool:
    return isinstance(nsp, str) and nsp.startswith("/")
