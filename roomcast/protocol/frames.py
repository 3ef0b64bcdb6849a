"""Pre-built outgoing frames: encode a Socket.IO packet once, write it to many transports.

A :class:`Frames` holds the same packet in the two shapes a node writes: the bytes of complete
server-to-client WebSocket frames (RFC 6455 §5.2, unmasked, so they can be written straight to
each TCP transport) and the Engine.IO texts a polling client receives. Both are built lazily
and at most once, whatever the number of recipients.

A packet that another node encoded arrives as its WebSocket frames (the cluster carries those):
:meth:`Frames.from_ws` writes them as they are, and reads the packet back out of them only if a
polling client needs its texts.
"""

from __future__ import annotations

import base64
import struct

from roomcast.protocol.socketio import Encoded, append_offset, strip_offset

_OP_TEXT = 0x1
_OP_BINARY = 0x2


def ws_frame(payload: bytes, opcode: int = _OP_TEXT) -> bytes:
    """One final, unmasked WebSocket frame carrying ``payload`` (RFC 6455 §5.2)."""
    n = len(payload)
    head = 0x80 | opcode
    if n < 126:
        return struct.pack("!BB", head, n) + payload
    if n < 65536:
        return struct.pack("!BBH", head, 126, n) + payload
    return struct.pack("!BBQ", head, 127, n) + payload


def ws_text(text: str) -> bytes:
    """A WebSocket text frame carrying one Engine.IO text packet."""
    return ws_frame(text.encode("utf-8"), _OP_TEXT)


def _frame_at(data: bytes, offset: int) -> tuple[int, int, int]:
    """The first byte, payload start and payload end of the frame at ``offset`` in ``data``
    (unmasked, as :attr:`Frames.ws` builds them). ValueError if there is no whole frame."""
    end = len(data)
    if offset + 2 > end:
        raise ValueError("truncated frame header")
    head, size = data[offset], data[offset + 1]
    offset += 2
    if size == 126:
        if offset + 2 > end:
            raise ValueError("truncated frame header")
        (size,) = struct.unpack_from("!H", data, offset)
        offset += 2
    elif size == 127:
        if offset + 8 > end:
            raise ValueError("truncated frame header")
        (size,) = struct.unpack_from("!Q", data, offset)
        offset += 8
    elif size > 127:
        raise ValueError("masked frame")
    if offset + size > end:
        raise ValueError("truncated frame")
    return head, offset, offset + size


def parse_ws_frames(data: bytes) -> Encoded:
    """The packet in the frames :attr:`Frames.ws` made: a text frame ``"4" + text``, then one
    binary frame per attachment. ValueError if ``data`` is not that."""
    text: str | None = None
    attachments: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        head, start, offset = _frame_at(data, offset)
        payload = data[start:offset]
        if text is None:
            if head != 0x80 | _OP_TEXT or payload[:1] != b"4":
                raise ValueError("not an Engine.IO MESSAGE text frame")
            text = payload[1:].decode("utf-8")
        elif head == 0x80 | _OP_BINARY:
            attachments.append(payload)
        else:
            raise ValueError("not an attachment frame")
    if text is None:
        raise ValueError("no frame")
    return Encoded(text, tuple(attachments))


class Frames:
    """One Socket.IO packet, ready to be written to any number of clients."""

    __slots__ = ("_encoded", "_poll", "_ws")

    def __init__(self, encoded: Encoded) -> None:
        self._encoded: Encoded | None = encoded
        self._ws: bytes | None = None
        self._poll: list[str] | None = None

    @classmethod
    def from_ws(cls, ws: bytes) -> Frames:
        """The packet whose WebSocket frames are ``ws`` (as :attr:`ws` made them elsewhere)."""
        frames = cls.__new__(cls)
        frames._encoded = None
        frames._ws = ws
        frames._poll = None
        return frames

    def with_offset(self, offset: str) -> Frames | None:
        """The same EVENT with ``offset`` as its last argument (connection state recovery), or
        None when the packet is not an EVENT without an ack id.

        Built once per node, never per recipient: from the packet's text when this node
        encoded it, else by re-framing the first WebSocket frame another node built (the
        attachment frames are kept as they are; nothing is decoded but the header).
        """
        encoded = self._encoded
        if encoded is not None:
            text = append_offset(encoded.text, offset)
            return None if text is None else Frames(Encoded(text, encoded.attachments))
        ws = self._ws
        assert ws is not None
        try:
            head, start, end = _frame_at(ws, 0)
        except ValueError:
            return None
        if head != 0x80 | _OP_TEXT or ws[start : start + 1] != b"4":
            return None
        try:
            text = append_offset(ws[start + 1 : end].decode("utf-8"), offset)
        except UnicodeDecodeError:
            return None
        if text is None:
            return None
        return Frames.from_ws(ws_text("4" + text) + ws[end:])

    def without_offset(self, offset: str) -> Frames | None:
        """The same EVENT without the ``offset`` :meth:`with_offset` gave it (None: it has not
        that offset last), re-framing the first WebSocket frame only."""
        ws = self.ws
        try:
            head, start, end = _frame_at(ws, 0)
            text = ws[start + 1 : end].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        if head != 0x80 | _OP_TEXT or ws[start : start + 1] != b"4":
            return None
        stripped = strip_offset(text, offset)
        if stripped is None:
            return None
        return Frames.from_ws(ws_text("4" + stripped) + ws[end:])

    @property
    def nbytes(self) -> int:
        """About the memory the packet holds: its frames' bytes, or its text and attachments."""
        if self._ws is not None:
            return len(self._ws)
        assert self._encoded is not None
        return len(self._encoded.text) + sum(len(a) for a in self._encoded.attachments)

    @property
    def encoded(self) -> Encoded:
        """The Socket.IO packet (ValueError if frames from elsewhere do not hold one)."""
        if self._encoded is None:
            assert self._ws is not None
            self._encoded = parse_ws_frames(self._ws)
        return self._encoded

    @property
    def ws(self) -> bytes:
        """Every WebSocket frame of the packet, concatenated (one ``transport.write``)."""
        if self._ws is None:
            enc = self.encoded
            data = ws_text("4" + enc.text)
            if enc.attachments:
                data += b"".join(ws_frame(a, _OP_BINARY) for a in enc.attachments)
            self._ws = data
        return self._ws

    @property
    def poll(self) -> list[str]:
        """The Engine.IO packets of the packet as a polling payload carries them."""
        if self._poll is None:
            enc = self.encoded
            self._poll = ["4" + enc.text] + [
                "b" + base64.b64encode(a).decode("ascii") for a in enc.attachments
            ]
        return self._poll
