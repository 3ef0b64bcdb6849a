"""Whether a node should get clients, and why not."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("roomcast.node")


class Health:
    """The reasons a node must not get clients (``deaf``, ``draining``...), and the watchers
    (the discovery backend's health check) told whenever the verdict changes."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}
        #: Callables told ``(healthy, note)`` whenever health changes.
        self.watchers: list[Callable[[bool, str], None]] = []

    @property
    def healthy(self) -> bool:
        """Whether load balancers should send this node clients."""
        return not self.problems

    def note(self) -> str:
        """Why the node is unhealthy (empty when it is not)."""
        return "; ".join(f"{k}: {v}" for k, v in sorted(self.problems.items()))

    def set_problem(self, problem: str, detail: str | None) -> None:
        """Record (``detail`` given) or clear (None) a reason the node must not get clients;
        watchers are told at once when the verdict changes."""
        before = self.healthy
        if detail is None:
            self.problems.pop(problem, None)
        else:
            self.problems[problem] = detail
        if self.healthy != before:
            for watcher in self.watchers:
                try:
                    watcher(self.healthy, self.note())
                except Exception:
                    log.exception("health watcher failed")
