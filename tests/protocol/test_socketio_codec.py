"""Socket.IO v5, sans-I/O: packet encoding, decoding, binary attachments and decoder limits.

Vectors are the examples of ``docs/socket.io-protocol/v5-current.md``; the validity rules mirror
socket.io-parser's ``Decoder.isPayloadValid`` (4.2.x). No event loop is involved.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.errors import RemoteProtocolError
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.socketio import (
    Decoder,
    DecoderLimits,
    Encoded,
    Namespace,
    Packet,
    PacketType,
)

B1234 = b"\x01\x02\x03\x04"


def ph(num: int) -> dict[str, Any]:
    """A binary placeholder as the wire carries it."""
    return {"_placeholder": True, "num": num}


def decode(text: str, *attachments: bytes, limits: DecoderLimits | None = None) -> Packet:
    """Feed one text message and its attachments to a fresh decoder; return the packet."""
    decoder = Decoder(limits)
    packet = decoder.feed(text)
    for i, attachment in enumerate(attachments):
        assert packet is None, f"packet completed before attachment {i}"
        packet = decoder.feed(attachment)
    assert packet is not None, "packet still awaiting attachments"
    assert not decoder.awaiting_attachments
    return packet


def refused(text: str, *attachments: bytes, limits: DecoderLimits | None = None) -> str:
    """Feed a message that must be refused; return the named reason."""
    decoder = Decoder(limits)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(text)
        for attachment in attachments:
            decoder.feed(attachment)
    return info.value.reason


# --- the spec's examples, both ways ----------------------------------------------------------

ADMIN = Namespace("/admin")

# (packet as the server would build it, encoded text, attachments)
SPEC_VECTORS: list[tuple[Packet, str, tuple[bytes, ...]]] = [
    (Packet(PacketType.CONNECT), "0", ()),
    (
        Packet(PacketType.CONNECT, ADMIN, {"sid": "oSO0OpakMV_3jnilAAAA"}),
        '0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}',
        (),
    ),
    (
        Packet(PacketType.CONNECT, data={"sid": "wZX3oN0bSVIhsaknAAAI"}),
        '0{"sid":"wZX3oN0bSVIhsaknAAAI"}',
        (),
    ),
    (
        Packet(PacketType.CONNECT_ERROR, data={"message": "Not authorized"}),
        '4{"message":"Not authorized"}',
        (),
    ),
    (Packet(PacketType.EVENT, data=["foo"]), '2["foo"]', ()),
    (Packet(PacketType.EVENT, ADMIN, ["bar"]), '2/admin,["bar"]', ()),
    (Packet(PacketType.EVENT, data=["hey", "Jude"]), '2["hey","Jude"]', ()),
    (
        Packet(PacketType.BINARY_EVENT, data=["baz", B1234]),
        '51-["baz",{"_placeholder":true,"num":0}]',
        (B1234,),
    ),
    (
        Packet(PacketType.BINARY_EVENT, ADMIN, ["baz", b"\x01\x02", b"\x03\x04"]),
        '52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
        (b"\x01\x02", b"\x03\x04"),
    ),
    (Packet(PacketType.EVENT, data=["foo"], id=12), '212["foo"]', ()),
    (Packet(PacketType.ACK, data=[], id=12), "312[]", ()),
    (Packet(PacketType.ACK, ADMIN, ["bar"], 13), '3/admin,13["bar"]', ()),
    (
        Packet(PacketType.BINARY_ACK, data=["bar", B1234], id=15),
        '61-15["bar",{"_placeholder":true,"num":0}]',
        (B1234,),
    ),
    (
        Packet(PacketType.BINARY_ACK, ADMIN, [b"\xff"], 1),
        '61-/admin,1[{"_placeholder":true,"num":0}]',
        (b"\xff",),
    ),
    (Packet(PacketType.DISCONNECT), "1", ()),
    (Packet(PacketType.DISCONNECT, ADMIN), "1/admin,", ()),
]


@pytest.mark.parametrize(("packet", "text", "attachments"), SPEC_VECTORS)
def test_encode_spec_examples(packet: Packet, text: str, attachments: tuple[bytes, ...]) -> None:
    """Encoding gives exactly the spec's text and attachments (§Packet encoding, Examples)."""
    assert sio.encode(packet) == Encoded(text, attachments)


