"""roomcast driven by the official Node ``socket.io-client@4`` (tests/js/driver.mjs).

One Node process serves the run; each test opens a session with it (a TCP connection) that hosts
every client of the test, takes JSON-line commands and reports what the clients see as JSON
lines (binary as ``{"$bin": base64}``). Tests wait for those reports, never for time.

"Nobody else got it" is checked behind a *barrier*: a namespace-wide marker emitted after the
message under test; delivery on one connection is ordered, so once a client has the marker it
has everything that was sent to it before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import select
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from roomcast.errors import AckTimeoutError, ConnectRefusedError, DisconnectedError
from roomcast.node.engine import Connection
from roomcast.node.relay import sign_hs256
from roomcast.node.server import Server
from roomcast.node.sockets import Namespace, Socket

JS_DIR = Path(__file__).parent / "js"
DRIVER = JS_DIR / "driver.mjs"

pytestmark = [
    pytest.mark.js,
    pytest.mark.skipif(
        shutil.which("node") is None or not (JS_DIR / "node_modules" / "socket.io-client").is_dir(),
        reason="needs node on PATH and `npm ci` in tests/js",
    ),
]

#: Client options per transport mode; "upgrade" is the client's default (polling, then WS).
TRANSPORTS: dict[str, dict[str, Any]] = {
    "websocket": {"transports": ["websocket"]},
    "polling": {"transports": ["polling"]},
    "upgrade": {},
}

Event = dict[str, Any]


# --- the driver ------------------------------------------------------------------------------


def to_js(value: Any) -> Any:
    """JSON-able form of ``value`` with bytes as ``{"$bin": base64}``."""
    if isinstance(value, bytes | bytearray):
        return {"$bin": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list | tuple):
        return [to_js(v) for v in value]
    if isinstance(value, dict):
        return {k: to_js(v) for k, v in value.items()}
    return value


def from_js(value: Any) -> Any:
    """The inverse of :func:`to_js`."""
    if isinstance(value, list):
        return [from_js(v) for v in value]
    if isinstance(value, dict):
        if value.keys() == {"$bin"}:
            return base64.b64decode(value["$bin"])
        return {k: from_js(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class DriverProcess:
    """The Node process shared by the whole run: where it listens, where its stderr goes."""

    port: int
    stderr: Path


class Driver:
    """One test's session with the driver process: any number of clients, their reports."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stderr: Path
    ) -> None:
        self.events: list[Event] = []
        self._writer = writer
        self._stderr = stderr
        self._cond = asyncio.Condition()
        self._exited = False
        self._refs = itertools.count()
        self._reader = asyncio.create_task(self._read(reader))

    @classmethod
    async def open(cls, process: DriverProcess) -> Driver:
        """Open a session (a TCP connection) with the driver process."""
        # A line carries whole payloads: raise the line-length limit.
        reader, writer = await asyncio.open_connection("127.0.0.1", process.port, limit=2**24)
        driver = cls(reader, writer, process.stderr)
        await driver.wait_for(lambda e: e["type"] == "ready", "session ready")
        return driver

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                event = from_js(json.loads(line))
                async with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        finally:
            async with self._cond:
                self._exited = True
                self._cond.notify_all()

    def send(self, **cmd: Any) -> None:
        """Write one command (commands run in the order they are sent)."""
        self._writer.write((json.dumps(to_js(cmd)) + "\n").encode())

    def ref(self) -> int:
        """A fresh reference matching a command to its answer."""
        return next(self._refs)

    async def wait_for(
        self, predicate: Callable[[Event], bool], what: str, timeout: float = 5.0
    ) -> Event:
        """The first report (from the start) matching ``predicate``, waiting for it if needed.

        A driver error or exit fails at once instead of waiting for the timeout.
        """

        found: list[Event] = []

        def find() -> bool:
            for event in self.events:
                if event["type"] == "error":
                    raise AssertionError(f"driver error: {event['message']}")
                if predicate(event):
                    found.append(event)
                    return True
            if self._exited:
                raise AssertionError(f"driver went away while waiting for {what}{self._context()}")
            return False

        try:
            async with asyncio.timeout(timeout), self._cond:
                await self._cond.wait_for(find)
                return found[0]
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}{self._context()}") from None

    def _context(self) -> str:
        recent = "\n".join(f"  {e}"[:300] for e in self.events[-15:])
        stderr = self._stderr.read_text(errors="replace")[-2000:]
        return f"\nlast reports:\n{recent}\nstderr:\n{stderr}"

    def connect(
        self,
        id: str,
        url: str,
        transport: str,
        *,
        namespace: str = "",
        auth: Any = None,
        replies: dict[str, Any] | None = None,
    ) -> JsClient:
        """Start a client with its own connection to ``url + namespace``."""
        opts = dict(TRANSPORTS[transport])
        if auth is not None:
            opts["auth"] = auth
        self.send(
            cmd="connect", id=id, url=url, namespace=namespace, opts=opts, replies=replies or {}
        )
        return JsClient(self, id, transport)

    def multiplex(self, id: str, on: JsClient, namespace: str, *, auth: Any = None) -> JsClient:
        """Open ``namespace`` on the existing connection of client ``on``."""
        opts = {} if auth is None else {"auth": auth}
        self.send(cmd="connect", id=id, share=on.id, namespace=namespace, opts=opts)
        return JsClient(self, id, None)

    async def close(self) -> None:
        """End the session: the driver disconnects its clients and closes its side."""
        try:
            with contextlib.suppress(ConnectionError):
                self._writer.write_eof()
            await asyncio.wait_for(self._reader, 5)
        finally:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()


