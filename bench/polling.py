"""The load generator's HTTP long-polling clients, and its WebSocket clients whose session is
opened by polling first: the clients of the balancer scenario (bench/balancer.py).

:class:`PollingClient` speaks Engine.IO v4 over HTTP long-polling only (no upgrade), on two
keep-alive HTTP/1.1 connections of its own, each an :class:`asyncio.Protocol` (:class:`Lane`)
carrying one request at a time: one always has a GET pending (the long-poll: its answer is
read, the next GET sent at once), the other carries the POSTs (one at a time, as the protocol
asks; packets sent while one is in flight go in the next, separated by ``\\x1e``). Requests are
written whole as bytes; a response is split from its head by ``Content-Length`` (aiohttp and
HAProxy always send one for these answers; a response without one fails the client). A
delivered message is recorded as :class:`bench.loadgen.Client` records it (the same
:class:`~bench.loadgen.Member` code), with one clock reading per response.

Where its requests go is its *route*, set per phase (:attr:`bench.loadgen.Phase.route`):

* ``pinned``: the HAProxy frontend that sends every request to the node of the member
  (:attr:`PollingConfig.ports`, one frontend per node, in node order): what sticky sessions
  give;
* ``balanced``: HAProxy's round-robin frontend (:attr:`PollingConfig.balanced_port`), each
  request on its own, so a request reaches the node of its session 1 time in N and is
  forwarded there otherwise.

The handshake always goes to the pinned frontend of the member's node
(:meth:`~bench.loadgen.WorkerConfig.port_of`), whatever the route: sessions are placed as in
the cluster scenario, the same in both routes. A route change takes effect at each
connection's next request (on a new connection).

:class:`UpgradingClient` is a WebSocket :class:`~bench.loadgen.Client` whose session is opened
by a polling handshake on its member's node, then upgraded (``2probe``, ``3probe``, ``5``) on a
WebSocket to that node (``direct``) or to the next one (:attr:`UpgradeConfig.spliced`: that
node splices the connection to the session's node).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import cast

from bench.loadgen import (
    MESSAGE_PREFIX,
    Client,
    Member,
    Phase,
    PhaseResult,
    ProtocolFailure,
    Room,
    Worker,
    WorkerConfig,
    now_us,
    run_worker,
    serve,
    sleep_until,
)

ENGINE_PATH = b"/socket.io/?EIO=4&transport=polling"
SEPARATOR = b"\x1e"  # Engine.IO's record separator between the packets of a payload


@dataclass(frozen=True)
class PollingConfig(WorkerConfig):
    """A worker of polling clients: ``ports`` are HAProxy's pinned frontends, one per node."""

    balanced_port: int = 0  #: HAProxy's round-robin frontend


@dataclass(frozen=True)
class UpgradeConfig(WorkerConfig):
    """A worker of WebSocket clients that open their session by polling on their member's
    node (``ports``: the nodes themselves)."""

    spliced: bool = False  #: the WebSocket goes to the next node, which splices it


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """The status, ``Content-Length`` and whether the server closes the connection, of a
    response head (its status line and headers, without the blank line)."""
    if not head.startswith(b"HTTP/1.1 "):
        raise ProtocolFailure(f"not an HTTP/1.1 response: {head[:80]!r}")
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ProtocolFailure(f"response without Content-Length: {head[:200]!r}")
    end = lower.find(b"\r\n", at + 17)
    length = int(lower[at + 17 : end if end >= 0 else len(lower)])
    return int(head[9:12]), length, b"\r\nconnection: close" in lower


