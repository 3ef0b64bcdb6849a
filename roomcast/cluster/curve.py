"""CURVE on the bus: key files, and what a socket needs to be a CURVE client or server.

CURVE is ZeroMQ's own authentication and encryption (CurveZMQ, RFC 26): each process has a key
pair, a client must know its server's public key before it connects, and a server learns the
client's public key during the handshake and asks its ZAP handler whether to let it in
(:mod:`roomcast.router.guard`). Every frame after the handshake is encrypted and authenticated.

Keys live in ZeroMQ's key-file format, as ``zmq.auth.create_certificates`` writes them (and
``roomcast keys`` does): ``NAME.key`` holds the public key, ``NAME.key_secret`` both. Keys are
read when a router, node or emitter is built from the settings; a file that is missing or does
not hold what it should is a :class:`~roomcast.errors.ConfigError` naming the setting and the
path, so a process with a bad key fails at start, not at its first connection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from roomcast.config import Settings
from roomcast.errors import ConfigError

#: The ZAP domain routers give their sockets (ZeroMQ passes it to the ZAP handler).
ZAP_DOMAIN = b"roomcast"


@dataclass(frozen=True, slots=True)
class KeyPair:
    """One process's CURVE keys, Z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class ClientKeys:
    """What a node or an emitter needs: its own key pair, and each router's public key."""

    own: KeyPair
    #: Router id (:attr:`~roomcast.config.RouterAddress.key`) -> its public key.
    router_keys: Mapping[str, bytes] = field(default_factory=dict)
    #: The public key of every other router (``bus.router_public_key_file``), if any.
    default_router_key: bytes | None = None

    def router_key(self, router_id: str) -> bytes | None:
        """The public key to expect from router ``router_id`` (None: none is known)."""
        return self.router_keys.get(router_id, self.default_router_key)


@dataclass(frozen=True)
class ServerKeys:
    """What a router needs: its own key pair and where the allowed public keys are."""

    own: KeyPair
    allowed_keys_dir: str

    def load_allowed(self) -> frozenset[bytes]:
        """The public keys in :attr:`allowed_keys_dir`, read now."""
        return load_allowed_keys(self.allowed_keys_dir, "router.allowed_keys_dir")


# --- key files -------------------------------------------------------------------------------


def _key(value: bytes | None, setting: str, path: str, what: str) -> bytes:
    if value is None:
        raise ConfigError(f"{setting}: {path} holds no {what}")
    try:
        raw = z85.decode(value)
    except (ValueError, KeyError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{setting}: {path}: its {what} is not a Z85-encoded CURVE key")
    return value


def _load(path: str, setting: str) -> tuple[bytes | None, bytes | None]:
    if not path:
        raise ConfigError(f"{setting}: required when bus.curve = true")
    if not os.path.isfile(path):
        raise ConfigError(f"{setting}: no key file at {path}")
    try:
        return zmq.auth.load_certificate(path)
    except ValueError:
        return None, None  # no public key in it
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from exc


def load_public_key(path: str, setting: str) -> bytes:
    """The public key of a key file (``NAME.key``, or a ``NAME.key_secret``)."""
    public, _ = _load(path, setting)
    return _key(public, setting, path, "public key")


def load_key_pair(path: str, setting: str) -> KeyPair:
    """Both keys of a secret key file (``NAME.key_secret``)."""
    public, secret = _load(path, setting)
    public = _key(public, setting, path, "public key")
    if secret is None:
        raise ConfigError(f"{setting}: {path} holds no secret key (use the NAME.key_secret file)")
    secret = _key(secret, setting, path, "secret key")
    if zmq.curve_public(secret) != public:
        raise ConfigError(f"{setting}: {path}: its public key does not match its secret key")
    return KeyPair(public, secret)


def load_allowed_keys(directory: str, setting: str) -> frozenset[bytes]:
    """The public keys of every ``*.key`` file in ``directory`` (``zmq.auth``'s layout)."""
    if not directory:
        raise ConfigError(f"{setting}: required when bus.curve = true")
    if not os.path.isdir(directory):
        raise ConfigError(f"{setting}: no directory at {directory}")
    try:
        files = sorted(Path(directory).glob("*.key"))
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {directory}: {exc.strerror or exc}") from exc
    return frozenset(load_public_key(str(path), setting) for path in files)


def write_key_pair(directory: str | Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new key pair as ``directory/name.key`` and ``name.key_secret`` (the secret one
    readable by its owner only); returns both paths. An existing file is kept (FileExistsError)
    unless ``force``."""
    base = Path(directory)
    public, secret = base / f"{name}.key", base / f"{name}.key_secret"
    if not force:
        for path in (public, secret):
            if path.exists():
                raise FileExistsError(str(path))
    base.mkdir(parents=True, exist_ok=True)
    # The secret file is created private before anything is written in it.
    secret.unlink(missing_ok=True)
    os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    written = zmq.auth.create_certificates(base, name)
    return Path(written[0]), Path(written[1])


# --- from the settings -----------------------------------------------------------------------


def client_keys(settings: Settings) -> ClientKeys | None:
    """A node's or an emitter's keys (None when ``bus.curve`` is off), read now."""
    bus = settings.bus
    if not bus.curve:
        return None
    own = load_key_pair(bus.secret_key_file, "bus.secret_key_file")
    router_keys = {
        r.key: load_public_key(r.public_key_file, f"discovery.routers[{i}].public_key_file")
        for i, r in enumerate(settings.discovery.routers)
        if r.public_key_file
    }
    default = None
    if bus.router_public_key_file:
        default = load_public_key(bus.router_public_key_file, "bus.router_public_key_file")
    elif settings.discovery.backend == "consul" or len(router_keys) < len(
        settings.discovery.routers
    ):
        # Consul's routers are not in the file: they all need the one key.
        raise ConfigError(
            "bus.router_public_key_file: required when bus.curve = true (unless every router "
            "in [[discovery.routers]] names its public_key_file, with static discovery)"
        )
    return ClientKeys(own, router_keys, default)


def server_keys(settings: Settings) -> ServerKeys | None:
    """A router's keys (None when ``bus.curve`` is off), read now; the allowed keys are read
    by :meth:`ServerKeys.load_allowed`."""
    if not settings.bus.curve:
        return None
    router = settings.router
    own = load_key_pair(router.secret_key_file, "router.secret_key_file")
    load_allowed_keys(router.allowed_keys_dir, "router.allowed_keys_dir")  # fails now if bad
    return ServerKeys(own, router.allowed_keys_dir)


# --- sockets ---------------------------------------------------------------------------------


def make_client(sock: zmq.Socket[bytes], own: KeyPair, server_key: bytes) -> None:
    """Make the next ``connect`` of ``sock`` a CURVE client expecting ``server_key`` (ZeroMQ
    takes the options when it connects, so one socket may expect another key per endpoint)."""
    sock.setsockopt(zmq.CURVE_PUBLICKEY, own.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, own.secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)


def make_server(sock: zmq.Socket[bytes], own: KeyPair) -> None:
    """Make ``sock`` a CURVE server (before it binds) whose clients its ZAP handler checks."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, own.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, own.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
