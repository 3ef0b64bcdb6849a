"""A real load balancer, Debian's HAProxy, in front of several backends (roomcast nodes), with
no stickiness: every HTTP request is balanced on its own (round-robin by default), so a test
can prove that any node serves any request of a Socket.IO session.

``async with balancer(["http://127.0.0.1:41234", ...], tmp_path) as lb:`` writes ``haproxy.cfg``
into ``tmp_path``, runs ``haproxy -f haproxy.cfg -db`` (foreground) as a
:class:`~support.cluster_processes.Proc` (its alerts go to ``tmp_path/haproxy.log``; its access
log, one ``httplog`` line per request, to ``lb.access_log``, a file written directly: HAProxy
drops a log line rather than wait for a full pipe, so a pipe would lose lines), waits until it
answers, and stops it at the end (SIGTERM, then SIGKILL). Clients use ``lb.url``; ``await
lb.request_counts()`` reads how many requests each backend was sent, from HAProxy's own
statistics (served on a second port, so that nothing on ``lb.url`` is intercepted and the
readiness probe never reaches, nor shifts, the backends). ``await lb.replace_backend(old,
new)`` points the server that balanced ``old`` at ``new`` from then on, through HAProxy's
runtime API (its admin socket, in a short temporary directory), as a rolling deploy that replaces
a node by a new one at another address would.

What makes the distribution per request, and WebSocket work (see :func:`render_config`):

* ``balance roundrobin`` and nothing that pins a client: no ``cookie``, no ``stick-table``,
  no hashing algorithm, no ``option prefer-last-server``;
* ``option http-server-close`` and ``http-reuse never``: the client's connection is kept alive
  but every server-side connection carries one request and is closed after the response, so
  the next request on the same client connection is balanced afresh (never sent down a
  connection to the previous server);
* WebSocket: HAProxy 2.6 forwards ``Upgrade: websocket`` in ``mode http`` and, after the
  ``101``, tunnels the connection to the server that answered it; ``timeout tunnel 1h`` bounds
  its idleness instead of ``timeout client``/``server``;
* ``timeout client``/``server`` of 60 s outlast a long-polling GET (~30 s at most),
  ``timeout http-keep-alive`` of 60 s outlasts aiohttp's 15 s client keep-alive (the client
  closes an idle connection first, never reuses one HAProxy is closing), ``timeout connect`` is
  2 s; there are no health checks (no request reaches a backend but the tests' own);
* ``retries 3`` and ``option redispatch 1``: a connection a server refuses (a node killed) is
  retried on another server at once, as any node can serve any request.

The port. HAProxy cannot listen on port 0 and say which port it got, so the port is named
before it starts. It is not picked with :func:`support.ports.free_port` (bind, close, hope
nobody takes it first) but held for HAProxy's whole life by a socket of ours bound to port 0
with ``SO_REUSEPORT`` and never listening (:func:`_hold_port`). HAProxy sets ``SO_REUSEPORT``
(and ``SO_REUSEADDR``) on its listeners on Linux, so Linux lets it bind the same address while
our socket holds it; our socket, not listening, is in no listening group, so every connection
goes to HAProxy's socket (the tests check both). Meanwhile the kernel gives the port to nobody
who binds port 0, and refuses it to anyone binding it by number without ``SO_REUSEPORT`` (our
socket sets no ``SO_REUSEADDR``, so even one that sets that cannot); only a process of the same
user that names this very port with ``SO_REUSEPORT`` could join, which no test does. After
HAProxy has stopped, connections are refused until our socket closes. Handing HAProxy a
listening socket (``bind fd@N``) would leave no gap at all, but needs ``pass_fds``, which
:class:`Proc` (shared with every process the tests start) does not take.

Whether HAProxy is required: tests mark themselves with :data:`needs_haproxy`, which skips them
only when the binary is missing and neither ``CI`` nor ``ROOMCAST_TEST_REQUIRE_HAPROXY`` is set.
``make test`` installs Debian's ``haproxy`` when it is missing and sets the latter, so there a
missing HAProxy fails the tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

import aiohttp
import pytest

from support.cluster_harness import wait_until
from support.cluster_processes import TIMEOUT, Proc, clean_env


def haproxy_path() -> str | None:
    """The ``haproxy`` executable: on PATH, or where Debian puts it (``/usr/sbin``, which a
    non-root PATH may lack)."""
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"
    return found


HAPROXY = haproxy_path()
HAVE_HAPROXY = HAPROXY is not None
#: A run where a missing HAProxy is a failure, not a skip: CI, and ``make test``.
HAPROXY_REQUIRED = bool(os.environ.get("CI") or os.environ.get("ROOMCAST_TEST_REQUIRE_HAPROXY"))
#: The mark of a test that runs HAProxy.
needs_haproxy = pytest.mark.skipif(
    not HAVE_HAPROXY and not HAPROXY_REQUIRED,
    reason="haproxy is not installed (`make test` installs Debian's package; "
    "under CI or make test its absence is a failure)",
)

#: Balancing algorithms that pin nothing to a client (no hashing of source, URI, headers...).
Balance = Literal["roundrobin", "static-rr", "leastconn", "first", "random"]

#: The path of HAProxy's statistics on ``Balancer.stats_url``'s port.
STATS_PATH = "/stats"


def server_address(url: str) -> str:
    """HAProxy's ``address:port`` for a backend base URL such as ``http://127.0.0.1:41234``;
    ValueError for anything but a plain ``http://host:port``."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(
            f"backend {url!r}: only http:// backends are supported by support.haproxy "
            "(https would need `ssl verify ...` on its server lines)"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"backend {url!r}: bad port") from exc
    host = parts.hostname
    if not host or port is None:
        raise ValueError(f"backend {url!r}: needs a host and a port")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"backend {url!r}: only scheme://host:port, no path, query or user")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_config(
    servers: dict[str, str],
    port: int,
    stats_port: int,
    balance: Balance = "roundrobin",
    admin_socket: Path | None = None,
) -> str:
    """The text of ``haproxy.cfg``: ``servers`` maps server names to their ``address:port``;
    ``admin_socket``: where HAProxy serves its runtime API (a Unix socket)."""
    server_lines = "".join(f"    server {name} {addr}\n" for name, addr in servers.items())
    admin = f"    stats socket {admin_socket} mode 600 level admin\n" if admin_socket else ""
    return f"""\
global
    nbthread 2
    maxconn 2000
    log stdout format raw daemon
{admin}
defaults
    mode http
    log global
    option httplog
    option dontlognull
    # Per-request balancing: the client side stays kept alive, each server-side connection
    # carries one request and is closed, so no request follows its predecessor's server.
    option http-server-close
    http-reuse never
    # A request whose server refuses the connection (a node killed) goes to another server:
    # any node serves any request, so nothing is pinned to the dead one.
    retries 3
    option redispatch 1
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 30s
    timeout http-keep-alive 60s
    # A WebSocket, once upgraded (101), is a tunnel: idle for up to an hour.
    timeout tunnel 1h

frontend balancer
    bind 127.0.0.1:{port}
    default_backend nodes

frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri {STATS_PATH}

backend nodes
    balance {balance}
{server_lines}"""