class JsClient:
    """One socket.io-client socket inside the driver, seen from the test."""

    def __init__(self, driver: Driver, id: str, transport: str | None) -> None:
        self.driver = driver
        self.id = id
        self.transport = transport  # None: multiplexed on another client's connection
        self.sid = ""

    def mine(
        self, type: str, predicate: Callable[[Event], bool] | None = None
    ) -> Callable[[Event], bool]:
        """A predicate matching this client's reports of ``type`` (and ``predicate``)."""
        return lambda e: (
            e.get("id") == self.id and e["type"] == type and (predicate is None or predicate(e))
        )

    async def connected(self) -> Event:
        """Wait for ``connect`` (failing on ``connect_error``) and check the transport in use;
        in "upgrade" mode also wait until the connection has upgraded to WebSocket."""
        event = await self.driver.wait_for(
            lambda e: e.get("id") == self.id and e["type"] in ("connect", "connect_error"),
            f"{self.id} connect",
        )
        assert event["type"] == "connect", event
        self.sid = event["sid"]
        if self.transport in ("websocket", "polling"):
            assert event["transport"] == self.transport
        elif self.transport == "upgrade":
            upgrade = await self.driver.wait_for(self.mine("upgrade"), f"{self.id} upgrade")
            assert upgrade["transport"] == upgrade["current"] == "websocket"
            assert (await self.info())["transport"] == "websocket"
        return event

    async def refused(self) -> Event:
        """Wait for ``connect_error`` (failing on ``connect``)."""
        event = await self.driver.wait_for(
            lambda e: e.get("id") == self.id and e["type"] in ("connect", "connect_error"),
            f"{self.id} connect_error",
        )
        assert event["type"] == "connect_error", event
        return event

    async def disconnected(self) -> str:
        """Wait for ``disconnect``; returns the client-side reason."""
        event = await self.driver.wait_for(self.mine("disconnect"), f"{self.id} disconnect")
        return str(event["reason"])

    def emit(self, event: str, *args: Any) -> None:
        """Emit without an ack."""
        self.driver.send(cmd="emit", id=self.id, event=event, args=list(args))

    async def call(self, event: str, *args: Any) -> list[Any]:
        """Emit with an ack and return the ack's arguments."""
        ref = self.driver.ref()
        self.driver.send(cmd="emit", id=self.id, event=event, args=list(args), ref=ref)
        ack = await self.driver.wait_for(
            self.mine("ack", lambda e: e["ref"] == ref), f"{self.id} ack of {event}"
        )
        assert ack["error"] is None, ack
        return list(ack["args"])

    async def event(self, name: str, predicate: Callable[[list[Any]], bool] | None = None) -> Event:
        """The first ``name`` event received (whose args match ``predicate``)."""
        return await self.driver.wait_for(
            self.mine(
                "event",
                lambda e: e["event"] == name and (predicate is None or predicate(e["args"])),
            ),
            f"{self.id} event {name}",
        )

    def received(self, name: str) -> list[list[Any]]:
        """The argument lists of every ``name`` event received so far."""
        return [
            e["args"]
            for e in self.driver.events
            if e.get("id") == self.id and e["type"] == "event" and e["event"] == name
        ]

    def burst(self, event: str, count: int) -> None:
        """Emit ``event(i)`` for every ``i < count`` in one tick of the client."""
        self.driver.send(cmd="burst", id=self.id, event=event, count=count)

    def answer(self, ack_ref: int, *args: Any) -> None:
        """Answer a server's ack request by hand."""
        self.driver.send(cmd="answer", id=self.id, ackRef=ack_ref, args=list(args))

    async def info(self) -> Event:
        """The client's state now: connected, sid, transport."""
        ref = self.driver.ref()
        self.driver.send(cmd="info", id=self.id, ref=ref)
        return await self.driver.wait_for(
            self.mine("info", lambda e: e["ref"] == ref), f"{self.id} info"
        )

    def retry(self, auth: Any) -> None:
        """Set ``socket.auth`` and call ``socket.connect()`` again (after a refusal)."""
        self.driver.send(cmd="retry", id=self.id, auth=auth)

    def disconnect(self) -> None:
        """``socket.disconnect()`` on the client."""
        self.driver.send(cmd="disconnect", id=self.id)


async def connect_all(*clients: JsClient) -> list[str]:
    """Wait until every client is connected; returns their sids."""
    await asyncio.gather(*(c.connected() for c in clients))
    return [c.sid for c in clients]


async def join(client: JsClient, *rooms: str) -> None:
    """Join rooms through the relay and check its ack."""
    [ack] = await client.call("join", list(rooms))
    assert ack["ok"] is True, ack
    assert set(rooms) <= set(ack["rooms"])


_barrier_tokens = itertools.count()


async def barrier(ns: Namespace, *clients: JsClient) -> None:
    """Emit a marker to the whole of ``ns`` and wait until each client has it."""
    token = next(_barrier_tokens)
    ns.emit("barrier", token)
    await asyncio.gather(*(c.event("barrier", lambda a: a == [token]) for c in clients))


