"""Pre-built outgoing frames: RFC 6455 framing and the polling form of one Socket.IO packet.

The frames are parsed back with an independent reader written here from RFC 6455 §5.2.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.protocol import engineio as eio
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames, parse_ws_frames, ws_frame, ws_text

OP_TEXT = 0x1
OP_BINARY = 0x2


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split server-to-client bytes into (opcode, payload) pairs, checking each header."""
    frames: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b0 & 0x80, "FIN must be set: every frame is final"
        assert b0 & 0x70 == 0, "no RSV bits (no extension negotiated)"
        assert b1 & 0x80 == 0, "server-to-client frames are not masked"
        n = b1 & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, i)
            assert n >= 126, "minimal length encoding"
            i += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, i)
            assert n >= 65536, "minimal length encoding"
            assert n < 2**63, "most significant bit must be 0"
            i += 8
        payload = data[i : i + n]
        assert len(payload) == n, "truncated frame"
        frames.append((b0 & 0x0F, payload))
        i += n
    return frames


@pytest.mark.parametrize(
    ("length", "header_length", "length_byte"),
    [
        (0, 2, 0),
        (1, 2, 1),
        (125, 2, 125),
        (126, 4, 126),
        (127, 4, 126),
        (65535, 4, 126),
        (65536, 10, 127),
        (70000, 10, 127),
    ],
)
def test_ws_frame_header_length_boundaries(
    length: int, header_length: int, length_byte: int
) -> None:
    """Up to 125 bytes a 2-byte header, up to 65535 a 4-byte one, beyond that 10 bytes (§5.2)."""
    payload = bytes(i % 251 for i in range(length))
    frame = ws_frame(payload, OP_BINARY)
    assert len(frame) == header_length + length
    assert frame[0] == 0x80 | OP_BINARY
    assert frame[1] == length_byte
    assert frame[header_length:] == payload
    if header_length == 4:
        assert struct.unpack("!H", frame[2:4])[0] == length
    if header_length == 10:
        assert struct.unpack("!Q", frame[2:10])[0] == length
    assert parse_frames(frame) == [(OP_BINARY, payload)]


def test_ws_frame_defaults_to_text() -> None:
    """Without an opcode ``ws_frame`` builds a final text frame."""
    assert ws_frame(b"4hi") == b"\x81\x034hi"


def test_ws_text_encodes_utf8() -> None:
    """``ws_text`` carries the UTF-8 bytes of the text, and the length counts bytes."""
    frame = ws_text("4€")
    assert frame == b"\x81\x04" + "4€".encode()
    assert parse_frames(frame) == [(OP_TEXT, "4€".encode())]


def test_text_packet_ws_is_one_text_frame() -> None:
    """A text-only packet is one text frame with the Engine.IO MESSAGE prefix (``42[...]``)."""
    frames = Frames(sio.encode_event("/", "hey", ["Jude"]))
    assert parse_frames(frames.ws) == [(OP_TEXT, b'42["hey","Jude"]')]


def test_text_packet_poll_is_one_message() -> None:
    """A text-only packet is one Engine.IO MESSAGE text for polling."""
    frames = Frames(sio.encode_event("/admin", "bar", []))
    assert frames.poll == ['42/admin,["bar"]']
    assert eio.decode_text(frames.poll[0]) == eio.Packet(eio.PacketType.MESSAGE, '2/admin,["bar"]')


def test_binary_packet_ws_is_text_then_binary_frames() -> None:
    """A binary packet is its text frame followed by one binary frame per attachment, in order."""
    frames = Frames(sio.encode_event("/", "baz", [b"\x01\x02", b"\x03\x04"]))
    assert parse_frames(frames.ws) == [
        (OP_TEXT, b'452-["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'),
        (OP_BINARY, b"\x01\x02"),
        (OP_BINARY, b"\x03\x04"),
    ]


def test_binary_packet_poll_is_text_then_base64() -> None:
    """For polling, attachments follow the text as ``b``-prefixed base64 MESSAGE packets."""
    frames = Frames(sio.encode_event("/", "baz", [b"\x01\x02\x03\x04"]))
    assert frames.poll == ['451-["baz",{"_placeholder":true,"num":0}]', "bAQIDBA=="]


def test_poll_form_decodes_back_to_the_packet() -> None:
    """The polling texts, joined into a payload and decoded, rebuild the original packet."""
    blob = bytes(range(256)) * 3
    encoded = sio.encode(
        sio.Packet(sio.PacketType.BINARY_ACK, sio.Namespace("/admin"), ["ok", blob], 7)
    )
    body = eio.encode_payload(Frames(encoded).poll)
    decoder = sio.Decoder()
    packet = None
    for engine_packet in eio.decode_payload(body, max_packets=10):
        assert engine_packet.type is eio.PacketType.MESSAGE
        packet = decoder.feed(engine_packet.data)
    assert packet == sio.Packet(sio.PacketType.BINARY_ACK, sio.Namespace("/admin"), ["ok", blob], 7)


def test_ws_form_decodes_back_to_the_packet() -> None:
    """The WebSocket frames, fed to the Engine.IO and Socket.IO decoders, rebuild the packet."""
    big = b"\xab" * 70000  # forces a 64-bit length on the attachment frame
    frames = Frames(sio.encode_event("/", "up", [{"file": big}, "é" * 200]))
    decoder = sio.Decoder()
    packet = None
    for opcode, payload in parse_frames(frames.ws):
        engine_packet = (
            eio.decode_text(payload.decode("utf-8"))
            if opcode == OP_TEXT
            else eio.decode_binary_frame(payload)
        )
        packet = decoder.feed(engine_packet.data)
    assert packet is not None
    assert packet.data == ["up", {"file": big}, "é" * 200]


