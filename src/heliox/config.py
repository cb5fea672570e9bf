"""Settings: every environment variable an operator sets, validated once at start-up.

A bad value stops start-up with a message that names the variable (see `load_settings`). Two are
read where they are used (runtime.py), as each worker process of a server reads them after the
CLI may have set them: HELIOX_SPILL_DIR and HELIOX_METRICS_DIR.
"""

from __future__ import annotations

import ipaddress
import os
from functools import cached_property
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from heliox.core.bounds import MAX_BURST, MAX_RATE, MIN_RATE
from heliox.core.netdeny import DEFAULT_DENY_NETWORKS, Network, parse_networks
from heliox.core.secret_strength import GENERATE_HINT, weakness

DEFAULT_ADMIN_API_KEY = "admin-secret-key"
DEFAULT_SECRET_KEY = "heliox-demo-secret-key-change-me"
MIN_SECRET_LENGTH = 16
DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./heliox.db"


class ConfigError(Exception):
    """Start-up configuration is unusable; the message names the variable to fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=None, case_sensitive=False, extra="ignore", validate_default=True
    )

    # --- backends, admin, default limits, abuse detection -----------------------------------
    database_url: str = Field(
        "", description="SQLAlchemy async URL; empty = SQLite file ./heliox.db"
    )
    redis_url: str = Field(
        "", description="Redis URL (redis:// or rediss://); empty = in-process state"
    )
    secret_key: str = Field("", description="Signs admin UI sessions")
    admin_api_key: str = Field("", description="Admin credential (X-Admin-Key)")
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed to call the admin API"
    )
    auto_seed: bool | None = Field(None, description="Seed sample data; default on in demo mode")
    debug: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # --- structured logs (structured_log.py) ---
    log_format: Literal["text", "json"] = Field(
        "text",
        description="the process's own log lines on stderr: text, or json (one object per "
        "line: ts, level, logger, message)",
    )
    access_log: bool = Field(
        False,
        description="one JSON line per data-plane request on stdout (request id, route, key and "
        "tenant ids, status, cache, latencies, bytes, client address; never a key)",
    )
    access_log_buffer: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="access log lines held while stdout is slow; beyond them lines are dropped "
        "and counted (heliox_access_log_lines_dropped_total), requests never wait",
    )
    deployment_mode: Literal["demo", "production"] | None = Field(
        None, description="demo when neither DATABASE_URL nor REDIS_URL is set, else production"
    )
    default_rate_limit_rps: float = Field(
        100.0, ge=MIN_RATE, le=MAX_RATE, description="0.001 to 1e9 requests per second"
    )
    default_rate_limit_burst: int = Field(200, ge=1, le=MAX_BURST)
    abuse_ewma_alpha: float = Field(0.3, gt=0, le=1)
    abuse_zscore_threshold: float = Field(3.0, gt=0)
    # Bounded so that a block's end is always a valid date and a finite Redis TTL (30 days).
    abuse_block_duration_seconds: int = Field(300, ge=1, le=30 * 86400)
    abuse_window_seconds: int = Field(10, ge=1, le=3600)
    abuse_min_samples: int = Field(6, ge=1)
    abuse_min_rate: float = Field(
        5.0, ge=0, description="requests per window below which no verdict"
    )
    abuse_action: Literal["block", "multiplier", "shadow"] = "block"
    abuse_rate_multiplier: float = Field(0.1, gt=0, le=1)
    # --- abuse detection: evidence a verdict needs (see docs/abuse-detection.md) ---------------
    abuse_min_baseline_requests: float = Field(
        30.0, ge=0, le=1e9, description="requests a key's baseline must hold before any verdict"
    )
    abuse_min_spike_ratio: float = Field(
        4.0, ge=1, le=1e6, description="a flagged window holds at least this multiple of the mean"
    )
    abuse_min_limit_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="a flagged window holds at least this share of what the key's rate limit "
        "admits in it (a key may use what it pays for)",
    )
    # --- negative cache: a Bloom filter of paths that answered 404 -----------------------------
    bloom_expected_items: int = Field(10_000, ge=100)
    bloom_false_positive_rate: float = Field(0.01, gt=0, lt=1)
    bloom_rotation_seconds: float = Field(
        300.0, gt=0, description="a remembered 404 ages out after 1-2 of these"
    )

    # --- request path, cache, quotas, logs, configuration -------------------------------------
    example_upstream_url: str = Field(
        "http://127.0.0.1:8001", description="Upstream the seeded routes point at"
    )
    max_request_body_bytes: int = Field(10 * 1024 * 1024, ge=0)
    upstream_connect_timeout: float = Field(5.0, gt=0)
    upstream_read_timeout: float = Field(30.0, gt=0)
    upstream_pool_size: int = Field(
        256, ge=1, description="upstream connections per process and route (routes may override)"
    )
    trusted_proxies: str = Field(
        "", description="Comma-separated CIDRs whose X-Forwarded-For is trusted"
    )
    cache_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    # With Redis: fresh entries each instance keeps in process (0 turns it off); see cache_l1.
    cache_l1_max_bytes: int = Field(16 * 1024 * 1024, ge=0)
    # Seconds between returns of freed heap memory to the system (glibc malloc_trim); 0 = never.
    memory_trim_interval: float = Field(30.0, ge=0)
    # Slow heads (slowloris) are dropped after this; a request head over this size is 431.
    http_header_read_timeout: float = Field(30.0, gt=0, le=60)
    max_header_bytes: int = Field(64 * 1024, ge=8192)
    # As nginx's proxy_cache_lock_timeout / proxy_cache_lock_age: how long requests wait for
    # another's fill of the same entry, and how long a fill may hold the lock.
    cache_lock_timeout: float = Field(5.0, gt=0)
    cache_lock_age: float = Field(5.0, gt=0)
    quota_timezone: str = "UTC"
    log_retention_days: int = Field(30, ge=1)
    log_queue_size: int = Field(50_000, ge=100)
    config_poll_interval: float = Field(1.0, gt=0)
    key_rotation_grace_seconds: int = Field(3600, ge=0)
    redis_key_prefix: str = "heliox:"
    redis_cluster: bool = Field(
        False,
        description="REDIS_URL names one node of a Redis Cluster (its other nodes are discovered)",
    )
    background_jobs: bool = True

    # --- operations: connections, shutdown, periodic jobs --------------------------------------
    database_pool_size: int = Field(
        10, ge=1, le=1000, description="connections kept per process (as many again may overflow)"
    )
    database_timeout: float = Field(10.0, gt=0, description="seconds to connect to PostgreSQL")
    redis_pool_size: int = Field(64, ge=1, le=10_000, description="Redis connections per process")
    redis_timeout: float = Field(
        2.0, gt=0, description="seconds a Redis command (or a wait for a free connection) may take"
    )
    redis_connect_timeout: float = Field(1.0, gt=0, description="seconds to connect to Redis")
    shutdown_timeout: float = Field(
        30.0, gt=0, le=3600, description="seconds in-flight requests get to finish on SIGTERM"
    )
    log_retention_interval_seconds: float = Field(
        3600.0, gt=0, description="how often the log-retention job runs"
    )

    # --- metrics exposure ------------------------------------------------------------------------
    metrics_public: bool | None = Field(
        None,
        description="serve /metrics and /metrics/prometheus without the admin key; default: on "
        "in demo mode, off in production (then they need X-Admin-Key or the UI's session)",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="also serve the Prometheus text, without a key, on this port (0 = off); "
        "`heliox serve` binds it once, in its main process, for all workers",
    )
    metrics_host: str = Field(
        "", description="address the metrics port listens on; empty = the gateway's --host"
    )

    # --- upstream bulkheads and address checks (net/bulkhead.py, core/netdeny.py) --------------
    upstream_pool_timeout: float = Field(
        5.0,
        gt=0,
        le=60,
        description="seconds a request waits for one of its route's upstream connections "
        "before a 503 (as HAProxy's timeout queue, which defaults to its connect timeout)",
    )
    upstream_max_requests_per_key: int = Field(
        128,
        ge=1,
        le=1_000_000,
        description="upstream requests one API key may have in flight per process; more wait "
        "(UPSTREAM_POOL_TIMEOUT) for one of them to finish, then get 503",
    )
    upstream_deny_networks: str = Field(
        DEFAULT_DENY_NETWORKS,
        description="comma-separated CIDRs no upstream connection may go to, checked on the "
        "resolved address (empty = none); routes with allow_private_upstream are exempt",
    )

    # --- upstream keep-alive: idle pooled connections (net/upstream_client.py,
    # core/keepalive.py) ---------------------------------------------------------------------------
    upstream_keepalive_timeout: float = Field(
        4.0,
        gt=0,
        le=3600,
        description="seconds an idle upstream connection is kept for reuse; keep it below the "
        "upstreams' own keep-alive timeout (Node.js: 5 s). An upstream's shorter "
        "`Keep-Alive: timeout=T` is honoured (connections are not reused after T - 1 s)",
    )

    # --- refused authentication: bad API keys, admin-key guessing (gateway/refusals.py,
    # admin/throttle.py) ---------------------------------------------------------------------------
    auth_failure_rate: float = Field(
        10.0,
        ge=0.001,
        le=1_000_000,
        description="requests/s with a missing or unknown API key one client address may make "
        "before they get 429 instead of 401 (a token bucket per address, per process)",
    )
    auth_failure_burst: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="how many such requests an address may make at once; also how many log rows "
        "of its refused requests are kept at once (AUTH_FAILURE_RATE more per second)",
    )
    refused_log_rate: float = Field(
        100.0,
        ge=0,
        le=1_000_000,
        description="log rows per second, per process, for requests refused before a key was "
        "known (bad key, unknown route, malformed request); the rest are counted in /metrics",
    )
    admin_auth_max_failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="failed admin authentications in a row from one client address before it "
        "is locked out",
    )
    admin_auth_lockout_seconds: float = Field(
        1.0, ge=0.001, le=3600, description="the first lock-out; each further failure doubles it"
    )
    admin_auth_max_lockout_seconds: float = Field(
        900.0,
        ge=0.001,
        le=86_400,
        description="the longest lock-out; a streak is forgotten this long after it ended",
    )

    # --- slow and silent clients: connections and request bodies (connection_guard.py,
    # gateway/exchange.py) ----------------------------------------------------------------------
    client_idle_timeout: float = Field(
        75.0,
        gt=0,
        le=3600,
        description="seconds a client connection with no request in progress stays open after "
        "its last request (nginx keepalive_timeout); the next request's head must arrive "
        "within it",
    )
    client_max_connections: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="client connections per worker above which idle ones are closed at once, "
        "newest first (0 = derived from the open-file limit, `ulimit -n`, less the pools)",
    )
    request_body_timeout: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="seconds a request body may take to arrive in all, counting only the time "
        "the gateway waits for the client (routes may override; 408 after)",
    )
    request_body_min_rate: int = Field(
        1024,
        ge=0,
        le=2**31 - 1,
        description="bytes/s a request body must average once REQUEST_BODY_MIN_RATE_GRACE has "
        "passed (routes may override; 0 = no minimum; 408 below it)",
    )
    request_body_min_rate_grace: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="seconds of a request body before REQUEST_BODY_MIN_RATE applies",
    )

    # --- request-log writer: a database that hangs (db/logwriter.py) --------------------------
    log_write_timeout: float = Field(
        5.0,
        gt=0,
        le=60,
        description="seconds one database call of the request-log writer may take; a batch "
        "not written in time goes to the spill file, as when the database refuses",
    )

    # --- dependency faults: Redis circuit breaker, /health (state/redis_pipe.py, runtime.py) ---
    redis_breaker_failures: int = Field(
        5,
        ge=1,
        le=10_000,
        description="consecutive Redis failures (timeouts, lost connections, OOM, READONLY, "
        "LOADING, MASTERDOWN replies) that open the circuit breaker; while open, Redis is not "
        "called (rate limits fail open or closed per route, the cache misses)",
    )
    redis_breaker_open_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="seconds the breaker stays open after it first opens; then a probe in the "
        "background tries Redis, and each failed probe doubles the time",
    )
    redis_breaker_max_open_seconds: float = Field(
        30.0, gt=0, le=3600, description="the longest the breaker stays open between two probes"
    )
    health_timeout: float = Field(
        1.0,
        gt=0,
        le=60,
        description="seconds each dependency check of /health may take; /health itself answers "
        "at once from the last checks, made in the background",
    )
    health_check_interval: float = Field(
        2.0, gt=0, le=300, description="seconds between two background checks of the dependencies"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_any_case(cls, v: object) -> object:
        # Operators write LOG_LEVEL=info as often as INFO (Python's logging takes either).
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format_any_case(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, v: str) -> str:
        v = v.strip()
        if v.startswith("postgresql://") or v.startswith("postgres://"):
            # Accept the plain libpq form operators copy from their provider's console.
            v = "postgresql+asyncpg://" + v.split("://", 1)[1]
        if v and not (v.startswith("postgresql+asyncpg://") or v.startswith("sqlite+aiosqlite://")):
            raise ValueError("must start with postgresql+asyncpg:// or sqlite+aiosqlite://")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("database_url")
    @classmethod
    def _database_options(cls, v: str) -> str:
        return _asyncpg_url(v) if v.startswith("postgresql+asyncpg://") else v

    @field_validator("redis_url")
    @classmethod
    def _redis_options(cls, v: str) -> str:
        if v:
            _check_redis_url(v)
        return v

    @field_validator("redis_cluster")
    @classmethod
    def _redis_cluster_url(cls, v: bool, info: ValidationInfo) -> bool:
        url = info.data.get("redis_url") or ""  # absent when REDIS_URL itself was refused
        if v and url:
            parts = urlsplit(url)
            if parts.scheme == "unix":
                raise ValueError(
                    "REDIS_URL must name one cluster node by redis:// or rediss://, not a unix "
                    "socket"
                )
            db = dict(parse_qsl(parts.query)).get("db") or parts.path.strip("/") or "0"
            if db != "0":
                raise ValueError(
                    f"a Redis Cluster has only database 0 (REDIS_URL names database {db}); use "
                    "REDIS_KEY_PREFIX to separate deployments"
                )
        return v

    @field_validator("example_upstream_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("quota_timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as UTC)") from exc
        return v

    @field_validator("upstream_deny_networks")
    @classmethod
    def _deny_networks(cls, v: str) -> str:
        parse_networks(v)  # raises naming the bad entry
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: str) -> str:
        for part in _split(v):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError as exc:
                raise ValueError(f"{part!r} is not an IP address or CIDR") from exc
        return v

    @field_validator("deployment_mode", "auto_seed", "metrics_public", mode="before")
    @classmethod
    def _empty_is_default(cls, v: object) -> object:
        # `DEPLOYMENT_MODE=`, `AUTO_SEED=`, `METRICS_PUBLIC=` as .env.example shows them: the
        # mode's default, settled below.
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _mode_and_secrets(self) -> Settings:
        if self.deployment_mode is None:
            self.deployment_mode = "production" if (self.database_url or self.redis_url) else "demo"
        if self.auto_seed is None:
            self.auto_seed = self.deployment_mode == "demo"
        if self.metrics_public is None:
            # The demo's own instructions read the metrics with a plain curl; a production
            # deployment keeps them behind the admin key.
            self.metrics_public = self.deployment_mode == "demo"
        if self.deployment_mode == "demo":
            self.admin_api_key = self.admin_api_key or DEFAULT_ADMIN_API_KEY
            self.secret_key = self.secret_key or DEFAULT_SECRET_KEY
            return self
        # Everything is checked before anything is reported, so one start tells the operator
        # everything to fix.
        problems = _production_problems(
            self.database_url, self.redis_url, self.admin_api_key, self.secret_key
        )
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    # --- derived -------------------------------------------------------------------------------
    @property
    def is_demo(self) -> bool:
        return self.deployment_mode == "demo"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or DEFAULT_SQLITE_URL

    @property
    def is_postgres(self) -> bool:
        return self.effective_database_url.startswith("postgresql")

    @cached_property
    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)

    @cached_property
    def upstream_deny_network_list(self) -> tuple[Network, ...]:
        return parse_networks(self.upstream_deny_networks)

    @cached_property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p, strict=False) for p in _split(self.trusted_proxies)]


def _production_problems(
    database_url: str, redis_url: str, admin_api_key: str, secret_key: str
) -> list[str]:
    """Why production mode refuses these values: one line per variable, each named."""
    problems = []
    if not database_url and not redis_url:
        problems.append(
            "DATABASE_URL, REDIS_URL: DEPLOYMENT_MODE=production needs PostgreSQL and Redis, "
            "and neither is set (that would be SQLite and in-process state); set both, or unset "
            "DEPLOYMENT_MODE for embedded mode"
        )
    problems.extend(
        f"{name}: {why}; {GENERATE_HINT}"
        for name, value, default in (
            ("ADMIN_API_KEY", admin_api_key, DEFAULT_ADMIN_API_KEY),
            ("SECRET_KEY", secret_key, DEFAULT_SECRET_KEY),
        )
        if (why := _secret_problem(value, default)) is not None
    )
    return problems


def _raw_setting(name: str, overrides: dict[str, object]) -> str:
    value = overrides.get(name)
    if value is None:
        value = next((v for k, v in os.environ.items() if k.upper() == name.upper()), "")
    return str(value).strip()


def _production_problems_of_raw(overrides: dict[str, object]) -> list[str]:
    """The production checks on the raw values, for when another setting is already invalid
    (the model's own check then never runs): every problem is reported in one go."""
    raw = {name: _raw_setting(name, overrides) for name in (
        "deployment_mode", "database_url", "redis_url", "admin_api_key", "secret_key"
    )}  # fmt: skip
    mode = raw["deployment_mode"].lower() or (
        "production" if raw["database_url"] or raw["redis_url"] else "demo"
    )
    if mode != "production":
        return []
    return _production_problems(
        raw["database_url"], raw["redis_url"], raw["admin_api_key"], raw["secret_key"]
    )


def _secret_problem(value: str, demo_default: str) -> str | None:
    """Why production mode refuses `value` as a secret, or None."""
    if not value:
        return f"is empty; production mode needs a random value of {MIN_SECRET_LENGTH}+ characters"
    if value == demo_default:
        return "is the demo default"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    return weakness(value)


# --- connection URLs -------------------------------------------------------------------------
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_BOOLEANS = {"true": "require", "1": "require", "yes": "require", "on": "require",
                 "false": "disable", "0": "disable", "no": "disable", "off": "disable"}  # fmt: skip
# libpq options asyncpg does not take as arguments: say what to do instead of failing later.
_PG_ENV_INSTEAD = {
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
}
_PG_UNSUPPORTED = {
    "connect_timeout": "set DATABASE_TIMEOUT instead",
    "application_name": "Heliox names its connections 'heliox'",
    "options": "set server options on the database or role (ALTER ROLE ... SET ...)",
    "gssencmode": "the asyncpg driver does not support it",
    "keepalives": "the asyncpg driver does not support it",
    "keepalives_idle": "the asyncpg driver does not support it",
    "sslpassword": "use a key without a passphrase",
    "sslsni": "the asyncpg driver always sends SNI",
}
# Redis URL query options Heliox passes on; pool and timeouts have their own variables.
_REDIS_TLS_OPTIONS = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile",
     "ssl_check_hostname"}
)  # fmt: skip
_REDIS_OWN_SETTING = {
    "max_connections": "REDIS_POOL_SIZE",
    "timeout": "REDIS_TIMEOUT",
    "socket_timeout": "REDIS_TIMEOUT",
    "socket_connect_timeout": "REDIS_CONNECT_TIMEOUT",
}


