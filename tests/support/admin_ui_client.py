"""A python-socketio client acting as socket.io's Admin UI: it logs in as the UI does (``auth``
with ``username`` and ``password``, or a ``sessionId``) and records what the server sends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import bcrypt
import socketio

from support.cluster_clients import Peer
from support.cluster_harness import TIMEOUT

ADMIN_NS = "/admin"
USERNAME = "admin"
PASSWORD = "let me in"
#: Few rounds: the tests check logins, not bcrypt's cost.
PASSWORD_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def admin_ui_config(**overrides: Any) -> str:
    """The ``[admin_ui]`` section of the tests' ``cluster.toml``."""
    keys: dict[str, Any] = {
        "enabled": True,
        "username": USERNAME,
        "password_hash": PASSWORD_HASH,
        "stats_interval_ms": 200,
        **overrides,
    }
    lines = []
    for key, value in keys.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value!r}")
    return "[admin_ui]\n" + "\n".join(lines) + "\n"


class AdminPeer(Peer):
    """The UI's socket: every event of the admin namespace is recorded, and a refused login's
    ``connect_error`` data too."""

    def __init__(self, name: str, node: str, namespaces: list[str]) -> None:
        super().__init__(name, node, namespaces)
        self.connect_errors: list[Any] = []
        self.client.on("connect_error", self.connect_errors.append, namespace=ADMIN_NS)

    async def send(self, event: str, *args: Any) -> None:
        """Send a command as the UI does (no ack)."""
        await self.client.emit(event, tuple(args), ADMIN_NS)

    def stats_of(self, server: str) -> list[dict[str, Any]]:
        """The ``server_stats`` received from node ``server``."""
        return [s for s in self.got("server_stats", ADMIN_NS) if s["serverId"] == server]


ConnectAdmin = Callable[..., Awaitable[AdminPeer]]


@contextlib.asynccontextmanager
async def admin_clients() -> AsyncIterator[ConnectAdmin]:
    """``admin = await connect_admin(url, auth)``; every client is disconnected at the end.
    A refused login raises python-socketio's ``ConnectionError`` (see :func:`refused_login`)."""
    peers: list[AdminPeer] = []

    async def connect(url: str, auth: dict[str, Any] | None = None, name: str = "ui") -> AdminPeer:
        peer = AdminPeer(name, url, [ADMIN_NS])
        peers.append(peer)
        await peer.client.connect(
            url,
            transports=["websocket"],
            namespaces=[ADMIN_NS],
            auth=auth if auth is not None else {"username": USERNAME, "password": PASSWORD},
            wait_timeout=TIMEOUT,
        )
        return peer

    try:
        yield connect
    finally:
        for peer in peers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.client.disconnect(), TIMEOUT)


async def refused_login(url: str, auth: dict[str, Any]) -> Any:
    """Log in with ``auth``, which must be refused; returns the ``connect_error`` data."""
    peer = AdminPeer("refused", url, [ADMIN_NS])
    try:
        await peer.client.connect(
            url, transports=["websocket"], namespaces=[ADMIN_NS], auth=auth, wait_timeout=TIMEOUT
        )
    except socketio.exceptions.ConnectionError:
        pass
    else:
        await peer.client.disconnect()
        raise AssertionError(f"login with {auth!r} was accepted")
    finally:
        await peer.client.disconnect()
    assert len(peer.connect_errors) == 1, peer.connect_errors
    return peer.connect_errors[0]
