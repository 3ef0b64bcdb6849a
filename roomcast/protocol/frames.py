"""Pre-built outgoing frames: encode a Socket.IO packet once, write it to many transports.

A :class:`Frames` holds the same packet in the two shapes a node writes: the bytes of complete
server-to-client WebSocket frames (RFC 6455 §5.2, unmasked, so they can be written straight to
each TCP transport) and the Engine.IO texts a polling client receives. Both are built lazily
and at most once, whatever the number of recipients.
"""

from __future__ import annotations

import base64
import struct

from roomcast.protocol.socketio import Encoded

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


class Frames:
    """One Socket.IO packet, ready to be written to any number of clients."""

    __slots__ = ("_poll", "_ws", "encoded")

    def __init__(self, encoded: Encoded) -> None:
        self.encoded = encoded
        self._ws: bytes | None = None
        self._poll: list[str] | None = None

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
