"""The load generator: raw WebSocket clients speaking Engine.IO v4 / Socket.IO v5 directly.

Each worker process owns whole rooms (their publisher and every member), so a room's feedback
loop never crosses processes. The clients are :class:`asyncio.Protocol` objects on one event
loop: no per-message task, future or queue. A chunk read from a socket is split into WebSocket
frames in place; the send timestamp of a delivered ``42["m",{"t":<µs>,...}]`` is read without
a JSON parse (both servers write the compact JSON ``JSON.stringify`` writes).

What a client does with the packets it reads (deliveries, acks, CONNECT, PING) is its
:class:`Member` side, whatever carries them: :class:`Client` is the WebSocket one;
bench/polling.py adds HTTP long-polling clients, and WebSocket clients whose session was
opened by polling (a :class:`Worker` subclass picks the kind, :meth:`Worker.new_client`).

Client frames are masked with the all-zero key (RFC 6455 §5.3 only asks the key to be
unpredictable, which matters for proxies, not here), so sending costs no XOR in Python while the
server still does its usual unmasking work.

Clients may be spread over several servers (``WorkerConfig.ports``, the nodes of a cluster):
member ``i`` of room ``r`` connects to ``ports[(r + i) % len(ports)]``, so with two nodes every
room has members on both, the publishers of even rooms are on the first node and those of odd
rooms on the second, and each room's closed-loop feedback client (member 1) is on the node its
publisher is not. Deliveries to clients of another node than their publisher's are *remote*:
their latencies are also kept apart.

The worker talks to the parent over a :mod:`multiprocessing` pipe: it answers ``ready`` once all
its clients have connected and joined and one probe message per room has reached every member
(so a cluster's membership has converged), then runs each :class:`Phase` it is sent and answers
with a :class:`PhaseResult`.

Join latency (``WorkerConfig.joiner``, a worker of its own with no rooms, so that a busy
loop of room clients does not delay reading the acks): one client of no room, on the first
server, joins a fresh room name (a room with no member anywhere, so a roomcast node subscribes
to it and proves the subscription through the router before it acks) and leaves it again, one
join at a time: back to back when told ``joins`` (at idle), spread over the measured window of
a phase whose ``joins`` is set. The latency is from sending ``join`` to reading its ack.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import gc
import hashlib
import json
import os
import resource
import struct
import time
from array import array
from collections.abc import Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ZERO_MASK = b"\x00\x00\x00\x00"
OP_CONT, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA

MESSAGE_PREFIX = b'42["m",{"t":'  # what a delivered relay message starts with
_PREFIX_LEN = len(MESSAGE_PREFIX)


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked (zero key) client-to-server WebSocket frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + ZERO_MASK + payload


CONNECT_FRAME = client_frame(b"40")  # Socket.IO CONNECT to "/"
PROBE_FRAME = client_frame(b"2probe")  # Engine.IO PING probe (§Upgrade)
UPGRADE_FRAME = client_frame(b"5")  # Engine.IO UPGRADE


def now_us() -> int:
    """Microseconds on the system-wide monotonic clock (comparable across processes)."""
    return time.monotonic_ns() // 1000


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker process runs: its rooms (by index) and where to connect."""

    host: str
    ports: tuple[int, ...]  #: the servers; room members are spread over them in turn
    rooms: list[int]
    members: int  #: clients per room, the publisher included
    payload: int  #: filler characters in each message's data
    spread: int = 0  #: how many of the servers each room has members on; 0: all of them
    joiner: bool = False  #: also run a client measuring join latency, on ``ports[0]``
    connect_concurrency: int = 50
    connect_timeout: float = 30.0
    probe_timeout: float = 30.0

    def port_of(self, room: int, member: int) -> int:
        """Where member ``member`` of room ``room`` connects (member 0 publishes): the members
        of room ``r`` alternate over ``spread`` consecutive servers from server ``r``."""
        n = len(self.ports)
        spread = self.spread or n
        return self.ports[(room + member % spread) % n]


