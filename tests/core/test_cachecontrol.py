"""Parsing Cache-Control, Vary, tags, HTTP-dates and Age: robust to whatever arrives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heliox.core.cachecontrol import (
    EMPTY,
    MAX_DELTA,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    CacheControl,
    format_http_date,
    joined,
    parse_age,
    parse_cache_control,
    parse_cache_tags,
    parse_expires,
    parse_http_date,
    parse_surrogate_keys,
    parse_vary,
    response_tags,
)

SUNDAY_1994 = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, EMPTY),
        (b"", EMPTY),
        (b"max-age=60", CacheControl(max_age=60)),
        (b"public, max-age=60, s-maxage=30", CacheControl(public=True, max_age=60, s_maxage=30)),
        (b"MAX-AGE=60, No-Store", CacheControl(max_age=60, no_store=True)),  # case-insensitive
        ("max-age=60", CacheControl(max_age=60)),  # str accepted too
        (b'max-age="60"', CacheControl(max_age=60)),  # §5.2: quoted form accepted
        (b"max-age=abc", CacheControl(max_age=0)),  # §4.2.1: invalid means stale
        (b"max-age=-5", CacheControl(max_age=0)),
        (b"max-age=1.5", CacheControl(max_age=0)),
        (b"max-age", CacheControl(max_age=0)),
        (b"max-age=", CacheControl(max_age=0)),
        ("max-age=\u00b2", CacheControl(max_age=0)),  # a Unicode digit is not a DIGIT
        (b"max-age=99999999999999999999", CacheControl(max_age=MAX_DELTA)),  # §1.2.2
        (b"max-age=60, max-age=10", CacheControl(max_age=10)),  # duplicates: most restrictive
        (b"max-age=10, max-age=60", CacheControl(max_age=10)),
        (b'no-cache="set-cookie, x-foo", max-age=5', CacheControl(no_cache=True, max_age=5)),
        (b'private="x", public', CacheControl(private=True, public=True)),
        (b'foo="a,b,max-age=1", max-age=7', CacheControl(max_age=7)),  # commas in quotes
        (b'ext="a\\"b,c", no-store', CacheControl(no_store=True)),  # escaped quote
        (b'ext="unterminated, max-age=3', EMPTY),  # the rest is one quoted string
        (b",,, ,max-age=3,,", CacheControl(max_age=3)),
        (b"max-age = 3", CacheControl(max_age=3)),  # lenient about whitespace
        (
            b"stale-while-revalidate=30, stale-if-error=600",
            CacheControl(stale_while_revalidate=30, stale_if_error=600),
        ),
        (
            b"must-revalidate, proxy-revalidate, immutable, no-transform",
            CacheControl(
                must_revalidate=True, proxy_revalidate=True, immutable=True, no_transform=True
            ),
        ),
        (
            b"only-if-cached, min-fresh=5, max-stale",
            CacheControl(only_if_cached=True, min_fresh=5, max_stale=MAX_DELTA),
        ),
        (b"max-stale=10", CacheControl(max_stale=10)),
        (b'unknown-directive=1, community="UCI"', EMPTY),  # §5.2.3: extensions ignored
        (b"\xff\xfe, max-age=1", CacheControl(max_age=1)),  # junk bytes do not raise
    ],
)
def test_parse_cache_control(value: bytes | str | None, expected: CacheControl) -> None:
    assert parse_cache_control(value) == expected


@given(st.binary(max_size=60))
def test_parse_cache_control_never_raises(value: bytes) -> None:
    cc = parse_cache_control(value)
    assert cc.max_age is None or 0 <= cc.max_age <= MAX_DELTA


def test_joined_merges_repeated_lines() -> None:
    headers = [(b"cache-control", b"public"), (b"x", b"y"), (b"cache-control", b"max-age=5")]
    assert joined(headers, b"cache-control") == b"public, max-age=5"
    assert parse_cache_control(joined(headers, b"cache-control")) == CacheControl(
        public=True, max_age=5
    )
    assert joined(headers, b"vary") is None
    assert joined([(b"vary", b"accept")], b"vary") == b"accept"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()),
        (b"Accept-Encoding", ("accept-encoding",)),
        (b"accept, Accept-Language ,ACCEPT", ("accept", "accept-language")),
        (b"*", ("*",)),
        (b"accept, *", ("accept", "*")),
        (b" , ", ()),
    ],
)
def test_parse_vary(value: bytes | None, expected: tuple[str, ...]) -> None:
    assert parse_vary(value) == expected


def test_tags() -> None:
    assert parse_surrogate_keys(b"product-1  catalogue\tall") == ("product-1", "catalogue", "all")
    assert parse_cache_tags(b"a, b ,,a") == ("a", "b")
    assert parse_surrogate_keys(None) == () and parse_cache_tags(b"") == ()
    headers = [(b"surrogate-key", b"x y"), (b"cache-tag", b"y,z")]
    assert response_tags(headers) == ("x", "y", "z")
    assert response_tags([(b"content-type", b"text/plain")]) == ()


def test_tags_are_bounded() -> None:
    many = " ".join(f"t{i}" for i in range(MAX_TAGS * 2)).encode()
    assert len(parse_surrogate_keys(many)) == MAX_TAGS
    huge = b"ok " + b"x" * (MAX_TAG_LENGTH + 1)
    assert parse_surrogate_keys(huge) == ("ok",)


@pytest.mark.parametrize(
    "value",
    [
        b"Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        b"Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        b"Sun Nov  6 08:49:37 1994",  # asctime
        b"sun, 06 nov 1994 08:49:37 gmt",
        b"  Sun, 06 Nov 1994 08:49:37 GMT ",
    ],
)
def test_http_date_formats(value: bytes) -> None:
    assert parse_http_date(value) == SUNDAY_1994


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"0",
        b"-1",
        b"tomorrow",
        b"Sun, 31 Feb 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 25:49:37 GMT",
        b"Sun, 06 Nov 1994 08:49:37 PST",
        b"\xff",
    ],
)
def test_invalid_http_dates(value: bytes | None) -> None:
    assert parse_http_date(value) is None


def test_expires() -> None:
    assert parse_expires(None) is None
    assert parse_expires(b"0") == 0.0  # §5.3: invalid means already expired
    assert parse_expires(b"garbage") == 0.0
    assert parse_expires(b"Sun, 06 Nov 1994 08:49:37 GMT") == SUNDAY_1994


def test_rfc850_two_digit_years() -> None:
    assert parse_http_date(b"Monday, 01-Jan-24 00:00:00 GMT") == 1704067200.0
    assert parse_http_date(b"Thursday, 01-Jan-70 00:00:00 GMT") == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (b"", None),
        (b"0", 0),
        (b"120", 120),
        (b"5, 9", 5),
        (b"-1", None),
        (b"1.5", None),
        (b"abc", None),
        (b"99999999999999999", MAX_DELTA),
    ],
)
def test_age(value: bytes | None, expected: int | None) -> None:
    assert parse_age(value) == expected


def test_format_http_date_round_trips() -> None:
    assert format_http_date(SUNDAY_1994) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    for epoch in (0, 951782400, 1709164800, 4102444799):  # incl. leap days and 2099
        assert parse_http_date(format_http_date(epoch)) == epoch
