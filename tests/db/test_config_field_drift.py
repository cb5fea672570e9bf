"""One description of a route and of a cache policy across the layers.

The snapshot loader and the admin API copy fields from the ORM row by name, so a column added to
`Route` or `CachePolicy` must also be declared in the snapshot's config and the admin schemas (or
be listed below as deliberately left out); these tests name what is missing.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import inspect

from heliox.admin.schemas import (
    PolicyCreate,
    PolicyOut,
    PolicyUpdate,
    RouteCreate,
    RouteOut,
    RouteUpdate,
    from_row,
)
from heliox.db.models import Base, CachePolicy, Route
from heliox.db.snapshot_loader import POLICY_DERIVED, ROUTE_DERIVED, _policy_config, _route_config
from heliox.snapshot import CachePolicyConfig, RouteConfig

# Columns the hot path has no use for: the loader keeps active routes only and resolves the
# policy id into the policy itself (RouteConfig.cache_policy).
ROUTE_NOT_IN_CONFIG = {"is_active", "cache_policy_id", "created_at", "updated_at"}
POLICY_NOT_IN_CONFIG = {"created_at", "updated_at"}
NOT_WRITABLE = {"id", "created_at", "updated_at"}
# Fields of the admin API that are not columns: the policy by name, and its number of routes.
ROUTE_API_EXTRA = {"cache_policy"}
POLICY_API_EXTRA = {"route_count"}
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def columns(model: type[Base]) -> set[str]:
    return {attr.key for attr in inspect(model).column_attrs}


def config_fields(config: type[Any]) -> set[str]:
    return {f.name for f in dataclasses.fields(config)}


def check_declarations(
    model: type[Base],
    config: type[Any],
    not_in_config: set[str],
    derived: frozenset[str],
    schemas: tuple[type[BaseModel], type[BaseModel], type[BaseModel]],
    api_extra: set[str],
) -> None:
    cols = columns(model)
    create, update, out = schemas
    missing = cols - not_in_config - config_fields(config)
    assert not missing, f"columns of {model.__name__} not in {config.__name__}: {missing}"
    # Whatever the config has beyond the columns, the loader must compute.
    assert config_fields(config) - cols <= derived, config_fields(config) - cols - derived
    assert set(out.model_fields) == cols | api_extra, set(out.model_fields) ^ (cols | api_extra)
    writable = (cols - NOT_WRITABLE) | (api_extra & set(create.model_fields))
    assert set(create.model_fields) == writable, set(create.model_fields) ^ writable
    assert set(update.model_fields) == writable, set(update.model_fields) ^ writable


def distinct_values(model: type[Base], config: type[Any], names: set[str]) -> dict[str, Any]:
    """A value for each copied column that differs from the config's default, so a column the
    loader failed to copy would show."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    values: dict[str, Any] = {}
    for i, name in enumerate(sorted(names), start=1):
        kind = inspect(model).columns[name].type.python_type
        if kind is bool:
            values[name] = defaults[name] is not True
        else:
            values[name] = {int: 1000 + i, float: 0.5 + i, str: f"value-{i}"}[kind]
    return values


def test_every_route_column_reaches_the_snapshot_and_the_admin_api() -> None:
    check_declarations(
        Route,
        RouteConfig,
        ROUTE_NOT_IN_CONFIG,
        ROUTE_DERIVED,
        (RouteCreate, RouteUpdate, RouteOut),
        ROUTE_API_EXTRA,
    )


def test_every_policy_column_reaches_the_snapshot_and_the_admin_api() -> None:
    check_declarations(
        CachePolicy,
        CachePolicyConfig,
        POLICY_NOT_IN_CONFIG,
        POLICY_DERIVED,
        (PolicyCreate, PolicyUpdate, PolicyOut),
        POLICY_API_EXTRA,
    )


def test_route_values_are_carried_into_the_snapshot_and_the_admin_output() -> None:
    copied = columns(Route) - ROUTE_NOT_IN_CONFIG - ROUTE_DERIVED
    values = distinct_values(Route, RouteConfig, copied)
    route = Route(
        **values,
        upstream_url="https://api.example.com:8443/v1/",
        methods=["get", "POST"],
        cache_policy_id=7,
        is_active=True,
        created_at=NOW,
        updated_at=NOW,
    )
    policy = CachePolicyConfig(id=7, name="p")
    config = _route_config(route, {7: policy})
    assert {name: getattr(config, name) for name in copied} == values
    assert config.upstream_url == "https://api.example.com:8443/v1"
    assert (config.upstream_host, config.upstream_port) == ("api.example.com", 8443)
    assert config.methods == {"GET", "POST"} and config.cache_policy is policy

    out = from_row(RouteOut, route, cache_policy="p").model_dump()
    assert {name: out[name] for name in columns(Route)} == {
        name: getattr(route, name) for name in columns(Route)
    }


def test_policy_values_are_carried_into_the_snapshot_and_the_admin_output() -> None:
    copied = columns(CachePolicy) - POLICY_NOT_IN_CONFIG - POLICY_DERIVED
    values = distinct_values(CachePolicy, CachePolicyConfig, copied)
    policy = CachePolicy(
        **values,
        vary_headers=[" Accept "],
        cacheable_methods=["get"],
        cacheable_statuses=[200],
        created_at=NOW,
        updated_at=NOW,
    )
    config = _policy_config(policy)
    assert {name: getattr(config, name) for name in copied} == values
    assert config.vary_headers == ("accept",)
    assert config.cacheable_methods == {"GET"} and config.cacheable_statuses == {200}

    out = from_row(PolicyOut, policy, route_count=3).model_dump()
    assert {name: out[name] for name in columns(CachePolicy)} == {
        name: getattr(policy, name) for name in columns(CachePolicy)
    }
    assert out["route_count"] == 3
