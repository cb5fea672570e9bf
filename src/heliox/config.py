"""Settings: every environment variable Heliox reads, validated once at start-up.

A bad value stops start-up with a message that names the variable (see `load_settings`).
"""

from __future__ import annotations

import ipaddress
import os
from functools import cached_property
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    # --- the brief's variables -------------------------------------------------------------
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
    deployment_mode: Literal["demo", "production"] | None = Field(
        None, description="demo when neither DATABASE_URL nor REDIS_URL is set, else production"
    )
    default_rate_limit_rps: float = Field(100.0, gt=0)
    default_rate_limit_burst: int = Field(200, ge=1)
    abuse_ewma_alpha: float = Field(0.3, gt=0, le=1)
    abuse_zscore_threshold: float = Field(3.0, gt=0)
    abuse_block_duration_seconds: int = Field(300, ge=1)
    abuse_window_seconds: int = Field(10, ge=1)
    abuse_min_samples: int = Field(6, ge=1)
    abuse_min_rate: float = Field(
        5.0, ge=0, description="requests per window below which no verdict"
    )
    abuse_action: Literal["block", "multiplier", "shadow"] = "block"
    abuse_rate_multiplier: float = Field(0.1, gt=0, le=1)
    bloom_expected_items: int = Field(10_000, ge=100)
    bloom_false_positive_rate: float = Field(0.01, gt=0, lt=1)
    bloom_rotation_seconds: float = Field(
        300.0, gt=0, description="a remembered 404 ages out after 1-2 of these"
    )

    # --- ours ----------------------------------------------------------------------------------
    example_upstream_url: str = Field(
        "http://127.0.0.1:8001", description="Upstream the seeded routes point at"
    )
    max_request_body_bytes: int = Field(10 * 1024 * 1024, ge=0)
    upstream_connect_timeout: float = Field(5.0, gt=0)
    upstream_read_timeout: float = Field(30.0, gt=0)
    upstream_pool_size: int = Field(256, ge=1)
    trusted_proxies: str = Field(
        "", description="Comma-separated CIDRs whose X-Forwarded-For is trusted"
    )
    cache_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    quota_timezone: str = "UTC"
    log_retention_days: int = Field(30, ge=1)
    log_queue_size: int = Field(50_000, ge=100)
    config_poll_interval: float = Field(1.0, gt=0)
    key_rotation_grace_seconds: int = Field(3600, ge=0)
    redis_key_prefix: str = "heliox:"
    background_jobs: bool = True

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

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: str) -> str:
        for part in _split(v):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError as exc:
                raise ValueError(f"{part!r} is not an IP address or CIDR") from exc
        return v

    @model_validator(mode="after")
    def _mode_and_secrets(self) -> Settings:
        if self.deployment_mode is None:
            self.deployment_mode = "production" if (self.database_url or self.redis_url) else "demo"
        if self.auto_seed is None:
            self.auto_seed = self.deployment_mode == "demo"
        if self.deployment_mode == "demo":
            self.admin_api_key = self.admin_api_key or DEFAULT_ADMIN_API_KEY
            self.secret_key = self.secret_key or DEFAULT_SECRET_KEY
            return self
        if not self.admin_api_key:
            raise ValueError(
                "ADMIN_API_KEY: is empty; production mode needs an admin key of 16+ characters"
            )
        if self.admin_api_key == DEFAULT_ADMIN_API_KEY:
            raise ValueError(
                "ADMIN_API_KEY: is the demo default; set your own key of 16+ characters"
            )
        if len(self.admin_api_key) < MIN_SECRET_LENGTH:
            raise ValueError(f"ADMIN_API_KEY: is shorter than {MIN_SECRET_LENGTH} characters")
        if not self.secret_key or self.secret_key == DEFAULT_SECRET_KEY:
            raise ValueError(
                "SECRET_KEY: production mode needs your own random secret of 16+ characters"
            )
        if len(self.secret_key) < MIN_SECRET_LENGTH:
            raise ValueError(f"SECRET_KEY: is shorter than {MIN_SECRET_LENGTH} characters")
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
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p, strict=False) for p in _split(self.trusted_proxies)]


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise ConfigError naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            if loc:
                name = str(loc[0]).upper()
                value = os.environ.get(name)
                shown = f" (got {value!r})" if value is not None and "KEY" not in name else ""
                lines.append(f"{name}: {msg}{shown}")
            else:
                lines.append(msg)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
