"""WebSocket (RFC 6455) from the server's side, sans-I/O: the accept key, and FrameReader's
frames: data, fragmentation, control frames, reserved bits and opcodes.

Client frames come from ``ws_client_frames`` (an encoder written from RFC 6455 §5.2) and are fed
to the reader as bytes. Nothing here needs an event loop, and nothing comes from aiohttp: the
expected answers are the RFC's. UTF-8, the size limit and chunking: ``test_websocket_limits.py``.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.ws_client_frames import (
    LIMIT,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RSV1,
    RSV2,
    RSV3,
    Mask,
    close_payload,
    frame,
    read,
    refused,
    server_frame,
)

from roomcast.protocol import reasons
from roomcast.protocol.websocket import (
    CloseCode,
    CloseReceived,
    FrameReader,
    Ping,
    accept_key,
    close_code,
    close_frame,
    pong_frame,
)

# --- accept_key (§1.3, §4.2.2) ---------------------------------------------------------------


def test_accept_key_rfc_example() -> None:
    """The §1.3 example key is answered with the §1.3 example accept value (the base64 of the
    SHA-1 digest 0xb3 0x7a 0x4f 0x2c ... 0xc4 0xea the RFC prints)."""
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@given(st.binary(min_size=16, max_size=16))
def test_accept_key_is_base64_sha1_of_key_and_guid(nonce: bytes) -> None:
    """Any 16-byte nonce's key is answered with base64(SHA-1(key + the §1.3 GUID))."""
    key = base64.b64encode(nonce).decode()
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    expected = base64.b64encode(hashlib.sha1(key.encode() + guid).digest()).decode()
    assert accept_key(key) == expected


@pytest.mark.parametrize(
    "key",
    [
        "",
        base64.b64encode(bytes(15)).decode(),
        base64.b64encode(bytes(17)).decode(),
        base64.b64encode(bytes(32)).decode(),
        "AAAA",
        "dGhlIHNhbXBsZSBub25jZQ",  # the §1.3 key without its padding
    ],
)
def test_accept_key_refuses_a_key_that_is_not_16_bytes(key: str) -> None:
    """A key that does not base64-decode to exactly 16 bytes gets no accept value (§4.2.1)."""
    assert accept_key(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "dGhlIHNhbXBsZSBub25jZQ==!!",
        "dGhl IHNhbXBsZSBub25jZQ==",
        "dGhl*IHNhbXBsZSBub25jZQ==",
        "dGhlIHNhbXBsZSBub25jZQ==AAAA",
        "dGhlIHNhbXBsZSBub25jZQ=é",
    ],
)
def test_accept_key_refuses_a_key_outside_the_base64_grammar(key: str) -> None:
    """A key with characters outside the base64 alphabet, or data after its padding, is not a
    base64 value (§4.1, the ABNF of §11.3.1) and gets no accept value, even when the base64
    characters in it would decode to 16 bytes."""
    assert accept_key(key) is None


# --- data frames (§5.2, §5.3, §5.6) ----------------------------------------------------------


@pytest.mark.parametrize("mask", ["random", b"\x00\x00\x00\x00", b"\xff\xfe\xfd\xfc", None])
def test_text_message_masked_or_not(mask: Mask) -> None:
    """A final text frame is one str message, masked with any key or (accepted) unmasked."""
    assert read(frame("héllo ✓ 😀".encode(), OP_TEXT, mask=mask)) == ["héllo ✓ 😀"]


@pytest.mark.parametrize("mask", ["random", b"\x00\x00\x00\x00", b"\x12\x34\x56\x78", None])
def test_binary_message_masked_or_not(mask: Mask) -> None:
    """A final binary frame is one bytes message, whatever bytes it carries."""
    payload = bytes(range(256))
    assert read(frame(payload, OP_BINARY, mask=mask)) == [payload]


def test_empty_messages() -> None:
    """Empty text and binary frames are an empty str and empty bytes message."""
    assert read(frame(b"", OP_TEXT), frame(b"", OP_BINARY)) == ["", b""]


@pytest.mark.parametrize(
    ("length", "header_length"),
    [(0, 2), (1, 2), (125, 2), (126, 4), (127, 4), (65535, 4), (65536, 10), (70000, 10)],
)
@pytest.mark.parametrize("masked", [True, False])
def test_length_forms_at_their_boundaries(length: int, header_length: int, masked: bool) -> None:
    """Payloads up to 125 bytes use the 7-bit length, up to 65535 the 16-bit one, beyond that
    the 64-bit one (§5.2), and each is read whole, masked or not."""
    payload = bytes(i % 251 for i in range(length))
    data = frame(payload, OP_BINARY, mask="random" if masked else None)
    assert len(data) == header_length + (4 if masked else 0) + length  # the encoder's own check
    assert read(data) == [payload]
    text = ("a" * length).encode()
    assert read(frame(text, OP_TEXT, mask="random" if masked else None)) == ["a" * length]


