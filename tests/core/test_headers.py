"""Header hygiene: hop-by-hop, forwarding headers, client address and framing checks."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heliox.core import headers as headers_module
from heliox.core.headers import (
    CACHE_FILL_FORWARDED,
    GATEWAY_REQUEST_HEADERS,
    HOP_BY_HOP,
    MAX_FORWARDED_HOPS,
    UNKNOWN_CLIENT,
    cache_fill_forwarded,
    client_ip,
    downstream_response_headers,
    forwarded_as_sent,
    has_conflicting_framing,
    header_value,
    header_values,
    host_problem,
    is_valid_header_value,
    request_client_ip,
    upstream_request_headers,
)

H = list[tuple[bytes, bytes]]
TRUSTED = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]


def names(headers: H) -> list[bytes]:
    return [name for name, _ in headers]


def upstream(headers: H, *, trusted: bool = False, **kwargs: object) -> H:
    options: dict[str, object] = {
        "client_ip": "203.0.113.7",
        "peer_is_trusted": trusted,
        "proto": "https",
        "host": b"gw.example",
        "via": b"1.1 heliox",
    }
    options.update(kwargs)
    return upstream_request_headers(headers, **options)  # type: ignore[arg-type]


# ---- lookups ----------------------------------------------------------------------------------


def test_header_value_and_values() -> None:
    headers = [(b"accept", b"a"), (b"cookie", b"x=1"), (b"accept", b"b")]
    assert header_value(headers, b"accept") == b"a"
    assert header_value(headers, b"missing") is None
    assert header_values(headers, b"accept") == [b"a", b"b"]
    assert header_values(headers, b"missing") == []


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (b"plain", True),
        (b"", True),
        (b"caf\xc3\xa9 \t!", True),
        (b"a\rb", False),
        (b"a\nSet-Cookie: x=1", False),
        (b"a\r\n", False),
        (b"\x00", False),
    ],
)
def test_is_valid_header_value(value: bytes, valid: bool) -> None:
    assert is_valid_header_value(value) is valid


# ---- requests going upstream ------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_stripped() -> None:
    headers = [(name, b"x") for name in sorted(HOP_BY_HOP)] + [(b"accept", b"*/*")]
    out = upstream(headers)
    assert not HOP_BY_HOP.intersection(names(out))
    assert (b"accept", b"*/*") in out


def test_gateway_credentials_and_host_never_go_upstream() -> None:
    headers = [
        (b"host", b"gw.example"),
        (b"x-api-key", b"hx_prod_acme_7k9m2n4p5q8r1s3t6u0v"),
        (b"x-api-key", b"second"),
        (b"x-admin-key", b"admin-secret"),
        (b"authorization", b"Bearer upstream-token"),
    ]
    out = upstream(headers)
    assert b"x-api-key" not in names(out)
    assert b"x-admin-key" not in names(out)
    assert b"host" not in names(out)
    assert b"hx_prod" not in b"".join(value for _, value in out)
    # Credentials meant for the upstream itself pass through.
    assert (b"authorization", b"Bearer upstream-token") in out


def test_internal_headers_are_stripped() -> None:
    headers = [(b"x-heliox-tenant", b"other"), (b"x-heliox-route", b"admin"), (b"x-helio", b"ok")]
    out = upstream(headers)
    assert not [n for n in names(out) if n.startswith(b"x-heliox-")]
    assert (b"x-helio", b"ok") in out


@pytest.mark.parametrize(
    "name",
    [
        b"x-original-url",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    ],
)
@pytest.mark.parametrize("trusted", [False, True])
def test_path_and_method_overrides_never_go_upstream(name: bytes, trusted: bool) -> None:
    # The gateway routed, authorised and cached one path and method; the upstream gets the same.
    out = upstream([(name, b"/admin"), (b"accept", b"*/*")], trusted=trusted, peer="10.0.0.2")
    assert name not in names(out)
    assert (b"accept", b"*/*") in out


@pytest.mark.parametrize(
    "name", [b"true-client-ip", b"cf-connecting-ip", b"x-client-ip", b"x-cluster-client-ip"]
)
def test_client_address_claims_need_a_trusted_peer(name: bytes) -> None:
    assert name not in names(upstream([(name, b"127.0.0.1")]))
    assert (name, b"198.51.100.1") in upstream([(name, b"198.51.100.1")], trusted=True)


def test_connection_named_headers_are_stripped() -> None:
    headers = [
        (b"connection", b"keep-alive, X-Custom ,cookie"),
        (b"x-custom", b"1"),
        (b"cookie", b"a=b"),
        (b"accept", b"*/*"),
    ]
    out = upstream(headers)
    assert names(out)[0] == b"accept"
    assert b"x-custom" not in names(out) and b"cookie" not in names(out)


def test_connection_cannot_strip_what_the_gateway_adds() -> None:
    headers = [
        (b"connection", b"x-forwarded-for, x-heliox-tenant, x-real-ip, via, x-forwarded-proto"),
        (b"connection", b"x-forwarded-host, content-length"),
        (b"content-length", b"5"),
    ]
    out = dict(upstream(headers))
    assert out[b"x-forwarded-for"] == b"203.0.113.7"
    assert out[b"x-real-ip"] == b"203.0.113.7"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-host"] == b"gw.example"
    assert out[b"via"] == b"1.1 heliox"
    assert out[b"content-length"] == b"5"


def test_spoofed_forwarding_headers_from_untrusted_peer_are_overwritten() -> None:
    headers = [
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"x-forwarded-for", b"5.6.7.8"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"evil.example"),
        (b"x-forwarded-port", b"1"),
        (b"x-forwarded-prefix", b"/admin"),
        (b"forwarded", b"for=1.2.3.4;host=evil.example"),
        (b"x-real-ip", b"1.2.3.4"),
    ]
    out = upstream(headers)
    assert sorted(out) == sorted(
        [
            (b"x-forwarded-for", b"203.0.113.7"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"gw.example"),
            (b"x-real-ip", b"203.0.113.7"),
            (b"via", b"1.1 heliox"),
        ]
    )


def test_trusted_peer_chain_is_extended() -> None:
    headers = [
        (b"x-forwarded-for", b"198.51.100.1, 203.0.113.7"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-port", b"443"),
        (b"forwarded", b"for=203.0.113.7"),
        (b"x-real-ip", b"1.2.3.4"),
    ]
    out = upstream(headers, trusted=True, peer="10.0.0.2")
    assert header_values(out, b"x-forwarded-for") == [b"198.51.100.1, 203.0.113.7, 10.0.0.2"]
    assert header_values(out, b"x-real-ip") == [b"203.0.113.7"]
    assert header_values(out, b"x-forwarded-proto") == [b"https"]
    assert header_values(out, b"x-forwarded-port") == [b"443"]
    assert header_values(out, b"forwarded") == [b"for=203.0.113.7"]


def test_trusted_peer_without_chain_gets_a_fresh_one() -> None:
    out = upstream([], trusted=True, peer="10.0.0.2", client_ip="10.0.0.2")
    assert header_values(out, b"x-forwarded-for") == [b"10.0.0.2"]


def test_via_is_appended_to_the_clients() -> None:
    out = upstream([(b"via", b"1.0 fred"), (b"via", b"1.1 p.example")])
    assert header_values(out, b"via") == [b"1.0 fred, 1.1 p.example, 1.1 heliox"]


def test_framing_and_per_hop_negotiation() -> None:
    headers = [
        (b"content-length", b"11"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"expect", b"100-continue"),
        (b"upgrade", b"websocket"),
        (b"http2-settings", b"AAA"),
    ]
    assert names(upstream(headers))[0] == b"content-length"
    assert not {b"transfer-encoding", b"te", b"expect", b"upgrade", b"http2-settings"}.intersection(
        names(upstream(headers))
    )


def test_duplicates_and_order_are_preserved() -> None:
    headers = [
        (b"accept", b"a"),
        (b"cookie", b"a=1"),
        (b"x-custom", b"1"),
        (b"x-custom", b"2"),
        (b"cookie", b"b=2"),
    ]
    assert upstream(headers)[:5] == headers


def test_drop_removes_only_client_headers() -> None:
    headers = [(b"cookie", b"a=1"), (b"x-forwarded-for", b"1.1.1.1"), (b"accept", b"*/*")]
    out = upstream(headers, drop=frozenset({b"cookie", b"x-forwarded-for", b"x-real-ip"}))
    assert b"cookie" not in names(out)
    assert header_values(out, b"x-forwarded-for") == [b"203.0.113.7"]
    assert header_values(out, b"x-real-ip") == [b"203.0.113.7"]


@pytest.mark.parametrize(
    "name", [b"x_forwarded_for", b"x_real_ip", b"transfer_encoding", b"x_api_key", b"_", b"a_b"]
)
@pytest.mark.parametrize("trusted", [False, True])
def test_names_with_underscores_never_go_upstream(name: bytes, trusted: bool) -> None:
    """CGI-style upstreams read X_Real_IP as X-Real-IP; nginx drops such names by default."""
    out = upstream([(name, b"6.6.6.6"), (b"accept", b"*/*")], trusted=trusted, peer="10.0.0.2")
    assert name not in names(out)
    assert b"6.6.6.6" not in b"".join(value for _, value in out)
    assert header_values(out, b"accept") == [b"*/*"]
    assert not forwarded_as_sent(name)


# ---- cache fills: what may reach an upstream whose answer is stored ---------------------------
@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        ((), {b"authorization"}),
        (("accept-language",), {b"authorization", b"accept-language"}),
        (("Cookie", "X-Variant"), {b"authorization", b"cookie", b"x-variant"}),
        (("authorization",), {b"authorization"}),
    ],
)
def test_cache_fill_forwards_the_keyed_headers_and_the_documented_list(
    vary: tuple[str, ...], expected: set[bytes]
) -> None:
    assert cache_fill_forwarded(vary) == expected
    assert cache_fill_forwarded(vary) is cache_fill_forwarded(vary)  # one answer per policy
    assert cache_fill_forwarded(vary) >= CACHE_FILL_FORWARDED


# (client header, vary headers of the policy, reaches the upstream on a fill)
FILL_CASES = [
    (b"authorization", (), True),
    (b"cookie", (), False),
    (b"cookie", ("cookie",), True),
    (b"accept", (), False),
    (b"accept", ("accept",), True),
    (b"accept-encoding", (), False),
    (b"accept-language", (), False),
    (b"user-agent", (), False),
    (b"origin", (), False),
    (b"referer", (), False),
    (b"x-host", (), False),
    (b"x-original-host", (), False),
    (b"cache-control", (), False),
    (b"if-none-match", (), False),
    (b"range", (), False),
    (b"content-type", (), False),
    (b"x-custom", ("x-custom",), True),
]


@pytest.mark.parametrize(("name", "vary", "forwarded"), FILL_CASES)
@pytest.mark.parametrize("trusted", [False, True])
def test_a_cache_fill_forwards_only_what_the_key_holds_or_the_list_names(
    name: bytes, vary: tuple[str, ...], forwarded: bool, trusted: bool
) -> None:
    out = upstream([(name, b"v")], keep=cache_fill_forwarded(vary), trusted=trusted)
    assert (name in names(out)) is forwarded
    # The gateway's own forwarding headers go whatever the list says.
    assert GATEWAY_REQUEST_HEADERS - {b"x-request-id"} <= set(names(out))


def test_a_cache_fill_drops_what_a_trusted_proxy_passed_on_unless_keyed() -> None:
    passed_on = [
        (b"x-forwarded-port", b"8443"),
        (b"x-forwarded-prefix", b"/evil"),
        (b"forwarded", b"for=192.0.2.1"),
        (b"x-forwarded-for", b"192.0.2.1"),
    ]
    out = upstream(passed_on, trusted=True, peer="10.0.0.2", keep=cache_fill_forwarded(()))
    assert names(out) == [b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                          b"x-real-ip", b"via"]  # fmt: skip
    assert header_values(out, b"x-forwarded-for") == [b"192.0.2.1, 10.0.0.2"]
    keyed = upstream(
        passed_on, trusted=True, peer="10.0.0.2", keep=cache_fill_forwarded(("x-forwarded-port",))
    )
    assert header_values(keyed, b"x-forwarded-port") == [b"8443"]
    assert b"forwarded" not in names(keyed)


def test_keep_still_honours_connection_and_drop() -> None:
    headers = [(b"connection", b"x-variant"), (b"x-variant", b"1"), (b"accept", b"a")]
    out = upstream(headers, keep=frozenset({b"x-variant", b"accept"}), drop=frozenset({b"accept"}))
    assert b"x-variant" not in names(out) and b"accept" not in names(out)


@pytest.mark.parametrize("host", [b"", b"gw\r\nx-injected: 1"])
def test_unusable_host_is_not_forwarded(host: bytes) -> None:
    out = upstream([], host=host)
    assert b"x-forwarded-host" not in names(out)
    assert all(is_valid_header_value(value) for _, value in out)


# ---- responses going downstream ---------------------------------------------------------------


def test_downstream_strips_hop_by_hop_and_connection_named() -> None:
    headers = [
        (b"connection", b"close, x-internal-debug"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"proxy-authenticate", b"Basic"),
        (b"trailer", b"x-checksum"),
        (b"x-internal-debug", b"1"),
        (b"content-length", b"42"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"etag", b'"v1"'),
    ]
    out = downstream_response_headers(headers, drop=frozenset({b"etag"}))
    assert out == [(b"content-length", b"42"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


def test_downstream_lower_cases_names_from_any_upstream() -> None:
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Connection", b"X-Debug"),
        (b"X-Debug", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Set-Cookie", b"a=1"),
    ]
    out = downstream_response_headers(headers, drop=frozenset({b"set-cookie"}))
    assert out == [(b"content-type", b"application/json")]


# ---- client address ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # Untrusted peer: X-Forwarded-For is ignored whatever it says.
        ("203.0.113.7", b"1.2.3.4", "203.0.113.7"),
        ("203.0.113.7", b"10.0.0.1", "203.0.113.7"),
        ("203.0.113.7", None, "203.0.113.7"),
        # Trusted peer: the rightmost untrusted hop.
        ("10.0.0.2", b"198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", b"6.6.6.6, 198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", b"6.6.6.6, 198.51.100.1, 10.1.1.1", "198.51.100.1"),
        ("10.0.0.2", b"6.6.6.6,198.51.100.1 , 10.1.1.1,", "198.51.100.1"),
        ("10.0.0.2", b"10.3.3.3, 10.1.1.1", "10.3.3.3"),
        ("10.0.0.2", None, "10.0.0.2"),
        ("10.0.0.2", b"", "10.0.0.2"),
        # Garbage stops the walk at the last trusted hop, never returned as an address.
        ("10.0.0.2", b"198.51.100.1, not-an-ip", "10.0.0.2"),
        ("10.0.0.2", b"<script>, 10.1.1.1", "10.1.1.1"),
        ("10.0.0.2", b"198.51.100.1, 10.1.1.1, <script>", "10.0.0.2"),
        ("10.0.0.2", b"caf\xc3\xa9", "10.0.0.2"),
        ("10.0.0.2", b"01.2.3.4", "10.0.0.2"),
        # Ports and IPv6 forms are understood and normalised.
        ("10.0.0.2", b"198.51.100.1:5678", "198.51.100.1"),
        ("10.0.0.2", b"[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.2", b"2001:DB8:0:0::1", "2001:db8::1"),
        ("10.0.0.2", b"::ffff:198.51.100.1", "198.51.100.1"),
        ("::ffff:10.0.0.2", b"198.51.100.1", "198.51.100.1"),
        ("fd00::2", b"2001:db8::7, fd00::9", "2001:db8::7"),
        # No peer (unix socket): nothing to trust.
        (None, b"1.2.3.4", UNKNOWN_CLIENT),
        ("not-an-ip", b"1.2.3.4", "not-an-ip"),
    ],
)
def test_client_ip(peer: str | None, xff: bytes | None, expected: str) -> None:
    assert client_ip(peer, xff, TRUSTED) == expected


def test_client_ip_without_trusted_proxies_is_the_peer() -> None:
    assert client_ip("10.0.0.2", b"1.2.3.4", []) == "10.0.0.2"


def test_address_memo_stays_bounded() -> None:
    for i in range(3 * headers_module._ADDRESS_MEMO_ENTRIES):
        client_ip("10.0.0.2", f"198.51.{i // 256 % 256}.{i % 256}, junk{i}".encode(), TRUSTED)
    assert len(headers_module._address_memo) <= headers_module._ADDRESS_MEMO_ENTRIES
    assert client_ip("10.0.0.2", b"198.51.100.1", TRUSTED) == "198.51.100.1"


def test_client_ip_walk_is_bounded() -> None:
    chain = b", ".join([b"198.51.100.1"] + [b"10.0.0.9"] * (MAX_FORWARDED_HOPS + 50))
    assert client_ip("10.0.0.2", chain, TRUSTED) == "10.0.0.9"


# ---- framing ----------------------------------------------------------------------------------

FRAMING_OK = [
    [],
    [(b"content-length", b"0")],
    [(b"content-length", b"42")],
    [(b"content-length", b"007")],
    [(b"transfer-encoding", b"chunked")],
    [(b"transfer-encoding", b"Chunked")],
    [(b"host", b"x"), (b"accept", b"*/*")],
]

FRAMING_BAD = [
    ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], "both"),
    ([(b"transfer-encoding", b"chunked"), (b"content-length", b"5")], "both"),
    ([(b"content-length", b"5"), (b"content-length", b"5")], "more than once"),
    ([(b"content-length", b"5"), (b"content-length", b"6")], "more than once"),
    ([(b"content-length", b"5, 5")], "decimal"),
    ([(b"content-length", b"+5")], "decimal"),
    ([(b"content-length", b"-1")], "decimal"),
    ([(b"content-length", b"0x10")], "decimal"),
    ([(b"content-length", b"")], "decimal"),
    ([(b"content-length", b" 5")], "decimal"),
    ([(b"content-length", b"\xd9\xa5")], "decimal"),  # Arabic-Indic five: not an ASCII digit
    ([(b"content-length", b"1" * 30)], "too large"),
    ([(b"transfer-encoding", b"chunked, identity")], "exactly"),
    ([(b"transfer-encoding", b"identity")], "exactly"),
    ([(b"transfer-encoding", b"gzip, chunked")], "exactly"),
    ([(b"transfer-encoding", b" chunked")], "exactly"),
    ([(b"transfer-encoding", b"chunked\x0b")], "exactly"),
    ([(b"transfer-encoding", b"xchunked")], "exactly"),
    ([(b"transfer-encoding", b"chunk")], "exactly"),
    ([(b"transfer-encoding", b"")], "exactly"),
    ([(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], "more than once"),
]


@pytest.mark.parametrize("headers", FRAMING_OK)
def test_framing_ok(headers: H) -> None:
    assert has_conflicting_framing(headers) is None


@pytest.mark.parametrize(("headers", "reason"), FRAMING_BAD)
def test_framing_conflicts(headers: H, reason: str) -> None:
    problem = has_conflicting_framing(headers)
    assert problem is not None and reason in problem


def test_transfer_encoding_on_http_1_0() -> None:
    headers = [(b"transfer-encoding", b"chunked")]
    assert has_conflicting_framing(headers, http_version="1.1") is None
    assert "HTTP/1.0" in (has_conflicting_framing(headers, http_version="1.0") or "")
    assert has_conflicting_framing([(b"content-length", b"3")], http_version="1.0") is None


@pytest.mark.parametrize(
    ("headers", "version", "problem"),
    [
        ([(b"host", b"gw")], "1.1", None),
        ([], "2", None),
        ([], "1.0", None),
        ([], "1.1", "missing"),
        ([(b"host", b"a"), (b"host", b"b")], "1.1", "more than once"),
        ([(b"host", b"a"), (b"host", b"a")], "2", "more than once"),
        ([(b"host", b"")], "1.1", "empty"),
    ],
)
def test_host_problem(headers: H, version: str, problem: str | None) -> None:
    found = host_problem(headers, http_version=version)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


# ---- properties -------------------------------------------------------------------------------

_NAMES = st.sampled_from(
    [
        *sorted(HOP_BY_HOP),
        b"x-api-key",
        b"x-admin-key",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-real-ip",
        b"forwarded",
        b"via",
        b"x-heliox-tenant",
        b"content-length",
        b"cookie",
        b"accept",
        b"x-custom",
    ]
) | st.binary(min_size=1, max_size=12).map(bytes.lower)
_VALUES = st.sampled_from([b"", b"1", b"chunked", b"x-custom, cookie"]) | st.lists(
    _NAMES, max_size=4
).map(b", ".join)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=12)
_NEVER_UPSTREAM = HOP_BY_HOP | {b"x-api-key", b"x-admin-key", b"host"}
_GATEWAY_SET = [b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"via"]


@given(
    _HEADERS,
    st.booleans(),
    st.frozensets(_NAMES, max_size=3),
    st.none() | st.frozensets(_NAMES, max_size=4),
)
def test_upstream_never_carries_hop_by_hop_or_keys(
    headers: H, trusted: bool, drop: frozenset[bytes], keep: frozenset[bytes] | None
) -> None:
    out = upstream(headers, trusted=trusted, peer="10.0.0.2", drop=drop, keep=keep)
    sent = names(out)
    assert not _NEVER_UPSTREAM.intersection(sent)
    assert not [n for n in sent if b"_" in n]
    if keep is not None:
        assert set(sent) <= keep | GATEWAY_REQUEST_HEADERS
    assert not [n for n in sent if n.startswith(b"x-heliox-")]
    for name in _GATEWAY_SET:
        assert sent.count(name) == 1
    assert header_values(out, b"x-real-ip") == [b"203.0.113.7"]
    assert header_values(out, b"via")[0].endswith(b"1.1 heliox")
    if not trusted:
        assert header_values(out, b"x-forwarded-for") == [b"203.0.113.7"]
        assert b"forwarded" not in sent


@given(_HEADERS, st.frozensets(_NAMES, max_size=3))
def test_downstream_never_carries_hop_by_hop(headers: H, drop: frozenset[bytes]) -> None:
    out = downstream_response_headers(headers, drop=drop)
    assert not HOP_BY_HOP.intersection(names(out))
    assert not drop.intersection(names(out))
    # Whatever survives keeps its original relative order.
    remaining = iter(headers)
    assert all(pair in remaining for pair in out)


@given(
    st.one_of(st.none(), st.ip_addresses().map(str), st.sampled_from(["10.0.0.2", "fd00::2"])),
    st.lists(
        st.one_of(st.ip_addresses().map(str), st.sampled_from(["10.9.9.9", "", "x"]), st.text()),
        max_size=6,
    ).map(lambda parts: ",".join(parts).encode("utf-8")),
)
def test_client_ip_is_the_peer_or_a_real_address(peer: str | None, xff: bytes) -> None:
    found = client_ip(peer, xff, TRUSTED)
    if peer is None:
        assert found == UNKNOWN_CLIENT
        return
    if not any(ip_address(peer) in network for network in TRUSTED):
        assert found == peer
    else:
        # Never text the client chose that is not an address.
        assert str(ip_address(found)) == found


def test_peer_is_trusted_uses_the_same_address_rules_as_client_ip() -> None:
    from ipaddress import ip_network

    from heliox.core.headers import peer_is_trusted

    nets = [ip_network("10.0.0.0/8")]
    assert peer_is_trusted("10.1.2.3", nets)
    assert peer_is_trusted("::ffff:10.1.2.3", nets)  # IPv4-mapped spelling of the same proxy
    assert not peer_is_trusted("192.0.2.1", nets)
    assert not peer_is_trusted("not-an-address", nets)
    assert not peer_is_trusted(None, nets)
    assert not peer_is_trusted("10.1.2.3", [])


def test_request_client_ip_reads_every_forwarded_line_only_behind_a_trusted_proxy() -> None:
    lines = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"192.0.2.9")]
    assert request_client_ip("10.0.0.2", lines, TRUSTED) == "192.0.2.9"  # the last line's
    assert request_client_ip("10.0.0.2", lines, []) == "10.0.0.2"
    assert request_client_ip("192.0.2.7", lines, TRUSTED) == "192.0.2.7"
