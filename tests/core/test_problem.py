"""RFC 9457 problem bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heliox.core.problem import PROBLEM_CONTENT_TYPE, default_title, problem_body


def test_content_type() -> None:
    assert PROBLEM_CONTENT_TYPE == b"application/problem+json"


def test_members_present_and_compact() -> None:
    body = problem_body(400, "Bad path", "path climbs above the route's base: '/..'")
    assert json.loads(body) == {
        "type": "about:blank",
        "status": 400,
        "title": "Bad path",
        "detail": "path climbs above the route's base: '/..'",
    }
    assert body.startswith(b'{"type":"about:blank","status":400,"title":"Bad path","detail":')


def test_type_instance_and_extensions() -> None:
    body = problem_body(
        429,
        "Too Many Requests",
        "rate limit of key 'hx_prod_acme' exceeded",
        type_="https://heliox.dev/problems/rate-limited",
        instance="/g/demo/items",
        limit="rate",
        retry_after=3,
        remaining=0,
    )
    document = json.loads(body)
    assert document["type"] == "https://heliox.dev/problems/rate-limited"
    assert document["instance"] == "/g/demo/items"
    assert (document["limit"], document["retry_after"], document["remaining"]) == ("rate", 3, 0)
    assert list(document)[:5] == ["type", "status", "title", "detail", "instance"]


def test_instance_omitted_when_absent() -> None:
    assert "instance" not in json.loads(problem_body(404, "Not Found", "no route 'x'"))


@pytest.mark.parametrize(
    ("status", "title"),
    [(404, "Not Found"), (429, "Too Many Requests"), (502, "Bad Gateway"), (499, "Client error")],
)
def test_empty_title_defaults_per_status(status: int, title: str) -> None:
    assert json.loads(problem_body(status, "", "d"))["title"] == title
    assert default_title(status) == title


def test_unregistered_server_status_gets_a_generic_title() -> None:
    assert default_title(599) == "Error"


def test_non_ascii_and_markup_survive_as_data() -> None:
    detail = "unknown route 'café/日本' <script>alert(1)</script> & \"quotes\" \\ \u2028"
    body = problem_body(404, "Not Found", detail, instance="/g/<img src=x>")
    document = json.loads(body)
    assert document["detail"] == detail
    assert document["instance"] == "/g/<img src=x>"
    body.decode("utf-8")  # valid UTF-8
    assert "café".encode() in body
    # Markup never appears literally, so no client can render it as HTML.
    assert b"<" not in body and b">" not in body and b"&" not in body


def test_lone_surrogate_does_not_break_the_body() -> None:
    detail = b"bad \xff byte".decode("utf-8", "surrogateescape")
    document = json.loads(problem_body(400, "Bad Request", detail))
    assert document["detail"] == detail


def test_non_json_extension_values_are_rendered_as_text() -> None:
    document = json.loads(problem_body(503, "", "d", since=frozenset()))
    assert document["since"] == "frozenset()"


def test_extensions_cannot_replace_standard_members() -> None:
    # The other members are named parameters, so Python itself refuses them twice.
    with pytest.raises(ValueError, match="type"):
        problem_body(400, "t", "d", **{"type": "https://evil.example/"})


@given(
    st.integers(100, 599),
    st.text(),
    st.text(),
    st.dictionaries(st.from_regex(r"\A[a-z_]{1,8}\Z"), st.text() | st.integers(), max_size=3),
)
def test_always_valid_json(status: int, title: str, detail: str, extra: dict[str, Any]) -> None:
    extra = {
        k: v
        for k, v in extra.items()
        if k not in {"type", "status", "title", "detail", "instance", "type_"}
    }
    document = json.loads(problem_body(status, title, detail, **extra))
    assert document["status"] == status
    assert document["detail"] == detail
    assert document["title"] == (title or default_title(status))
    for key, value in extra.items():
        assert document[key] == value