def test_frames_fed_one_byte_at_a_time() -> None:
    """Frames of every length form, fed one byte at a time, give their messages when each
    frame's last byte arrives, and nothing before."""
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536]
    reader = FrameReader(LIMIT)
    for payload in payloads:
        data = frame(payload, OP_BINARY)
        for i in range(len(data) - 1):
            assert reader.feed(data[i : i + 1]) == []
        assert reader.feed(data[-1:]) == [payload]


def test_several_frames_in_one_chunk_in_order() -> None:
    """Every complete frame of one chunk is handed back, in the order sent."""
    events = read(
        frame(b"one", OP_TEXT),
        frame(b"\x00\x01", OP_BINARY),
        frame(b"p", OP_PING),
        frame(b"two", OP_TEXT, mask=None),
    )
    assert events == ["one", b"\x00\x01", Ping(b"p"), "two"]


def test_incomplete_frame_waits_for_its_last_byte() -> None:
    """A frame split between chunks is handed back once, when its last bytes come, with the
    complete frames before it handed back at once."""
    reader = FrameReader(LIMIT)
    second = frame(b"second" * 30, OP_TEXT)
    assert reader.feed(frame(b"first", OP_TEXT) + second[:3]) == ["first"]
    assert reader.feed(second[3:-1]) == []
    assert reader.feed(second[-1:] + frame(b"third", OP_TEXT)[:1]) == ["second" * 30]


@given(
    payload=st.binary(max_size=300),
    key=st.binary(min_size=4, max_size=4),
    opcode=st.sampled_from([OP_TEXT, OP_BINARY]),
)
def test_any_mask_key_unmasks(payload: bytes, key: bytes, opcode: int) -> None:
    """Whatever the masking key, the message is the payload the client masked (§5.3)."""
    if opcode == OP_TEXT:
        payload = payload.decode("latin-1").encode()  # valid UTF-8 of the same length or more
        assert read(frame(payload, opcode, mask=key)) == [payload.decode()]
    else:
        assert read(frame(payload, opcode, mask=key)) == [payload]


@pytest.mark.parametrize(
    ("length", "form"), [(0, 16), (125, 16), (0, 64), (125, 64), (126, 64), (65535, 64)]
)
def test_non_minimal_length_is_a_protocol_error(length: int, form: Literal[16, 64]) -> None:
    """A length not in its minimal form is malformed ("the minimal number of bytes MUST be used
    to encode the length", §5.2) and is refused with 1002."""
    refused(read(frame(b"x" * length, OP_BINARY, length_form=form)), CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("limit", [0, LIMIT])
def test_64_bit_length_with_its_top_bit_set_is_a_protocol_error(limit: int) -> None:
    """A 64-bit length whose most significant bit is set is malformed ("the most significant
    bit MUST be 0", §5.2) and is refused with 1002, whatever the size limit."""
    head = bytes([0x80 | OP_BINARY, 0x80 | 127]) + struct.pack("!Q", (1 << 63) | 3)
    refused(read(head + b"\x00\x00\x00\x00" + b"abc", limit=limit), CloseCode.PROTOCOL_ERROR)


# --- fragmentation (§5.4) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opcode", "parts", "message"),
    [
        (OP_TEXT, [b"hel", b"lo ", b"world"], "hello world"),
        (OP_BINARY, [b"\x00", b"\x01\x02", b"\x03"], b"\x00\x01\x02\x03"),
        (OP_TEXT, [b"only", b""], "only"),
        (OP_BINARY, [b"", b"", b"ab", b"", b""], b"ab"),
    ],
)
def test_fragmented_message_is_delivered_whole(
    opcode: int, parts: list[bytes], message: str | bytes
) -> None:
    """A message sent as a first frame and continuation frames (empty ones too) is handed back
    once, whole, when its final fragment arrives; the next message starts afresh."""
    reader = FrameReader(LIMIT)
    frames = [frame(parts[0], opcode, fin=False)]
    frames += [frame(p, OP_CONTINUATION, fin=False) for p in parts[1:-1]]
    frames.append(frame(parts[-1], OP_CONTINUATION))
    for data in frames[:-1]:
        assert reader.feed(data) == []
    assert reader.feed(frames[-1]) == [message]
    assert reader.feed(frame(b"next", OP_TEXT)) == ["next"]


