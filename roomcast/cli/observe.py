"""Inspection commands: ``status``, ``nodes``, ``rooms``, ``room`` and ``emit``.

Answers come from the membership replica of whichever node answers first (every node holds the
whole cluster's facts), so they are local reads with a stated freshness; router figures come
from the routers' stats endpoints. ``--json`` prints the raw documents for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from typing import Any

import aiohttp

from roomcast import config


class Unreachable(Exception):
    """No node (or router) answered."""


def _node_urls(args: argparse.Namespace, settings: config.Settings) -> list[str]:
    if args.node:
        return [args.node.rstrip("/")]
    if settings.discovery.nodes:
        return [u.rstrip("/") for u in settings.discovery.nodes]
    up = settings.up
    return [f"http://{up.host}:{up.base_port + i}" for i in range(up.nodes)]


#: Headers of every admin request (the bearer token of ``node.admin_token``); set by ``_main``,
#: once per CLI process.
_HEADERS: dict[str, str] = {}
#: The CA file trusted for nodes served over https (``http.tls_ca_file``); set by ``_main``.
_CA_FILE: list[str] = []


def _session() -> aiohttp.ClientSession:
    """An HTTP client for nodes and routers: https is verified against ``http.tls_ca_file``
    when it is set, else against the system's CAs."""
    tls = ssl.create_default_context(cafile=_CA_FILE[0] if _CA_FILE else None)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls))


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=3), headers=_HEADERS) as resp:
        resp.raise_for_status()
        return await resp.json()


async def _ask_any(urls: list[str], path: str) -> tuple[str, Any]:
    errors = []
    async with _session() as session:
        for base in urls:
            try:
                return base, await _get(session, base + path)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                errors.append(f"{base}: {type(exc).__name__} {exc}".strip())
    raise Unreachable("no node answered:\n  " + "\n  ".join(errors))