class Tracked:
    """Server-side record of one namespace: its sockets by sid and their disconnect reasons."""

    def __init__(
        self, ns: Namespace, on_connect: Callable[[Socket, Any], Any] | None = None
    ) -> None:
        self._connected: dict[str, asyncio.Future[Socket]] = {}
        self._reasons: dict[str, asyncio.Future[str]] = {}
        self._on_connect = on_connect
        ns.on("connect", self._connect)
        ns.on("disconnect", self._disconnect)

    @staticmethod
    def _future(table: dict[str, asyncio.Future[Any]], sid: str) -> asyncio.Future[Any]:
        if sid not in table:
            table[sid] = asyncio.get_running_loop().create_future()
        return table[sid]

    def _connect(self, socket: Socket, auth: Any) -> None:
        self._future(self._connected, socket.sid).set_result(socket)
        if self._on_connect is not None:
            self._on_connect(socket, auth)

    def _disconnect(self, socket: Socket, reason: str) -> None:
        self._future(self._reasons, socket.sid).set_result(reason)

    async def socket(self, sid: str) -> Socket:
        """The server-side socket of ``sid``."""
        socket: Socket = await asyncio.wait_for(self._future(self._connected, sid), 5)
        return socket

    async def reason(self, sid: str) -> str:
        """The reason the server gave to the ``disconnect`` handler of ``sid``."""
        reason: str = await asyncio.wait_for(self._future(self._reasons, sid), 5)
        return reason