def test_ping_and_pong_between_fragments_are_handled_in_between() -> None:
    """Control frames may come between a message's fragments (§5.4): a ping is handed back at
    once, a pong is ignored, and the message still arrives whole afterwards."""
    events = read(
        frame(b"frag", OP_TEXT, fin=False),
        frame(b"p1", OP_PING),
        frame(b"ment", OP_CONTINUATION, fin=False),
        frame(b"unsolicited", OP_PONG),
        frame(b"", OP_PING),
        frame(b"ed", OP_CONTINUATION),
    )
    assert events == [Ping(b"p1"), Ping(b""), "fragmented"]


def test_close_between_fragments_ends_the_reading() -> None:
    """A close frame between fragments is handed back; the unfinished message is never
    delivered, and nothing after the close is read."""
    events = read(
        frame(b"never ", OP_TEXT, fin=False),
        frame(close_payload(1001, b"bye"), OP_CLOSE),
        frame(b"delivered", OP_CONTINUATION),
        frame(b"nor this", OP_TEXT),
    )
    assert events == [CloseReceived(1001, "bye")]


@pytest.mark.parametrize("fin", [True, False])
def test_continuation_without_a_message_is_a_protocol_error(fin: bool) -> None:
    """A continuation frame with no fragmented message under way is refused with 1002."""
    refused(read(frame(b"x", OP_CONTINUATION, fin=fin)), CloseCode.PROTOCOL_ERROR)
    after_one = read(frame(b"done", OP_TEXT), frame(b"x", OP_CONTINUATION, fin=fin))
    assert refused(after_one, CloseCode.PROTOCOL_ERROR) == ["done"]


@pytest.mark.parametrize("first", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("fin", [True, False])
def test_new_data_frame_inside_a_fragmented_message_is_a_protocol_error(
    first: int, second: int, fin: bool
) -> None:
    """A text or binary frame while a fragmented message is under way is refused with 1002
    (§5.4: fragments of one message are not interleaved with another's)."""
    events = read(frame(b"part", first, fin=False), frame(b"intruder", second, fin=fin))
    refused(events, CloseCode.PROTOCOL_ERROR)


# --- control frames (§5.5) -------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))])
def test_ping_is_handed_back_with_its_payload(payload: bytes) -> None:
    """A ping is handed back with its payload, which pong_frame turns into the final,
    unmasked pong carrying the same payload that answers it (§5.5.2, §5.5.3)."""
    events = read(frame(payload, OP_PING))
    assert events == [Ping(payload)]
    ping = events[0]
    assert isinstance(ping, Ping)
    assert server_frame(pong_frame(ping.payload)) == (OP_PONG, payload)


def test_pong_is_ignored() -> None:
    """An unsolicited pong needs no answer (§5.5.3): it hands back nothing and reading goes on."""
    assert read(frame(b"", OP_PONG), frame(b"beat", OP_PONG), frame(b"after")) == ["after"]


@pytest.mark.parametrize(
    ("reason", "text"), [(b"", ""), (b"going away", "going away"), ("bye ✓".encode(), "bye ✓")]
)
def test_close_with_code_and_reason(reason: bytes, text: str) -> None:
    """A close frame's code and UTF-8 reason are handed back (§5.5.1)."""
    assert read(frame(close_payload(1000, reason), OP_CLOSE)) == [CloseReceived(1000, text)]


def test_close_without_payload() -> None:
    """A close frame with no body is handed back with no code and an empty reason (§5.5.1)."""
    assert read(frame(b"", OP_CLOSE)) == [CloseReceived(None, "")]


def test_close_of_one_byte_is_a_protocol_error() -> None:
    """A close body of one byte cannot hold a 2-byte code (§5.5.1) and is refused with 1002."""
    refused(read(frame(b"\x03", OP_CLOSE)), CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
)
def test_valid_close_codes_are_accepted(code: int) -> None:
    """The codes §7.4.1 defines (and 1012-1014, registered since), and the 3000-4999 ranges
    (§7.4.2), are handed back as sent."""
    assert read(frame(close_payload(code, b"r"), OP_CLOSE)) == [CloseReceived(code, "r")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999])
