"""Named reasons a session or a socket ends, shared by logs, handlers and close frames.

The first group are Socket.IO's own disconnect reasons (server side, as in socket.io's
``DisconnectReason``); the second are roomcast's limits (DESIGN.md, "Bad input and limits").
"""

from __future__ import annotations

from typing import Final

# Socket.IO's reasons.
TRANSPORT_CLOSE: Final = "transport close"
TRANSPORT_ERROR: Final = "transport error"
PING_TIMEOUT: Final = "ping timeout"
PARSE_ERROR: Final = "parse error"
FORCED_CLOSE: Final = "forced close"
FORCED_SERVER_CLOSE: Final = "forced server close"
SERVER_NAMESPACE_DISCONNECT: Final = "server namespace disconnect"
CLIENT_NAMESPACE_DISCONNECT: Final = "client namespace disconnect"
SERVER_SHUTTING_DOWN: Final = "server shutting down"
CONNECT_TIMEOUT: Final = "connect timeout"

# roomcast's limits: past one of them the offending session is closed with that reason.
PAYLOAD_TOO_LARGE: Final = "payload too large"
TOO_MANY_PACKETS: Final = "too many packets"
TOO_MANY_ATTACHMENTS: Final = "too many attachments"
INVALID_ACK_ID: Final = "invalid ack id"
TOO_MANY_ROOMS: Final = "too many rooms"
TOO_MANY_NAMESPACES: Final = "too many namespaces"
SEND_BUFFER_FULL: Final = "send buffer full"
TOO_MANY_PENDING_HANDLERS: Final = "too many pending handlers"
DUPLICATE_POLL: Final = "duplicate poll"
POLL_ABORTED: Final = "poll aborted"
UPGRADE_FAILED: Final = "upgrade failed"
REQUEST_TIMEOUT: Final = "request timeout"  #: a polling POST's body did not arrive in time
# Packets the Socket.IO state machine forbids (roomcast.protocol.sio_session).
DUPLICATE_CONNECT: Final = "duplicate connect"
NAMESPACE_NOT_CONNECTED: Final = "namespace not connected"
