"""Engine.IO's HTTP long-polling transport for one connection: the pending GET and the POSTs.

Every rule (one GET and one POST at a time, NOOP to a GET during an upgrade, last words then
CLOSE, the error answers) is :class:`~roomcast.protocol.engineio.EngineSession`'s; this module
only waits for the session's outbox and turns its answers into aiohttp responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web

from roomcast.errors import RemoteProtocolError
from roomcast.protocol import engineio as eio

from .stats import BODY_TIMEOUT, NodeStats


class PollingConnection(Protocol):
    """What the polling transport uses of its connection."""

    session: eio.EngineSession

    @property
    def stats(self) -> NodeStats: ...

    def close(self, reason: str, detail: str = "") -> None: ...

    def linger(self) -> None: ...

    def start_timer(self) -> None: ...

    def handle(self, events: Iterable[eio.EngineEvent]) -> None: ...


class Polling:
    """The polling side of one connection (every connection has one: a session opened on
    WebSocket simply never uses it)."""

    __slots__ = ("conn", "waiter")

    def __init__(self, conn: PollingConnection) -> None:
        self.conn = conn
        #: The pending GET, waiting for the outbox (None: no GET is waiting).
        self.waiter: asyncio.Future[eio.Packet | None] | None = None

    def wake(self, result: eio.Packet | None) -> None:
        """Answer the pending GET now: with the outbox (None), or with ``result``."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def buffer(self, texts: Iterable[str]) -> bool:
        """Queue packets for the next GET and wake it; a full outbox closes the session."""
        session = self.conn.session
        try:
            for text in texts:
                session.buffer(text)
        except RemoteProtocolError as exc:
            self.conn.close(exc.reason)
            return False
        self.wake(None)
        return True

    async def get(self) -> web.Response:
        """Serve one GET (the rules are :meth:`EngineSession.begin_get`'s)."""
        session = self.conn.session
        answer = session.begin_get()
        if answer is None:
            waiter: asyncio.Future[eio.Packet | None] = asyncio.get_running_loop().create_future()
            self.waiter = waiter
            try:
                woken_by = await waiter
            except asyncio.CancelledError:
                self.conn.close(session.abort_get())
                raise
            finally:
                self.waiter = None
            answer = session.end_get(woken_by)
        return self._answer(answer)

    def last_words(self) -> web.Response:
        """Answer a GET of this closed session (see :meth:`EngineSession.last_words`)."""
        return self._answer(self.conn.session.last_words())

    async def post(self, request: web.Request) -> web.Response:
        """Serve one POST (the rules are :meth:`EngineSession.begin_post`'s)."""
        session = self.conn.session
        refused = session.begin_post(request.content_length)
        if refused is not None:
            return self._answer(refused)
        try:
            body = await _read_limited(request, session.settings.max_payload)
        except BaseException:
            session.abort_post()
            raise
        if body is not None:
            self.conn.stats.polling_bytes_in += len(body)
        answer, events = session.end_post(body, asyncio.get_running_loop().time())
        if answer is eio.POST_OK:
            self.conn.start_timer()  # a PONG in the body moved the heartbeat deadline
            self.conn.handle(events)
        return self._answer(answer)

    def _answer(self, answer: eio.HttpReply | eio.Refusal) -> web.Response:
        if isinstance(answer, eio.Refusal):
            self.conn.close(answer.reason, answer.detail)
            answer = answer.reply
        elif answer.linger:
            self.conn.linger()
        return self.counted(http_reply(answer))

    def counted(self, response: web.Response) -> web.Response:
        """``response``, its body counted as the session's polling traffic."""
        body = response.body
        if isinstance(body, bytes):
            self.conn.stats.polling_bytes_out += len(body)
        return response


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def http_reply(reply: eio.HttpReply) -> web.Response:
    """An Engine.IO HTTP answer as an aiohttp response."""
    return web.Response(
        status=reply.status, text=reply.body, content_type=reply.content_type, charset="UTF-8"
    )


def http_error(err: eio.HttpError) -> web.Response:
    """An Engine.IO error answer: ``{"code": ..., "message": ...}`` (engine.io's Server.errors)."""
    return http_reply(eio.HttpReply.error(err))


def body_timeout(stats: NodeStats) -> web.Response:
    """The answer to a POST whose body did not arrive within ``http.body_timeout_ms``
    (``408``, the connection closed after it), counted in ``http_refused``."""
    stats.http_refused[BODY_TIMEOUT] += 1
    response = web.Response(status=408, text="Request Timeout")
    response.force_close()
    return response
