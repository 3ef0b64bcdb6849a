"""What the Engine.IO endpoint answers an HTTP request with (§Transports, HTTP long-polling).

Pure data: engine.io's HTTP error answers (its ``Server.errors``), the polling answers, and the
refusal that closes a session. :class:`~roomcast.protocol.engineio.EngineSession` decides which;
the node turns them into aiohttp responses. ``roomcast.protocol.engineio`` exports these names
too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class HttpError:
    """One of engine.io's HTTP error answers (its ``Server.errors``)."""

    code: int
    message: str
    status: int = 400


TRANSPORT_UNKNOWN: Final = HttpError(0, "Transport unknown")
UNKNOWN_SID: Final = HttpError(1, "Session ID unknown")
BAD_HANDSHAKE_METHOD: Final = HttpError(2, "Bad handshake method")
BAD_REQUEST: Final = HttpError(3, "Bad request")
DRAINING: Final = HttpError(4, "Forbidden: node draining", 503)
UNSUPPORTED_VERSION: Final = HttpError(5, "Unsupported protocol version")

TEXT_PLAIN: Final = "text/plain"
APPLICATION_JSON: Final = "application/json"
TEXT_HTML: Final = "text/html"


@dataclass(frozen=True, slots=True)
class HttpReply:
    """What an HTTP request of the Engine.IO path is answered with.

    ``linger``: the session is closed, and keeps what it still has to say (or its CLOSE) for
    one more GET.
    """

    status: int
    body: str
    content_type: str = TEXT_PLAIN
    linger: bool = False

    @classmethod
    def payload(cls, text: str, *, linger: bool = False) -> HttpReply:
        """A polling answer: packets as UTF-8 text."""
        return cls(200, text, TEXT_PLAIN, linger)

    @classmethod
    def error(cls, err: HttpError) -> HttpReply:
        """``{"code": ..., "message": ...}`` with the error's status."""
        body = json.dumps({"code": err.code, "message": err.message})
        return cls(err.status, body, APPLICATION_JSON)


#: What a POST the session accepted is answered with (engine.io's "ok").
POST_OK: Final = HttpReply(200, "ok", TEXT_HTML)
#: What a POST over ``max_payload`` is answered with.
TOO_LARGE: Final = HttpReply(413, "payload too large")


@dataclass(frozen=True, slots=True)
class Refusal:
    """The request breaks a rule: the session closes with ``reason``; ``reply`` answers it."""

    reason: str
    reply: HttpReply
    detail: str = ""
