"""CURVE keys for the tests, and a :class:`~support.cluster_harness.Cluster` whose bus uses them.

A :class:`Keyring` is a directory of key pairs (``keys/NAME.key`` and ``NAME.key_secret``, made
by roomcast's own writer, as ``roomcast keys`` makes them) and the allowed-keys directory a
router reads (``allowed/``): :meth:`Keyring.allow` copies a public key there,
:meth:`Keyring.revoke` removes it.

:class:`CurveCluster` is the harness's cluster with ``bus.curve`` on: every router it starts
gets the router's keys and the allowed directory, every node its own key pair (made on first
use; the keys of the nodes it is started with are allowed unless named in ``unallowed``), all
through ``ROOMCAST__`` environment overrides, so the harness's own ``cluster.toml`` is the same
as for an open bus.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from roomcast import config
from roomcast.cluster import curve
from roomcast.cluster.curve import ClientKeys, KeyPair, ServerKeys
from support.cluster_harness import Cluster, Proc

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


class CurveCluster(Cluster):
    """A :class:`Cluster` whose routers and nodes speak CURVE (see the module's docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        keyring: Keyring | None = None,
        unallowed: frozenset[str] = frozenset(),
        **options: Any,
    ) -> None:
        #: The cluster's keys; the allowed directory is the routers'.
        self.keyring = keyring or Keyring(directory)
        #: Nodes of :meth:`start` whose keys are not put in the allowed directory.
        self.unallowed = unallowed
        super().__init__(directory, **options)

    def spawn(self, name: str, *args: str, config: Path | None = None) -> Proc:
        """As :meth:`Cluster.spawn`, with the process's keys in its environment."""
        proc = super().spawn(name, *args, config=config)
        if args and args[0] == "router":
            proc.env.update(self.keyring.router_env())
        elif args and args[0] == "node":
            proc.env.update(self.keyring.client_env(args[args.index("--id") + 1]))
        return proc

    async def start(self, *names: str) -> CurveCluster:
        """As :meth:`Cluster.start`, the nodes' keys allowed first (a router reads them when
        it starts; a node started later is let in by a reload)."""
        self.keyring.allow(*(name for name in names if name not in self.unallowed))
        await super().start(*names)
        return self


@contextlib.asynccontextmanager
async def running_curve_cluster(
    directory: Path, *nodes: str, **options: Any
) -> AsyncIterator[CurveCluster]:
    """A started :class:`CurveCluster` that is always torn down (``options`` as for
    :func:`~support.cluster_harness.running_cluster`, plus ``keyring`` and ``unallowed``)."""
    cluster = CurveCluster(directory, **options)
    try:
        await cluster.start(*nodes)
        yield cluster
    finally:
        await cluster.close()
