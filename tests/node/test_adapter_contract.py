"""The Adapter contract (roomcast/node/adapter.py), one suite run against both adapters.

``local``: one standalone node (:class:`~roomcast.node.local.LocalAdapter`). ``cluster``: two
nodes in this process joined through a real router on port 0
(:class:`~roomcast.node.cluster.ClusterAdapter`), with the clients spread over both. The clients
are python-socketio's ``AsyncClient`` over WebSocket; nothing here sleeps.

Proving that a socket did *not* get a broadcast: every test ends a broadcast with a namespace-
wide broadcast with acks (the *fence*) from the same node. With one router, what a node
publishes reaches each other node in order, and each node writes to a connection in order, so a
client that acked the fence would have recorded the broadcast before it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import socketio
from support.nodes import node_settings
from support.python_client_harness import TIMEOUT, Inbox, join, sid_of

from roomcast.cluster.routing import Target
from roomcast.errors import AckTimeoutError, RecoveryRefusedError, RoomRefusedError
from roomcast.ids import ROOT_NAMESPACE, Namespace, NodeTag, new_pid, offset_text, parse_offset
from roomcast.node import recovery
from roomcast.node import requests as rq
from roomcast.node.adapter import Adapter, SessionClaim
from roomcast.node.cluster import ClusterAdapter
from roomcast.node.handover import RemoteClaim
from roomcast.node.server import Server
from roomcast.node.sockets import Socket
from roomcast.protocol import reasons
from roomcast.protocol import socketio as sio
from roomcast.protocol.frames import Frames
from roomcast.router.router import Router


class _AnyCounter:
    """Equal to any offset counter (a positive int)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and other > 0

    __hash__ = None  # type: ignore[assignment]


ANY_COUNTER: Any = _AnyCounter()
NAMES = ("a", "b", "c", "d")  # a, b on node 0; c, d on the last node
ROOMS = {"a": ["red"], "b": ["blue"], "c": ["red", "blue"], "d": []}


@dataclass
class World:
    """Nodes, and one client per name with its inbox."""

    nodes: list[Server]
    clients: dict[str, socketio.AsyncClient] = field(default_factory=dict)
    sids: dict[str, str] = field(default_factory=dict)
    inbox: Inbox = field(default_factory=Inbox)

    def adapter(self, i: int = 0) -> Adapter:
        return self.nodes[i].adapter

    def target(self, *rooms: str, **kw: Any) -> Target:
        return Target(ROOT_NAMESPACE, frozenset(rooms), **kw)

    def broadcast(self, target: Target, event: str, *args: Any, node: int = 0) -> None:
        frames = Frames(sio.encode_event(target.namespace, event, args))
        self.adapter(node).broadcast(target, frames)

    async def fence(self, node: int = 0, clients: int | None = None) -> None:
        """Every client (or the ``clients`` still connected) acks a namespace-wide broadcast
        from ``node``: what that node broadcast before has reached everyone it was going to
        reach."""
        acks = await self.adapter(node).broadcast_with_ack(self.target(), "fence", (), TIMEOUT)
        assert acks == ["fenced"] * (len(self.clients) if clients is None else clients)

    def got(self, event: str) -> dict[str, list[tuple[Any, ...]]]:
        return {n: self.inbox.got(n, event) for n in NAMES if self.inbox.got(n, event)}


async def _settle(world: World) -> None:
    """Until every node's replica shows every other node's rooms (gossip is asynchronous)."""
    if len(world.nodes) == 1:
        return
    expected = world.adapter(0).room_table()
    async with asyncio.timeout(TIMEOUT):
        while any(
            {k: v for k, v in n.adapter.room_table().items()} != expected for n in world.nodes
        ) or len({str(n) for v in expected.values() for n in v}) < len(world.nodes):
            await asyncio.sleep(0.01)
            expected = world.adapter(0).room_table()


@contextlib.asynccontextmanager
async def _world(kind: str, **overrides: Any) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        if kind == "local":
            settings = [node_settings(**overrides)]
        else:
            router = await stack.enter_async_context(
                Router("127.0.0.1", 0, 0, 0, router_id="contract")
            )
            routers = [{"xsub": router.xsub_endpoint, "xpub": router.xpub_endpoint}]
            settings = [
                node_settings(
                    **{
                        "node.id": f"n{i}",
                        "cluster.enabled": True,
                        "cluster.gossip_interval_ms": 5,
                        "discovery.routers": routers,
                        **overrides,
                    }
                )
                for i in range(2)
            ]
        nodes: list[Server] = []
        for s in settings:
            server = Server(s)

            @server.on_server_event("whoami")
            def whoami(server: Server = server) -> str:
                return server.node_id

            nodes.append(await stack.enter_async_context(server))
        world = World(nodes)
        for i, name in enumerate(NAMES):
            node = nodes[0] if i < 2 else nodes[-1]
            client = socketio.AsyncClient(reconnection=False)
            for event in ("news", "fence", "ask"):
                client.on(event, _recorder(world.inbox, name, event))
            await client.connect(node.url, transports=["websocket"], wait_timeout=TIMEOUT)
            stack.push_async_callback(client.disconnect)
            world.clients[name] = client
            world.sids[name] = sid_of(client)
            if ROOMS[name]:
                await join(client, *ROOMS[name])
        await _settle(world)
        yield world


