"""Variants of one URL selected by the response's `Vary` (RFC 9111 §4.1): the pure part.

The policy's `vary_headers` are always in the key (`heliox.core.cachekey`). A response may name
more in `Vary`; its variants are then stored each under its own key, and the URL's primary key
holds a small variant index instead of an entry: the header names the variants are selected by,
their keys in storage order (oldest first, at most the policy's `max_variants`) and the
content-codings they were served with.

Accept-Encoding is keyed on what the request would be served, not on its spelling: among the
codings the URL's variants were served with, the one the request accepts with the highest q
("identity" when it accepts none of them). A response is stored under the coding it was actually
served with (its Content-Encoding), so the countless Accept-Encoding strings clients send
collapse to one variant per coding. A request without Accept-Encoding is taken to want
"identity" only: RFC 9110 §12.5.3 would allow any coding, but no client that omits it expects a
compressed body.

A fill forwards a rebuilt Accept-Encoding, never the client's string (`forwarded_accept_encoding`):
only well-known codings, in the client's order of preference, so an upstream that echoes the field
cannot put anything into a variant other clients share. A response with a content-coding to a fill
that offered codings is keyed on Accept-Encoding even if its Vary forgets to say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from heliox.core.cachecontrol import joined, parse_vary
from heliox.core.cachekey import vary_values

__all__ = [
    "ACCEPT_ENCODING",
    "IDENTITY",
    "VARIANT_MARK",
    "VariantIndex",
    "accepts_coding",
    "added",
    "content_coding",
    "forwarded_accept_encoding",
    "parse_accept_encoding",
    "response_vary",
    "select_coding",
    "variant_vary",
]

Headers = Sequence[tuple[bytes, bytes]]

ACCEPT_ENCODING = "accept-encoding"
IDENTITY = "identity"
# A pseudo vary name (a colon cannot start a header name) that keeps variant keys apart from
# every key a policy's own vary headers can produce.
VARIANT_MARK = ":variant"
# The codings a fill may offer the upstream; anything else the client names stays behind.
KNOWN_CODINGS = ("gzip", "br", "zstd", "deflate", "compress", "x-gzip", "identity")
_INDEX_MAGIC = b"HXV1"
_MAX_NAMES = 16  # a Vary naming more is not worth keying on: such responses are not stored
_MAX_ENCODINGS = 8  # the codings an index remembers; the oldest seen goes first


def parse_accept_encoding(value: bytes | None) -> dict[str, float]:
    """Coding (lower-case, "*" included) → q, as the request states them; bad q-values read 0."""
    out: dict[str, float] = {}
    if not value:
        return out
    for part in value.decode("latin-1").split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip(" \t").lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, raw = param.partition("=")
            if key.strip(" \t").lower() == "q":
                try:
                    q = float(raw.strip(" \t"))
                except ValueError:
                    q = 0.0
                q = min(max(q, 0.0), 1.0)
        out.setdefault(coding, q)  # the first mention counts
    return out


def _q(accepted: dict[str, float], coding: str) -> tuple[float, bool]:
    """The q the request gives `coding`, and whether it named it (or "*") explicitly."""
    if coding in accepted:
        return accepted[coding], True
    if coding == "x-gzip" and "gzip" in accepted:
        return accepted["gzip"], True
    if coding == "gzip" and "x-gzip" in accepted:
        return accepted["x-gzip"], True
    if "*" in accepted:
        return accepted["*"], True
    # RFC 9110 §12.5.3: identity is acceptable unless refused; nothing else is without naming it.
    return (1.0, False) if coding == IDENTITY else (0.0, False)


def _coding_q(accepted: dict[str, float], coding: str) -> tuple[float, bool]:
    # A stacked coding ("gzip, br") needs every layer accepted; it is as wanted as its least.
    parts = [part for part in coding.split(",") if part]
    scores = [_q(accepted, part) for part in parts] or [_q(accepted, IDENTITY)]
    return min(score for score, _ in scores), all(named for _, named in scores)


def select_coding(accept_encoding: bytes | None, encodings: Iterable[str]) -> str:
    """The coding, among `encodings`, a request with this Accept-Encoding would be served: the
    one it accepts with the highest q (named before implied, a compressed one before identity
    on a tie), else "identity"."""
    accepted = parse_accept_encoding(accept_encoding)
    best: tuple[float, bool, bool] | None = None
    chosen = IDENTITY
    for coding in encodings:
        q, named = _coding_q(accepted, coding)
        if q <= 0:
            continue
        rank = (q, named, coding != IDENTITY)
        if best is None or rank > best:
            best, chosen = rank, coding
    return chosen


def accepts_coding(accept_encoding: bytes | None, coding: str) -> bool:
    """Whether a response served with `coding` may go to a request with this Accept-Encoding."""
    if coding == IDENTITY:
        return True  # what every request is keyed on when it accepts nothing stored
    return _coding_q(parse_accept_encoding(accept_encoding), coding)[0] > 0


def content_coding(response_headers: Headers) -> str:
    """The response's content-coding as a key value: lower-case, layers joined by ",";
    "identity" without one."""
    value = joined(response_headers, b"content-encoding")
    if value is None:
        return IDENTITY
    layers = [
        part.strip(" \t").lower() for part in value.decode("latin-1").split(",") if part.strip()
    ]
    layers = [layer for layer in layers if layer != IDENTITY]
    return ",".join(layers) if layers else IDENTITY


def forwarded_accept_encoding(request_headers: Headers) -> bytes | None:
    """The Accept-Encoding a fill sends upstream: the well-known codings the client accepts, in
    its order of preference, without q-values; None when that leaves nothing but identity."""
    accepted = parse_accept_encoding(joined(request_headers, b"accept-encoding"))
    wanted = [
        (q, i, coding)
        for i, (coding, q) in enumerate(accepted.items())
        if q > 0 and coding in KNOWN_CODINGS and coding != IDENTITY
    ]
    if not wanted:
        return None
    wanted.sort(key=lambda item: (-item[0], item[1]))
    return ", ".join(coding for _, _, coding in wanted).encode("ascii")


def response_vary(
    policy_names: Iterable[str], response_headers: Headers, *, offered_codings: bool = False
) -> tuple[str, ...] | None:
    """The names (sorted, lower-case) beyond the policy's that the response's variant is
    selected by; () when none; None when it cannot be keyed (`Vary: *`, or too many names).
    With `offered_codings` (the fill sent Accept-Encoding), a response with a content-coding is
    keyed on Accept-Encoding whatever its Vary says."""
    vary = parse_vary(joined(response_headers, b"vary"))
    if "*" in vary:
        return None
    policy = {name.lower() for name in policy_names}
    names = {name for name in vary if name not in policy}
    if (
        offered_codings
        and ACCEPT_ENCODING not in policy
        and content_coding(response_headers) != IDENTITY
    ):
        names.add(ACCEPT_ENCODING)
    if len(names) > _MAX_NAMES:
        return None
    return tuple(sorted(names))


def variant_vary(
    policy_names: Sequence[str],
    names: Sequence[str],
    request_headers: Headers,
    coding: str,
) -> list[tuple[str, bytes | None]]:
    """The vary part of a variant key: the policy's vary values as the primary key has them,
    the request's values for `names`, Accept-Encoding as `coding`, and the variant mark."""
    others = [name for name in names if name != ACCEPT_ENCODING]
    vary = vary_values(policy_names, request_headers) if policy_names else []
    vary += vary_values(others, request_headers) if others else []
    if ACCEPT_ENCODING in names:
        vary.append((ACCEPT_ENCODING, coding.encode("latin-1")))
    vary.append((VARIANT_MARK, None))
    return vary


