"""Header hygiene for the proxy in both directions, on ASGI header lists.

Request header names are bytes and lower-case, as ASGI servers deliver them (granian and uvicorn
do); the request functions rely on that instead of lower-casing each name on every request.
Response headers come from whatever upstream and client library, so those are lower-cased here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

__all__ = [
    "CACHE_FILL_FORWARDED",
    "GATEWAY_REQUEST_HEADERS",
    "HOP_BY_HOP",
    "MAX_FORWARDED_HOPS",
    "UNKNOWN_CLIENT",
    "cache_fill_forwarded",
    "client_ip",
    "downstream_response_headers",
    "has_conflicting_framing",
    "header_value",
    "header_values",
    "host_problem",
    "is_valid_header_value",
    "request_client_ip",
    "upstream_request_headers",
]

Headers = Sequence[tuple[bytes, bytes]]
IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

UNKNOWN_CLIENT = "unknown"  # client_ip() when the server gave no peer address (unix socket)
MAX_FORWARDED_HOPS = 16  # X-Forwarded-For entries walked at most: bounds the per-request work

# Never forwarded upstream: hop-by-hop, the client's Host (the upstream client sets its own),
# credentials meant for the gateway, per-hop negotiation the gateway already answered, and
# overrides that would make the upstream serve another path or method than the one the gateway
# routed, authorised, rate-limited and cached.
_REQUEST_STRIP = HOP_BY_HOP | {
    b"host",
    b"x-api-key",
    b"x-admin-key",
    b"x-real-ip",
    b"expect",
    b"http2-settings",
    b"x-original-url",
    b"x-rewrite-url",
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
}
# Client-address claims an upstream might believe: kept only from a trusted proxy.
_ADDRESS_CLAIMS = frozenset(
    {
        b"forwarded",
        b"x-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-originating-ip",
    }
)
# A Connection header may name these, but they are never removed because of it: they carry the
# message framing or are set by the gateway itself.
_UNNAMEABLE = frozenset(
    {
        b"content-length",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-real-ip",
    }
)

_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"

# What the gateway itself sets on every upstream request (`upstream_request_headers`, then the
# pipeline's X-Request-Id): never subject to a `keep` list.
GATEWAY_REQUEST_HEADERS: frozenset[bytes] = frozenset(
    {_XFF, _XFP, _XFH, b"x-real-ip", b"via", b"x-request-id"}
)

# The client request headers a cache fill forwards although the cache key does not hold them.
# Only headers whose effect on a stored answer the cache already accounts for belong here:
# `Authorization` makes a response storable only when the upstream marks it shareable (RFC 9111
# §3.5, `heliox.core.freshness.storable`). Everything else that could select or shape the answer
# (Accept*, User-Agent, Origin, Cookie, X-Host, ...) reaches the upstream only when the policy
# lists it among its vary headers, which puts it in the key: CloudFront's rule, where a viewer
# header goes to the origin only through the cache policy (keyed) or an origin request policy.
# The client's preconditions and Range never go either: the cache sends its own validators.
CACHE_FILL_FORWARDED: frozenset[bytes] = frozenset({b"authorization"})


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of header `name` (lower-case), in order."""
    # A loop, not a comprehension: on Python 3.11 a comprehension builds a function object and a
    # frame each time it runs, and this runs several times per request.
    values: list[bytes] = []
    for key, value in headers:
        if key == name:
            values.append(value)
    return values


def is_valid_header_value(value: bytes) -> bool:
    """False when `value` holds NUL, CR or LF (header injection / response splitting)."""
    return b"\n" not in value and b"\r" not in value and b"\x00" not in value


def _tokens(value: bytes) -> frozenset[bytes]:
    names = set()
    for token in value.split(b","):
        token = token.strip(b" \t").lower()
        if token:
            names.add(token)
    # Hop-by-hop names go anyway; what is left is what the Connection header adds.
    return frozenset(names) - _UNNAMEABLE - HOP_BY_HOP


# Nearly every Connection value is "keep-alive" or "close" in some spelling: remember them.
_CONNECTION_MEMO_ENTRIES = 256
_connection_memo: dict[bytes, frozenset[bytes]] = {}


def _connection_named(values: list[bytes]) -> frozenset[bytes]:
    """The header names a message's Connection values declare hop-by-hop."""
    if len(values) != 1:
        return _tokens(b",".join(values))
    value = values[0]
    found = _connection_memo.get(value)
    if found is None:
        found = _tokens(value)
        if len(value) <= 64:
            if len(_connection_memo) >= _CONNECTION_MEMO_ENTRIES:
                _connection_memo.clear()
            _connection_memo[value] = found
    return found


