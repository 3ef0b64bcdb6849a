"""Engine.IO protocol v4: packets, polling payloads and the per-client session state machine.

Sans-I/O (STYLE.md #1): nothing here awaits, reads the clock or touches a socket. The node's
transports feed bytes and the current time in, and write out what the session hands back.
Section references (§) are to ``docs/engine.io-protocol/v4-current.md`` of socket.io.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from roomcast.errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol import reasons
from roomcast.protocol.engineio_http import APPLICATION_JSON as APPLICATION_JSON
from roomcast.protocol.engineio_http import BAD_HANDSHAKE_METHOD as BAD_HANDSHAKE_METHOD
from roomcast.protocol.engineio_http import BAD_REQUEST as BAD_REQUEST
from roomcast.protocol.engineio_http import DRAINING as DRAINING
from roomcast.protocol.engineio_http import POST_OK as POST_OK
from roomcast.protocol.engineio_http import TEXT_HTML as TEXT_HTML
from roomcast.protocol.engineio_http import TEXT_PLAIN as TEXT_PLAIN
from roomcast.protocol.engineio_http import TOO_LARGE as TOO_LARGE
from roomcast.protocol.engineio_http import TRANSPORT_UNKNOWN as TRANSPORT_UNKNOWN
from roomcast.protocol.engineio_http import UNKNOWN_SID as UNKNOWN_SID
from roomcast.protocol.engineio_http import UNSUPPORTED_VERSION as UNSUPPORTED_VERSION
from roomcast.protocol.engineio_http import HttpError as HttpError
from roomcast.protocol.engineio_http import HttpReply as HttpReply
from roomcast.protocol.engineio_http import Refusal as Refusal

PROTOCOL_VERSION: Final = "4"
RECORD_SEPARATOR: Final = "\x1e"  # §Packet encoding / HTTP long-polling


class PacketType(enum.IntEnum):
    """Engine.IO packet types (§Packet types)."""

    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


class TransportKind(enum.Enum):
    """The two transports roomcast serves (§Transports)."""

    POLLING = "polling"
    WEBSOCKET = "websocket"


@dataclass(frozen=True, slots=True)
class Packet:
    """One Engine.IO packet; ``data`` is ``bytes`` only for a binary MESSAGE."""

    type: PacketType
    data: str | bytes = ""


PING: Final = Packet(PacketType.PING)
PONG: Final = Packet(PacketType.PONG)
NOOP: Final = Packet(PacketType.NOOP)
CLOSE: Final = Packet(PacketType.CLOSE)

_TYPE_BY_CHAR: Final = {str(t.value): t for t in PacketType}


def encode_text(packet: Packet) -> str:
    """Encode a packet for a text channel: a WebSocket text frame or a polling payload.

    Binary messages become ``b`` + base64 (§HTTP long-polling); on WebSocket they are sent as
    binary frames instead, see :func:`is_binary`.
    """
    if isinstance(packet.data, bytes):
        return "b" + base64.b64encode(packet.data).decode("ascii")
    return f"{packet.type.value}{packet.data}"


def encode_message(data: str) -> str:
    """Encode a text MESSAGE packet (the hot path: no dataclass allocation)."""
    return "4" + data


def decode_text(text: str) -> Packet:
    """Decode one text-encoded packet (from a WebSocket text frame or a polling payload).

    Raises :class:`RemoteProtocolError` (``parse error``) on anything malformed.
    """
    if not text:
        raise RemoteProtocolError(reasons.PARSE_ERROR, "empty packet")
    head = text[0]
    if head == "b":
        try:
            return Packet(PacketType.MESSAGE, base64.b64decode(text[1:], validate=True))
        except (binascii.Error, ValueError) as exc:
            raise RemoteProtocolError(reasons.PARSE_ERROR, "bad base64") from exc
    kind = _TYPE_BY_CHAR.get(head)
    if kind is None:
        raise RemoteProtocolError(reasons.PARSE_ERROR, "unknown packet type")
    return Packet(kind, text[1:])


def decode_binary_frame(data: bytes) -> Packet:
    """A WebSocket binary frame is a binary MESSAGE (§WebSocket: no type prefix)."""
    return Packet(PacketType.MESSAGE, bytes(data))


def encode_payload(texts: Iterable[str]) -> str:
    """Join already-encoded packets into one polling payload (§HTTP long-polling)."""
    return RECORD_SEPARATOR.join(texts)


def decode_payload(body: str, *, max_packets: int) -> list[Packet]:
    """Split a polling POST body into packets, refusing more than ``max_packets``."""
    if not body:
        raise RemoteProtocolError(reasons.PARSE_ERROR, "empty payload")
    if body.count(RECORD_SEPARATOR) >= max_packets:
        raise RemoteProtocolError(reasons.TOO_MANY_PACKETS, f"more than {max_packets}")
    return [decode_text(part) for part in body.split(RECORD_SEPARATOR)]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The Engine.IO parameters one server hands to each session (§Handshake)."""

    ping_interval_ms: int = 25_000
    ping_timeout_ms: int = 20_000
    max_payload: int = 1_000_000
    max_packets_per_body: int = 10_000
    max_buffered_packets: int = 1_000
    max_buffered_bytes: int = 4 * 1024 * 1024
    upgrade_timeout_ms: int = 10_000
    allow_upgrades: bool = True