@pytest.fixture(scope="session")
def js_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    """The Node driver process, started once for the run (Node's start-up is the slow part)."""
    stderr = tmp_path_factory.mktemp("js") / "driver-stderr.txt"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            ["node", str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=JS_DIR,
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        readable, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if readable else b""
        if not line:
            raise RuntimeError(f"driver did not start:\n{stderr.read_text(errors='replace')}")
        yield DriverProcess(json.loads(line)["port"], stderr)
    finally:
        proc.stdin.close()  # the driver exits when its stdin closes
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
async def js(js_process: DriverProcess) -> AsyncIterator[Driver]:
    """A session with the driver; its clients are disconnected at the end of the test."""
    driver = await Driver.open(js_process)
    try:
        yield driver
    finally:
        await driver.close()


@pytest.fixture(params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    """Each transport mode: websocket only, polling only, polling upgraded to websocket."""
    return str(request.param)


# --- namespaces ------------------------------------------------------------------------------


async def test_connect_root_namespace(start_node: Any, js: Driver, transport: str) -> None:
    """A client connects to ``/``, its sid is the server socket's and its auth reaches the
    server, over the transport it asked for on both ends."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"), lambda s, auth: s.emit("welcome", s.sid, auth))
    client = js.connect("a", server.url, transport, auth={"user": "ann", "n": [1, 2]})
    hello = await client.connected()

    socket = await tracked.socket(hello["sid"])
    assert socket.handshake.auth == {"user": "ann", "n": [1, 2]}
    welcome = await client.event("welcome")
    assert welcome["args"] == [hello["sid"], {"user": "ann", "n": [1, 2]}]
    # A round trip after the client-side upgrade: the server has switched transport too.
    await join(client, "r")
    assert socket.conn.transport_name == ("polling" if transport == "polling" else "websocket")


async def test_namespaces_multiplexed_and_isolated(
    start_node: Any, js: Driver, transport: str
) -> None:
    """Two namespaces multiplexed on one connection are isolated: a namespace-wide emit reaches
    only the sockets of that namespace."""
    server: Server = await start_node(**{"namespaces": {"/": {}, "/chat": {}}})
    root = js.connect("root", server.url, transport)
    await root.connected()
    chat = js.multiplex("chat", root, "/chat")
    other = js.connect("other", server.url, transport, namespace="/chat")
    await connect_all(chat, other)
    root_socket = server.of("/").sockets[root.sid]
    chat_socket = server.of("/chat").sockets[chat.sid]
    assert root_socket.conn is chat_socket.conn
    assert chat.sid != root.sid

    server.of("/chat").emit("news", "for chat")
    server.of("/").emit("news", "for root")
    await barrier(server.of("/"), root)
    await barrier(server.of("/chat"), chat, other)

    assert root.received("news") == [["for root"]]
    assert chat.received("news") == [["for chat"]]
    assert other.received("news") == [["for chat"]]


async def test_namespace_disconnect_keeps_connection(
    start_node: Any, js: Driver, transport: str
) -> None:
    """A client leaving one multiplexed namespace leaves the connection and its other
    namespaces working."""
    server: Server = await start_node(**{"namespaces": {"/": {}, "/chat": {}}})
    chat_tracked = Tracked(server.of("/chat"))
    root = js.connect("root", server.url, transport)
    await root.connected()
    chat = js.multiplex("chat", root, "/chat")
    await chat.connected()

    chat.disconnect()
    assert await chat_tracked.reason(chat.sid) == "client namespace disconnect"
    assert await root.call("join", "r") == [{"ok": True, "rooms": ["r"]}]
    assert list(server.of("/").sockets) == [root.sid]
    assert server.of("/chat").sockets == {}
    assert len(server.connections) == 1


async def test_unknown_namespace_refused(start_node: Any, js: Driver, transport: str) -> None:
    """An unknown namespace gets connect_error "Invalid namespace", and the same connection can
    still open a known one."""
    server: Server = await start_node()
    nope = js.connect("nope", server.url, transport, namespace="/nope")
    error = await nope.refused()
    assert error["message"] == "Invalid namespace"
    assert error["data"] is None
    assert "/nope" not in [ns.name for ns in server.namespaces()]

    root = js.multiplex("root", nope, "/")
    await root.connected()
    assert (await root.call("join", "x")) == [{"ok": True, "rooms": ["x"]}]


async def test_dynamic_namespace(start_node: Any, js: Driver, transport: str) -> None:
    """A regex namespace is created on first connection and runs its parent's middleware and
    handlers; a name it does not match is an invalid namespace."""
    server: Server = await start_node()
    tenants = server.of(re.compile(r"/tenant-\d+"))

    def tag(socket: Socket, auth: Any) -> None:
        socket.data["tenant"] = socket.namespace.name

    tenants.use(tag)
    tenants.on("whoami", lambda s: (s.namespace.name, s.data["tenant"]))

    t42 = js.connect("t42", server.url, transport, namespace="/tenant-42")
    t7 = js.connect("t7", server.url, transport, namespace="/tenant-7")
    bad = js.connect("bad", server.url, transport, namespace="/tenant-x")
    await connect_all(t42, t7)
    assert (await bad.refused())["message"] == "Invalid namespace"

    assert await t42.call("whoami") == ["/tenant-42", "/tenant-42"]
    assert await t7.call("whoami") == ["/tenant-7", "/tenant-7"]
    names = {ns.name for ns in server.namespaces()}
    assert {"/tenant-42", "/tenant-7"} <= names
    assert "/tenant-x" not in names


# --- auth ------------------------------------------------------------------------------------


async def test_middleware_refusal(start_node: Any, js: Driver, transport: str) -> None:
    """A middleware's ConnectRefusedError reaches the client as connect_error with its message
    and data; a crashing middleware gives "Internal server error"; a good token connects."""
    server: Server = await start_node()
    guarded = server.of("/guarded")

    async def check(socket: Socket, auth: Any) -> None:
        if auth.get("token") == "crash":
            raise RuntimeError("boom")
        if auth.get("token") != "open-sesame":
            raise ConnectRefusedError("not allowed", {"code": 4001, "hint": ["token"]})

    guarded.use(check)
    bad = js.connect("bad", server.url, transport, namespace="/guarded", auth={"token": "x"})
    crash = js.connect(
        "crash", server.url, transport, namespace="/guarded", auth={"token": "crash"}
    )
    good = js.connect(
        "good", server.url, transport, namespace="/guarded", auth={"token": "open-sesame"}
    )

    error = await bad.refused()
    assert (error["message"], error["data"]) == ("not allowed", {"code": 4001, "hint": ["token"]})
    error = await crash.refused()
    assert (error["message"], error["data"]) == ("Internal server error", None)
    await good.connected()
    assert list(guarded.sockets) == [good.sid]


async def test_retry_with_new_auth(start_node: Any, js: Driver, transport: str) -> None:
    """After a refusal, the client's documented retry (new ``socket.auth``, ``connect()``)
    connects the same socket on the same connection."""
    server: Server = await start_node(
        **{"namespaces": {"/": {}, "/secret": {"auth": "secret", "secret": "s3"}}}
    )
    client = js.connect("a", server.url, transport, namespace="/secret", auth={"token": "bad"})
    assert (await client.refused())["data"] == {"reason": "invalid token"}

    client.retry({"token": "s3"})
    hello = await js.wait_for(lambda e: e.get("id") == "a" and e["type"] == "connect", "connect")
    assert list(server.of("/secret").sockets) == [hello["sid"]]
    assert len(server.connections) == 1


async def test_relay_secret_auth(start_node: Any, js: Driver, transport: str) -> None:
    """A relay namespace with auth = "secret" refuses a missing or wrong token with the reason
    in the error's data and admits the right one."""
    server: Server = await start_node(
        **{"namespaces": {"/": {}, "/secret": {"auth": "secret", "secret": "s3"}}}
    )
    url = server.url
    missing = js.connect("missing", url, transport, namespace="/secret")
    wrong = js.connect("wrong", url, transport, namespace="/secret", auth={"token": "s4"})
    right = js.connect("right", url, transport, namespace="/secret", auth={"token": "s3"})
    open_root = js.connect("root", url, transport)

    for client, reason in ((missing, "missing token"), (wrong, "invalid token")):
        error = await client.refused()
        assert error["message"] == "unauthorized"
        assert error["data"] == {"reason": reason}
    await connect_all(right, open_root)
    assert await right.call("join", "vault") == [{"ok": True, "rooms": ["vault"]}]


async def test_relay_jwt_auth(start_node: Any, js: Driver, transport: str) -> None:
    """A relay namespace with auth = "jwt" admits a valid HS256 token (its ``sub`` becomes
    ``socket.data["user"]``) and refuses bad signatures, expired, future and malformed tokens."""
    server: Server = await start_node(
        **{"namespaces": {"/": {}, "/jwt": {"auth": "jwt", "secret": "k3y"}}}
    )
    tracked = Tracked(server.of("/jwt"))
    now = int(time.time())
    tokens = {
        "valid": sign_hs256({"sub": "alice", "exp": now + 300}, "k3y"),
        "forged": sign_hs256({"sub": "alice", "exp": now + 300}, "not-the-key"),
        "expired": sign_hs256({"sub": "alice", "exp": now - 10}, "k3y"),
        "future": sign_hs256({"sub": "alice", "nbf": now + 300}, "k3y"),
        "garbage": "not.a-token",
    }
    clients = {
        name: js.connect(name, server.url, transport, namespace="/jwt", auth={"token": token})
        for name, token in tokens.items()
    }

    expected = {
        "forged": "invalid signature",
        "expired": "token expired",
        "future": "token not yet valid",
        "garbage": "malformed token",
    }
    for name, reason in expected.items():
        error = await clients[name].refused()
        assert (error["message"], error["data"]) == ("unauthorized", {"reason": reason})
    await clients["valid"].connected()
    socket = await tracked.socket(clients["valid"].sid)
    assert socket.data["user"] == "alice"
    assert list(server.of("/jwt").sockets) == [clients["valid"].sid]


# --- rooms and broadcasts --------------------------------------------------------------------


async def test_relay_join_leave(start_node: Any, js: Driver, transport: str) -> None:
    """Relay join/leave acks list the socket's rooms (sid room excluded), refuse bad names and
    other sockets' sid rooms, and rooms vanish with their last member."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"))
    a = js.connect("a", server.url, transport)
    b = js.connect("b", server.url, transport)
    await connect_all(a, b)

    assert await a.call("join", "r1") == [{"ok": True, "rooms": ["r1"]}]
    assert await a.call("join", ["r3", "r2"]) == [{"ok": True, "rooms": ["r1", "r2", "r3"]}]
    assert await b.call("join", "r1") == [{"ok": True, "rooms": ["r1"]}]
    assert server.of("/").rooms() == {"r1": 2, "r2": 1, "r3": 1}
    assert await a.call("leave", "r2") == [{"ok": True, "rooms": ["r1", "r3"]}]
    assert await a.call("join", []) == [
        {"ok": False, "error": "room must be a name or a non-empty list of names"}
    ]
    assert await a.call("join", b.sid) == [{"ok": False, "error": f"room not allowed: {b.sid}"}]
    assert server.of("/").rooms() == {"r1": 2, "r3": 1}

    a.disconnect()
    assert await tracked.reason(a.sid) == "client namespace disconnect"
    assert server.of("/").rooms() == {"r1": 1}


async def test_to_room_excludes_sender(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.to(room).emit`` in a handler reaches every other member of the room, but not
    the sender and not non-members."""
    server: Server = await start_node()
    ns = server.of("/")

    def shout(socket: Socket, room: str, text: str) -> str:
        socket.to(room).emit("shouted", socket.sid, text)
        return "sent"

    ns.on("shout", shout)
    a, b, c, d = (js.connect(n, server.url, transport) for n in "abcd")
    await connect_all(a, b, c, d)
    await asyncio.gather(join(a, "r"), join(b, "r"), join(c, "r"), join(d, "elsewhere"))

    assert await a.call("shout", "r", "hi") == ["sent"]
    await barrier(ns, a, b, c, d)
    assert b.received("shouted") == [[a.sid, "hi"]]
    assert c.received("shouted") == [[a.sid, "hi"]]
    assert a.received("shouted") == []
    assert d.received("shouted") == []


@pytest.mark.parametrize("echo", [False, True], ids=["echo-off", "echo-on"])
async def test_relay_publish_echo(start_node: Any, js: Driver, transport: str, echo: bool) -> None:
    """Relay publish reaches every other member of the room once, not non-members, and the
    publisher only when the namespace's echo is on."""
    server: Server = await start_node(**{"namespaces": {"/": {"echo": echo}}})
    a, b, c = (js.connect(n, server.url, transport) for n in "abc")
    await connect_all(a, b, c)
    await asyncio.gather(join(a, "r"), join(b, "r"))

    data = {"text": "yo", "n": [1, 2.5, None, True]}
    assert await a.call("publish", {"room": "r", "event": "chat", "data": data}) == [{"ok": True}]
    await barrier(server.of("/"), a, b, c)
    assert b.received("chat") == [[data]]
    assert c.received("chat") == []
    assert a.received("chat") == ([[data]] if echo else [])


async def test_multi_room_once(start_node: Any, js: Driver, transport: str) -> None:
    """A broadcast to several rooms (server ``to().to()`` and relay publish to a list) reaches
    a socket that is in several of them exactly once, and nobody outside them."""
    server: Server = await start_node(**{"namespaces": {"/": {"publish": "members"}}})
    ns = server.of("/")
    a, b, c, d = (js.connect(n, server.url, transport) for n in "abcd")
    await connect_all(a, b, c, d)
    await asyncio.gather(join(a, "r1", "r2"), join(b, "r1", "r2"), join(c, "r2"), join(d, "r3"))

    ns.to("r1").to("r2").emit("multi", "server")
    published = await a.call("publish", {"room": ["r1", "r2"], "event": "multi", "data": "relay"})
    assert published == [{"ok": True}]
    await barrier(ns, a, b, c, d)
    assert a.received("multi") == [["server"]]
    assert b.received("multi") == [["server"], ["relay"]]
    assert c.received("multi") == [["server"], ["relay"]]
    assert d.received("multi") == []


async def test_except_rooms(start_node: Any, js: Driver, transport: str) -> None:
    """``except_`` rooms exclude their members from room and namespace-wide broadcasts, and
    ``socket.except_`` also excludes the sender."""
    server: Server = await start_node()
    ns = server.of("/")

    def shout(socket: Socket) -> bool:
        socket.except_("vip").emit("e3", socket.sid)
        return True

    ns.on("shout-except", shout)
    a, b, c, d = (js.connect(n, server.url, transport) for n in "abcd")
    await connect_all(a, b, c, d)
    await asyncio.gather(join(a, "r"), join(b, "r", "vip"), join(c, "vip"))

    ns.to("r").except_("vip").emit("e1")
    ns.except_("vip").emit("e2")
    assert await d.call("shout-except") == [True]
    await barrier(ns, a, b, c, d)
    assert [len(x.received("e1")) for x in (a, b, c, d)] == [1, 0, 0, 0]
    assert [len(x.received("e2")) for x in (a, b, c, d)] == [1, 0, 0, 1]
    assert [x.received("e3") for x in (a, b, c, d)] == [[[d.sid]], [], [], []]


async def test_server_side_socket_ops(start_node: Any, js: Driver, transport: str) -> None:
    """Server-side ``fetch_sockets``, ``sockets_join``/``sockets_leave`` and
    ``disconnect_sockets`` act on exactly the targeted clients."""
    server: Server = await start_node()
    ns = server.of("/")
    a, b, c = (js.connect(n, server.url, transport) for n in "abc")
    await connect_all(a, b, c)
    await asyncio.gather(join(a, "r"), join(b, "r"))

    fetched = await ns.in_("r").fetch_sockets()
    assert sorted((s.id, sorted(s.rooms)) for s in fetched) == sorted(
        (x.sid, sorted([x.sid, "r"])) for x in (a, b)
    )
    await ns.in_("r").sockets_join("vip")
    ns.to("vip").emit("vip-only")
    await ns.in_(a.sid).sockets_leave("vip")
    ns.to("vip").emit("vip-after-leave")
    await barrier(ns, a, b, c)
    assert [len(x.received("vip-only")) for x in (a, b, c)] == [1, 1, 0]
    assert [len(x.received("vip-after-leave")) for x in (a, b, c)] == [0, 1, 0]

    await ns.in_("vip").disconnect_sockets()
    assert await b.disconnected() == "io server disconnect"
    assert await a.call("join", "still") == [{"ok": True, "rooms": ["r", "still"]}]
    assert sorted(ns.sockets) == sorted([a.sid, c.sid])


# --- acks ------------------------------------------------------------------------------------


async def test_client_ack(start_node: Any, js: Driver, transport: str) -> None:
    """A client emit with an ack gets the handler's return value: a value, a tuple as several
    arguments, None as none, from sync and async handlers."""
    server: Server = await start_node()
    ns = server.of("/")

    async def divide(socket: Socket, x: int, y: int) -> tuple[int, int]:
        return divmod(x, y)

    ns.on("add", lambda s, x, y: x + y)
    ns.on("divmod", divide)
    ns.on("nothing", lambda s: None)
    ns.on("nested", lambda s, obj: {"got": obj, "text": "héllo ✓ 😀"})
    client = js.connect("a", server.url, transport)
    await client.connected()

    assert await client.call("add", 2, 3) == [5]
    assert await client.call("divmod", 17, 5) == [3, 2]
    assert await client.call("nothing") == []
    obj = {"a": [1, None, True, {"b": "ü"}], "c": 1.5}
    assert await client.call("nested", obj) == [{"got": obj, "text": "héllo ✓ 😀"}]


async def test_server_emit_with_ack(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.emit_with_ack`` returns the client's first ack argument (binary included),
    ``emit(callback=)`` gets all of them, and an ack answered later still resolves."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"))
    client = js.connect("a", server.url, transport, replies={"echo": {"echo": True}})
    await client.connected()
    socket = await tracked.socket(client.sid)

    assert await socket.emit_with_ack("echo", {"x": 1}, "two", timeout=5) == {"x": 1}
    blob = {"nested": [b"\x00\x01", b"\xfe"]}
    assert await socket.emit_with_ack("echo", blob, timeout=5) == blob
    got: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
    socket.emit("echo", 1, "b", None, callback=lambda *args: got.set_result(args))
    assert await asyncio.wait_for(got, 5) == (1, "b", None)

    pending = asyncio.create_task(socket.emit_with_ack("question", "life?", timeout=5))
    asked = await client.event("question")
    assert asked["args"] == ["life?"]
    client.answer(asked["ackRef"], 42, "ignored")
    assert await pending == 42


async def test_emit_with_ack_disconnect(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.emit_with_ack`` raises DisconnectedError when the client disconnects before
    answering, as its docstring promises, instead of waiting for the timeout."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"))
    client = js.connect("a", server.url, transport)
    await client.connected()
    socket = await tracked.socket(client.sid)

    pending = asyncio.create_task(socket.emit_with_ack("question", timeout=30))
    await client.event("question")
    client.disconnect()
    assert await tracked.reason(client.sid) == "client namespace disconnect"
    with pytest.raises(DisconnectedError):
        await asyncio.wait_for(pending, 5)