def _recorder(inbox: Inbox, name: str, event: str) -> Any:
    record = inbox.handler(name, event)

    def handler(*args: Any) -> str:
        record(*args)
        return "fenced" if event == "fence" else f"{name} got it"

    return handler


@pytest.fixture(params=["local", "cluster"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async with _world(str(request.param)) as w:
        yield w


@pytest.fixture(params=["local", "cluster"])
async def recovering(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """A world whose namespace has connection state recovery on."""
    async with _world(str(request.param), **{"recovery.enabled": True}) as w:
        yield w


async def test_broadcast_reaches_each_member_once_and_nobody_else(world: World) -> None:
    """A broadcast to two rooms reaches every member of either, once (c is in both), from
    whichever node it starts."""
    for node in range(len(world.nodes)):
        world.inbox.events.clear()
        world.broadcast(world.target("red", "blue"), "news", node, node=node)
        await world.fence(node)
        assert world.got("news") == {"a": [(node,)], "b": [(node,)], "c": [(node,)]}


async def test_broadcast_exceptions_and_sid_rooms(world: World) -> None:
    """``except_rooms`` and ``except_sids`` remove sockets wherever they are; a sid is a room
    holding that socket alone; an empty room set is the whole namespace."""
    target = world.target(
        except_rooms=frozenset({"blue"}), except_sids=frozenset({world.sids["a"]})
    )
    world.broadcast(target, "news", "not blue, not a")
    world.broadcast(world.target(world.sids["d"]), "news", "to d")
    await world.fence()
    assert world.got("news") == {"d": [("not blue, not a",), ("to d",)]}


async def test_local_target_stays_on_this_node(world: World) -> None:
    """``local``: only this node's sockets."""
    world.broadcast(world.target("red", local=True), "news", "here")
    await world.fence()
    local = {"a": [("here",)]} if len(world.nodes) > 1 else {"a": [("here",)], "c": [("here",)]}
    assert world.got("news") == local


async def test_broadcast_with_ack_collects_every_answer(world: World) -> None:
    """One answer per recipient, cluster-wide."""
    answers = await world.adapter().broadcast_with_ack(world.target("red"), "ask", (), TIMEOUT)
    assert sorted(answers) == ["a got it", "c got it"]


async def test_broadcast_with_ack_times_out_with_partial_answers(world: World) -> None:
    """A recipient that never answers makes the call raise, carrying the answers that came."""
    silent = asyncio.Event()

    async def never(*args: Any) -> str:
        silent.set()
        await asyncio.Event().wait()
        return "never"

    world.clients["c"].on("ask", never)
    with pytest.raises(AckTimeoutError) as caught:
        await world.adapter().broadcast_with_ack(world.target("red"), "ask", (), 0.5)
    assert silent.is_set()
    assert caught.value.responses == ["a got it"]


async def test_fetch_sockets_sees_every_targeted_socket(world: World) -> None:
    """Snapshots of the targeted sockets, with their rooms and their node, cluster-wide."""
    infos = await world.adapter().fetch_sockets(world.target("blue"))
    by_id = {i.id: i for i in infos}
    assert set(by_id) == {world.sids["b"], world.sids["c"]}
    c = by_id[world.sids["c"]]
    assert c.rooms == {world.sids["c"], "red", "blue"}
    assert c.node == world.nodes[-1].node_id
    assert c.handshake is not None and c.handshake.query["transport"] == "websocket"


async def test_add_and_del_sockets_change_membership_everywhere(world: World) -> None:
    """Sockets made to join a room get its broadcasts from any node at once; made to leave,
    they stop getting them."""
    await world.adapter().add_sockets(world.target("red"), ["green"])
    world.broadcast(world.target("green"), "news", "green 1", node=len(world.nodes) - 1)
    await world.fence(len(world.nodes) - 1)
    assert world.got("news") == {"a": [("green 1",)], "c": [("green 1",)]}
    await world.adapter().del_sockets(world.target(world.sids["c"]), ["green"])
    world.inbox.events.clear()
    world.broadcast(world.target("green"), "news", "green 2")
    await world.fence()
    assert world.got("news") == {"a": [("green 2",)]}


async def test_add_sockets_refuses_a_sid_room(world: World) -> None:
    """Joining a room named like a socket's sid is refused (it would eavesdrop on it)."""
    with pytest.raises(RoomRefusedError):
        await world.adapter().add_sockets(world.target(world.sids["a"]), [world.sids["b"]])


async def test_disconnect_sockets_disconnects_only_the_targeted(world: World) -> None:
    """Targeted sockets are disconnected wherever they are; the others stay."""
    gone = {n: asyncio.Event() for n in NAMES}
    for name in NAMES:
        world.clients[name].on("disconnect", lambda *a, name=name: gone[name].set())
    await world.adapter().disconnect_sockets(world.target("blue"), False)
    async with asyncio.timeout(TIMEOUT):
        await gone["b"].wait()
        await gone["c"].wait()
    assert world.clients["a"].connected and world.clients["d"].connected
    acks = await world.adapter().broadcast_with_ack(world.target(), "fence", (), TIMEOUT)
    assert acks == ["fenced", "fenced"]


async def test_server_side_emit_asks_every_other_node(world: World) -> None:
    """The answers of every other node's handler (none for a standalone node)."""
    others = sorted(n.node_id for n in world.nodes[1:])
    assert sorted(await world.adapter().server_side_emit("whoami", ())) == others


async def test_room_table_and_sid_names(world: World) -> None:
    """The room table is a local read of every node's rooms; sids of known nodes are socket
    names, other names are not."""
    table = world.adapter().room_table()
    n0, n1 = world.nodes[0].node_id, world.nodes[-1].node_id
    if n0 == n1:
        assert table == {("/", "red"): {n0: 2}, ("/", "blue"): {n0: 2}}
    else:
        assert table == {("/", "red"): {n0: 1, n1: 1}, ("/", "blue"): {n0: 1, n1: 1}}
    for name in NAMES:
        assert world.adapter().names_a_socket(world.sids[name])
    assert not world.adapter().names_a_socket("red")
    assert not world.adapter().names_a_socket("A" * 24)


async def test_room_held_sees_rooms_on_any_node(world: World) -> None:
    """Every node knows, without asking, which rooms have members somewhere: its own and, from
    the replica, other nodes'; a room nobody is in is held nowhere."""
    for node in range(len(world.nodes)):
        assert world.adapter(node).room_held("/", "red")
        assert world.adapter(node).room_held("/", "blue")
        assert not world.adapter(node).room_held("/", "green")
        assert not world.adapter(node).room_held("/other", "red")


async def test_node_address_names_the_other_live_nodes_only(world: World) -> None:
    """A node's tag leads to its address from every other node; a node's own tag, and a
    tag no node has, lead nowhere."""
    for i, node in enumerate(world.nodes):
        assert node.adapter.node_address(node.tag) is None
        assert node.adapter.node_address(NodeTag(bytes(6))) is None
        for j, other in enumerate(world.nodes):
            if j != i:
                assert node.adapter.node_address(other.tag) == other.public_url


async def test_join_is_exact(world: World) -> None:
    """When a join returns, a broadcast from any node right after reaches the new member."""
    d: Socket | None = None
    for node in world.nodes:
        ns = node.namespace(Namespace("/"))
        assert ns is not None
        d = ns.sockets.get(world.sids["d"], d)
    assert d is not None
    for i in range(5):
        room = f"fresh-{i}"
        await d.join(room)
        world.broadcast(world.target(room), "news", room, node=0)
    await world.fence(0)
    assert world.got("news") == {"d": [(f"fresh-{i}",) for i in range(5)]}


async def test_app_data_that_cannot_travel_is_a_type_error(world: World) -> None:
    """Server-event arguments msgpack cannot carry raise TypeError at the caller, in a
    cluster (a standalone node sends them nowhere)."""
    if len(world.nodes) == 1:
        assert await world.adapter().server_side_emit("whoami", ({1, 2},)) == []
        return
    with pytest.raises(TypeError):
        await world.adapter().server_side_emit("whoami", ({1, 2},))
    assert sorted(await world.adapter().server_side_emit("whoami", ())) == ["n1"]


# --- connection state recovery -------------------------------------------------------------------


def _events(frames: list[Frames]) -> list[list[Any]]:
    out = []
    for f in frames:
        packet = sio.Decoder().feed(f.encoded.text)
        assert packet is not None
        out.append(packet.data)
    return out


def _lose(world: World, name: str) -> tuple[Server, Socket]:
    """Lose the connection of client ``name`` (on the last node); returns its node and its
    socket, now a ghost."""
    holder = world.nodes[-1]
    ns = holder.of("/")
    socket = ns.sockets[world.sids[name]]
    socket.conn.close(reasons.TRANSPORT_CLOSE)
    assert ns.ghost(socket.sid) is socket and not socket.connected
    return holder, socket


async def test_each_node_numbers_what_it_writes(recovering: World) -> None:
    """With recovery on, every recipient gets a broadcast with the offset of the node that
    wrote it to that recipient, whichever node published it."""
    world = recovering
    world.broadcast(world.target("red"), "news", "x", node=0)
    await world.fence(0)
    [(_, on_a)] = world.inbox.got("a", "news")
    [(_, on_c)] = world.inbox.got("c", "news")
    assert parse_offset(on_a) == (world.nodes[0].tag, ANY_COUNTER)
    assert parse_offset(on_c) == (world.nodes[-1].tag, ANY_COUNTER)


async def test_a_lost_socket_is_kept_in_its_rooms_and_restored_with_what_it_missed(
    recovering: World,
) -> None:
    """A socket whose connection was lost stays a member of its rooms (the room table does not
    change); restoring it gives what it missed, wherever it was published, in order, with the
    offsets of its node; released, it leaves its rooms cluster-wide."""
    world = recovering
    table = world.adapter(0).room_table()
    holder, c = _lose(world, "c")
    assert c.pid is not None
    assert holder.adapter.room_table() == table
    world.broadcast(world.target("red"), "news", 1, node=0)
    world.broadcast(world.target("green"), "news", "not c's", node=0)
    world.broadcast(world.target(), "news", 3, node=0)
    world.broadcast(world.target("red", except_rooms=frozenset({"blue"})), "news", "no", node=0)
    world.broadcast(world.target(c.sid), "news", 5, node=0)
    await world.fence(0, clients=3)
    assert world.adapter(0).room_table() == table

    claim = await holder.adapter.restore_session("/", c.pid, None)
    assert (claim.session.sid, claim.session.rooms) == (c.sid, frozenset({c.sid, "red", "blue"}))
    missed = _events(await claim.complete())
    assert [m[:2] for m in missed] == [["news", 1], ["news", 3], ["news", 5]]
    assert all(parse_offset(m[2]) == (holder.tag, ANY_COUNTER) for m in missed)

    holder.of("/").release(c.sid)
    n0 = str(world.nodes[0].node_id)
    expected = {("/", "red"): {n0: 1}, ("/", "blue"): {n0: 1}}  # a and b's
    async with asyncio.timeout(TIMEOUT):
        while world.adapter(0).room_table() != expected:
            await asyncio.sleep(0.01)


async def test_restore_refuses_what_it_cannot_do_exactly(recovering: World) -> None:
    """A pid this node does not keep, a session of a node nobody knows, an offset this node
    never gave: each refused with its reason; a refused kept session is released."""
    world = recovering
    holder, c = _lose(world, "c")
    assert c.pid is not None
    nobody = recovery.OTHER_NODE if len(world.nodes) == 1 else recovery.OLD_NODE_GONE
    for pid, reason in [
        (c.pid[:8] + "A" * 16, recovery.UNKNOWN_SESSION),  # this node's, never given
        ("A" * 24, nobody),  # a node this one does not even know
        (c.sid, recovery.UNKNOWN_SESSION),  # the public sid is not the pid
    ]:
        with pytest.raises(RecoveryRefusedError) as info:
            await holder.adapter.restore_session("/", pid, None)
        assert info.value.reason == reason
    assert holder.of("/").ghost(c.sid) is c  # asking for others did not release it
    with pytest.raises(RecoveryRefusedError) as info:
        await holder.adapter.restore_session("/", c.pid, offset_text(holder.tag, 10**6))
    assert info.value.reason == recovery.UNKNOWN_OFFSET
    assert holder.of("/").ghost(c.sid) is None
    with pytest.raises(RecoveryRefusedError) as info:
        await holder.adapter.restore_session("/", c.pid, None)
    assert info.value.reason == recovery.UNKNOWN_SESSION


async def test_another_node_takes_a_session_over_with_what_it_missed(recovering: World) -> None:
    """A session restored on another node: it claims it, holds its rooms, and gets what the
    socket missed before (from the old node's history) and during the claim (from the bus,
    once each), in order, numbered by itself; the old node lets its ghost go and points to
    the new one. A standalone node has no other node to ask (``other node``)."""
    world = recovering
    holder, c = _lose(world, "c")
    assert c.pid is not None
    if len(world.nodes) == 1:
        with pytest.raises(RecoveryRefusedError) as info:
            await holder.adapter.restore_session("/", new_pid(NodeTag(bytes(6))), None)
        assert info.value.reason == recovery.OTHER_NODE
        return
    world.broadcast(world.target("red"), "news", 1, node=0)
    world.broadcast(world.target("green"), "news", "not c's", node=0)
    world.broadcast(world.target(c.sid), "news", 3, node=0)
    await world.fence(0, clients=3)
    new = world.nodes[0]
    claim = await new.adapter.restore_session("/", c.pid, None)
    assert claim.handed_over
    assert (claim.session.sid, claim.session.rooms) == (c.sid, frozenset({c.sid, "red", "blue"}))
    # Published while claimed: the old node still has the ghost, the new one its rooms.
    world.broadcast(world.target("blue"), "news", 4, node=0)
    await world.fence(0, clients=3)
    missed = _events(await claim.complete())
    assert [m[:2] for m in missed] == [["news", 1], ["news", 3], ["news", 4]]
    assert all(parse_offset(m[2]) == (new.tag, ANY_COUNTER) for m in missed)
    assert holder.of("/").ghost(c.sid) is None
    assert holder.stats.sessions_handed_over == 1
    # The old node points to the new one, which no longer keeps it.
    with pytest.raises(RecoveryRefusedError) as info:
        await holder.adapter.restore_session("/", c.pid, None)
    assert info.value.reason == recovery.UNKNOWN_SESSION


async def test_a_claim_from_another_node_that_does_not_go_through(recovering: World) -> None:
    """Cancelled (the connect did not go through), another node's claim leaves the session
    kept on its node, claimable again; cancelled because its client got a fresh session, it
    makes that node release the ghost."""
    world = recovering
    if len(world.nodes) == 1:
        return  # no other node
    holder, c = _lose(world, "c")
    assert c.pid is not None
    new = world.nodes[0]
    (await new.adapter.restore_session("/", c.pid, None)).cancel()
    again: SessionClaim | None = None
    async with asyncio.timeout(TIMEOUT):
        while again is None:  # the word that it was dropped travels on its own
            with contextlib.suppress(RecoveryRefusedError):
                again = await new.adapter.restore_session("/", c.pid, None)
    assert holder.of("/").ghost(c.sid) is c and isinstance(again, RemoteClaim)
    again.cancel(release=True)
    async with asyncio.timeout(TIMEOUT):
        while holder.of("/").ghost(c.sid) is not None:
            await asyncio.sleep(0.01)
    assert holder.stats.sessions_kept == 0


async def test_ghosts_are_not_sockets_to_the_app(recovering: World) -> None:
    """A ghost is in no snapshot and no room operation reaches it."""
    world = recovering
    holder, c = _lose(world, "c")
    assert {i.id for i in await world.adapter(0).fetch_sockets(world.target("red"))} == {
        world.sids["a"]
    }
    await world.adapter(0).add_sockets(world.target("red"), ["green"])
    await world.adapter(0).disconnect_sockets(world.target(c.sid), False)
    assert c.rooms == {c.sid, "red", "blue"} and holder.of("/").ghost(c.sid) is c


async def test_the_keeper_answers_a_claim_of_the_node_it_keeps_without_waiting_for_its_death() -> (
    None
):
    """n0 keeps a copy of n1's sessions (n1's keeper). n1's own claim on a pid of n1 that n0
    does not keep is answered at once: the claimant is alive, so the copy will not be adopted
    (n0 used to wait for n1 to be called down, longer than n1 waits for an answer, and n1
    then took the silence for ``old node gone``)."""
    never = int(TIMEOUT * 1000 * 10)  # nobody is called down during the test
    overrides = {
        "recovery.enabled": True,
        "cluster.suspect_after_ms": never - 1,
        "cluster.down_after_ms": never,
    }
    async with _world("cluster", **overrides) as world:
        n0, n1 = world.nodes
        keeper = n0.adapter
        assert isinstance(keeper, ClusterAdapter)
        async with asyncio.timeout(TIMEOUT):
            while n1.tag not in keeper.keeping.mirrors:  # n1 streams to its keeper, n0
                await asyncio.sleep(0.01)
            reply = await keeper.handovers.serve(
                rq.ClaimSession("/", new_pid(n1.tag), None), n1.tag
            )
        assert reply == rq.Refused(recovery.UNKNOWN_SESSION)
