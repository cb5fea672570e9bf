"""The pure variant logic: Accept-Encoding selection, response Vary, the variant index."""

from __future__ import annotations

import pytest

from heliox.core.cachekey import cache_key
from heliox.core.variants import (
    VariantIndex,
    accepts_coding,
    added,
    content_coding,
    forwarded_accept_encoding,
    parse_accept_encoding,
    response_vary,
    select_coding,
    variant_vary,
)

GZ_ID = ("gzip", "identity")


@pytest.mark.parametrize(
    ("accept", "encodings", "chosen"),
    [
        (None, GZ_ID, "identity"),  # no Accept-Encoding: never a compressed body
        (b"", GZ_ID, "identity"),
        (b"gzip", GZ_ID, "gzip"),
        (b"gzip, deflate, br", GZ_ID, "gzip"),
        (b"br;q=1.0, gzip;q=0.8, *;q=0.1", GZ_ID, "gzip"),
        (b"GZIP", GZ_ID, "gzip"),
        (b"x-gzip", GZ_ID, "gzip"),
        # Equal q: the coding stored first, whatever order the client lists them in.
        (b"br, gzip", ("gzip", "br", "identity"), "gzip"),
        (b"br, gzip", ("br", "gzip", "identity"), "br"),
        (b"gzip;q=0.5, br;q=0.9", ("gzip", "br"), "br"),
        (b"gzip;q=0", GZ_ID, "identity"),
        (b"gzip;q=bogus", GZ_ID, "identity"),
        (b"identity", GZ_ID, "identity"),
        (b"gzip", ("identity",), "identity"),  # only what variants were served with counts
        (b"gzip", (), "identity"),
        (b"*", ("br",), "br"),
        (b"*;q=0", ("br",), "identity"),  # accepts none of them: identity
        (b"identity;q=0, gzip", ("identity", "gzip"), "gzip"),
        (b"deflate", ("gzip,br",), "identity"),
        (b"gzip, br", ("gzip,br",), "gzip,br"),  # stacked codings need every layer
    ],
)
def test_select_coding(accept: bytes | None, encodings: tuple[str, ...], chosen: str) -> None:
    assert select_coding(accept, encodings) == chosen


def test_many_accept_encoding_strings_collapse_to_the_codings_served() -> None:
    strings = [
        b"gzip, deflate, br",
        b"gzip,deflate",
        b"br;q=1.0, gzip;q=0.8, *;q=0.1",
        b"gzip, deflate, br, zstd",
        b"deflate, gzip;q=1.0, *;q=0.5",
        b"gzip",
    ]
    assert {select_coding(s, GZ_ID) for s in strings} == {"gzip"}
    assert {select_coding(s, GZ_ID) for s in (None, b"identity", b"deflate", b"br")} == {"identity"}


@pytest.mark.parametrize(
    ("accept", "coding", "ok"),
    [
        (None, "identity", True),
        (None, "gzip", False),
        (b"gzip", "gzip", True),
        (b"deflate", "gzip", False),
        (b"gzip;q=0", "gzip", False),
        (b"*", "br", True),
        (b"gzip", "gzip,br", False),
        (b"identity;q=0", "identity", True),  # identity is what everything falls back to
    ],
)
def test_accepts_coding(accept: bytes | None, coding: str, ok: bool) -> None:
    assert accepts_coding(accept, coding) is ok


@pytest.mark.parametrize(
    ("headers", "coding"),
    [
        ([], "identity"),
        ([(b"content-encoding", b"gzip")], "gzip"),
        ([(b"content-encoding", b" GZip ")], "gzip"),
        ([(b"content-encoding", b"identity")], "identity"),
        ([(b"content-encoding", b"gzip, br")], "gzip,br"),
        ([(b"content-encoding", b"gzip"), (b"content-encoding", b"br")], "gzip,br"),
    ],
)
def test_content_coding(headers: list[tuple[bytes, bytes]], coding: str) -> None:
    assert content_coding(headers) == coding


@pytest.mark.parametrize(
    ("accept", "sent"),
    [
        (None, None),
        (b"identity", None),
        (b"evil-encoding", None),  # nothing but well-known codings reaches the upstream
        (b"gzip, deflate, br", b"gzip, deflate, br"),
        (b"br;q=0.5, gzip", b"gzip, br"),
        (b"gzip;q=0, br, evil", b"br"),
        (b"GZIP;q=1", b"gzip"),
    ],
)
def test_forwarded_accept_encoding(accept: bytes | None, sent: bytes | None) -> None:
    headers = [] if accept is None else [(b"accept-encoding", accept)]
    assert forwarded_accept_encoding(headers) == sent


def test_parse_accept_encoding_first_mention_wins_and_q_is_clamped() -> None:
    assert parse_accept_encoding(b"gzip;q=2, gzip;q=0, br;Q=0.3") == {"gzip": 1.0, "br": 0.3}


