"""The example upstream's fixed sample catalogue, pre-encoded with strong ETags.

Every body is built once: the catalogue never changes, so the same request always gets the same
bytes and the same ETag, and serving it costs a dict lookup.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

_FIELDS = ("id", "sku", "name", "price", "color", "size")
_ROWS = (
    ("1", "sku-1001", "Classic T-Shirt", 19.99, "red", "medium"),
    ("2", "sku-1002", "Denim Jacket", 89.5, "blue", "large"),
    ("3", "sku-1003", "Running Shoes", 120.0, "black", "medium"),
    ("4", "sku-1004", "Wool Scarf", 24.0, "red", "small"),
    ("5", "sku-1005", "Rain Coat", 149.0, "green", "large"),
    ("6", "sku-1006", "Canvas Tote", 15.25, "white", "medium"),
    ("7", "sku-1007", "Leather Belt", 39.99, "black", "small"),
    ("8", "sku-1008", "Hooded Sweatshirt", 54.0, "blue", "medium"),
    ("9", "sku-1009", "Linen Shirt", 45.0, "white", "large"),
    ("10", "sku-1010", "Beanie", 12.5, "green", "small"),
)
ITEMS: tuple[dict[str, Any], ...] = tuple(dict(zip(_FIELDS, row, strict=True)) for row in _ROWS)

CACHE_CONTROL = "public, max-age=60"


@dataclass(frozen=True, slots=True)
class Encoded:
    """A JSON body and its strong ETag (quoted, as it goes on the wire)."""

    body: bytes
    etag: str


def encode(value: object) -> Encoded:
    body = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    return Encoded(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class Catalogue:
    """Item lookups and filtered listings, memoised per distinct filter."""

    def __init__(self, items: tuple[dict[str, Any], ...] = ITEMS) -> None:
        self._items = items
        self._by_key: dict[str, Encoded] = {}
        for item in items:
            encoded = encode(item)
            self._by_key[item["id"]] = encoded
            self._by_key[item["sku"]] = encoded
        self._listings: dict[tuple[str | None, str | None], Encoded] = {}

    def item(self, key: str) -> Encoded | None:
        """The item whose id or sku is `key`."""
        return self._by_key.get(key)

    def listing(self, color: str | None = None, size: str | None = None) -> Encoded:
        """The JSON list of items matching the filters (case-insensitive; None means any)."""
        cache_key = (
            color.lower() if color is not None else None,
            size.lower() if size is not None else None,
        )
        found = self._listings.get(cache_key)
        if found is None:
            want_color, want_size = cache_key
            chosen = [
                item
                for item in self._items
                if (want_color is None or item["color"] == want_color)
                and (want_size is None or item["size"] == want_size)
            ]
            found = encode(chosen)
            # Filter values come from clients: bound the memo so junk values cannot grow it.
            if len(self._listings) < 256:
                self._listings[cache_key] = found
        return found
