"""Identifiers: the one home of every name roomcast gives to a thing, and of their rules.

The bottom layer of the package: it imports nothing of roomcast, and everything may import it.

==================  =======  ====================================================================
name                type     what it names
==================  =======  ====================================================================
:data:`NodeId`      str      a node, as configured (``node.id``); stable across restarts
:data:`NodeTag`     bytes    one *incarnation* of a node (6 bytes): its direct bus topic and the
                             prefix of every socket id it issues
:data:`Sid`         str      a Socket.IO socket: 24 URL-safe characters, the issuing node's tag
                             as text, then 16 random ones; also the socket's private room
:data:`EngineSid`   str      an Engine.IO session (one client connection): 28 URL-safe
                             characters, the node's tag as text, then 20 random ones
:data:`Pid`         str      a socket's *private* session id (connection state recovery): the
                             shape of a sid, issued by the node that holds the session; only
                             its client knows it, and presents it to recover the session
:data:`Offset`      str      the position of a packet in one node's delivery order: the tag of
                             the node that wrote it, as text, then that node's counter in
                             lowercase hex (no leading zero); the last argument of every
                             broadcast EVENT a node writes to a recovery-enabled namespace
:data:`Namespace`   str      a Socket.IO namespace name, ``/`` first
:data:`Room`        str      a room of a namespace
==================  =======  ====================================================================

Because a sid starts with its node's tag, any node (or emitter) can tell which node holds a
socket without asking anyone (:func:`tag_of_sid`), and any node which node holds an Engine.IO
session (:func:`tag_of_engine_sid`): a request for it can be forwarded there. A pid and an
offset name their node the same way (:func:`tag_of_pid`, :func:`parse_offset`): an offset is
never read against another node's counter, and a pid leads to the node holding its session.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable
from typing import Final, NewType

NodeId = NewType("NodeId", str)
NodeTag = NewType("NodeTag", bytes)
Sid = NewType("Sid", str)
EngineSid = NewType("EngineSid", str)
Pid = NewType("Pid", str)
Offset = NewType("Offset", str)
Namespace = NewType("Namespace", str)
Room = NewType("Room", str)

#: Bytes of a node tag.
TAG_BYTES: Final = 6
#: Characters of a tag as text: base64url of 6 bytes, the prefix of every sid a node issues.
TAG_CHARS: Final = 8
#: Characters of a sid: the tag's 8, then 16 random base64url characters.
SID_CHARS: Final = 24
#: Characters of an Engine.IO sid: the tag's 8, then 20 random ones (120 bits, as engine.io's).
ENGINE_SID_CHARS: Final = 28

#: Hex digits of an offset's counter, at most (a 64-bit counter).
OFFSET_COUNTER_CHARS: Final = 16

ROOT_NAMESPACE: Final = Namespace("/")

_SID_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX: Final = frozenset("0123456789abcdef")


def node_tag(node_id: str, incarnation: int) -> NodeTag:
    """The tag of one incarnation of a node: its direct topic and its sids' prefix."""
    digest = hashlib.blake2b(f"{node_id}:{incarnation}".encode(), digest_size=TAG_BYTES).digest()
    return NodeTag(digest)


def tag_text(tag: bytes) -> str:
    """A tag as the sid prefix."""
    return base64.urlsafe_b64encode(tag).decode("ascii")


def new_sid(tag: NodeTag) -> Sid:
    """A fresh socket id issued by the node with ``tag``."""
    return Sid(tag_text(tag) + secrets.token_urlsafe(12))


def new_engine_sid(tag: NodeTag) -> EngineSid:
    """A fresh Engine.IO session id of the node with ``tag``: its tag, then 20 random
    URL-safe characters."""
    return EngineSid(tag_text(tag) + secrets.token_urlsafe(15))


def new_pid(tag: NodeTag) -> Pid:
    """A fresh private session id of a socket of the node with ``tag`` (unrelated to its sid)."""
    return Pid(tag_text(tag) + secrets.token_urlsafe(12))


def tag_of_pid(pid: str) -> NodeTag | None:
    """The tag of the node that issued ``pid``, or None when ``pid`` is not shaped like ours."""
    return tag_of_sid(pid)


def offset_text(tag: NodeTag, counter: int) -> Offset:
    """The offset of the packet numbered ``counter`` (from 1) by the node with ``tag``."""
    return Offset(f"{tag_text(tag)}{counter:x}")


def parse_offset(text: str) -> tuple[NodeTag, int] | None:
    """The node tag and counter of an offset, or None when ``text`` is not one (each offset has
    exactly one spelling: a counter with a leading zero is not an offset)."""
    digits = text[TAG_CHARS:]
    if not 0 < len(digits) <= OFFSET_COUNTER_CHARS or digits[0] == "0":
        return None
    if not all(c in _HEX for c in digits):
        return None
    if not all(c in _SID_ALPHABET for c in text[:TAG_CHARS]):
        return None
    tag = _tag_prefix(text)
    return None if tag is None else (tag, int(digits, 16))


def is_sid_shaped(name: str) -> bool:
    """Whether ``name`` has the shape of a socket id (rooms may not: they would shadow one)."""
    return len(name) == SID_CHARS and all(c in _SID_ALPHABET for c in name)


def tag_of_sid(sid: str) -> NodeTag | None:
    """The tag of the node that issued ``sid``, or None when ``sid`` is not one of ours."""
    if not is_sid_shaped(sid):
        return None
    return _tag_prefix(sid)


def tag_of_engine_sid(sid: str) -> NodeTag | None:
    """The tag of the node that holds Engine.IO session ``sid``, or None when ``sid`` is not
    shaped like one of ours."""
    if len(sid) != ENGINE_SID_CHARS or not all(c in _SID_ALPHABET for c in sid):
        return None
    return _tag_prefix(sid)


def _tag_prefix(sid: str) -> NodeTag | None:
    prefix = sid[:TAG_CHARS]
    try:
        tag = base64.urlsafe_b64decode(prefix)
    except (ValueError, TypeError):
        return None
    # The decoder skips characters outside the alphabet and accepts '+', '/' and padding:
    # only a prefix that is exactly the text of a 6-byte tag is ours.
    return NodeTag(tag) if len(tag) == TAG_BYTES and tag_text(tag) == prefix else None


def namespace_name(name: str) -> Namespace:
    """A namespace name as clients send it, ``/`` first (``chat`` is ``/chat``)."""
    return Namespace(name if name.startswith("/") else "/" + name)


def room_names(rooms: Iterable[str | Iterable[str]]) -> list[str]:
    """Room arguments as the API takes them (names, or iterables of names) as one flat list."""
    out: list[str] = []
    for r in rooms:
        if isinstance(r, str):
            out.append(r)
        else:
            out.extend(r)
    return out