def _read_ip(text: bytes) -> IPAddress | None:
    text = text.strip(b" \t")
    try:
        address = ip_address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        # Some load balancers write "1.2.3.4:5678" or "[2001:db8::1]:443".
        if text.startswith(b"["):
            host = text[1:].partition(b"]")[0]
        elif text.count(b":") == 1:
            host = text.partition(b":")[0]
        else:
            return None
        try:
            address = ip_address(host.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# Parsing an address costs microseconds and the same few (the peer proxies, busy clients) come
# back on every request, so parses are remembered; emptied when full to stay bounded.
_ADDRESS_MEMO_ENTRIES = 4096
_address_memo: dict[bytes, tuple[IPAddress, str] | None] = {}


def _parse_ip(text: bytes) -> tuple[IPAddress, str] | None:
    """The address in `text` and its canonical spelling, or None when it holds none."""
    try:
        return _address_memo[text]
    except KeyError:
        pass
    address = _read_ip(text) if len(text) <= 64 else None
    found = None if address is None else (address, str(address))
    if len(_address_memo) >= _ADDRESS_MEMO_ENTRIES:
        _address_memo.clear()
    _address_memo[text] = found
    return found


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted)


def peer_is_trusted(peer: str | None, trusted: Sequence[IPNetwork]) -> bool:
    """Whether the connection's peer is one of the configured proxies."""
    if not trusted or not peer:
        return False
    found = _parse_ip(peer.encode("latin-1"))
    return found is not None and _is_trusted(found[0], trusted)


