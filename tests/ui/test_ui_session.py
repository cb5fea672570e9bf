"""Session tokens: signing, expiry, tampering, and the CSRF token bound to them."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heliox.ui import session as s

KEY = s.signing_key("secret-key-0123456789abcdef", "admin-key-0123456789abcdef")
NOW = 1_800_000_000.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(payload: dict[str, object], signature_from: str) -> str:
    """A token with a chosen payload and another token's signature."""
    return f"v1.{_b64(json.dumps(payload).encode())}.{signature_from.split('.')[2]}"


def test_a_fresh_token_decodes_to_its_session() -> None:
    token, issued = s.issue(KEY, now=NOW, ttl=600)
    assert s.decode(KEY, token, now=NOW + 1) == issued
    assert issued.expires_at == int(NOW) + 600
    assert issued.csrf_token and issued.session_id and issued.csrf_token != issued.session_id


def test_each_session_gets_its_own_ids() -> None:
    (_, a), (_, b) = s.issue(KEY, now=NOW), s.issue(KEY, now=NOW)
    assert a.session_id != b.session_id
    assert a.csrf_token != b.csrf_token


@pytest.mark.parametrize(("offset", "valid"), [(599, True), (600, False), (10_000, False)])
def test_a_token_expires_at_its_ttl(offset: int, valid: bool) -> None:
    token, _ = s.issue(KEY, now=NOW, ttl=600)
    assert (s.decode(KEY, token, now=NOW + offset) is not None) is valid


def test_a_token_from_the_future_beyond_the_skew_is_refused() -> None:
    token, _ = s.issue(KEY, now=NOW + s.CLOCK_SKEW_SECONDS + 5, ttl=600)
    assert s.decode(KEY, token, now=NOW) is None
    near, _ = s.issue(KEY, now=NOW + s.CLOCK_SKEW_SECONDS - 5, ttl=600)
    assert s.decode(KEY, near, now=NOW) is not None


def test_another_secret_or_admin_key_invalidates_every_session() -> None:
    token, _ = s.issue(KEY, now=NOW)
    other_secret = s.signing_key("another-secret-0123456789", "admin-key-0123456789abcdef")
    other_admin = s.signing_key("secret-key-0123456789abcdef", "rotated-admin-key-012345678")
    assert s.decode(other_secret, token, now=NOW) is None
    assert s.decode(other_admin, token, now=NOW) is None


def test_a_payload_changed_after_signing_is_refused() -> None:
    token, issued = s.issue(KEY, now=NOW, ttl=600)
    longer = {"sid": issued.session_id, "csrf": issued.csrf_token, "iat": int(NOW), "exp": 2**40}
    assert s.decode(KEY, _forge(longer, token), now=NOW) is None


def test_a_changed_signature_is_refused() -> None:
    token, _ = s.issue(KEY, now=NOW)
    head, payload, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert s.decode(KEY, f"{head}.{payload}.{flipped}", now=NOW) is None
    assert s.decode(KEY, f"{head}.{payload}.", now=NOW) is None


def test_a_token_of_another_version_is_refused() -> None:
    token, _ = s.issue(KEY, now=NOW)
    assert s.decode(KEY, "v2" + token[2:], now=NOW) is None


@pytest.mark.parametrize(
    "payload",
    [
        {"sid": "a", "csrf": "b", "iat": True, "exp": 2**40},
        {"sid": "a", "csrf": "", "iat": 1, "exp": 2**40},
        {"sid": "a", "csrf": "b", "iat": 1, "exp": "2000000000"},
        ["not", "an", "object"],
    ],
)
def test_a_correctly_signed_but_malformed_payload_is_refused(payload: object) -> None:
    body = f"v1.{_b64(json.dumps(payload).encode())}"
    token = f"{body}.{_b64(s._sign(KEY, body))}"
    assert s.decode(KEY, token, now=NOW) is None


@given(st.text(max_size=300))
def test_decode_never_raises_on_arbitrary_input(token: str) -> None:
    assert s.decode(KEY, token, now=NOW) is None


def test_overlong_and_non_ascii_tokens_are_refused_before_any_work() -> None:
    token, _ = s.issue(KEY, now=NOW)
    assert s.decode(KEY, token + "x" * s.MAX_TOKEN_LENGTH, now=NOW) is None
    assert s.decode(KEY, token.replace("v1", "v¹", 1), now=NOW) is None


def test_csrf_token_must_match_its_session_exactly() -> None:
    _, issued = s.issue(KEY, now=NOW)
    assert s.csrf_matches(issued, issued.csrf_token)
    assert not s.csrf_matches(issued, None)
    assert not s.csrf_matches(issued, "")
    assert not s.csrf_matches(issued, issued.csrf_token + "x")
    assert not s.csrf_matches(issued, issued.csrf_token.upper())
    _, other = s.issue(KEY, now=NOW)
    assert not s.csrf_matches(issued, other.csrf_token)
    assert not s.csrf_matches(issued, "é" * 10)
