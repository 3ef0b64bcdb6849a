"""roomcast: a horizontally scalable real-time server in the Socket.IO model."""

from __future__ import annotations

from roomcast.config import Settings, load
from roomcast.errors import AckTimeoutError, ConnectRefusedError, DisconnectedError
from roomcast.node.server import Server
from roomcast.node.sockets import BroadcastOperator, Namespace, Socket, SocketInfo

__all__ = [
    "AckTimeoutError",
    "BroadcastOperator",
    "ConnectRefusedError",
    "DisconnectedError",
    "Namespace",
    "Server",
    "Settings",
    "Socket",
    "SocketInfo",
    "load",
]
__version__ = "0.1.0"
