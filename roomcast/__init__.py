"""roomcast: a horizontally scalable real-time server in the Socket.IO model.

The public names are imported lazily, so that ``import roomcast.protocol`` stays free of
asyncio, aiohttp and zmq.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roomcast.config import RecoverySettings, Settings, load
    from roomcast.errors import AckTimeoutError, ConnectRefusedError, DisconnectedError
    from roomcast.node.adapter import SocketInfo
    from roomcast.node.broadcast import BroadcastOperator
    from roomcast.node.server import Server
    from roomcast.node.sockets import Namespace, Socket

_EXPORTS = {
    "AckTimeoutError": "roomcast.errors",
    "BroadcastOperator": "roomcast.node.broadcast",
    "ConnectRefusedError": "roomcast.errors",
    "DisconnectedError": "roomcast.errors",
    "Namespace": "roomcast.node.sockets",
    "RecoverySettings": "roomcast.config",
    "Server": "roomcast.node.server",
    "Settings": "roomcast.config",
    "Socket": "roomcast.node.sockets",
    "SocketInfo": "roomcast.node.adapter",
    "load": "roomcast.config",
}

__all__ = [
    "AckTimeoutError",
    "BroadcastOperator",
    "ConnectRefusedError",
    "DisconnectedError",
    "Namespace",
    "RecoverySettings",
    "Server",
    "Settings",
    "Socket",
    "SocketInfo",
    "load",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'roomcast' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
