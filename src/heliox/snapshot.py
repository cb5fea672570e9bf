"""The in-memory configuration the hot path reads: routes, keys, tenants and cache policies.

An admin write bumps the config version and records what it changed; every instance then applies
just that change (`apply_delta`: the rows it names, re-read by `heliox.db.snapshot_loader`) and
loads the whole snapshot only when it cannot know what changed (it missed versions the database
no longer describes, or starts up). The request path never touches SQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    # The key's digest (its entry in Snapshot.keys), so a delta can drop the entry by key id.
    key_hash: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int = 0
    routes: dict[str, RouteConfig] = field(default_factory=dict)  # by route name
    keys: dict[str, KeyConfig] = field(default_factory=dict)  # by SHA-256 hex digest
    tenants: dict[int, TenantConfig] = field(default_factory=dict)
    keys_by_id: dict[int, KeyConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigDelta:
    """What moved between two config versions: the rows named by the changes, as re-read.

    Each mapping holds every id the changes name; None means the row is gone or no longer served
    (a revoked, disabled or expired key, a key of an inactive tenant, an inactive route, a route
    whose upstream URL cannot be proxied to).
    """

    version: int
    tenants: Mapping[int, TenantConfig | None] = field(default_factory=dict)
    keys: Mapping[int, KeyConfig | None] = field(default_factory=dict)
    routes: Mapping[int, RouteConfig | None] = field(default_factory=dict)
    # Tenants whose every key not in `keys` is dropped: deleted tenants, whose key rows went with
    # them, so the database can no longer name those keys.
    sweep_tenants: frozenset[int] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.tenants or self.keys or self.routes or self.sweep_tenants)


def apply_delta(old: Snapshot, delta: ConfigDelta) -> Snapshot:
    """The snapshot `old` becomes once `delta` is applied.

    Routes and tenants (a few thousand at most) are copied. The key tables are taken over and
    updated in place, because copying a million entries would stall the event loop for 0.1-0.2 s
    on every change: `old` must not be used afterwards (the runtime swaps the result in at once and
    drops it). A delta to an older version is a caller's error.
    """
    if delta.version < old.version:
        raise ValueError(f"delta to version {delta.version} is older than {old.version}")
    tenants = old.tenants
    if delta.tenants:
        tenants = dict(old.tenants)
        for tenant_id, tenant in delta.tenants.items():
            if tenant is None:
                tenants.pop(tenant_id, None)
            else:
                tenants[tenant_id] = tenant
    keys, keys_by_id = old.keys, old.keys_by_id
    if delta.sweep_tenants:
        # O(keys), but only when a tenant was deleted.
        swept = [
            key_id
            for key_id, key in keys_by_id.items()
            if key.tenant_id in delta.sweep_tenants and key_id not in delta.keys
        ]
        for key_id in swept:
            _drop_key(keys, keys_by_id, key_id)
    for key_id, key in delta.keys.items():
        _drop_key(keys, keys_by_id, key_id)
        if key is not None:
            keys[key.key_hash] = key
            keys_by_id[key_id] = key
    routes = old.routes
    if delta.routes:
        routes = {name: route for name, route in old.routes.items() if route.id not in delta.routes}
        for route in delta.routes.values():
            if route is not None:
                routes[route.name] = route
    return replace(old, version=delta.version, routes=routes, tenants=tenants)


def _drop_key(keys: dict[str, KeyConfig], keys_by_id: dict[int, KeyConfig], key_id: int) -> None:
    old = keys_by_id.pop(key_id, None)
    if old is None:
        return
    if keys.get(old.key_hash) is old:
        del keys[old.key_hash]
        return
    # Built without its digest (not by the loader): find the entry the slow way.
    for digest, key in keys.items():
        if key is old:
            del keys[digest]
            return
