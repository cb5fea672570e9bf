"""The canonical data-plane path: table cases from docs/hardening.md, then properties."""

from __future__ import annotations

import string
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from heliox.core import paths as paths_module
from heliox.core.paths import BadPath, GatewayPath, join_upstream_path, parse_gateway_path

# (raw_path, expected path, expected encoded)
ACCEPTED = [
    (b"/g/demo", "/", "/"),
    (b"/g/demo/", "/", "/"),
    (b"/g/demo/items", "/items", "/items"),
    (b"/g/demo/items/", "/items/", "/items/"),
    (b"/g/demo/a/../b", "/b", "/b"),
    (b"/g/demo/a/b/..", "/a/", "/a/"),
    (b"/g/demo/a/./b/.", "/a/b/", "/a/b/"),
    (b"/g/demo/a/%2e%2e/b", "/b", "/b"),
    (b"/g/demo/a/..%2fb", "/b", "/b"),
    (b"/g/demo/a/..;/b", "/b", "/b"),
    (b"/g/demo/a/..;jsessionid=1/b", "/b", "/b"),
    (b"/g/demo/a/.;x/b", "/a/b", "/a/b"),
    # Decoded once: the second layer of encoding stays literal text and is re-encoded.
    (b"/g/demo/%252e%252e%252f", "/%2e%2e%2f", "/%252e%252e%252f"),
    (b"/g/demo/%252e%252e%252f/x", "/%2e%2e%2f/x", "/%252e%252e%252f/x"),
    (b"/g/demo//a///b", "/a/b", "/a/b"),
    (b"/g/demo///", "/", "/"),
    (b"/g/demo//evil.com/x", "/evil.com/x", "/evil.com/x"),
    (b"/g/demo/@evil.com", "/@evil.com", "/@evil.com"),
    (b"/g/demo/a%2Fb", "/a/b", "/a/b"),
    (b"/g/demo/a\\b", "/a\\b", "/a%5Cb"),
    (b"/g/demo/..\\x", "/..\\x", "/..%5Cx"),
    (b"/g/demo/a%5C..%5Cb", "/a\\..\\b", "/a%5C..%5Cb"),
    (b"/g/demo/%23frag", "/#frag", "/%23frag"),
    (b"/g/demo/%3Fq=1", "/?q=1", "/%3Fq=1"),
    (b"/g/demo/a%20b", "/a b", "/a%20b"),
    (b"/g/demo/caf%C3%A9", "/café", "/caf%C3%A9"),
    (b"/g/demo/caf\xc3\xa9", "/café", "/caf%C3%A9"),
    (b"/g/demo/%7e%41", "/~A", "/~A"),
    (b"/g/demo/x;a=b,c:d@e!$&'()*+", "/x;a=b,c:d@e!$&'()*+", "/x;a=b,c:d@e!$&'()*+"),
    (b"/g/demo/...", "/...", "/..."),
    (b"/g/demo/.well-known/x", "/.well-known/x", "/.well-known/x"),
    (b"/g/demo/;x", "/;x", "/;x"),
    (b"/g/a_b.c-D9/x", "/x", "/x"),
]

REFUSED = [
    (b"/g/demo/..", "climbs above"),
    (b"/g/demo/../x", "climbs above"),
    (b"/g/demo/%2e%2e/x", "climbs above"),
    (b"/g/demo/%2E%2E/x", "climbs above"),
    (b"/g/demo/.%2e/x", "climbs above"),
    (b"/g/demo/..%2f", "climbs above"),
    (b"/g/demo/..%2Fx", "climbs above"),
    (b"/g/demo/..;/x", "climbs above"),
    (b"/g/demo/..;a=b", "climbs above"),
    (b"/g/demo/a/../../x", "climbs above"),
    (b"/g/demo//..//x", "climbs above"),
    (b"/g/demo/a%2F..%2F..%2Fx", "climbs above"),
    (b"/g/demo/%00", "control"),
    (b"/g/demo/a%00.html", "control"),
    (b"/g/demo/a\x00", "control"),
    (b"/g/demo/%0d%0aSet-Cookie:x", "control"),
    (b"/g/demo/%09", "control"),
    (b"/g/demo/%7f", "control"),
    (b"/g/demo/a#b", "'#'"),
    (b"/g/demo/#", "'#'"),
    (b"/g/demo/a?b=1", "'?'"),
    (b"/g/demo/%", "percent escape"),
    (b"/g/demo/%2", "percent escape"),
    (b"/g/demo/%zz", "percent escape"),
    (b"/g/demo/%+1", "percent escape"),
    (b"/g/demo/%-1", "percent escape"),
    (b"/g/demo/%ff", "UTF-8"),
    (b"/g/demo/%C0%AE%C0%AE/x", "UTF-8"),  # overlong "..": must not become dots
    (b"/g/demo/\xff", "UTF-8"),
    (b"/g/%64emo/x", "route name"),
    (b"/g/de%6do", "route name"),
    (b"/g/de mo/x", "route name"),
    (b"/g/d\xc3\xa9mo/x", "route name"),
    (b"/g/../admin", "route name"),
    (b"/g/./demo", "route name"),
    (b"/g/demo;x/y", "route name"),
    (b"/g/", "missing route"),
    (b"/g//demo/x", "missing route"),
]


