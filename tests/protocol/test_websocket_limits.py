"""WebSocket (RFC 6455) from the server's side, sans-I/O: FrameReader's UTF-8 checks, its
message size limit, what is delivered before a bad frame, and that chunking never matters.

Client frames come from ``ws_client_frames`` (an encoder written from RFC 6455 §5.2).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
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
    RSV3,
    close_payload,
    frame,
    outcome,
    read,
    refused,
)

from roomcast.protocol import reasons
from roomcast.protocol.websocket import (
    CloseCode,
    CloseReceived,
    Event,
    FrameError,
    FrameReader,
    Ping,
)

# --- UTF-8 of text messages (§5.6, §8.1) -----------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b"abc\x80",  # a lone continuation byte
        b"\xc0\xaf",  # an overlong "/"
        b"\xe0\x80\xaf",  # an overlong "/" in three bytes
        b"\xed\xa0\x80",  # a UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"end \xe2\x82",  # truncated at the end of the message
    ],
)
def test_text_not_utf8_is_invalid_text(payload: bytes) -> None:
    """A text message that is not valid UTF-8 is refused with 1007."""
    refused(read(frame(payload, OP_TEXT)), CloseCode.INVALID_TEXT)


def test_binary_need_not_be_utf8() -> None:
    """A binary message may carry any bytes, UTF-8 or not."""
    assert read(frame(b"\xff\xc0\xaf", OP_BINARY)) == [b"\xff\xc0\xaf"]


@pytest.mark.parametrize(
    "parts",
    [
        [b"ok \xe2\x82", b"("],  # a sequence broken at a fragment boundary
        [b"ok \xe2", b"\x82"],  # a sequence cut short by the end of the message
        [b"ok", b"\xff", b"ok"],  # an invalid byte in a middle fragment
    ],
)
def test_invalid_utf8_across_fragments_is_invalid_text(parts: list[bytes]) -> None:
    """Invalid UTF-8 in a fragmented text message is refused with 1007."""
    frames = [frame(parts[0], OP_TEXT, fin=False)]
    frames += [frame(p, OP_CONTINUATION, fin=False) for p in parts[1:-1]]
    frames.append(frame(parts[-1], OP_CONTINUATION))
    refused(read(*frames), CloseCode.INVALID_TEXT)


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_character_split_across_fragments_is_valid(char: str) -> None:
    """A multi-byte character split between fragments at any byte is valid text: only the
    whole message must be UTF-8 (§5.6)."""
    raw = f"<{char}>".encode()
    for cut in range(2, len(raw) - 1):
        head = frame(raw[:cut], OP_TEXT, fin=False)
        assert read(head, frame(raw[cut:], OP_CONTINUATION)) == [f"<{char}>"]
    one_byte_each = [frame(raw[:1], OP_TEXT, fin=False)]
    one_byte_each += [
        frame(raw[i : i + 1], OP_CONTINUATION, fin=False) for i in range(1, len(raw) - 1)
    ]
    one_byte_each.append(frame(raw[-1:], OP_CONTINUATION))
    assert read(*one_byte_each) == [f"<{char}>"]


@settings(deadline=None)
@given(st.data())
def test_text_cut_into_any_fragments_with_pings_between_is_delivered_whole(
    data: st.DataObject,
) -> None:
    """Text cut at any bytes into fragments, with pings between some of them, is handed back
    as the same str after the pings."""
    text = data.draw(st.text(max_size=60), label="text")
    raw = text.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6), label="cuts"))
    parts = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    frames: list[bytes] = []
    pings: list[Event] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        frames.append(frame(part, OP_TEXT if i == 0 else OP_CONTINUATION, fin=last))
        if not last and data.draw(st.booleans(), label=f"ping after {i}"):
            frames.append(frame(str(i).encode(), OP_PING))
            pings.append(Ping(str(i).encode()))
    assert read(*frames) == [*pings, text]


# --- the message size limit ------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_message_one_byte_under_the_limit_passes(opcode: int) -> None:
    """A message of max_message_size - 1 bytes is delivered."""
    events = read(frame(b"a" * 99, opcode), limit=100)
    assert events == ["a" * 99 if opcode == OP_TEXT else b"a" * 99]


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("size", [100, 101, 70000])
def test_message_at_or_over_the_limit_is_too_big(opcode: int, size: int) -> None:
    """A message of max_message_size bytes or more is refused with 1009, the session's reason
    being "payload too large"."""
    events = read(frame(b"a" * size, opcode), limit=100)
    refused(events, CloseCode.MESSAGE_TOO_BIG)
    error = events[-1]
    assert isinstance(error, FrameError)
    assert error.reason == reasons.PAYLOAD_TOO_LARGE


def test_oversized_message_is_refused_from_its_header() -> None:
    """An oversized frame is refused as soon as its header announces it, before its payload
    arrives (nothing is buffered for it)."""
    head = frame(b"a" * 70000, OP_BINARY)[:14]
    refused(FrameReader(100).feed(head), CloseCode.MESSAGE_TOO_BIG)


def test_fragments_one_byte_under_the_limit_pass() -> None:
    """A fragmented message totalling max_message_size - 1 bytes is delivered, and the count
    starts afresh for the next message; control frames between fragments do not count."""
    events = read(
        frame(b"a" * 50, OP_BINARY, fin=False),
        frame(b"p" * 50, OP_PING),
        frame(b"b" * 49, OP_CONTINUATION),
        frame(b"c" * 60, OP_BINARY, fin=False),
        frame(b"d" * 39, OP_CONTINUATION),
        limit=100,
    )
    assert events == [Ping(b"p" * 50), b"a" * 50 + b"b" * 49, b"c" * 60 + b"d" * 39]


@pytest.mark.parametrize("last", [50, 51])
def test_fragments_reaching_the_limit_are_too_big(last: int) -> None:
    """A fragmented message reaching max_message_size only with its last fragment is refused
    with 1009, as soon as that fragment's header shows it."""
    first = frame(b"a" * 50, OP_TEXT, fin=False)
    refused(read(first, frame(b"b" * last, OP_CONTINUATION), limit=100), CloseCode.MESSAGE_TOO_BIG)
    second_head = frame(b"b" * last, OP_CONTINUATION)[:2]
    refused(read(first, second_head, limit=100), CloseCode.MESSAGE_TOO_BIG)