class Lane(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to ``port``, one request at a time: each response's
    status and body go to ``on_response``; the loss of the connection with a request pending,
    to ``on_lost`` (lost while idle, the lane is just ``dead``: its owner opens another)."""

    __slots__ = (
        "_buf",
        "_close_after",
        "_length",
        "_pending",
        "_status",
        "busy",
        "dead",
        "on_lost",
        "on_response",
        "port",
        "transport",
    )

    def __init__(
        self,
        port: int,
        on_response: Callable[[int, bytes], None],
        on_lost: Callable[[Exception], None],
    ) -> None:
        self.port = port
        self.on_response = on_response
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.busy = False  #: a request was sent and its response is not read yet
        self.dead = False  #: closed: no more requests
        self._pending = b""  #: a request written before the connection was made
        self._buf = b""
        self._status = -1  #: the status of the response being read (-1: reading a head)
        self._length = 0
        self._close_after = False

    def request(self, data: bytes) -> None:
        """Send one request (the previous one must have been answered)."""
        self.busy = True
        if self.transport is None:
            self._pending = data
        else:
            self.transport.write(data)

    def close(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.dead:
            self.transport.close()
        elif self._pending:
            self.transport.write(self._pending)
            self._pending = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.transport = None
        if self.busy:
            self.busy = False
            self.on_lost(ProtocolFailure(f"connection to port {self.port} lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self._status < 0:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buf = data
                return
            try:
                self._status, self._length, self._close_after = parse_head(data[:end])
            except (ProtocolFailure, ValueError) as exc:
                self._fail(exc)
                return
            data = data[end + 4 :]
        if len(data) < self._length:
            self._buf = data
            return
        if len(data) > self._length or not self.busy:
            self._fail(ProtocolFailure(f"bytes past the response: {data[self._length :][:80]!r}"))
            return
        status = self._status
        self._status = -1
        self.busy = False
        if self._close_after:
            self.close()
        self.on_response(status, data)

    def _fail(self, exc: Exception) -> None:
        self.busy = False
        self.close()
        self.on_lost(exc)


#: Connections being opened (a task must be referenced until it is done).
_opening: set[asyncio.Task[None]] = set()


class PollingClient(Member):
    """An Engine.IO session on HTTP long-polling only (see the module's docstring)."""

    def __init__(
        self, host: str, port: int, room: Room | None, remote: bool, balanced_port: int
    ) -> None:
        super().__init__(host, port, room, remote)
        self.home = port  #: the pinned frontend of the member's node
        self.balanced_port = balanced_port
        self.requests = 0  #: HTTP requests sent so far
        self._host_line = f"Host: {host}\r\n".encode()
        self._get_request = b""  #: the long-poll GET, once the sid is known
        self._post_head = b""  #: a POST's head up to its Content-Length value
        self._get_lane: Lane | None = None
        self._post_lane: Lane | None = None
        self._outgoing: list[bytes] = []  #: packets for the next POST
        self._posting = False

    def route(self, balanced: bool) -> None:
        """Send the next requests to the round-robin frontend, or to the member's node."""
        self.port = self.balanced_port if balanced else self.home

    async def open(self) -> None:
        self._get(b"GET " + ENGINE_PATH + b" HTTP/1.1\r\n" + self._host_line + b"\r\n")
        await self.connected

    def send_text(self, payload: bytes) -> bool:
        if self.closed or not self._post_head:
            return False
        self._outgoing.append(payload)
        if not self._posting:
            self._post()
        return True

    def close(self) -> None:
        """Close both connections, and POST a CLOSE packet on a connection of its own: the
        server ends the session at once, whatever a proxy in between does with a pending GET
        whose client went away (else the session could outlive the run by a ping timeout,
        and the next clients' rooms would not show the members expected)."""
        if self.closed:
            return
        self.closed = True
        for lane in (self._get_lane, self._post_lane):
            if lane is not None:
                lane.close()
        if self._post_head:
            bye = self._lane(None, lambda status, body: bye.close())
            bye.request(self._post_head + b"1\r\n\r\n1")

    # -- the two lanes ------------------------------------------------------------------------

    def _lane(self, lane: Lane | None, on_response: Callable[[int, bytes], None]) -> Lane:
        """``lane``, or a new connection to the current route if it is gone or elsewhere."""
        if lane is not None and not lane.dead and lane.port == self.port:
            return lane
        if lane is not None:
            lane.close()
        lane = Lane(self.port, on_response, self._lost)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect(loop, lane))
        _opening.add(task)
        task.add_done_callback(_opening.discard)
        return lane

    async def _connect(self, loop: asyncio.AbstractEventLoop, lane: Lane) -> None:
        try:
            await loop.create_connection(lambda: lane, self.host, lane.port)
        except OSError as exc:
            lane.dead = True
            self._lost(exc)

    def _get(self, request: bytes) -> None:
        self._get_lane = lane = self._lane(self._get_lane, self._on_get)
        self.requests += 1
        lane.request(request)

    def _post(self) -> None:
        out = self._outgoing
        body = out[0] if len(out) == 1 else SEPARATOR.join(out)
        self._outgoing = []
        self._posting = True
        self._post_lane = lane = self._lane(self._post_lane, self._on_post)
        self.requests += 1
        lane.request(self._post_head + str(len(body)).encode() + b"\r\n\r\n" + body)

    def _on_get(self, status: int, body: bytes) -> None:
        if status != 200:
            self._fail(ProtocolFailure(f"GET answered {status}: {body[:200]!r}"))
            return
        now = now_us()
        for packet in body.split(SEPARATOR):
            if packet.startswith(MESSAGE_PREFIX):
                self._deliver(packet, now)  # the hot path
            else:
                self._on_text(packet, now)
        if not self.closed:
            self._get(self._get_request)

    def _on_post(self, status: int, body: bytes) -> None:
        if status != 200:
            self._fail(ProtocolFailure(f"POST answered {status}: {body[:200]!r}"))
            return
        self._posting = False
        if self._outgoing and not self.closed:
            self._post()

    def _lost(self, exc: Exception) -> None:
        if not self.closed:
            self._fail(exc)

    # -- Member -------------------------------------------------------------------------------

    def _on_open(self, payload: bytes) -> None:
        sid = json.loads(payload[1:])["sid"]
        path = ENGINE_PATH + b"&sid=" + sid.encode()
        self._get_request = b"GET " + path + b" HTTP/1.1\r\n" + self._host_line + b"\r\n"
        self._post_head = (
            b"POST "
            + path
            + b" HTTP/1.1\r\n"
            + self._host_line
            + b"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: "
        )
        self.send_text(b"40")  # the GET loop goes on in _on_get

    def _fail(self, exc: Exception) -> None:
        super()._fail(exc)
        if not self.closed:
            self.closed = True
            for lane in (self._get_lane, self._post_lane):
                if lane is not None:
                    lane.close()


async def polling_handshake(host: str, port: int, timeout: float = 10.0) -> str:
    """Open an Engine.IO session by polling (one GET, on a connection of its own); its sid."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                b"GET " + ENGINE_PATH + b" HTTP/1.1\r\n"
                b"Host: " + host.encode() + b"\r\nConnection: close\r\n\r\n"
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, _ = parse_head(head[:-4])
            body = await reader.readexactly(length)
        finally:
            writer.close()
    packet = body.split(SEPARATOR)[0]
    if status != 200 or not packet.startswith(b"0{"):
        raise ProtocolFailure(f"polling handshake answered {status}: {body[:200]!r}")
    sid: str = json.loads(packet[1:])["sid"]
    return sid


class UpgradingClient(Client):
    """A WebSocket client whose session is opened by a polling handshake on ``handshake_port``
    and upgraded on a WebSocket to ``port`` (see the module's docstring)."""

    def __init__(
        self, host: str, handshake_port: int, port: int, room: Room | None, remote: bool
    ) -> None:
        super().__init__(host, port, room, remote)
        self.handshake_port = handshake_port

    async def open(self) -> None:
        self.sid = await polling_handshake(self.host, self.handshake_port)
        await super().open()


class PollingWorker(Worker):
    """A worker of :class:`PollingClient` members; each phase sets their route."""

    def __init__(self, cfg: PollingConfig) -> None:
        super().__init__(cfg)
        self.balanced_port = cfg.balanced_port
        self.polling: list[PollingClient] = []

    def new_client(self, port: int, room: Room, remote: bool) -> Member:
        client = PollingClient(self.cfg.host, port, room, remote, self.balanced_port)
        self.polling.append(client)
        return client

    async def run_phase(self, phase: Phase) -> PhaseResult:
        balanced = phase.route == "balanced"
        for client in self.polling:
            client.route(balanced)
        counting = asyncio.create_task(self._count_requests(phase))
        result = await super().run_phase(phase)
        result.requests = await counting
        return result

    async def _count_requests(self, phase: Phase) -> int:
        """The requests the clients sent in [t0, t1)."""
        await sleep_until(phase.t0)
        before = sum(client.requests for client in self.polling)
        await sleep_until(phase.t1)
        return sum(client.requests for client in self.polling) - before


class UpgradingWorker(Worker):
    """A worker of :class:`UpgradingClient` members, direct or spliced."""

    def __init__(self, cfg: UpgradeConfig) -> None:
        super().__init__(cfg)
        self.spliced = cfg.spliced

    def new_client(self, port: int, room: Room, remote: bool) -> Member:
        ports = self.cfg.ports
        ws_port = ports[(ports.index(port) + 1) % len(ports)] if self.spliced else port
        return UpgradingClient(self.cfg.host, port, ws_port, room, remote)


def polling_main(conn: Connection, cfg: PollingConfig) -> None:
    """The entry point of a worker process of polling clients."""
    run_worker(serve(conn, PollingWorker(cfg)))


def upgrading_main(conn: Connection, cfg: UpgradeConfig) -> None:
    """The entry point of a worker process of WebSocket clients opened by polling."""
    run_worker(serve(conn, UpgradingWorker(cfg)))