def test_invalid_close_codes_are_a_protocol_error(code: int) -> None:
    """Codes below 1000, reserved or unassigned codes of 1000-2999, and 1005, 1006 and 1015,
    which an endpoint MUST NOT put in a close frame (§7.4.1, §7.4.2), are refused with 1002."""
    refused(read(frame(close_payload(code), OP_CLOSE)), CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("reason", [b"\xff", b"bye \xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_close_reason_not_utf8_is_invalid_text(reason: bytes) -> None:
    """A close reason that is not UTF-8 is refused with 1007 (§5.5.1, §8.1)."""
    refused(read(frame(close_payload(1000, reason), OP_CLOSE)), CloseCode.INVALID_TEXT)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
@pytest.mark.parametrize("length", [126, 200, 65536])
def test_control_frame_over_125_bytes_is_a_protocol_error(opcode: int, length: int) -> None:
    """A control frame's payload is at most 125 bytes (§5.5); a longer one is refused with
    1002, as soon as its header shows it."""
    payload = close_payload(1000, b"x" * (length - 2)) if opcode == OP_CLOSE else b"x" * length
    data = frame(payload, opcode)
    refused(read(data), CloseCode.PROTOCOL_ERROR)
    refused(FrameReader(LIMIT).feed(data[:2]), CloseCode.PROTOCOL_ERROR)


def test_control_frame_of_125_bytes_is_accepted() -> None:
    """A control frame of exactly 125 bytes is within §5.5's bound."""
    assert read(frame(b"p" * 125, OP_PING)) == [Ping(b"p" * 125)]
    close = frame(close_payload(1000, b"r" * 123), OP_CLOSE)
    assert read(close) == [CloseReceived(1000, "r" * 123)]


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_fragmented_control_frame_is_a_protocol_error(opcode: int) -> None:
    """Control frames MUST NOT be fragmented (§5.5): one without FIN is refused with 1002."""
    payload = close_payload(1000) if opcode == OP_CLOSE else b"x"
    refused(read(frame(payload, opcode, fin=False)), CloseCode.PROTOCOL_ERROR)


def test_nothing_is_read_after_a_close() -> None:
    """After the client's close frame the reader is done: frames after it, in the same chunk
    or later ones, are not read, even bad ones."""
    reader = FrameReader(LIMIT)
    events = reader.feed(frame(b"before") + frame(b"", OP_CLOSE) + frame(b"after"))
    assert events == ["before", CloseReceived(None, "")]
    assert reader.feed(frame(b"later")) == []
    assert reader.feed(frame(b"bad", OP_TEXT, rsv=RSV1)) == []


@pytest.mark.parametrize(
    ("code", "message"), [(1000, b""), (1001, b"server shutting down"), (1009, b"")]
)
def test_close_frame_is_a_final_unmasked_close(code: int, message: bytes) -> None:
    """close_frame builds the server's final, unmasked close frame: the code as 2 big-endian
    bytes, then the reason (§5.5.1)."""
    assert server_frame(close_frame(code, message)) == (OP_CLOSE, close_payload(code, message))


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (reasons.PAYLOAD_TOO_LARGE, CloseCode.MESSAGE_TOO_BIG),
        (reasons.TRANSPORT_CLOSE, CloseCode.OK),
        (reasons.SERVER_SHUTTING_DOWN, CloseCode.OK),
        (reasons.PING_TIMEOUT, CloseCode.OK),
        (reasons.TOO_MANY_PACKETS, CloseCode.POLICY_VIOLATION),
        (reasons.PARSE_ERROR, CloseCode.POLICY_VIOLATION),
    ],
)
def test_close_code_of_a_session_reason(reason: str, code: CloseCode) -> None:
    """An orderly end closes with 1000, an oversized message with 1009, any other limit or
    error with 1008 (§7.4.1)."""
    assert close_code(reason) == code


# --- reserved bits and opcodes (§5.2) --------------------------------------------------------


@pytest.mark.parametrize("rsv", [RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE])
def test_rsv_bits_without_an_extension_are_a_protocol_error(rsv: int, opcode: int) -> None:
    """With no extension negotiated, a frame with any RSV bit set is refused with 1002."""
    payload = close_payload(1000) if opcode == OP_CLOSE else b"x"
    refused(read(frame(payload, opcode, rsv=rsv)), CloseCode.PROTOCOL_ERROR)


def test_rsv_bit_on_a_continuation_is_a_protocol_error() -> None:
    """An RSV bit on a continuation frame is refused with 1002 too."""
    events = read(frame(b"a", OP_TEXT, fin=False), frame(b"b", OP_CONTINUATION, rsv=RSV1))
    refused(events, CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcode_is_a_protocol_error(opcode: int) -> None:
    """The reserved opcodes 0x3-0x7 and 0xB-0xF are refused with 1002."""
    refused(read(frame(b"x", opcode)), CloseCode.PROTOCOL_ERROR)