async def test_broadcast_emit_with_ack(start_node: Any, js: Driver, transport: str) -> None:
    """A room broadcast with acks collects exactly one answer from each member and asks
    nobody else."""
    server: Server = await start_node()
    ns = server.of("/")
    clients = [
        js.connect(n, server.url, transport, replies={"vote": {"args": [f"from {n}", "second"]}})
        for n in "abcd"
    ]
    await connect_all(*clients)
    a, b, c, _outsider = clients
    await asyncio.gather(join(a, "room"), join(b, "room"), join(c, "room", "other"))

    answers = await ns.to("room").to("other").emit_with_ack("vote", "q?", timeout=5)
    assert sorted(answers) == ["from a", "from b", "from c"]
    await barrier(ns, *clients)
    assert [x.received("vote") for x in clients] == [[["q?"]], [["q?"]], [["q?"]], []]


async def test_broadcast_ack_member_disconnects(
    start_node: Any, js: Driver, transport: str
) -> None:
    """A broadcast with acks stops waiting for a member that disconnects without answering and
    returns the other answers."""
    server: Server = await start_node()
    ns = server.of("/")
    tracked = Tracked(ns)
    a = js.connect("a", server.url, transport, replies={"vote": {"args": ["yes"]}})
    quitter = js.connect("quitter", server.url, transport)
    await connect_all(a, quitter)

    pending = asyncio.create_task(ns.emit_with_ack("vote", timeout=30))
    await quitter.event("vote")
    quitter.disconnect()
    await tracked.reason(quitter.sid)
    assert await asyncio.wait_for(pending, 5) == ["yes"]


