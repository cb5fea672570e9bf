"""Request and response bodies of the admin API.

Inputs forbid unknown fields (a typo is a 422, not a silently ignored setting). In PATCH bodies a
field left out is unchanged; `null` clears the fields that may be empty (limits, quotas, the cache
policy) and is refused for the others.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from heliox.core.bounds import MAX_BURST, MAX_RATE, MAX_WINDOW_SECONDS, MIN_RATE

MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
MAX_DAYS_SECONDS = 365 * 86400

# RFC 9110 §5.6.2 token characters; methods are additionally upper-case by convention here.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Z-]+$")
_SLUG = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_EXCEPT_NEWLINES = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _text(value: str) -> str:
    if _CONTROL_EXCEPT_NEWLINES.search(value):
        raise ValueError("must not contain control characters other than newlines")
    return value


def _slug(value: str) -> str:
    # "." and ".." would be rewritten by clients and proxies as path segments in /g/{name}/.
    if not _SLUG.match(value) or value in (".", ".."):
        raise ValueError("must be 1-100 characters of A-Z a-z 0-9 _ . - (and not '.' or '..')")
    return value


def _method(value: str) -> str:
    if not _METHOD.match(value) or len(value) > 20:
        raise ValueError(f"{value!r} is not an upper-case HTTP method token")
    return value


def _header_name(value: str) -> str:
    if not _TOKEN.match(value) or len(value) > 100:
        raise ValueError(f"{value!r} is not a valid header name")
    return value.lower()


def _path_pattern(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with '/'")
    if any(ch.isspace() for ch in value) or _CONTROL.search(value):
        raise ValueError("must not contain whitespace or control characters")
    if "?" in value or "#" in value:
        raise ValueError("matches the path only: no '?' or '#'")
    return value


def _unique(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


DisplayName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_control),
]
Description = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_text)]
# The lengths repeat the validators' so the OpenAPI document states every bound.
Slug = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_slug)]
Method = Annotated[str, StringConstraints(min_length=1, max_length=20), AfterValidator(_method)]
HeaderName = Annotated[
    str, StringConstraints(min_length=1, max_length=100), AfterValidator(_header_name)
]
PathPattern = Annotated[
    str, StringConstraints(min_length=1, max_length=500), AfterValidator(_path_pattern)
]
UpstreamUrl = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
Status = Annotated[int, Field(ge=100, le=599)]
# Every number the API takes has bounds (in the OpenAPI document as minimum/maximum); a value
# outside them is a 422. The rate-limit bounds are what the limiter's arithmetic and its Redis
# counters are proven to handle (heliox.core.bounds).
Rps = Annotated[
    float,
    Field(
        ge=MIN_RATE,
        le=MAX_RATE,
        allow_inf_nan=False,
        description="requests per second, 0.001 (one per 1000 s) to 1e9",
    ),
]
Burst = Annotated[
    int, Field(ge=1, le=MAX_BURST, description="token-bucket capacity, 1 to 2147483647")
]
WindowSeconds = Annotated[
    int,
    Field(ge=1, le=MAX_WINDOW_SECONDS, description="sliding-window length, 1 to 86400 seconds"),
]
Quota = Annotated[int, Field(ge=1, le=MAX_INT64, description="requests, 1 to 2^63-1")]
NonNegInt32 = Annotated[int, Field(ge=0, le=MAX_INT32, description="0 to 2147483647")]
Id = Annotated[int, Field(ge=1, le=MAX_INT32, description="an id, 1 to 2147483647")]
# Abuse detection overrides of a key or a tenant: "default" follows the tenant (for a key) and
# then the ABUSE_* settings; "exempt" is never flagged; "custom" uses abuse_zscore_threshold (the
# pair is checked as a whole, on create and on PATCH, by admin.abuse.check_abuse_override).
AbuseMode = Literal["default", "exempt", "custom"]
AbuseThreshold = Annotated[
    float,
    Field(
        ge=1, le=1000, allow_inf_nan=False, description="z threshold of abuse_mode custom, 1-1000"
    ),
]
BodyBytes = Annotated[int, Field(ge=0, le=MAX_INT64, description="bytes, 0 to 2^63-1")]
TimeoutSeconds = Annotated[
    float,
    Field(ge=0.001, le=3600, allow_inf_nan=False, description="seconds, 0.001 to 3600"),
]
BodyTimeoutSeconds = Annotated[
    float,
    Field(
        ge=0.001,
        le=86_400,
        allow_inf_nan=False,
        description="seconds the whole request body may take, 0.001 to 86400; "
        "null: REQUEST_BODY_TIMEOUT",
    ),
]
BodyMinRate = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_INT32,
        description="bytes/s a request body must average after REQUEST_BODY_MIN_RATE_GRACE, "
        "0 (no minimum) to 2147483647; null: REQUEST_BODY_MIN_RATE",
    ),
]
UpstreamConnections = Annotated[
    int,
    Field(
        ge=1,
        le=100_000,
        description="upstream connections per process, 1 to 100000; null: UPSTREAM_POOL_SIZE",
    ),
]
Algorithm = Literal["token_bucket", "sliding_window"]
# Cache engine tuning of a policy.
KeepSeconds = Annotated[
    int,
    Field(
        ge=0,
        le=7 * 86400,
        description="seconds an entry that carries a validator (ETag or Last-Modified) is kept "
        "after its stale windows end, so it can be revalidated with a conditional request "
        "instead of fetched again (Varnish's beresp.keep), 0 (not kept) to 604800 (7 days)",
    ),
]
LockTimeoutSeconds = Annotated[
    float,
    Field(
        ge=0.05,
        le=60,
        allow_inf_nan=False,
        description="how long a request waits for another request's fill of the same entry "
        "before going upstream alone (nginx proxy_cache_lock_timeout), 0.05 to 60 seconds; "
        "null: the gateway's CACHE_LOCK_TIMEOUT",
    ),
]
LockAgeSeconds = Annotated[
    float,
    Field(
        ge=0.05,
        le=60,
        allow_inf_nan=False,
        description="how long a fill may hold the lock before another request may take it over "
        "(nginx proxy_cache_lock_age), 0.05 to 60 seconds; null: the gateway's CACHE_LOCK_AGE",
    ),
]
MaxVariants = Annotated[
    int,
    Field(
        ge=1,
        le=64,
        description="variants stored per URL when the upstream's Vary selects them by request "
        "headers (the least recently stored is dropped beyond it), 1 to 64",
    ),
]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Patch(Input):
    """Base of PATCH bodies: `NOT_NULL` names the fields that may not be set to null."""

    NOT_NULL: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name in cls.NOT_NULL:
            raise ValueError("may not be null")
        return value

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


OutT = TypeVar("OutT", bound=BaseModel)


def from_row(model: type[OutT], row: object, **derived: Any) -> OutT:
    """An output body filled from the row's attributes of the same names, plus `derived` (the
    fields that are not columns of the row).

    A field of the model that is neither on the row nor derived is an AttributeError, so a new
    field cannot silently come out empty.
    """
    values = {name: getattr(row, name) for name in model.model_fields if name not in derived}
    return model.model_validate({**values, **derived})


# --- tenants ------------------------------------------------------------------------------------
class TenantCreate(Input):
    name: DisplayName
    description: Description = ""
    is_active: bool = True
    abuse_mode: AbuseMode = "default"
    abuse_zscore_threshold: AbuseThreshold | None = None


class TenantUpdate(Patch):
    NOT_NULL = frozenset({"name", "description", "is_active", "abuse_mode"})
    name: DisplayName | None = None
    description: Description | None = None
    is_active: bool | None = None
    abuse_mode: AbuseMode | None = None
    abuse_zscore_threshold: AbuseThreshold | None = None


class TenantOut(BaseModel):
    id: int
    name: str
    description: str
    is_active: bool
    abuse_mode: str = "default"
    abuse_zscore_threshold: float | None = None
    key_count: int = Field(description="keys not revoked")
    active_key_count: int = Field(description="keys usable now: active, not revoked, not expired")
    created_at: datetime
    updated_at: datetime


# --- keys ---------------------------------------------------------------------------------------
class KeyLimits(Input):
    rate_limit_rps: Rps | None = None
    rate_limit_burst: Burst | None = None
    rate_limit_algorithm: Algorithm = "token_bucket"
    rate_limit_window_seconds: WindowSeconds = 1
    daily_quota: Quota | None = None
    monthly_quota: Quota | None = None
    abuse_mode: AbuseMode = "default"
    abuse_zscore_threshold: AbuseThreshold | None = None


class KeyCreate(KeyLimits):
    tenant_id: Id
    name: DisplayName


class KeyUpdate(Patch):
    NOT_NULL = frozenset({"name", "is_active", "rate_limit_algorithm", "rate_limit_window_seconds"})
    name: DisplayName | None = None
    is_active: bool | None = None
    rate_limit_rps: Rps | None = None
    rate_limit_burst: Burst | None = None
    rate_limit_algorithm: Algorithm | None = None
    rate_limit_window_seconds: WindowSeconds | None = None
    daily_quota: Quota | None = None
    monthly_quota: Quota | None = None
    abuse_mode: AbuseMode | None = None
    abuse_zscore_threshold: AbuseThreshold | None = None


class KeyRotate(Input):
    grace_seconds: Annotated[int, Field(ge=0, le=MAX_DAYS_SECONDS)] | None = Field(
        None, description="how long the old key keeps working; default KEY_ROTATION_GRACE_SECONDS"
    )


KeyStatus = Literal["active", "disabled", "revoked", "expired", "expiring"]


class KeyOut(BaseModel):
    id: int
    tenant_id: int
    name: str
    key_prefix: str
    status: KeyStatus
    is_active: bool
    rate_limit_rps: float | None
    rate_limit_burst: int | None
    rate_limit_algorithm: str
    rate_limit_window_seconds: int
    daily_quota: int | None
    monthly_quota: int | None
    abuse_mode: str = "default"
    abuse_zscore_threshold: float | None = None
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_from_id: int | None
    created_at: datetime
    updated_at: datetime


class KeyCreated(KeyOut):
    key: str = Field(description="the plaintext key; shown this once, never again")


class KeyRotated(KeyCreated):
    previous_key: KeyOut


# --- cache policies -----------------------------------------------------------------------------
DEFAULT_CACHEABLE_STATUSES = [200, 203, 204, 300, 301, 308, 404, 410]


class PolicyFields(Input):
    @field_validator("vary_headers", check_fields=False)
    @classmethod
    def _vary(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if "*" in value:
            raise ValueError("'*' would make every response uncacheable; list header names")
        return _unique(value)

    @field_validator("cacheable_methods", check_fields=False)
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _unique(value)

    @field_validator("cacheable_statuses", check_fields=False)
    @classmethod
    def _statuses(cls, value: list[int] | None) -> list[int] | None:
        return None if value is None else sorted(set(value))


class PolicyCreate(PolicyFields):
    name: Slug
    mode: Literal["policy", "origin"] = "policy"
    ttl_seconds: NonNegInt32 = 60
    stale_while_revalidate_seconds: NonNegInt32 = 0
    stale_if_error_seconds: NonNegInt32 = 0
    vary_headers: Annotated[list[HeaderName], Field(max_length=32)] = []
    cacheable_methods: Annotated[list[Method], Field(max_length=16)] = ["GET", "HEAD"]
    cacheable_statuses: Annotated[list[Status], Field(max_length=100)] = DEFAULT_CACHEABLE_STATUSES
    max_object_bytes: NonNegInt32 = 1024 * 1024
    shared: bool = False
    negative_cache: bool = True
    cache_with_cookies: bool = Field(
        False,
        description="use the cache for requests that carry a Cookie, without forwarding it on "
        "a fill; off, they bypass the cache unless Cookie is a vary header",
    )
    keep_seconds: KeepSeconds = 600
    # Null: the gateway's CACHE_LOCK_TIMEOUT / CACHE_LOCK_AGE, which deployments already tune.
    lock_timeout_seconds: LockTimeoutSeconds | None = None
    lock_age_seconds: LockAgeSeconds | None = None
    max_variants: MaxVariants = 8


class PolicyUpdate(PolicyFields, Patch):
    # Null is meaningful only for the lock pair: it resets them to the gateway's settings.
    NOT_NULL = frozenset(PolicyCreate.model_fields) - {"lock_timeout_seconds", "lock_age_seconds"}
    name: Slug | None = None
    mode: Literal["policy", "origin"] | None = None
    ttl_seconds: NonNegInt32 | None = None
    stale_while_revalidate_seconds: NonNegInt32 | None = None
    stale_if_error_seconds: NonNegInt32 | None = None
    vary_headers: Annotated[list[HeaderName], Field(max_length=32)] | None = None
    cacheable_methods: Annotated[list[Method], Field(max_length=16)] | None = None
    cacheable_statuses: Annotated[list[Status], Field(max_length=100)] | None = None
    max_object_bytes: NonNegInt32 | None = None
    shared: bool | None = None
    negative_cache: bool | None = None
    cache_with_cookies: bool | None = None
    keep_seconds: KeepSeconds | None = None
    lock_timeout_seconds: LockTimeoutSeconds | None = None
    lock_age_seconds: LockAgeSeconds | None = None
    max_variants: MaxVariants | None = None


class PolicyOut(BaseModel):
    id: int
    name: str
    mode: str
    ttl_seconds: int
    stale_while_revalidate_seconds: int
    stale_if_error_seconds: int
    vary_headers: list[str]
    cacheable_methods: list[str]
    cacheable_statuses: list[int]
    max_object_bytes: int
    shared: bool
    negative_cache: bool
    cache_with_cookies: bool
    keep_seconds: int
    lock_timeout_seconds: float | None = Field(
        description="null: the gateway's CACHE_LOCK_TIMEOUT applies"
    )
    lock_age_seconds: float | None = Field(description="null: the gateway's CACHE_LOCK_AGE applies")
    max_variants: int
    route_count: int = Field(description="routes using this policy")
    created_at: datetime
    updated_at: datetime


# --- routes -------------------------------------------------------------------------------------
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
Methods = Annotated[list[Method], Field(min_length=1, max_length=32)]


class RouteFields(Input):
    @field_validator("methods", check_fields=False)
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _unique(value)


class RouteCreate(RouteFields):
    name: Slug
    path_pattern: PathPattern = "/*"
    upstream_url: UpstreamUrl
    methods: Methods = ALL_METHODS
    cache_policy_id: Id | None = None
    cache_policy: Slug | None = Field(None, description="the cache policy by name, or give its id")
    is_public: bool = False
    rate_limit_rps: Rps | None = None
    rate_limit_burst: Burst | None = None
    rate_limit_algorithm: Algorithm | None = None
    fail_mode: Literal["open", "closed"] = "open"
    max_request_body_bytes: BodyBytes | None = None
    timeout_seconds: TimeoutSeconds | None = None
    request_body_timeout_seconds: BodyTimeoutSeconds | None = None
    request_body_min_rate: BodyMinRate | None = None
    max_upstream_connections: UpstreamConnections | None = None
    hide_ratelimit_headers: bool = False
    allow_private_upstream: bool = Field(
        False,
        description="permit link-local and cloud metadata upstream addresses (and, when "
        "connecting, any address in UPSTREAM_DENY_NETWORKS)",
    )
    is_active: bool = True


class RouteUpdate(RouteFields, Patch):
    NOT_NULL = frozenset(
        {
            "name",
            "path_pattern",
            "upstream_url",
            "methods",
            "is_public",
            "fail_mode",
            "hide_ratelimit_headers",
            "allow_private_upstream",
            "is_active",
        }
    )
    name: Slug | None = None
    path_pattern: PathPattern | None = None
    upstream_url: UpstreamUrl | None = None
    methods: Methods | None = None
    cache_policy_id: Id | None = None
    cache_policy: Slug | None = None
    is_public: bool | None = None
    rate_limit_rps: Rps | None = None
    rate_limit_burst: Burst | None = None
    rate_limit_algorithm: Algorithm | None = None
    fail_mode: Literal["open", "closed"] | None = None
    max_request_body_bytes: BodyBytes | None = None
    timeout_seconds: TimeoutSeconds | None = None
    request_body_timeout_seconds: BodyTimeoutSeconds | None = None
    request_body_min_rate: BodyMinRate | None = None
    max_upstream_connections: UpstreamConnections | None = None
    hide_ratelimit_headers: bool | None = None
    allow_private_upstream: bool | None = None
    is_active: bool | None = None


class RouteOut(BaseModel):
    id: int
    name: str
    path_pattern: str
    upstream_url: str
    methods: list[str]
    cache_policy_id: int | None
    cache_policy: str | None = Field(description="name of the cache policy")
    is_public: bool
    rate_limit_rps: float | None
    rate_limit_burst: int | None
    rate_limit_algorithm: str | None
    fail_mode: str
    max_request_body_bytes: int | None
    timeout_seconds: float | None
    request_body_timeout_seconds: float | None = Field(
        description="seconds the whole request body may take; null: REQUEST_BODY_TIMEOUT"
    )
    request_body_min_rate: int | None = Field(
        description="bytes/s a request body must average (0: no minimum); "
        "null: REQUEST_BODY_MIN_RATE"
    )
    max_upstream_connections: int | None = Field(
        description="upstream connections per process; null: UPSTREAM_POOL_SIZE"
    )
    hide_ratelimit_headers: bool
    allow_private_upstream: bool
    is_active: bool
    created_at: datetime
    updated_at: datetime


# --- audit --------------------------------------------------------------------------------------
class AuditOut(BaseModel):
    id: int
    ts: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    client_ip: str | None = Field(
        None,
        description="the address the change came from (null from the CLI, and on entries "
        "written before this field existed)",
    )


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: int | None = Field(description="pass as `cursor` for the next (older) page")
