"""Engine.IO v4, sans-I/O: packets, polling payloads and the EngineSession state machine.

Every test feeds strings, bytes and ``now`` values; nothing here needs an event loop. Vectors
marked "spec" are the examples of ``docs/engine.io-protocol/v4-current.md``.
"""

from __future__ import annotations

import json

import pytest

from roomcast.errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol import engineio as eio
from roomcast.protocol import reasons
from roomcast.protocol.engineio import (
    EngineSession,
    EngineSettings,
    EngineState,
    MessageReceived,
    Packet,
    PacketType,
    SendPacket,
    SessionClosed,
    TransportKind,
    UpgradeCompleted,
)

T0 = 1000.0  # an arbitrary start time: the session never reads the clock itself

# --- packets ---------------------------------------------------------------------------------

TEXT_VECTORS = [
    (Packet(PacketType.OPEN, '{"sid":"x"}'), '0{"sid":"x"}'),
    (Packet(PacketType.CLOSE), "1"),
    (Packet(PacketType.PING), "2"),
    (Packet(PacketType.PING, "probe"), "2probe"),
    (Packet(PacketType.PONG), "3"),
    (Packet(PacketType.PONG, "probe"), "3probe"),
    (Packet(PacketType.MESSAGE, "hello"), "4hello"),
    (Packet(PacketType.MESSAGE, ""), "4"),
    (Packet(PacketType.MESSAGE, "€ and 😀"), "4€ and 😀"),
    (Packet(PacketType.UPGRADE), "5"),
    (Packet(PacketType.NOOP), "6"),
]


@pytest.mark.parametrize(("packet", "text"), TEXT_VECTORS)
def test_encode_text_every_packet_type(packet: Packet, text: str) -> None:
    """Each packet type encodes as its type digit followed by its data (§Packet encoding)."""
    assert eio.encode_text(packet) == text


@pytest.mark.parametrize(("packet", "text"), TEXT_VECTORS)
def test_decode_text_every_packet_type(packet: Packet, text: str) -> None:
    """Each type digit decodes back to the same packet type and data."""
    assert eio.decode_text(text) == packet


def test_encode_message_is_prefixed_with_4() -> None:
    """The hot-path MESSAGE encoder produces the same text as the generic one (spec: 4hello)."""
    assert eio.encode_message("hello") == "4hello"
    assert eio.encode_message("x") == eio.encode_text(Packet(PacketType.MESSAGE, "x"))


