"""The connect scenario's load: a worker process opening many idle clients at once.

A worker of its own opens ``ConnectConfig.clients`` idle clients (WebSocket + Socket.IO
CONNECT, no room) with at most ``concurrency`` handshakes in flight, says when the first began
and the last was acknowledged, and closes them when told (:func:`idle_main`). The clients are
:class:`bench.loadgen.Client` objects.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from bench.loadgen import Client, ProtocolFailure, now_us, run_worker, sleep_until


@dataclass(frozen=True)
class ConnectConfig:
    """What one idle-client worker opens: ``clients`` connections, ``concurrency`` at a time."""

    host: str
    port: int
    clients: int
    concurrency: int
    timeout: float = 30.0  #: per connection, from its TCP connect to its Socket.IO CONNECT


@dataclass
class ConnectResult:
    """What one idle-client worker saw while connecting."""

    connected: int = 0
    failed: int = 0
    first_error: str = ""
    began: int = 0  #: :func:`now_us` when the first connection was started
    finished: int = 0  #: :func:`now_us` when the last CONNECT ack was read
    cpu_seconds: float = 0.0  #: the worker's CPU time meanwhile
    fd_limit: int = 0  #: the worker's soft limit of open files


async def open_idle(cfg: ConnectConfig, start: int) -> tuple[ConnectResult, list[Client]]:
    """From ``start`` on, open ``cfg.clients`` idle clients with at most ``cfg.concurrency``
    handshakes in flight; return the figures and the clients (connected or not)."""
    result = ConnectResult(fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    clients = [Client(cfg.host, cfg.port, None) for _ in range(cfg.clients)]
    pending = iter(clients)

    async def lane() -> None:
        # ``concurrency`` lanes, each taking the next client when its last one is connected:
        # no task per client, and the in-flight bound holds exactly.
        for client in pending:
            try:
                async with asyncio.timeout(cfg.timeout):
                    await client.open()
            except (OSError, ProtocolFailure, TimeoutError) as exc:
                result.failed += 1
                result.first_error = result.first_error or repr(exc)
                client.close()
                continue
            result.connected += 1
            result.finished = max(result.finished, now_us())

    await sleep_until(start)
    cpu0 = time.process_time()
    result.began = now_us()
    await asyncio.gather(*(lane() for _ in range(max(1, cfg.concurrency))))
    result.cpu_seconds = time.process_time() - cpu0
    return result, clients


async def serve_idle(conn: Connection, cfg: ConnectConfig) -> None:
    """``connect`` (at a :func:`now_us` time): open the idle clients and answer ``connected``
    with a :class:`ConnectResult`; then ``quit``: close them."""
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    try:
        while True:
            command, arg = await loop.run_in_executor(None, conn.recv)
            if command == "quit":
                break
            if command == "connect":
                result, clients = await open_idle(cfg, arg)
                conn.send(("connected", result))
    finally:
        for client in clients:
            client.close()
        await asyncio.sleep(0.2)  # let close frames go out


def idle_main(conn: Connection, cfg: ConnectConfig) -> None:
    """The entry point of an idle-client worker process (the connect scenario)."""
    run_worker(serve_idle(conn, cfg))
