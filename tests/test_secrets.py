"""Production refuses guessable secrets (placeholders, repeated characters, low estimated entropy),
naming each variable; the shipped compose file carries no default for them."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
import yaml

from heliox.config import ConfigError, Settings, load_settings
from heliox.core.secret_strength import MIN_BITS, estimated_bits, weakness

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql+asyncpg://app@db.example.com:5432/heliox"
STRONG = "test-secret-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("change-me-to-a-long-random-admin-key", "placeholder"),
        ("Change_Me_Please_0123456789", "placeholder"),
        ("heliox-demo-secret-key-change-me", "placeholder"),
        ("your-secret-here-0123456789", "placeholder"),
        ("admin-secret-key", "common word"),
        ("Super-Secret-Key", "common word"),
        ("password12345678", "common word"),
        ("x" * 64, "one character repeated"),
        ("abababababababababab", "too easy to guess"),
        ("0123456789012345", "too easy to guess"),
    ],
)
def test_guessable_values_are_named_with_the_reason(value: str, why: str) -> None:
    reason = weakness(value)
    assert reason is not None and why in reason


@pytest.mark.parametrize(
    "value",
    [
        secrets.token_urlsafe(32),
        secrets.token_hex(32),
        secrets.token_hex(16),
        "test-admin-key-0123456789abcdef",
        "ui-test-admin-key-0123456789",
    ],
    # Named by kind, not by value: the suite's processes must collect the same test ids.
    ids=["token_urlsafe-32", "token_hex-32", "token_hex-16", "test-key", "ui-test-key"],
)
def test_generated_values_pass(value: str) -> None:
    assert weakness(value) is None
    assert estimated_bits(value) >= MIN_BITS


def test_production_names_every_variable_to_fix_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(database_url=PG, admin_api_key="a" * 20, secret_key="changeme" * 3)
    text = str(info.value)
    assert "ADMIN_API_KEY: is one character repeated" in text
    assert "SECRET_KEY: is a placeholder" in text
    assert "token_urlsafe" in text  # says how to make a good one
    assert "a" * 20 not in text and "changeme" not in text


def test_production_accepts_generated_secrets_and_demo_keeps_its_defaults() -> None:
    key = secrets.token_urlsafe(32)
    s = load_settings(database_url=PG, admin_api_key=key, secret_key=STRONG)
    assert (s.deployment_mode, s.admin_api_key) == ("production", key)
    demo = load_settings()
    assert demo.deployment_mode == "demo" and demo.admin_api_key == "admin-secret-key"


def test_the_compose_file_has_no_default_secret() -> None:
    compose = yaml.safe_load((ROOT / "infra" / "docker-compose.yml").read_text())
    seen = 0
    for service in compose["services"].values():
        env = service.get("environment") or {}
        for name in ("ADMIN_API_KEY", "SECRET_KEY"):
            if name in env:
                seen += 1
                # ${NAME:?message}: compose stops with the message when NAME is unset or empty.
                assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", env[name]), env[name]
    assert seen >= 2