@dataclass(frozen=True)
class Phase:
    """One measured run. Times are :func:`now_us` values shared by every process."""

    mode: str  #: "max" (closed loop, ``window`` in flight per room) or "rate"
    rate: float  #: messages per second per room, for "rate"
    window: int  #: messages in flight per room, for "max"
    start: int  #: publishing starts (warmup)
    t0: int  #: measurement starts
    t1: int  #: measurement and publishing end
    drain: float  #: seconds to wait after t1 for messages still in flight
    joins: int = 0  #: join-latency samples spread over [t0, t1) (by the worker's joiner)
    #: Where polling clients send their requests from ``start`` on (bench/polling.py):
    #: "balanced" (round-robin over the nodes), else "pinned" (to their session's node).
    route: str = ""


@dataclass
class PhaseResult:
    """What one worker saw during a phase."""

    published: int = 0  #: publishes sent in [t0, t1)
    expected: int = 0  #: deliveries those publishes should cause
    received_in_window: int = 0  #: deliveries received in [t0, t1), whenever sent
    latencies: array[int] = field(default_factory=lambda: array("q"))  #: µs, sent in [t0, t1)
    remote_latencies: array[int] = field(default_factory=lambda: array("q"))  #: also in latencies
    cpu_seconds: float = 0.0  #: this worker's CPU time in [t0, t1)
    closed_clients: int = 0
    join_latencies: array[int] = field(default_factory=lambda: array("q"))  #: µs, joiner only
    errors: list[str] = field(default_factory=list)
    requests: int = 0  #: HTTP requests sent in [t0, t1) (polling clients only)


class Recorder:
    """The measurement state shared by every client of a worker (one per phase)."""

    __slots__ = ("latencies", "received_in_window", "remote_latencies", "t0", "t1")

    def __init__(self, t0: int = 0, t1: int = 0) -> None:
        self.t0 = t0
        self.t1 = t1
        self.received_in_window = 0
        self.latencies: array[int] = array("q")  #: deliveries on the publisher's server
        self.remote_latencies: array[int] = array("q")  #: deliveries on another server

    @property
    def count(self) -> int:
        """Latencies recorded, local and remote."""
        return len(self.latencies) + len(self.remote_latencies)


class ProtocolFailure(Exception):
    """The server did something a client did not expect (handshake, join, close)."""


class Room:
    """One room of the scenario: a publisher, its members and the publishing state."""

    __slots__ = (
        "active",
        "clients",
        "index",
        "name",
        "prefix",
        "published_in_window",
        "recorder",
        "suffix",
    )

    def __init__(self, index: int, payload: int) -> None:
        self.index = index
        self.name = f"room-{index}"
        self.clients: list[Member] = []
        body = json.dumps({"room": self.name, "event": "m"}, separators=(",", ":"))
        self.prefix = f'42["publish",{body[:-1]},"data":{{"t":'.encode()
        self.suffix = f',"p":"{"x" * payload}"}}}}]'.encode()
        self.active = False
        self.published_in_window = 0
        self.recorder = Recorder()

    def publish(self, t: int) -> None:
        """Send one ``publish`` (no ack asked) stamped ``t``."""
        if not self.clients[0].send_text(self.prefix + str(t).encode() + self.suffix):
            return
        rec = self.recorder
        if rec.t0 <= t < rec.t1:
            self.published_in_window += 1

    def delivered(self) -> None:
        """The room's feedback client got a message: in closed loop, send the next one."""
        if self.active:
            t = now_us()
            if t < self.recorder.t1:
                self.publish(t)
            else:
                self.active = False


