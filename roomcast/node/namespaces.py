"""The namespaces of one node: created on first use, dynamic ones matched by pattern.

:class:`Namespaces` is also what the adapter sees of this node's sockets
(:class:`~roomcast.node.adapter.LocalSockets`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from roomcast.ids import namespace_name

from .sockets import Namespace, NamespaceMatcher, NamespaceServices

log = logging.getLogger("roomcast.node")


class Namespaces:
    """The node's namespaces by name, and its dynamic namespace patterns."""

    def __init__(self, max_dynamic: int) -> None:
        self.max_dynamic = max_dynamic
        self._services: NamespaceServices | None = None
        self._namespaces: dict[str, Namespace] = {}
        self._dynamic: list[tuple[Callable[[str], bool], Namespace]] = []
        self._dynamic_children = 0

    def bind(self, services: NamespaceServices) -> None:
        """Hand the namespaces their collaborators (the adapter needs this object first)."""
        self._services = services

    @property
    def services(self) -> NamespaceServices:
        assert self._services is not None, "Namespaces.bind() first"
        return self._services

    def of(self, name: NamespaceMatcher) -> Namespace:
        """The namespace ``name``, created on first use.

        A compiled regex or a predicate makes a *dynamic* namespace: any name it matches is
        created on first connection, sharing the returned parent's handlers and middleware.
        """
        if isinstance(name, str):
            name = namespace_name(name)
            ns = self._namespaces.get(name)
            if ns is None:
                # A name a dynamic namespace matches is its child (its middleware applies),
                # whether a client or the app names it first.
                parent = self._dynamic_parent(name)
                if parent is not None:
                    return self._new_child(name, parent)
                ns = self._namespaces[name] = Namespace(self.services, name)
            return ns
        parent = Namespace(self.services, getattr(name, "pattern", repr(name)))
        matcher: Callable[[str], bool]
        if isinstance(name, re.Pattern):
            pattern = name

            def matches(candidate: str) -> bool:
                return pattern.fullmatch(candidate) is not None

            matcher = matches
        else:
            matcher = name
        self._dynamic.append((matcher, parent))
        return parent

    def all(self) -> list[Namespace]:
        """Every namespace that exists now (dynamic children included)."""
        return list(self._namespaces.values())

    def namespace(self, name: str) -> Namespace | None:
        """The existing namespace ``name`` (None when nobody created or connected to it)."""
        return self._namespaces.get(name)

    def resolve(self, name: str) -> Namespace | None:
        """The namespace a client connecting to ``name`` gets: an existing one, or a new child
        of the dynamic namespace that matches it (None: no such namespace, or too many)."""
        ns = self._namespaces.get(name)
        if ns is not None:
            return ns
        parent = self._dynamic_parent(name)
        if parent is None:
            return None
        if self._dynamic_children >= self.max_dynamic:
            log.warning("dynamic namespace %r refused: limit reached", name)
            return None
        return self._new_child(name, parent)

    def _new_child(self, name: str, parent: Namespace) -> Namespace:
        self._dynamic_children += 1
        ns = self._namespaces[name] = Namespace(self.services, name, parent)
        return ns

    def _dynamic_parent(self, name: str) -> Namespace | None:
        for matcher, parent in self._dynamic:
            try:
                if matcher(name):
                    return parent
            except Exception:
                log.exception("namespace matcher failed for %r", name)
        return None

    def maybe_empty(self, ns: Namespace) -> None:
        """A dynamic namespace child with no socket left (and none connecting) is removed, as
        socket.io's ``cleanupEmptyChildNamespaces`` does: names are client input."""
        if (
            ns.parent is not None
            and not ns.sockets
            and not ns.ghosts
            and not ns.connecting
            and self._namespaces.get(ns.name) is ns
        ):
            del self._namespaces[ns.name]
            self._dynamic_children -= 1

    def room_counts(self, namespace: str | None) -> dict[tuple[str, str], int]:
        """(namespace, room) -> local member count, for one namespace or all."""
        out: dict[tuple[str, str], int] = {}
        for ns in self._namespaces.values():
            if namespace is None or ns.name == namespace:
                for room, count in ns.registry.rooms().items():
                    out[(ns.name, room)] = count
        return out
