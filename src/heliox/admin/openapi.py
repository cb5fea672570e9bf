"""The admin API's OpenAPI document as a contract: what FastAPI derives from the endpoints and
models, completed with what it cannot know.

- The `AdminKey` security scheme (the `X-Admin-Key` header), required by every /admin operation.
- Error answers as `application/problem+json` with the `ProblemDetail` schema (FastAPI files a
  response model under `application/json`; the admin API never answers errors with it), and the
  statuses the code answers besides the common ones: 404 where the path names a row, 409 on
  writes (a name taken, a revoked key, two writers racing), 413 where there is a body.
- A description and an example for every field and parameter, from `FIELDS` / `PARAMETERS`
  below: one entry per name, as the API uses each name in one meaning (`Model.field` entries
  override where it does not). An example of `...` is composed from the fields' own examples
  (objects, lists of objects); `None` is the example `null`.

`tests/admin/test_admin_openapi.py` fails when a field or parameter has no description, no
example, or an example its own schema refuses, so a new field cannot be left undescribed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from heliox.admin.errors import PROBLEM_CONTENT_TYPE

SECURITY_SCHEME = "AdminKey"
ADMIN_PREFIX = "/admin"
PROBLEM_SCHEMA = {"$ref": "#/components/schemas/ProblemDetail"}
WRITES = frozenset({"post", "put", "patch", "delete"})

TS = "2026-11-27T12:00:00Z"
_KEY_STATUS = ("the key's state: active, disabled, revoked, expired or expiring", "active")
_RATE_DOC = "requests per second, 0.001 (one per 1000 s) to 1e9"

# name -> (description, example)
FIELDS: dict[str, tuple[str, Any]] = {
    # --- identities and timestamps
    "id": ("the row's id", 42),
    "tenant_id": ("id of the tenant", 7),
    "key_id": ("id of the API key", 12),
    "route_id": ("id of the route", 3),
    "rotated_from_id": ("id of the key this one replaced by rotation; null if none", 11),
    "created_at": ("when the row was created (UTC)", TS),
    "updated_at": ("when the row was last changed (UTC)", TS),
    "expires_at": ("when a rotated-out key stops working (UTC); null: never", TS),
    "revoked_at": ("when the key was revoked (UTC); null: not revoked", TS),
    "ts": ("when it happened (UTC)", TS),
    "last_seen": ("the key's most recent request in the range (UTC)", TS),
    # --- tenants and keys
    "name": ("a name unique among its kind", "acme-orders"),
    "description": ("free text for operators, up to 2000 characters", "Acme's ordering backend"),
    "is_active": ("false: refused (keys: 401) without being deleted", True),
    "key_prefix": ("the key's first characters, to recognise it; never the key", "hx_live_3f9a"),
    "key_count": ("keys not revoked", 3),
    "active_key_count": ("keys usable now: active, not revoked, not expired", 2),
    "key": ("the plaintext key; shown this once, never again", "hx_live_3f9a2c7d0b1e4f6a8c9d"),
    "previous_key": ("the key this rotation replaced, now expiring", ...),
    "grace_seconds": (
        "how long the old key keeps working, 0 to 31536000; default KEY_ROTATION_GRACE_SECONDS",
        900,
    ),
    "tenant_name": ("name of the key's tenant; null when it has been deleted", "Acme"),
    # --- rate limits and quotas
    "rate_limit_rps": (f"{_RATE_DOC}; null: the default (or, on a route, the key's)", 100.0),
    "rate_limit_burst": (
        "token-bucket capacity, 1 to 2147483647; null: twice the rate",
        200,
    ),
    "rate_limit_algorithm": ("token_bucket (rate, burst) or sliding_window", "token_bucket"),
    "rate_limit_window_seconds": ("sliding-window length, 1 to 86400 seconds", 1),
    "daily_quota": ("requests per day, 1 to 2^63-1; null: no daily quota", 100_000),
    "monthly_quota": ("requests per calendar month, 1 to 2^63-1; null: none", 2_000_000),
    "abuse_mode": (
        "default: the tenant's (for a key) then the ABUSE_* settings; exempt: never flagged; "
        "custom: abuse_zscore_threshold",
        "default",
    ),
    "abuse_zscore_threshold": ("z-score that flags a spike under abuse_mode custom, 1-1000", 6.0),
    # --- routes
    "path_pattern": ("the paths under /g/{name}/ the route matches; '*' matches the rest", "/*"),
    "upstream_url": ("where requests go: an http(s) URL", "http://orders.internal:8080"),
    "methods": ("HTTP methods the route accepts (upper case), 1 to 32", ["GET", "POST"]),
    "cache_policy_id": ("id of the route's cache policy; null: not cached", 1),
    "cache_policy": ("the route's cache policy by name; null: not cached", "short"),
    "is_public": ("true: no API key needed (limits apply per client address)", False),
    "fail_mode": (
        "open: admit when the rate limiter's store is unreachable; closed: answer 503",
        "open",
    ),
    "max_request_body_bytes": ("largest request body accepted, 0 to 2^63-1 bytes", 1_048_576),
    "timeout_seconds": ("upstream timeout, 0.001 to 3600 seconds; null: the default", 30.0),
    "request_body_timeout_seconds": ("seconds the whole request body may take", 60.0),
    "request_body_min_rate": ("bytes/s a request body must average", 1024),
    "max_upstream_connections": ("upstream connections per process, 1 to 100000", 64),
    "hide_ratelimit_headers": ("true: answers carry no RateLimit-* fields", False),
    "allow_private_upstream": (
        "permit link-local and cloud metadata upstream addresses",
        False,
    ),
    "route_count": ("routes using this policy", 2),
    # --- cache policies
    "mode": (
        "policy: this policy's TTLs; origin: the upstream's Cache-Control, within the bounds",
        "policy",
    ),
    "ttl_seconds": ("seconds an answer is fresh, 0 to 2147483647", 60),
    "stale_while_revalidate_seconds": (
        "seconds a stale answer may be served while it is refreshed, 0 to 2147483647",
        30,
    ),
    "stale_if_error_seconds": (
        "seconds a stale answer may be served when the upstream fails, 0 to 2147483647",
        300,
    ),
    "vary_headers": (
        "request headers that select a variant (in the cache key), up to 32",
        ["accept-language"],
    ),
    "cacheable_methods": ("methods whose answers are stored, up to 16", ["GET", "HEAD"]),
    "cacheable_statuses": ("statuses that are stored, 100-599, up to 100", [200, 404]),
    "max_object_bytes": ("largest body stored, 0 to 2147483647 bytes", 1_048_576),
    "shared": ("true: one entry for every key (public data); false: one per tenant", False),
    "negative_cache": ("store 404 and 410 answers too", True),
    "cache_with_cookies": ("use the cache for requests that carry a Cookie", False),
    "keep_seconds": ("seconds an entry with a validator is kept for revalidation", 600),
    "lock_timeout_seconds": ("seconds a request waits for another's fill of the entry", 5.0),
    "lock_age_seconds": ("seconds a fill may hold the lock before another takes over", 10.0),
    "max_variants": ("variants stored per URL, 1 to 64", 8),
    # --- pages
    "items": ("the rows of this page", ...),
    "total": ("rows matching the query, all pages", 1),
    "limit": ("rows per page asked for", 100),
    "offset": ("rows skipped before this page", 0),
    "next_cursor": ("pass as `cursor` for the next (older) page; null: no more", 1041),
    "has_more": ("true: more rows match than this page holds", False),
    # --- audit
    "actor": ("who made the change: admin-key:<fingerprint> or ui:<user>", "admin-key:1a2b3c4d"),
    "action": ("what was done: <entity>.<verb>", "key.create"),
    "entity_type": ("kind of the changed row", "key"),
    "entity_id": ("id of the changed row", "12"),
    "before": ("the row before the change; null for a creation", None),
    "after": ("the row after the change; null for a deletion", {"name": "acme-orders"}),
    # --- abuse
    "duration_seconds": ("how long the block lasts, seconds", 3600),
    "reason": ("why, for the audit log and the blocked list", "scraping"),
    # --- cache purge
    "url": ("a gateway URL: every variant and tenant of it", "/g/demo/items?x=1"),
    "route": ("a route by name", "demo"),
    "prefix": ("path prefix under `route`", "/items/"),
    "tag": ("from Surrogate-Key or Cache-Tag", "product-42"),
    "all": ("empty the whole cache", False),
    "status": ("HTTP status of the answer", 200),
    # --- request logs
    "request_id": ("the request's X-Request-Id", "0f4c2a9e6b7d4e1f"),
    "route_name": ("the route's name at the time of the request", "demo"),
    "method": ("HTTP method", "GET"),
    "path": ("the path after /g/{route}", "/items"),
    "cache_status": ("X-Cache of the answer; empty when the cache was not consulted", "HIT"),
    "latency_ms": ("time to answer, milliseconds", 12.5),
    "upstream_latency_ms": ("time the upstream took, milliseconds; null: not called", 9.8),
    "bytes_in": ("request body bytes", 0),
    "bytes_out": ("response body bytes", 512),
    "client_ip": ("the client's address", "192.0.2.10"),
    "user_agent": ("the client's User-Agent", "curl/8.5.0"),
    "error": (
        "why the upstream failed, if it did; null: it did not",
        "upstream timed out after 30 s",
    ),
    # --- analytics
    "window": ('the `window` asked for, or "custom" when `since` was given', "1h"),
    "since": ("start of the range (UTC, inclusive)", TS),
    "until": ("end of the range (UTC, exclusive)", TS),
    "window_seconds": ("length of the range, seconds", 3600.0),
    "requests": ("requests", 1200),
    "errors": ("answers with status >= 500", 3),
    "client_errors": ("answers with status 4xx, 429 included", 40),
    "error_rate": ("errors / requests; null without requests", 0.0025),
    "rate_limited": ("answers with status 429", 12),
    "cache": ("answers by X-Cache value", ...),
    "upstream_calls": ("requests that called the upstream", 300),
    "upstream_calls_saved": ("requests - upstream_calls", 900),
    "requests_per_second": ("requests / seconds", 0.33),
    "hit": ("X-Cache: HIT", 800),
    "miss": ("X-Cache: MISS", 250),
    "stale": ("X-Cache: STALE", 10),
    "updating": ("X-Cache: UPDATING", 5),
    "revalidated": ("X-Cache: REVALIDATED", 20),
    "negative": ("X-Cache: NEGATIVE (a stored 404 or 410)", 4),
    "bypass": ("X-Cache: BYPASS", 30),
    "expired": ("X-Cache: EXPIRED", 15),
    "none": ("answered before the cache was consulted (no X-Cache)", 60),
    "other": ("any other X-Cache value", 0),
    "served_from_cache": ("HIT, STALE, UPDATING, REVALIDATED and NEGATIVE", 839),
    "lookups": ("requests that consulted the cache", 1104),
    "hit_rate": ("served_from_cache / lookups; null without lookups", 0.76),
    "hits": ("served from cache", 839),
    "misses": ("MISS and EXPIRED", 265),
    "avg": ("mean, milliseconds; null without requests", 12.5),
    "p50": ("median, milliseconds", 9.8),
    "p95": ("95th percentile, milliseconds", 40.1),
    "p99": ("99th percentile, milliseconds", 88.0),
    "avg_ms": ("mean latency, milliseconds", 12.5),
    "p50_ms": ("median latency, milliseconds", 9.8),
    "p95_ms": ("95th percentile latency, milliseconds", 40.1),
    "p99_ms": ("99th percentile latency, milliseconds", 88.0),
    "avg_latency_ms": ("mean latency, milliseconds", 12.5),
    "seconds": ("part of the bucket inside the range (the last may be short)", 60.0),
    "bucket": ("series resolution", "1m"),
    "bucket_seconds": ("series resolution, seconds", 60),
    "by_route": ("per route, busiest first", ...),
    "series": ("one point per bucket, oldest first", ...),
    "unauthorized": ("401 answers: missing or unknown API key", 25),
    "forbidden": ("403 answers", 2),
    "refused_rate": ("client_errors / requests; null without requests", 0.03),
    "by_key": ("per key, most refused first", ...),
    "key_name": ("the key's name; null without a key or when it has been deleted", "acme-orders"),
    "same_request_id": ("other rows carrying the same X-Request-Id", ...),
    "cache_key": (
        "the cache entry's key, as in Cache-Status",
        "c:0123456789abcdef0123456789abcdef",
    ),
    "upstream_status": ("the upstream's own status, when it answered", 200),
    "refused_by": ("the limit that refused the request, as the `limit` of its 429", "rate"),
    "refusal": (
        "that limit's numbers, as the 429 gave them",
        {"quota": 200, "window_seconds": 2, "remaining": 0, "retry_after": 1, "reset_after": 2},
    ),
    "more_same_request_id": ("true: more rows share the request id than listed", False),
    # --- problem details (RFC 9457)
    "type": (
        "a URI naming the kind of problem; about:blank when the status says it all",
        "about:blank",
    ),
    "title": ("the status's short description", "Not Found"),
    "detail": ("what went wrong and what to fix", "no key with id 12"),
    "loc": ("where the invalid value is: body, query or path, then the field", ["body", "name"]),
    "msg": ("what is wrong with it", "must be 1-100 characters"),
}
# Where one name means something else in one model.
FIELD_OVERRIDES: dict[str, tuple[str, Any]] = {
    "KeyOut.status": _KEY_STATUS,
    "KeyCreated.status": _KEY_STATUS,
    "KeyRotated.status": _KEY_STATUS,
    "SummaryOut.latency_ms": ("latency of the answers, milliseconds", ...),
    "TopRouteOut.latency_ms": ("latency of the route's answers, milliseconds", ...),
    "ProblemDetail.status": ("the HTTP status", 404),
    "ProblemDetail.errors": ("422 only: one entry per invalid field", ...),
    "FieldError.type": ("kind of error, e.g. missing, value_error", "value_error"),
    "TopKeyOut.name": ("the key's name; null when the key has been deleted", "acme-orders"),
    "PurgeBody.key": (
        "one entry's cache key, as the `key` of its answers' Cache-Status shows it",
        "c:0123456789abcdef0123456789abcdef",
    ),
    "PurgeBody.tenant_id": ("every entry of this tenant", 7),
    "RouteCacheOut.route": ("the route's name", "demo"),
    "RouteCacheOut.requests": ("requests to the route", 1200),
    "BlockBody.duration_seconds": (
        "how long the block lasts; default ABUSE_BLOCK_DURATION_SECONDS",
        3600,
    ),
}
PARAMETERS: dict[str, tuple[str, Any]] = {
    "tenant_id": ("id of the tenant", 7),
    "key_id": ("id of the API key", 12),
    "route_id": ("id of the route", 3),
    "policy_id": ("id of the cache policy", 1),
    "request_id": ("the request's X-Request-Id", "0f4c2a9e6b7d4e1f"),
    "limit": ("rows per page", 100),
    "offset": ("rows to skip", 0),
    "cursor": ("next_cursor of the previous page", 1041),
    "is_active": ("only active (true) or inactive (false) rows", True),
    "include_revoked": ("include revoked keys", False),
    "action": ("only this action", "key.create"),
    "actor": ("only changes by this actor", "admin-key:1a2b3c4d"),
    "entity_type": ("only changes to this kind of row", "key"),
    "entity_id": ("only changes to this row", "12"),
    "method": ("only this HTTP method", "GET"),
    "path_prefix": ("only paths starting with this", "/items"),
    "route": ("route name", "demo"),
    "window": ("15m, 1h, 24h, 7d …; default 1h ending now", "1h"),
    "since": ("inclusive, ISO 8601", TS),
    "status": ("only this status (404) or class (4xx, 5xx)", "4xx"),
    "cache_status": ('only this X-Cache value; "none": answers without X-Cache', "HIT"),
    "before_id": ("next_cursor of the previous page", 1041),
    "after_id": ("live tail: rows with a larger id, oldest first", 1040),
    "key": ("key name or display prefix (case-insensitive prefix match)", "acme"),
    "log_id": ("which row, when several share the request id", 1041),
    "bucket": ("series resolution", "1m"),
    "series": ("false: by_route only, much cheaper over long windows", True),
    "until": ("exclusive, ISO 8601", TS),
}


def install_admin_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` return the completed document (built once, on first use)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if not getattr(app.state, "admin_openapi_done", False):
            complete(build())  # FastAPI keeps the document it built: completed in place
            app.state.admin_openapi_done = True
        return build()

    app.openapi = openapi  # type: ignore[method-assign]


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "apiKey",
        "in": "header",
        "name": "X-Admin-Key",
        "description": "the ADMIN_API_KEY setting; the admin UI's session cookie (with its "
        "X-CSRF-Token on writes) is accepted instead",
    }
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if path.startswith(ADMIN_PREFIX + "/"):
                _admin_operation(method, op)
            for status, response in op["responses"].items():
                if status[:1] in ("4", "5"):
                    _problem_content(response)
            for param in op.get("parameters", []):
                _describe(param, PARAMETERS.get(param["name"]), parameter=True)
    for name, schema in schemas.items():
        for field, prop in schema.get("properties", {}).items():
            entry = FIELD_OVERRIDES.get(f"{name}.{field}") or FIELDS.get(field)
            _describe(prop, entry, parameter=False)
    for schema in schemas.values():
        for prop in schema.get("properties", {}).values():
            if "examples" not in prop:
                example = _composed(prop, schemas, depth=0)
                if example is not None:
                    prop["examples"] = [example]
    return doc


def _admin_operation(method: str, op: dict[str, Any]) -> None:
    op["security"] = [{SECURITY_SCHEME: []}]
    responses = op["responses"]
    problem = {"content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_SCHEMA}}}
    if any(p.get("in") == "path" for p in op.get("parameters", [])):
        responses.setdefault("404", {**problem, "description": "no row with this id"})
    if method in WRITES:
        responses.setdefault(
            "409",
            {
                **problem,
                "description": "the change conflicts with the current data (a name already "
                "taken, a revoked key, another writer first); `detail` says which",
            },
        )
    if "requestBody" in op:
        responses.setdefault(
            "413", {**problem, "description": "the request body is larger than 1 MiB"}
        )


def _problem_content(response: dict[str, Any]) -> None:
    # Every error is a problem document, never application/json, whatever an endpoint declared.
    response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_SCHEMA}}


def _describe(node: dict[str, Any], entry: tuple[str, Any] | None, *, parameter: bool) -> None:
    if entry is None:
        return
    description, example = entry
    node.setdefault("description", description)
    if example is ...:
        return  # composed once every field has its own
    if parameter:
        node.setdefault("example", example)
    else:
        node.setdefault("examples", [example])


def _composed(prop: dict[str, Any], schemas: dict[str, Any], depth: int) -> Any:
    """An example of an object or list property built from its fields' own examples."""
    if depth > 4:
        return None
    if "$ref" in prop:
        target = schemas.get(prop["$ref"].rsplit("/", 1)[-1], {})
        if "properties" not in target:
            return None
        out: dict[str, Any] = {}
        for field, sub in target["properties"].items():
            examples = sub.get("examples")
            if examples:
                out[field] = examples[0]
                continue
            value = _composed(sub, schemas, depth + 1)
            if value is None and field in target.get("required", []):
                return None
            if value is not None:
                out[field] = value
        return copy.deepcopy(out)
    if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
        item = _composed(prop["items"], schemas, depth + 1)
        return [] if item is None else [item]
    for option in prop.get("anyOf", []):
        if option.get("type") != "null":
            found = _composed(option, schemas, depth + 1)
            if found is not None:
                return found
    return None
