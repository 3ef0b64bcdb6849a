"""Ports for processes the tests start before they can be asked which port they took.

Prefer port 0 wherever the process reports what it bound (nodes and routers in one process
do). These helpers pick a port the kernel says is free now; another process may take it before
it is bound, which is why they are the fallback.
"""

from __future__ import annotations

import socket


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