async def _routers(settings: config.Settings, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The stats of the routers the discovery backend lists: Consul's (as the node ``doc``
    describes them) when it is configured, else those of ``cluster.toml``."""
    disc = doc.get("cluster", {}).get("discovery", {})
    if disc.get("backend") == "consul":
        urls = [r["http"] for r in disc.get("routers", [])]
    else:
        urls = [r.http for r in settings.discovery.routers]
    out = []
    async with _session() as session:
        for url in urls:
            try:
                out.append(await _get(session, url.rstrip("/") + "/stats"))
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                out.append({"router": url, "status": "unreachable", "error": str(exc)})
    return out


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _consul_state(doc: dict[str, Any], node: str) -> str:
    disc = doc.get("cluster", {}).get("discovery", {})
    if disc.get("backend") != "consul":
        return "-"
    for n in disc.get("nodes", []):
        if n["id"] == node:
            return "passing" if n["healthy"] else "critical"
    return "absent"


def _nodes_rows(doc: dict[str, Any]) -> list[list[Any]]:
    me = doc["self"]
    rows = [
        [
            me["node"],
            "alive (asked)",
            _consul_state(doc, me["node"]),
            me["address"],
            me["connections"],
            me["rooms"],
            "0.000",
        ]
    ]
    for n in doc.get("cluster", {}).get("nodes", []):
        rows.append(
            [
                n["node"],
                n["status"],
                _consul_state(doc, n["node"]),
                n["address"],
                n["connections"],
                n["rooms"],
                f"{n['age']:.3f}",
            ]
        )
    return rows


_NODE_HEADERS = ["node", "gossip", "consul", "address", "conns", "rooms", "age s"]


async def _status(args: argparse.Namespace, settings: config.Settings) -> dict[str, Any]:
    base, doc = await _ask_any(_node_urls(args, settings), "/admin/cluster")
    assert isinstance(doc, dict)
    _, stats = await _ask_any([base], "/admin/stats")
    routers = [] if doc.get("standalone") else await _routers(settings, doc)
    interval = args.interval
    if interval > 0:
        # Rates: a second sample, ``interval`` seconds later.
        await asyncio.sleep(interval)
        _, later = await _ask_any([base], "/admin/stats")
        stats["rates"] = _rates(stats, later, interval, ("messages_in", "messages_out"))
        routers_later = [] if doc.get("standalone") else await _routers(settings, doc)
        for before, after in zip(routers, routers_later, strict=False):
            if before.get("status") == "ok" and after.get("status") == "ok":
                before["rates"] = _rates(before, after, interval, ("messages_in", "messages_out"))
        stats.update({k: later[k] for k in later if k != "rates"})
    doc["stats"] = stats
    doc["asked"] = base
    if not doc.get("standalone"):
        doc["router_stats"] = routers
    return doc


def _rates(
    before: dict[str, Any], after: dict[str, Any], interval: float, keys: tuple[str, ...]
) -> dict[str, float]:
    """Per-second rates of counters sampled ``interval`` seconds apart."""
    return {k: round(max(after[k] - before[k], 0) / interval, 1) for k in keys}


def print_status(doc: dict[str, Any]) -> None:
    """``status``' human output of ``doc`` (what ``status --json`` prints): the nodes, then
    the asked node's counters a line per subject (the subjects its ``/admin/stats`` has), the
    bus and the routers."""
    print(f"asked {doc['asked']} (node {doc['self']['node']})")
    print()
    print(_table(_nodes_rows(doc), _NODE_HEADERS))
    s = doc["stats"]
    print()
    print(
        f"this node: {s['connections']} connections, {s['sockets']} sockets, "
        f"{s['messages_in']} messages in, {s['messages_out']} out, "
        f"{s['volatile_dropped']} volatile dropped"
    )
    if "rates" in s:
        r = s["rates"]
        print(f"rates: {r['messages_in']} messages/s in, {r['messages_out']} deliveries/s out")
    for line in _traffic_lines(s):
        print(line)
    if "forwarded_requests" in s and not doc.get("standalone"):
        print(
            f"forwarded for other nodes' sessions: {s['forwarded_requests']} requests, "
            f"{s['spliced_websockets']} websockets, {s['forwarded_bytes']} bytes, "
            f"{s['forward_failed']} failed, {s.get('forwards_in_flight', 0)} in flight now"
        )
    if "recoveries_attempted" in s:
        print(
            f"recovery: {s['recoveries_attempted']} attempted, "
            f"{s['recoveries_succeeded']} recovered ({s['replayed_messages']} messages "
            f"replayed), refused: {_counts(s['recoveries_refused'])}; "
            f"{s['sessions_kept']} sessions kept now, "
            f"{s.get('sessions_handed_over', 0)} handed over to other nodes, "
            f"{s.get('sessions_dropped', 0)} dropped early (max_sessions)"
        )
    kept = s.get("kept_for_others")
    if kept is not None:
        print(
            f"keeper: {kept['sessions']} sessions of other nodes kept here "
            f"({kept['packets']} packets, {kept['bytes']} bytes); dead nodes' copies: "
            f"{s['keeper_adopted']} adopted, {s['keeper_lost']} lost; "
            f"{s['keeper_resyncs']} resyncs"
        )
    for line in _operator_lines(s):
        print(line)
    bus = doc.get("cluster", {}).get("bus")
    if bus:
        print(
            f"bus: {bus['published']} published, {bus['received']} received, "
            f"{bus['gaps']} lost (gaps), {bus['undecodable']} undecodable"
            + (", CURVE" if bus.get("curve") else ", open (no CURVE)")
        )
        for rid, problem in bus.get("link_problems", {}).items():
            print(f"bus: router {rid}: {problem}")
    routers = doc.get("router_stats", [])
    if routers:
        print()
        rows = [
            [
                r.get("router"),
                r.get("status"),
                r.get("messages_in", "-"),
                r.get("messages_out", "-"),
                r.get("unrouted", "-"),
                r.get("topics", "-"),
                r["rates"]["messages_in"] if "rates" in r else "-",
                _router_bus(r),
            ]
            for r in routers
        ]
        headers = ["router", "status", "in", "out", "unrouted", "topics", "in/s", "bus"]
        print(_table(rows, headers))


def _counts(counts: dict[str, int]) -> str:
    """``{"a": 2, "b": 1}`` as ``2 a, 1 b`` (largest first), or ``none``."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {key}" for key, n in ordered) or "none"


