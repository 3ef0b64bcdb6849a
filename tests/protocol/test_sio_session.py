"""The pure Socket.IO session of one connection (roomcast/protocol/sio_session.py)."""

from __future__ import annotations

import pytest

from roomcast.errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.sio_session import (
    AckReceived,
    ConnectRequested,
    ConnectTimedOut,
    DisconnectReceived,
    EventReceived,
    LatePacket,
    NamespaceState,
    SessionLimits,
    SocketIOSession,
)

LIMITS = SessionLimits(max_namespaces=2, connect_timeout=10.0)


def connected(*namespaces: str) -> SocketIOSession[str]:
    session: SocketIOSession[str] = SocketIOSession(LIMITS, 0.0)
    for ns in namespaces:
        packet = "0" if ns == "/" else f"0{ns},"
        assert session.receive(packet) == [ConnectRequested(ns, {})]
        session.connected(ns)
    return session


def test_connect_then_events_acks_and_disconnect() -> None:
    """CONNECT asks the node; once connected, events and acks flow; DISCONNECT leaves."""
    session: SocketIOSession[str] = SocketIOSession(LIMITS, 0.0)
    assert session.receive('0/chat,{"token":"t"}') == [ConnectRequested("/chat", {"token": "t"})]
    assert session.state("/chat") is NamespaceState.CONNECTING
    session.connected("/chat")
    assert session.receive('2/chat,7["hi",1]') == [EventReceived("/chat", ["hi", 1], 7)]
    session.expect_ack("/chat", 3, "waiter-3")
    assert session.receive('3/chat,3["ok"]') == [AckReceived("/chat", "waiter-3", ["ok"])]
    assert session.receive('3/chat,3["again"]') == []  # answered already: nobody waits
    assert session.receive("1/chat,") == [DisconnectReceived("/chat")]
    assert session.state("/chat") is None


def test_binary_event_waits_for_its_attachments() -> None:
    session = connected("/")
    assert session.receive('51-["file",{"_placeholder":true,"num":0}]') == []
    assert session.receive(b"\x01\x02") == [EventReceived("/", ["file", b"\x01\x02"], None)]


@pytest.mark.parametrize("state", ["connecting", "connected"])
def test_second_connect_is_a_named_error(state: str) -> None:
    """A CONNECT for a namespace already connecting or connected closes with ``duplicate
    connect`` (never a silent return)."""
    session: SocketIOSession[str] = SocketIOSession(LIMITS, 0.0)
    session.receive("0/a,")
    if state == "connected":
        session.connected("/a")
    with pytest.raises(RemoteProtocolError) as caught:
        session.receive("0/a,")
    assert caught.value.reason == reasons.DUPLICATE_CONNECT


@pytest.mark.parametrize("packet", ['2/a,["x"]', '3/a,1["x"]', "1/a,"])
def test_packets_for_a_namespace_never_connected_are_a_named_error(packet: str) -> None:
    """EVENT, ACK or DISCONNECT for a namespace the client never connected (or one still
    connecting) closes with ``namespace not connected``."""
    for session in (connected("/"), SocketIOSession[str](LIMITS, 0.0)):
        if session.state("/") is None:
            session.receive("0/a,")  # connecting, not connected
        with pytest.raises(RemoteProtocolError) as caught:
            session.receive(packet)
        assert caught.value.reason == reasons.NAMESPACE_NOT_CONNECTED


def test_packets_after_a_server_disconnect_are_late_not_offences() -> None:
    """What the client sent before it learned the server disconnected the namespace is a
    LatePacket; the client may connect to it again."""
    session = connected("/a")
    session.expect_ack("/a", 1, "w1")
    assert session.disconnected("/a") == ["w1"]
    assert session.state("/a") is NamespaceState.DISCONNECTED
    assert session.receive('2/a,["x"]') == [LatePacket("/a", sio.PacketType.EVENT)]
    assert session.receive('3/a,1["x"]') == [LatePacket("/a", sio.PacketType.ACK)]
    assert session.receive("0/a,") == [ConnectRequested("/a", {})]


def test_namespace_limit_counts_connects_under_way() -> None:
    session: SocketIOSession[str] = SocketIOSession(LIMITS, 0.0)
    session.receive("0/a,")
    session.receive("0/b,")
    with pytest.raises(RemoteProtocolError) as caught:
        session.receive("0/c,")
    assert caught.value.reason == reasons.TOO_MANY_NAMESPACES
    session.refused("/b")
    assert session.receive("0/c,") == [ConnectRequested("/c", {})]


def test_remembered_server_disconnects_are_bounded() -> None:
    """A client cycling through namespace names cannot grow the state table."""
    session: SocketIOSession[str] = SocketIOSession(LIMITS, 0.0)
    for i in range(50):
        session.receive(f"0/n{i},")
        session.connected(f"/n{i}")
        session.disconnected(f"/n{i}")
    states = [session.state(f"/n{i}") for i in range(50)]
    assert states.count(NamespaceState.DISCONNECTED) == LIMITS.max_namespaces
    assert states[-1] is NamespaceState.DISCONNECTED


def test_connect_deadline() -> None:
    """No namespace connected by the deadline: ConnectTimedOut; one connected in time clears
    the deadline."""
    idle: SocketIOSession[str] = SocketIOSession(LIMITS, 100.0)
    assert idle.next_deadline == 110.0
    assert idle.on_timer(109.9) == []
    assert idle.on_timer(110.0) == [ConnectTimedOut(110.0)]
    assert idle.next_deadline is None
    busy = connected("/")
    assert busy.next_deadline is None
    assert busy.on_timer(1e9) == []
    slow: SocketIOSession[str] = SocketIOSession(LIMITS, 0.0)
    slow.receive("0")  # middleware still running at the deadline
    assert slow.on_timer(10.0) == [ConnectTimedOut(10.0)]


def test_ack_table_is_per_namespace_and_forgettable() -> None:
    session = connected("/", "/b")
    session.expect_ack("/", 1, "root-1")
    session.expect_ack("/b", 1, "b-1")
    session.forget_ack("/", 1, "someone else")  # not the waiter: kept
    assert session.pending_acks("/") == 1
    session.forget_ack("/", 1, "root-1")
    assert session.pending_acks("/") == 0
    assert session.receive('3/b,1["x"]') == [AckReceived("/b", "b-1", ["x"])]


def test_node_driven_transitions_are_checked() -> None:
    """The node may only accept or refuse a namespace that is connecting, and wait for acks
    only on a connected one: anything else is a LocalProtocolError (a bug of ours)."""
    session: SocketIOSession[str] = SocketIOSession(LIMITS, 0.0)
    with pytest.raises(LocalProtocolError):
        session.connected("/")
    with pytest.raises(LocalProtocolError):
        session.refused("/")
    with pytest.raises(LocalProtocolError):
        session.expect_ack("/", 1, "w")


@pytest.mark.parametrize("packet", ["4/a,{}", "9", '2["connect"]'])
def test_garbage_is_a_parse_error(packet: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        connected("/").receive(packet)
    assert caught.value.reason == reasons.PARSE_ERROR
