"""Engine.IO's upgrade (§Upgrade): one WebSocket taking a polling session over.

The rules (one upgrade at a time, the probe exchange, NOOP to the pending GET) are
:class:`~roomcast.protocol.engineio.EngineSession`'s; :class:`Upgrade` carries them out on one
link, and hands the link to its connection when the upgrade completes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from roomcast.errors import ProtocolError, RemoteProtocolError
from roomcast.protocol import engineio as eio
from roomcast.protocol import reasons
from roomcast.protocol.frames import ws_frame, ws_text

from .polling import Polling
from .websocket import WebSocketLink

log = logging.getLogger("roomcast.node")


class UpgradingConnection(Protocol):
    """What an upgrade uses of the connection it upgrades."""

    session: eio.EngineSession
    polling: Polling

    @property
    def sid(self) -> str: ...

    def upgraded(self, upgrade: Upgrade) -> None: ...

    def upgrade_failed(self, upgrade: Upgrade) -> None: ...


class Upgrade:
    """One WebSocket's attempt to take a polling session over (§Upgrade): ``2probe`` is
    answered ``3probe`` (and the pending GET NOOP), then ``5`` completes it; anything else, the
    link's end, or ``engineio.upgrade_timeout_ms`` fails it, and the session stays on polling."""

    __slots__ = ("_timer", "conn", "link")

    def __init__(self, conn: UpgradingConnection, link: WebSocketLink) -> None:
        self.conn = conn
        self.link = link
        seconds = conn.session.settings.upgrade_timeout_ms / 1000
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            seconds, self.fail, "upgrade timeout"
        )

    def probe(self, data: str | bytes) -> None:
        """A message on the upgrading link."""
        try:
            if not isinstance(data, str):
                raise RemoteProtocolError(reasons.UPGRADE_FAILED, "probe not text")
            events = self.conn.session.receive_probe(eio.decode_text(data))
        except ProtocolError as exc:
            self.fail(exc.detail or exc.reason)
            return
        if not any(isinstance(e, eio.UpgradeCompleted) for e in events):
            self.link.write(ws_text("3probe"))
            self.conn.polling.wake(eio.NOOP)
            return
        self._stop_timer()
        self.conn.upgraded(self)

    def fail(self, detail: str, code: int | None = None) -> None:
        """The upgrade failed: the link is closed, the session stays on polling."""
        self._stop_timer()
        log.debug("upgrade of %s failed: %s", self.conn.sid, detail)
        self.conn.upgrade_failed(self)
        self.link.close(reasons.UPGRADE_FAILED, code)

    def end(self, reason: str) -> None:
        """The session closed during the upgrade: the link goes with it."""
        self._stop_timer()
        self.link.close(reason)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def outbox_as_frames(outbox: list[str]) -> bytes:
    """What the polling outbox still held, as WebSocket frames (binary packets as binary)."""
    return b"".join(_poll_text_to_ws(text) for text in outbox)


def _poll_text_to_ws(text: str) -> bytes:
    if text.startswith("b"):
        packet = eio.decode_text(text)
        assert isinstance(packet.data, bytes)
        return ws_frame(packet.data, 0x2)
    return ws_text(text)
