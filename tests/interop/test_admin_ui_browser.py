"""The real Admin UI (``@socket.io/admin-ui``'s built UI, served by the test) in headless Chromium
against a cluster of two nodes: the login form and its error, both nodes as servers, the sockets
of both nodes with their rooms, a room with members on both nodes, a join and a disconnect sent
from the UI acting on the other node's sockets, and a node killed -9 turning unhealthy while
the other node's views keep working. A screenshot of each view is saved under the run's
temporary directory (its path is printed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.admin_ui_client import PASSWORD, USERNAME, admin_ui_config
from support.browser import UI, chromium, needs_browser, serve_ui
from support.cluster_clients import clients
from support.cluster_harness import running_cluster, unique

pytestmark = [pytest.mark.multinode, pytest.mark.browser, needs_browser]

#: The UI turns a server unhealthy 10 s after its last server_stats (its HEALTHY_THRESHOLD).
UI_HEALTHY_THRESHOLD = 10.0


async def test_the_admin_ui_sees_and_commands_a_two_node_cluster(tmp_path: Path) -> None:
    """Log in (a wrong password first), see n1 and n2, their sockets and a shared room, join a
    room and disconnect a socket of n2 from the UI connected to n1, then kill n2: its server
    turns unhealthy and n1's views go on."""
    shots = tmp_path / "admin-ui-screenshots"
    print(f"screenshots: {shots}")
    room, joined = unique("shared"), unique("from-ui")
    with serve_ui() as origin:
        config = admin_ui_config(cors_origins=[origin], stats_interval_ms=1000)
        async with (
            running_cluster(tmp_path / "cluster", "n1", "n2", extra_config=config) as cluster,
            clients() as connect,
        ):
            a, b = await connect(cluster, "n1"), await connect(cluster, "n2")
            gone = await connect(cluster, "n2")
            await a.join(room)
            await b.join(room)
            await cluster.wait_room(room, {"n1": 1, "n2": 1})
            n1 = cluster.nodes["n1"].url
            with chromium() as driver:
                ui = UI(driver, origin, shots)
                run = asyncio.to_thread

                await run(ui.open)
                await run(ui.login, n1, USERNAME, "not the password")
                await run(ui.wait_text, "Invalid credentials")
                await run(ui.shot, "1-login-error")

                await run(ui.login, n1, USERNAME, PASSWORD)
                await run(ui.wait_logged_in)
                await run(ui.go, "#/servers/")
                await run(ui.wait_text, "n1", "n2", "Healthy")
                await run(ui.shot, "2-servers")

                await run(ui.go, "#/sockets/")
                await run(ui.wait_text, a.sid, b.sid, gone.sid)
                await run(ui.shot, "3-sockets")

                await run(ui.go, "#/rooms/")
                await run(ui.wait_text, room)
                await run(ui.shot, "4-rooms")
                await run(ui.go, f"#/n/%2F/rooms/{room}")
                await run(ui.wait_text, a.sid, b.sid)
                await run(ui.shot, "5-room-on-both-nodes")

                # n2's socket joins a room from the UI on n1; a publish from n1 reaches it.
                await run(ui.go, f"#/n/%2F/sockets/{b.sid}")
                await run(ui.wait_text, b.sid, room)
                await run(ui.join_room, joined)
                await cluster.wait_room(joined, {"n2": 1})
                await run(ui.wait_text, joined)
                await run(ui.shot, "6-socket-joined-from-ui")
                await a.join(joined)  # a member may publish to it (the relay's default)
                await cluster.wait_room(joined, {"n1": 1, "n2": 1})
                await a.publish(joined, "hello", 1)
                await b.wait_for_value("hello", 1)

                await run(ui.go, "#/sockets/")  # the socket view does not follow a new id
                await run(ui.wait_text, gone.sid)
                await run(ui.go, f"#/n/%2F/sockets/{gone.sid}")
                await run(ui.wait_text, gone.sid)
                await run(ui.click_icon, "mdi-logout")
                await gone.wait_disconnected()
                await run(ui.shot, "7-socket-disconnected-from-ui")

                cluster.nodes["n2"].proc.kill9()
                await run(ui.go, "#/servers/")
                await run(ui.wait_text, "Unhealthy", timeout=UI_HEALTHY_THRESHOLD + 10)
                await run(ui.shot, "8-n2-unhealthy")

                late = await connect(cluster, "n1")
                await run(ui.go, "#/sockets/")
                await run(ui.wait_text, late.sid, a.sid)
                await run(ui.shot, "9-n1-still-live")