# --- the session state machine ---------------------------------------------------------------
#
# One home for the rules (STYLE.md #2):
#
#   OPEN(transport=polling) --ws "2probe"--> UPGRADING --ws "5"--> OPEN(transport=websocket)
#   OPEN / UPGRADING --close()--> CLOSED
#
# * Only a polling session may start an upgrade, and only once (§Upgrade).
# * While UPGRADING the polling transport still carries traffic; a pending GET is answered with
#   NOOP so the client can finish the upgrade.
# * After the upgrade every polling request for the sid is refused, and so is a second
#   WebSocket for the same sid; the session itself stays open.
# * A heartbeat cycle: every ``ping_interval`` the server sends PING, and the client must answer
#   PONG within ``ping_timeout`` or the session closes with ``ping timeout`` (§Heartbeat).
# * CLOSED is final. Feeding a closed session is a LocalProtocolError.


class EngineState(enum.Enum):
    """Where one Engine.IO session is in its life."""

    OPEN = "open"
    UPGRADING = "upgrading"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """The client sent a MESSAGE packet (text or binary)."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session ended; ``reason`` is one of :mod:`roomcast.protocol.reasons`.

    ``notify_poll`` is what a pending polling GET must be answered with (CLOSE when the server
    ends the session, NOOP when the client asked to close, §Close); engine.io keeps the last
    words of a polling session for one more GET, for at most one ping timeout (``linger``).
    """

    reason: str
    notify_poll: Packet | None = None
    #: Keep the closed session for one more GET: a deliberate close left packets for it, or
    #: the client POSTed CLOSE while no GET was pending (one it had sent may still arrive,
    #: and gets NOOP as it would have had it come first).
    linger: bool = False


@dataclass(frozen=True, slots=True)
class SendPacket:
    """The session wants ``packet`` sent on its current transport."""

    packet: Packet


@dataclass(frozen=True, slots=True)
class UpgradeCompleted:
    """The WebSocket took over; the polling outbox (if any) must be flushed on it."""


EngineEvent = MessageReceived | SessionClosed | SendPacket | UpgradeCompleted


