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
import struct
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


def _query_parts(raw_query: bytes) -> list[bytes]:
    # Each pair normalised whole: escapes never touch "=" or "&" (not unreserved), so this is
    # the name and value normalised apart, and "a" (no value) stays distinct from "a=".
    parts = [_normalise_component(p) for p in raw_query.split(b"&") if p]
    if len(parts) > 1:
        parts.sort(key=_part_name)  # stable: same-name values keep their order
    return parts


def _part_name(part: bytes) -> bytes:
    return part.partition(b"=")[0]


def canonical_query(raw_query: bytes) -> list[Pair]:
    """Query pairs as the key sees them: normalised, sorted by name; value None means no `=`."""
    pairs: list[Pair] = []
    for part in _query_parts(raw_query) if raw_query else ():
        name, eq, value = part.partition(b"=")
        pairs.append((name, value if eq else None))
    return pairs


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


def _text(value: str) -> bytes:
    # surrogatepass is injective on every str, so distinct paths can never encode alike.
    return value.encode("utf-8", "surrogatepass")


def _digest(head: tuple[int, ...], parts: list[bytes], person: bytes) -> str:
    """Hash of `parts` behind a header of section counts and every part's length.

    With all lengths up front the byte string parses back to exactly one list of parts, so
    different requests cannot produce the same input to the hash.
    """
    lengths = [len(part) for part in parts]
    header = struct.pack(f">{len(head) + 1 + len(lengths)}I", *head, len(parts), *lengths)
    return blake2b(header + b"".join(parts), digest_size=16, person=person).hexdigest()


def cache_key(
    method: str,
    route_name: str,
    canonical_path: str,
    raw_query: bytes,
    vary: Sequence[tuple[str, bytes | None]],
    tenant_id: int | None,
) -> str:
    """The entry key for a request; `tenant_id` None means the route's shared cache."""
    parts = [
        _text(lookup_method(method)),
        _text(route_name),
        _text(canonical_path),
        b"*" if tenant_id is None else b"t%d" % tenant_id,
    ]
    query = _query_parts(raw_query) if raw_query else []
    parts += query
    if vary:
        for name, value in sorted((name.lower(), value) for name, value in vary):
            parts.append(_text(name))
            # Absent and empty are different requests: an upstream may answer them differently.
            parts.append(b"-" if value is None else b"=" + normalise_header_value(value))
    return "c:" + _digest((len(query), len(vary)), parts, _CACHE_PERSON)


def uri_key(route_name: str, canonical_path: str, raw_query: bytes) -> str:
    """The key shared by every entry of one URL (any method, variant or tenant): for purges."""
    parts = [_text(route_name), _text(canonical_path)]
    parts += _query_parts(raw_query) if raw_query else []
    return "u:" + _digest((), parts, _URI_PERSON)