@pytest.mark.parametrize(("packet", "text", "attachments"), SPEC_VECTORS)
def test_decode_spec_examples(packet: Packet, text: str, attachments: tuple[bytes, ...]) -> None:
    """Decoding the spec's text and attachments gives back the packet, binaries in place."""
    assert decode(text, *attachments) == packet


def test_event_with_bytes_becomes_binary_event() -> None:
    """An EVENT whose args contain bytes is sent as BINARY_EVENT with attachments."""
    assert sio.encode(Packet(PacketType.EVENT, data=["baz", B1234])) == Encoded(
        '51-["baz",{"_placeholder":true,"num":0}]', (B1234,)
    )


def test_ack_with_bytes_becomes_binary_ack() -> None:
    """An ACK whose args contain bytes is sent as BINARY_ACK, attachment count before the id."""
    assert sio.encode(Packet(PacketType.ACK, data=["bar", B1234], id=15)) == Encoded(
        '61-15["bar",{"_placeholder":true,"num":0}]', (B1234,)
    )


def test_encoding_is_compact_json_without_ascii_escapes() -> None:
    """Payloads are written like JSON.stringify: no spaces, non-ASCII kept as is."""
    encoded = sio.encode(Packet(PacketType.EVENT, data=["é😀", {"a": [1, 2.5, None, True]}]))
    assert encoded.text == '2["é😀",{"a":[1,2.5,null,true]}]'


def test_lone_surrogate_is_escaped_like_json_stringify() -> None:
    """A lone surrogate a peer sent as ``\\ud800`` is re-encoded escaped: the text stays UTF-8."""
    packet = decode('2["x","\\ud800"]')
    assert packet.data == ["x", "\ud800"]
    for encoded in (sio.encode(packet), sio.encode_event("/", "x", ["\ud800"])):
        assert encoded.text == '2["x","\\ud800"]'
        encoded.text.encode("utf-8")  # must not raise
    assert sio.dumps({"\udfff": "é"}) == '{"\\udfff":"é"}'


def test_bytearray_and_memoryview_are_attachments() -> None:
    """bytearray and memoryview args travel as attachments, as bytes."""
    encoded = sio.encode(Packet(PacketType.EVENT, data=["e", bytearray(b"ab"), memoryview(b"cd")]))
    assert encoded.attachments == (b"ab", b"cd")
    assert all(type(a) is bytes for a in encoded.attachments)


def test_nested_attachments_are_numbered_depth_first() -> None:
    """Placeholders are numbered in depth-first order, through lists and dicts."""
    encoded = sio.encode(
        Packet(PacketType.EVENT, data=["e", {"a": [b"0", {"b": b"1"}]}, (b"2",), b"3"])
    )
    assert encoded.attachments == (b"0", b"1", b"2", b"3")
    assert json.loads(encoded.text[3:]) == ["e", {"a": [ph(0), {"b": ph(1)}]}, [ph(2)], ph(3)]
    assert encoded.text.startswith("54-[")


@pytest.mark.parametrize("namespace", ["/", "/admin", "/a-b_c/d"])
@pytest.mark.parametrize("ack_id", [None, 0, 7, sio.MAX_ACK_ID])
@pytest.mark.parametrize("args", [(), ("x", 1), ({"k": [None]},), (b"\x00", "y", [b"\x01"])])
def test_encode_event_fast_path_matches_encode(
    namespace: str, ack_id: int | None, args: tuple[Any, ...]
) -> None:
    """``encode_event`` produces exactly what the generic ``encode`` does."""
    generic = sio.encode(Packet(PacketType.EVENT, Namespace(namespace), ["ev", *args], ack_id))
    assert sio.encode_event(namespace, "ev", args, ack_id) == generic
    assert sio.encode_event(namespace, "ev", list(args), ack_id) == generic


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"", True),
        (["a", [{"b": (1, bytearray(1))}]], True),
        ({"x": memoryview(b"")}, True),
        (["a", 1, None, {"b": "c"}], False),
        ("bytes", False),
    ],
)
def test_has_binary(value: Any, expected: bool) -> None:
    """``has_binary`` finds bytes-like values at any depth, and only those."""
    assert sio.has_binary(value) is expected


