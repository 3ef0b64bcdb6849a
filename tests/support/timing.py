"""The one timing unit of the tests: every bound on a wait is a number of seconds times
``ROOMCAST_TEST_TIME_SCALE`` (default 1), so a slow machine (or a debugger) scales them all.

Bounds are reached only when something is broken: tests wait for events, not for time.
"""

from __future__ import annotations

import os

#: How much longer every bound is than written (``ROOMCAST_TEST_TIME_SCALE=3`` on a slow CI).
SCALE = float(os.environ.get("ROOMCAST_TEST_TIME_SCALE", "1") or "1")


def seconds(n: float) -> float:
    """``n`` seconds of waiting, scaled."""
    return n * SCALE


#: The bound of a single wait in one process (an event, an ack, a close).
TIMEOUT = seconds(5.0)
#: The bound of a single wait that spans processes (a node starting, gossip converging).
PROCESS_TIMEOUT = seconds(10.0)
