"""CURVE on the bus, in one process: key files, and a CURVE router on 127.0.0.1.

Key files are written in ZeroMQ's format and read back; every file that is missing or does
not hold what it should is a ConfigError naming the setting and the path. A router bound
beyond loopback needs CURVE (or an explicit open bus); a reload it cannot read changes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.curve_keys import ROUTER, Keyring

from roomcast.cluster import curve
from roomcast.config import Settings
from roomcast.errors import ConfigError
from roomcast.router.router import Router

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


# --- a CURVE router ---------------------------------------------------------------------------


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


async def test_a_reload_that_fails_keeps_the_keys(curve_router: Router, keyring: Keyring) -> None:
    """A directory that cannot be read on reload keeps the keys as they were."""
    (keyring.allowed / "broken.key").write_text("no key")
    curve_router.reload_allowed_keys()
    stats = curve_router.stats_dict()
    assert (stats["allowed_keys"], stats["key_reloads"]) == (3, 0)


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