@pytest.mark.parametrize(("raw", "path", "encoded"), ACCEPTED)
def test_accepted_paths(raw: bytes, path: str, encoded: str) -> None:
    result = parse_gateway_path(raw)
    assert result is not None
    assert (result.path, result.encoded) == (path, encoded)


@pytest.mark.parametrize(("raw", "reason"), REFUSED)
def test_refused_paths(raw: bytes, reason: str) -> None:
    with pytest.raises(BadPath) as caught:
        parse_gateway_path(raw)
    assert reason in caught.value.detail
    assert isinstance(caught.value, ValueError)


def test_route_name_comes_from_raw_bytes() -> None:
    assert parse_gateway_path(b"/g/Demo-1.v2_x/items") == GatewayPath(
        "Demo-1.v2_x", "/items", "/items"
    )


@pytest.mark.parametrize(
    "raw", [b"/health", b"/", b"", b"/g", b"/gx/demo", b"/G/demo", b"//g/demo"]
)
def test_outside_prefix_is_none(raw: bytes) -> None:
    assert parse_gateway_path(raw) is None


def test_custom_prefix() -> None:
    assert parse_gateway_path(b"/api/v1/demo/x", prefix=b"/api/v1/") == GatewayPath(
        "demo", "/x", "/x"
    )
    assert parse_gateway_path(b"/g/demo/x", prefix=b"/api/v1/") is None


def test_detail_quotes_a_bounded_part_of_hostile_input() -> None:
    with pytest.raises(BadPath) as caught:
        parse_gateway_path(b"/g/demo/" + b"a/" * 5000 + b"../" * 5001)
    assert "climbs above" in caught.value.detail
    assert len(caught.value.detail) < 300


def test_memo_stays_bounded_and_never_changes_an_answer() -> None:
    entries = paths_module._MEMO_ENTRIES
    for i in range(entries + 10):
        result = parse_gateway_path(f"/g/demo/p{i}/%2e/x".encode())
        assert result == GatewayPath("demo", f"/p{i}/x", f"/p{i}/x")
    assert 0 < len(paths_module._memo) <= entries
    long_path = b"/g/demo/" + b"a" * paths_module._MEMO_MAX_PATH
    assert parse_gateway_path(long_path) == parse_gateway_path(long_path)
    assert (b"/g/", long_path) not in paths_module._memo
    # The same raw path under another prefix is a different question.
    assert parse_gateway_path(b"/g/demo/x", prefix=b"/g/demo/") == GatewayPath("x", "/", "/")
    assert parse_gateway_path(b"/g/demo/x") == GatewayPath("demo", "/x", "/x")


def test_encoded_cannot_be_read_as_an_authority() -> None:
    for raw in (
        b"/g/demo//evil.com/x",
        b"/g/demo/@evil.com",
        b"/g/demo/%2F%2Fevil.com",
        b"/g/demo/\\\\evil.com",
    ):
        result = parse_gateway_path(raw)
        assert result is not None
        for base in ("", "/api"):
            url = "http://up:8080" + join_upstream_path(base, result.encoded)
            parts = urlsplit(url)
            assert (parts.hostname, parts.port) == ("up", 8080)
            assert parts.path.startswith(base + "/")


@pytest.mark.parametrize(
    ("base", "encoded", "joined"),
    [
        ("", "/", "/"),
        ("", "/a/b", "/a/b"),
        ("/api", "/", "/api/"),
        ("/api", "/a/b/", "/api/a/b/"),
        ("/api/", "/a", "/api/a"),
        ("/", "/a", "/a"),
        ("/api/v1", "/%252e%252e%252f", "/api/v1/%252e%252e%252f"),
    ],
)
def test_join_upstream_path(base: str, encoded: str, joined: str) -> None:
    assert join_upstream_path(base, encoded) == joined


@pytest.mark.parametrize(
    ("base", "encoded"),
    [
        ("", "a"),
        ("", ""),
        ("", "//evil.com/x"),
        ("/api", "@evil.com"),
        ("api", "/a"),
        ("//evil.com", "/a"),
        ("@evil.com", "/a"),
        ("/api?x=1", "/a"),
        ("/api#x", "/a"),
        ("\\\\evil.com", "/a"),
    ],
)
def test_join_upstream_path_refuses_unsafe_parts(base: str, encoded: str) -> None:
    with pytest.raises(ValueError):
        join_upstream_path(base, encoded)


# ---- properties -------------------------------------------------------------------------------

