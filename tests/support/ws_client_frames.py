"""Client WebSocket frames for the tests of :mod:`roomcast.protocol.websocket`, written from
RFC 6455 §5.2 (masked with a random key unless told otherwise, as clients must, §5.3), and an
equally small decoder of the server's pong and close frames. Nothing comes from aiohttp.
"""

from __future__ import annotations

import os
import struct
from typing import Literal

from roomcast.protocol.websocket import CloseCode, Event, FrameError, FrameReader

# Opcodes (§5.2), written out here rather than imported so that the encoder stays independent.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10

LIMIT = 1 << 20  # a max_message_size no test below reaches unless it means to

Mask = bytes | Literal["random"] | None


def frame(
    payload: bytes,
    opcode: int = OP_TEXT,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: Mask = "random",
    length_form: Literal[7, 16, 64] | None = None,
) -> bytes:
    """One client frame (§5.2): masked with a random key by default, ``mask=None`` for an
    unmasked one; the length in its minimal form unless ``length_form`` forces one."""
    n = len(payload)
    if length_form is None:
        length_form = 7 if n < 126 else 16 if n < 65536 else 64
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0 if mask is None else 0x80
    if length_form == 7:
        head += bytes([mask_bit | n])
    elif length_form == 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    key = os.urandom(4) if mask == "random" else mask
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """A close frame's body (§5.5.1): the code as a 2-byte unsigned integer, then the reason."""
    return struct.pack("!H", code) + reason


def server_frame(data: bytes) -> tuple[int, bytes]:
    """The (opcode, payload) of one short server frame, checking what §5.1/§5.2 require of it."""
    b0, b1 = data[0], data[1]
    assert b0 & 0x80, "a control frame is never fragmented"
    assert b0 & 0x70 == 0, "no RSV bits (no extension negotiated)"
    assert b1 & 0x80 == 0, "a server never masks its frames"
    n = b1 & 0x7F
    assert n <= 125, "a control frame's payload is at most 125 bytes"
    assert len(data) == 2 + n, "exactly one frame"
    return b0 & 0x0F, data[2:]


def read(*frames: bytes, limit: int = LIMIT) -> list[Event]:
    """The events of a fresh reader fed ``frames`` in one chunk."""
    return FrameReader(limit).feed(b"".join(frames))


def refused(events: list[Event], code: CloseCode) -> list[Event]:
    """Check that ``events`` end with one FrameError of ``code``; the events before it."""
    assert events, "expected a FrameError, got no event"
    error = events[-1]
    assert isinstance(error, FrameError), f"expected a FrameError, got {events!r}"
    assert error.code == code, f"close code {error.code}, expected {code}"
    assert not any(isinstance(e, FrameError) for e in events[:-1])
    return events[:-1]


def outcome(events: list[Event]) -> list[object]:
    """``events`` in a comparable form (a FrameError by its close code)."""
    return [("error", e.code) if isinstance(e, FrameError) else e for e in events]
