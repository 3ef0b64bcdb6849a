"""CURVE on the bus, in one process: key files, a CURVE router and buses on 127.0.0.1.

A router lets in only allowed keys: a bus with one works, and a bus without keys, with a key
the router does not allow, or expecting another router key gets no connection at all (the
router counts it, the bus says why). What such a bus publishes is dropped at its own door
(counted there) and reaches nobody; what others publish never reaches it. A reload lets a new
key in and cuts the connections of a removed one. On the wire, a CURVE link shows none of the
payload that an open link shows in the clear. Waits are for events (a message, a counter, a
link state), with timeouts; a negative is proven behind a barrier published after it.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.bus_inbox import Inbox, Message
from support.cluster_harness import wait_until
from support.curve_keys import ROUTER, Keyring
from support.tcp_proxy import TcpProxy
from support.timing import TIMEOUT

from roomcast.cluster import curve, wire
from roomcast.cluster.bus import Bus
from roomcast.cluster.curve import ClientKeys
from roomcast.cluster.wire import Topic
from roomcast.config import RouterAddress, Settings
from roomcast.emitter import Emitter
from roomcast.errors import ConfigError
from roomcast.node.server import Server
from roomcast.protocol.frames import ws_text
from roomcast.router.router import Router


def room(text: str) -> wire.RoomMessage:
    """A room message carrying ``text``."""
    return wire.RoomMessage(1, "/", ("r",), (), (), False, ws_text(f'42["chat","{text}"]'))


def carries(text: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m[2], wire.RoomMessage) and text.encode() in m[2].ws


def connected(bus: Bus) -> bool:
    """Whether ``bus`` is connected to the router both ways."""
    return bus.connected_routers() == [ROUTER]


def fresh_topic() -> Topic:
    return wire.room_topic("/", f"room-{secrets.token_hex(6)}")


# --- key files --------------------------------------------------------------------------------


def test_written_key_pairs_load_and_are_not_overwritten(tmp_path: Path) -> None:
    """A written pair loads as ZeroMQ's format (the secret file private to its owner); writing
    it again is refused unless forced, which makes a new pair."""
    public, secret = curve.write_key_pair(tmp_path, "n1")
    assert (public.name, secret.name) == ("n1.key", "n1.key_secret")
    assert os.stat(secret).st_mode & 0o777 == 0o600
    pair = curve.load_key_pair(str(secret), "bus.secret_key_file")
    assert curve.load_public_key(str(public), "x") == pair.public
    assert len(pair.public) == len(pair.secret) == 40
    with pytest.raises(FileExistsError):
        curve.write_key_pair(tmp_path, "n1")
    assert curve.load_key_pair(str(secret), "x") == pair
    curve.write_key_pair(tmp_path, "n1", force=True)
    assert curve.load_key_pair(str(secret), "x") != pair


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_key_file_errors_name_the_setting_and_the_path(tmp_path: Path) -> None:
    """A key file that is missing, is a public key file, holds garbage, or whose keys do not
    match is a ConfigError naming the setting and the path."""
    public, secret = curve.write_key_pair(tmp_path, "ok")
    other_public, _ = curve.write_key_pair(tmp_path, "other")
    mismatched = secret.read_text().replace(
        curve.load_public_key(str(public), "x").decode(),
        curve.load_public_key(str(other_public), "x").decode(),
    )
    cases = {
        str(tmp_path / "missing.key_secret"): "no key file at",
        str(public): "holds no secret key",
        _file(tmp_path, "garbage", 'curve\n    public-key = "not a key"\n'): "not a Z85",
        _file(tmp_path, "empty", ""): "holds no public key",
        _file(tmp_path, "mismatched", mismatched): "does not match",
        str(tmp_path): "no key file at",  # a directory
    }
    for path, reason in cases.items():
        with pytest.raises(ConfigError) as info:
            curve.load_key_pair(path, "bus.secret_key_file")
        message = str(info.value)
        assert message.startswith("bus.secret_key_file: "), message
        assert reason in message and path in message, message
    with pytest.raises(ConfigError, match=r"^bus\.secret_key_file: required when bus\.curve"):
        curve.load_key_pair("", "bus.secret_key_file")


def test_allowed_keys_come_from_the_key_files_of_a_directory(tmp_path: Path) -> None:
    """Every ``*.key`` of the directory is allowed (secret files are not read); a missing
    directory or a bad file in it is a ConfigError naming it."""
    keyring = Keyring(tmp_path)
    keyring.allow("a", "b")
    (keyring.allowed / "notes.txt").write_text("not a key")
    expected = {keyring.pair("a").public, keyring.pair("b").public}
    assert curve.load_allowed_keys(str(keyring.allowed), "router.allowed_keys_dir") == expected
    with pytest.raises(ConfigError, match=r"^router\.allowed_keys_dir: no directory at"):
        curve.load_allowed_keys(str(tmp_path / "nope"), "router.allowed_keys_dir")
    bad = _file(keyring.allowed, "bad.key", "nothing here")
    with pytest.raises(ConfigError, match=re.escape(f"{bad} holds no public key")):
        curve.load_allowed_keys(str(keyring.allowed), "router.allowed_keys_dir")


def test_keys_from_the_settings(tmp_path: Path) -> None:
    """Without ``bus.curve`` no key is read; with it a node needs its key pair and a key for
    every router (the common one, or each router's own), and a router its pair and the
    allowed directory."""
    keyring = Keyring(tmp_path)
    assert curve.client_keys(Settings()) is None and curve.server_keys(Settings()) is None
    on = Settings().replace(**{"bus.curve": True})
    with pytest.raises(ConfigError, match=r"^bus\.secret_key_file: required"):
        curve.client_keys(on)
    with pytest.raises(ConfigError, match=r"^router\.secret_key_file: required"):
        curve.server_keys(on)
    node = on.replace(**{"bus.secret_key_file": str(keyring.secret("n1"))})
    with pytest.raises(ConfigError, match=r"^bus\.router_public_key_file: required"):
        curve.client_keys(node)
    own = node.replace(
        **{
            "discovery.routers": [
                {"id": "r1", "public_key_file": str(keyring.public("r1"))},
                {"id": "r2", "xsub": "tcp://127.0.0.1:6555", "public_key_file": ""},
            ]
        }
    )
    with pytest.raises(ConfigError, match=r"^bus\.router_public_key_file: required"):
        curve.client_keys(own)  # r2 has no key of its own
    keys = curve.client_keys(
        own.replace(**{"bus.router_public_key_file": str(keyring.public(ROUTER))})
    )
    assert keys is not None and keys.own == keyring.pair("n1")
    assert keys.router_key("r1") == keyring.pair("r1").public
    assert keys.router_key("r2") == keys.router_key("r9") == keyring.pair(ROUTER).public
    consul = node.replace(**{"discovery.backend": "consul"})
    with pytest.raises(ConfigError, match=r"^bus\.router_public_key_file: required"):
        curve.client_keys(consul)
    router = on.replace(**{"router.secret_key_file": str(keyring.secret(ROUTER))})
    with pytest.raises(ConfigError, match=r"^router\.allowed_keys_dir: required"):
        curve.server_keys(router)
    server = curve.server_keys(router.replace(**{"router.allowed_keys_dir": str(keyring.allowed)}))
    assert server is not None and server.own == keyring.pair(ROUTER)


# --- a CURVE router and buses ----------------------------------------------------------------


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    """Keys for the router and the buses; "good", "control" and "watcher" are allowed."""
    keys = Keyring(tmp_path)
    keys.allow("good", "control", "watcher")
    return keys


@pytest.fixture
async def curve_router(keyring: Keyring) -> AsyncIterator[Router]:
    """A CURVE router on three ephemeral ports."""
    async with Router("127.0.0.1", 0, 0, 0, router_id=ROUTER, curve=keyring.server()) as r:
        yield r


StartBus = Callable[..., Awaitable[tuple[Bus, Inbox]]]


@pytest.fixture
async def start_bus() -> AsyncIterator[StartBus]:
    """Start a bus on a router (``curve``: its keys; None: open); stopped at the end."""
    buses: list[Bus] = []
    counter = itertools.count(1)

    async def start(
        router: Router, curve: ClientKeys | None, via: tuple[int, int] | None = None
    ) -> tuple[Bus, Inbox]:
        xsub, xpub = via or (router.xsub_port, router.xpub_port)
        inbox = Inbox()
        bus = Bus(
            f"bus{next(counter)}",
            1,
            [(ROUTER, f"tcp://127.0.0.1:{xsub}", f"tcp://127.0.0.1:{xpub}")],
            inbox,
            curve=curve,
        )
        await bus.__aenter__()
        buses.append(bus)
        return bus, inbox

    try:
        yield start
    finally:
        for bus in reversed(buses):
            await bus.__aexit__(None, None, None)


async def test_an_allowed_key_gets_through(
    curve_router: Router, start_bus: StartBus, keyring: Keyring
) -> None:
    """Buses with allowed keys subscribe and publish through a CURVE router as on an open
    bus; the router counts their handshakes and refuses none."""
    sender, _ = await start_bus(curve_router, keyring.client("good"))
    receiver, inbox = await start_bus(curve_router, keyring.client("control"))
    topic = fresh_topic()
    await receiver.subscribe(topic, TIMEOUT)
    await sender.subscribe(fresh_topic(), TIMEOUT)  # its own probe came back: it is connected
    sender.publish(topic, room("hello"))
    await inbox.wait_for(carries("hello"))
    stats = curve_router.stats_dict()
    assert stats["curve"] is True and stats["curve_refused"] == 0
    assert stats["curve_accepted"] >= 4  # two links each
    assert stats["allowed_keys"] == 3
    assert receiver.link_problems() == {} and receiver.stats_dict()["curve"] is True


#: An intruder: (how its bus is keyed, the reason the router counts, what the bus says).
INTRUDERS: dict[str, tuple[str, str, str]] = {
    "no key": ("open", "no curve", "bus.curve is false here"),
    "key not allowed": ("stranger", "key not allowed", "refused this process's key"),
    "wrong router key": ("wrong-router", "bad handshake", "dropped the CURVE handshake"),
}


def intruder_keys(keyring: Keyring, kind: str) -> ClientKeys | None:
    if kind == "open":
        return None
    if kind == "wrong-router":  # an allowed key, expecting another router's public key
        return ClientKeys(keyring.pair("good"), {}, keyring.pair("impostor").public)
    return keyring.client(kind)


@pytest.mark.parametrize("intruder", list(INTRUDERS))
async def test_a_refused_bus_gets_nothing_through(
    curve_router: Router, start_bus: StartBus, keyring: Keyring, intruder: str
) -> None:
    """A bus the router refuses has no connection: the router counts the refusal, the bus
    says why; what others publish never reaches it, and what it publishes is dropped at its
    own door and reaches nobody (a barrier from an allowed bus arrives, it does not)."""
    keys, reason, problem = INTRUDERS[intruder]
    control, _ = await start_bus(curve_router, keyring.client("control"))
    watcher, watcher_inbox = await start_bus(curve_router, keyring.client("good"))
    topic = fresh_topic()
    await watcher.subscribe(topic, TIMEOUT)
    await control.subscribe(fresh_topic(), TIMEOUT)

    bad, bad_inbox = await start_bus(curve_router, intruder_keys(keyring, keys))
    await wait_until(
        lambda: curve_router.stats_dict()["curve_refused_by_reason"][reason] >= 2,
        what=f"both links refused ({reason})",
    )
    await wait_until(lambda: bad.link_problems().get(ROUTER), what="the bus noticing")
    assert problem in bad.link_problems()[ROUTER]
    assert bad.stats.handshakes_failed >= 2
    assert bad.connected_routers() == [] and bad.live_routers() == []

    # It cannot subscribe: it hears nothing of what is published on its topic.
    with pytest.raises(TimeoutError):
        await bad.subscribe(topic, 0.2)  # its probe cannot come back
    before = curve_router.stats_dict()["messages_in"]
    control.publish(topic, room("not for intruders"))
    # It cannot publish: its message is dropped at its door, the control's barrier arrives.
    dropped = bad.stats.link_dropped
    bad.publish(topic, room("forged"))
    bad.flush()
    assert bad.stats.link_dropped == dropped + 1
    control.publish(topic, room("barrier"))
    await watcher_inbox.wait_for(carries("barrier"))
    assert [m for m in watcher_inbox.messages if carries("forged")(m)] == []
    assert bad_inbox.messages == []
    assert curve_router.stats_dict()["messages_in"] == before + 2  # the control's two only


async def test_a_key_allowed_later_gets_in_after_a_reload(
    curve_router: Router, start_bus: StartBus, keyring: Keyring
) -> None:
    """A bus whose key the router refused keeps dialling: once the key is in the allowed
    directory and the router reloaded it, the bus connects and its subscriptions work."""
    late, inbox = await start_bus(curve_router, keyring.client("late"))
    await wait_until(lambda: late.link_problems().get(ROUTER), what="the refusal")
    keyring.allow("late")
    curve_router.reload_allowed_keys()
    assert curve_router.stats_dict()["allowed_keys"] == 4
    await wait_until(functools.partial(connected, late), what="the bus to get in")
    assert late.link_problems() == {}
    topic = fresh_topic()
    await late.subscribe(topic, TIMEOUT)
    control, _ = await start_bus(curve_router, keyring.client("control"))
    await control.subscribe(fresh_topic(), TIMEOUT)
    control.publish(topic, room("welcome"))
    await inbox.wait_for(carries("welcome"))


async def test_revoking_a_key_cuts_its_connections(
    curve_router: Router, start_bus: StartBus, keyring: Keyring
) -> None:
    """A reload that removes a key cuts the connections from where that key came in: its bus
    is refused when it reconnects; other buses from that address reconnect and work on."""
    revoked, _ = await start_bus(curve_router, keyring.client("good"))
    control, _ = await start_bus(curve_router, keyring.client("control"))
    watcher, inbox = await start_bus(curve_router, keyring.client("watcher"))
    for bus in (revoked, control, watcher):
        await bus.subscribe(fresh_topic(), TIMEOUT)
    keyring.revoke("good")
    curve_router.reload_allowed_keys()
    await wait_until(lambda: curve_router.stats_dict()["curve_cut"] >= 6, what="the cut")
    await wait_until(
        lambda: "refused this process's key" in revoked.link_problems().get(ROUTER, ""),
        what="the revoked bus refused",
    )
    assert revoked.connected_routers() == []
    assert curve_router.stats_dict()["curve_refused_by_reason"]["key not allowed"] >= 1
    # The other buses (same address, cut too) are back: they subscribe and publish again.
    for bus in (control, watcher):
        await wait_until(functools.partial(connected, bus), what="the bus to be back")
    topic = fresh_topic()
    await watcher.subscribe(topic, TIMEOUT)
    await control.subscribe(fresh_topic(), TIMEOUT)
    control.publish(topic, room("still here"))
    await inbox.wait_for(carries("still here"))


async def test_a_reload_that_fails_keeps_the_keys(curve_router: Router, keyring: Keyring) -> None:
    """A directory that cannot be read on reload keeps the keys as they were."""
    (keyring.allowed / "broken.key").write_text("no key")
    curve_router.reload_allowed_keys()
    stats = curve_router.stats_dict()
    assert (stats["allowed_keys"], stats["key_reloads"]) == (3, 0)


@pytest.mark.parametrize("curve_on", [True, False], ids=["curve", "open"])
async def test_an_eavesdropper_reads_nothing_of_a_curve_bus(
    keyring: Keyring, start_bus: StartBus, curve_on: bool
) -> None:
    """A TCP proxy between a bus and its router sees the payload and topics of an open bus in
    the clear, and none of them with CURVE (while the message still gets through it)."""
    server = keyring.server() if curve_on else None
    marker = f"eavesdrop-me-{secrets.token_hex(8)}"
    topic = fresh_topic()
    async with (
        Router("127.0.0.1", 0, 0, 0, router_id=ROUTER, curve=server) as router,
        TcpProxy(router.xsub_port) as tap_in,
        TcpProxy(router.xpub_port) as tap_out,
    ):
        tapped, inbox = await start_bus(
            router,
            keyring.client("good") if curve_on else None,
            via=(tap_in.port, tap_out.port),
        )
        sender, sender_inbox = await start_bus(
            router, keyring.client("control") if curve_on else None
        )
        await tapped.subscribe(topic, TIMEOUT)
        await sender.subscribe(topic, TIMEOUT)
        # Both ways through the proxies: to the tapped bus, and from it.
        sender.publish(topic, room(marker))
        await inbox.wait_for(carries(marker))
        tapped.publish(topic, room(f"{marker}-back"))
        await sender_inbox.wait_for(carries(f"{marker}-back"))
        seen = bytes(tap_in.seen + tap_out.seen)
    assert len(seen) > 500  # handshakes, subscriptions, probes and both messages crossed
    visible = [part for part in (marker.encode(), topic) if part in seen]
    assert visible == ([] if curve_on else [marker.encode(), topic])


# --- the open-bus rule -------------------------------------------------------------------------


def test_a_router_beyond_loopback_needs_curve_or_an_explicit_open_bus(keyring: Keyring) -> None:
    """Bound beyond loopback without CURVE, a router refuses to be built (naming router.host);
    with CURVE or ``allow_open_bus`` it is built (not started here)."""
    with pytest.raises(ConfigError, match=r"^router\.host: 0\.0\.0\.0 is not a loopback"):
        Router("0.0.0.0", 0, 0, 0)
    Router("0.0.0.0", 0, 0, 0, allow_open_bus=True)
    Router("0.0.0.0", 0, 0, 0, curve=keyring.server())
    Router("127.0.0.2", 0, 0, 0)
    Router("::1", 0, 0, 0)


def remote(settings: Settings, **bus: Any) -> Settings:
    """``settings`` whose one router is at a documentation address (nothing connects)."""
    router = {"xsub": "tcp://192.0.2.1:5555", "xpub": "tcp://192.0.2.1:5556"}
    return settings.replace(
        **{
            "cluster.enabled": True,
            "discovery.routers": [router],
            **{f"bus.{k}": v for k, v in bus.items()},
        }
    )


def test_a_node_or_emitter_reaching_beyond_loopback_needs_curve_or_an_explicit_open_bus(
    keyring: Keyring,
) -> None:
    """A node or an emitter whose routers are not on this machine refuses to be built on an
    open bus (naming the router's setting) unless ``bus.allow_open_bus``; with CURVE, fine."""
    with pytest.raises(ConfigError, match=r"^discovery\.routers\[0\]\.xsub: tcp://192\.0\.2\.1"):
        Server(remote(Settings()))
    with pytest.raises(ConfigError, match=r"^discovery\.routers\[0\]\.xsub"):
        Emitter.from_settings(remote(Settings()))
    Server(remote(Settings(), allow_open_bus=True))
    Emitter.from_settings(remote(Settings(), allow_open_bus=True))
    with_keys = keyring.client_settings(remote(Settings()), "good")
    Server(with_keys)
    Emitter.from_settings(with_keys)
    # The node's own HTTP address is not the bus: it may listen anywhere.
    Server(Settings().replace(**{"cluster.enabled": True, "node.host": "0.0.0.0"}))


async def test_an_open_bus_does_not_connect_to_a_router_beyond_loopback() -> None:
    """Routers that appear later (Consul's) are held to the rule too: an open bus does not
    connect to one beyond loopback, unless told it may."""
    for allowed, expected in ((False, []), (True, ["far"])):
        bus = Bus("b", 1, [], lambda *_: None, allow_open_bus=allowed)
        await bus.__aenter__()
        try:
            bus.set_routers([("far", "tcp://192.0.2.1:5555", "tcp://192.0.2.1:5556")])
            assert bus.router_ids == expected
        finally:
            await bus.__aexit__(None, None, None)


def test_the_emitter_s_own_routers_follow_the_rule() -> None:
    """An emitter given routers directly follows the same rule."""
    far = RouterAddress("tcp://192.0.2.1:5555", "tcp://192.0.2.1:5556")
    with pytest.raises(ConfigError):
        Emitter([far])
    Emitter([far], allow_open_bus=True)
    Emitter([RouterAddress()])
