"""The router's door with CURVE on: who is let in, who was refused, and cutting the revoked.

:class:`Guard` makes the router's XSUB and XPUB sockets CURVE servers and answers ZeroMQ's
ZAP requests (ZeroMQ RFC 27) itself, on ``inproc://zeromq.zap.01`` in the router's context:
a client whose public key is among the allowed ones is let in, any other is refused.
Refusals by ZAP are counted as they are answered (before the peer can know of them); a socket
monitor on both sockets counts the handshakes that fail for other reasons: a peer without
CURVE (a process with no key: the mechanisms differ), a handshake that does not decrypt (a
client expecting another router key, or garbage). A refused peer gets no connection, so it
can neither publish nor subscribe.

Everything here but :attr:`Guard.allowed` lives in the router's forwarding thread (ZeroMQ
sockets never cross threads): the thread polls :meth:`Guard.sockets` with its own and calls
:meth:`Guard.handle`. ``allowed`` is a frozenset replaced whole when the router reloads its
keys (SIGHUP), which the next ZAP request sees.

**Revoking a key.** ZeroMQ checks a key once, at the handshake, and has no call to close one
peer's connection. So when a reload removes keys, :meth:`Guard.cut` shuts down (at the TCP
level) every connection of the router that comes from an address one of those keys connected
from: their peers reconnect at once and go through ZAP again, and the revoked ones are refused.
Other peers on such an address (several processes on one host) reconnect as after a router
restart: their messages in flight are lost and counted as gaps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from roomcast.cluster import curve
from roomcast.cluster.curve import ServerKeys

log = logging.getLogger("roomcast.router")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  #: where ZeroMQ looks for its ZAP handler (RFC 27)

#: Why a handshake failed (the keys of :attr:`Guard.refused`).
KEY_NOT_ALLOWED = "key not allowed"
#: The peer does not speak CURVE (a process without keys), as the router noticed; when the
#: peer notices first and hangs up, the router sees a :data:`BAD_HANDSHAKE`.
NO_CURVE = "no curve"
#: Broken off or undecryptable: a client expecting another router key, a peer that hung up
#: in the middle, garbage.
BAD_HANDSHAKE = "bad handshake"

_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)
_MAX_ADDRESSES = 65_536  #: addresses whose let-in keys are remembered (for cutting)
_LOG_EVERY = 1.0  #: seconds: refusals are logged at most this often (a flood is summed up)


class Guard:
    """The ZAP handler and handshake counters of one router (see the module's docstring)."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], keys: ServerKeys, allowed: frozenset[bytes]
    ) -> None:
        self.keys = keys
        #: The public keys let in (Z85); replaced whole by a reload.
        self.allowed = allowed
        #: Failed handshakes, by reason (every reason present: HTTP handlers read it while the
        #: forwarding thread counts, so it must never change size).
        self.refused = dict.fromkeys((KEY_NOT_ALLOWED, NO_CURVE, BAD_HANDSHAKE), 0)
        self.accepted = 0  #: handshakes that succeeded
        self.cut_connections = 0  #: connections cut because their key was revoked
        self._zap = ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        # Bound before any CURVE socket binds: without a handler, ZeroMQ lets every key in.
        self._zap.bind(ZAP_ENDPOINT)
        self._monitors: list[zmq.Socket[bytes]] = []
        self._ports: set[int] = set()
        self._fds: set[int] = set()  # connections accepted and not gone (for cutting)
        self._keys_at: dict[str, set[bytes]] = {}  # address -> keys let in from it
        self._last_log = 0.0
        self._unlogged = 0

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server watched by this guard (before it binds)."""
        curve.make_server(sock, self.keys.own)
        self._monitors.append(sock.get_monitor_socket(_EVENTS))

    def bound(self, port: int) -> None:
        """A secured socket listens on ``port`` (only connections to it are ever cut)."""
        self._ports.add(port)

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """What the forwarding thread polls for this guard."""
        return [self._zap, *self._monitors]

    def handle(self, ready: Iterable[zmq.Socket[bytes]]) -> None:
        """Answer the ZAP requests and read the monitor events that are waiting."""
        for sock in ready:
            if sock is self._zap:
                self._answer()
            elif sock in self._monitors:
                self._events(sock)

    def close(self) -> None:
        """Close the guard's sockets (the forwarding thread, on its way out)."""
        for monitor in self._monitors:
            monitor.close(0)
        self._zap.close(0)

    # -- ZAP ----------------------------------------------------------------------------------

    def _answer(self) -> None:
        while True:
            try:
                request = self._zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # version, request id, domain, address, routing id, mechanism, credentials...
            if len(request) < 7 or request[0] != b"1.0":
                # Only ZeroMQ itself talks to this socket; a REP socket must answer anyway.
                rid = request[1] if len(request) > 1 else b""
                self.refused[BAD_HANDSHAKE] += 1
                self._zap.send_multipart([b"1.0", rid, b"500", b"bad request", b"", b""])
                continue
            _, rid, _, address, _, mechanism, credential = request[:7]
            key = z85.encode(credential) if len(credential) == 32 else b""
            if mechanism == b"CURVE" and key in self.allowed:
                self._remember(address.decode(errors="replace"), key)
                self._zap.send_multipart([b"1.0", rid, b"200", b"OK", key, b""])
            else:
                # Counted here, before the answer: the peer learns of its refusal from this
                # answer, and the monitor's FAILED_AUTH event may come to us after it does.
                self.refused[KEY_NOT_ALLOWED] += 1
                self._note_refusal(address, key)
                self._zap.send_multipart([b"1.0", rid, b"400", b"key not allowed", b"", b""])

    def _remember(self, address: str, key: bytes) -> None:
        keys = self._keys_at.get(address)
        if keys is None:
            if len(self._keys_at) >= _MAX_ADDRESSES:
                del self._keys_at[next(iter(self._keys_at))]  # the oldest address
            keys = self._keys_at[address] = set()
        keys.add(key)

    def _note_refusal(self, address: bytes, key: bytes) -> None:
        now = time.monotonic()
        if now - self._last_log < _LOG_EVERY:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more refused since the last line)" if self._unlogged else ""
        log.warning(
            "refused a CURVE key from %s: %s is not in router.allowed_keys_dir%s",
            address.decode(errors="replace"),
            key.decode() or "(none)",
            more,
        )
        self._last_log, self._unlogged = now, 0

    # -- handshakes ---------------------------------------------------------------------------

    def _events(self, monitor: zmq.Socket[bytes]) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = int(event["event"]), int(event["value"])
            if kind == zmq.EVENT_ACCEPTED:
                self._fds.add(value)
            elif kind == zmq.EVENT_DISCONNECTED:
                self._fds.discard(value)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.accepted += 1
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                mismatch = value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                self.refused[NO_CURVE if mismatch else BAD_HANDSHAKE] += 1
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self.refused[BAD_HANDSHAKE] += 1

    def cut(self, revoked: frozenset[bytes]) -> int:
        """Shut down the connections from every address a key of ``revoked`` came in from
        (see the module's docstring); returns how many."""
        for monitor in self._monitors:  # the connections as they are now
            self._events(monitor)
        addresses = set()
        for address, keys in list(self._keys_at.items()):
            if keys & revoked:
                addresses.add(address)
                keys -= revoked
                if not keys:
                    del self._keys_at[address]
        cut = 0
        for fd in sorted(self._fds):
            if addresses and _shutdown_if(fd, addresses, self._ports):
                cut += 1
        self.cut_connections += cut
        return cut


def _shutdown_if(fd: int, addresses: set[str], ports: set[int]) -> bool:
    """Shut down the TCP connection on ``fd`` (ZeroMQ's) if its peer is at one of
    ``addresses`` and it was accepted on one of ``ports``. The descriptor is duplicated, never
    closed under ZeroMQ: shutting the connection down makes ZeroMQ see it end, and close it."""
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False  # gone meanwhile
    with dup:
        try:
            peer = dup.getpeername()
            local = dup.getsockname()
        except OSError:
            return False  # not a connected socket (any more)
        if not (isinstance(peer, tuple) and isinstance(local, tuple)):
            return False
        if peer[0] not in addresses or local[1] not in ports:
            return False
        with contextlib.suppress(OSError):
            dup.shutdown(socket.SHUT_RDWR)
            return True
    return False
