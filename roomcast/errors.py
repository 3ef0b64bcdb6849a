"""The one error tree of roomcast.

As in h11, protocol errors are split by whose fault they are:
:class:`RemoteProtocolError` means a peer sent something we refuse (the session that sent it is
closed with :attr:`~RemoteProtocolError.reason`), :class:`LocalProtocolError` means our own code
asked for something the protocol forbids. Neither carries text that is sent back to a peer.
"""

from __future__ import annotations

from typing import Any


class RoomcastError(Exception):
    """Base class of every error roomcast raises on purpose."""


class ConfigError(RoomcastError):
    """A configuration value is missing, unknown or invalid; the message names the dotted key."""


class ProtocolError(RoomcastError):
    """Base class of Engine.IO / Socket.IO protocol violations."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        #: A named disconnect reason (one of :mod:`roomcast.protocol.reasons`).
        self.reason = reason
        #: Text for logs only; never sent to a peer.
        self.detail = detail


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol or a limit; its session must be closed with ``reason``."""


class LocalProtocolError(ProtocolError):
    """Our own code attempted something the protocol state machine forbids."""


class ConnectRefusedError(RoomcastError):
    """Raised by middleware or a ``connect`` handler to refuse a namespace connection.

    The client receives ``CONNECT_ERROR`` with ``{"message": message}`` and, when given,
    ``"data": data``.
    """

    def __init__(self, message: str = "Connection rejected by server", data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class RoomRefusedError(RoomcastError, ValueError):
    """A room name that may not be joined: it names a socket (its private room)."""

    def __init__(self, room: str) -> None:
        super().__init__(f"room {room!r} is a socket id")
        self.room = room


class AckTimeoutError(RoomcastError):
    """An acknowledgement did not arrive before its deadline.

    For a broadcast, ``responses`` holds the answers that did arrive in time.
    """

    def __init__(self, message: str, responses: list[Any] | None = None) -> None:
        super().__init__(message)
        self.responses: list[Any] = responses or []


class DisconnectedError(RoomcastError):
    """The socket was disconnected before the operation could complete."""


class ClusterTimeoutError(RoomcastError):
    """Some nodes did not answer a cluster request in time; ``missing`` names them and
    ``partial`` holds the answers that did come (node -> answer)."""

    def __init__(self, op: str, missing: set[str], partial: dict[Any, Any]) -> None:
        super().__init__(f"{op}: no answer from {', '.join(sorted(missing))}")
        self.missing = missing
        self.partial = partial


class ClusterRequestError(RoomcastError):
    """Another node failed to serve a cluster request; ``node`` names it and ``error`` is the
    name of the error it reported."""

    def __init__(self, op: str, node: str, error: str) -> None:
        super().__init__(f"{op}: node {node} failed: {error}")
        self.node = node
        self.error = error


class RecoveryRefusedError(RoomcastError):
    """A session cannot be recovered exactly; ``reason`` names why (one of the refusal reasons
    of :mod:`roomcast.node.recovery`). The client gets a fresh session instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
