"""A TCP proxy on 127.0.0.1 that keeps a copy of every byte it forwards (an eavesdropper on a
link: what of the traffic can be read off the wire) and can stop forwarding without closing
anything (a link that stalls silently, as a broken switch or a frozen middlebox makes one).

While stalled, nothing is read from or written to any connection (old or new: new ones are
accepted and then stall too), so the kernel buffers fill and TCP flow control stops the
peers, exactly as when packets stop getting through. :meth:`resume` lets everything flow
again, including what the stalled connections had buffered (the nasty case: bytes written
long ago arriving late).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

_CHUNK = 65_536


class TcpProxy:
    """``async with TcpProxy(target_port) as proxy``: connect to ``proxy.port``;
    ``proxy.seen`` holds everything that crossed it, both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.seen = bytearray()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def stall(self) -> None:
        """Stop forwarding, in both directions, on every connection."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again (what was buffered meanwhile goes first)."""
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.read(_CHUNK)
                await self._flowing.wait()  # a chunk read just before a stall waits too
                if not data:
                    break
                self.seen += data
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()
