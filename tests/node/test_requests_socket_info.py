"""A socket snapshot in a node-to-node reply: its transport travels, and a reply from a node
older than the transport field (6 fields), or from a newer one with more fields, is still
read."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from roomcast.node import requests as rq
from roomcast.node.adapter import Handshake, SocketInfo

HS = Handshake({"host": "x"}, {"EIO": "4"}, {}, "127.0.0.1", 1.5, "/socket.io/", False)
INFO = SocketInfo("sid", "/", frozenset({"sid", "r"}), {"k": 1}, HS, "n2", "polling")


def roundtrip(reply: rq.Reply) -> rq.Reply:
    return rq.decode_reply(msgpack.unpackb(msgpack.packb(rq.encode_reply(reply))))


def test_the_transport_travels() -> None:
    """A snapshot comes back equal, its transport included."""
    assert roundtrip(rq.Sockets((INFO,))) == rq.Sockets((INFO,))


def test_a_snapshot_without_transport_is_read() -> None:
    """Six fields (an older node): the transport is None; a non-string one is refused."""
    kind, [fields] = rq.encode_reply(rq.Sockets((INFO,)))
    older = rq.decode_reply([int(kind), [fields[:6]]])
    assert older == rq.Sockets((dataclasses.replace(INFO, transport=None),))
    with pytest.raises(rq.RequestError):
        rq.decode_reply([int(kind), [[*fields[:6], 7]]])


def test_a_snapshot_with_fields_of_a_newer_node_is_read() -> None:
    """More than seven fields (a newer node, during a rolling upgrade): the ones this version
    knows are read, the rest left alone; fewer than six is refused."""
    kind, [fields] = rq.encode_reply(rq.Sockets((INFO,)))
    newer = rq.decode_reply([int(kind), [[*fields, {"later": True}, 3]]])
    assert newer == rq.Sockets((INFO,))
    with pytest.raises(rq.RequestError):
        rq.decode_reply([int(kind), [fields[:5]]])
