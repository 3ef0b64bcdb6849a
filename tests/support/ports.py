"""Ports for processes the tests start before they can be asked which port they took.

Prefer port 0 wherever the process reports what it bound: nodes and routers, in one process or
as ``roomcast node`` / ``roomcast router`` processes (their ready lines), and the Consul
stand-in, do. :func:`free_port` and :func:`consecutive_free_ports` pick ports the kernel says
are free now; another process may take one before it is bound (bind, close, reuse), which is
why they are the fallback, left only where a port must be named before its process runs:

* ``support/consul.py``: a real ``consul agent -dev`` (it reports no ports we read), and a
  stand-in a test starts only later but must name to the nodes first;
* ``tests/cli/test_cli.py``: ``roomcast up``, whose nodes read the router's ports from
  ``cluster.toml`` before its router has bound them, and whose nodes take ``base_port + i``.

A port where nothing may listen (a decoy, an unreachable address) is not picked that way but
held: :func:`hold_port`, :func:`refused_ports`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def consecutive_free_ports(n: int) -> int:
    """A base port such that ``base .. base + n - 1`` are all free now."""
    for _ in range(100):
        base = free_port()
        if base + n > 65536:
            continue
        try:
            for port in range(base + 1, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"found no {n} consecutive free ports")


def hold_port() -> socket.socket:
    """A socket bound to a port of 127.0.0.1 that never listens: while it is open, connections
    to that port are refused and nobody can bind it (it sets no ``SO_REUSEADDR``, so neither can
    a socket that does). The caller closes it."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
    except BaseException:
        s.close()
        raise
    return s


@contextlib.contextmanager
def refused_ports(n: int) -> Iterator[list[int]]:
    """``n`` ports where nothing listens, nor can, until the block ends (:func:`hold_port`)."""
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(hold_port()) for _ in range(n)]
        yield [s.getsockname()[1] for s in held]
