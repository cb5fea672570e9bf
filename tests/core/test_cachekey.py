"""Cache keys: equal for equivalent requests, different for any difference that matters."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heliox.core.cachekey import (
    cache_key,
    canonical_query,
    lookup_method,
    normalise_header_value,
    uri_key,
    vary_values,
)


def key(
    method: str = "GET",
    route: str = "demo",
    path: str = "/items",
    query: bytes = b"",
    vary: Sequence[tuple[str, bytes | None]] = (),
    tenant: int | None = 1,
) -> str:
    return cache_key(method, route, path, query, vary, tenant)


def test_key_is_short_and_stable() -> None:
    k = key(query=b"a=1")
    assert k.startswith("c:") and len(k) == 2 + 32
    # A fixed vector: an encoding change must be deliberate (bump the personalisation), as it
    # orphans every stored entry.
    assert k == "c:551399b5cfcc3c7959451764020b2291"


def test_query_order_does_not_matter() -> None:
    assert key(query=b"color=red&size=large") == key(query=b"size=large&color=red")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (b"a=1&&b=2", b"a=1&b=2"),  # empty pairs carry nothing
        (b"&a=1&", b"a=1"),
        (b"x=%41", b"x=A"),  # RFC 3986 §6.2.2.2: escaped unreserved characters
        (b"%7euser=1", b"~user=1"),
        (b"p=%2f", b"p=%2F"),  # hex case of an escape that must stay escaped
        (b"a=1&b=2&a=3", b"b=2&a=1&a=3"),  # same-name values keep their order
    ],
)
def test_equivalent_queries_share_a_key(a: bytes, b: bytes) -> None:
    assert key(query=a) == key(query=b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (b"a=", b"a"),  # a blank value is kept, and differs from no value at all
        (b"a=", b""),
        (b"q=a+b", b"q=a%20b"),  # '+' means space only to form decoders: keep both apart
        (b"q=a%2Bb", b"q=a+b"),
        (b"q=%2F", b"q=/"),  # an escaped reserved character is not its literal
        (b"x=%2541", b"x=%41"),  # decoded once: %25 stays the percent sign
        (b"a=1&a=2", b"a=2&a=1"),  # upstreams read first-or-last: order of repeats matters
        (b"a%3Db=c", b"a=b%3Dc"),
        (b"a=1", b"A=1"),
        (b"ab=c", b"a=bc"),
    ],
)
def test_different_queries_get_different_keys(a: bytes, b: bytes) -> None:
    assert key(query=a) != key(query=b)


def test_canonical_query_shape() -> None:
    assert canonical_query(b"b=2&a&c=&a=1") == [
        (b"a", None),
        (b"a", b"1"),
        (b"b", b"2"),
        (b"c", b""),
    ]
    assert canonical_query(b"") == []


def test_head_is_answered_from_the_get_entry() -> None:
    assert lookup_method("HEAD") == "GET"
    assert lookup_method("GET") == "GET"
    assert key(method="HEAD") == key(method="GET")
    assert key(method="POST") != key(method="GET")
    assert key(method="get") != key(method="GET")  # methods are case-sensitive (RFC 9110 §9.1)


def test_every_part_changes_the_key() -> None:
    base = key()
    assert key(route="other") != base
    assert key(path="/items/") != base
    assert key(query=b"a=1") != base
    assert key(vary=[("accept", b"text/html")]) != base
    assert key(tenant=2) != base
    assert key(tenant=None) != base
    assert key(tenant=None) != key(tenant=0)


def test_parts_cannot_bleed_into_each_other() -> None:
    # Without length prefixes these pairs would concatenate to the same bytes.
    assert key(route="ab", path="/c") != key(route="a", path="b/c")
    assert key(route="demo", path="/x1:") != key(route="demo", path="/x", query=b"1:")
    assert key(vary=[("accept", b"a")]) != key(vary=[("accepta", None)])
    assert uri_key("ab", "/c", b"") != uri_key("a", "b/c", b"")


def test_vary_values_are_normalised_but_not_conflated() -> None:
    compact = key(vary=[("accept-encoding", b"gzip,br")])
    assert key(vary=[("accept-encoding", b"  gzip ,  br ")]) == compact
    assert key(vary=[("accept-encoding", b"gzip,\tbr")]) == compact
    assert key(vary=[("Accept-Encoding", b"gzip,br")]) == compact  # names are case-insensitive
    assert key(vary=[("accept-encoding", b"br,gzip")]) != compact
    assert key(vary=[("accept-encoding", b"GZIP,br")]) != compact  # values keep their case
    absent = key(vary=[("accept-encoding", None)])
    assert absent != key(vary=[("accept-encoding", b"")])
    assert absent != key()  # a vary header named, even absent, is part of the key
    two = [("accept", b"a"), ("accept-language", b"en")]
    assert key(vary=two) == key(vary=list(reversed(two)))


def test_normalise_header_value() -> None:
    assert normalise_header_value(b"  text/html ,  application/json  ") == (
        b"text/html,application/json"
    )
    assert normalise_header_value(b"Mozilla/5.0  (X11;   Linux)") == b"Mozilla/5.0 (X11; Linux)"
    assert normalise_header_value(b"plain") == b"plain"


def test_vary_values_from_request_headers() -> None:
    headers = [(b"accept", b"a"), (b"x-other", b"z"), (b"accept", b"b")]
    assert vary_values(["accept", "accept-language"], headers) == [
        ("accept", b"a,b"),
        ("accept-language", None),
    ]
    assert vary_values([], headers) == []


def test_uri_key_ignores_method_vary_and_tenant() -> None:
    u = uri_key("demo", "/items", b"b=2&a=1")
    assert u.startswith("u:") and len(u) == 34
    assert u == uri_key("demo", "/items", b"a=1&b=2")
    assert u != uri_key("demo", "/items/", b"a=1&b=2")
    assert u != uri_key("other", "/items", b"a=1&b=2")
    assert u != key(query=b"a=1&b=2")


def test_paths_with_any_characters_are_accepted() -> None:
    # Lone surrogates can come out of a lenient decoder; they must key, not crash.
    assert key(path="/\udc80") != key(path="/\udc81")
    assert key(path="/é") != key(path="/e")


_values = st.text(alphabet="abc:,0 ", max_size=4)


@given(
    st.dictionaries(st.text(alphabet="abcdefgh_-.", min_size=1, max_size=6), _values, max_size=8),
    st.randoms(use_true_random=False),
)
def test_any_permutation_of_distinct_names_gives_the_same_key(
    params: dict[str, str], rnd: random.Random
) -> None:
    pairs = [f"{k}={v}".encode() for k, v in params.items()]
    shuffled = pairs[:]
    rnd.shuffle(shuffled)
    assert key(query=b"&".join(pairs)) == key(query=b"&".join(shuffled))


_part_text = st.text(alphabet="ab:/1é", max_size=5)
_query = st.lists(
    st.tuples(
        st.text(alphabet="ab:1", min_size=1, max_size=3),
        st.one_of(st.none(), st.text(alphabet="ab:1", max_size=3)),
    ),
    max_size=3,
)
_vary = st.lists(
    st.tuples(
        st.sampled_from(["accept", "x-a", "x-b"]),
        st.one_of(
            st.none(),
            st.binary(max_size=3).filter(
                lambda b: b.strip(b" \t") == b and b" " not in b and b"\t" not in b
            ),
        ),
    ),
    max_size=2,
    unique_by=lambda t: t[0],
)
_request = st.tuples(
    st.sampled_from(["GET", "POST", "HEAD"]),
    _part_text,
    _part_text,
    _query,
    _vary,
    st.one_of(st.none(), st.integers(0, 3)),
)


def _raw(query: list[tuple[str, str | None]]) -> bytes:
    return b"&".join(k.encode() if v is None else f"{k}={v}".encode() for k, v in query)


Request = tuple[
    str, str, str, list[tuple[str, str | None]], list[tuple[str, bytes | None]], int | None
]


def _key(req: Request) -> str:
    return cache_key(req[0], req[1], req[2], _raw(req[3]), req[4], req[5])


def _canonical(req: Request) -> tuple[object, ...]:
    method, route, path, query, vary, tenant = req
    return (
        lookup_method(method),
        route,
        path,
        tuple(canonical_query(_raw(query))),
        tuple(sorted(vary)),
        tenant,
    )


@given(_request, _request, st.integers(0, 6))
def test_keys_collide_exactly_when_requests_are_equivalent(
    a: Request, other: Request, swap: int
) -> None:
    # b is a with at most one part taken from another request: any difference in one part
    # must change the key, and an equivalent request must not.
    parts = list(a)
    if swap < len(parts):
        parts[swap] = other[swap]
    b: Request = (parts[0], parts[1], parts[2], parts[3], parts[4], parts[5])  # type: ignore[assignment]
    assert (_key(a) == _key(b)) == (_canonical(a) == _canonical(b))