def _asyncpg_url(url: str) -> str:
    """Translate libpq's URL options into asyncpg's (`sslmode=require` becomes `ssl=require`)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in options:
            raise ValueError(f"option {name!r} is given twice")
        options[name] = value
    for name, variable in _PG_ENV_INSTEAD.items():
        if name in options:
            raise ValueError(
                f"{name}= is not passed on by the asyncpg driver; remove it and set the "
                f"{variable} environment variable to the file instead"
            )
    for name, why in _PG_UNSUPPORTED.items():
        if name in options:
            raise ValueError(f"{name}= is not supported: {why}; remove it from the URL")
    binding = options.pop("channel_binding", None)
    if binding == "require":
        raise ValueError(
            "channel_binding=require is not supported by the asyncpg driver; remove it "
            "(ssl=verify-full authenticates the server instead)"
        )
    mode = options.pop("sslmode", None)
    if "ssl" in options:
        given = options["ssl"].lower()
        given = _SSL_BOOLEANS.get(given, given)
        if mode is not None and mode != given:
            raise ValueError(f"sslmode={mode} and ssl={options['ssl']} disagree; keep one")
        mode = given
    if mode is not None:
        if mode not in SSL_MODES:
            raise ValueError(f"sslmode/ssl must be one of {', '.join(SSL_MODES)} (got {mode!r})")
        options["ssl"] = mode
    return urlunsplit(parts._replace(query=urlencode(options)))


def _check_redis_url(url: str) -> None:
    parts = urlsplit(url)
    options: dict[str, str] = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, variable in _REDIS_OWN_SETTING.items():
        if name in options:
            raise ValueError(f"{name}= is set through {variable}; remove it from the URL")
    db_text = options.pop("db", None)
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ValueError("has no host (expected redis://[user:password@]host:port/db)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError("has an invalid port") from exc
        path = parts.path.strip("/")
        if path:
            if db_text is not None:
                raise ValueError("gives the database index twice (path and db=); keep one")
            db_text = path
    if db_text is not None and not (db_text.isdigit() and int(db_text) <= 1_000_000):
        raise ValueError(
            f"the database index must be a number such as /0 (got {db_text!r}); "
            "use REDIS_KEY_PREFIX to separate deployments within one database"
        )
    tls = {name: options.pop(name) for name in list(options) if name in _REDIS_TLS_OPTIONS}
    if options:
        allowed = ", ".join(sorted(_REDIS_TLS_OPTIONS))
        raise ValueError(
            f"unknown option(s) {', '.join(sorted(options))}; Heliox passes on only the TLS "
            f"options {allowed} (pool size and timeouts have their own REDIS_* variables)"
        )
    if tls and parts.scheme != "rediss":
        raise ValueError(f"{', '.join(sorted(tls))} need a TLS URL: use rediss://")
    reqs = tls.get("ssl_cert_reqs")
    if reqs is not None and reqs not in ("none", "optional", "required"):
        raise ValueError(f"ssl_cert_reqs must be none, optional or required (got {reqs!r})")
    check = tls.get("ssl_check_hostname")
    if check is not None and check.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"ssl_check_hostname must be true or false (got {check!r})")
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in tls and not os.path.isfile(tls[name]):
            raise ValueError(f"{name}={tls[name]} is not a readable file")
    if "ssl_ca_path" in tls and not os.path.isdir(tls["ssl_ca_path"]):
        raise ValueError(f"ssl_ca_path={tls['ssl_ca_path']} is not a directory")


def redact_url(url: str) -> str:
    """The URL with its password (and any password= option) replaced by ****."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        if sep:
            netloc = f"{user}:****@{hostport}"
        elif parts.scheme.startswith("redis"):
            netloc = f"****@{hostport}"  # redis://TOKEN@host: a lone userinfo may be a secret
    if query:
        query = "&".join(
            f"{k}=****" if "password" in k.lower() or k.lower() == "token" else f"{k}={v}"
            for k, v in (item.partition("=")[::2] for item in query.split("&"))
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # untouched, byte for byte (urlunsplit would drop an empty "//")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


SECRET_SETTINGS = frozenset({"admin_api_key", "secret_key"})
URL_SETTINGS = frozenset({"database_url", "redis_url"})


def effective_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """(VARIABLE, value, source) for every setting, secrets masked; source is env or default."""
    rows = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in SECRET_SETTINGS:
            shown = f"**** ({len(value)} characters)" if value else ""
        elif name in URL_SETTINGS:
            shown = redact_url(str(value))
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = "" if value is None else str(value)
        source = "env" if name.upper() in {k.upper() for k in os.environ} else "default"
        rows.append((name.upper(), shown, source))
    return rows


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise ConfigError naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        checked_production = False
        for err in exc.errors():
            loc = err.get("loc") or ()
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            if loc:
                name = str(loc[0]).upper()
                value = os.environ.get(name)
                if value is not None and name.endswith("_URL"):
                    value = redact_url(value)  # never the password
                shown = f" (got {value!r})" if value is not None and "KEY" not in name else ""
                lines.append(f"{name}: {msg}{shown}")
            else:
                lines.append(msg)
                checked_production = True
        if not checked_production:
            lines.extend(_production_problems_of_raw(overrides))
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
