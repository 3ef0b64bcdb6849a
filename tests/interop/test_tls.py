"""TLS for clients: a node started by the CLI (uvloop) with a certificate from a CA the test
makes serves https and wss to the official clients (Node's socket.io-client and
python-socketio), on every transport; a client that does not trust the CA, and a plain-HTTP
peer, get nothing, and the node carries on. A certificate that cannot be loaded is a config
error at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest
import socketio
import trustme
from support.cluster_harness import NODE_READY, running_cluster
from support.cluster_processes import TIMEOUT, Proc, clean_env, roomcast_argv, run_cli
from support.js_harness import (
    JS_TEST_MARKS,
    Driver,
    js_fixture,  # noqa: F401 (a fixture, taken as ``js``)
    transport_fixture,  # noqa: F401 (a fixture, taken as ``transport``)
)
from support.nodes import node_settings
from support.python_client_harness import TRANSPORTS, Inbox

from roomcast.node.server import Server

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Certificates:
    """A CA and a certificate it issued for 127.0.0.1 and localhost, as PEM files."""

    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = Certificates(directory / "ca.pem", directory / "node.pem", directory / "node.key")
    ca.cert_pem.write_to_path(str(paths.ca))
    for i, pem in enumerate(issued.cert_chain_pems):
        pem.write_to_path(str(paths.cert), append=i > 0)
    issued.private_key_pem.write_to_path(str(paths.key))
    return paths


def config(certs: Certificates) -> str:
    return f"""
[http]
tls_cert_file = "{certs.cert}"
tls_key_file = "{certs.key}"
tls_ca_file = "{certs.ca}"

[cluster]
enabled = false
"""


@contextlib.asynccontextmanager
async def tls_node(path: Path, name: str, cwd: Path) -> AsyncIterator[str]:
    """A TLS node started by the CLI with the config file ``path``, in ``cwd``; its https
    URL. No traceback in its log at the end."""
    argv = roomcast_argv(path, "node", "--id", name, "--host", "127.0.0.1", "--port", "0")
    proc = Proc(name, argv, cwd, clean_env())
    await proc.start()
    try:
        url = (await proc.wait_line(NODE_READY)).group(2)
        assert url.startswith("https://127.0.0.1:")
        yield url
    finally:
        await proc.stop()
    assert not [line for line in proc.lines if "Traceback" in line], proc.tail(60)


@pytest.fixture
async def node_url(certs: Certificates, tmp_path: Path) -> AsyncIterator[str]:
    """A TLS node (:func:`tls_node`) with the test's certificate."""
    path = tmp_path / "cluster.toml"
    path.write_text(config(certs))
    async with tls_node(path, "tls", tmp_path) as url:
        yield url


def trusting(certs: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca))


async def python_client(
    url: str, transport: str, context: ssl.SSLContext, inbox: Inbox, name: str
) -> socketio.AsyncClient:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
    client = socketio.AsyncClient(reconnection=False, http_session=session)
    client.on("news", inbox.handler(name, "news"))
    try:
        await client.connect(url, transports=TRANSPORTS[transport], wait_timeout=TIMEOUT)
    except BaseException:
        await session.close()
        raise
    return client


async def test_python_clients_over_tls(node_url: str, certs: Certificates, transport: str) -> None:
    """python-socketio clients trusting the test's CA connect over https/wss and relay."""
    inbox = Inbox()
    a = await python_client(node_url, transport, trusting(certs), inbox, "a")
    b = await python_client(node_url, transport, trusting(certs), inbox, "b")
    try:
        assert (
            a.transport() == b.transport() == ("polling" if transport == "polling" else "websocket")
        )
        for client in (a, b):
            assert await client.call("join", "r", timeout=TIMEOUT) == {"ok": True, "rooms": ["r"]}
        message = {"room": "r", "event": "news", "data": "over tls"}
        assert await a.call("publish", message, timeout=TIMEOUT) == {"ok": True}
        assert await inbox.wait("b", "news") == [("over tls",)]
    finally:
        for client in (a, b):
            await asyncio.wait_for(client.disconnect(), TIMEOUT)
            await client.eio.http.close()


def js_test(test: F) -> F:
    """The JS harness's marks (skipped without Node and the lockfile's client) on one test."""
    for mark in JS_TEST_MARKS:
        test = mark(test)
    return test


@js_test
async def test_js_clients_over_tls(
    node_url: str, certs: Certificates, js: Driver, transport: str
) -> None:
    """Node's socket.io-client, given the test's CA (its ``ca`` option), connects over
    https/wss and relays."""
    ca = certs.ca.read_text()
    a = js.connect("a", node_url, transport, options={"ca": ca})
    b = js.connect("b", node_url, transport, options={"ca": ca})
    await a.connected()
    await b.connected()
    for client in (a, b):
        assert await client.call("join", "r") == [{"ok": True, "rooms": ["r"]}]
    message = {"room": "r", "event": "news", "data": "js"}
    assert await a.call("publish", message) == [{"ok": True}]
    event = await b.event("news")
    assert event["args"] == ["js"]


