"""What crossed between the nodes of a cluster, read from counters at the start and at the end
of a measured window: what each edge node received from its bus (the scale-out scenario
reports the difference per second), and the requests the nodes forwarded to each other (the
balancer scenario: :func:`forwarded`).

The bus:

* roomcast: the node's own count of the bus messages it read from its SUB socket,
  ``GET /admin/cluster`` → ``cluster.bus.bytes_in`` (ZeroMQ message bytes: topic + envelope;
  what ZMTP adds on the wire, 2 to 9 bytes of framing per message, is not in it). A node
  gets its own envelopes back from the router too (it is subscribed to the rooms it
  publishes to); they are part of the count, as they are part of its traffic.
* Node socket.io + Redis adapter: the TCP payload bytes each node process received from
  redis-server, over both of its connections (the adapter's subscriber, which gets every
  broadcast, and the publisher, which gets the replies to ``PUBLISH``): ``bytes_received``
  of the kernel's ``tcp_info`` for every established socket to the Redis port, read with
  ``ss -tinp`` and attributed to a process by the ``pid=`` of its ``users:`` field. Redis's
  ``CLIENT LIST`` has no per-client byte counters before Redis 7.4 (Debian's is 7.0), and its
  ``INFO`` only totals. The bytes are RESP-framed pub/sub messages (channel name included).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass

from bench.servers import Deployment, get_json

_SS_PID = re.compile(r"pid=(\d+),")
_SS_RECEIVED = re.compile(r"\bbytes_received:(\d+)")


def roomcast_bytes_in(admin_urls: tuple[str, ...]) -> list[int] | None:
    """Every node's bus ``bytes_in`` counter, in ``admin_urls`` order; None if one fails."""
    out = []
    for url in admin_urls:
        try:
            body = get_json(f"{url}/admin/cluster")
            out.append(int(body["cluster"]["bus"]["bytes_in"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return out


def tcp_bytes_received(port: int) -> dict[int, int] | None:
    """Bytes received by each process (pid) on its established TCP sockets to 127.0.0.1:
    ``port``, from ``ss``; None when ``ss`` is missing or fails."""
    exe = shutil.which("ss")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "-H", "-t", "-i", "-n", "-p", "state", "established", "dport", "=", f":{port}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    totals: dict[int, int] = {}
    # One socket per record: a line with its addresses and users:(("node",pid=..,fd=..)), then
    # an indented line of tcp_info fields.
    pids: list[int] = []
    for line in done.stdout.splitlines():
        if line and not line[0].isspace():
            pids = [int(p) for p in _SS_PID.findall(line)]
        received = _SS_RECEIVED.search(line)
        if received is not None:
            for pid in pids[:1]:  # a socket shared after fork: count it once
                totals[pid] = totals.get(pid, 0) + int(received.group(1))
    return totals


def bus_bytes_in(deployment: Deployment) -> list[int] | None:
    """What every edge node of ``deployment`` received from its bus so far, in node order;
    None when the deployment has no bus or a counter cannot be read."""
    if deployment.admin_urls:
        return roomcast_bytes_in(deployment.admin_urls)
    if deployment.redis_port and deployment.nodes:
        totals = tcp_bytes_received(deployment.redis_port)
        if totals is None:
            return None
        pids = [deployment.procs[label].pid for label in deployment.nodes]
        if not all(pid in totals for pid in pids):
            return None  # a node without a connection to Redis: not what we measure
        return [totals[pid] for pid in pids]
    return None


def sample(deployment: Deployment) -> tuple[float, list[int]] | None:
    """:func:`bus_bytes_in` with the time it stands for (the middle of the reading)."""
    began = time.monotonic()
    counts = bus_bytes_in(deployment)
    if counts is None:
        return None
    return (began + time.monotonic()) / 2, counts


def per_second(
    first: tuple[float, list[int]] | None, last: tuple[float, list[int]] | None
) -> list[float] | None:
    """Each node's bytes per second between two :func:`sample` readings."""
    if first is None or last is None or last[0] <= first[0]:
        return None
    seconds = last[0] - first[0]
    return [(b - a) / seconds for a, b in zip(first[1], last[1], strict=True)]


@dataclass(frozen=True)
class Forwarded:
    """The forward counters of a roomcast cluster, every node's summed (``GET /admin/stats``:
    what a node did for sessions another node holds, roomcast/node/forward.py)."""

    requests: int  #: polling requests forwarded to their session's node
    bytes: int  #: bytes forwarded, both directions (request and answer bodies; spliced bytes)
    failed: int  #: forwards that failed (the client got 400)
    spliced: int  #: WebSockets spliced or relayed to their session's node

    def __add__(self, other: Forwarded) -> Forwarded:
        return Forwarded(
            self.requests + other.requests,
            self.bytes + other.bytes,
            self.failed + other.failed,
            self.spliced + other.spliced,
        )

    def __sub__(self, other: Forwarded) -> Forwarded:
        return Forwarded(
            self.requests - other.requests,
            self.bytes - other.bytes,
            self.failed - other.failed,
            self.spliced - other.spliced,
        )


def forwarded(admin_urls: tuple[str, ...]) -> Forwarded | None:
    """The forward counters of the nodes at ``admin_urls``, summed; None if one fails."""
    total = Forwarded(0, 0, 0, 0)
    for url in admin_urls:
        try:
            body = get_json(f"{url}/admin/stats")
            total += Forwarded(
                int(body["forwarded_requests"]),
                int(body["forwarded_bytes"]),
                int(body["forward_failed"]),
                int(body["spliced_websockets"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return total


def router_counts(router_url: str) -> tuple[int, int] | None:
    """The batches and the messages a roomcast router received so far (``GET /stats``)."""
    try:
        body = get_json(f"{router_url}/stats")
        return int(body["batches_in"]), int(body["messages_in"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def messages_per_batch(
    before: tuple[int, int] | None, after: tuple[int, int] | None
) -> float | None:
    """Messages per batch the router received between two :func:`router_counts`."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])