async def test_broadcast_ack_timeout(start_node: Any, js: Driver) -> None:
    """A broadcast with acks that some member never answers raises AckTimeoutError carrying
    the answers that did arrive."""
    server: Server = await start_node()
    ns = server.of("/")
    a = js.connect("a", server.url, "websocket", replies={"vote": {"args": ["yes", 1]}})
    b = js.connect("b", server.url, "websocket", replies={"vote": {"args": ["no", 2]}})
    mute = js.connect("mute", server.url, "websocket")
    await connect_all(a, b, mute)

    with pytest.raises(AckTimeoutError) as caught:
        await ns.emit_with_ack("vote", timeout=1.0)
    assert sorted(caught.value.responses) == ["no", "yes"]
    assert "ackRef" in await mute.event("vote")  # asked, never answered


@pytest.mark.parametrize(
    "mode",
    [
        "websocket",
        "polling",
        "upgrade",
    ],
)
async def test_client_burst(start_node: Any, js: Driver, mode: str) -> None:
    """A burst of 600 emits in one tick of the client (one POST body over polling) reaches
    the handler complete and in order, and the session stays open."""
    server: Server = await start_node()
    got: list[int] = []
    server.of("/").on("n", lambda s, i: got.append(i))
    client = js.connect("a", server.url, mode)
    await client.connected()

    client.burst("n", 600)
    assert await client.call("join", "after-burst") == [{"ok": True, "rooms": ["after-burst"]}]
    assert got == list(range(600))
    assert dict(server.stats.closed_by_reason) == {}


