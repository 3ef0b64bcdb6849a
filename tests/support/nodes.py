"""Settings of the nodes the tests start in their own process."""

from __future__ import annotations

from typing import Any

from roomcast.config import Settings


def node_settings(**overrides: Any) -> Settings:
    """Default test settings (port 0, localhost) with dotted overrides."""
    base = {"node.host": "127.0.0.1", "node.port": 0}
    base.update(overrides)
    return Settings().replace(**base)
