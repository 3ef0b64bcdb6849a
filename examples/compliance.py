"""The app the official Engine.IO v4 / Socket.IO v5 server test suites expect.

Run it with ``make compliance-server`` (localhost:3000), then the suites with
``make compliance PROTOCOL_SUITES=/path/to/socket.io``.

* ``/engine.io/`` is a raw Engine.IO echo endpoint;
* ``/socket.io/`` serves namespaces ``/`` and ``/custom``: on connect the server emits
  ``auth`` with the client's auth payload, ``message`` is answered by ``message-back`` with the
  same arguments, and ``message-with-ack`` is acknowledged with its arguments.
* pingInterval 300 ms, pingTimeout 200 ms.
"""

from __future__ import annotations

import asyncio
from typing import Any

import roomcast
from roomcast.node.engine import Connection
from roomcast.node.server import Server
from roomcast.protocol import engineio as eio

SETTINGS = roomcast.Settings().replace(
    **{
        "node.port": 3000,
        "node.host": "localhost",
        "engineio.ping_interval_ms": 300,
        "engineio.ping_timeout_ms": 200,
        "namespaces": {"/": {}, "/custom": {}},
    }
)


class Echo:
    """A bare Engine.IO client: every MESSAGE is sent straight back."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def on_message(self, data: str | bytes) -> None:
        self.conn.send_engine(eio.Packet(eio.PacketType.MESSAGE, data))

    def on_close(self, reason: str) -> None:
        pass

    def on_upgrade(self) -> None:
        pass


class EchoServer(Server):
    """A bare Engine.IO endpoint (no Socket.IO on top)."""

    def new_client(self, conn: Connection) -> Echo:
        return Echo(conn)


def setup(server: Server) -> None:
    """Register the handlers both suites exercise, on ``/`` and ``/custom``."""

    def on_connect(socket: roomcast.Socket, auth: Any) -> None:
        socket.emit("auth", auth)

    def message(socket: roomcast.Socket, *args: Any) -> None:
        socket.emit("message-back", *args)

    def message_with_ack(socket: roomcast.Socket, *args: Any) -> tuple[Any, ...]:
        return args

    for name in ("/", "/custom"):
        ns = server.of(name)
        ns.on("connect", on_connect)
        ns.on("message", message)
        ns.on("message-with-ack", message_with_ack)


async def main() -> None:
    server = Server(SETTINGS)
    setup(server)
    echo = EchoServer(SETTINGS.replace(**{"node.path": "/engine.io/"}))
    server.app.router.add_route("*", "/engine.io/", echo.endpoint.handle)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
