"""Per (sender, topic) sequence tracking (roomcast/cluster/ordering.py)."""

from __future__ import annotations

from roomcast.cluster.ordering import SequenceTracker, Verdict

DELIVER, LATE = Verdict.DELIVER, Verdict.LATE


def test_in_order_gaps_and_late() -> None:
    t = SequenceTracker(max_senders=8)
    assert t.check(b"T", "a", 1, 1) == (DELIVER, 0)
    assert t.check(b"T", "a", 1, 2) == (DELIVER, 0)
    assert t.check(b"T", "a", 1, 5) == (DELIVER, 2)  # 3 and 4 lost on the way
    assert t.check(b"T", "a", 1, 4) == (LATE, 0)  # came by a slower router: never delivered
    assert t.check(b"T", "a", 1, 5) == (LATE, 0)  # a copy
    assert t.check(b"T", "a", 1, 6) == (DELIVER, 0)


def test_sequences_are_per_sender_incarnation_and_topic() -> None:
    t = SequenceTracker(max_senders=8)
    assert t.check(b"T", "a", 1, 3) == (DELIVER, 0)  # the first one seen starts the count
    assert t.check(b"U", "a", 1, 1) == (DELIVER, 0)
    assert t.check(b"T", "b", 1, 1) == (DELIVER, 0)
    assert t.check(b"T", "a", 2, 1) == (DELIVER, 0)  # a restarted node: a new incarnation
    assert t.check(b"T", "a", 1, 4) == (DELIVER, 0)


def test_seq_one_restarts_a_sequence() -> None:
    """A publisher that forgot the topic numbers it from 1 again: not late, not a gap."""
    t = SequenceTracker(max_senders=8)
    t.check(b"T", "a", 1, 40)
    assert t.check(b"T", "a", 1, 1) == (DELIVER, 0)
    assert t.check(b"T", "a", 1, 2) == (DELIVER, 0)


def test_senders_per_topic_are_bounded_and_forget_clears() -> None:
    t = SequenceTracker(max_senders=2)
    for sender in ("a", "b", "c"):
        t.check(b"T", sender, 1, 7)
    assert t.senders(b"T") == 2
    assert t.check(b"T", "a", 1, 8) == (DELIVER, 0)  # "a" was forgotten: a fresh start
    t.forget(b"T")
    assert t.senders(b"T") == 0