def test_limit_applies_to_data_messages_only() -> None:
    """Control frames are bounded by §5.5 (125 bytes), not by max_message_size."""
    events = read(
        frame(b"p" * 100, OP_PING), frame(close_payload(1000, b"r" * 50), OP_CLOSE), limit=10
    )
    assert events == [Ping(b"p" * 100), CloseReceived(1000, "r" * 50)]


def test_limit_of_zero_means_no_limit() -> None:
    """With max_message_size 0, a message of any size is delivered."""
    assert read(frame(b"a" * 70000, OP_BINARY), limit=0) == [b"a" * 70000]


# --- what comes before a bad frame -----------------------------------------------------------


def test_messages_before_a_bad_frame_are_still_delivered() -> None:
    """The messages and pings before a bad frame in the same chunk are handed back before its
    FrameError, whose session reason is "transport error"; later bytes are not read."""
    reader = FrameReader(LIMIT)
    events = reader.feed(
        frame(b"first", OP_TEXT)
        + frame(b"\x01", OP_BINARY)
        + frame(b"p", OP_PING)
        + frame(b"x", 0x3)
        + frame(b"never", OP_TEXT)
    )
    assert refused(events, CloseCode.PROTOCOL_ERROR) == ["first", b"\x01", Ping(b"p")]
    error = events[-1]
    assert isinstance(error, FrameError)
    assert error.reason == reasons.TRANSPORT_ERROR
    assert reader.feed(frame(b"later", OP_TEXT)) == []


def test_message_completed_by_the_chunk_of_a_bad_frame_is_delivered() -> None:
    """A message whose last bytes come in the chunk that also holds a bad frame is delivered."""
    reader = FrameReader(LIMIT)
    message = frame(b"whole", OP_TEXT)
    assert reader.feed(message[:4]) == []
    events = reader.feed(message[4:] + frame(b"\xff", OP_TEXT))
    assert refused(events, CloseCode.INVALID_TEXT) == ["whole"]


# --- chunking does not matter ----------------------------------------------------------------

masks = st.one_of(st.none(), st.binary(min_size=4, max_size=4))
big = st.sampled_from([125, 126, 65535, 65536]).map(lambda n: b"\x00" * n)
pings_and_pongs = st.builds(
    lambda op, payload, mask: frame(payload, op, mask=mask),
    st.sampled_from([OP_PING, OP_PONG]),
    st.binary(max_size=125),
    masks,
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """The frames of one valid message, cut into fragments with pings and pongs between."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
    small = st.text(max_size=40).map(str.encode) if opcode == OP_TEXT else st.binary(max_size=200)
    payload = draw(st.one_of(small, big))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames: list[bytes] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        op = opcode if i == 0 else OP_CONTINUATION
        frames.append(frame(part, op, fin=last, mask=draw(masks)))
        if not last:
            frames += draw(st.lists(pings_and_pongs, max_size=2))
    return b"".join(frames)


close_bodies = st.one_of(
    st.binary(max_size=3),
    st.builds(
        close_payload,
        st.sampled_from([1000, 1001, 1005, 1006, 999, 3000, 4999]),
        st.one_of(st.text(max_size=20).map(str.encode), st.binary(max_size=5)),
    ),
)
any_frame = st.one_of(  # anything at all, valid or not, in frame form or not
    st.builds(
        lambda op, fin, rsv, payload, mask: frame(payload, op, fin=fin, rsv=rsv, mask=mask),
        st.integers(0, 15),
        st.booleans(),
        st.sampled_from([0, 0, 0, RSV1, RSV3]),
        st.one_of(st.binary(max_size=200), big),
        masks,
    ),
    st.builds(lambda body, mask: frame(body, OP_CLOSE, mask=mask), close_bodies, masks),
    st.binary(min_size=1, max_size=12),
)
streams = st.tuples(
    st.lists(messages(), max_size=4),
    st.lists(any_frame, max_size=3),
    st.lists(messages(), max_size=2),
).map(lambda groups: b"".join(b"".join(group) for group in groups))


@settings(deadline=None)
@given(
    stream=streams,
    limit=st.sampled_from([0, 100, 70000]),
    data=st.data(),
)
def test_chunking_does_not_change_the_events(
    stream: bytes, limit: int, data: st.DataObject
) -> None:
    """The same bytes cut into arbitrary chunks give the same messages, control frames and
    final error as when fed in one piece, and at most one FrameError, last."""
    whole = FrameReader(limit).feed(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts"))
    reader = FrameReader(limit)
    chunked: list[Event] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        chunked += reader.feed(stream[a:b])
    assert outcome(chunked) == outcome(whole)
    errors = [i for i, e in enumerate(whole) if isinstance(e, FrameError)]
    assert errors in ([], [len(whole) - 1])
