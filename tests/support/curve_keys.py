"""CURVE keys for the tests.

A :class:`Keyring` is a directory of key pairs (``keys/NAME.key`` and ``NAME.key_secret``, made
by roomcast's own writer, as ``roomcast keys`` makes them) and the allowed-keys directory a
router reads (``allowed/``): :meth:`Keyring.allow` copies a public key there,
:meth:`Keyring.revoke` removes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from roomcast import config
from roomcast.cluster import curve
from roomcast.cluster.curve import ClientKeys, KeyPair, ServerKeys

ROUTER = "router"  #: the routers' key pair


class Keyring:
    """Key pairs in ``directory/keys`` and the allowed public keys in ``directory/allowed``."""

    def __init__(self, directory: Path) -> None:
        self.keys = directory / "keys"
        self.allowed = directory / "allowed"
        self.keys.mkdir(parents=True, exist_ok=True)
        self.allowed.mkdir(parents=True, exist_ok=True)

    def public(self, name: str) -> Path:
        """``name``'s public key file (made with its pair on first use)."""
        self._make(name)
        return self.keys / f"{name}.key"

    def secret(self, name: str) -> Path:
        """``name``'s secret key file (made with its pair on first use)."""
        self._make(name)
        return self.keys / f"{name}.key_secret"

    def pair(self, name: str) -> KeyPair:
        """``name``'s keys."""
        return curve.load_key_pair(str(self.secret(name)), name)

    def _make(self, name: str) -> None:
        if not (self.keys / f"{name}.key_secret").exists():
            curve.write_key_pair(self.keys, name)

    def allow(self, *names: str) -> None:
        """Put the public keys of ``names`` in the allowed directory."""
        for name in names:
            shutil.copyfile(self.public(name), self.allowed / f"{name}.key")

    def revoke(self, *names: str) -> None:
        """Take the public keys of ``names`` out of the allowed directory."""
        for name in names:
            (self.allowed / f"{name}.key").unlink()

    def client(self, name: str, router: str = ROUTER) -> ClientKeys:
        """What a bus of ``name`` needs to reach routers with ``router``'s keys."""
        return ClientKeys(self.pair(name), {}, self.pair(router).public)

    def server(self, router: str = ROUTER) -> ServerKeys:
        """What a router with ``router``'s keys needs."""
        return ServerKeys(self.pair(router), str(self.allowed))

    def client_env(self, name: str) -> dict[str, str]:
        """The overrides that make a node (or the CLI) ``name`` on a CURVE bus."""
        return {
            "ROOMCAST__BUS__CURVE": "true",
            "ROOMCAST__BUS__SECRET_KEY_FILE": str(self.secret(name)),
            "ROOMCAST__BUS__ROUTER_PUBLIC_KEY_FILE": str(self.public(ROUTER)),
        }

    def router_env(self) -> dict[str, str]:
        """The overrides that make a router guard a CURVE bus."""
        return {
            "ROOMCAST__BUS__CURVE": "true",
            "ROOMCAST__ROUTER__SECRET_KEY_FILE": str(self.secret(ROUTER)),
            "ROOMCAST__ROUTER__ALLOWED_KEYS_DIR": str(self.allowed),
        }

    def client_settings(self, settings: config.Settings, name: str) -> config.Settings:
        """``settings`` with ``bus.curve`` on and ``name``'s key pair."""
        return settings.replace(
            **{
                "bus.curve": True,
                "bus.secret_key_file": str(self.secret(name)),
                "bus.router_public_key_file": str(self.public(ROUTER)),
            }
        )
