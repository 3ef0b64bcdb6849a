"""A roomcast node with the default relay, as a process of its own (for ``python -m bench``).

    python -m bench.roomcast_server --port 3001 [--no-metrics] [--no-uvloop] [--cprofile out.prof]

Runs until SIGINT or SIGTERM. ``--no-metrics`` runs it with ``metrics.enabled = false`` (what
metrics cost on the hot path is the difference). ``--cprofile`` writes cProfile stats of the
whole run on exit (much slower than the real thing: use it for call counts, and py-spy for
where time goes).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from roomcast.config import Settings
from roomcast.node.server import Server


async def serve(host: str, port: int, metrics: bool = True) -> None:
    """Serve until a SIGINT or SIGTERM."""
    settings = Settings().replace(
        **{"node.host": host, "node.port": port, "metrics.enabled": metrics}
    )
    async with Server(settings) as server:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        print(f"roomcast {host}:{server.port} ready", flush=True)
        await server.serve_forever()


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
    parser.add_argument("--cprofile", metavar="FILE", help="write cProfile stats to FILE")
    args = parser.parse_args()
    run = runner(not args.no_uvloop)
    if args.cprofile:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            run(serve(args.host, args.port, not args.no_metrics))
        finally:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
    else:
        run(serve(args.host, args.port, not args.no_metrics))


if __name__ == "__main__":
    main()
