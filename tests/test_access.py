"""The access rule of the operator surfaces (roomcast.access), on requests built in memory."""

from __future__ import annotations

from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from roomcast.access import MetricsAccess, admin_refusal, in_networks
from roomcast.config import MetricsSettings


def request(peer: str, host: str = "127.0.0.1:3000", **headers: str) -> web.Request:
    """A GET from ``peer`` with these headers (``Host`` given apart)."""
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    return make_mocked_request(
        "GET", "/metrics", headers=CIMultiDict({"Host": host, **headers}), transport=transport
    )


def test_admin_rule_without_a_token() -> None:
    """Without a token: loopback peers naming a loopback host and relaying nothing only."""
    assert admin_refusal(request("127.0.0.1"), "") is None
    assert admin_refusal(request("::1", "[::1]:3000"), "") is None
    assert admin_refusal(request("::ffff:127.0.0.1", "localhost"), "") is None
    assert admin_refusal(request("192.0.2.7"), "") == 403
    assert admin_refusal(request("127.0.0.1", "evil.example"), "") == 403
    assert admin_refusal(request("127.0.0.1", **{"X-Forwarded-For": "1.2.3.4"}), "") == 403
    assert admin_refusal(request("127.0.0.1", Origin="http://evil.example"), "") == 403


def test_admin_rule_with_a_token() -> None:
    """With a token, the bearer token from any peer, and nothing else, gets in."""
    assert admin_refusal(request("127.0.0.1"), "s3cret") == 401
    assert admin_refusal(request("127.0.0.1", Authorization="Bearer nope"), "s3cret") == 401
    ok = request("192.0.2.7", "node.example", Authorization="Bearer s3cret")
    assert admin_refusal(ok, "s3cret") is None


@pytest.mark.parametrize("token", ["", "s3cret"])
def test_metrics_networks_scrape_without_the_token(token: str) -> None:
    """``metrics.networks`` lets its peers in without the token, unless relayed; other peers
    get the admin rule."""
    access = MetricsAccess(MetricsSettings(networks=("192.0.2.0/24", "2001:db8::1")), token)
    assert access.refusal(request("192.0.2.7", "node.example:3000")) is None
    assert access.refusal(request("2001:db8::1", "node.example")) is None
    relayed = request("192.0.2.7", **{"X-Real-IP": "203.0.113.9"})
    assert access.refusal(relayed) == (401 if token else 403)
    assert access.refusal(request("198.51.100.1")) == (401 if token else 403)
    local = request("127.0.0.1", Authorization=f"Bearer {token}") if token else request("::1")
    assert access.refusal(local) is None


def test_metrics_access_any_lets_every_peer_in() -> None:
    """``metrics.access = "any"``: no rule at all."""
    access = MetricsAccess(MetricsSettings(access="any"), "s3cret")
    assert access.refusal(request("198.51.100.1", "x", Origin="http://evil.example")) is None


def test_in_networks_takes_no_garbage() -> None:
    """A peer address that is not an IP address is in no network."""
    assert not in_networks(None, ())
    assert not in_networks("not an address", MetricsAccess(MetricsSettings(), "").networks)
