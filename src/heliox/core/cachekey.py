"""Cache keys: one short, stable string per distinct cacheable request.

Every part (method, route, canonical path, each query pair, each vary header, tenant) is
length-prefixed before hashing, so no two different requests can build the same byte string and
therefore the same key (bar a 128-bit hash collision). HEAD maps to the GET entry.

Query strings are normalised, never reinterpreted: pairs are sorted by name (a stable sort, so
repeated names keep their relative order: `?a=1&a=2` and `?a=2&a=1` may mean different things to
the upstream and stay different keys), empty pairs (`&&`) are dropped, blank values are kept
(`?a=` differs from `?a`), and percent-escapes are decoded once and only where RFC 3986 §6.2.2.2
says that changes nothing (unreserved characters); other escapes only have their hex upper-cased.
So `+`, `%20` and `%2B` stay three different keys, as they can be three different requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from hashlib import blake2b

__all__ = [
    "cache_key",
    "canonical_query",
    "lookup_method",
    "normalise_header_value",
    "uri_key",
    "vary_values",
]

Pair = tuple[bytes, bytes | None]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_WS_RUN = re.compile(rb"[ \t]+")
_AROUND_COMMA = re.compile(rb" ?, ?")
_CACHE_PERSON = b"heliox-cache-v1"  # blake2b personalisation: bump to invalidate every key
_URI_PERSON = b"heliox-uri-v1"


def _unescape_unreserved(match: re.Match[bytes]) -> bytes:
    code = int(match.group(1), 16)
    if code in _UNRESERVED:
        return bytes((code,))
    return b"%" + match.group(1).upper()


def _normalise_component(raw: bytes) -> bytes:
    if b"%" not in raw:
        return raw
    return _ESCAPE.sub(_unescape_unreserved, raw)


def canonical_query(raw_query: bytes) -> list[Pair]:
    """Query pairs as the key sees them: normalised, sorted by name; value None means no `=`."""
    if not raw_query:
        return []
    pairs: list[Pair] = []
    for part in raw_query.split(b"&"):
        if not part:
            continue
        name, eq, value = part.partition(b"=")
        pairs.append((_normalise_component(name), _normalise_component(value) if eq else None))
    pairs.sort(key=_pair_name)
    return pairs


def _pair_name(pair: Pair) -> bytes:
    return pair[0]


def normalise_header_value(value: bytes) -> bytes:
    """Trim, collapse whitespace runs and drop whitespace around commas."""
    value = value.strip(b" \t")
    if b" " in value or b"\t" in value:
        value = _AROUND_COMMA.sub(b",", _WS_RUN.sub(b" ", value))
    return value


def vary_values(
    names: Iterable[str], request_headers: Iterable[tuple[bytes, bytes]]
) -> list[tuple[str, bytes | None]]:
    """The request's values for the vary header `names` (lower-case), repeated lines joined."""
    wanted = {name.encode("latin-1"): name for name in names}
    found: dict[str, list[bytes]] = {}
    for key, value in request_headers:
        name = wanted.get(key)
        if name is not None:
            found.setdefault(name, []).append(value)
    return [(name, b",".join(found[name]) if name in found else None) for name in wanted.values()]


def lookup_method(method: str) -> str:
    """The method whose entry answers `method`: a HEAD is answered from the GET entry."""
    return "GET" if method == "HEAD" else method


def _put(out: bytearray, part: bytes) -> None:
    out += b"%d:" % len(part)
    out += part


def _text(value: str) -> bytes:
    # surrogatepass is injective on every str, so distinct paths can never encode alike.
    return value.encode("utf-8", "surrogatepass")


def _put_query(out: bytearray, raw_query: bytes) -> None:
    pairs = canonical_query(raw_query)
    _put(out, b"%d" % len(pairs))
    for name, value in pairs:
        _put(out, name)
        _put(out, b"-" if value is None else b"=" + value)


def cache_key(
    method: str,
    route_name: str,
    canonical_path: str,
    raw_query: bytes,
    vary: Sequence[tuple[str, bytes | None]],
    tenant_id: int | None,
) -> str:
    """The entry key for a request; `tenant_id` None means the route's shared cache."""
    out = bytearray()
    _put(out, _text(lookup_method(method)))
    _put(out, _text(route_name))
    _put(out, _text(canonical_path))
    _put_query(out, raw_query)
    headers = sorted((name.lower(), value) for name, value in vary)
    _put(out, b"%d" % len(headers))
    for name, value in headers:
        _put(out, _text(name))
        # Absent and empty are different requests: an upstream may answer them differently.
        _put(out, b"-" if value is None else b"=" + normalise_header_value(value))
    _put(out, b"*" if tenant_id is None else b"t%d" % tenant_id)
    return "c:" + blake2b(bytes(out), digest_size=16, person=_CACHE_PERSON).hexdigest()


def uri_key(route_name: str, canonical_path: str, raw_query: bytes) -> str:
    """The key shared by every entry of one URL (any method, variant or tenant): for purges."""
    out = bytearray()
    _put(out, _text(route_name))
    _put(out, _text(canonical_path))
    _put_query(out, raw_query)
    return "u:" + blake2b(bytes(out), digest_size=16, person=_URI_PERSON).hexdigest()