# --- decoding details ------------------------------------------------------------------------


def test_decoded_binary_event_keeps_binary_type() -> None:
    """A BINARY_EVENT decodes to a BINARY_EVENT packet with the bytes put back."""
    packet = decode('51-["baz",{"_placeholder":true,"num":0}]', B1234)
    assert packet.type is PacketType.BINARY_EVENT
    assert packet.data == ["baz", B1234]
    assert type(packet.data[1]) is bytes


def test_nested_attachments_are_reconstructed_in_order() -> None:
    """Placeholders anywhere in the payload get the attachment with their number."""
    text = (
        '53-["e",{"a":[{"_placeholder":true,"num":2}]},'
        '{"_placeholder":true,"num":0},[{"_placeholder":true,"num":1}]]'
    )
    packet = decode(text, b"zero", b"one", b"two")
    assert packet.data == ["e", {"a": [b"two"]}, b"zero", [b"one"]]


def test_same_attachment_may_be_referenced_twice() -> None:
    """Two placeholders with the same number both receive that attachment (as the JS parser)."""
    packet = decode(
        '52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]', b"a", b"b"
    )
    assert packet.data == ["e", b"a", b"a"]


def test_decoder_reports_awaiting_attachments() -> None:
    """The decoder returns None and says so until the last attachment arrives."""
    decoder = Decoder()
    assert (
        decoder.feed('52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]') is None
    )
    assert decoder.awaiting_attachments
    assert decoder.feed(b"a") is None
    assert decoder.awaiting_attachments
    packet = decoder.feed(b"b")
    assert packet is not None and packet.data == ["e", b"a", b"b"]
    assert not decoder.awaiting_attachments


def test_decoder_handles_a_stream_of_packets() -> None:
    """One decoder decodes text and binary packets one after another."""
    decoder = Decoder()
    assert decoder.feed("0") == Packet(PacketType.CONNECT)
    assert decoder.feed('51-["b",{"_placeholder":true,"num":0}]') is None
    assert decoder.feed(b"x") == Packet(PacketType.BINARY_EVENT, data=["b", b"x"])
    assert decoder.feed('2["a"]') == Packet(PacketType.EVENT, data=["a"])


def test_numeric_event_name_is_valid() -> None:
    """A number as event name is allowed (isPayloadValid: typeof payload[0] === "number")."""
    assert decode("2[1,2]").data == [1, 2]
    assert decode("2[1.5]").data == [1.5]


def test_connect_with_auth_payload_on_namespace() -> None:
    """A CONNECT may carry an auth object (§Connection to a namespace, with a payload)."""
    assert decode('0/admin,{"token":"123"}') == Packet(PacketType.CONNECT, ADMIN, {"token": "123"})


def test_connect_error_may_be_a_string() -> None:
    """CONNECT_ERROR accepts a plain string payload (isPayloadValid: string or object)."""
    assert decode('4"nope"').data == "nope"


def test_namespace_without_comma_runs_to_the_end() -> None:
    """``0/admin`` (no comma, no payload) is a CONNECT to ``/admin``, as the JS parser reads it."""
    assert decode("0/admin") == Packet(PacketType.CONNECT, ADMIN)


def test_ack_id_after_namespace_and_before_payload() -> None:
    """The ack id sits between ``nsp,`` and the JSON (§Acknowledgement, custom namespace)."""
    assert decode('2/admin,13["foo"]') == Packet(PacketType.EVENT, ADMIN, ["foo"], 13)


def test_largest_ack_id_is_accepted() -> None:
    """An ack id equal to the limit (2**53 - 1 by default) decodes."""
    assert decode(f'2{sio.MAX_ACK_ID}["a"]').id == sio.MAX_ACK_ID


