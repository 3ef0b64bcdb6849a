"""Socket.IO protocol v5: packets, binary attachments and the per-connection decoder.

Sans-I/O. Section references (§) are to ``docs/socket.io-protocol/v5-current.md``; the validity
rules follow socket.io-parser's ``isPayloadValid`` so that the official clients and this server
agree on what is malformed.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

from roomcast.errors import RemoteProtocolError
from roomcast.ids import ROOT_NAMESPACE as ROOT_NAMESPACE  # re-exported: part of this API
from roomcast.ids import Namespace as Namespace
from roomcast.protocol import reasons

#: Event names a client may not emit (socket.io-parser's RESERVED_EVENTS).
RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)

#: The largest ack id a peer may send: JavaScript's safe integer range.
MAX_ACK_ID: Final = 2**53 - 1


class PacketType(enum.IntEnum):
    """Socket.IO packet types (§Packet types)."""

    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded Socket.IO packet with its binary attachments already put back in ``data``."""

    type: PacketType
    namespace: Namespace = ROOT_NAMESPACE
    data: Any = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Encoded:
    """An encoded packet: the text part and its binary attachments, in order.

    This is what a broadcast carries: it is built once and written to every recipient.
    """

    text: str
    attachments: tuple[bytes, ...] = ()


def _make_encode() -> Any:
    # json's C encoder, built once: JSONEncoder.encode re-dispatches through iterencode on
    # every call, which costs more than the encoding itself for small payloads.
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def _unsupported(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    make = c_make_encoder(
        None, _unsupported, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )

    def encode(value: Any) -> str:
        if type(value) is str:
            return json.encoder.encode_basestring(value)
        return "".join(make(value, 0))

    return encode


_encode = _make_encode()
# A str can hold a lone surrogate (a peer may send "\ud800" in JSON); written raw it is not
# UTF-8. JSON.stringify escapes them (well-formed JSON.stringify, ES2019), and so do we.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _dumps(value: Any) -> str:
    text: str = _encode(value)
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(_escape_surrogate, text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # JSON.parse refuses NaN and Infinity


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: JSON.stringify could not send it on to other clients
        raise ValueError("number out of range")
    return value


_loads = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode


def dumps(value: Any) -> str:
    """Compact JSON, as JavaScript's ``JSON.stringify`` writes it."""
    return _dumps(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})
_BINARY = (bytes, bytearray, memoryview)


def has_binary(value: Any) -> bool:
    """Whether ``value`` contains ``bytes`` anywhere (then it travels as attachments)."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t in _SCALARS:
            continue
        if t is dict:
            stack.extend(v.values())
        elif t is list or t is tuple:
            stack.extend(v)
        elif isinstance(v, _BINARY):
            return True
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return False


def _deconstruct(value: Any, out: list[bytes]) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        out.append(bytes(value))
        return {"_placeholder": True, "num": len(out) - 1}
    if isinstance(value, list | tuple):
        return [_deconstruct(v, out) for v in value]
    if isinstance(value, dict):
        return {k: _deconstruct(v, out) for k, v in value.items()}
    return value


def _reconstruct(value: Any, attachments: list[bytes]) -> Any:
    if isinstance(value, list):
        return [_reconstruct(v, attachments) for v in value]
    if isinstance(value, dict):
        if value.get("_placeholder") is True and len(value) == 2 and "num" in value:
            num = value["num"]
            if type(num) is not int or not 0 <= num < len(attachments):
                raise RemoteProtocolError(reasons.PARSE_ERROR, "placeholder out of range")
            return attachments[num]
        return {k: _reconstruct(v, attachments) for k, v in value.items()}
    return value


def _reconstructed(value: Any, attachments: list[bytes]) -> Any:
    try:
        return _reconstruct(value, attachments)
    except RecursionError as exc:
        raise RemoteProtocolError(reasons.PARSE_ERROR, "nesting too deep") from exc


def encode(packet: Packet) -> Encoded:
    """Encode a packet (§Packet encoding); EVENT/ACK with bytes become BINARY_*."""
    kind = packet.type
    data = packet.data
    attachments: list[bytes] = []
    if kind in (PacketType.EVENT, PacketType.ACK) and has_binary(data):
        kind = PacketType.BINARY_EVENT if kind is PacketType.EVENT else PacketType.BINARY_ACK
        data = _deconstruct(data, attachments)
    elif kind in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        data = _deconstruct(data, attachments)
    parts = [str(kind.value)]
    if kind in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        parts.append(f"{len(attachments)}-")
    if packet.namespace != ROOT_NAMESPACE:
        parts.append(packet.namespace)
        parts.append(",")
    if packet.id is not None:
        parts.append(str(packet.id))
    if data is not None:
        parts.append(_dumps(data))
    return Encoded("".join(parts), tuple(attachments))


def encode_event(
    namespace: str, event: str, args: tuple[Any, ...] | list[Any], ack_id: int | None = None
) -> Encoded:
    """Encode an EVENT; the fast path for text-only arguments allocates no :class:`Packet`."""
    payload = [event, *args]
    if has_binary(args):
        return encode(Packet(PacketType.EVENT, Namespace(namespace), payload, ack_id))
    head = "2" if namespace == "/" else f"2{namespace},"
    if ack_id is not None:
        head += str(ack_id)
    return Encoded(head + _dumps(payload))


def append_offset(text: str, offset: str) -> str | None:
    """The text of an EVENT with ``offset`` appended as its last argument, or None when
    ``text`` is not an EVENT or BINARY_EVENT without an ack id (§Packet encoding).

    Connection state recovery (Socket.IO >= 4.6) carries each broadcast's offset this way: the
    client keeps the last string argument of the events it handles, and presents it when it
    reconnects. ``offset`` must need no JSON escaping (offsets are URL-safe characters). The
    arguments are not decoded: the offset goes in before the array's closing bracket.
    """
    if not text.endswith("]"):
        return None
    kind = text[:1]
    i = 1
    if kind == "5":
        i = text.find("-", 1) + 1  # the attachment count
        if i == 0:
            return None
    elif kind != "2":
        return None
    if text.startswith("/", i):
        i = text.find(",", i) + 1
        if i == 0:
            return None
    # An ack id would be digits here: an event with an ack is answered, never replayed.
    if not text.startswith("[", i):
        return None
    return f'{text[:-1]},"{offset}"]'


def strip_offset(text: str, offset: str) -> str | None:
    """The text of an EVENT that :func:`append_offset` gave ``offset``, without it (None when
    ``text`` does not end with that offset): a node handing a session over sends its packets
    as it wrote them, and the new node numbers them itself."""
    suffix = f',"{offset}"]'
    if not text.endswith(suffix):
        return None
    return text[: -len(suffix)] + "]"


def _payload_valid(kind: PacketType, payload: Any) -> bool:
    # socket.io-parser's Decoder.isPayloadValid, rule for rule.
    if kind is PacketType.CONNECT:
        return payload is None or isinstance(payload, dict)
    if kind is PacketType.DISCONNECT:
        return payload is None
    if kind is PacketType.CONNECT_ERROR:
        return isinstance(payload, str | dict)
    if kind in (PacketType.EVENT, PacketType.BINARY_EVENT):
        return (
            isinstance(payload, list)
            and len(payload) > 0
            and (
                (isinstance(payload[0], int | float) and not isinstance(payload[0], bool))
                or (isinstance(payload[0], str) and payload[0] not in RESERVED_EVENTS)
            )
        )
    return isinstance(payload, list)  # ACK, BINARY_ACK


@dataclass(slots=True)
class _Partial:
    packet: Packet
    expected: int
    received: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DecoderLimits:
    """Limits the decoder enforces on every packet (values come from config)."""

    max_attachments: int = 10
    max_ack_id: int = MAX_ACK_ID


class Decoder:
    """Turns Engine.IO messages into Socket.IO packets, one connection's worth.

    Text messages start a packet; a BINARY_* header is followed by exactly as many binary
    messages as it announces (§Packet encoding, binary). Anything else is a
    :class:`RemoteProtocolError` whose reason names the breach.
    """

    __slots__ = ("_limits", "_partial")

    def __init__(self, limits: DecoderLimits | None = None) -> None:
        self._limits = limits or DecoderLimits()
        self._partial: _Partial | None = None

    @property
    def awaiting_attachments(self) -> bool:
        """Whether binary attachments are still expected."""
        return self._partial is not None

    def feed(self, message: str | bytes) -> Packet | None:
        """Feed one Engine.IO message; returns a complete packet, or None while attachments
        are still due."""
        if isinstance(message, str):
            if self._partial is not None:
                raise RemoteProtocolError(reasons.PARSE_ERROR, "text while awaiting attachments")
            packet, expected = self._decode_text(message)
            if expected == 0:
                if packet.type in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
                    # socket.io-parser accepts "50-[...]"; any placeholder in it is dangling.
                    data = _reconstructed(packet.data, [])
                    return Packet(packet.type, packet.namespace, data, packet.id)
                return packet
            self._partial = _Partial(packet, expected)
            return None
        partial = self._partial
        if partial is None:
            raise RemoteProtocolError(reasons.PARSE_ERROR, "unexpected binary message")
        partial.received.append(bytes(message))
        if len(partial.received) < partial.expected:
            return None
        self._partial = None
        p = partial.packet
        return Packet(p.type, p.namespace, _reconstructed(p.data, partial.received), p.id)

    def _decode_text(self, text: str) -> tuple[Packet, int]:
        if not text or not "0" <= text[0] <= "6":
            raise RemoteProtocolError(reasons.PARSE_ERROR, "unknown packet type")
        kind = PacketType(ord(text[0]) - 48)
        i = 1
        n = len(text)
        attachments = 0
        if kind in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
            dash = text.find("-", 1)
            digits = text[1:dash] if dash > 0 else ""
            if not digits.isdigit() or not digits.isascii():
                raise RemoteProtocolError(reasons.PARSE_ERROR, "bad attachment count")
            if len(digits) > 6 or int(digits) > self._limits.max_attachments:
                raise RemoteProtocolError(reasons.TOO_MANY_ATTACHMENTS, digits[:12])
            attachments = int(digits)
            i = dash + 1
        namespace = ROOT_NAMESPACE
        if i < n and text[i] == "/":
            comma = text.find(",", i)
            end = n if comma < 0 else comma
            namespace = Namespace(text[i:end])
            i = end + 1 if comma >= 0 else n
        ack_id: int | None = None
        start = i
        while i < n and "0" <= text[i] <= "9":
            i += 1
        if i > start:
            digits = text[start:i]
            if len(digits) > 16 or int(digits) > self._limits.max_ack_id:
                raise RemoteProtocolError(reasons.INVALID_ACK_ID, digits[:20])
            ack_id = int(digits)
        payload: Any = None
        if i < n:
            try:
                payload = _loads(text[i:])
            except (ValueError, RecursionError) as exc:  # nesting deep enough to recurse out
                raise RemoteProtocolError(reasons.PARSE_ERROR, "invalid JSON payload") from exc
            if payload is None:  # an explicit null is valid for no type (isPayloadValid)
                raise RemoteProtocolError(reasons.PARSE_ERROR, f"invalid {kind.name} payload")
        if not _payload_valid(kind, payload):
            raise RemoteProtocolError(reasons.PARSE_ERROR, f"invalid {kind.name} payload")
        if ack_id is not None and kind not in (
            PacketType.EVENT,
            PacketType.BINARY_EVENT,
            PacketType.ACK,
            PacketType.BINARY_ACK,
        ):
            raise RemoteProtocolError(reasons.INVALID_ACK_ID, "ack id on a non-event packet")
        if ack_id is None and kind in (PacketType.ACK, PacketType.BINARY_ACK):
            raise RemoteProtocolError(reasons.INVALID_ACK_ID, "ACK without an id")
        return Packet(kind, namespace, payload, ack_id), attachments
