"""Data-plane path parsing: one canonical path per request, decoded exactly once.

`/g/{route}/{path}` is split on the raw (still percent-encoded) bytes, the remainder decoded once,
slashes collapsed and dot segments resolved. The result is what routing, auth, the rate-limit key,
the cache key and the forwarded request line all use, so no two layers can disagree about it.

Decoding comes first, so an encoded slash separates segments like a raw one ("..%2f" is "../")
and a decoded "%" is just a character: "%252e" reaches the upstream as "%252e", never as ".".
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BadPath", "GatewayPath", "join_upstream_path", "parse_gateway_path"]

_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ROUTE_CHARS = _ALNUM + b"_.-"
# RFC 3986 pchar minus pct-encoded: unreserved / sub-delims / ":" / "@".
_PCHAR = _ALNUM + b"-._~" + b"!$&'()*+,;=" + b":@"
_PCHAR_OR_SLASH = _PCHAR + b"/"
_CONTROL = bytes(range(0x20)) + b"\x7f"
_HEX = b"0123456789abcdefABCDEF"

_UNESCAPE = {bytes((hi, lo)): bytes((int(bytes((hi, lo)), 16),)) for hi in _HEX for lo in _HEX}
# For str.translate over UTF-8 bytes read as Latin-1: one code point per byte.
_ESCAPE = {b: f"%{b:02X}" for b in range(256) if b not in _PCHAR_OR_SLASH}
_SHOWN = 120  # how much of a hostile path a message quotes


class BadPath(ValueError):
    """A data-plane path the gateway refuses (400); `detail` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class GatewayPath:
    """A data-plane request's route name and canonical path."""

    route: str
    path: str  # canonical decoded path under the route, starts with "/"
    encoded: str  # `path` percent-encoded for the upstream request line


# Requests repeat paths: a hit skips the parse and its allocations. Only short accepted paths
# are kept and the map is emptied when full, so its memory stays bounded whatever clients send.
_MEMO_ENTRIES = 4096
_MEMO_MAX_PATH = 256
_memo: dict[tuple[bytes, bytes], GatewayPath] = {}


def _show(raw: bytes) -> str:
    text = raw[:_SHOWN].decode("utf-8", "backslashreplace")
    return repr(text) + ("..." if len(raw) > _SHOWN else "")


def _percent_decode(raw: bytes) -> bytes:
    if b"%" not in raw:
        return raw
    head, *rest = raw.split(b"%")
    out = [head]
    for chunk in rest:
        byte = _UNESCAPE.get(chunk[:2])
        if byte is None:
            raise BadPath(f"bad percent escape in path: {_show(b'%' + chunk[:2])}")
        out.append(byte)
        out.append(chunk[2:])
    return b"".join(out)


def _canonical(path: str, raw: bytes) -> str:
    """Collapse repeated slashes and resolve dot segments, refusing to climb above the root."""
    kept: list[str] = []
    trailing = False
    for segment in path.split("/"):
        # A segment's parameters (";...") do not hide a dot segment: "..;x" climbs like "..".
        head = segment.partition(";")[0] if ";" in segment else segment
        if not segment or head == ".":
            trailing = True
        elif head == "..":
            if not kept:
                raise BadPath(f"path climbs above the route's base: {_show(raw)}")
            kept.pop()
            trailing = True
        else:
            kept.append(segment)
            trailing = False
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if trailing else "")


def _encode(path: str) -> str:
    data = path.encode("utf-8")
    if not data.translate(None, _PCHAR_OR_SLASH):
        return path
    return data.decode("latin-1").translate(_ESCAPE)


def parse_gateway_path(raw_path: bytes, prefix: bytes = b"/g/") -> GatewayPath | None:
    """Split an ASGI `raw_path` into route and canonical path.

    None when `raw_path` is not under `prefix`; BadPath when it is but cannot be served safely.
    """
    if not raw_path.startswith(prefix):
        return None
    if len(raw_path) > _MEMO_MAX_PATH:
        return _parse(raw_path, prefix)
    key = (prefix, raw_path)
    found = _memo.get(key)
    if found is None:
        found = _parse(raw_path, prefix)
        if len(_memo) >= _MEMO_ENTRIES:
            _memo.clear()
        _memo[key] = found
    return found


def _parse(raw_path: bytes, prefix: bytes) -> GatewayPath:
    start = len(prefix)
    slash = raw_path.find(b"/", start)
    if slash < 0:
        slash = len(raw_path)
    route_raw = raw_path[start:slash]
    tail = raw_path[slash:]  # b"" or starts with "/"
    # The route name is matched on the raw bytes: "%64emo" must not reach route "demo".
    if not route_raw:
        shape = prefix.decode("latin-1") + "{route}/{path}"
        raise BadPath(f"missing route name: expected {shape}")
    if route_raw.translate(None, _ROUTE_CHARS) or route_raw in (b".", b".."):
        raise BadPath(f"route name must match [A-Za-z0-9_.-]+ (no encoding): {_show(route_raw)}")
    route = route_raw.decode("ascii")

    # Fast path: nothing to decode, encode or normalise.
    if not tail.translate(None, _PCHAR_OR_SLASH) and b"//" not in tail and b"/." not in tail:
        path = tail.decode("ascii") or "/"
        return GatewayPath(route, path, path)

    # "#" never belongs to a path and "?" means the query was not split off: both are ambiguous.
    if b"#" in tail:
        raise BadPath("raw '#' in path: a fragment is never sent to a server; encode it as %23")
    if b"?" in tail:
        raise BadPath("raw '?' in path: the query string must not be part of the path")
    decoded = _percent_decode(tail)
    if decoded.translate(None, _CONTROL) != decoded:
        raise BadPath(f"path contains a NUL or control character: {_show(tail)}")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath(f"path is not valid UTF-8 once decoded: {_show(tail)}") from None
    path = _canonical(text, tail)
    return GatewayPath(route, path, _encode(path))


def join_upstream_path(base_path: str, encoded: str) -> str:
    """The upstream request-line path: the route's base path followed by the encoded path.

    A plain join of two checked parts, never `urljoin`: the result always starts with a single
    "/", so it cannot be read as an authority ("//evil.com") or a scheme.
    """
    if not encoded.startswith("/") or encoded.startswith("//"):
        raise ValueError(f"encoded path must start with a single '/': {encoded[:_SHOWN]!r}")
    base = base_path.rstrip("/")
    if base and (
        base[0] != "/" or base.startswith("//") or "?" in base or "#" in base or "\\" in base
    ):
        raise ValueError(f"base path must be '' or start with a single '/': {base_path!r}")
    return base + encoded
