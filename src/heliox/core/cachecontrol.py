"""Parsing of the caching header fields: Cache-Control, Vary, tags, HTTP-dates, Age.

Every parser is total: hostile or broken input gives a conservative answer, never an exception.
Header lists are ASGI-style `(name, value)` bytes pairs with lower-case names.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

__all__ = [
    "EMPTY",
    "MAX_DELTA",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "TARGETED_FIELDS",
    "CacheControl",
    "cache_directives",
    "format_http_date",
    "joined",
    "parse_age",
    "parse_cache_control",
    "parse_cache_tags",
    "parse_expires",
    "parse_http_date",
    "parse_surrogate_keys",
    "parse_vary",
    "response_tags",
]

# §1.2.2: a delta-seconds too large to represent is taken as 2^31.
MAX_DELTA = 2**31
MAX_TAGS = 64  # per response: bounds the index writes one stored entry can cause
MAX_TAG_LENGTH = 128


# Built per request, so not frozen: frozen=True sets each field through object.__setattr__,
# about ten times the cost of the construction itself. Read-only by convention.
@dataclass(slots=True)
class CacheControl:
    """The directives a gateway acts on; None means the directive is absent."""

    max_age: int | None = None
    s_maxage: int | None = None
    no_cache: bool = False
    no_store: bool = False
    private: bool = False
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    no_transform: bool = False
    immutable: bool = False
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    min_fresh: int | None = None
    max_stale: int | None = None  # bare `max-stale` (any staleness) is MAX_DELTA
    only_if_cached: bool = False


EMPTY = CacheControl()

_FLAGS = {
    "no-cache": "no_cache",
    "no-store": "no_store",
    "private": "private",
    "public": "public",
    "must-revalidate": "must_revalidate",
    "proxy-revalidate": "proxy_revalidate",
    "no-transform": "no_transform",
    "immutable": "immutable",
    "only-if-cached": "only_if_cached",
}
_DELTAS = {
    "max-age": "max_age",
    "s-maxage": "s_maxage",
    "stale-while-revalidate": "stale_while_revalidate",
    "stale-if-error": "stale_if_error",
    "min-fresh": "min_fresh",
    "max-stale": "max_stale",
}


def joined(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """Every line of list header `name` joined with ", " (RFC 9110 §5.3), or None if absent."""
    # A loop, not a comprehension (a function object and a frame per call on Python 3.11): this
    # runs on every cache lookup, and the field is usually absent or on one line.
    first: bytes | None = None
    more: list[bytes] | None = None
    for key, value in headers:
        if key == name:
            if first is None:
                first = value
            elif more is None:
                more = [first, value]
            else:
                more.append(value)
    return first if more is None else b", ".join(more)


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _directives(value: str) -> Iterator[tuple[str, str | None]]:
    """(lower-case name, argument) pairs; commas inside quoted strings do not split."""
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            return
        start = i
        while i < n and value[i] not in "=,":
            i += 1
        name = value[start:i].strip(" \t").lower()
        arg: str | None = None
        if i < n and value[i] == "=":
            i += 1
            while i < n and value[i] in " \t":
                i += 1
            if i < n and value[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and value[i] != '"':
                    if value[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(value[i])
                    i += 1
                i += 1  # the closing quote (an unterminated string just ends the value)
                arg = "".join(chars)
                while i < n and value[i] != ",":
                    i += 1  # junk after the closing quote
            else:
                start = i
                while i < n and value[i] != ",":
                    i += 1
                arg = value[start:i].strip(" \t")
        if name:
            yield name, arg


def _delta(arg: str | None) -> int:
    # §4.2.1: invalid freshness information (e.g. a non-integer max-age) is treated as stale,
    # so a missing or malformed argument reads as 0, the most restrictive value.
    if not arg or not (arg.isascii() and arg.isdigit()):
        return 0
    return min(int(arg), MAX_DELTA) if len(arg) < 12 else MAX_DELTA


@lru_cache(maxsize=1024)
def _parse(value: str) -> CacheControl:
    flags: dict[str, bool] = {}
    deltas: dict[str, int] = {}
    for name, arg in _directives(value):
        flag = _FLAGS.get(name)
        if flag is not None:
            # §5.2.2.4 / §5.2.2.7: a field-qualified no-cache or private is treated as the
            # unqualified directive, which the RFC allows and which is the safe reading.
            flags[flag] = True
            continue
        field = _DELTAS.get(name)
        if field is None:
            continue  # §5.2.3: unknown extensions are ignored
        seconds = MAX_DELTA if (field == "max_stale" and arg is None) else _delta(arg)
        # §4.2.1: with a directive repeated, the most restrictive (smallest) value wins.
        deltas[field] = min(seconds, deltas.get(field, seconds))
    if not flags and not deltas:
        return EMPTY
    return CacheControl(**flags, **deltas)  # type: ignore[arg-type]


def parse_cache_control(value: bytes | str | None) -> CacheControl:
    """Request or response Cache-Control (RFC 9111 §5.2); pass every line joined with ","."""
    if not value:
        return EMPTY
    return _parse(_text(value))


# The fields that target this cache, most specific first: RFC 9213 CDN-Cache-Control, then the
# Edge Architecture's Surrogate-Control. A gateway cache in front of APIs is what both address.
TARGETED_FIELDS = (b"cdn-cache-control", b"surrogate-control")
# What Surrogate-Control is read for (as Varnish and Fastly read it); the rest of it (`content`,
# ESI processing) is not a caching policy.
_SURROGATE = frozenset({"max_age", "no_store", "stale_while_revalidate", "stale_if_error"})

_SF_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz*")
_SF_KEY = _SF_KEY_FIRST | frozenset("0123456789_-.")
_SF_TCHAR = frozenset(
    "!#$%&'*+-.^_`|~:/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_SF_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class _SFError(ValueError):
    pass


def _sf_key(s: str, i: int) -> tuple[str, int]:
    # RFC 8941 §4.2.3.3: lower-case only; "Max-Age" is a parse error, not another spelling.
    if i >= len(s) or s[i] not in _SF_KEY_FIRST:
        raise _SFError
    start = i
    while i < len(s) and s[i] in _SF_KEY:
        i += 1
    return s[start:i], i


def _sf_bare_item(s: str, i: int) -> tuple[object, int]:
    """RFC 8941 §4.2.3.1; integers come back as int, booleans as bool, anything else as str
    (strings, tokens, decimals and byte sequences, which no cache directive takes)."""
    n = len(s)
    if i >= n:
        raise _SFError
    c = s[i]
    if c == "-" or c.isdigit():  # §4.2.4
        start = i
        if c == "-":
            i += 1
        digits = i
        while i < n and s[i].isdigit():
            i += 1
        if i == digits:
            raise _SFError
        if i < n and s[i] == ".":
            if i - digits > 12:
                raise _SFError
            i += 1
            frac = i
            while i < n and s[i].isdigit():
                i += 1
            if not 1 <= i - frac <= 3:
                raise _SFError
            return s[start:i], i
        if i - digits > 15:
            raise _SFError
        return int(s[start:i]), i
    if c == '"':  # §4.2.5
        i += 1
        while i < n:
            ch = s[i]
            if ch == "\\":
                if i + 1 >= n or s[i + 1] not in '"\\':
                    raise _SFError
                i += 2
            elif ch == '"':
                return "", i + 1
            elif not " " <= ch <= "~":
                raise _SFError
            else:
                i += 1
        raise _SFError
    if c == "*" or (c.isascii() and c.isalpha()):  # §4.2.6
        start = i
        i += 1
        while i < n and s[i] in _SF_TCHAR:
            i += 1
        return s[start:i], i
    if c == ":":  # §4.2.7
        end = s.find(":", i + 1)
        if end < 0 or any(ch not in _SF_B64 for ch in s[i + 1 : end]):
            raise _SFError
        return "", end + 1
    if c == "?" and i + 1 < n and s[i + 1] in "01":  # §4.2.8
        return s[i + 1] == "1", i + 2
    raise _SFError


def _sf_parameters(s: str, i: int) -> int:
    # §4.2.3.2; RFC 9213 §2.2: parameters on a cache directive are ignored.
    while i < len(s) and s[i] == ";":
        i += 1
        while i < len(s) and s[i] == " ":
            i += 1
        _, i = _sf_key(s, i)
        if i < len(s) and s[i] == "=":
            _, i = _sf_bare_item(s, i + 1)
    return i


def _sf_member_value(s: str, i: int) -> tuple[object, int]:
    if i < len(s) and s[i] == "(":  # §4.2.1.2: an inner list, which no directive takes
        i += 1
        while True:
            while i < len(s) and s[i] == " ":
                i += 1
            if i < len(s) and s[i] == ")":
                return "", _sf_parameters(s, i + 1)
            _, i = _sf_bare_item(s, i)
            i = _sf_parameters(s, i)
            if i >= len(s) or s[i] not in " )":
                raise _SFError
    value, i = _sf_bare_item(s, i)
    return value, _sf_parameters(s, i)


@lru_cache(maxsize=256)
def _parse_targeted(value: str) -> CacheControl | None:
    """A targeted field (RFC 9213 §2.2: a Structured Fields Dictionary) as directives; None when
    it is empty or fails to parse, and so must be ignored."""
    s = value.strip(" ")
    if not s:
        return None
    members: dict[str, object] = {}
    i, n = 0, len(s)
    try:
        while True:  # RFC 8941 §4.2.2
            key, i = _sf_key(s, i)
            if i < n and s[i] == "=":
                members[key], i = _sf_member_value(s, i + 1)
            else:
                members[key] = True
                i = _sf_parameters(s, i)
            while i < n and s[i] in " \t":
                i += 1
            if i >= n:
                break
            if s[i] != ",":
                raise _SFError
            i += 1
            while i < n and s[i] in " \t":
                i += 1
            if i >= n:
                raise _SFError  # a trailing comma
    except _SFError:
        return None
    flags: dict[str, bool] = {}
    deltas: dict[str, int] = {}
    for name, member in members.items():
        # RFC 9213 §2.2: a value of the wrong type (`max-age="60"`, `max-age=1.5`,
        # `no-store=?0`) is not consumed; unknown directives are ignored, yet still make the
        # field valid (`CDN-Cache-Control: none` overrides Cache-Control, RFC 9213 §3.1).
        flag = _FLAGS.get(name)
        if flag is not None and member is True:
            flags[flag] = True
        field = _DELTAS.get(name)
        if field is not None and type(member) is int and member >= 0:
            deltas[field] = min(member, MAX_DELTA)
    return CacheControl(**flags, **deltas)  # type: ignore[arg-type]


@lru_cache(maxsize=256)
def _parse_surrogate(value: str) -> CacheControl | None:
    parsed = _parse(value)
    kept = {
        name: getattr(parsed, name)
        for name in _SURROGATE
        if getattr(parsed, name) not in (None, False)
    }
    return CacheControl(**kept) if kept else None


def cache_directives(headers: Iterable[tuple[bytes, bytes]]) -> tuple[CacheControl, bytes]:
    """The response directives this cache stores and ages a response by, and the field they
    came from (lower-case name).

    RFC 9213 §2.1: the first field of `TARGETED_FIELDS` with a valid, non-empty value decides,
    and Cache-Control and Expires are then ignored for this cache (Cache-Control still speaks to
    the caches downstream). A CDN-Cache-Control that is empty or not a valid Dictionary is
    ignored (§2.2). Surrogate-Control is read like Cache-Control, for `max-age`, `no-store`,
    `stale-while-revalidate` and `stale-if-error`; one holding none of them, or only
    directives aimed at another named surrogate (`max-age=60;other`), is ignored.
    """
    headers = list(headers)
    cdn = joined(headers, b"cdn-cache-control")
    if cdn is not None:
        targeted = _parse_targeted(_text(cdn))
        if targeted is not None:
            return targeted, b"cdn-cache-control"
    surrogate = joined(headers, b"surrogate-control")
    if surrogate is not None:
        # Edge Architecture §3: `directive;device` addresses one named surrogate, not this one.
        text = ",".join(part for part in _text(surrogate).split(",") if ";" not in part)
        directives = _parse_surrogate(text)
        if directives is not None:
            return directives, b"surrogate-control"
    return parse_cache_control(joined(headers, b"cache-control")), b"cache-control"


def parse_vary(value: bytes | str | None) -> tuple[str, ...]:
    """Lower-case field names from Vary, de-duplicated; "*" is kept as "*"."""
    if not value:
        return ()
    names: dict[str, None] = {}
    for part in _text(value).split(","):
        part = part.strip(" \t").lower()
        if part:
            names[part] = None
    return tuple(names)


def _tags(parts: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for part in parts:
        if part and len(part) <= MAX_TAG_LENGTH and part not in seen:
            seen[part] = None
            if len(seen) == MAX_TAGS:
                break
    return tuple(seen)


def parse_surrogate_keys(value: bytes | str | None) -> tuple[str, ...]:
    """Tags from Surrogate-Key: space-separated."""
    return _tags(_text(value).split()) if value else ()


def parse_cache_tags(value: bytes | str | None) -> tuple[str, ...]:
    """Tags from Cache-Tag: comma-separated."""
    return _tags(part.strip(" \t") for part in _text(value).split(",")) if value else ()


def response_tags(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, ...]:
    """Purge tags from Surrogate-Key and Cache-Tag together, bounded to MAX_TAGS."""
    headers = list(headers)
    surrogate = joined(headers, b"surrogate-key")
    cache_tag = joined(headers, b"cache-tag")
    if surrogate is None and cache_tag is None:
        return ()
    return _tags((*parse_surrogate_keys(surrogate), *parse_cache_tags(cache_tag)))


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_LONG_DAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MON = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 §5.6.7: IMF-fixdate, then the two obsolete forms recipients must still accept.
_IMF = re.compile(rf"{_DAY}, (\d\d) {_MON} (\d{{4}}) {_TIME} gmt", re.IGNORECASE)
_RFC850 = re.compile(rf"{_LONG_DAY}, (\d\d)-{_MON}-(\d\d) {_TIME} gmt", re.IGNORECASE)
_ASCTIME = re.compile(rf"{_DAY} {_MON} ( \d|\d\d) {_TIME} (\d{{4}})", re.IGNORECASE)


def _epoch(year: int, month: str, day: int, hh: int, mm: int, ss: int) -> float | None:
    try:
        moment = datetime(year, _MONTHS[month.lower()], day, hh, mm, min(ss, 59))
    except ValueError:
        return None
    return float(calendar.timegm(moment.timetuple()))


def parse_http_date(value: bytes | str | None) -> float | None:
    """Epoch seconds of an HTTP-date, or None when absent or invalid."""
    if not value:
        return None
    text = _text(value).strip(" \t")
    if m := _IMF.fullmatch(text):
        return _epoch(int(m[3]), m[2], int(m[1]), int(m[4]), int(m[5]), int(m[6]))
    if m := _RFC850.fullmatch(text):
        # §5.6.7 wants "not more than 50 years ahead"; a fixed pivot is that rule in practice.
        yy = int(m[3])
        year = 2000 + yy if yy < 70 else 1900 + yy
        return _epoch(year, m[2], int(m[1]), int(m[4]), int(m[5]), int(m[6]))
    if m := _ASCTIME.fullmatch(text):
        return _epoch(int(m[6]), m[1], int(m[2]), int(m[3]), int(m[4]), int(m[5]))
    return None


def parse_expires(value: bytes | str | None) -> float | None:
    """Expires as epoch seconds; None when absent, 0.0 (long past) when invalid."""
    if value is None:
        return None
    # §5.3: an invalid date, especially "0", means a time in the past.
    parsed = parse_http_date(value)
    return 0.0 if parsed is None else parsed


def parse_age(value: bytes | str | None) -> int | None:
    """Age in seconds, or None when absent or invalid."""
    if not value:
        return None
    # §5.1: a list-valued Age uses its first member; an invalid one is ignored.
    first = _text(value).split(",", 1)[0].strip(" \t")
    if not (first.isascii() and first.isdigit()):
        return None
    return min(int(first), MAX_DELTA) if len(first) < 12 else MAX_DELTA


def format_http_date(epoch: float) -> bytes:
    """IMF-fixdate for `epoch` (RFC 9110 §5.6.7)."""
    m = datetime.fromtimestamp(int(epoch), tz=UTC)
    # Spelled out rather than strftime's %a/%b, which follow the process locale.
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[m.weekday()]
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[
        m.month - 1
    ]
    text = f"{day}, {m.day:02d} {month} {m.year:04d} {m.hour:02d}:{m.minute:02d}:{m.second:02d} GMT"
    return text.encode("ascii")