def test_attachment_count_at_limit_is_accepted() -> None:
    """Exactly ``max_attachments`` attachments decode."""
    limits = DecoderLimits(max_attachments=2)
    text = '52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
    assert decode(text, b"a", b"b", limits=limits).data == ["e", b"a", b"b"]


# --- malformed input and limits --------------------------------------------------------------


@pytest.mark.parametrize("count", ["11", "999999", "1000000", "99999999999999999999"])
def test_attachment_count_over_limit(count: str) -> None:
    """An announced attachment count over ``max_attachments`` is ``too many attachments``."""
    assert refused(f'5{count}-["e"]') == reasons.TOO_MANY_ATTACHMENTS


def test_attachment_limit_comes_from_limits() -> None:
    """``DecoderLimits.max_attachments`` is the bound the decoder applies."""
    limits = DecoderLimits(max_attachments=1)
    assert refused('52-["e"]', limits=limits) == reasons.TOO_MANY_ATTACHMENTS
    assert refused('62-1["e"]', limits=limits) == reasons.TOO_MANY_ATTACHMENTS


@pytest.mark.parametrize(
    "text",
    [
        '5-["e"]',  # no count
        '5["e"]',  # no dash
        '5x-["e"]',
        '5\u0661-["e"]',  # ARABIC-INDIC DIGIT ONE: isdigit() but not ASCII
        '50-["e",{"_placeholder":true,"num":0}]',  # zero attachments: nothing fills it
    ],
)
def test_bad_attachment_count_is_parse_error(text: str) -> None:
    """A missing or non-numeric count, or a placeholder with no attachment, is ``parse error``."""
    assert refused(text) == reasons.PARSE_ERROR


def test_zero_attachments_decode_at_once() -> None:
    """``50-[...]`` without placeholders is complete at once, as socket.io-parser accepts it."""
    packet = sio.Decoder().feed('50-["e",1]')
    assert packet is not None
    assert packet.data == ["e", 1]


@pytest.mark.parametrize(
    "placeholder",
    [
        '{"_placeholder":true,"num":1}',
        '{"_placeholder":true,"num":-1}',
        '{"_placeholder":true,"num":"0"}',
        '{"_placeholder":true,"num":0.5}',
        '{"_placeholder":true,"num":true}',
        '{"_placeholder":true,"num":null}',
    ],
)
def test_placeholder_out_of_range_is_parse_error(placeholder: str) -> None:
    """A placeholder whose number is not an index into the attachments is ``parse error``."""
    assert refused(f'51-["e",{placeholder}]', b"a") == reasons.PARSE_ERROR


def test_decoder_recovers_after_bad_placeholder() -> None:
    """After a refused reconstruction the decoder is no longer awaiting attachments."""
    decoder = Decoder()
    decoder.feed('51-["e",{"_placeholder":true,"num":3}]')
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"a")
    assert not decoder.awaiting_attachments
    assert decoder.feed('2["ok"]') == Packet(PacketType.EVENT, data=["ok"])


def test_text_while_awaiting_attachments_is_parse_error() -> None:
    """A text message before the announced attachments have all arrived is ``parse error``."""
    decoder = Decoder()
    decoder.feed('52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    decoder.feed(b"a")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed('2["next"]')
    assert info.value.reason == reasons.PARSE_ERROR


def test_binary_without_header_is_parse_error() -> None:
    """A binary message no BINARY_* header announced is ``parse error``."""
    assert refused(b"\x00") == reasons.PARSE_ERROR  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        f'2{sio.MAX_ACK_ID + 1}["a"]',
        '212345678901234567["a"]',  # 17 digits
        "3" + "9" * 5000 + "[]",  # would exceed int()'s digit limit if parsed
    ],
)
def test_ack_id_over_limit_is_invalid_ack_id(text: str) -> None:
    """An ack id past JavaScript's safe integers (or the configured bound) is ``invalid ack id``."""
    assert refused(text) == reasons.INVALID_ACK_ID


