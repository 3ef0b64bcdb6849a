"""Identifiers of connection state recovery: private session ids and offsets (roomcast/ids.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roomcast.ids import (
    TAG_BYTES,
    NodeTag,
    new_pid,
    new_sid,
    node_tag,
    offset_text,
    parse_offset,
    tag_of_pid,
    tag_text,
)

TAG = node_tag("n1", 1)
OTHER = node_tag("n1", 2)  # the same node restarted: another incarnation, another tag


def test_pid_names_its_node_and_is_not_the_sid() -> None:
    """A pid starts with the issuing node's tag (any node can tell where its session is), and
    is drawn afresh: knowing a socket's public sid tells nothing of its pid."""
    pid = new_pid(TAG)
    assert tag_of_pid(pid) == TAG
    assert pid != new_pid(TAG) and pid[8:] != new_sid(TAG)[8:]
    assert tag_of_pid("not a pid") is None


@given(st.binary(min_size=TAG_BYTES, max_size=TAG_BYTES), st.integers(1, 2**64 - 1))
def test_offset_round_trip(tag: bytes, counter: int) -> None:
    """An offset reads back as the node tag and counter it was made from."""
    assert parse_offset(offset_text(NodeTag(tag), counter)) == (tag, counter)


def test_offsets_of_two_nodes_never_read_alike() -> None:
    """The same counter on two nodes (or two incarnations of one) gives two offsets, each
    naming its own node."""
    a, b = offset_text(TAG, 42), offset_text(OTHER, 42)
    assert a != b
    assert parse_offset(a) == (TAG, 42) and parse_offset(b) == (OTHER, 42)


def test_what_is_not_an_offset() -> None:
    """Garbage, a missing or oversized counter, a leading zero, upper case, or a prefix that is
    no tag's text are not offsets."""
    text = tag_text(TAG)
    for bad in (
        "",
        "hello",
        text,  # no counter
        text + "0",
        text + "01",
        text + "1A",
        text + "g",
        text + "1" * 17,
        "+" + text[1:] + "1",
        text[:7] + "=" + "1",
        "12345678" + "zz",
    ):
        assert parse_offset(bad) is None, bad
    assert parse_offset(text + "1" * 16) == (TAG, int("1" * 16, 16))
