"""WebSocket (RFC 6455) from the server's side, sans-I/O: the handshake's accept key, the
frames a client sends, and the close and pong frames the server answers with.

The node writes its data frames with :mod:`roomcast.protocol.frames`; this module reads what a
client writes. :class:`FrameReader` takes bytes as they come off the socket and hands back the
complete messages and control frames in them; a frame that breaks the protocol or a limit ends
them as a :class:`FrameError` carrying the close code (§7.4.1) the connection must be closed
with (what came before it is still delivered, as it was by aiohttp).

The checks follow the WebSocket server roomcast ran on before (aiohttp's reader), so that a
client sees the same answers: unmasked client frames are accepted, a data message of
``max_message_size`` bytes or more is refused with 1009, invalid UTF-8 in a text message or a
close reason is refused with 1007, anything else malformed with 1002. Where aiohttp lets
through what RFC 6455 forbids, this refuses it with 1002: a length not in its minimal form or
a 64-bit length with its top bit set (§5.2), a close frame carrying 1006 (§7.4.1); and a
``Sec-WebSocket-Key`` outside the base64 grammar gets no accept key (§4.1).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from roomcast.errors import RemoteProtocolError
from roomcast.protocol import reasons
from roomcast.protocol.frames import ws_frame

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # §1.3

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA


class CloseCode(enum.IntEnum):
    """Close codes (§7.4.1)."""

    OK = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL_CLOSURE = 1006
    INVALID_TEXT = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


# The codes a close frame may carry below 3000 (§7.4.1): 1006 (like 1005 and 1015) only
# names a close that had no close frame, so a peer never sends it.
_KNOWN_CODES: Final = frozenset(int(c) for c in CloseCode) - {CloseCode.ABNORMAL_CLOSURE}


def accept_key(key: str) -> str | None:
    """The ``Sec-WebSocket-Accept`` answering ``Sec-WebSocket-Key`` (§4.2.2), or None when the
    key is not the base64 of 16 bytes."""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def close_code(reason: str) -> CloseCode:
    """The close code of a session that ended with ``reason``: 1000 for an orderly end, 1009
    for an oversized message, 1008 (policy violation) for every other limit or error."""
    if reason == reasons.PAYLOAD_TOO_LARGE:
        return CloseCode.MESSAGE_TOO_BIG
    if reason in (
        reasons.TRANSPORT_CLOSE,
        reasons.SERVER_SHUTTING_DOWN,
        reasons.FORCED_SERVER_CLOSE,
        reasons.PING_TIMEOUT,
    ):
        return CloseCode.OK
    return CloseCode.POLICY_VIOLATION


def close_frame(code: int, message: bytes = b"") -> bytes:
    """A server close frame (§5.5.1): the code, then the reason's UTF-8 bytes."""
    return ws_frame(struct.pack("!H", code) + message, OP_CLOSE)


def pong_frame(payload: bytes) -> bytes:
    """The answer to a ping (§5.5.3): a pong with the same payload."""
    return ws_frame(payload, OP_PONG)


@dataclass(frozen=True, slots=True)
class Ping:
    """The client sent a ping; it must be answered with a pong carrying ``payload``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The client started (or answered) the closing handshake (§5.5.1); ``code`` is None when
    its close frame had no body."""

    code: int | None
    reason: str


class FrameError(RemoteProtocolError):
    """A client frame broke the protocol or a limit; ``code`` is the close code to answer with.

    Its ``reason`` is ``payload too large`` for an oversized message, ``transport error``
    otherwise (as the session's disconnect reason). :meth:`FrameReader.feed` hands it back as
    its last event rather than raising it.
    """

    def __init__(self, code: CloseCode, detail: str) -> None:
        reason = (
            reasons.PAYLOAD_TOO_LARGE
            if code is CloseCode.MESSAGE_TOO_BIG
            else reasons.TRANSPORT_ERROR
        )
        super().__init__(reason, detail)
        self.code = code


#: What :meth:`FrameReader.feed` hands back: a text message (``str``), a binary message
#: (``bytes``), a ping, the client's close frame, or the frame error that ended the reading.
Event = str | bytes | Ping | CloseReceived | FrameError


