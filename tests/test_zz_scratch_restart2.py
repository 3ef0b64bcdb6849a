from __future__ import annotations
import asyncio
import pytest
from test_consul_cluster import *  # noqa
from test_consul_cluster import consul_cluster, spread_rooms, send_round, arrived, wait_spread, wait_catalogue, wait_bus_routers, assert_exactly_once, log_lines

pytestmark = pytest.mark.multinode

async def test_restart_two_routers(tmp_path, consul, connect):
    async with consul_cluster(tmp_path, consul.address, "n1", "n2", extra_routers=["r2"]) as cluster:
        await wait_bus_routers(cluster, ["n1", "n2"], ["r1", "r2"])
        by_owner = spread_rooms(["r1", "r2"], per_router=6)
        rooms = by_owner["r1"] + by_owner["r2"]
        a = await connect(cluster, "n1", name="a")
        b = await connect(cluster, "n2", name="b")
        await a.join(*rooms); await b.join(*rooms)
        sent = []
        await wait_spread(cluster, a, b, by_owner, sent)
        await consul.kill()
        await asyncio.sleep(1)
        await consul.start()
        lost = 0
        for i in range(40):
            for s, r in ((a, b), (b, a)):
                toks = await send_round(s, rooms, sent)
                if not await arrived(r, toks.values(), 1.0):
                    lost += 1
            await asyncio.sleep(0.05)
        for n in ("n1", "n2"):
            print(n, [l for l in cluster.nodes[n].proc.lines if "router" in l or "down" in l])
        got = set(a.got("m")) | set(b.got("m"))
        print("lost rounds", lost, "missing", len([t for t in sent if t not in got]))
        assert_exactly_once(a, sent); assert_exactly_once(b, sent)