@pytest.mark.parametrize(
    ("policy", "headers", "offered", "names"),
    [
        ((), [], False, ()),
        ((), [(b"vary", b"Accept-Encoding")], False, ("accept-encoding",)),
        (("accept-encoding",), [(b"vary", b"Accept-Encoding")], False, ()),  # policy keys it
        (("accept",), [(b"vary", b"origin, Accept"), (b"vary", b"x-b")], False, ("origin", "x-b")),
        ((), [(b"vary", b"*")], False, None),
        ((), [(b"vary", b"accept, *")], False, None),
        ((), [(b"vary", b",".join(b"x-%d" % i for i in range(17)))], False, None),
        # A compressed answer to a fill that offered codings is keyed on them regardless.
        ((), [(b"content-encoding", b"gzip")], True, ("accept-encoding",)),
        ((), [(b"content-encoding", b"gzip")], False, ()),
        ((), [(b"content-encoding", b"identity")], True, ()),
    ],
)
def test_response_vary(
    policy: tuple[str, ...],
    headers: list[tuple[bytes, bytes]],
    offered: bool,
    names: tuple[str, ...] | None,
) -> None:
    assert response_vary(policy, headers, offered_codings=offered) == names


def _key(
    policy: tuple[str, ...], names: tuple[str, ...], headers: list[tuple[bytes, bytes]], coding: str
) -> str:
    return cache_key("GET", "r", "/x", b"", variant_vary(policy, names, headers, coding), None)


def test_variant_keys() -> None:
    ae = ("accept-encoding",)
    a = _key((), ae, [(b"accept-encoding", b"gzip, br")], "gzip")
    b = _key((), ae, [(b"accept-encoding", b"gzip")], "gzip")
    assert a == b  # keyed on the coding, not the spelling
    assert a != _key((), ae, [], "identity")
    lang = ("accept-language",)
    fr = _key((), lang, [(b"accept-language", b"fr")], "identity")
    assert fr != _key((), lang, [(b"accept-language", b"de")], "identity")
    assert fr == _key((), lang, [(b"accept-language", b" fr ")], "gzip")  # coding unused
    # Never the key a policy that keys the same header on its own would build.
    plain = cache_key("GET", "r", "/x", b"", [("accept-language", b"fr")], None)
    assert fr != plain
    # The policy's vary values are in it as the primary key has them.
    blue = _key(("x-v",), lang, [(b"x-v", b"blue"), (b"accept-language", b"fr")], "identity")
    assert blue != fr


@pytest.mark.parametrize(
    ("keys", "add", "bound", "after", "dropped"),
    [
        ((), "k1", 8, ("k1",), ()),
        (("k1", "k2"), "k3", 8, ("k1", "k2", "k3"), ()),
        (("k1", "k2"), "k1", 8, ("k2", "k1"), ()),  # re-stored: now the most recent
        (("k1", "k2", "k3"), "k4", 3, ("k2", "k3", "k4"), ("k1",)),
        (("k1", "k2", "k3"), "k4", 1, ("k4",), ("k1", "k2", "k3")),
        (("k1", "k2", "k3"), "k2", 2, ("k3", "k2"), ("k1",)),
    ],
)
def test_added_keeps_the_most_recently_stored(
    keys: tuple[str, ...],
    add: str,
    bound: int,
    after: tuple[str, ...],
    dropped: tuple[str, ...],
) -> None:
    names = ("accept-encoding",)
    index, gone = added(VariantIndex(names, keys, ("identity",)), names, add, "gzip", bound)
    assert (index.keys, gone) == (after, dropped)
    assert index.encodings == ("identity", "gzip")


def test_added_with_new_names_starts_a_new_index() -> None:
    old = VariantIndex(("accept-encoding",), ("k1", "k2"), ("gzip",))
    index, gone = added(old, ("accept-language",), "k9", "gzip", 8)
    assert index == VariantIndex(("accept-language",), ("k9",), ())
    assert gone == ("k1", "k2")
    first, none = added(None, ("accept-encoding",), "k1", "identity", 8)
    assert (first, none) == (VariantIndex(("accept-encoding",), ("k1",), ("identity",)), ())


@pytest.mark.parametrize(
    "index",
    [
        VariantIndex(("accept-encoding",)),
        VariantIndex(("accept-encoding", "x-a"), ("c:1", "c:2"), ("gzip", "identity")),
    ],
)
def test_index_roundtrip(index: VariantIndex) -> None:
    assert VariantIndex.decode(index.encode()) == index


@pytest.mark.parametrize("blob", [b"", b"{}", b"HXV1", b"HXV1a\x00b", b"HXV1\x00\x00"])
def test_index_decode_refuses_what_is_not_one(blob: bytes) -> None:
    assert VariantIndex.decode(blob) is None
