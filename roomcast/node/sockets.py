"""Namespaces, sockets and broadcasts: the Socket.IO server API of an edge node.

The shapes follow socket.io's server API (``io.of(name)``, ``socket.join``, ``io.to(room).
except(room).emit``, ``emitWithAck``, ``fetchSockets``...), written in Python's spelling. Names
say how far a thing goes (STYLE.md #5): ``emit`` reaches the whole namespace in the cluster;
``.local`` restricts a broadcast to this node.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import re
from collections.abc import Callable, Collection, Container
from dataclasses import dataclass, field
from typing import Any

from roomcast import ids
from roomcast.cluster.routing import Target
from roomcast.config import LimitSettings, RecoverySettings
from roomcast.errors import (
    ConnectRefusedError,
    DisconnectedError,
    RecoveryRefusedError,
    RoomRefusedError,
)
from roomcast.ids import Room, new_pid
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames

from . import recovery
from .adapter import Adapter, SessionClaim, Spawn
from .broadcast import BroadcastOperator, Broadcasts
from .recovery import History, Membership, PersistedSession, RecoverableSocket
from .rooms import RoomRegistry
from .sio_socket import ClientLink, NoSocketEvents, SocketEvents
from .sio_socket import Socket as Socket
from .stats import NodeStats

log = logging.getLogger("roomcast.node")

Handler = Callable[..., Any]
Middleware = Callable[["Socket", Any], Any]
NamespaceMatcher = str | re.Pattern[str] | Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class NamespaceServices:
    """What a namespace uses of its node: handed to it, so it never reaches for a server."""

    adapter: Adapter
    limits: LimitSettings
    stats: NodeStats
    spawn: Spawn
    #: Told when a namespace may have become empty (a dynamic child is then removed).
    maybe_empty: Callable[[Namespace], None]
    #: The connection state recovery of a namespace, by name (``Settings.recovery_of``).
    recovery_of: Callable[[str], RecoverySettings]
    #: Told what happens to sockets (the Admin UI's development mode).
    events: SocketEvents = field(default_factory=NoSocketEvents)


class Namespace(Broadcasts):
    """A namespace: its handlers, middleware, sockets and rooms on this node."""

    def __init__(
        self, services: NamespaceServices, name: str, parent: Namespace | None = None
    ) -> None:
        self.services = services
        self.name = ids.Namespace(name)
        self.parent = parent
        #: This node's connected sockets of the namespace, by sid.
        self.sockets: dict[str, Socket] = {}
        #: Sockets kept for recovery after their connection was lost (*ghosts*): members of
        #: their rooms that take no packet, until recovered or released.
        self.ghosts: dict[str, Socket] = {}
        self._members: dict[str, Socket] = {}  # both: the registry's sid rooms
        self._pids: dict[str, Socket] = {}  # connected sockets by pid (recovery on)
        self.registry: RoomRegistry[Socket] = RoomRegistry(self._members)
        self._history: History | None = None
        self.recovery = parent.recovery if parent is not None else services.recovery_of(name)
        self._handlers: dict[str, Handler] = {}
        self._middlewares: list[Middleware] = []
        self._ack_ids = itertools.count(0)
        self.connecting = 0  # connects under way (a dynamic child is not removed meanwhile)

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

    @property
    def family(self) -> str:
        """The name this namespace is counted under: its own, or for a dynamic namespace's
        child, its parent's (the pattern: a child's name is client input)."""
        return self.parent.name if self.parent is not None else self.name

    # -- registration -------------------------------------------------------------------------

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register ``handler(socket, *args)`` for ``event``; usable as a decorator.

        Special events: ``connect`` (``handler(socket, auth)``, after the client was told it is
        connected), ``disconnect`` (``handler(socket, reason)``) and ``*`` (catch-all:
        ``handler(socket, event, *args)`` for events without their own handler). The return
        value is the ack (a tuple for several arguments).
        """

        def register(fn: Handler) -> Handler:
            self._handlers[event] = fn
            return fn

        return register(handler) if handler is not None else register

    def use(self, middleware: Middleware) -> Middleware:
        """Add ``middleware(socket, auth)``, run in order before ``connect``.

        It refuses the connection by raising :class:`ConnectRefusedError` (sync or async).
        """
        self._middlewares.append(middleware)
        return middleware

    def handler(self, event: str) -> Handler | None:
        """The handler of ``event`` here or, for a dynamic child, in its parent."""
        h = self._handlers.get(event)
        if h is None and self.parent is not None:
            return self.parent.handler(event)
        return h

    @property
    def middlewares(self) -> list[Middleware]:
        """Middlewares in the order they run (a dynamic parent's first)."""
        inherited = self.parent.middlewares if self.parent is not None else []
        return inherited + self._middlewares

    def next_ack_id(self) -> int:
        """A fresh ack id, shared by direct emits and broadcasts of this namespace."""
        return next(self._ack_ids)

    # -- connection state recovery ------------------------------------------------------------

    @property
    def recovery(self) -> RecoverySettings:
        """Connection state recovery in this namespace (from the config; an app may set it
        before clients connect: ``ns.recovery = RecoverySettings(enabled=True)``)."""
        return self._recovery

    @recovery.setter
    def recovery(self, settings: RecoverySettings) -> None:
        self._recovery = settings
        self._history = (
            History(settings.max_packets, settings.max_bytes) if settings.enabled else None
        )

    @property
    def history(self) -> History | None:
        """What this node's sockets of the namespace were sent (None: recovery is off)."""
        return self._history

    @property
    def window(self) -> float:
        """Seconds a session of the namespace is kept for recovery."""
        return self._recovery.max_disconnection_ms / 1000

    def has_pid(self, pid: str) -> bool:
        """Whether a socket connected here has the session ``pid``."""
        return pid in self._pids

    def recoverable(self) -> list[RecoverableSocket]:
        """The sockets recovery knows here: connected ones with a pid, and ghosts."""
        return [
            RecoverableSocket(s.sid, s.pid, s.data, s.membership, s.sid in self.ghosts)
            for s in self._members.values()
            if s.pid is not None and s.membership is not None
        ]

    def ghost(self, sid: str) -> Socket | None:
        """The ghost of ``sid``, if it is one."""
        return self.ghosts.get(sid)

    def supersede(self, pid: str) -> bool:
        """A client presents the pid of a socket still connected here: its connection is lost
        (the client is back on another one before this node noticed), so it is closed as
        such, and the socket kept. Returns whether a socket was kept so."""
        socket = self._pids.get(pid)
        if socket is None:
            return False
        log.info("socket %s of %s recovered on another connection", socket.sid, self.name)
        socket.conn.close(reasons.TRANSPORT_CLOSE, "superseded by a recovering connection")
        return self.ghosts.get(socket.sid) is socket

    def release(self, sid: str) -> None:
        """The ghost of ``sid`` will not be recovered: it leaves its rooms, and is forgotten."""
        ghost = self.ghosts.pop(sid, None)
        if ghost is None:
            return
        if self._members.get(sid) is ghost:
            del self._members[sid]
        self.services.adapter.journal.gone(self.name, sid)
        self.services.spawn(self._gone(ghost))

    # -- broadcasting -------------------------------------------------------------------------

    def operator(self) -> BroadcastOperator:
        """A broadcast to every socket of the namespace, to narrow down."""
        return BroadcastOperator(self.services.adapter, Target(self.name))

    def recipients(
        self,
        rooms: Collection[str],
        except_rooms: Collection[str] = (),
        except_sids: Collection[str] = (),
    ) -> Collection[Socket]:
        """This node's sockets of the namespace in any of ``rooms`` (all when empty), minus
        the members of ``except_rooms`` and the sockets named in ``except_sids``."""
        return self.registry.recipients(rooms, except_rooms, except_sids)

    def sids(self) -> Container[str]:
        """The sids of this node's sockets of the namespace (ghosts included)."""
        return self._members

    def rooms(self) -> dict[Room, int]:
        """Rooms with members on this node, with their local sizes."""
        return self.registry.rooms()

    # -- membership ---------------------------------------------------------------------------

    async def add_to_rooms(self, socket: Socket, rooms: list[str]) -> None:
        """Add ``socket`` to ``rooms``; the rooms this creates are announced to the cluster."""
        if not socket.connected:
            return
        for room in rooms:
            if room != socket.sid and self.services.adapter.names_a_socket(room):
                # It would shadow a socket's own room (and eavesdrop on that socket).
                raise RoomRefusedError(room)
        new = list(dict.fromkeys(r for r in rooms if r not in socket.rooms))
        limit = self.services.limits.max_rooms_per_socket
        if len(socket.rooms) - 1 + len(new) > limit:
            socket.conn.close(reasons.TOO_MANY_ROOMS, f"limit {limit}")
            raise DisconnectedError(reasons.TOO_MANY_ROOMS)
        membership = socket.membership
        events = self.services.events
        adapter = self.services.adapter
        for room in new:
            socket.rooms.add(room)
            self.registry.add(socket, Room(room))
            if membership is not None:
                at = adapter.offsets.last
                membership.join(room, at)
                adapter.journal.joined(self.name, socket.sid, room, at, socket.data)
            events.room_joined(socket, room)
        if new:
            await self._rooms_changed(joined=new, left=[])

    async def remove_from_rooms(self, socket: Socket, rooms: list[str]) -> None:
        """Remove ``socket`` from ``rooms``; rooms left empty are deleted."""
        left: list[str] = []
        for room in rooms:
            if room == socket.sid or room not in socket.rooms:
                continue
            socket.rooms.discard(room)
            self.registry.discard(socket, Room(room))
            if socket.membership is not None:
                adapter = self.services.adapter
                at = adapter.offsets.last
                socket.membership.leave(room, at)
                adapter.journal.left(self.name, socket.sid, room, at, socket.data)
            left.append(room)
            self.services.events.room_left(socket, room)
        if left:
            await self._rooms_changed(joined=[], left=left)

    async def _rooms_changed(self, joined: list[str], left: list[str]) -> None:
        """Tell the adapter the rooms' new local sizes; returns once the rooms joined are
        live (see :meth:`Adapter.rooms_changed`)."""
        registry = self.registry
        counts = {r: registry.size(r) for r in (*joined, *left)}
        await self.services.adapter.rooms_changed(self.name, counts, joined, left)

    def socket_closed(self, socket: Socket, reason: str) -> None:
        """A socket disconnected: kept as a ghost for recovery when its connection was lost
        (and recovery is on), else forgotten; then its ``disconnect`` handler runs."""
        sid = socket.sid
        if self.sockets.get(sid) is socket:
            del self.sockets[sid]
            stats = self.services.stats
            stats.sockets -= 1
            stats.socket_disconnects[(self.family, reason)] += 1
            self.services.events.socket_disconnected(socket, reason)
        if socket.pid is not None and self._pids.get(socket.pid) is socket:
            del self._pids[socket.pid]
        membership = socket.membership
        if (
            socket.pid is not None
            and membership is not None
            and self._history is not None
            and reason in recovery.RECOVERABLE
        ):
            if len(self.ghosts) >= self._recovery.max_sessions:
                oldest = next(iter(self.ghosts.values()))
                log.warning("%s keeps too many sessions: %s released", self.name, oldest.sid)
                self.services.stats.sessions_dropped += 1
                assert oldest.pid is not None
                self.services.adapter.release_session(oldest.pid)
            self.ghosts[sid] = socket
            self.services.adapter.journal.lost(self.name, sid, socket.data)
            self.services.adapter.persist_session(
                PersistedSession(
                    self.name,
                    sid,
                    socket.pid,
                    frozenset(socket.rooms),
                    socket.data,
                    membership.first,
                    membership,
                    self._recovery.max_disconnection_ms / 1000,
                )
            )
            self.services.spawn(self._disconnected(socket, reason))
            return
        if self._members.get(sid) is socket:
            del self._members[sid]
        if membership is not None:
            self.services.adapter.journal.gone(self.name, sid)
        self.services.spawn(self._gone(socket, reason))

    async def _gone(self, socket: Socket, reason: str | None = None) -> None:
        """A socket (or ghost) left for good: out of its rooms, the namespace may be empty."""
        self.services.adapter.namespace_exited(self.name)
        self.services.adapter.socket_gone(self.name, socket.sid)
        await self.remove_from_rooms(socket, [r for r in socket.rooms if r != socket.sid])
        if not self._members and self._history is not None:
            self._history.clear()  # no socket is left that could need it
            self.services.adapter.journal.cleared(self.name)
        self.services.maybe_empty(self)
        if reason is not None:
            await self._disconnected(socket, reason)

    async def _disconnected(self, socket: Socket, reason: str) -> None:
        handler = self.handler("disconnect")
        if handler is not None:
            try:
                result = handler(socket, reason)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("disconnect handler of %s failed", self.name)

    async def connect(self, conn: ClientLink, auth: dict[str, Any]) -> None:
        """Run middleware, then connect a socket for ``conn`` (§Connection to a namespace): a
        new one, or, when the client presents the pid of a session kept for recovery and it
        can be recovered exactly, that session's socket (same sid, rooms and data), every
        packet it missed written before the CONNECT reply.

        The caller counts the connect in ``connecting`` from the moment it resolved the name.
        """
        claim = await self._claim(auth)
        socket = await self._admit(conn, auth, claim)
        if socket is None:
            return
        missed: list[Frames] = []
        if claim is not None:
            try:
                missed = await claim.complete()
            except RecoveryRefusedError as exc:
                # Exact recovery became impossible while the middleware ran: a fresh session
                # then, whose middleware runs again (it may have relied on the old data).
                self.services.stats.recoveries_refused[exc.reason] += 1
                claim = None
                socket = await self._admit(conn, auth, None)
                if socket is None:
                    return
        if claim is None:
            # Namespace-wide emits must reach the socket as soon as it is told it is connected
            # (a recovered socket's ghost kept that, and its rooms).
            await self.services.adapter.namespace_entered(self.name)
            if conn.closed or self.name in conn.sockets:
                self.services.adapter.namespace_exited(self.name)
                return
            self._attach(socket)
        else:
            # In the step that completed the claim: no packet can fall between the two.
            self._attach_recovered(socket, claim, len(missed))
            if conn.closed or self.name in conn.sockets:
                # The connection went while another node handed the session over: it is this
                # node's now, so it is kept here, with what it missed (numbered, in history).
                self.services.stats.sockets += 1
                self.socket_closed(socket, reasons.TRANSPORT_CLOSE)
                return
        conn.attach(socket)
        self.services.stats.sockets += 1
        self.services.stats.socket_connects[self.family] += 1
        for frames in missed:
            conn.write(frames)  # the client handles them once it is connected, in order
        reply: dict[str, str] = {"sid": socket.sid}
        if socket.pid is not None:
            reply["pid"] = socket.pid  # echoed on recovery: the client reports recovered
        conn.send_packet(sio.Packet(sio.PacketType.CONNECT, self.name, reply))
        self.services.events.socket_connected(socket)
        handler = self.handler("connect")
        if handler is None:
            return
        try:
            result = handler(socket, auth)
            if inspect.isawaitable(result):
                await result
        except ConnectRefusedError:
            socket.disconnect()
            return
        except Exception:
            log.exception("connect handler of %s failed", self.name)
        if socket.connected and socket.membership is not None:
            self.services.adapter.journal.updated(self.name, socket.sid, socket.data)

    async def _claim(self, auth: Any) -> SessionClaim | None:
        """The persisted session a client asks to recover, claimed (None: it asks for none, or
        it cannot be recovered: the refusal is counted)."""
        if self._history is None or not isinstance(auth, dict) or "pid" not in auth:
            return None
        stats = self.services.stats
        stats.recoveries_attempted += 1
        try:
            return await self.services.adapter.restore_session(
                self.name, auth["pid"], auth.get("offset")
            )
        except RecoveryRefusedError as exc:
            stats.recoveries_refused[exc.reason] += 1
            return None

    async def _admit(
        self, conn: ClientLink, auth: dict[str, Any], claim: SessionClaim | None
    ) -> Socket | None:
        """The socket to connect, once the middleware let it through (a recovered socket skips
        it when ``skip_middlewares``); None when refused or the connection went meanwhile."""
        socket = Socket(self, conn, auth, claim.session if claim is not None else None)
        if claim is None or not self._recovery.skip_middlewares:
            try:
                for mw in self.middlewares:
                    result = mw(socket, auth)
                    if inspect.isawaitable(result):
                        await result
            except ConnectRefusedError as exc:
                self._drop_claim(claim, recovery.CONNECT_REFUSED)
                self._refuse(conn, exc)
                return None
            except Exception:
                log.exception("middleware of %s failed", self.name)
                self._drop_claim(claim, recovery.CONNECT_REFUSED)
                self._refuse(conn, ConnectRefusedError("Internal server error"))
                return None
        if conn.closed or self.name in conn.sockets:
            self._drop_claim(claim, recovery.CONNECTION_CLOSED)
            return None
        return socket

    def _drop_claim(self, claim: SessionClaim | None, reason: str) -> None:
        if claim is not None:
            claim.cancel()
            self.services.stats.recoveries_refused[reason] += 1

    def _attach(self, socket: Socket) -> None:
        """A new socket is connected (and, with recovery on, gets its pid)."""
        socket.connected = True
        if self._history is not None:
            adapter = self.services.adapter
            socket.pid = new_pid(adapter.tag)
            socket.membership = Membership(
                socket.sid, adapter.offsets.last, self.services.limits.max_rooms_per_socket
            )
            self._pids[socket.pid] = socket
            adapter.journal.connected(
                self.name, socket.sid, socket.pid, socket.data, socket.membership, self.window
            )
        self.sockets[socket.sid] = socket
        self._members[socket.sid] = socket

    def _attach_recovered(self, socket: Socket, claim: SessionClaim, replayed: int) -> None:
        """A recovered socket takes its ghost's place in its rooms (or, handed over by another
        node, joins them: its claim holds their subscriptions)."""
        sid = socket.sid
        socket.last_offset = claim.last_offset
        socket.connected = True
        self.sockets[sid] = socket
        self._members[sid] = socket
        if socket.pid is not None:
            self._pids[socket.pid] = socket
        if claim.handed_over:
            for room in socket.rooms:
                if room != sid:  # a sid names its socket through the members, not a room
                    self.registry.add(socket, Room(room))
            counts = {r: self.registry.size(r) for r in socket.rooms if r != sid}
            self.services.adapter.rooms_adopted(self.name, counts)
        else:
            self.registry.replace(self.ghosts.pop(sid), socket, socket.rooms)
        if socket.pid is not None and socket.membership is not None:
            # Connected here again (its keeper's copy is no longer a lost one's), or, handed
            # over, this node's now.
            self.services.adapter.journal.connected(
                self.name, sid, socket.pid, socket.data, socket.membership, self.window
            )
        stats = self.services.stats
        stats.recoveries_succeeded += 1
        stats.replayed_messages += replayed

    def _refuse(self, conn: ClientLink, exc: ConnectRefusedError) -> None:
        body: dict[str, Any] = {"message": exc.message}
        if exc.data is not None:
            body["data"] = exc.data
        conn.send_packet(sio.Packet(sio.PacketType.CONNECT_ERROR, self.name, body))