def _hold_port() -> socket.socket:
    """A socket on a port of 127.0.0.1 (the kernel's pick) with ``SO_REUSEPORT`` and without
    ``SO_REUSEADDR``, bound and never listening: HAProxy can bind the port beside it, nobody
    else can take it (see the module's docstring)."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
    except BaseException:
        s.close()
        raise
    return s


@dataclass
class Balancer:
    """A running HAProxy: clients use :attr:`url`."""

    #: ``http://127.0.0.1:PORT``: the balanced frontend.
    url: str
    port: int
    #: HAProxy's statistics page (``;csv`` appended gives CSV); answered by HAProxy itself.
    stats_url: str
    #: The backend base URLs, in the order given (HAProxy's servers ``s0``, ``s1``, ...).
    backends: list[str]
    config_path: Path
    proc: Proc
    #: HAProxy's access log: one ``option httplog`` line per request, once it has ended.
    access_log: Path
    #: HAProxy's server names, by backend URL.
    servers: dict[str, str] = field(default_factory=dict)
    #: HAProxy's runtime API (``stats socket ... level admin``); None: not served.
    admin_socket: Path | None = None

    async def command(self, line: str) -> str:
        """Run one command of HAProxy's runtime API and return its answer (HAProxy answers a
        connection's one command, then closes it)."""
        assert self.admin_socket is not None, "this balancer serves no runtime API"
        reader, writer = await asyncio.open_unix_connection(str(self.admin_socket))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            async with asyncio.timeout(TIMEOUT):
                answer = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        return answer.decode()

    async def replace_backend(self, old: str, new: str) -> None:
        """Send what went to the backend ``old`` (a base URL) to ``new`` from now on: the same
        HAProxy server, at another address. Connections already open (a WebSocket's tunnel)
        stay where they are."""
        if old not in self.servers or new in self.servers:
            raise ValueError(f"replace {old!r} (one of {self.backends}) by a new backend {new!r}")
        name = self.servers[old]
        host, _, port = server_address(new).rpartition(":")
        answer = await self.command(f"set server nodes/{name} addr {host.strip('[]')} port {port}")
        if "changed" not in answer:
            raise AssertionError(f"haproxy did not move {name} to {new}: {answer!r}")
        del self.servers[old]
        self.servers[new] = name
        self.backends[self.backends.index(old)] = new

    async def stats(self) -> list[dict[str, str]]:
        """HAProxy's ``show stat`` rows (frontends, servers, backend) as dicts keyed by the
        CSV header (``pxname``, ``svname``, ``stot``, ``req_tot``, ...)."""
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(self.stats_url + ";csv") as response,
        ):
            response.raise_for_status()
            text = await response.text()
        return list(csv.DictReader(io.StringIO(text.removeprefix("# "))))

    async def request_counts(self) -> dict[str, int]:
        """How many HTTP requests HAProxy has sent to each backend, by backend URL (a
        WebSocket counts once). Counters move when HAProxy has handled a request, not
        necessarily before its client has the response: wait for the values expected
        (``wait_until``) rather than read them once."""
        names = {name: url for url, name in self.servers.items()}
        counts = dict.fromkeys(self.backends, 0)
        for row in await self.stats():
            if row.get("pxname") == "nodes" and row.get("svname") in names:
                counts[names[row["svname"]]] = int(row.get("req_tot") or 0)
        return counts