def client_ip(peer: str | None, x_forwarded_for: bytes | None, trusted: Sequence[IPNetwork]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy.

    `x_forwarded_for` is every X-Forwarded-For value joined with b",". It is read only when the
    peer is in `trusted`, right to left, skipping trusted hops: the first untrusted entry is the
    address a trusted proxy saw, whatever the client wrote to its left. An unparsable entry ends
    the walk at the last trusted hop rather than handing on text the client chose. Addresses
    read from the header come back in canonical form, so one client has one spelling.
    """
    if peer is None:
        return UNKNOWN_CLIENT
    if not trusted:
        return peer
    current = _parse_ip(peer.encode("ascii", "replace"))
    if current is None or not _is_trusted(current[0], trusted):
        return peer
    if x_forwarded_for:
        entries = x_forwarded_for.split(b",")
        for entry in reversed(entries[-MAX_FORWARDED_HOPS:]):
            if not entry.strip(b" \t"):
                continue
            found = _parse_ip(entry)
            if found is None:
                break
            current = found
            if not _is_trusted(found[0], trusted):
                break
    return current[1]


def request_client_ip(peer: str | None, headers: Headers, trusted: Sequence[IPNetwork]) -> str:
    """`client_ip` of a request: X-Forwarded-For is read only behind a trusted proxy, and then
    every line of it, as some proxies (HAProxy) add their own line instead of extending the
    client's."""
    if not trusted:
        return client_ip(peer, None, trusted)
    lines = header_values(headers, _XFF)
    return client_ip(peer, b",".join(lines) if lines else None, trusted)


@lru_cache(maxsize=1024)
def cache_fill_forwarded(vary_headers: tuple[str, ...]) -> frozenset[bytes]:
    """The client request headers (lower-case) a cache fill under a policy keyed on
    `vary_headers` may send upstream: the keyed ones and `CACHE_FILL_FORWARDED`.

    The `keep` argument of `upstream_request_headers` for fills; memoised, as there is one
    answer per policy.
    """
    return CACHE_FILL_FORWARDED | {name.lower().encode("latin-1") for name in vary_headers}


def forwarded_as_sent(name: bytes) -> bool:
    """Whether `upstream_request_headers` passes the client's values of `name` (lower-case) on
    unchanged, as long as no Connection header names it."""
    return not (
        0x5F in name  # "_"
        or name in _REQUEST_STRIP
        or name in _ADDRESS_CLAIMS
        or name == b"via"
        or name == b"content-length"
        or name.startswith((b"x-heliox-", b"x-forwarded-"))
    )


def upstream_request_headers(
    headers: Headers,
    *,
    client_ip: str,
    peer_is_trusted: bool,
    proto: str,
    host: bytes,
    via: bytes,
    drop: frozenset[bytes] = frozenset(),
    peer: str | None = None,
    keep: frozenset[bytes] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The client's headers as they may be sent upstream, plus the gateway's forwarding headers.

    Removed: hop-by-hop headers and those the client's Connection header names, Host, the API
    and admin keys, internal X-Heliox-*, Expect, path and method overrides (X-Original-URL,
    X-HTTP-Method-Override, ...), any name with an underscore, and anything in `drop`. With
    `keep`, of the client's own headers only those it names go at all (a cache fill: see
    `cache_fill_forwarded`). Client-sent X-Forwarded-*, Forwarded,
    X-Real-IP and other client-address claims are removed unless the peer is a trusted proxy;
    then X-Forwarded-For is extended with `peer` (default: `client_ip`) and the rest kept. The
    gateway then sets X-Forwarded-For/-Proto/-Host, X-Real-IP and appends `via` to Via; `drop`
    and Connection only ever act on what the client sent, never on these.
    Content-Length is kept: the body is forwarded as received.
    """
    out: list[tuple[bytes, bytes]] = []
    connection: list[bytes] = []
    prior_xff: list[bytes] = []
    prior_via: list[bytes] = []
    for name, value in headers:
        if name in _REQUEST_STRIP:
            if name == b"connection":
                connection.append(value)
            continue
        # Underscores: CGI-style upstreams (PHP, WSGI, Rack, ...) read `X_Real_IP` as the
        # X-Real-IP the gateway vouches for, and `X_API_KEY` as the key; nginx drops such
        # names by default (`underscores_in_headers off`). 0x5F is "_": an int is a plain
        # memchr, several times cheaper than a bytes needle.
        if name in drop or name.startswith(b"x-heliox-") or 0x5F in name:
            continue
        if name.startswith(b"x-forwarded-"):
            if peer_is_trusted:
                if name == _XFF:
                    prior_xff.append(value)
                elif name != _XFP and name != _XFH and (keep is None or name in keep):
                    out.append((name, value))
        elif name in _ADDRESS_CLAIMS:
            if peer_is_trusted and (keep is None or name in keep):
                out.append((name, value))
        elif name == b"via":
            prior_via.append(value)
        elif keep is None or name in keep:
            out.append((name, value))
    if connection:
        named = _connection_named(connection)
        if named:
            out = [(name, value) for name, value in out if name not in named]

    address = client_ip.encode("ascii", "replace")
    if prior_xff:
        hop = (peer if peer is not None else client_ip).encode("ascii", "replace")
        out.append((_XFF, b", ".join([*prior_xff, hop])))
    else:
        out.append((_XFF, address))
    out.append((_XFP, proto.encode("ascii", "replace")))
    if host and is_valid_header_value(host):
        out.append((_XFH, host))
    out.append((b"x-real-ip", address))
    prior_via.append(via)
    out.append((b"via", b", ".join(prior_via)))
    return out


def downstream_response_headers(
    headers: Headers, *, drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as they may be sent to the client.

    Hop-by-hop headers (Transfer-Encoding among them: the server re-frames the body) and those
    the upstream's Connection header names are removed, as is anything in `drop` (lower-case).
    Names come out lower-case whatever case the upstream used. Content-Length is kept.
    """
    kept: list[tuple[bytes, bytes]] = []
    connection: list[bytes] = []
    for name, value in headers:
        name = name.lower()
        if name in HOP_BY_HOP:
            if name == b"connection":
                connection.append(value)
        elif name not in drop:
            kept.append((name, value))
    if connection:
        named = _connection_named(connection)
        if named:
            kept = [(name, value) for name, value in kept if name not in named]
    return kept


def has_conflicting_framing(headers: Headers, *, http_version: str | None = None) -> str | None:
    """Why the request's body framing is ambiguous (a smuggling vector), or None when it is not.

    RFC 9112 §6.1-6.3: Content-Length must be one run of digits, sent once; Transfer-Encoding
    must be exactly "chunked" (any case), sent once, never beside Content-Length and never on
    HTTP/1.0. Stricter than the RFC's "may accept identical duplicates", as proxies should be.
    """
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    for name, value in headers:
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            encodings.append(value)
    if not lengths and not encodings:
        return None
    if lengths and encodings:
        return "both Content-Length and Transfer-Encoding are present"
    if encodings:
        if http_version == "1.0":
            return "Transfer-Encoding is not allowed on HTTP/1.0"
        if len(encodings) > 1:
            return "Transfer-Encoding is sent more than once"
        if encodings[0].lower() != b"chunked":
            return "Transfer-Encoding must be exactly 'chunked'"
        return None
    if len(lengths) > 1:
        return "Content-Length is sent more than once"
    length = lengths[0]
    if not length.isdigit():
        return "Content-Length must be a non-negative decimal number"
    if len(length) > 18:
        return "Content-Length is too large"
    return None


def host_problem(headers: Headers, *, http_version: str | None = None) -> str | None:
    """Why the request's Host header is unacceptable (RFC 9112 §3.2), or None.

    HTTP/1.1 requires exactly one Host; HTTP/2 may carry the authority elsewhere, so only
    duplicates are refused there.
    """
    hosts = header_values(headers, b"host")
    if len(hosts) > 1:
        return "Host is sent more than once"
    if not hosts or not hosts[0]:
        # granian hands the application an empty Host when the client sent none.
        return "Host header is missing or empty" if http_version == "1.1" else None
    if _HOST.fullmatch(hosts[0]) is None:
        return "Host header is malformed: expected host[:port]"
    return None


# RFC 9110 §7.2 / RFC 3986 §3.2.2: uri-host [":" port]; no userinfo, path, spaces or controls.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{0,5})?")
