"""A roomcast node with the default relay, as a process of its own (for ``python -m bench``).

    python -m bench.roomcast_server --port 3001 [--no-metrics] [--recovery] [--no-uvloop]
                                    [--cprofile out.prof]

Runs until SIGINT or SIGTERM. ``--no-metrics`` runs it with ``metrics.enabled = false`` (what
metrics cost on the hot path is the difference). ``--recovery`` turns connection state recovery
on (``recovery.enabled = true``: every namespace, the bench's "/" included; its defaults
otherwise). On SIGUSR1 it prints what recovery holds now, as one JSON line
(``{"recovery": {"history_packets", "history_bytes", "ghosts"}}``: the packets its histories
keep and their frames' bytes, which ``recovery.max_bytes`` bounds, and the sessions kept),
which the bench reads from its log. ``--cprofile`` writes cProfile stats of the
whole run on exit (much slower than the real thing: use it for call counts, and py-spy for
where time goes).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from roomcast.config import Settings
from roomcast.node.server import Server


async def serve(host: str, port: int, metrics: bool = True, recovery: bool = False) -> None:
    """Serve until a SIGINT or SIGTERM."""
    settings = Settings().replace(
        **{
            "node.host": host,
            "node.port": port,
            "metrics.enabled": metrics,
            "recovery.enabled": recovery,
        }
    )
    async with Server(settings) as server:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        loop.add_signal_handler(signal.SIGUSR1, print_recovery, server)
        print(f"roomcast {host}:{server.port} ready", flush=True)
        await server.serve_forever()


def print_recovery(server: Server) -> None:
    """Print what connection state recovery holds now, in every namespace: the packets kept
    for replay and their frames' bytes, and the sessions kept (one JSON line)."""
    packets = nbytes = ghosts = 0
    for ns in server.namespaces():
        history = ns.history
        if history is not None:
            packets += len(history)
            nbytes += history.nbytes
        ghosts += len(ns.ghosts)
    held = {"history_packets": packets, "history_bytes": nbytes, "ghosts": ghosts}
    print(json.dumps({"recovery": held}), flush=True)


def runner(use_uvloop: bool) -> Callable[[Coroutine[Any, Any, None]], None]:
    """``uvloop.run`` when asked for and installed, else ``asyncio.run``."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run
    return asyncio.run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    parser.add_argument("--no-metrics", action="store_true", help="metrics.enabled = false")
    parser.add_argument("--recovery", action="store_true", help="recovery.enabled = true")
    parser.add_argument("--cprofile", metavar="FILE", help="write cProfile stats to FILE")
    args = parser.parse_args()
    run = runner(not args.no_uvloop)
    if args.cprofile:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            run(serve(args.host, args.port, not args.no_metrics, args.recovery))
        finally:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
    else:
        run(serve(args.host, args.port, not args.no_metrics, args.recovery))


if __name__ == "__main__":
    main()
