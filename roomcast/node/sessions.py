"""The node's Engine.IO sessions, and what each keeps of the request that opened it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

from aiohttp import web
from yarl import URL

from roomcast.protocol import engineio as eio

from .stats import NodeStats


class Entry(Protocol):
    """A connection, as the session table sees it."""

    @property
    def sid(self) -> str: ...

    @property
    def session(self) -> eio.EngineSession: ...

    def flush(self) -> None: ...


C = TypeVar("C", bound=Entry)  #: the connection type (roomcast.node.engine.Connection)


class RequestInfo:
    """What a session keeps of the HTTP request that opened it: the fields of
    ``socket.handshake``. The headers and the query are turned into dicts only when a handshake
    is asked for (aiohttp's parse of them is kept as it is)."""

    __slots__ = ("_headers", "address", "secure", "url")

    def __init__(
        self, headers: Mapping[str, str], url: str, address: str | None, secure: bool
    ) -> None:
        self._headers = headers  # as aiohttp parsed them (its read-only multidict)
        #: The request target, path and query (``str(request.rel_url)``).
        self.url = url
        self.address = address
        self.secure = secure

    @classmethod
    def of(cls, request: web.BaseRequest) -> RequestInfo:
        """The fields of an aiohttp request."""
        return cls(request.headers, str(request.rel_url), request.remote, request.secure)

    def headers(self) -> dict[str, str]:
        """The headers as a dict (as ``dict(request.headers)``)."""
        return dict(self._headers)

    def query(self) -> dict[str, str]:
        """The query parameters as a dict (as ``dict(request.query)``)."""
        return dict(URL(self.url, encoded=True).query)


class Sessions(Generic[C]):
    """The node's Engine.IO sessions: live ones by sid, closed polling ones whose last packets
    await one more GET, and the end-of-pass flush of WebSocket frames."""

    def __init__(self, stats: NodeStats, send_buffer_bytes: int) -> None:
        self.stats = stats
        #: A WebSocket whose write buffer grows past this is closed (``send buffer full``).
        self.send_buffer_bytes = send_buffer_bytes
        self.live: dict[str, C] = {}
        #: Polling connections closed on purpose whose last packets await one more GET.
        self.lingering: dict[str, C] = {}
        self._linger_timers: dict[str, asyncio.TimerHandle] = {}
        self._dirty: list[C] = []  # connections with WebSocket frames to write
        self._flush_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the sessions run on."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def linger(self, conn: C) -> None:
        """Keep a closed polling connection's last packets for its next GET, for at most one
        ping timeout (engine.io keeps them as long)."""
        seconds = conn.session.settings.ping_timeout_ms / 1000
        sid = conn.sid
        old = self._linger_timers.pop(sid, None)
        if old is not None:
            old.cancel()
        self.lingering[sid] = conn
        self._linger_timers[sid] = self.loop.call_later(seconds, self._forget_lingering, sid)

    def _forget_lingering(self, sid: str) -> None:
        self.lingering.pop(sid, None)
        self._linger_timers.pop(sid, None)

    def schedule_flush(self, conn: C) -> None:
        """Have ``conn``'s queued frames written at the end of this loop pass."""
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()
