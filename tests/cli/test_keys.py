"""``roomcast keys`` and the bus settings a router or node checks before it starts, run as
the CLI processes users run.

``keys`` writes a key pair in ZeroMQ's key-file format, prints the public key and both paths,
and never overwrites a pair unless told to. A router or node whose keys are missing, or that
would carry an open bus beyond this machine, exits at once with a config error naming the
setting (exit code 2), before it binds or connects anything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import zmq.auth
from support.cluster_harness import run_cli

pytestmark = pytest.mark.asyncio

UNUSED = Path("no-such-cluster.toml")  #: ``keys`` reads no config


async def test_keys_writes_a_pair_and_prints_it(tmp_path: Path) -> None:
    """The public key and both files are printed one a line; the files are ZeroMQ key
    files holding that key (the secret one readable by its owner only)."""
    code, out, err = await run_cli(UNUSED, "keys", "n1", "--dir", "keys", cwd=tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        "public key",
        "public key file",
        "secret key file",
    ]
    public = lines[0].split(": ", 1)[1]
    assert re.fullmatch(r"[0-9a-zA-Z.:+=^!/*?&<>()\[\]{}@%$#-]{40}", public), public
    assert lines[1] == "public key file: keys/n1.key"
    assert lines[2] == "secret key file: keys/n1.key_secret"
    assert zmq.auth.load_certificate(tmp_path / "keys/n1.key") == (public.encode(), None)
    loaded, secret = zmq.auth.load_certificate(tmp_path / "keys/n1.key_secret")
    assert loaded == public.encode() and secret is not None
    assert zmq.curve_public(secret) == loaded
    assert os.stat(tmp_path / "keys/n1.key_secret").st_mode & 0o777 == 0o600


async def test_keys_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    """A second ``keys`` with the same name fails (exit 1) and leaves the pair as it was;
    ``--force`` replaces it with a new one."""
    code, first, _ = await run_cli(UNUSED, "keys", "n1", cwd=tmp_path)
    assert code == 0
    before = (tmp_path / "n1.key_secret").read_bytes()
    code, out, err = await run_cli(UNUSED, "keys", "n1", cwd=tmp_path)
    assert (code, out) == (1, "")
    assert "n1.key exists (--force replaces it)" in err
    assert (tmp_path / "n1.key_secret").read_bytes() == before
    code, again, err = await run_cli(UNUSED, "keys", "n1", "--force", cwd=tmp_path)
    assert code == 0, err
    assert again.splitlines()[0] != first.splitlines()[0]
    assert (tmp_path / "n1.key_secret").read_bytes() != before


async def test_keys_takes_plain_names_only(tmp_path: Path) -> None:
    """A name that is a path is refused by the argument parser (exit 2), nothing written."""
    code, _, err = await run_cli(UNUSED, "keys", "../n1", cwd=tmp_path)
    assert code == 2 and "letters, digits" in err
    assert list(tmp_path.iterdir()) == []


# --- settings checked at start ----------------------------------------------------------------


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


CLUSTER = """
[cluster]
enabled = true
"""


@pytest.mark.parametrize(
    ("command", "text", "error"),
    [
        (
            "router",
            '[router]\nhost = "0.0.0.0"\nxsub_port = 0\nxpub_port = 0\nhttp_port = 0\n',
            "router.host: 0.0.0.0 is not a loopback address and the bus is open",
        ),
        (
            "node",
            CLUSTER + '[[discovery.routers]]\nxsub = "tcp://192.0.2.1:5555"\n'
            'xpub = "tcp://192.0.2.1:5556"\n',
            "discovery.routers[0].xsub: tcp://192.0.2.1:5555 is not a loopback address",
        ),
        (
            "router",
            '[bus]\ncurve = true\n[router]\nsecret_key_file = "missing.key_secret"\n',
            "router.secret_key_file: no key file at {dir}/missing.key_secret",
        ),
        (
            "router",
            '[bus]\ncurve = true\n[router]\nsecret_key_file = "keys/r.key_secret"\n',
            "router.allowed_keys_dir: required when bus.curve = true",
        ),
        (
            "node",
            CLUSTER + '[bus]\ncurve = true\nsecret_key_file = "keys/n1.key_secret"\n',
            "bus.router_public_key_file: required when bus.curve = true",
        ),
        (
            "node",
            CLUSTER + '[bus]\ncurve = true\nsecret_key_file = "keys/r.key"\n',
            "bus.secret_key_file: {dir}/keys/r.key holds no secret key",
        ),
    ],
    ids=[
        "router open beyond loopback",
        "node open beyond loopback",
        "router key missing",
        "router without allowed keys",
        "node without router key",
        "node given a public key file",
    ],
)
async def test_bad_bus_settings_stop_a_process_at_start(
    tmp_path: Path, command: str, text: str, error: str
) -> None:
    """A router or node with an open bus beyond loopback, or missing or wrong keys, exits
    with code 2 and a config error naming the setting (and the file, from the config file's
    directory)."""
    for name in ("r", "n1"):
        code, _, _ = await run_cli(UNUSED, "keys", name, "--dir", "keys", cwd=tmp_path)
        assert code == 0
    args = [command] + (["--port", "0"] if command == "node" else [])
    code, out, err = await run_cli(config_file(tmp_path, text), *args, cwd=tmp_path, timeout=30)
    assert code == 2, (out, err)
    assert f"roomcast: config error: {error.format(dir=tmp_path)}" in err, err
    assert "ready" not in out
