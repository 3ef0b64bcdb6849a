"""``roomcast status``' human output, from a node's documents as ``/admin/cluster`` and
``/admin/stats`` give them: every counter of ``/admin/stats`` has a place, in a few lines, and
the fields an older node lacks are left out rather than failing."""

from __future__ import annotations

from typing import Any

import pytest

from roomcast.cli.observe import print_status

STATS: dict[str, Any] = {
    "node": "n1",
    "connections": 3,
    "connections_opened": 7,
    "opened_by_transport": {"websocket": 5, "polling": 2},
    "upgrades": 1,
    "sockets": 4,
    "socket_connects": {"/": 6, "/chat": 2},
    "messages_in": 40,
    "messages_out": 300,
    "bus_deliveries": 120,
    "broadcasts": 30,
    "bus_broadcasts": 12,
    "direct_out": 9,
    "bytes_in": {"websocket": 1000, "polling": 200},
    "bytes_out": {"websocket": 9000, "polling": 800},
    "volatile_dropped": 0,
    "late_packets": 2,
    "closed_by_reason": {"transport close": 3, "ping timeout": 1},
    "http_refused": {},
    "forwarded_requests": 5,
    "forwarded_bytes": 700,
    "forward_failed": 0,
    "spliced_websockets": 1,
    "forwards_in_flight": 1,
    "recoveries_attempted": 2,
    "recoveries_succeeded": 1,
    "recoveries_refused": {"unknown session": 1},
    "replayed_messages": 4,
    "sessions_kept": 1,
    "sessions_dropped": 0,
    "sessions_handed_over": 1,
    "keeper_adopted": 1,
    "keeper_lost": 0,
    "keeper_resyncs": 2,
    "kept_for_others": {"sessions": 3, "packets": 40, "bytes": 5000, "shadow": 0},
    "admin_ui_watched": True,
    "admin_ui_sent": {"server_stats": 10, "socket_connected": 2},
    "metrics": None,
}


def document(stats: dict[str, Any]) -> dict[str, Any]:
    """What ``status`` prints from: node n1 alone, asked at its address."""
    me = {"node": "n1", "address": "http://127.0.0.1:3000", "connections": 3, "rooms": 1}
    return {"asked": me["address"], "self": me, "standalone": False, "stats": stats}


def test_every_counter_has_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Sessions, socket connects by namespace, packets, bytes, edge refusals, forwarding,
    recovery, the Admin UI and /metrics each get one line, reasons largest first."""
    print_status(document(STATS))
    lines = capsys.readouterr().out.splitlines()
    assert lines[-10:] == [
        "sessions: 7 opened (5 websocket, 2 polling), 1 upgraded; "
        "closed: 3 transport close, 1 ping timeout",
        "socket connects: 6 to /, 2 to /chat",
        "packets: 30 broadcasts from here, 12 from the bus; 300 deliveries (120 from the bus), "
        "9 to one socket; 2 late",
        "bytes: 1000 in, 9000 out by WebSocket; 200 in, 800 out by polling",
        "refused at the HTTP edge: none",
        "forwarded for other nodes' sessions: 5 requests, 1 websockets, 700 bytes, 0 failed, "
        "1 in flight now",
        "recovery: 2 attempted, 1 recovered (4 messages replayed), refused: 1 unknown session; "
        "1 sessions kept now, 1 handed over to other nodes, 0 dropped early (max_sessions)",
        "keeper: 3 sessions of other nodes kept here (40 packets, 5000 bytes); "
        "dead nodes' copies: 1 adopted, 0 lost; 2 resyncs",
        "admin UI: watched; sent 10 server_stats, 2 socket_connected",
        "metrics: off",
    ]


def test_admin_ui_states(capsys: pytest.CaptureFixture[str]) -> None:
    """The Admin UI is off (null), or on with nobody watching and what was sent before."""
    for watched, line in ((None, "admin UI: off"), (False, "admin UI: nobody watching; sent")):
        print_status(document(STATS | {"admin_ui_watched": watched, "metrics": "/metrics"}))
        out = capsys.readouterr().out
        assert any(printed.startswith(line) for printed in out.splitlines()), out
        assert "metrics: /metrics" in out.splitlines()


def test_an_older_nodes_stats_print_what_they_have(capsys: pytest.CaptureFixture[str]) -> None:
    """A node without the newer fields: the lines of what it has, none of the others."""
    old = {k: STATS[k] for k in ("connections", "sockets", "messages_in", "messages_out")}
    print_status(document(old | {"volatile_dropped": 0}))
    out = capsys.readouterr().out
    assert "this node: 3 connections, 4 sockets" in out
    for subject in ("sessions:", "packets:", "bytes:", "admin UI:", "metrics:", "recovery:"):
        assert subject not in out
