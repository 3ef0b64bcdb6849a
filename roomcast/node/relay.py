"""The built-in relay: what a node with no app code lets clients do, per namespace policy.

Client-side contract (also in the README):

* ``join`` with a room name or a list of names, ack ``{"ok": true, "rooms": [...]}`` (every room
  the socket is now in, its sid room excluded) or ``{"ok": false, "error": "<reason>"}``;
* ``leave``, the same shape;
* ``publish`` with ``{"room": name or [names], "event": name, "data": any}``, ack
  ``{"ok": true}`` or ``{"ok": false, "error": ...}``; every member of those rooms, once, gets
  ``event`` with ``data`` as its one argument. The publisher does not, unless ``echo`` is on.

Auth (``auth = "secret"`` or ``"jwt"``) checks the ``token`` of the client's ``auth`` payload on
connect and refuses with ``CONNECT_ERROR {"message": "unauthorized", "data": {"reason": ...}}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from typing import TYPE_CHECKING, Any

from roomcast.cluster.routing import Target
from roomcast.config import LimitSettings, NamespacePolicy
from roomcast.errors import ConnectRefusedError, DisconnectedError, RoomRefusedError
from roomcast.protocol.socketio import RESERVED_EVENTS

from .broadcast import BroadcastOperator

if TYPE_CHECKING:
    from roomcast.node.sockets import Namespace, Socket


EMPTY: frozenset[str] = frozenset()


class TokenError(Exception):
    """A token was refused; ``str(exc)`` is the reason given to the client."""


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_hs256(token: str, secret: str, now: float) -> dict[str, Any]:
    """Verify a JWT signed with HS256 (RFC 7519, RFC 7515 §A.1) and return its claims.

    ``exp`` and ``nbf`` are checked against ``now`` (seconds since the epoch).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token")
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise TokenError("malformed token") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("unsupported algorithm")
    if not isinstance(claims, dict):
        raise TokenError("malformed token")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
    expected = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise TokenError("invalid signature")
    exp = claims.get("exp")
    if exp is not None and (not isinstance(exp, int | float) or now >= exp):
        raise TokenError("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int | float) or now < nbf):
        raise TokenError("token not yet valid")
    return claims


def sign_hs256(claims: dict[str, Any], secret: str) -> str:
    """Make an HS256 JWT (for tools and tests that need a token for a ``jwt`` namespace)."""

    def enc(obj: dict[str, Any]) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = enc({"alg": "HS256", "typ": "JWT"})
    body = enc(claims)
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def _refuse(reason: str) -> ConnectRefusedError:
    return ConnectRefusedError("unauthorized", {"reason": reason})


def _nack(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


class Relay:
    """The relay handlers of one namespace, configured by its :class:`NamespacePolicy`."""

    def __init__(self, policy: NamespacePolicy, limits: LimitSettings) -> None:
        self.policy = policy
        self.limits = limits
        self._pattern = re.compile(policy.room_pattern) if policy.room_pattern else None

    def authenticate(self, socket: Socket, auth: Any) -> None:
        """Middleware: check the ``token`` of the auth payload against the policy."""
        policy = self.policy
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            raise _refuse("missing token")
        if policy.auth == "secret":
            if not hmac.compare_digest(token.encode(), policy.secret.encode()):
                raise _refuse("invalid token")
            return
        try:
            claims = verify_hs256(token, policy.secret, time.time())
        except TokenError as exc:
            raise _refuse(str(exc)) from None
        socket.data["claims"] = claims
        if isinstance(claims.get("sub"), str):
            socket.data["user"] = claims["sub"]

    def _rooms_arg(self, socket: Socket, value: Any) -> list[str] | str:
        """Validate a room or list of rooms; returns the names, or an error string."""
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names:
            return "room must be a name or a non-empty list of names"
        for name in names:
            if not isinstance(name, str) or not name:
                return "room names must be non-empty strings"
            if len(name) > self.limits.max_room_name_length:
                return "room name too long"
            if self._pattern is not None and not self._pattern.fullmatch(name):
                return f"room not allowed: {name}"
        return names

    def _rooms_ack(self, socket: Socket) -> dict[str, Any]:
        return {"ok": True, "rooms": sorted(r for r in socket.rooms if r != socket.sid)}

    async def join(self, socket: Socket, rooms: Any = None, *_: Any) -> dict[str, Any]:
        """``join``: enter one or several rooms."""
        if not self.policy.client_join:
            return _nack("join not allowed")
        names = self._rooms_arg(socket, rooms)
        if isinstance(names, str):
            return _nack(names)
        try:
            await socket.join(names)
        except RoomRefusedError as exc:  # a sid: a socket's private room, on any node
            return _nack(f"room not allowed: {exc.room}")
        except DisconnectedError as exc:
            return _nack(str(exc))
        return self._rooms_ack(socket)

    async def leave(self, socket: Socket, rooms: Any = None, *_: Any) -> dict[str, Any]:
        """``leave``: exit one or several rooms."""
        if not self.policy.client_leave:
            return _nack("leave not allowed")
        names = self._rooms_arg(socket, rooms)
        if isinstance(names, str):
            return _nack(names)
        await socket.leave(names)
        return self._rooms_ack(socket)

    def publish(self, socket: Socket, message: Any = None, *_: Any) -> dict[str, Any]:
        """``publish``: send an event to every member of some rooms, once each."""
        policy = self.policy
        if policy.publish == "none":
            return _nack("publish not allowed")
        if not isinstance(message, dict):
            return _nack("publish takes {room, event, data}")
        room = message.get("room")
        if isinstance(room, list) and len(room) > self.limits.max_rooms_per_publish:
            return _nack("too many rooms")
        names = self._rooms_arg(socket, room)
        if isinstance(names, str):
            return _nack(names)
        event = message.get("event")
        if not isinstance(event, str) or not event or event in RESERVED_EVENTS:
            return _nack("event must be a non-reserved name")
        if len(event) > self.limits.max_event_name_length:
            return _nack("event name too long")
        if policy.publish == "members":
            for name in names:
                if name not in socket.rooms:
                    return _nack(f"not a member of {name}")
        # The operator built at once (the hot path of a relayed publish), not by chaining.
        ns = socket.namespace
        target = Target(
            ns.name, frozenset(names), EMPTY, EMPTY if policy.echo else frozenset((socket.sid,))
        )
        BroadcastOperator(ns.services.adapter, target).emit(event, message.get("data"))
        return {"ok": True}


def install(ns: Namespace, policy: NamespacePolicy, limits: LimitSettings) -> Relay:
    """Register the relay's handlers (and auth middleware) on ``ns``."""
    relay = Relay(policy, limits)
    if policy.auth != "none":
        ns.use(relay.authenticate)
    ns.on("join", relay.join)
    ns.on("leave", relay.leave)
    ns.on("publish", relay.publish)
    return relay