def _unmask(mask: bytes, payload: bytes) -> bytes:
    n = len(payload)
    if not n or mask == b"\x00\x00\x00\x00":
        return payload
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Reads the frames one client sends (§5.2) and reassembles fragmented messages (§5.4).

    After a close frame or a :class:`FrameError`, the reader is done: later bytes are ignored.
    ``max_message_size`` of 0 means no limit.
    """

    __slots__ = (
        "_chunks",
        "_done",
        "_fragments",
        "_fragments_size",
        "_have",
        "_max_size",
        "_message_opcode",
        "_wanted",
    )

    def __init__(self, max_message_size: int) -> None:
        self._max_size = max_message_size
        self._chunks: list[bytes] | None = None  # unparsed bytes, joined once enough came
        self._have = 0
        self._wanted = 0  # bytes the frame at the head of ``_chunks`` needs, at least
        self._message_opcode = 0  # TEXT or BINARY while a fragmented message is under way
        self._fragments: list[bytes] | None = None  # a fragmented message's parts so far
        self._fragments_size = 0
        self._done = False

    def feed(self, data: bytes) -> list[Event]:
        """Feed bytes read from the socket; returns the events they completed, in order.

        A frame that breaks the protocol or a limit ends the list as a :class:`FrameError`.
        """
        if self._done:
            return []
        chunks = self._chunks
        if chunks is not None:
            chunks.append(data)
            self._have += len(data)
            if self._have < self._wanted:
                return []
            data = b"".join(chunks)
            self._chunks = None
        events: list[Event] = []
        try:
            pos = self._parse(data, events)
        except FrameError as exc:
            self._done = True
            self._chunks = self._fragments = None
            events.append(exc)
            return events
        if pos < len(data) and not self._done:
            rest = data[pos:] if pos else data
            self._chunks = [rest]
            self._have = len(rest)
        return events

    def _parse(self, data: bytes, events: list[Event]) -> int:
        """Parse every complete frame of ``data`` into ``events``; returns where the first
        incomplete one starts (setting ``_wanted`` to the bytes it needs at least)."""
        pos = 0
        end = len(data)
        max_size = self._max_size
        while not self._done:
            left = end - pos
            if left < 2:
                self._wanted = 2
                return pos
            b0 = data[pos]
            b1 = data[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
            n = b1 & 0x7F
            head = 2
            if opcode >= OP_CLOSE:
                if opcode > OP_PONG:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
                if not b0 & 0x80:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
                if n > 125:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes")
            else:
                if opcode > OP_BINARY:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
                if n == 126:
                    if left < 4:
                        self._wanted = 4
                        return pos
                    n = (data[pos + 2] << 8) | data[pos + 3]
                    head = 4
                    if n < 126:  # "the minimal number of bytes MUST be used" (§5.2)
                        raise FrameError(CloseCode.PROTOCOL_ERROR, "length not minimal")
                elif n == 127:
                    if left < 10:
                        self._wanted = 10
                        return pos
                    n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    head = 10
                    if n < 65536 or n >> 63:  # minimal, and its top bit MUST be 0 (§5.2)
                        raise FrameError(CloseCode.PROTOCOL_ERROR, "bad 64-bit length")
                if max_size and n >= max_size - self._fragments_size:
                    raise FrameError(
                        CloseCode.MESSAGE_TOO_BIG,
                        f"message of {n + self._fragments_size} bytes, limit {max_size}",
                    )
            if b1 & 0x80:
                head += 4
            frame_end = pos + head + n
            if frame_end > end:
                self._wanted = head + n
                return pos
            payload = data[pos + head : frame_end]
            if b1 & 0x80:
                payload = _unmask(data[pos + head - 4 : pos + head], payload)
            pos = frame_end
            if opcode >= OP_CLOSE:
                self._control(opcode, payload, events)
            else:
                self._data(opcode, bool(b0 & 0x80), payload, events)
        return end

    def _data(self, opcode: int, fin: bool, payload: bytes, events: list[Event]) -> None:
        fragments = self._fragments  # not None while a fragmented message is under way
        if opcode == OP_CONTINUATION:
            if fragments is None:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "continuation of no message")
            if payload:  # empty fragments cost nothing, however many come
                fragments.append(payload)
                self._fragments_size += len(payload)
            if not fin:
                return
            opcode = self._message_opcode
            payload = b"".join(fragments)
            self._fragments = None
            self._fragments_size = 0
        elif fragments is not None:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        elif not fin:
            self._message_opcode = opcode
            self._fragments = [payload]
            self._fragments_size = len(payload)
            return
        if opcode == OP_TEXT:
            try:
                events.append(payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise FrameError(CloseCode.INVALID_TEXT, "invalid UTF-8 text") from None
        else:
            events.append(payload)

    def _control(self, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == OP_PING:
            events.append(Ping(payload))
        elif opcode == OP_CLOSE:
            if len(payload) == 1:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "close frame of one byte")
            code: int | None = None
            text = ""
            if payload:
                (code,) = struct.unpack("!H", payload[:2])
                if code < 3000 and code not in _KNOWN_CODES:
                    raise FrameError(CloseCode.PROTOCOL_ERROR, f"close code {code}")
                try:
                    text = payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    raise FrameError(CloseCode.INVALID_TEXT, "invalid UTF-8 reason") from None
            events.append(CloseReceived(code, text))
            self._done = True
        # A pong (an answer to a ping the node never sends) is ignored.