def test_ack_id_limit_comes_from_limits() -> None:
    """``DecoderLimits.max_ack_id`` is the bound the decoder applies."""
    limits = DecoderLimits(max_ack_id=99)
    assert decode('299["a"]', limits=limits).id == 99
    assert refused('2100["a"]', limits=limits) == reasons.INVALID_ACK_ID


@pytest.mark.parametrize("text", ["3[]", "3/admin,[]", '61-[{"_placeholder":true,"num":0}]'])
def test_ack_without_id_is_invalid_ack_id(text: str) -> None:
    """An ACK or BINARY_ACK without an id is ``invalid ack id``."""
    assert refused(text, b"a") == reasons.INVALID_ACK_ID


@pytest.mark.parametrize("text", ['01{"a":1}', "11", '41{"message":"x"}'])
def test_ack_id_on_non_event_packet_is_invalid_ack_id(text: str) -> None:
    """CONNECT, DISCONNECT and CONNECT_ERROR may not carry an ack id."""
    assert refused(text) == reasons.INVALID_ACK_ID


@pytest.mark.parametrize("event", sorted(sio.RESERVED_EVENTS))
def test_reserved_event_names_are_refused(event: str) -> None:
    """A client may not emit socket.io's reserved event names (RESERVED_EVENTS)."""
    assert refused(f"2{json.dumps([event])}") == reasons.PARSE_ERROR
    assert refused(f'51-["{event}",{{"_placeholder":true,"num":0}}]', b"a") == reasons.PARSE_ERROR


def test_reserved_name_as_later_argument_is_fine() -> None:
    """Only the event name is checked against the reserved list, not the arguments."""
    assert decode('2["msg","connect"]').data == ["msg", "connect"]


# isPayloadValid, rule by rule: socket.io-parser 4.2.x refuses each of these too.
JS_INVALID_PAYLOADS = [
    # CONNECT: absent or an object
    '0["a"]',
    '0"a"',
    "0null",
    "0true",
    # DISCONNECT: no payload at all
    "1{}",
    "1[]",
    '1"x"',
    "1null",
    # EVENT / BINARY_EVENT: a non-empty array whose first item is a number or a string
    "2[]",
    "2{}",
    '2"foo"',
    "2null",
    "2[null]",
    "2[true]",
    '2[["a"]]',
    '2[{"a":1}]',
    # ACK / BINARY_ACK: an array
    "31{}",
    '31"a"',
    "31null",
    # CONNECT_ERROR: a string or an object
    "4[]",
    "4null",
    "4true",
    # not JSON (JSON.parse throws)
    "2[",
    '2["a"]x',
    "2['a']",
    '2["a",NaN]',
    '2["a",Infinity]',
    '2["a",-Infinity]',
    # unknown packet types
    "",
    "7",
    "9[]",
    "x",
]

# socket.io-parser skips the payload check when there is no payload; the spec says EVENT and
# ACK payloads are mandatory, and roomcast holds clients to that. 1e400 is valid JSON but
# overflows to Infinity, which could not be re-encoded for other clients.
STRICTER_THAN_JS = ["2", "2/admin,", "31", "4", "4/admin,", '2["a",1e400]']


@pytest.mark.parametrize("text", JS_INVALID_PAYLOADS + STRICTER_THAN_JS)
def test_invalid_payload_shapes_are_parse_error(text: str) -> None:
    """Payloads of the wrong shape for their type, or not JSON, are ``parse error``."""
    assert refused(text) == reasons.PARSE_ERROR


# --- property: encode -> decode round trip ---------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(max_size=8).filter(lambda k: k != "_placeholder"), inner, max_size=5
        )
    ),
    max_leaves=30,
)
event_names = st.one_of(
    st.text(max_size=16).filter(lambda s: s not in sio.RESERVED_EVENTS),
    st.integers(min_value=0, max_value=10**6),
)
namespaces = st.sampled_from(["/", "/admin", "/chat/room-1", "/ü"])


