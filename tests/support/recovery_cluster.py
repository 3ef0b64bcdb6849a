"""What the connection state recovery tests of CLI-started clusters read and wait for: a
node's stats, the sessions it keeps, messages that reached it over the bus; and their usual
pair of clients."""

from __future__ import annotations

from typing import Any

from support.cluster_harness import Cluster, wait_until
from support.js_harness import Driver, JsClient
from support.recovery_clients import publish


async def stats(cluster: Cluster, node: str) -> dict[str, Any]:
    """``node``'s ``/admin/stats``."""
    doc: dict[str, Any] = await cluster.admin(node, "/admin/stats")
    return doc


async def kept(cluster: Cluster, node: str, count: int) -> None:
    """Until ``node`` keeps ``count`` sessions for recovery."""

    async def check() -> bool:
        return bool((await stats(cluster, node))["sessions_kept"] == count)

    await wait_until(check, what=f"{node} to keep {count} sessions")


async def publish_to(cluster: Cluster, node: str, client: JsClient, room: str, *data: Any) -> None:
    """Publish through ``client`` (on another node), and wait until ``node`` has them all (a
    publish is acked before the bus has carried it)."""
    before = (await cluster.bus(node))["received_rooms"]
    await publish(client, room, *data)

    async def arrived() -> bool:
        return bool((await cluster.bus(node))["received_rooms"] >= before + len(data))

    await wait_until(arrived, what=f"{node} to receive {len(data)} messages")


async def member_and_publisher(
    cluster: Cluster, js: Driver, room: str, member: str, publisher: str
) -> tuple[JsClient, JsClient]:
    """Clients ``a`` on the node ``member``, in ``room`` (the cluster sees it there), and
    ``b`` on the node ``publisher``, both in ``/any`` (recovery on)."""
    a = js.connect("a", cluster.nodes[member].url, "websocket", namespace="/any")
    b = js.connect("b", cluster.nodes[publisher].url, "websocket", namespace="/any")
    await a.connected()
    await b.connected()
    await a.call("join", room)
    await cluster.wait_room(room, {member: 1}, namespace="/any")
    return a, b