async def test_untrusting_and_plain_peers_get_nothing(node_url: str, certs: Certificates) -> None:
    """A client that does not trust the CA fails its handshake; a plain-HTTP request to the TLS
    port is not answered; the node serves a trusting client afterwards."""
    inbox = Inbox()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await python_client(node_url, "websocket", ssl.create_default_context(), inbox, "x")
    port = urlsplit(node_url).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        answer = await reader.read()
    writer.close()
    assert not answer.startswith(b"HTTP/")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(certs))) as http,
        http.get(node_url + "/health") as resp,
    ):
        assert resp.status == 200


async def test_the_cli_asks_tls_nodes_trusting_the_configured_ca(
    node_url: str, certs: Certificates, tmp_path: Path
) -> None:
    """``roomcast status`` reaches a TLS node through ``http.tls_ca_file``."""
    path = tmp_path / "cli.toml"
    path.write_text(config(certs) + f'\n[discovery]\nnodes = ["{node_url}"]\n')
    code, out, err = await run_cli(path, "nodes", "--json", cwd=tmp_path)
    assert code == 0, err
    assert "tls" in out


async def test_a_certificate_that_cannot_be_loaded_is_a_config_error(
    certs: Certificates, tmp_path: Path
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(config(certs).replace(str(certs.key), str(tmp_path / "missing.key")))
    code, _, err = await run_cli(path, "node", "--port", "0", cwd=tmp_path)
    assert code == 2
    assert "config error: http.tls_cert_file: cannot load" in err
    path.write_text(f'[http]\ntls_cert_file = "{certs.cert}"\n')
    code, _, err = await run_cli(path, "node", "--port", "0", cwd=tmp_path)
    assert code == 2
    assert "http.tls_key_file: tls_cert_file and tls_key_file go together" in err


@pytest.mark.multinode
async def test_a_tls_cluster_forwards_requests_over_https(
    certs: Certificates, tmp_path: Path
) -> None:
    """In a cluster of TLS nodes, a polling session opened on one node is served through the
    other: the forward goes over https, the CA being ``http.tls_ca_file``; so does a
    WebSocket upgrade spliced to the owner."""
    tls = config(certs).replace("[cluster]\nenabled = false\n", "")
    async with running_cluster(
        tmp_path, "a", "b", extra_config=tls, ca_file=str(certs.ca)
    ) as cluster:
        a, b = cluster.nodes["a"].url, cluster.nodes["b"].url
        assert a.startswith("https://") and b.startswith("https://")
        trust = ssl.create_default_context(cafile=str(certs.ca))
        eio = "/socket.io/?EIO=4&transport="
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
            async with http.get(a + eio + "polling") as resp:
                sid = (await resp.text()).split('"sid":"')[1][:28]
            async with http.post(f"{b}{eio}polling&sid={sid}", data=b"40") as resp:
                assert (resp.status, await resp.text()) == (200, "ok")
            async with http.get(f"{b}{eio}polling&sid={sid}") as resp:
                assert (await resp.text()).startswith('40{"sid":"')
            ws_url = b.replace("https", "wss") + f"{eio}websocket&sid={sid}"
            async with http.ws_connect(ws_url) as ws:
                await ws.send_str("2probe")
                assert (await ws.receive(timeout=TIMEOUT)).data == "3probe"
        stats = await cluster.admin("b", "/admin/stats")
        assert stats["forwarded_requests"] == 2 and stats["spliced_websockets"] == 1
        assert stats["forward_failed"] == 0


async def test_a_handshake_that_ends_after_the_node_stopped_is_closed_unanswered(
    certs: Certificates,
) -> None:
    """A TLS handshake still going on when the node stops (the listener closed, aiohttp shut
    down) and finishing afterwards opens nothing: the connection is closed, its request is
    not answered, and no request handler is left to a loop that is about to close."""
    settings = node_settings(
        **{
            "http.tls_cert_file": str(certs.cert),
            "http.tls_key_file": str(certs.key),
            "cluster.enabled": False,
        }
    )
    tls = trusting(certs)
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = tls.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    async with Server(settings) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # The client's side of the handshake, all but its last flight, which it holds back.
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    client.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    writer.write(outgoing.read())
                    incoming.write(await reader.read(65536))
    # The node has stopped; the client ends its handshake and sends a request.
    client.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    writer.write(outgoing.read())
    answer = b""
    try:
        async with asyncio.timeout(TIMEOUT):
            answer = await reader.read()  # until the node closes the connection
    except ConnectionResetError:
        pass  # closed with a reset: unanswered all the same
    finally:
        writer.close()
    incoming.write(answer)
    with contextlib.suppress(ssl.SSLError):  # no data, or no close_notify: nothing to read
        assert b"HTTP/" not in client.read(65536)


async def test_certificate_paths_relative_to_the_config_file(
    certs: Certificates, tmp_path: Path
) -> None:
    """Relative file names in cluster.toml name files next to it: a node started from
    another working directory finds its certificate and serves https."""
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    (etc / "tls").mkdir(parents=True)
    elsewhere.mkdir()
    for source in (certs.cert, certs.key):
        (etc / "tls" / source.name).write_bytes(source.read_bytes())
    relative = Certificates(ca=certs.ca, cert=Path("tls/node.pem"), key=Path("tls/node.key"))
    path = etc / "cluster.toml"
    path.write_text(config(relative))
    async with (
        tls_node(path, "rel", elsewhere) as url,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(certs))) as http,
        http.get(url + "/health") as resp,
    ):
        assert resp.status == 200