def _traffic_lines(s: dict[str, Any]) -> list[str]:
    """Sessions, packets and bytes of a node's ``/admin/stats`` (those an older node has)."""
    lines = []
    if "connections_opened" in s:
        lines.append(
            f"sessions: {s['connections_opened']} opened "
            f"({_counts(s.get('opened_by_transport', {}))}), {s.get('upgrades', 0)} upgraded; "
            f"closed: {_counts(s.get('closed_by_reason', {}))}"
        )
    if "socket_connects" in s:
        connects = {f"to {ns}": n for ns, n in s["socket_connects"].items()}
        lines.append(f"socket connects: {_counts(connects)}")
    if "broadcasts" in s:
        lines.append(
            f"packets: {s['broadcasts']} broadcasts from here, {s['bus_broadcasts']} from the "
            f"bus; {s['messages_out']} deliveries ({s['bus_deliveries']} from the bus), "
            f"{s['direct_out']} to one socket; {s.get('late_packets', 0)} late"
        )
    if "bytes_in" in s:
        b_in, b_out = s["bytes_in"], s["bytes_out"]
        lines.append(
            f"bytes: {b_in['websocket']} in, {b_out['websocket']} out by WebSocket; "
            f"{b_in['polling']} in, {b_out['polling']} out by polling"
        )
    if "http_refused" in s:
        lines.append(f"refused at the HTTP edge: {_counts(s['http_refused'])}")
    return lines


def _operator_lines(s: dict[str, Any]) -> list[str]:
    """The Admin UI and ``/metrics`` lines of a node's ``/admin/stats``."""
    lines = []
    if "admin_ui_watched" in s:
        watched = s["admin_ui_watched"]
        state = "off" if watched is None else "watched" if watched else "nobody watching"
        sent = _counts(s.get("admin_ui_sent", {}))
        lines.append(f"admin UI: {state}" + ("" if watched is None else f"; sent {sent}"))
    if "metrics" in s:
        lines.append(f"metrics: {s['metrics'] or 'off'}")
    return lines


def _router_bus(stats: dict[str, Any]) -> str:
    """How a router guards its bus: open, or CURVE and the handshakes it refused."""
    if "curve" not in stats:
        return "-"
    return f"curve, {stats['curve_refused']} refused" if stats["curve"] else "open"


def cmd_status(args: argparse.Namespace) -> int:
    """Nodes, health, connections, rooms, message counters, router stats."""
    return _main(args, _status, print_status)


def cmd_nodes(args: argparse.Namespace) -> int:
    """The nodes as the replica of the answering node sees them."""

    async def fetch(args: argparse.Namespace, settings: config.Settings) -> dict[str, Any]:
        _, doc = await _ask_any(_node_urls(args, settings), "/admin/cluster")
        return doc  # type: ignore[no-any-return]

    def show(doc: dict[str, Any]) -> None:
        print(_table(_nodes_rows(doc), _NODE_HEADERS))

    return _main(args, fetch, show)


def cmd_rooms(args: argparse.Namespace) -> int:
    """Rooms across the cluster, largest first."""

    async def fetch(args: argparse.Namespace, settings: config.Settings) -> dict[str, Any]:
        query = f"?top={args.top}" if args.top else "?"
        if args.namespace:
            query += f"&namespace={args.namespace}"
        _, doc = await _ask_any(_node_urls(args, settings), "/admin/rooms" + query)
        return doc  # type: ignore[no-any-return]

    def show(doc: dict[str, Any]) -> None:
        rows = [
            [r["namespace"], r["room"], r["members"], ", ".join(sorted(r["nodes"]))]
            for r in doc["rooms"]
        ]
        print(_table(rows, ["namespace", "room", "members", "nodes"]))
        print(f"({len(rows)} rooms; replica at most {doc['freshness']:.3f} s old)")

    return _main(args, fetch, show)


def cmd_room(args: argparse.Namespace) -> int:
    """One room: which nodes, how many members, and (``--members``) its sockets."""

    async def fetch(args: argparse.Namespace, settings: config.Settings) -> dict[str, Any]:
        from urllib.parse import urlencode

        query = {"namespace": args.namespace or "/", "name": args.name}
        if args.members:
            query["members"] = "1"
        _, doc = await _ask_any(_node_urls(args, settings), "/admin/room?" + urlencode(query))
        return doc  # type: ignore[no-any-return]

    def show(doc: dict[str, Any]) -> None:
        print(f"room {doc['room']!r} in {doc['namespace']}: {doc['members']} members")
        if not doc["nodes"]:
            print("(no node has members of this room)")
            return
        print(_table([[n, c] for n, c in sorted(doc["nodes"].items())], ["node", "members"]))
        if "sockets" in doc:
            print()
            rows = [[s["id"], s["node"], ", ".join(s["rooms"])] for s in doc["sockets"]]
            print(_table(rows, ["socket", "node", "rooms"]))

    return _main(args, fetch, show)