@contextlib.asynccontextmanager
async def balancer(
    backends: Sequence[str],
    tmp_path: Path,
    *,
    balance: Balance = "roundrobin",
    name: str = "haproxy",
) -> AsyncIterator[Balancer]:
    """HAProxy balancing ``backends`` (base URLs, ``http://host:port``) request by request,
    started and ready (answering) on entry, stopped on exit. Its files (``{name}.cfg``,
    ``{name}.log``) go into ``tmp_path``. ValueError for a backend that is not plain http or a
    balance that would pin clients; RuntimeError when haproxy is not installed."""
    if not backends:
        raise ValueError("balancer() needs at least one backend")
    if balance not in get_args(Balance):
        raise ValueError(f"balance {balance!r} is not one of {get_args(Balance)}")
    addresses = {url: server_address(url) for url in backends}
    servers = {url: f"s{i}" for i, url in enumerate(backends)}
    if len(servers) != len(backends):
        raise ValueError(f"duplicate backends in {list(backends)}")
    exe = haproxy_path()
    if exe is None:
        raise RuntimeError(
            "haproxy is not installed: `make test` installs it (apt-get install haproxy)"
        )
    with (
        _hold_port() as held,
        _hold_port() as stats_held,
        tempfile.TemporaryDirectory(prefix="haproxy-") as short_dir,
    ):
        port: int = held.getsockname()[1]
        stats_port: int = stats_held.getsockname()[1]
        config_path = tmp_path / f"{name}.cfg"
        # A Unix socket's path is at most 107 bytes: a test's tmp_path can be longer.
        admin_socket = Path(short_dir) / f"{name}.sock"
        config_path.write_text(
            render_config(
                {servers[url]: addresses[url] for url in backends},
                port,
                stats_port,
                balance,
                admin_socket,
            )
        )
        access_log = tmp_path / f"{name}-access.log"
        # HAProxy logs to its stdout, made a file by the shell: a file never blocks a write.
        argv = [exe, "-f", str(config_path), "-db"]
        redirect = ["/bin/sh", "-c", 'log=$1; shift; exec "$@" >>"$log"', "sh", str(access_log)]
        proc = Proc(name, redirect + argv, tmp_path, clean_env())
        lb = Balancer(
            url=f"http://127.0.0.1:{port}",
            port=port,
            stats_url=f"http://127.0.0.1:{stats_port}{STATS_PATH}",
            backends=list(backends),
            config_path=config_path,
            proc=proc,
            access_log=access_log,
            servers=servers,
            admin_socket=admin_socket,
        )
        try:
            await proc.start()
            await _wait_ready(lb)
            yield lb
        finally:
            await proc.stop()


async def _wait_ready(lb: Balancer) -> None:
    """Wait until HAProxy answers its statistics page (it binds every listener before it
    serves any, so then ``lb.url`` is served too); fail at once, with its output, if it
    exits (a bad config, a port it could not bind)."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def answers() -> bool:
            if not lb.proc.running:
                await lb.proc.wait()
                raise AssertionError(
                    f"haproxy exited before answering ({lb.config_path}):\n{lb.proc.tail()}"
                )
            try:
                async with http.get(lb.stats_url + ";csv") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False  # not listening yet

        await wait_until(answers, what=f"haproxy answering on {lb.stats_url}")