# --- binary ----------------------------------------------------------------------------------


async def test_binary_both_ways(start_node: Any, js: Driver, transport: str) -> None:
    """Buffers in client args (top level and nested, empty and over 64 KiB) reach handlers as
    bytes, and bytes in server emits and acks reach the client as Buffers."""
    server: Server = await start_node()
    seen: list[tuple[Any, ...]] = []

    def upload(socket: Socket, blob: bytes, meta: dict[str, Any]) -> Any:
        seen.append((blob, meta))
        socket.emit("download", meta, blob)
        return {"echo": blob, "size": len(blob)}, [blob[:2], b""]

    server.of("/").on("upload", upload)
    client = js.connect("a", server.url, transport)
    await client.connected()

    big = bytes(range(256)) * 300
    meta = {"name": "x", "parts": [b"\x00\x01", {"deep": b"\xff" * 3}, b""], "n": 1}
    ack = await client.call("upload", big, meta)
    assert seen == [(big, meta)]
    blob, got_meta = seen[0]  # == also holds for a bytearray: check the type
    assert type(blob) is bytes and type(got_meta["parts"][1]["deep"]) is bytes
    assert ack == [{"echo": big, "size": len(big)}, [big[:2], b""]]
    download = await client.event("download")
    assert download["args"] == [meta, big]


async def test_binary_broadcast(start_node: Any, js: Driver, transport: str) -> None:
    """A relay publish carrying binary reaches every other member with the same bytes."""
    server: Server = await start_node()
    a, b, c = (js.connect(n, server.url, transport) for n in "abc")
    await connect_all(a, b, c)
    await asyncio.gather(join(a, "r"), join(b, "r"), join(c, "r"))

    data = {"blob": b"\x00\xffbinary\n", "more": [b"x" * 1000, {"k": b"\x01"}]}
    assert await a.call("publish", {"room": "r", "event": "file", "data": data}) == [{"ok": True}]
    for client in (b, c):
        assert (await client.event("file"))["args"] == [data]


# --- disconnects -----------------------------------------------------------------------------


