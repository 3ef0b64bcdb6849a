"""What the membership replica tests share: the test timings, a replica, a remote node's facts.

Used by ``test_membership.py`` (the replica's rules) and ``test_membership_convergence.py``
(its convergence properties).
"""

from __future__ import annotations

from roomcast.cluster.membership import LocalFacts, Replica

SUSPECT_AFTER = 3.0
DOWN_AFTER = 6.0


def replica() -> Replica:
    """A replica for node ``me`` with the test timings above."""
    return Replica("me", suspect_after=SUSPECT_AFTER, down_after=DOWN_AFTER)


def origin(node: str = "n1", incarnation: int = 1) -> LocalFacts:
    """The facts of a remote node."""
    return LocalFacts(node, incarnation, f"{node}.example:80", started=100.0)
