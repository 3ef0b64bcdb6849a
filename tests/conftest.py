"""Shared fixtures: real nodes on 127.0.0.1 port 0, always stopped at the end of the test.

Also registered here, for the whole run: ``js_process``, the Node driver process of the JS
client tests (defined in ``js_harness.py``; one process serves every JS client test module).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvloop
from support.js_harness import js_process_fixture  # noqa: F401 (a fixture, taken as ``js_process``)
from support.nodes import node_settings

from roomcast.node.server import Server

NodeFactory = Callable[..., Any]

#: Test modules whose every test also runs on uvloop, the loop ``roomcast`` runs on from the
#: CLI (transports differ: bad input must be closed with the same named reasons on both).
BOTH_LOOPS = frozenset({"test_bad_input"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """asyncio's default loop everywhere; uvloop as well for the modules in BOTH_LOOPS."""
    module = getattr(item, "module", None)
    if module is not None and module.__name__ in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
async def start_node() -> AsyncIterator[NodeFactory]:
    """Start an in-process node: ``server = await start_node(**{"limits.max_attachments": 2})``.

    Pass ``setup=fn`` to register handlers before it starts listening.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def factory(setup: Callable[[Server], Any] | None = None, **overrides: Any) -> Server:
            server = Server(node_settings(**overrides))
            if setup is not None:
                setup(server)
            return await stack.enter_async_context(server)

        yield factory


@pytest.fixture
async def node(start_node: NodeFactory) -> Server:
    """One node with the default relay policy on ``/``."""
    server: Server = await start_node()
    return server