class EngineSession:
    """The state of one Engine.IO session. Time is a float in seconds, passed in."""

    __slots__ = (
        "_awaiting_pong",
        "_getting",
        "_next_deadline",
        "_notify",
        "_offered",
        "_outbox",
        "_outbox_size",
        "_posting",
        "close_reason",
        "settings",
        "sid",
        "state",
        "transport",
    )

    def __init__(
        self, sid: str, transport: TransportKind, settings: EngineSettings, now: float
    ) -> None:
        self.sid = sid
        self.transport = transport
        self.settings = settings
        self.state = EngineState.OPEN
        self.close_reason: str | None = None
        self._outbox: list[str] = []  # polling-encoded packets waiting for a GET
        self._outbox_size = 0
        self._awaiting_pong = False
        self._next_deadline = now + settings.ping_interval_ms / 1000
        self._getting = False  # a polling GET is held open
        self._posting = False  # a polling POST is being read
        self._notify: Packet | None = None  # what a GET gets once the session is closed
        self._offered = False  # a WebSocket offered to take this polling session over

    # -- handshake ----------------------------------------------------------------------------

    def open_packet(self) -> str:
        """The OPEN packet that starts the session (§Handshake); times in integer ms."""
        upgrades = (
            ["websocket"]
            if self.transport is TransportKind.POLLING and self.settings.allow_upgrades
            else []
        )
        body = {
            "sid": self.sid,
            "upgrades": upgrades,
            "pingInterval": self.settings.ping_interval_ms,
            "pingTimeout": self.settings.ping_timeout_ms,
            "maxPayload": self.settings.max_payload,
        }
        return "0" + json.dumps(body, separators=(",", ":"))

    # -- input from the client ----------------------------------------------------------------

    def receive(self, packet: Packet, now: float) -> list[EngineEvent]:
        """Feed one packet received on the session's current transport."""
        self._require_live()
        kind = packet.type
        if kind is PacketType.MESSAGE:
            return [MessageReceived(packet.data)]
        if kind is PacketType.PONG:
            if self._awaiting_pong:
                self._awaiting_pong = False
                self._next_deadline = now + self.settings.ping_interval_ms / 1000
            return []
        if kind is PacketType.CLOSE:
            return [self._close(reasons.TRANSPORT_CLOSE, NOOP)]
        if kind is PacketType.NOOP:
            return []
        # OPEN, PING (a v3 client) or a stray UPGRADE on the main transport.
        raise RemoteProtocolError(reasons.PARSE_ERROR, f"unexpected {kind.name} packet")

    def receive_payload(self, body: str, now: float) -> list[EngineEvent]:
        """Feed a whole polling POST body; limits are enforced before any packet is handled."""
        self._require_live()
        events: list[EngineEvent] = []
        for packet in decode_payload(body, max_packets=self.settings.max_packets_per_body):
            events.extend(self.receive(packet, now))
            if self.state is EngineState.CLOSED:
                break
        return events

    # -- upgrade (§Upgrade) -------------------------------------------------------------------

    def can_upgrade(self) -> bool:
        """Whether a WebSocket presenting this sid may start an upgrade (not while another
        one is upgrading it)."""
        return (
            self.state is EngineState.OPEN
            and self.transport is TransportKind.POLLING
            and self.settings.allow_upgrades
            and not self._offered
        )

    def offer_upgrade(self) -> bool:
        """A WebSocket offers to take the session over; returns whether it may try."""
        if not self.can_upgrade():
            return False
        self._offered = True
        return True

    def receive_probe(self, packet: Packet) -> list[EngineEvent]:
        """Feed a packet that arrived on the WebSocket that is upgrading this session."""
        self._require_live()
        if packet.type is PacketType.PING and packet.data == "probe":
            if not self._offered or self.state is not EngineState.OPEN:
                raise RemoteProtocolError(reasons.UPGRADE_FAILED, "probe in wrong state")
            self.state = EngineState.UPGRADING
            return [SendPacket(Packet(PacketType.PONG, "probe"))]
        if packet.type is PacketType.UPGRADE and self.state is EngineState.UPGRADING:
            self.state = EngineState.OPEN
            self.transport = TransportKind.WEBSOCKET
            self._offered = False
            return [UpgradeCompleted()]
        raise RemoteProtocolError(reasons.UPGRADE_FAILED, f"{packet.type.name} during upgrade")

    def abort_upgrade(self) -> None:
        """The upgrading WebSocket went away before ``5``: stay on polling."""
        self._offered = False
        if self.state is EngineState.UPGRADING:
            self.state = EngineState.OPEN

    @property
    def upgrading(self) -> bool:
        """True between a probe and the UPGRADE packet: pending GETs are answered with NOOP."""
        return self.state is EngineState.UPGRADING

    # -- output -------------------------------------------------------------------------------

    def buffer(self, text: str) -> None:
        """Queue an encoded packet for the next polling GET.

        Past ``max_buffered_packets`` packets or ``max_buffered_bytes`` characters the client
        is not reading: that is a limit breach.
        """
        self._require_live()
        if len(self._outbox) >= self.settings.max_buffered_packets:
            raise RemoteProtocolError(reasons.SEND_BUFFER_FULL, "polling outbox full")
        size = self._outbox_size + len(text)
        if self._outbox and size > self.settings.max_buffered_bytes:  # one big packet may go
            raise RemoteProtocolError(reasons.SEND_BUFFER_FULL, "polling outbox too large")
        self._outbox_size = size
        self._outbox.append(text)

    def has_outbox(self) -> bool:
        """Whether a GET would be answered at once."""
        return bool(self._outbox)

    def take_outbox(self) -> list[str]:
        """Hand over every queued packet (for one GET, or for the WebSocket after upgrade)."""
        out, self._outbox = self._outbox, []
        self._outbox_size = 0
        return out

    # -- HTTP long-polling requests -----------------------------------------------------------
    #
    # One GET and one POST at a time: a second of either closes the session (``duplicate
    # poll``). A GET is answered at once with the outbox, or with NOOP while a WebSocket is
    # upgrading the session; otherwise it waits for something to send. Once the session is
    # closed, a GET gets what a deliberate close left queued, then CLOSE in the GET after
    # (engine.io does the same: socket.io-client handles packets a tick late, so a CLOSE in the
    # same payload would overtake the DISCONNECTs before it).

    def begin_get(self) -> HttpReply | Refusal | None:
        """A polling GET arrived: its answer now, a refusal, or None (it waits; answer it with
        :meth:`end_get` when woken)."""
        if self._getting:
            return Refusal(reasons.DUPLICATE_POLL, HttpReply.error(BAD_REQUEST))
        if self.state is EngineState.CLOSED:
            return self.last_words()
        if self._outbox:
            return HttpReply.payload(encode_payload(self.take_outbox()))
        if self.state is EngineState.UPGRADING:
            return HttpReply.payload(encode_text(NOOP))
        self._getting = True
        return None

    def end_get(self, woken_by: Packet | None) -> HttpReply:
        """Answer the waiting GET, woken by a write (None) or with a packet to send (NOOP for
        an upgrade, CLOSE or NOOP when the session closed)."""
        self._getting = False
        notify = self._notify if self.state is EngineState.CLOSED else woken_by
        if notify is not None:
            if notify.type is PacketType.CLOSE:
                return self.last_words()
            out = self.take_outbox()
            return HttpReply.payload(encode_payload(out or [encode_text(notify)]))
        return HttpReply.payload(encode_payload(self.take_outbox()))

    def abort_get(self) -> str:
        """The client went away with its GET pending: the session cannot know what was
        delivered, so it ends; returns the reason."""
        self._getting = False
        return reasons.POLL_ABORTED

    @property
    def get_waiting(self) -> bool:
        """Whether a GET is held open."""
        return self._getting

    def last_words(self) -> HttpReply:
        """A GET of a closed session: what a deliberate close left queued (the session lingers
        for the GET after), else its CLOSE (or NOOP when the client closed)."""
        out = self.take_outbox()
        if out:
            return HttpReply.payload(encode_payload(out), linger=True)
        return HttpReply.payload(encode_text(self._notify or CLOSE))

    def begin_post(self, content_length: int | None) -> Refusal | None:
        """A polling POST arrived: a refusal, or None (read its body, then :meth:`end_post`)."""
        if self._posting:
            return Refusal(reasons.DUPLICATE_POLL, HttpReply.error(BAD_REQUEST), "concurrent POST")
        if content_length is not None and content_length > self.settings.max_payload:
            return Refusal(reasons.PAYLOAD_TOO_LARGE, TOO_LARGE)
        self._posting = True
        return None

    def abort_post(self) -> None:
        """The POST's body never came whole (the client went away)."""
        self._posting = False

    def end_post(
        self, body: bytes | None, now: float
    ) -> tuple[HttpReply | Refusal, list[EngineEvent]]:
        """The POST's body (None: it grew past ``max_payload``): its answer, and the events its
        packets make."""
        self._posting = False
        if body is None:
            return Refusal(reasons.PAYLOAD_TOO_LARGE, TOO_LARGE), []
        if self.state is EngineState.CLOSED:
            return HttpReply.error(UNKNOWN_SID), []
        try:
            events = self.receive_payload(body.decode("utf-8"), now)
        except RemoteProtocolError as exc:
            return Refusal(exc.reason, HttpReply.error(BAD_REQUEST), exc.detail), []
        except UnicodeDecodeError:
            return Refusal(reasons.PARSE_ERROR, HttpReply.error(BAD_REQUEST), "invalid UTF-8"), []
        return POST_OK, events

    # -- time ---------------------------------------------------------------------------------

    @property
    def next_deadline(self) -> float:
        """When :meth:`on_timer` must be called next."""
        return self._next_deadline

    def on_timer(self, now: float) -> list[EngineEvent]:
        """Advance the heartbeat: send a PING when due, or close on a missing PONG."""
        if self.state is EngineState.CLOSED or now < self._next_deadline:
            return []
        if self._awaiting_pong:
            return [self._close(reasons.PING_TIMEOUT, CLOSE)]
        self._awaiting_pong = True
        self._next_deadline = now + self.settings.ping_timeout_ms / 1000
        return [SendPacket(PING)]

    # -- close --------------------------------------------------------------------------------

    def close(self, reason: str, *, flush: bool = False) -> SessionClosed:
        """Close the session from the server side (idempotent: a second call changes nothing).

        ``flush=True`` (a deliberate close, not an error) keeps the outbox: a polling client
        still receives what was queued, then CLOSE, on its next GET.
        """
        if self.state is EngineState.CLOSED:
            return SessionClosed(self.close_reason or reason)
        return self._close(reason, CLOSE, keep_outbox=flush)

    @property
    def closed(self) -> bool:
        """Whether the session has ended."""
        return self.state is EngineState.CLOSED

    def _close(self, reason: str, notify: Packet, keep_outbox: bool = False) -> SessionClosed:
        idle_poll = self.transport is TransportKind.POLLING and not self._getting
        client_closed = notify is NOOP and not self._offered
        linger = idle_poll and (keep_outbox or client_closed)
        self.state = EngineState.CLOSED
        self.close_reason = reason
        self._notify = notify
        if not keep_outbox:
            self._outbox.clear()
            self._outbox_size = 0
        return SessionClosed(reason, notify, linger)

    def _require_live(self) -> None:
        if self.state is EngineState.CLOSED:
            raise LocalProtocolError("closed", f"session {self.sid} is closed")