class Member(abc.ABC):
    """One client, whatever carries its packets: its Engine.IO session and Socket.IO socket on
    "/", member of one room (or of none: ``room`` None, an idle client or the joiner). A
    transport (:class:`Client`, a WebSocket; :class:`bench.polling.PollingClient`, HTTP
    long-polling) opens it and sends its packets; what it reads is handled here."""

    def __init__(self, host: str, port: int, room: Room | None, remote: bool = False) -> None:
        self.host = host
        self.port = port
        self.room = room
        self.remote = remote  #: on another server than the room's publisher
        self.feedback: Room | None = None  #: set on the room's closed-loop feedback client
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._next_ack = 1
        self.acked_at = 0  #: when the last ack's packet was read (:func:`now_us`)
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[str] = loop.create_future()
        self.closed = False

    @abc.abstractmethod
    def send_text(self, payload: bytes) -> bool:
        """Send one Engine.IO text packet; False when the session cannot send any more."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the session and connect to "/" (returns on the Socket.IO CONNECT ack)."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the session (at the end of the run)."""

    def _deliver(self, payload: bytes, now: int) -> None:
        """A relayed message (the hot path): record its latency, drive the closed loop."""
        if self.room is None:
            return
        t = int(payload[_PREFIX_LEN : payload.index(b",", _PREFIX_LEN)])
        rec = self.room.recorder
        if rec.t0 <= t < rec.t1:
            (rec.remote_latencies if self.remote else rec.latencies).append(now - t)
        if rec.t0 <= now < rec.t1:
            rec.received_in_window += 1
        if self.feedback is not None:
            self.feedback.delivered()

    def _on_text(self, payload: bytes, now: int) -> None:
        """Any other packet the server sent (cold)."""
        if payload.startswith(MESSAGE_PREFIX):  # reassembled from fragments
            self._deliver(payload, now)
        elif payload == b"2":  # Engine.IO PING
            self.send_text(b"3")
        elif payload.startswith(b"43"):  # Socket.IO ACK on "/"
            self.acked_at = now
            bracket = payload.index(b"[")
            future = self._acks.pop(int(payload[2:bracket]), None)
            if future is not None and not future.done():
                args = json.loads(payload[bracket:])
                future.set_result(args[0] if args else None)
        elif payload.startswith(b"40"):  # Socket.IO CONNECT
            if not self.connected.done():
                self.connected.set_result(json.loads(payload[2:])["sid"])
        elif payload.startswith(b"0"):  # Engine.IO OPEN
            self._on_open(payload)
        elif payload.startswith((b"44", b"41", b"1")):  # CONNECT_ERROR, DISCONNECT, CLOSE
            self._fail(ProtocolFailure(f"server said {payload[:200]!r}"))
        # NOOP (6) and anything else: nothing to do

    def _on_open(self, payload: bytes) -> None:
        """The Engine.IO OPEN packet: connect to "/"."""
        self.send_text(b"40")

    def _fail(self, exc: Exception) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc)
        for future in self._acks.values():
            if not future.done():
                future.set_exception(exc)
        self._acks.clear()

    async def emit_with_ack(self, event: str, *args: Any) -> Any:
        """``42<id>[event, ...args]``; returns the first argument of the ack."""
        ack_id = self._next_ack
        self._next_ack += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        body = json.dumps([event, *args], separators=(",", ":"))
        if not self.send_text(f"42{ack_id}{body}".encode()):
            self._acks.pop(ack_id, None)
            raise ProtocolFailure(f"{event}: the session is closed")
        return await future