def test_binary_message_is_base64_with_b_prefix() -> None:
    """A binary MESSAGE on a text channel is ``b`` + base64 (spec: <01 02 03 04> -> bAQIDBA==)."""
    assert eio.encode_text(Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")) == "bAQIDBA=="


def test_base64_binary_decodes_to_bytes_message() -> None:
    """``b`` + base64 decodes to a MESSAGE whose data is bytes (spec example)."""
    assert eio.decode_text("bAQIDBA==") == Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")


def test_empty_binary_message_round_trips() -> None:
    """A zero-length binary message is ``b`` alone and decodes back to ``b""``."""
    assert eio.encode_text(Packet(PacketType.MESSAGE, b"")) == "b"
    assert eio.decode_text("b") == Packet(PacketType.MESSAGE, b"")


def test_binary_round_trip_all_byte_values() -> None:
    """Every byte value survives the base64 encoding used by polling."""
    data = bytes(range(256))
    assert eio.decode_text(eio.encode_text(Packet(PacketType.MESSAGE, data))).data == data


@pytest.mark.parametrize("frame", [b"\x00\xff", bytearray(b"\x01\x02"), memoryview(b"abc")])
def test_websocket_binary_frame_is_binary_message(frame: bytes) -> None:
    """A WebSocket binary frame is a MESSAGE carrying the raw bytes (§WebSocket: sent as is)."""
    packet = eio.decode_binary_frame(frame)
    assert packet.type is PacketType.MESSAGE
    assert type(packet.data) is bytes
    assert packet.data == bytes(frame)


@pytest.mark.parametrize(
    "text",
    [
        "",  # nothing at all
        "7",  # past NOOP
        "9hello",
        "x",
        "-1",
        "b!!!!",  # not base64
        "bAQI",  # base64 with bad padding
        "bAQ IDBA==",  # whitespace is not accepted by strict decoding
    ],
)
def test_malformed_packet_is_parse_error(text: str) -> None:
    """Unknown type characters, empty packets and bad base64 raise ``parse error``."""
    with pytest.raises(RemoteProtocolError) as info:
        eio.decode_text(text)
    assert info.value.reason == reasons.PARSE_ERROR


# --- polling payloads ------------------------------------------------------------------------


def test_payload_split_spec_example() -> None:
    """``4hello\\x1e2\\x1e4world`` is MESSAGE, PING, MESSAGE (spec example)."""
    assert eio.decode_payload("4hello\x1e2\x1e4world", max_packets=10) == [
        Packet(PacketType.MESSAGE, "hello"),
        Packet(PacketType.PING),
        Packet(PacketType.MESSAGE, "world"),
    ]


def test_payload_split_with_binary_spec_example() -> None:
    """``4hello\\x1ebAQIDBA==`` is a text and a binary MESSAGE (spec example)."""
    assert eio.decode_payload("4hello\x1ebAQIDBA==", max_packets=10) == [
        Packet(PacketType.MESSAGE, "hello"),
        Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04"),
    ]


def test_payload_join_uses_record_separator() -> None:
    """Encoded packets are joined with ``\\x1e`` and nothing else (spec example)."""
    texts = [eio.encode_text(p) for p in (Packet(PacketType.MESSAGE, "hello"), eio.PING)]
    texts.append(eio.encode_text(Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")))
    assert eio.encode_payload(texts) == "4hello\x1e2\x1ebAQIDBA=="
    assert eio.encode_payload(["4one"]) == "4one"


def test_payload_round_trip() -> None:
    """Joining encoded packets and splitting them again gives back the same packets."""
    packets = [
        Packet(PacketType.MESSAGE, '2["a",1]'),
        Packet(PacketType.MESSAGE, b"\x00\x1e\xff"),  # a separator byte inside binary is safe
        eio.NOOP,
        eio.CLOSE,
    ]
    body = eio.encode_payload(eio.encode_text(p) for p in packets)
    assert eio.decode_payload(body, max_packets=4) == packets


def test_payload_at_packet_limit_is_accepted() -> None:
    """A body with exactly ``max_packets`` packets decodes."""
    assert len(eio.decode_payload("\x1e".join(["4a"] * 3), max_packets=3)) == 3


def test_payload_past_packet_limit_is_too_many_packets() -> None:
    """One packet more than ``max_packets`` raises ``too many packets``."""
    with pytest.raises(RemoteProtocolError) as info:
        eio.decode_payload("\x1e".join(["4a"] * 4), max_packets=3)
    assert info.value.reason == reasons.TOO_MANY_PACKETS


@pytest.mark.parametrize("body", ["", "4a\x1e", "\x1e4a", "4a\x1e\x1e4b", "4a\x1e9"])
def test_malformed_payload_is_parse_error(body: str) -> None:
    """An empty body, an empty record or an unknown packet in a payload is ``parse error``."""
    with pytest.raises(RemoteProtocolError) as info:
        eio.decode_payload(body, max_packets=10)
    assert info.value.reason == reasons.PARSE_ERROR


# --- the session: handshake ------------------------------------------------------------------


def make_session(
    transport: TransportKind = TransportKind.POLLING, now: float = T0, **settings: object
) -> EngineSession:
    """A session with sub-second heartbeat timings (the compliance suite's 300/200 ms)."""
    base: dict[str, object] = {"ping_interval_ms": 300, "ping_timeout_ms": 200}
    base.update(settings)
    return EngineSession("sid123", transport, EngineSettings(**base), now)  # type: ignore[arg-type]


def open_fields(session: EngineSession) -> dict[str, object]:
    text = session.open_packet()
    assert text[0] == "0"
    fields: dict[str, object] = json.loads(text[1:])
    return fields


def test_open_packet_fields_for_polling() -> None:
    """The OPEN packet carries sid, upgrades, pingInterval, pingTimeout, maxPayload (§Handshake)."""
    session = make_session(max_payload=1_000_000)
    assert open_fields(session) == {
        "sid": "sid123",
        "upgrades": ["websocket"],
        "pingInterval": 300,
        "pingTimeout": 200,
        "maxPayload": 1_000_000,
    }


def test_open_packet_times_are_integer_milliseconds() -> None:
    """Sub-second heartbeat settings are written as JSON integers of milliseconds, compactly."""
    text = make_session().open_packet()
    assert '"pingInterval":300,' in text
    assert '"pingTimeout":200,' in text
    assert " " not in text
    fields = open_fields(make_session())
    assert type(fields["pingInterval"]) is int
    assert type(fields["pingTimeout"]) is int


def test_open_packet_offers_no_upgrade_on_websocket() -> None:
    """A session that starts on WebSocket offers no upgrades."""
    assert open_fields(make_session(TransportKind.WEBSOCKET))["upgrades"] == []


def test_open_packet_offers_no_upgrade_when_disabled() -> None:
    """``allow_upgrades = false`` empties the upgrades list of a polling session."""
    assert open_fields(make_session(allow_upgrades=False))["upgrades"] == []


def test_new_session_is_open_on_its_transport() -> None:
    """A fresh session is OPEN, not closed, on the transport it was created for."""
    session = make_session(TransportKind.WEBSOCKET)
    assert session.state is EngineState.OPEN
    assert session.transport is TransportKind.WEBSOCKET
    assert not session.closed
    assert session.close_reason is None


# --- the session: heartbeat ------------------------------------------------------------------


def test_first_ping_is_due_one_interval_after_start() -> None:
    """The first PING deadline is ``now + pingInterval`` (§Heartbeat: the server pings)."""
    session = make_session(now=T0)
    assert session.next_deadline == pytest.approx(T0 + 0.3)


def test_no_ping_before_the_deadline() -> None:
    """``on_timer`` before the deadline does nothing."""
    session = make_session()
    assert session.on_timer(session.next_deadline - 0.001) == []
    assert session.next_deadline == pytest.approx(T0 + 0.3)


def test_ping_sent_at_the_deadline() -> None:
    """At the deadline the session asks for a PING and starts the pong timeout."""
    session = make_session()
    due = session.next_deadline
    assert session.on_timer(due) == [SendPacket(eio.PING)]
    assert session.next_deadline == pytest.approx(due + 0.2)


def test_missing_pong_closes_with_ping_timeout() -> None:
    """No PONG within pingTimeout closes the session with ``ping timeout`` and notifies CLOSE."""
    session = make_session()
    session.on_timer(session.next_deadline)
    assert session.on_timer(session.next_deadline - 0.001) == []
    assert session.on_timer(session.next_deadline) == [
        SessionClosed(reasons.PING_TIMEOUT, eio.CLOSE)
    ]
    assert session.closed
    assert session.close_reason == reasons.PING_TIMEOUT


def test_pong_resets_the_heartbeat() -> None:
    """A PONG cancels the timeout and schedules the next PING one interval later."""
    session = make_session()
    session.on_timer(session.next_deadline)
    pong_at = T0 + 0.4
    assert session.receive(eio.PONG, pong_at) == []
    assert session.next_deadline == pytest.approx(pong_at + 0.3)
    assert session.on_timer(T0 + 0.5) == []  # the old timeout deadline passes harmlessly
    assert not session.closed
    assert session.on_timer(session.next_deadline) == [SendPacket(eio.PING)]


def test_heartbeat_survives_many_cycles() -> None:
    """Answering every PING keeps the session open indefinitely."""
    session = make_session()
    for _ in range(50):
        assert session.on_timer(session.next_deadline) == [SendPacket(eio.PING)]
        session.receive(eio.PONG, session.next_deadline - 0.1)
    assert not session.closed


def test_unsolicited_pong_is_ignored() -> None:
    """A PONG with no PING outstanding changes nothing."""
    session = make_session()
    before = session.next_deadline
    assert session.receive(eio.PONG, T0 + 0.1) == []
    assert session.next_deadline == before


def test_timer_on_closed_session_is_quiet() -> None:
    """``on_timer`` after close returns no events (the timer may fire late)."""
    session = make_session()
    session.close(reasons.FORCED_CLOSE)
    assert session.on_timer(T0 + 100) == []


# --- the session: input ----------------------------------------------------------------------


def test_message_becomes_message_received() -> None:
    """Text and binary MESSAGE packets are handed out as MessageReceived."""
    session = make_session()
    assert session.receive(Packet(PacketType.MESSAGE, "40"), T0) == [MessageReceived("40")]
    assert session.receive(Packet(PacketType.MESSAGE, b"\x01"), T0) == [MessageReceived(b"\x01")]


def test_noop_from_client_is_ignored() -> None:
    """A NOOP from the client produces no event."""
    assert make_session().receive(eio.NOOP, T0) == []


def test_client_close_notifies_poll_with_noop() -> None:
    """A client CLOSE ends the session with ``transport close``; a pending GET gets NOOP, and
    with no GET pending the session lingers for one that may still come."""
    session = make_session()
    closed = SessionClosed(reasons.TRANSPORT_CLOSE, eio.NOOP, linger=True)
    assert session.receive(eio.CLOSE, T0) == [closed]
    assert session.state is EngineState.CLOSED
    assert session.close_reason == reasons.TRANSPORT_CLOSE
    waiting = make_session()
    assert waiting.begin_get() is None
    assert waiting.receive(eio.CLOSE, T0) == [SessionClosed(reasons.TRANSPORT_CLOSE, eio.NOOP)]


def test_deliberate_close_of_an_idle_polling_session_lingers() -> None:
    """A flushed close keeps the last words for the next GET unless one is waiting for them,
    or the session is on WebSocket."""
    assert make_session().close(reasons.SERVER_SHUTTING_DOWN, flush=True).linger
    assert not make_session().close(reasons.SERVER_SHUTTING_DOWN).linger
    waiting = make_session()
    waiting.begin_get()
    assert not waiting.close(reasons.SERVER_SHUTTING_DOWN, flush=True).linger
    ws = make_session(TransportKind.WEBSOCKET)
    assert not ws.close(reasons.SERVER_SHUTTING_DOWN, flush=True).linger


def test_one_upgrade_offer_at_a_time() -> None:
    session = make_session()
    assert session.offer_upgrade()
    assert not session.can_upgrade() and not session.offer_upgrade()
    session.abort_upgrade()
    assert session.offer_upgrade()


@pytest.mark.parametrize(
    "packet",
    [
        Packet(PacketType.OPEN),
        eio.PING,
        Packet(PacketType.PING, "probe"),
        Packet(PacketType.UPGRADE),
    ],
)
def test_unexpected_packet_on_main_transport_is_parse_error(packet: Packet) -> None:
    """OPEN, PING (v3 heartbeat) or UPGRADE on the session's own transport is ``parse error``."""
    with pytest.raises(RemoteProtocolError) as info:
        make_session().receive(packet, T0)
    assert info.value.reason == reasons.PARSE_ERROR


def test_payload_packets_are_handled_in_order() -> None:
    """A polling body yields one event per MESSAGE, in order."""
    events = make_session().receive_payload('40\x1e42["a"]\x1ebAQ==', T0)
    assert events == [MessageReceived("0"), MessageReceived('2["a"]'), MessageReceived(b"\x01")]


def test_payload_handling_stops_at_close() -> None:
    """Packets after a CLOSE in the same body are not handled."""
    session = make_session()
    events = session.receive_payload("4a\x1e1\x1e4b", T0)
    assert events == [
        MessageReceived("a"),
        SessionClosed(reasons.TRANSPORT_CLOSE, eio.NOOP, linger=True),
    ]
    assert session.closed


def test_payload_over_session_limit_is_too_many_packets() -> None:
    """The session enforces its ``max_packets_per_body`` on POST bodies."""
    session = make_session(max_packets_per_body=2)
    assert len(session.receive_payload("4a\x1e4b", T0)) == 2
    with pytest.raises(RemoteProtocolError) as info:
        session.receive_payload("4a\x1e4b\x1e4c", T0)
    assert info.value.reason == reasons.TOO_MANY_PACKETS


def test_payload_is_validated_before_any_packet_is_handled() -> None:
    """A bad packet anywhere in a body raises before earlier packets (here a CLOSE) take effect."""
    session = make_session()
    with pytest.raises(RemoteProtocolError):
        session.receive_payload("1\x1e9", T0)
    assert session.state is EngineState.OPEN


# --- the session: close ----------------------------------------------------------------------


def test_server_close_notifies_poll_with_close() -> None:
    """Closing from the server side ends the session; a pending GET gets CLOSE (§Close)."""
    session = make_session()
    assert session.close(reasons.SERVER_SHUTTING_DOWN) == SessionClosed(
        reasons.SERVER_SHUTTING_DOWN, eio.CLOSE
    )
    assert session.closed
    assert session.close_reason == reasons.SERVER_SHUTTING_DOWN


def test_second_close_keeps_first_reason_and_notifies_nothing() -> None:
    """``close`` is idempotent: the first reason stays and no second notification is made."""
    session = make_session()
    session.close(reasons.PING_TIMEOUT)
    assert session.close(reasons.FORCED_CLOSE) == SessionClosed(reasons.PING_TIMEOUT, None)
    assert session.close_reason == reasons.PING_TIMEOUT


def test_close_drops_the_outbox() -> None:
    """A closed session has nothing left to deliver."""
    session = make_session()
    session.buffer("4x")
    session.close(reasons.FORCED_CLOSE)
    assert not session.has_outbox()
    assert session.take_outbox() == []


def closed_session() -> EngineSession:
    session = make_session()
    session.receive(eio.CLOSE, T0)
    return session


def test_receive_on_closed_session_is_local_error() -> None:
    """Feeding a packet to a closed session is our bug: LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        closed_session().receive(Packet(PacketType.MESSAGE, "x"), T0)


def test_receive_payload_on_closed_session_is_local_error() -> None:
    """Feeding a POST body to a closed session is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        closed_session().receive_payload("4x", T0)


def test_probe_on_closed_session_is_local_error() -> None:
    """Feeding a probe to a closed session is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        closed_session().receive_probe(Packet(PacketType.PING, "probe"))


def test_buffer_on_closed_session_is_local_error() -> None:
    """Queueing output on a closed session is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        closed_session().buffer("4x")


# --- the session: upgrade --------------------------------------------------------------------

PROBE = Packet(PacketType.PING, "probe")
UPGRADE = Packet(PacketType.UPGRADE)


def offered_session() -> EngineSession:
    """A polling session a WebSocket has offered to upgrade (its probe may come)."""
    session = make_session()
    assert session.offer_upgrade()
    return session


def test_upgrade_probe_then_5_switches_to_websocket() -> None:
    """``2probe`` is answered ``3probe``, then ``5`` completes the upgrade (§Upgrade)."""
    session = make_session()
    assert session.can_upgrade()
    assert session.offer_upgrade()
    assert session.receive_probe(PROBE) == [SendPacket(Packet(PacketType.PONG, "probe"))]
    assert session.state is EngineState.UPGRADING
    assert session.upgrading
    assert session.transport is TransportKind.POLLING
    assert session.receive_probe(UPGRADE) == [UpgradeCompleted()]
    assert session.state.value == EngineState.OPEN.value  # (mypy narrowed it to UPGRADING)
    assert session.transport.value == TransportKind.WEBSOCKET.value
    assert not session.upgrading
    assert not session.can_upgrade()


def test_polling_keeps_working_while_upgrading() -> None:
    """Between probe and ``5`` the polling transport still carries messages and heartbeats."""
    session = offered_session()
    session.receive_probe(PROBE)
    assert session.receive(Packet(PacketType.MESSAGE, "x"), T0) == [MessageReceived("x")]
    assert session.on_timer(session.next_deadline) == [SendPacket(eio.PING)]
    session.buffer("4y")
    assert session.has_outbox()


def test_outbox_survives_upgrade_in_order() -> None:
    """Packets queued for polling are handed over, in order, once the WebSocket takes over."""
    session = offered_session()
    session.buffer("4a")
    session.receive_probe(PROBE)
    session.buffer("4b")
    session.receive_probe(UPGRADE)
    assert session.take_outbox() == ["4a", "4b"]
    assert session.take_outbox() == []


def test_aborted_upgrade_stays_on_polling_and_may_retry() -> None:
    """If the upgrading WebSocket goes away before ``5`` the session stays on polling."""
    session = offered_session()
    session.receive_probe(PROBE)
    session.abort_upgrade()
    assert session.state is EngineState.OPEN
    assert session.transport is TransportKind.POLLING
    assert session.can_upgrade()
    assert session.offer_upgrade()
    assert session.receive_probe(PROBE) == [SendPacket(Packet(PacketType.PONG, "probe"))]


def test_abort_upgrade_after_completion_changes_nothing() -> None:
    """``abort_upgrade`` after a completed upgrade leaves the session on WebSocket."""
    session = offered_session()
    session.receive_probe(PROBE)
    session.receive_probe(UPGRADE)
    session.abort_upgrade()
    assert session.transport is TransportKind.WEBSOCKET
    assert session.state is EngineState.OPEN


def assert_upgrade_failed(session: EngineSession, packet: Packet) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        session.receive_probe(packet)
    assert info.value.reason == reasons.UPGRADE_FAILED


def test_second_probe_while_upgrading_fails() -> None:
    """A second ``2probe`` during an upgrade is ``upgrade failed``."""
    session = offered_session()
    session.receive_probe(PROBE)
    assert_upgrade_failed(session, PROBE)


def test_probe_without_an_offer_fails() -> None:
    """Only a WebSocket the node let start an upgrade may probe."""
    assert_upgrade_failed(make_session(), PROBE)


def test_upgrade_packet_without_probe_fails() -> None:
    """``5`` before ``2probe`` is ``upgrade failed`` and does not switch transports."""
    session = make_session()
    assert_upgrade_failed(session, UPGRADE)
    assert session.transport is TransportKind.POLLING


def test_second_upgrade_fails() -> None:
    """After an upgrade, another probe for the same session is ``upgrade failed`` (§WebSocket)."""
    session = offered_session()
    session.receive_probe(PROBE)
    session.receive_probe(UPGRADE)
    assert_upgrade_failed(session, PROBE)
    assert_upgrade_failed(session, UPGRADE)


def test_probe_on_websocket_session_fails() -> None:
    """A session that started on WebSocket cannot be upgraded."""
    session = make_session(TransportKind.WEBSOCKET)
    assert not session.can_upgrade()
    assert_upgrade_failed(session, PROBE)


def test_probe_when_upgrades_disabled_fails() -> None:
    """With ``allow_upgrades = false`` the state machine itself refuses a probe."""
    session = make_session(allow_upgrades=False)
    assert not session.can_upgrade()
    assert_upgrade_failed(session, PROBE)
    assert session.state is EngineState.OPEN


@pytest.mark.parametrize(
    "packet",
    [eio.PING, Packet(PacketType.PING, "prob"), Packet(PacketType.MESSAGE, "probe"), eio.PONG],
)
def test_anything_but_probe_on_upgrading_socket_fails(packet: Packet) -> None:
    """Only ``2probe`` may open an upgrade; other packets on that WebSocket fail it."""
    assert_upgrade_failed(make_session(), packet)


def test_message_during_upgrade_on_the_probe_socket_fails() -> None:
    """Between ``3probe`` and ``5`` only UPGRADE is accepted on the new WebSocket."""
    session = offered_session()
    session.receive_probe(PROBE)
    assert_upgrade_failed(session, Packet(PacketType.MESSAGE, "x"))


# --- the session: output ---------------------------------------------------------------------


def test_outbox_is_taken_in_order_and_emptied() -> None:
    """Buffered packets are handed to one GET in order, then the outbox is empty."""
    session = make_session()
    assert not session.has_outbox()
    session.buffer("4a")
    session.buffer("4b")
    assert session.has_outbox()
    assert session.take_outbox() == ["4a", "4b"]
    assert not session.has_outbox()


def test_outbox_limit_is_send_buffer_full() -> None:
    """Past ``max_buffered_packets`` the session raises ``send buffer full``."""
    session = make_session(max_buffered_packets=3)
    for i in range(3):
        session.buffer(f"4{i}")
    with pytest.raises(RemoteProtocolError) as info:
        session.buffer("4overflow")
    assert info.value.reason == reasons.SEND_BUFFER_FULL
    assert session.take_outbox() == ["40", "41", "42"]
    session.buffer("4again")  # draining the outbox makes room again


# --- HTTP long-polling requests ----------------------------------------------------------------


def test_get_waits_then_is_answered_with_what_was_written() -> None:
    s = make_session()
    assert s.begin_get() is None
    assert s.get_waiting
    s.buffer("42[1]")
    assert s.end_get(None) == eio.HttpReply.payload("42[1]")
    assert not s.get_waiting


def test_get_with_a_full_outbox_is_answered_at_once() -> None:
    s = make_session()
    s.buffer("42[1]")
    s.buffer("42[2]")
    assert s.begin_get() == eio.HttpReply.payload("42[1]\x1e42[2]")


def test_second_get_is_refused_and_closes_with_duplicate_poll() -> None:
    s = make_session()
    assert s.begin_get() is None
    refusal = s.begin_get()
    assert isinstance(refusal, eio.Refusal)
    assert refusal.reason == reasons.DUPLICATE_POLL
    assert refusal.reply.status == 400
    assert json.loads(refusal.reply.body) == {"code": 3, "message": "Bad request"}


def test_get_during_an_upgrade_gets_noop() -> None:
    s = offered_session()
    s.receive_probe(Packet(PacketType.PING, "probe"))
    assert s.begin_get() == eio.HttpReply.payload("6")


def test_closed_session_gets_its_last_words_then_close() -> None:
    """A deliberate close keeps the outbox for the next GET (the session lingers), and CLOSE
    comes in the GET after."""
    s = make_session()
    s.buffer("41")
    s.close(reasons.SERVER_SHUTTING_DOWN, flush=True)
    assert s.begin_get() == eio.HttpReply.payload("41", linger=True)
    assert s.begin_get() == eio.HttpReply.payload("1")


def test_waiting_get_of_a_session_the_client_closed_gets_noop() -> None:
    s = make_session()
    assert s.begin_get() is None
    s.receive(Packet(PacketType.CLOSE), 0.0)
    assert s.end_get(eio.NOOP) == eio.HttpReply.payload("6")


def test_abandoned_get_ends_the_session_with_poll_aborted() -> None:
    s = make_session()
    assert s.begin_get() is None
    assert s.abort_get() == reasons.POLL_ABORTED
    assert not s.get_waiting


def test_post_rules() -> None:
    """One POST at a time; a declared or actual body past max_payload is 413; a body that is
    not UTF-8 or not Engine.IO is 400 with a named reason; a good one is "ok" with its events."""
    s = make_session(max_payload=10)
    too_big = s.begin_post(11)
    assert isinstance(too_big, eio.Refusal) and too_big.reason == reasons.PAYLOAD_TOO_LARGE
    assert too_big.reply.status == 413
    assert s.begin_post(None) is None
    second = s.begin_post(None)
    assert isinstance(second, eio.Refusal) and second.reason == reasons.DUPLICATE_POLL
    assert s.end_post(b"4hello", 0.0) == (eio.POST_OK, [MessageReceived("hello")])
    assert s.begin_post(None) is None
    grew, _ = s.end_post(None, 0.0)
    assert isinstance(grew, eio.Refusal) and grew.reason == reasons.PAYLOAD_TOO_LARGE
    assert s.begin_post(None) is None
    bad, _ = s.end_post(b"\xff\xfe", 0.0)
    assert isinstance(bad, eio.Refusal) and bad.reason == reasons.PARSE_ERROR
    assert s.begin_post(None) is None
    garbage, _ = s.end_post(b"9", 0.0)
    assert isinstance(garbage, eio.Refusal) and garbage.reply.status == 400
    s.abort_post()
    s.close(reasons.FORCED_CLOSE)
    assert s.begin_post(None) is None
    late, events = s.end_post(b"4x", 0.0)
    assert late == eio.HttpReply.error(eio.UNKNOWN_SID) and events == []
