"""The in-memory configuration the hot path reads: routes, keys, tenants and cache policies.

Immutable once built; an admin write bumps the config version and every instance swaps in a
freshly loaded snapshot (`heliox.db.snapshot_loader`). The request path never touches SQL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime


def hash_key(plaintext: str | bytes) -> str:
    """SHA-256 hex digest of an API key, the only form in which keys are stored."""
    if isinstance(plaintext, str):
        plaintext = plaintext.encode("utf-8")
    return hashlib.sha256(plaintext).hexdigest()


@dataclass(frozen=True, slots=True)
class CachePolicyConfig:
    id: int
    name: str
    mode: str = "policy"  # "policy" | "origin"
    ttl_seconds: int = 60
    stale_while_revalidate_seconds: int = 0
    stale_if_error_seconds: int = 0
    vary_headers: tuple[str, ...] = ()  # lower-case header names
    cacheable_methods: frozenset[str] = frozenset({"GET", "HEAD"})
    cacheable_statuses: frozenset[int] = frozenset({200, 203, 204, 300, 301, 308, 404, 410})
    max_object_bytes: int = 1024 * 1024
    shared: bool = False
    negative_cache: bool = True
    # Requests carrying Cookie are looked up and stored (the cookie is then not forwarded on a
    # fill); by default they bypass the cache unless Cookie is a vary header.
    cache_with_cookies: bool = False
    # Seconds an entry that carries a validator (ETag or Last-Modified) is kept after its stale
    # windows end, so it can be revalidated with a conditional request instead of fetched again
    # (Varnish's beresp.keep); 0: not kept.
    keep_seconds: int = 600
    # How long a request waits for another request's fill of the same entry before going
    # upstream alone (nginx proxy_cache_lock_timeout); None: the gateway's CACHE_LOCK_TIMEOUT.
    lock_timeout_seconds: float | None = None
    # How long a fill may hold the lock before another request may take it over (nginx
    # proxy_cache_lock_age); None: the gateway's CACHE_LOCK_AGE.
    lock_age_seconds: float | None = None
    # Variants stored per URL when the upstream's Vary selects them by request headers; the
    # least recently stored is dropped beyond it.
    max_variants: int = 8


@dataclass(frozen=True, slots=True)
class RouteConfig:
    id: int
    name: str
    upstream_url: str  # scheme://host[:port][/base], no trailing slash
    path_pattern: str = "/*"
    methods: frozenset[str] = frozenset(
        {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
    )
    cache_policy: CachePolicyConfig | None = None
    is_public: bool = False
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    rate_limit_algorithm: str | None = None
    fail_mode: str = "open"  # "open" | "closed"
    max_request_body_bytes: int | None = None
    timeout_seconds: float | None = None
    # The request body's deadline in all and its minimum rate in bytes/s (None: the settings'
    # REQUEST_BODY_TIMEOUT and REQUEST_BODY_MIN_RATE; a rate of 0: no minimum).
    request_body_timeout_seconds: float | None = None
    request_body_min_rate: int | None = None
    hide_ratelimit_headers: bool = False
    # Upstream connections this route may hold at once (None: UPSTREAM_POOL_SIZE), and whether
    # it may connect to addresses in UPSTREAM_DENY_NETWORKS (the admin's explicit opt-in).
    max_upstream_connections: int | None = None
    allow_private_upstream: bool = False
    # Parsed pieces of upstream_url, filled by the loader so the hot path never re-parses.
    upstream_scheme: str = "http"
    upstream_host: str = ""
    upstream_port: int = 80
    upstream_base_path: str = ""  # "" or "/base" (no trailing slash)


@dataclass(frozen=True, slots=True)
class TenantConfig:
    id: int
    name: str
    is_active: bool = True


@dataclass(frozen=True, slots=True)
class KeyConfig:
    id: int
    tenant_id: int
    name: str
    key_prefix: str
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    rate_limit_algorithm: str = "token_bucket"
    rate_limit_window_seconds: int = 1
    daily_quota: int | None = None
    monthly_quota: int | None = None
    expires_at: datetime | None = None  # rotated keys stay valid until then
    # Abuse detection for this key, resolved from the key's and its tenant's settings by the
    # loader: exempt keys are not observed; a threshold replaces ABUSE_ZSCORE_THRESHOLD.
    abuse_exempt: bool = False
    abuse_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int = 0
    routes: dict[str, RouteConfig] = field(default_factory=dict)  # by route name
    keys: dict[str, KeyConfig] = field(default_factory=dict)  # by SHA-256 hex digest
    tenants: dict[int, TenantConfig] = field(default_factory=dict)
    keys_by_id: dict[int, KeyConfig] = field(default_factory=dict)