async def test_server_disconnect(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.disconnect()`` gives the client "io server disconnect" and the server handler
    "server namespace disconnect"; a client disconnect gives "client namespace disconnect"."""
    server: Server = await start_node()
    tracked = Tracked(server.of("/"))
    server.of("/").on("kick-me", lambda s: s.disconnect())
    a = js.connect("a", server.url, transport)
    b = js.connect("b", server.url, transport)
    await connect_all(a, b)

    a.emit("kick-me")
    assert await a.disconnected() == "io server disconnect"
    assert await tracked.reason(a.sid) == "server namespace disconnect"

    b.disconnect()
    assert await b.disconnected() == "io client disconnect"
    assert await tracked.reason(b.sid) == "client namespace disconnect"
    assert server.of("/").sockets == {}


async def test_server_disconnect_close(start_node: Any, js: Driver, transport: str) -> None:
    """``socket.disconnect(close=True)`` disconnects every namespace of the connection as
    socket.io does: the clients see "io server disconnect", the handlers "server namespace
    disconnect"."""
    server: Server = await start_node(**{"namespaces": {"/": {}, "/chat": {}}})
    root_tracked = Tracked(server.of("/"))
    chat_tracked = Tracked(server.of("/chat"))
    server.of("/").on("close-me", lambda s: s.disconnect(True))
    root = js.connect("root", server.url, transport)
    await root.connected()
    chat = js.multiplex("chat", root, "/chat")
    await chat.connected()

    root.emit("close-me")
    assert await root.disconnected() == "io server disconnect"
    assert await chat.disconnected() == "io server disconnect"
    assert await root_tracked.reason(root.sid) == "server namespace disconnect"
    assert await chat_tracked.reason(chat.sid) == "server namespace disconnect"


async def test_heartbeat(start_node: Any, js: Driver, transport: str) -> None:
    """With a short ping interval the client answers several heartbeats and stays connected on
    both ends."""
    server: Server = await start_node(
        **{"engineio.ping_interval_ms": 40, "engineio.ping_timeout_ms": 2000}
    )
    tracked = Tracked(server.of("/"))
    client = js.connect("a", server.url, transport)
    await client.connected()
    socket = await tracked.socket(client.sid)

    def third_ping(event: Event) -> bool:
        pings = [e for e in js.events if e.get("id") == "a" and e["type"] == "ping"]
        return len(pings) >= 3 and event is pings[2]

    await js.wait_for(third_ping, "3 pings")
    assert await client.call("join", "still-here") == [{"ok": True, "rooms": ["still-here"]}]
    assert socket.connected and not socket.conn.closed
    assert [e for e in js.events if e["type"] == "disconnect"] == []


# --- relay policy ----------------------------------------------------------------------------


async def test_relay_policy(start_node: Any, js: Driver, transport: str) -> None:
    """The relay policy allows and refuses per namespace: publish "any" from a non-member,
    publish "members" refusing a non-member, publish "none", and client_join = false."""
    server: Server = await start_node(
        **{
            "namespaces": {
                "/": {},
                "/any": {"publish": "any"},
                "/none": {"publish": "none"},
                "/nojoin": {"client_join": False},
            }
        }
    )
    url = server.url
    member = js.connect("member", url, transport)
    outsider = js.connect("outsider", url, transport)
    any_member = js.connect("any-member", url, transport, namespace="/any")
    any_outsider = js.connect("any-outsider", url, transport, namespace="/any")
    none_member = js.connect("none-member", url, transport, namespace="/none")
    none_other = js.connect("none-other", url, transport, namespace="/none")
    nojoin = js.connect("nojoin", url, transport, namespace="/nojoin")
    await connect_all(member, outsider, any_member, any_outsider, none_member, none_other, nojoin)
    await asyncio.gather(join(member, "r"), join(any_member, "r"), join(none_member, "r"))
    await join(none_other, "r")

    message = {"room": "r", "event": "note", "data": "hi"}
    assert await outsider.call("publish", message) == [{"ok": False, "error": "not a member of r"}]
    assert await any_outsider.call("publish", message) == [{"ok": True}]
    assert await none_other.call("publish", message) == [
        {"ok": False, "error": "publish not allowed"}
    ]
    assert await nojoin.call("join", "r") == [{"ok": False, "error": "join not allowed"}]
    assert server.of("/nojoin").rooms() == {}

    await barrier(server.of("/"), member, outsider)
    await barrier(server.of("/any"), any_member)
    await barrier(server.of("/none"), none_member)
    assert member.received("note") == []
    assert any_member.received("note") == [["hi"]]
    assert none_member.received("note") == []


# --- upgrade ---------------------------------------------------------------------------------


async def test_upgrade_mid_traffic(start_node: Any, js: Driver, monkeypatch: Any) -> None:
    """Events in both directions arrive once and in order while a polling connection upgrades
    to WebSocket in the middle of the traffic."""
    # Hold the server side of the upgrade until traffic flows on polling (the probe is usually
    # faster than the namespace CONNECT, and then nothing would cross the upgrade).
    gate = asyncio.Event()
    real_upgrade = Connection.upgrade

    async def held_upgrade(self: Connection, ws: Any, transport: Any) -> None:
        await gate.wait()
        await real_upgrade(self, ws, transport)

    monkeypatch.setattr(Connection, "upgrade", held_upgrade)
    server: Server = await start_node()
    got: list[int] = []

    def tick(socket: Socket, n: int) -> int:
        got.append(n)
        socket.emit("tock", n)
        return n

    server.of("/").on("tick", tick)
    client = js.connect("a", server.url, "upgrade")
    hello = await js.wait_for(lambda e: e.get("id") == "a" and e["type"] == "connect", "connect")
    assert hello["transport"] == "polling"
    client.sid = hello["sid"]
    socket = server.of("/").sockets[client.sid]
    n = 0
    for _ in range(5):
        assert await client.call("tick", n) == [n]
        n += 1
    assert socket.conn.transport_name == "polling"

    gate.set()
    for i in range(50):  # queued for polling while the probe is being answered
        socket.emit("push", i, bytes([i]) * i)
    upgraded = client.mine("upgrade")
    # Ping-pong (no sleeps) until the client reports the upgrade, then a few more rounds.
    while not any(upgraded(e) for e in js.events) and n < 2000:
        assert await client.call("tick", n) == [n]
        n += 1
    assert n < 2000, "no upgrade while the client was busy"
    for _ in range(5):
        assert await client.call("tick", n) == [n]
        n += 1

    assert got == list(range(n))
    await client.event("tock", lambda a: a == [n - 1])
    assert [args[0] for args in client.received("tock")] == list(range(n))
    assert client.received("push") == [[i, bytes([i]) * i] for i in range(50)]
    kinds = [e["type"] for e in js.events if e.get("id") == "a" and e["type"] != "ack"]
    first_upgrade = kinds.index("upgrade")
    assert "event" in kinds[:first_upgrade] and "event" in kinds[first_upgrade:]
    assert socket.conn.transport_name == "websocket"