def wire_form(value: Any) -> Any:
    """What a value looks like after decoding: tuples become lists, bytes-likes bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [wire_form(v) for v in value]
    if isinstance(value, dict):
        return {k: wire_form(v) for k, v in value.items()}
    return value


def count_binaries(value: Any) -> int:
    if isinstance(value, bytes):
        return 1
    if isinstance(value, list):
        return sum(count_binaries(v) for v in value)
    if isinstance(value, dict):
        return sum(count_binaries(v) for v in value.values())
    return 0


@settings(max_examples=300, deadline=None)
@given(
    namespace=namespaces,
    event=event_names,
    args=st.lists(json_value, max_size=5),
    ack_id=st.none() | st.integers(min_value=0, max_value=sio.MAX_ACK_ID),
)
def test_event_round_trip(namespace: str, event: Any, args: list[Any], ack_id: int | None) -> None:
    """Any JSON-able args with bytes anywhere survive encode -> decode unchanged."""
    encoded = sio.encode(Packet(PacketType.EVENT, Namespace(namespace), [event, *args], ack_id))
    expected_binaries = count_binaries(wire_form(args))
    assert len(encoded.attachments) == expected_binaries
    limits = DecoderLimits(max_attachments=max(expected_binaries, 1))
    packet = decode(encoded.text, *encoded.attachments, limits=limits)
    assert packet.type is (PacketType.BINARY_EVENT if expected_binaries else PacketType.EVENT)
    assert packet.namespace == namespace
    assert packet.id == ack_id
    assert packet.data == wire_form([event, *args])
    if isinstance(event, str):
        assert sio.encode_event(namespace, event, args, ack_id) == encoded


@settings(max_examples=200, deadline=None)
@given(
    namespace=namespaces,
    args=st.lists(json_value, max_size=5),
    ack_id=st.integers(min_value=0, max_value=sio.MAX_ACK_ID),
)
def test_ack_round_trip(namespace: str, args: list[Any], ack_id: int) -> None:
    """Any JSON-able ack args with bytes anywhere survive encode -> decode unchanged."""
    encoded = sio.encode(Packet(PacketType.ACK, Namespace(namespace), args, ack_id))
    limits = DecoderLimits(max_attachments=max(len(encoded.attachments), 1))
    packet = decode(encoded.text, *encoded.attachments, limits=limits)
    assert packet.type in (PacketType.ACK, PacketType.BINARY_ACK)
    assert packet.namespace == namespace
    assert packet.id == ack_id
    assert packet.data == wire_form(args)


# --- offsets (connection state recovery) ---------------------------------------------------------

OFFSET = "AAAAAAAA1f"


@settings(max_examples=200, deadline=None)
@given(namespace=namespaces, event=event_names, args=st.lists(json_value, max_size=5))
def test_offset_is_appended_as_the_last_argument(
    namespace: str, event: Any, args: list[Any]
) -> None:
    """An EVENT without an ack id (binary or not) decodes with the offset as its last argument,
    the other arguments and attachments unchanged."""
    encoded = sio.encode(Packet(PacketType.EVENT, Namespace(namespace), [event, *args]))
    text = sio.append_offset(encoded.text, OFFSET)
    assert text is not None
    limits = DecoderLimits(max_attachments=max(len(encoded.attachments), 1))
    packet = decode(text, *encoded.attachments, limits=limits)
    assert packet.namespace == namespace and packet.id is None
    assert packet.data == wire_form([event, *args, OFFSET])


@pytest.mark.parametrize(
    "text",
    [
        '21["e"]',  # an ack id: answered, never replayed
        '2/chat,7["e"]',
        '51-3[{"_placeholder":true,"num":0}]',
        "3/chat,1[]",  # not an EVENT
        '0{"sid":"x"}',
        "1",
        "",
        '51[{"_placeholder":true,"num":0}]',  # no attachment count terminator
        '2/chat["e"]',  # a namespace without its comma
    ],
)
def test_offset_goes_only_on_events_without_ack(text: str) -> None:
    """Packets other than an EVENT without an ack id get no offset."""
    assert sio.append_offset(text, OFFSET) is None