_PCHAR = set(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@")
_HEXDIGITS = set("0123456789ABCDEF")

# Pieces that exercise every rule: dots, encoded dots and slashes, parameters, double encoding,
# control characters, non-ASCII, bad escapes and delimiters.
# fmt: off
_PIECES = st.sampled_from(
    [
        "/", "//", ".", "..", "...", ";", ";x", "a", "B", "%2e", "%2E", "%2f", "%2F", "%252e",
        "%25",
        "%5c", "\\", "%00", "%0a", "%7f", "%20", " ", "%C3%A9", "é", "%ff", "%", "%4", "%zz",
        "#", "%23", "?", "%3F", "@", ":", "~", "%7E", "evil.com",
    ]
)
# fmt: on
_TAILS = st.lists(_PIECES, max_size=12).map("".join)
# Mostly dots and slashes, so that climbing and resolving are both common.
_DOTTY = st.lists(
    st.sampled_from(["/", "//", ".", "..", "a", "b;c", "%2e", "%2F", "..;x", ".;", "%2e%2e"]),
    max_size=10,
).map("".join)
_ROUTES = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=8).filter(
    lambda r: r not in (".", "..")
)


def _raw(route: str, tail: str) -> bytes:
    return ("/g/" + route + "/" + tail).encode("utf-8")


def _has_bad_escape(text: str) -> bool:
    parts = text.split("%")[1:]
    return any(len(p) < 2 or not set(p[:2]) <= set(string.hexdigits) for p in parts)


def _reference(raw_tail: bytes) -> str | None:
    """An independent model: unquote, collapse slashes, RFC 3986 §5.2.4 with climb detection."""
    text = unquote(raw_tail.decode("utf-8"), errors="strict")
    segments = [s for s in text.split("/") if s]
    segments = [".." if s.partition(";")[0] == ".." else s for s in segments]
    segments = ["." if s.partition(";")[0] == "." else s for s in segments]
    buffer = "/" + "/".join(segments) + ("/" if segments and text.endswith("/") else "")
    output = ""
    while buffer:
        if buffer.startswith("/./") or buffer == "/.":
            buffer = "/" + buffer[3:]
        elif buffer.startswith("/../") or buffer == "/..":
            if not output:
                return None
            buffer = "/" + buffer[4:]
            output = output[: output.rfind("/")]
        else:
            end = buffer.find("/", 1)
            end = len(buffer) if end < 0 else end
            output, buffer = output + buffer[:end], buffer[end:]
    return output or "/"


def _check_invariants(result: GatewayPath) -> None:
    assert result.path.startswith("/")
    assert "//" not in result.path and "//" not in result.encoded
    for segment in result.path.split("/"):
        assert segment.partition(";")[0] not in (".", "..")
    assert unquote(result.encoded, errors="strict") == result.path
    i = 0
    encoded = result.encoded
    while i < len(encoded):
        char = encoded[i]
        if char == "%":
            assert set(encoded[i + 1 : i + 3]) <= _HEXDIGITS
            i += 3
        else:
            assert char in _PCHAR or char == "/"
            i += 1
    again = parse_gateway_path(("/g/" + result.route + result.encoded).encode("ascii"))
    assert again == result


@given(_ROUTES, st.one_of(_TAILS, _DOTTY))
@example("demo", "%252e%252e%252f")
@example("demo", "a/..;/..;/b")
def test_structured_paths_keep_the_invariants(route: str, tail: str) -> None:
    raw = _raw(route, tail)
    try:
        result = parse_gateway_path(raw)
    except BadPath as exc:
        assert exc.detail
        return
    assert result is not None
    assert result.route == route
    _check_invariants(result)


@given(_ROUTES, st.one_of(_TAILS, _DOTTY))
@example("demo", "a/b/../../..")
def test_matches_reference_model(route: str, tail: str) -> None:
    raw_tail = tail.encode("utf-8")
    if _has_bad_escape(tail):
        return  # the model is lenient about escapes; the invariant tests cover them
    try:
        expected: str | None = _reference(raw_tail)
    except UnicodeDecodeError:
        return
    if any(c in tail for c in "#?") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in unquote(tail)):
        return
    try:
        result = parse_gateway_path(_raw(route, tail))
    except BadPath:
        assert expected is None
        return
    assert result is not None
    assert result.path == expected


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_badpath_or_give_a_path(tail: bytes) -> None:
    try:
        result = parse_gateway_path(b"/g/demo/" + tail)
    except BadPath:
        return
    assert result is not None
    _check_invariants(result)


@given(st.binary(max_size=40))
def test_arbitrary_raw_path_never_raises_anything_else(raw: bytes) -> None:
    try:
        result = parse_gateway_path(raw)
    except BadPath:
        return
    if result is None:
        assert not raw.startswith(b"/g/")
    else:
        _check_invariants(result)


@given(st.text(max_size=30))
def test_any_decoded_text_round_trips(text: str) -> None:
    # Whatever a client percent-encodes fully is accepted or refused, never mangled silently.
    raw = b"/g/demo/" + "".join(f"%{b:02X}" for b in text.encode("utf-8")).encode("ascii")
    try:
        result = parse_gateway_path(raw)
    except BadPath:
        assert any(ord(c) < 0x20 or ord(c) == 0x7F for c in text) or ".." in text
        return
    assert result is not None
    _check_invariants(result)
