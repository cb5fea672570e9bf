"""UPSTREAM_DENY_NETWORKS through the running gateway: the address a route's upstream resolves to
is checked when the gateway connects, so a harmless-looking name is refused as its literal
address would be. A refused connection is a 502 that says the address is not allowed, and the
upstream never sees the request.

Without external DNS, the gateway here denies loopback (where the example upstream listens) and
the routes name it `localhost`: a name that only resolution turns into a denied address.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.hardening_support import PROBLEM, create_route, tag, upstream_hits
from tests.e2e.harness import ACME, Gateway, Upstream, gateway_env, gateway_in

ACME_H = {"X-API-Key": ACME}


@pytest.fixture(scope="module")
def denying_gateway(workdir: Path, upstream: Upstream) -> Iterator[Gateway]:
    env = gateway_env(upstream, extra={"UPSTREAM_DENY_NETWORKS": "127.0.0.0/8, ::1/128"})
    with gateway_in(workdir, "deny-loopback", env) as gw:
        yield gw


def assert_address_refused(r: httpx.Response) -> None:
    assert r.status_code == 502, r.text
    assert r.headers["content-type"] == PROBLEM
    detail = r.json()["detail"]
    assert "the upstream's address is not allowed" in detail
    assert "127.0.0.1" not in detail and "::1" not in detail  # nothing about where it points


@pytest.mark.parametrize("cached", [False, True], ids=["pass-through", "cached"])
def test_a_name_that_resolves_into_a_denied_network_is_refused(
    denying_gateway: Gateway, upstream: Upstream, cached: bool
) -> None:
    gw = denying_gateway
    route = create_route(
        gw,
        upstream_url=f"http://localhost:{upstream.port}",
        cache_policy="standard" if cached else None,
    )
    path = f"/echo/{tag()}"
    r = httpx.get(f"{gw.url}/g/{route}{path}", headers=ACME_H, timeout=10)
    assert_address_refused(r)
    assert upstream_hits(upstream, path) == 0


def test_a_literal_address_is_checked_the_same_way(
    denying_gateway: Gateway, upstream: Upstream
) -> None:
    path = f"/echo/{tag()}"
    r = httpx.post(f"{denying_gateway.url}/g/webhooks{path}", headers=ACME_H, content=b"x")
    assert_address_refused(r)
    assert upstream_hits(upstream, path) == 0


def test_a_route_that_opts_in_may_connect(denying_gateway: Gateway, upstream: Upstream) -> None:
    route = create_route(
        denying_gateway,
        upstream_url=f"http://localhost:{upstream.port}",
        allow_private_upstream=True,
    )
    path = f"/echo/{tag()}"
    r = httpx.get(f"{denying_gateway.url}/g/{route}{path}", headers=ACME_H, timeout=10)
    assert r.status_code == 200, r.text
    assert upstream_hits(upstream, path) == 1


def test_the_default_list_leaves_loopback_alone(
    embedded_gateway: Gateway, upstream: Upstream
) -> None:
    route = create_route(embedded_gateway, upstream_url=f"http://localhost:{upstream.port}")
    path = f"/echo/{tag()}"
    r = httpx.get(f"{embedded_gateway.url}/g/{route}{path}", headers=ACME_H, timeout=10)
    assert r.status_code == 200, r.text
    assert upstream_hits(upstream, path) == 1
