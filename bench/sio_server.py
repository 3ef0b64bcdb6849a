"""python-socketio's AsyncServer on aiohttp with roomcast's relay contract (for context).

    python -m bench.sio_server --port 3002 [--no-uvloop]

Same ``join`` / ``publish`` events and acks as a roomcast node with the default relay policy
(see roomcast/node/relay.py). Runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import socketio  # type: ignore[import-untyped]
from aiohttp import web

from bench.roomcast_server import runner

RESERVED = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


def room_names(value: Any) -> list[str] | None:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        return None
    if not all(isinstance(n, str) and 0 < len(n) <= 256 for n in names):
        return None
    return names


def make_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    def rooms_ack(sid: str) -> dict[str, Any]:
        return {"ok": True, "rooms": sorted(r for r in sio.rooms(sid) if r != sid)}

    async def join(sid: str, rooms: Any = None, *_: Any) -> dict[str, Any]:
        names = room_names(rooms)
        if names is None:
            return {"ok": False, "error": "bad room"}
        for name in names:
            await sio.enter_room(sid, name)
        return rooms_ack(sid)

    async def leave(sid: str, rooms: Any = None, *_: Any) -> dict[str, Any]:
        names = room_names(rooms)
        if names is None:
            return {"ok": False, "error": "bad room"}
        for name in names:
            if name != sid:
                await sio.leave_room(sid, name)
        return rooms_ack(sid)

    async def publish(sid: str, message: Any = None, *_: Any) -> dict[str, Any]:
        if not isinstance(message, dict):
            return {"ok": False, "error": "publish takes {room, event, data}"}
        names = room_names(message.get("room"))
        if names is None:
            return {"ok": False, "error": "bad room"}
        event = message.get("event")
        if not isinstance(event, str) or not event or event in RESERVED:
            return {"ok": False, "error": "event must be a non-reserved name"}
        member_of = set(sio.rooms(sid))
        for name in names:
            if name not in member_of:
                return {"ok": False, "error": f"not a member of {name}"}
        await sio.emit(event, message.get("data"), room=names, skip_sid=sid)
        return {"ok": True}

    sio.on("join", join)
    sio.on("leave", leave)
    sio.on("publish", publish)
    return app


async def serve(host: str, port: int) -> None:
    """Serve until a SIGINT or SIGTERM."""
    runner_ = web.AppRunner(make_app(), access_log=None)
    await runner_.setup()
    await web.TCPSite(runner_, host, port, reuse_address=True).start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    print(f"python-socketio {host}:{port} ready", flush=True)
    try:
        await stopped.wait()
    finally:
        await runner_.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3002)
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    args = parser.parse_args()
    runner(not args.no_uvloop)(serve(args.host, args.port))


if __name__ == "__main__":
    main()