def cmd_emit(args: argparse.Namespace) -> int:
    """Send an event to a room through the routers (as an emitter, not a node)."""
    from roomcast.emitter import Emitter

    async def send(args: argparse.Namespace, settings: config.Settings) -> dict[str, Any]:
        try:
            data = json.loads(args.data) if args.data is not None else None
        except ValueError:
            data = args.data  # plain text is sent as a string
        routers = settings.discovery.routers
        try:
            async with Emitter.from_settings(settings, connect_timeout=args.timeout) as emitter:
                emitter.of(args.namespace or "/").to(args.room).emit(args.event, data)
        except ConnectionError as exc:
            addresses = ", ".join(r.xsub for r in routers)
            why = str(exc).removeprefix("no router answered")
            raise Unreachable(f"no router answered at {addresses}{why}") from None
        return {"ok": True, "room": args.room, "event": args.event, "namespace": args.namespace}

    def show(doc: dict[str, Any]) -> None:
        print(f"sent {doc['event']!r} to room {doc['room']!r}")

    return _main(args, send, show)


def cmd_drain(args: argparse.Namespace) -> int:
    """Drain a node: no new clients, failing health, its clients moved over a window, then
    it leaves the cluster."""

    async def drain(args: argparse.Namespace, settings: config.Settings) -> dict[str, Any]:
        target = args.target
        if target.startswith(("http://", "https://")):
            url = target.rstrip("/")
        else:
            _, doc = await _ask_any(_node_urls(args, settings), "/admin/cluster")
            addresses = {doc["self"]["node"]: doc["self"]["address"]}
            for n in doc.get("cluster", {}).get("nodes", []):
                if n["status"] != "down":
                    addresses[n["node"]] = n["address"]
            if target not in addresses:
                raise Unreachable(
                    f"no live node {target!r} in the cluster ({', '.join(sorted(addresses))})"
                )
            url = addresses[target]
        window = args.window if args.window is not None else settings.node.drain_window_ms / 1000
        async with _session() as session:
            try:
                async with session.post(
                    f"{url}/admin/drain?window_ms={int(window * 1000)}",
                    headers=_HEADERS,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    resp.raise_for_status()
                    return await resp.json()  # type: ignore[no-any-return]
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise Unreachable(f"{url}: {type(exc).__name__} {exc}") from None

    def show(doc: dict[str, Any]) -> None:
        print(
            f"node {doc['node']} is draining: its clients move over {doc['window']:.1f} s, "
            "then it leaves the cluster"
        )

    return _main(args, drain, show)


def _main(args: argparse.Namespace, fetch: Any, show: Any) -> int:
    settings = config.load(args.config) if args.config else _default_settings()
    if settings.node.admin_token:
        _HEADERS["Authorization"] = f"Bearer {settings.node.admin_token}"
    if settings.http.tls_ca_file:
        _CA_FILE[:] = [settings.http.tls_ca_file]
    try:
        doc = asyncio.run(fetch(args, settings))
    except Unreachable as exc:
        print(f"roomcast: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        show(doc)
    return 0


def _default_settings() -> config.Settings:
    from pathlib import Path

    return config.load("cluster.toml" if Path("cluster.toml").exists() else None)


def add_commands(sub: Any) -> None:
    """Register the inspection subcommands."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--node", help="base URL of the node to ask (default: from config)")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("status", help="the cluster at a glance")
    common(p)
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between the two samples of rates"
    )
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("nodes", help="nodes and their health")
    common(p)
    p.set_defaults(func=cmd_nodes)
    p = sub.add_parser("rooms", help="rooms across the cluster")
    common(p)
    p.add_argument("--namespace")
    p.add_argument("--top", type=int)
    p.set_defaults(func=cmd_rooms)
    p = sub.add_parser("room", help="one room")
    common(p)
    p.add_argument("name")
    p.add_argument("--namespace")
    p.add_argument("--members", action="store_true", help="list the member sockets")
    p.set_defaults(func=cmd_room)
    p = sub.add_parser("emit", help="send an event to a room")
    common(p)
    p.add_argument("room")
    p.add_argument("event")
    p.add_argument("data", nargs="?", help="JSON (or plain text) sent as the one argument")
    p.add_argument("--namespace")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=cmd_emit)
    p = sub.add_parser("drain", help="move a node's clients away and take it out")
    common(p)
    p.add_argument("target", metavar="NODE", help="node id, or its base URL")
    p.add_argument("--window", type=float, help="seconds to spread reconnects over")
    p.set_defaults(func=cmd_drain)