class Client(Member, asyncio.Protocol):
    """A WebSocket client. With a ``sid`` (a session opened by polling), its handshake upgrades
    that session (Engine.IO §Upgrade: ``2probe``, ``3probe``, ``5``) instead of opening one."""

    def __init__(
        self,
        host: str,
        port: int,
        room: Room | None,
        remote: bool = False,
        sid: str | None = None,
    ) -> None:
        super().__init__(host, port, room, remote)
        self.sid = sid
        self.transport: asyncio.Transport | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._upgraded = False
        self._buf = b""
        self._fragments: list[bytes] = []

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.host, self.port)
        await self.connected

    def send_text(self, payload: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(client_frame(payload))
        return True

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        query = "" if self.sid is None else f"&sid={self.sid}"
        transport.write(
            f"GET /socket.io/?EIO=4&transport=websocket{query} HTTP/1.1\r\n".encode()
            + f"Host: {self.host}:{self.port}\r\n".encode()
            + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            + b"Sec-WebSocket-Key: "
            + self._key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ProtocolFailure(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if not self._upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buf = data
                return
            self._check_upgrade(data[:end])
            data = data[end + 4 :]
        # Split the chunk into frames; one clock reading per chunk.
        now = now_us()
        pos = 0
        size = len(data)
        while size - pos >= 2:
            b0 = data[pos]
            n = data[pos + 1]
            if n & 0x80:
                self._protocol_error("masked server frame")
                return
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + n
            if end > size:
                break
            payload = data[pos + head : end]
            pos = end
            if b0 == 0x81 and payload.startswith(MESSAGE_PREFIX):
                self._deliver(payload, now)  # the hot path: a relayed message, one frame
            else:
                self._on_frame(b0, payload, now)
        if pos < size:
            self._buf = data[pos:]

    # -- the rest of the protocol (cold) ------------------------------------------------------

    def _check_upgrade(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 101"):
            self._protocol_error(f"upgrade refused: {lines[0]!r}")
            return
        expected = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest())
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])
        }
        if headers.get(b"sec-websocket-accept") != expected:
            self._protocol_error("bad Sec-WebSocket-Accept")
            return
        self._upgraded = True
        if self.sid is not None:
            self._write(PROBE_FRAME)

    def _on_frame(self, b0: int, payload: bytes, now: int) -> None:
        opcode = b0 & 0x0F
        if opcode in (OP_TEXT, OP_CONT):
            if not b0 & 0x80:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments.clear()
            self._on_text(payload, now)
        elif opcode == OP_PING:
            self._write(client_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self._write(client_frame(payload[:2], OP_CLOSE))
            self._fail(ProtocolFailure(f"server closed the WebSocket: {payload[2:]!r}"))
            if self.transport is not None:
                self.transport.close()
        # binary frames and pongs are not part of this scenario

    def _on_text(self, payload: bytes, now: int) -> None:
        if payload == b"3probe":  # the upgrade's probe answered: complete it, then connect
            self._write(UPGRADE_FRAME + CONNECT_FRAME)
        else:
            super()._on_text(payload, now)

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def _protocol_error(self, message: str) -> None:
        self._fail(ProtocolFailure(message))
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(struct.pack("!H", 1000), OP_CLOSE))
            self.transport.close()


async def connect_and_join(client: Member, timeout: float) -> None:
    """Open the session, connect to "/", join the client's room and check the ack."""
    assert client.room is not None
    async with asyncio.timeout(timeout):
        await client.open()
        ack = await client.emit_with_ack("join", client.room.name)
    if not isinstance(ack, dict) or ack.get("ok") is not True:
        raise ProtocolFailure(f"join {client.room.name} refused: {ack!r}")


