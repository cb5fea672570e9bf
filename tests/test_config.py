"""Settings: connection options, operations settings, validation messages, masking."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from heliox.config import (
    ConfigError,
    Settings,
    effective_settings,
    load_settings,
    redact_url,
)

PG = "postgresql+asyncpg://app:s3cret@db.example.com:5432/heliox"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment the tests run in."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def demo(**overrides: object) -> Settings:
    return load_settings(deployment_mode="demo", **overrides)


def config_error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        demo(**overrides)
    return str(info.value)


# --- operations settings ----------------------------------------------------------------------
def test_operations_defaults() -> None:
    s = demo()
    assert (s.database_pool_size, s.database_timeout) == (10, 10.0)
    assert (s.redis_pool_size, s.redis_timeout, s.redis_connect_timeout) == (64, 2.0, 1.0)
    assert s.shutdown_timeout == 30.0
    assert s.log_retention_interval_seconds == 3600.0
    assert s.background_jobs is True


def test_operations_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_SIZE", "3")
    monkeypatch.setenv("REDIS_TIMEOUT", "0.5")
    monkeypatch.setenv("SHUTDOWN_TIMEOUT", "12")
    monkeypatch.setenv("BACKGROUND_JOBS", "false")
    s = demo()
    assert (s.database_pool_size, s.redis_timeout, s.shutdown_timeout) == (3, 0.5, 12.0)
    assert s.background_jobs is False


def test_log_level_is_taken_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", " warning ")
    assert demo().log_level == "WARNING"
    monkeypatch.setenv("LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        demo()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SHUTDOWN_TIMEOUT", "0"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_TIMEOUT", "-1"),
        ("REDIS_POOL_SIZE", "lots"),
        ("REDIS_TIMEOUT", "0"),
        ("REDIS_CONNECT_TIMEOUT", "0"),
        ("LOG_RETENTION_INTERVAL_SECONDS", "0"),
        ("BACKGROUND_JOBS", "sometimes"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        demo()
    assert f"{variable}:" in str(info.value)
    assert repr(value) in str(info.value)


# --- DATABASE_URL: libpq options translated for asyncpg ---------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (PG, PG),
        (PG + "?sslmode=require", PG + "?ssl=require"),
        (PG + "?sslmode=verify-full", PG + "?ssl=verify-full"),
        (PG + "?ssl=require", PG + "?ssl=require"),
        (PG + "?ssl=true", PG + "?ssl=require"),
        (PG + "?ssl=false", PG + "?ssl=disable"),
        (PG + "?sslmode=require&ssl=require", PG + "?ssl=require"),
        # What Neon's console hands out (plain libpq scheme, channel binding preferred).
        (
            "postgresql://app:s3cret@db.example.com:5432/heliox?sslmode=require"
            "&channel_binding=prefer",
            PG + "?ssl=require",
        ),
        (
            PG + "?sslmode=require&target_session_attrs=read-write",
            PG + "?target_session_attrs=read-write&ssl=require",
        ),
    ],
)
def test_database_url_ssl_options_become_asyncpg_ones(given: str, expected: str) -> None:
    assert demo(database_url=given).database_url == expected


def test_the_translated_url_hands_asyncpg_its_ssl_argument() -> None:
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

    url = demo(database_url=PG + "?sslmode=verify-full").database_url
    # SQLAlchemy's dialect classes carry no annotations, so mypy calls them untyped.
    dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
    _, kwargs = dialect.create_connect_args(make_url(url))  # type: ignore[no-untyped-call]
    assert kwargs["ssl"] == "verify-full"
    assert "sslmode" not in kwargs


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("sslmode=bogus", "sslmode/ssl must be one of"),
        ("sslmode=require&ssl=disable", "disagree"),
        ("sslrootcert=/etc/ca.pem", "PGSSLROOTCERT"),
        ("sslcert=/c.pem", "PGSSLCERT"),
        ("channel_binding=require", "channel_binding=require"),
        ("connect_timeout=5", "DATABASE_TIMEOUT"),
        ("application_name=x", "application_name"),
        ("ssl=require&ssl=disable", "given twice"),
    ],
)
def test_database_url_options_asyncpg_cannot_take_are_refused(query: str, says: str) -> None:
    message = config_error(database_url=f"{PG}?{query}")
    assert "DATABASE_URL:" in message
    assert says in message
    assert "s3cret" not in message


def test_sqlite_urls_are_left_alone() -> None:
    url = "sqlite+aiosqlite:///./data/heliox.db"
    assert demo(database_url=url).database_url == url


# --- REDIS_URL: db index, TLS options --------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/0",
        "redis://:pw@127.0.0.1:6379/15",
        "rediss://default:token@eu1.example.io:6379",
        "rediss://default:token@eu1.example.io:6379/0?ssl_cert_reqs=none",
        "rediss://h:6380/2?ssl_cert_reqs=required&ssl_check_hostname=false",
        "redis://127.0.0.1:6379?db=3",
        "unix:///var/run/redis.sock?db=1",
    ],
)
def test_valid_redis_urls(url: str) -> None:
    assert demo(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://127.0.0.1:6379/zero", "database index must be a number"),
        ("redis://127.0.0.1:6379/-1", "database index must be a number"),
        ("redis://127.0.0.1:6379/1?db=2", "twice"),
        ("redis://:6379/0", "has no host"),
        ("redis://h:99999/0", "invalid port"),
        ("redis://h:6379/0?ssl_cert_reqs=none", "use rediss://"),
        ("rediss://h:6379/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("rediss://h:6379/0?ssl_check_hostname=perhaps", "ssl_check_hostname must be"),
        ("rediss://h:6379/0?ssl_ca_certs=/nonexistent/ca.pem", "not a readable file"),
        ("redis://h:6379/0?max_connections=5", "REDIS_POOL_SIZE"),
        ("redis://h:6379/0?socket_timeout=5", "REDIS_TIMEOUT"),
        ("redis://h:6379/0?socket_connect_timeout=5", "REDIS_CONNECT_TIMEOUT"),
        ("redis://h:6379/0?decode_responses=true", "unknown option"),
        ("http://h:6379/0", "must start with redis://"),
    ],
)
def test_bad_redis_urls_are_refused_naming_the_variable(url: str, says: str) -> None:
    message = config_error(redis_url=url)
    assert "REDIS_URL:" in message
    assert says in message


def test_redis_tls_files_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here, only its presence\n")
    url = f"rediss://h:6379/0?ssl_ca_certs={ca}"
    assert demo(redis_url=url).redis_url == url


# --- masking ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("", ""),
        ("sqlite+aiosqlite:///./heliox.db", "sqlite+aiosqlite:///./heliox.db"),
        (
            PG + "?ssl=require",
            "postgresql+asyncpg://app:****@db.example.com:5432/heliox?ssl=require",
        ),
        ("postgresql+asyncpg://app@db/heliox", "postgresql+asyncpg://app@db/heliox"),
        ("rediss://default:tok@h:6379/0", "rediss://default:****@h:6379/0"),
        ("redis://:tok@h:6379", "redis://:****@h:6379"),
        ("redis://tok@h:6379", "redis://****@h:6379"),
        ("redis://h:6379/0?password=tok", "redis://h:6379/0?password=****"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_effective_settings_lists_every_setting_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ADMIN_API_KEY", "an-admin-key-long-enough-1234")
    monkeypatch.setenv("SECRET_KEY", "a-session-secret-long-enough-5678")
    monkeypatch.setenv("DATABASE_URL", PG)
    monkeypatch.setenv("REDIS_URL", "rediss://default:redis-token@h:6379/0")
    rows = effective_settings(load_settings())
    assert [name for name, _, _ in rows] == [n.upper() for n in Settings.model_fields]
    text = repr(rows)
    for secret in ("an-admin-key-long-enough-1234", "a-session-secret", "s3cret", "redis-token"):
        assert secret not in text
    values = {name: (value, source) for name, value, source in rows}
    assert values["ADMIN_API_KEY"] == ("**** (29 characters)", "env")
    assert values["DATABASE_URL"][0] == "postgresql+asyncpg://app:****@db.example.com:5432/heliox"
    assert values["SHUTDOWN_TIMEOUT"] == ("30.0", "default")
    assert values["DEPLOYMENT_MODE"][0] == "production"


# --- .env.example ---------------------------------------------------------------------------------
ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"
ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(set, commented-out) assignments of .env.example."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ASSIGNMENT.match(line.strip())
        if match:
            (commented if match.group(1) else active)[match.group(2)] = match.group(3)
    return active, commented


def shown(default: object) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    return "" if default is None else str(default)


def test_env_example_lists_every_setting_with_its_default() -> None:
    active, commented = env_example()
    fields = {name.upper(): field for name, field in Settings.model_fields.items()}
    assert sorted(set(fields) - set(active) - set(commented)) == []
    for name, value in commented.items():
        if name in fields:
            assert value == shown(fields[name].default), name


def test_env_example_is_a_valid_production_configuration_once_its_secrets_are_generated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    active, _ = env_example()
    for name, value in active.items():
        monkeypatch.setenv(name, value)
    # As given, its two placeholders are refused, each named.
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "ADMIN_API_KEY: is a placeholder" in str(refused.value)
    assert "SECRET_KEY: is a placeholder" in str(refused.value)
    monkeypatch.setenv("ADMIN_API_KEY", secrets.token_urlsafe(32))
    monkeypatch.setenv("SECRET_KEY", secrets.token_hex(32))
    settings = load_settings()
    assert settings.deployment_mode == "production"
    assert settings.database_url.startswith("postgresql+asyncpg://")


@pytest.mark.parametrize("variable", ["DEPLOYMENT_MODE", "AUTO_SEED", "METRICS_PUBLIC"])
def test_an_empty_mode_dependent_setting_takes_the_modes_default(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """`NAME=` uncommented from .env.example means what leaving it out means."""
    monkeypatch.setenv(variable, " ")
    s = load_settings()
    assert (s.deployment_mode, s.auto_seed, s.metrics_public) == ("demo", True, True)
    monkeypatch.setenv("DATABASE_URL", PG)
    monkeypatch.setenv("ADMIN_API_KEY", secrets.token_urlsafe(32))
    monkeypatch.setenv("SECRET_KEY", secrets.token_hex(32))
    s = load_settings()
    assert (s.deployment_mode, s.auto_seed, s.metrics_public) == ("production", False, False)


# --- upstream bulkheads and address checks ----------------------------------------------------
def test_upstream_bulkhead_and_deny_defaults() -> None:
    s = demo()
    assert (s.upstream_pool_size, s.upstream_pool_timeout) == (256, 5.0)
    assert s.upstream_max_requests_per_key == 128
    assert [str(n) for n in s.upstream_deny_network_list] == [
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",
        "100.100.100.200/32",
        "168.63.129.16/32",
    ]


def test_upstream_deny_networks_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_DENY_NETWORKS", "")
    assert demo().upstream_deny_network_list == ()
    monkeypatch.setenv("UPSTREAM_DENY_NETWORKS", "10.0.0.0/8, 169.254.169.254")
    assert [str(n) for n in demo().upstream_deny_network_list] == [
        "10.0.0.0/8",
        "169.254.169.254/32",
    ]


def test_bad_upstream_bulkhead_and_deny_settings_are_named() -> None:
    message = config_error(upstream_deny_networks="169.254.0.0/16,metadata")
    assert "UPSTREAM_DENY_NETWORKS: 'metadata' is not an IP address or CIDR" in message
    assert "UPSTREAM_POOL_TIMEOUT" in config_error(upstream_pool_timeout=0)
    assert "UPSTREAM_MAX_REQUESTS_PER_KEY" in config_error(upstream_max_requests_per_key=0)


# --- abuse detection bounds -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value"),
    [("ABUSE_BLOCK_DURATION_SECONDS", "1000000000000"), ("ABUSE_WINDOW_SECONDS", "86400")],
)
def test_abuse_durations_past_their_bounds_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A block ending past every valid date would turn each refusal of the key into a 500."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        demo()
