"""SQLAlchemy 2 models: configuration (tenants, keys, routes, policies) and records.

Types are chosen to work identically on SQLite and PostgreSQL; the Alembic migrations in
`heliox/db/migrations` create exactly these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from heliox.db.rollups import COUNT_COLUMNS, GRAINS, LAST_SEEN, LATENCY_SUM, MARKS_TABLE, Grain


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


BigId = BigInteger().with_variant(
    Integer, "sqlite"
)  # SQLite autoincrements INTEGER PRIMARY KEY only


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Tenant(Timestamps, Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Abuse detection: "default" (the ABUSE_* settings), "exempt" or "custom" (own threshold).
    abuse_mode: Mapped[str] = mapped_column(String(16), default="default", server_default="default")
    abuse_zscore_threshold: Mapped[float | None] = mapped_column(Float, default=None)


class ApiKey(Timestamps, Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # SHA-256 hex digest of the key; the plaintext is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(32))
    rate_limit_rps: Mapped[float | None] = mapped_column(Float, default=None)
    rate_limit_burst: Mapped[int | None] = mapped_column(Integer, default=None)
    # "token_bucket" or "sliding_window" (limit = rps * window per window)
    rate_limit_algorithm: Mapped[str] = mapped_column(String(32), default="token_bucket")
    rate_limit_window_seconds: Mapped[int] = mapped_column(Integer, default=1)
    daily_quota: Mapped[int | None] = mapped_column(BigInteger, default=None)
    monthly_quota: Mapped[int | None] = mapped_column(BigInteger, default=None)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Set on the old key when it is rotated: valid until then, refused after.
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    rotated_from_id: Mapped[int | None] = mapped_column(Integer, default=None)
    # Abuse detection: "default" (as its tenant), "exempt" or "custom" (own threshold).
    abuse_mode: Mapped[str] = mapped_column(String(16), default="default", server_default="default")
    abuse_zscore_threshold: Mapped[float | None] = mapped_column(Float, default=None)


class CachePolicy(Timestamps, Base):
    __tablename__ = "cache_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # "policy": the route's TTL rules; "origin": RFC 9111 shared-cache rules from upstream headers
    mode: Mapped[str] = mapped_column(String(16), default="policy")
    ttl_seconds: Mapped[int] = mapped_column(Integer, default=60)
    stale_while_revalidate_seconds: Mapped[int] = mapped_column(Integer, default=0)
    stale_if_error_seconds: Mapped[int] = mapped_column(Integer, default=0)
    vary_headers: Mapped[list[Any]] = mapped_column(default=list)
    cacheable_methods: Mapped[list[Any]] = mapped_column(default=lambda: ["GET", "HEAD"])
    cacheable_statuses: Mapped[list[Any]] = mapped_column(
        default=lambda: [200, 203, 204, 300, 301, 308, 404, 410]
    )
    max_object_bytes: Mapped[int] = mapped_column(Integer, default=1024 * 1024)
    # Shared entries are served to every tenant (public data); default is per-tenant isolation.
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    negative_cache: Mapped[bool] = mapped_column(Boolean, default=True)
    # Requests with a Cookie use the cache (the cookie is then not forwarded on a fill); off,
    # they bypass it unless Cookie is a vary header. Added by 0002: the server default fills
    # existing rows and those an instance still on 0001 inserts during a rolling upgrade.
    cache_with_cookies: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Cache engine tuning, added by 0007 (server defaults as for 0002). Seconds an entry with a
    # validator is kept past its stale windows for a conditional revalidation (0: not kept).
    keep_seconds: Mapped[int] = mapped_column(Integer, default=600, server_default=text("600"))
    # How long a request waits for another's fill of the same entry, and how long a fill may hold
    # that lock before another request may take it over. Null (no server default, so also what
    # rows from before 0007 have): the gateway's CACHE_LOCK_TIMEOUT / CACHE_LOCK_AGE.
    lock_timeout_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    lock_age_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    # Variants stored per URL under Vary; the least recently stored is dropped beyond it.
    max_variants: Mapped[int] = mapped_column(Integer, default=8, server_default=text("8"))


class Route(Timestamps, Base):
    __tablename__ = "routes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # Glob over the path after /g/{name}; "/*" admits everything.
    path_pattern: Mapped[str] = mapped_column(String(500), default="/*")
    upstream_url: Mapped[str] = mapped_column(String(2000))
    methods: Mapped[list[Any]] = mapped_column(
        default=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    )
    cache_policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("cache_policies.id", ondelete="SET NULL"), default=None
    )
    is_public: Mapped[bool] = mapped_column(Boolean, default=False)
    rate_limit_rps: Mapped[float | None] = mapped_column(Float, default=None)
    rate_limit_burst: Mapped[int | None] = mapped_column(Integer, default=None)
    rate_limit_algorithm: Mapped[str | None] = mapped_column(String(32), default=None)
    # "open": serve when the rate limiter's store is down; "closed": answer 503
    fail_mode: Mapped[str] = mapped_column(String(8), default="open")
    max_request_body_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    timeout_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    # The request body's deadline in all and its minimum rate (bytes/s, 0: none); NULL: the
    # settings' REQUEST_BODY_TIMEOUT / REQUEST_BODY_MIN_RATE (added by 0005).
    request_body_timeout_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    request_body_min_rate: Mapped[int | None] = mapped_column(Integer, default=None)
    hide_ratelimit_headers: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_private_upstream: Mapped[bool] = mapped_column(Boolean, default=False)
    # Upstream connections the route may hold at once per process; NULL: UPSTREAM_POOL_SIZE
    # (added by 0004).
    max_upstream_connections: Mapped[int | None] = mapped_column(Integer, default=None)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)


class ConfigVersion(Base):
    """One row; bumped by every admin write so instances know to reload their snapshot."""

    __tablename__ = "config_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ConfigChange(Base):
    """What one config version changed, written in the admin write's own transaction.

    `changes` maps "keys", "tenants", "routes" and "policies" to the ids the write touched;
    `full` marks a change no delta describes. Instances apply the rows after their version and
    load the whole snapshot when one is missing. Only the latest versions are kept.
    """

    __tablename__ = "config_changes"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    changes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RequestLog(Base):
    __tablename__ = "request_logs"
    __table_args__ = (
        Index("ix_request_logs_ts", "ts"),
        Index("ix_request_logs_route_ts", "route_name", "ts"),
        Index("ix_request_logs_key_ts", "key_id", "ts"),
        Index("ix_request_logs_tenant_ts", "tenant_id", "ts"),
        Index("ix_request_logs_request_id", "request_id"),  # the detail view's lookup (0010)
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column()
    # The gateway's id, or the client's X-Request-Id when it is a plain token (0003: 40 -> 128).
    request_id: Mapped[str] = mapped_column(String(128), default="")
    tenant_id: Mapped[int | None] = mapped_column(Integer, default=None)
    key_id: Mapped[int | None] = mapped_column(Integer, default=None)
    route_id: Mapped[int | None] = mapped_column(Integer, default=None)
    route_name: Mapped[str] = mapped_column(String(100), default="")
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    cache_status: Mapped[str] = mapped_column(String(16), default="")
    latency_ms: Mapped[float] = mapped_column(Float)
    upstream_latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(500), default="")
    # Why the upstream failed (its address and the cause), kept here rather than shown to the
    # client (added by 0003).
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    # Added by 0010, all null unless they apply. The cache entry's key (as in Cache-Status) when
    # the route caches; the upstream's own status when it answered this request.
    cache_key: Mapped[str | None] = mapped_column(Text, default=None)
    upstream_status: Mapped[int | None] = mapped_column(Integer, default=None)
    # Which limit refused the request: the 429 problem's `limit` ("rate", "daily_quota",
    # "monthly_quota", "blocked"), "bad_key" (too many requests without a valid key from the
    # address) or "unavailable" (a fail-closed 503), and that limit's numbers (JSON object; see
    # heliox.gateway.admission_step.refusal_record). One JSON column rather than a column per
    # number: each limit has different numbers, and only refusals carry any.
    refused_by: Mapped[str | None] = mapped_column(String(16), default=None)
    refusal: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class AbuseEvent(Base):
    __tablename__ = "abuse_events"
    __table_args__ = (Index("ix_abuse_events_key_ts", "key_id", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    key_id: Mapped[int] = mapped_column(Integer)
    tenant_id: Mapped[int | None] = mapped_column(Integer, default=None)
    reason: Mapped[str] = mapped_column(Text)
    score: Mapped[float] = mapped_column(Float)
    observed_rate: Mapped[float] = mapped_column(Float)
    baseline_rate: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(16))
    blocked_until: Mapped[datetime | None] = mapped_column(default=None)
    unblocked_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_ts", "ts"),
        Index("ix_audit_log_entity", "entity_type", "entity_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    # A fingerprint of the admin credential used (never the credential itself) or "ui:<session>".
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50))
    entity_type: Mapped[str] = mapped_column(String(50))
    entity_id: Mapped[str] = mapped_column(String(50), default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # The address the change came from (as the admin throttle sees it: TRUSTED_PROXIES apply);
    # null for the CLI and for rows written before 0010.
    client_ip: Mapped[str | None] = mapped_column(String(64), default=None)


def _rollup_table(g: Grain) -> Table:
    """One roll-up grain (heliox.db.rollups): counts are NULL where zero, tenant/key 0 = none."""
    keys: list[Column[Any]] = [
        Column("bucket", BigInteger, nullable=False, comment="start, epoch seconds")
    ]
    keys.append(Column("route_name", String(100), nullable=False))
    indexes: list[Index] = []
    if g.keyed:
        keys.append(Column("tenant_id", Integer, nullable=False))
        keys.append(Column("key_id", Integer, nullable=False))
        indexes = [
            Index(f"ix_{g.table}_key", "key_id", "bucket"),
            Index(f"ix_{g.table}_tenant", "tenant_id", "bucket"),
        ]
    return Table(
        g.table,
        Base.metadata,
        *keys,
        *(Column(name, BigInteger, nullable=True) for name in COUNT_COLUMNS),
        Column(LATENCY_SUM, Float, nullable=False),
        Column(LAST_SEEN, Float, nullable=False, comment="newest row, epoch seconds"),
        PrimaryKeyConstraint(*(c.name for c in keys), name=f"pk_{g.table}"),
        *indexes,
    )


ROLLUPS: dict[Grain, Table] = {g: _rollup_table(g) for g in GRAINS}
# How far the keyed hours and days are compacted from the keyed minutes (heliox.db.rollups).
ROLLUP_MARKS = Table(
    MARKS_TABLE,
    Base.metadata,
    Column("name", String(32), primary_key=True),
    Column("upto", BigInteger, nullable=False, comment="epoch seconds, a whole hour"),
)
