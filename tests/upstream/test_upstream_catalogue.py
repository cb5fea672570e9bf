"""The sample catalogue and the conditional-request rules, without a server."""

from __future__ import annotations

import hashlib
import json

import pytest

from heliox.upstream.catalogue import ITEMS, Catalogue
from heliox.upstream.conditional import etag_matches, is_not_modified, unmodified_since

FIELDS = {"id", "sku", "name", "price", "color", "size"}


def test_listing_holds_every_item_with_its_fields() -> None:
    items = json.loads(Catalogue().listing().body)
    assert [item["id"] for item in items] == [str(i) for i in range(1, 11)]
    for item in items:
        assert set(item) == FIELDS
        assert isinstance(item["price"], float)


def test_listing_is_deterministic_and_its_etag_is_a_hash_of_the_body() -> None:
    first, second = Catalogue().listing(), Catalogue().listing()
    assert first.body == second.body
    assert first.etag == '"' + hashlib.sha256(first.body).hexdigest()[:32] + '"'


@pytest.mark.parametrize(
    ("color", "size", "ids"),
    [
        ("red", None, ["1", "4"]),
        ("RED", None, ["1", "4"]),
        (None, "small", ["4", "7", "10"]),
        ("red", "small", ["4"]),
        ("purple", None, []),
        ("", None, []),
    ],
)
def test_listing_filters(color: str | None, size: str | None, ids: list[str]) -> None:
    listing = Catalogue().listing(color, size)
    assert [item["id"] for item in json.loads(listing.body)] == ids


def test_filtered_listings_have_distinct_etags() -> None:
    catalogue = Catalogue()
    etags = {catalogue.listing(c, s).etag for c, s in [(None, None), ("red", None), ("blue", None)]}
    assert len(etags) == 3


def test_junk_filters_do_not_grow_the_memo_without_bound() -> None:
    catalogue = Catalogue()
    for i in range(1000):
        assert catalogue.listing(f"color-{i}").body == b"[]"
    assert len(catalogue._listings) <= 256


def test_items_are_found_by_id_and_by_sku() -> None:
    catalogue = Catalogue()
    for item in ITEMS:
        by_id, by_sku = catalogue.item(item["id"]), catalogue.item(item["sku"])
        assert by_id is not None and by_id == by_sku
        assert json.loads(by_id.body) == item
    assert catalogue.item("nonexistent-product-xyz") is None
    assert catalogue.item("11") is None


@pytest.mark.parametrize(
    ("header", "etag", "expected"),
    [
        ('"a"', '"a"', True),
        ('"b", "a"', '"a"', True),
        ('W/"a"', '"a"', True),
        ('"a"', 'W/"a"', True),
        ("*", '"a"', True),
        ('"b"', '"a"', False),
        ('"a,b"', '"a"', False),
        ('"a,b"', '"a,b"', True),
        ("", '"a"', False),
        ('"A"', '"a"', False),
    ],
)
def test_etag_matches_uses_weak_comparison(header: str, etag: str, expected: bool) -> None:
    assert etag_matches(header, etag) is expected


LM = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (LM, True),
        ("Wed, 21 Oct 2015 07:28:01 GMT", True),
        ("Wed, 21 Oct 2015 07:27:59 GMT", False),
        ("not a date", False),
        ("", False),
    ],
)
def test_unmodified_since(since: str, expected: bool) -> None:
    assert unmodified_since(since, LM) is expected


@pytest.mark.parametrize(
    ("method", "inm", "ims", "etag", "lm", "expected"),
    [
        ("GET", '"a"', None, '"a"', None, True),
        ("HEAD", '"a"', None, '"a"', None, True),
        ("POST", '"a"', None, '"a"', None, False),
        ("GET", '"a"', None, None, None, False),
        ("GET", None, LM, None, LM, True),
        ("GET", None, LM, '"a"', None, False),
        # If-None-Match wins over If-Modified-Since, even when the date alone would match.
        ("GET", '"b"', LM, '"a"', LM, False),
        ("GET", None, None, '"a"', LM, False),
    ],
)
def test_is_not_modified(
    method: str, inm: str | None, ims: str | None, etag: str | None, lm: str | None, expected: bool
) -> None:
    assert is_not_modified(method, inm, ims, etag, lm) is expected