class Worker:
    """The clients of one worker process and the phases it runs."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.rooms = [Room(i, cfg.payload) for i in cfg.rooms]
        self.clients: list[Member] = []
        self.joiner: Client | None = None
        self._fresh = 0  #: fresh room names used by the joiner so far
        self._leaving: list[asyncio.Task[None]] = []  #: the joiner's leaves since last checked

    def new_client(self, port: int, room: Room, remote: bool) -> Member:
        """A member of ``room`` whose session is on the server at ``port`` (a WebSocket; a
        subclass makes other kinds)."""
        return Client(self.cfg.host, port, room, remote)

    async def connect(self) -> None:
        """Open every client and join it to its room (and the joiner, if any)."""
        cfg = self.cfg
        if cfg.joiner:
            self.joiner = Client(cfg.host, cfg.ports[0], None)
            async with asyncio.timeout(cfg.connect_timeout):
                await self.joiner.open()
        for room in self.rooms:
            home = cfg.port_of(room.index, 0)
            for i in range(cfg.members):
                port = cfg.port_of(room.index, i)
                room.clients.append(self.new_client(port, room, remote=port != home))
            self.clients.extend(room.clients)
        gate = asyncio.Semaphore(cfg.connect_concurrency)

        async def one(client: Member) -> None:
            async with gate:
                await connect_and_join(client, cfg.connect_timeout)

        async with asyncio.TaskGroup() as group:
            for client in self.clients:
                group.create_task(one(client))

    async def probe(self) -> None:
        """Every publisher sends one message; wait until every other member of its room, local
        and remote, got it (a cluster's membership has converged), else raise."""
        stamp = 1  # below any phase's t0: never counted in a phase
        for room in self.rooms:
            room.recorder = Recorder(stamp, stamp + 1)
            room.publish(stamp)
        deadline = time.monotonic() + self.cfg.probe_timeout
        pending = list(self.rooms)
        while True:
            pending = [room for room in pending if room.recorder.count < self.cfg.members - 1]
            if not pending:
                break
            if time.monotonic() > deadline:
                room = pending[0]
                raise ProtocolFailure(
                    f"{len(pending)} rooms did not get their probe message to every member in "
                    f"{self.cfg.probe_timeout:g}s ({room.name}: {room.recorder.count} of "
                    f"{self.cfg.members - 1})"
                )
            await asyncio.sleep(0.01)
        for room in self.rooms:
            remote = sum(1 for client in room.clients if client.remote)
            if len(room.recorder.remote_latencies) != remote:
                raise ProtocolFailure(
                    f"{room.name}: the probe reached {len(room.recorder.remote_latencies)} "
                    f"remote members of {remote}"
                )
            room.recorder = Recorder()

    async def run_phase(self, phase: Phase) -> PhaseResult:
        recorder = Recorder(phase.t0, phase.t1)
        # In closed loop, member 1 of each room (the publisher never receives its own messages)
        # lets the publisher send the next message on every delivery: ``window`` stay in flight.
        for room in self.rooms:
            room.recorder = recorder
            room.published_in_window = 0
            room.active = False
            for i, client in enumerate(room.clients):
                client.feedback = room if phase.mode == "max" and i == 1 else None
        result = PhaseResult()
        joining = None
        if self.joiner is not None and phase.joins > 0:
            joining = asyncio.create_task(self._joins_during(phase, result))
        await sleep_until(phase.start)
        if phase.mode == "max":
            for room in self.rooms:
                room.active = True
                for _ in range(phase.window):
                    room.publish(now_us())
            await sleep_until(phase.t0)
            cpu0 = time.process_time()
            await sleep_until(phase.t1)
            result.cpu_seconds = time.process_time() - cpu0
            for room in self.rooms:
                room.active = False
        else:
            result.cpu_seconds = await self._publish_at_rate(phase)
        members = self.cfg.members - 1
        result.published = sum(room.published_in_window for room in self.rooms)
        result.expected = result.published * members
        deadline = phase.t1 + int(phase.drain * 1e6)
        while recorder.count < result.expected and now_us() < deadline:
            await asyncio.sleep(0.02)
        result.latencies = recorder.latencies + recorder.remote_latencies
        result.remote_latencies = recorder.remote_latencies
        result.received_in_window = recorder.received_in_window
        result.closed_clients = sum(1 for client in self.clients if client.closed)
        if joining is not None:
            await joining
        return result

    async def _publish_at_rate(self, phase: Phase) -> float:
        """Open loop: each room publishes ``rate`` messages per second, phases spread out.
        Returns the worker's CPU seconds in [t0, t1)."""
        if not self.rooms:  # the joiner's worker: nothing to publish
            await sleep_until(phase.t1)
            return 0.0
        period = 1e6 / phase.rate
        n = len(self.rooms)
        due = [phase.start + period * k / n for k in range(n)]
        cpu0: float | None = None
        cpu = 0.0
        while True:
            now = now_us()
            if cpu0 is None and now >= phase.t0:
                cpu0 = time.process_time()
            if now >= phase.t1:
                break
            for k, room in enumerate(self.rooms):
                while due[k] <= now:
                    room.publish(now)
                    due[k] += period
            await asyncio.sleep(0.001)
        if cpu0 is not None:
            cpu = time.process_time() - cpu0
        return cpu

    async def join_once(self) -> int:
        """The joiner joins a room nobody is in and leaves it again; returns the join's µs
        (from sending ``join`` to reading its ack)."""
        joiner = self.joiner
        assert joiner is not None
        # Unique across workers and runs: the room cannot have a member anywhere.
        name = f"fresh-{os.getpid()}-{self._fresh}"
        self._fresh += 1
        async with asyncio.timeout(10):
            began = now_us()
            ack = await joiner.emit_with_ack("join", name)
            # When the ack was read, not when this task resumed after the loop pass.
            elapsed = joiner.acked_at - began
        if not isinstance(ack, dict) or ack.get("ok") is not True:
            raise ProtocolFailure(f"join {name} refused: {ack!r}")
        # Leave at once, so that rooms (and subscriptions) do not pile up; its ack is checked
        # later (:meth:`left`), so that the next join's latency is not held up by it.
        self._leaving.append(asyncio.create_task(self._leave(name)))
        return elapsed

    async def _leave(self, name: str) -> None:
        assert self.joiner is not None
        async with asyncio.timeout(10):
            ack = await self.joiner.emit_with_ack("leave", name)
        if not isinstance(ack, dict) or ack.get("ok") is not True:
            raise ProtocolFailure(f"leave {name} refused: {ack!r}")

    async def left(self) -> list[str]:
        """Wait for the joiner's pending leaves; what went wrong with them."""
        errors = []
        tasks, self._leaving = self._leaving, []
        for task in tasks:
            try:
                await task
            except (ProtocolFailure, TimeoutError) as exc:
                errors.append(f"joiner: {exc!r}")
        return errors[:1]  # the first says enough

    async def joins(self, count: int, budget: float = 60.0) -> tuple[array[int], list[str]]:
        """``count`` join latencies (µs), one join after the other (fewer if they take more
        than ``budget`` seconds), and what ended them early; none without a joiner."""
        out: array[int] = array("q")
        if self.joiner is None:
            return out, []
        deadline = time.monotonic() + budget
        errors = []
        try:
            for _ in range(count):
                if time.monotonic() > deadline:
                    errors.append(f"joiner: only {len(out)} joins in {budget:g}s")
                    break
                out.append(await self.join_once())
        except (ProtocolFailure, TimeoutError) as exc:
            errors.append(f"joiner: {exc!r}")
        return out, errors + await self.left()

    async def _joins_during(self, phase: Phase, result: PhaseResult) -> None:
        """``phase.joins`` joins started at even intervals over [t0, t1) (one at a time: a
        slow join delays the next), into ``result``; a failure ends them, and is reported."""
        step = (phase.t1 - phase.t0) / phase.joins
        try:
            for k in range(phase.joins):
                await sleep_until(phase.t0 + int(k * step))
                if now_us() >= phase.t1:
                    break
                result.join_latencies.append(await self.join_once())
        except (ProtocolFailure, TimeoutError) as exc:
            result.errors.append(f"joiner: {exc!r}")
        result.errors += await self.left()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.joiner is not None:
            self.joiner.close()


async def sleep_until(t: int) -> None:
    delay = (t - now_us()) / 1e6
    if delay > 0:
        await asyncio.sleep(delay)


async def serve(conn: Connection, worker: Worker) -> None:
    """Connect, join, probe, say ``ready``, then run phases until told to ``quit``."""
    loop = asyncio.get_running_loop()
    try:
        await worker.connect()
    except Exception as exc:
        errors = exc.exceptions if isinstance(exc, ExceptionGroup) else [exc]
        conn.send(("error", f"{len(errors)} clients failed to join: {errors[0]!r}"))
        worker.close()
        return
    joined = time.monotonic()
    try:
        await worker.probe()
    except ProtocolFailure as exc:
        conn.send(("error", str(exc)))
        worker.close()
        return
    gc.freeze()  # the clients live as long as the worker: keep them out of collections
    conn.send(("ready", (len(worker.clients), time.monotonic() - joined)))
    try:
        while True:
            command, arg = await loop.run_in_executor(None, conn.recv)
            if command == "quit":
                break
            if command == "phase":
                conn.send(("result", await worker.run_phase(arg)))
            elif command == "joins":
                conn.send(("joins", await worker.joins(arg)))
    finally:
        worker.close()
        await asyncio.sleep(0.05)  # let close frames go out


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit (every client is a
    file descriptor); returns the (soft, hard) limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft, hard


def run_worker(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed; a parent that went away ends it quietly."""
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt, EOFError, BrokenPipeError):
        run(main)


def worker_main(conn: Connection, cfg: WorkerConfig) -> None:
    """The entry point of a worker process."""
    run_worker(serve(conn, Worker(cfg)))