@dataclass(frozen=True, slots=True)
class VariantIndex:
    """What a URL's primary key holds when its responses vary beyond the policy's headers."""

    names: tuple[str, ...]  # sorted, lower-case
    keys: tuple[str, ...] = ()  # variant keys, least recently stored first
    encodings: tuple[str, ...] = ()  # the content-codings variants were served with

    def encode(self) -> bytes:
        parts = ["\n".join(self.names), "\n".join(self.keys), "\n".join(self.encodings)]
        return _INDEX_MAGIC + "\x00".join(parts).encode("latin-1")

    @classmethod
    def decode(cls, blob: bytes) -> VariantIndex | None:
        """The index in `blob`, or None when it is not one."""
        if not blob.startswith(_INDEX_MAGIC):
            return None
        parts = blob[len(_INDEX_MAGIC) :].decode("latin-1").split("\x00")
        if len(parts) != 3:
            return None
        names, keys, encodings = (tuple(p for p in part.split("\n") if p) for part in parts)
        if not names:
            return None
        return cls(names, keys, encodings)


def added(
    index: VariantIndex | None,
    names: tuple[str, ...],
    key: str,
    coding: str,
    max_variants: int,
) -> tuple[VariantIndex, tuple[str, ...]]:
    """The index after storing variant `key` (selected by `names`, served with `coding`), and
    the variant keys it no longer holds: beyond `max_variants` the least recently stored go, and
    all of them when the response now varies on other names than the index's."""
    dropped: tuple[str, ...] = ()
    if index is None or index.names != names:
        dropped = () if index is None else tuple(k for k in index.keys if k != key)
        index = VariantIndex(names)
    keys = [k for k in index.keys if k != key] + [key]
    bound = max(1, max_variants)
    if len(keys) > bound:
        dropped += tuple(keys[:-bound])
        keys = keys[-bound:]
    encodings = index.encodings
    if ACCEPT_ENCODING in names and coding not in encodings:
        # Bounded: an upstream may send any Content-Encoding; the oldest coding seen goes first.
        encodings = (*encodings, coding)[-_MAX_ENCODINGS:]
    return VariantIndex(names, tuple(keys), encodings), dropped