def test_frames_are_built_once() -> None:
    """``ws`` and ``poll`` are computed once and the same objects are handed to every recipient."""
    frames = Frames(sio.encode_event("/", "e", [b"x"]))
    assert frames.ws is frames.ws
    assert frames.poll is frames.poll


def test_lone_surrogate_frames_are_valid_utf8() -> None:
    """A string holding a lone surrogate (a peer may send one escaped) still frames as UTF-8."""
    packet = sio.Decoder().feed('2["relay","\\udc00"]')
    assert packet is not None
    frames = Frames(sio.encode(packet))
    assert parse_frames(frames.ws) == [(OP_TEXT, b'42["relay","\\udc00"]')]
    assert frames.poll == ['42["relay","\\udc00"]']


# --- frames from another node -----------------------------------------------------------------


@given(
    text=st.text(max_size=300),
    attachments=st.lists(st.binary(max_size=70_000), max_size=3).map(tuple),
)
@settings(max_examples=40)
def test_packet_read_back_from_its_frames(text: str, attachments: tuple[bytes, ...]) -> None:
    """The frames one node built carry the whole packet: another node reads it back, and its
    polling form, without re-encoding the frames it writes."""
    original = Frames(sio.Encoded(text, attachments))
    received = Frames.from_ws(original.ws)
    assert received.ws is original.ws
    assert received.encoded == sio.Encoded(text, attachments)
    assert received.poll == original.poll


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x81",  # a header cut short
        b"\x81\x05" + b"4ab",  # a payload cut short
        b"\x81\x7e\x00",  # an extended length cut short
        b"\x82\x024a",  # a binary frame first
        b"\x81\x023a",  # not an Engine.IO MESSAGE
        b"\x81\x024a\x81\x024b",  # a second text frame
        b"\x81\x824abc",  # masked
        b"\x81\x03" + b"4\xff\xfe",  # not UTF-8
    ],
)
def test_frames_that_hold_no_packet_are_a_value_error(data: bytes) -> None:
    """Bytes that are not a packet's frames raise ValueError when the packet is asked for."""
    with pytest.raises(ValueError):
        parse_ws_frames(data)
    with pytest.raises(ValueError):
        _ = Frames.from_ws(data).poll


# --- offsets (connection state recovery) -------------------------------------------------------


@given(
    args=st.lists(st.text(max_size=200) | st.binary(max_size=70_000), max_size=3),
    namespace=st.sampled_from(["/", "/chat"]),
)
@settings(max_examples=40)
def test_offset_frames_from_the_packet_or_from_another_nodes_frames_agree(
    args: list[Any], namespace: str
) -> None:
    """The frames with an offset built from the packet (the origin) and re-framed from the
    frames another node built are the same bytes and the same polling form."""
    original = Frames(sio.encode_event(namespace, "e", args))
    here = original.with_offset("AAAAAAAA2a")
    there = Frames.from_ws(original.ws).with_offset("AAAAAAAA2a")
    assert here is not None and there is not None
    assert here.ws == there.ws
    assert here.poll == there.poll
    assert there.encoded.text.endswith(',"AAAAAAAA2a"]')
    assert there.encoded.attachments == original.encoded.attachments


def test_offset_frames_leave_the_original_alone() -> None:
    """Adding an offset makes new frames: the packet without it is still what the bus carries."""
    original = Frames(sio.encode_event("/", "e", ["x"]))
    ws = original.ws
    with_offset = original.with_offset("AAAAAAAA1")
    assert with_offset is not None and original.ws is ws
    assert parse_frames(with_offset.ws) == [(OP_TEXT, b'42["e","x","AAAAAAAA1"]')]


def test_no_offset_on_acks_or_garbage() -> None:
    """An event with an ack id, and frames that hold no event, get no offset."""
    assert Frames(sio.encode_event("/", "e", ["x"], 3)).with_offset("AAAAAAAA1") is None
    assert Frames.from_ws(b"\x81\x02" + b"4a").with_offset("AAAAAAAA1") is None
    assert Frames.from_ws(b"\x81").with_offset("AAAAAAAA1") is None
    assert Frames.from_ws(b"\x81\x03" + b"4\xff]").with_offset("AAAAAAAA1") is None


@pytest.mark.parametrize("args", [["x"], [{"a": [1, 2]}, b"\x00\xff"]])
def test_an_offset_comes_off_as_it_went_on(args: list[object]) -> None:
    """The offset a node gave an event comes off its frames, text and binary alike: the same
    bytes as before (a node handing a session over sends its packets as it wrote them)."""
    original = Frames(sio.encode_event("/chat", "e", args))
    numbered = original.with_offset("AAAAAAAA2a")
    assert numbered is not None
    stripped = Frames.from_ws(numbered.ws).without_offset("AAAAAAAA2a")
    assert stripped is not None and stripped.ws == original.ws


def test_frames_without_that_offset_are_left_alone() -> None:
    """Another offset, none, or no event at all: nothing to take off."""
    numbered = Frames(sio.encode_event("/", "e", ["x"])).with_offset("AAAAAAAA1")
    assert numbered is not None
    assert numbered.without_offset("AAAAAAAA2") is None
    assert Frames(sio.encode_event("/", "e", ["x"])).without_offset("AAAAAAAA1") is None
    assert Frames.from_ws(b"\x81").without_offset("AAAAAAAA1") is None
