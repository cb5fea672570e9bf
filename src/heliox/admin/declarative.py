"""Configuration as code: the file `heliox config export` writes and `heliox config apply` reads.

The file (format `heliox/v1`, see docs/configuration-as-code.md) holds cache policies, routes and
tenants with their API keys, each referred to by name (keys by their SHA-256 digest), never by a
database id, and in a fixed order, so two exports of the same configuration are byte-identical.

Applying it computes a plan (what to create, update and, with `prune`, delete) and carries it
out through the admin API's own handlers inside one `Admin.batch()`: the same validation, the
same audit rows, one transaction, one config-version bump. Anything refused rolls all of it back.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fastapi import Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from heliox.admin.deps import Admin
from heliox.admin.errors import AdminError
from heliox.admin.keys import import_key, revoke_key, update_key
from heliox.admin.policies import create_policy, delete_policy, update_policy
from heliox.admin.routes import create_route, delete_route, update_route
from heliox.admin.schemas import (
    DisplayName,
    KeyCreate,
    KeyLimits,
    KeyUpdate,
    PolicyCreate,
    PolicyUpdate,
    RouteCreate,
    RouteUpdate,
    TenantCreate,
    TenantUpdate,
)
from heliox.admin.tenants import create_tenant, delete_tenant, update_tenant
from heliox.admin.upstream_validation import UpstreamUrlError, validate_upstream_url
from heliox.db.models import ApiKey, CachePolicy, Route, Tenant

FORMAT = "heliox/v1"
SECTIONS = ("policies", "routes", "tenants")
HEADER = (
    "# Heliox configuration (format heliox/v1): cache policies, routes, tenants and their keys.\n"
    "# Keys appear as their SHA-256 digest and display prefix only. Apply it with\n"
    "# `heliox config apply FILE [--dry-run] [--prune]`; see docs/configuration-as-code.md.\n"
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PREFIX = re.compile(r"^[\x21-\x7e]{1,32}$")

# The fields of each entity in the file, in the file's order: the admin API's create bodies,
# less what refers to another row by id (a route names its cache policy).
POLICY_FIELDS = tuple(PolicyCreate.model_fields)
ROUTE_FIELDS = tuple(f for f in RouteCreate.model_fields if f != "cache_policy_id")
TENANT_FIELDS = tuple(TenantCreate.model_fields)
KEY_LIMIT_FIELDS = tuple(KeyLimits.model_fields)
# A key's `prefix` and `digest` identify it and `expires_at` is set by rotation: apply uses the
# last only when it creates the key.
KEY_FIELDS = ("name", "prefix", "digest", "is_active", *KEY_LIMIT_FIELDS, "expires_at")
KEY_MUTABLE = ("name", "is_active", *KEY_LIMIT_FIELDS)


class ConfigFileError(Exception):
    """The file cannot be applied; `problems` name the entity and field of each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class KeyEntry(KeyLimits):
    name: DisplayName
    prefix: str
    digest: str
    is_active: bool = True
    expires_at: datetime | None = None


@dataclass
class TenantEntry:
    tenant: TenantCreate
    keys: list[KeyEntry]


@dataclass
class DesiredState:
    policies: dict[str, PolicyCreate]
    routes: dict[str, RouteCreate]
    tenants: dict[str, TenantEntry]


# --- export ---------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return list(value)
    return value


async def export_config(session: AsyncSession) -> dict[str, Any]:
    """The configuration as the file's document: every entity by name, in a fixed order."""
    # Sorted here, by code point, not by the database: PostgreSQL's collation may order names
    # differently from SQLite's, and the file must not depend on the backend.
    policies = sorted(await session.scalars(select(CachePolicy)), key=lambda p: p.name)
    policy_names = {p.id: p.name for p in policies}
    routes = sorted(await session.scalars(select(Route)), key=lambda r: r.name)
    tenants = sorted(await session.scalars(select(Tenant)), key=lambda t: t.name)
    # Revoked keys are history (kept for the audit trail and the logs), not configuration.
    keys = sorted(
        await session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))),
        key=lambda k: (k.name, k.key_hash),
    )
    by_tenant: dict[int, list[dict[str, Any]]] = {}
    for key in keys:
        entry: dict[str, Any] = {"name": key.name, "prefix": key.key_prefix}
        entry["digest"] = "sha256:" + key.key_hash
        entry["is_active"] = key.is_active
        entry.update({f: _plain(getattr(key, f)) for f in KEY_LIMIT_FIELDS})
        if key.expires_at is not None:
            entry["expires_at"] = _plain(key.expires_at)
        by_tenant.setdefault(key.tenant_id, []).append(entry)

    def route_entry(route: Route) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ROUTE_FIELDS:
            if name == "cache_policy":
                pid = route.cache_policy_id
                out[name] = policy_names.get(pid) if pid is not None else None
            else:
                out[name] = _plain(getattr(route, name))
        return out

    return {
        "format": FORMAT,
        "policies": [{f: _plain(getattr(p, f)) for f in POLICY_FIELDS} for p in policies],
        "routes": [route_entry(r) for r in routes],
        "tenants": [
            {f: _plain(getattr(t, f)) for f in TENANT_FIELDS} | {"keys": by_tenant.get(t.id, [])}
            for t in tenants
        ],
    }


def dump_yaml(document: dict[str, Any]) -> str:
    """The document as YAML (safe subset): mappings in block style, keys in the document's
    order; lists of scalars on one line (`methods: [GET, HEAD]`), lists of entities one by one."""
    import yaml

    class Dumper(yaml.SafeDumper):  # type: ignore[misc]
        pass

    def represent_list(dumper: Any, items: list[Any]) -> Any:
        flow = all(not isinstance(item, dict | list) for item in items)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)

    Dumper.add_representer(list, represent_list)
    body = yaml.dump(document, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)
    return HEADER + str(body)


def load_yaml(text: str, source: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigFileError([f"{source} is not valid YAML{where}: {why}"]) from None


# --- parsing and validation -------------------------------------------------------------------
def _problems(label: str, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(entry)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(f"{label}: {loc}: {msg}")
    return out


def _label(section: str, index: int, raw: Any) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    singular = {"policies": "policy", "routes": "route", "tenants": "tenant"}[section]
    return f"{singular} {name!r}" if isinstance(name, str) else f"{section}[{index}]"


def _entries(document: dict[str, Any], section: str, problems: list[str]) -> list[Any]:
    raw = document.get(section, [])
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"{section}: must be a list")
        return []
    return raw


def parse_config(document: Any) -> DesiredState:
    """The file's entities, validated as the admin API validates its bodies; every problem,
    each naming its entity and field, in one ConfigFileError."""
    if not isinstance(document, dict):
        raise ConfigFileError(["the file must be a mapping with `format: heliox/v1` at the top"])
    problems: list[str] = []
    if document.get("format") != FORMAT:
        problems.append(f"format: must be {FORMAT!r} (found {document.get('format')!r})")
    for extra in sorted(set(document) - {"format", *SECTIONS}, key=str):
        problems.append(f"{extra}: unknown section (known: format, {', '.join(SECTIONS)})")
    state = DesiredState({}, {}, {})

    for i, raw in enumerate(_entries(document, "policies", problems)):
        label = _label("policies", i, raw)
        try:
            policy = PolicyCreate.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_problems(label, exc))
            continue
        if policy.name in state.policies:
            problems.append(f"{label}: name: appears twice in the file")
        state.policies[policy.name] = policy

    for i, raw in enumerate(_entries(document, "routes", problems)):
        label = _label("routes", i, raw)
        if isinstance(raw, dict) and "cache_policy_id" in raw:
            problems.append(f"{label}: cache_policy_id: name the policy instead (cache_policy)")
            continue
        try:
            route = RouteCreate.model_validate(raw)
            route.upstream_url = validate_upstream_url(
                route.upstream_url, allow_link_local=route.allow_private_upstream
            )
        except ValidationError as exc:
            problems.extend(_problems(label, exc))
            continue
        except UpstreamUrlError as exc:
            problems.append(f"{label}: upstream_url: {exc}")
            continue
        if route.name in state.routes:
            problems.append(f"{label}: name: appears twice in the file")
        state.routes[route.name] = route

    digests: dict[str, str] = {}
    for i, raw in enumerate(_entries(document, "tenants", problems)):
        label = _label("tenants", i, raw)
        fields = dict(raw) if isinstance(raw, dict) else raw
        raw_keys = fields.pop("keys", None) if isinstance(fields, dict) else None
        try:
            tenant = TenantCreate.model_validate(fields)
        except ValidationError as exc:
            problems.extend(_problems(label, exc))
            continue
        if tenant.name in state.tenants:
            problems.append(f"{label}: name: appears twice in the file")
        if raw_keys is not None and not isinstance(raw_keys, list):
            problems.append(f"{label}: keys: must be a list")
            raw_keys = None
        keys = []
        for j, raw_key in enumerate(raw_keys or []):
            key_label = f"{label} keys[{j}]"
            if isinstance(raw_key, dict) and isinstance(raw_key.get("name"), str):
                key_label = f"{label} key {raw_key['name']!r}"
            try:
                key = KeyEntry.model_validate(raw_key)
            except ValidationError as exc:
                problems.extend(_problems(key_label, exc))
                continue
            key_label = f"{label} key {key.name!r}"
            if not _DIGEST.match(key.digest):
                problems.append(
                    f"{key_label}: digest: must be 'sha256:' and 64 lower-case hex digits "
                    "(the SHA-256 of the key, as `heliox config export` writes it)"
                )
                continue
            if not _PREFIX.match(key.prefix):
                problems.append(f"{key_label}: prefix: must be 1-32 visible ASCII characters")
                continue
            if key.digest in digests:
                problems.append(f"{key_label}: digest: also listed under {digests[key.digest]}")
                continue
            digests[key.digest] = key_label
            keys.append(key)
        state.tenants[tenant.name] = TenantEntry(tenant, keys)

    if problems:
        raise ConfigFileError(problems)
    return state


# --- the plan ---------------------------------------------------------------------------------
Action = Literal["create", "update", "delete"]


@dataclass
class Change:
    action: Action
    label: str
    # create: the fields set away from their defaults; update: field -> (now, then).
    fields: dict[str, Any]
    run: Callable[[Admin, dict[str, int]], Awaitable[None]] = field(repr=False)
    note: str = ""


@dataclass
class Plan:
    changes: list[Change]
    # Entities in the database but not in the file, left alone without `prune`.
    kept: list[str]

    def counts(self) -> dict[Action, int]:
        out: dict[Action, int] = {"create": 0, "update": 0, "delete": 0}
        for change in self.changes:
            out[change.action] += 1
        return out


def _differences(
    model: type[BaseModel], current: dict[str, Any], desired: BaseModel, names: Iterable[str]
) -> dict[str, Any]:
    """field -> (current, desired) where they differ. The current row goes through the same
    model as the file first, so a value the API would normalise (an unsorted status list, a
    header name's case) in a row written some other way is no difference."""
    wanted = desired.model_dump(include=set(names))
    try:
        now = model.model_validate(current).model_dump(include=set(names))
    except ValidationError:
        now = current
    return {
        name: (now.get(name), value) for name, value in wanted.items() if now.get(name) != value
    }


def _non_default(model: BaseModel, names: Iterable[str]) -> dict[str, Any]:
    fields = type(model).model_fields
    out = {}
    for name in names:
        value = getattr(model, name)
        if name != "name" and (name not in fields or value != fields[name].get_default()):
            out[name] = value
    return out


def _key_label(tenant: str, name: str, prefix: str) -> str:
    return f"key {name!r} ({prefix}…) of tenant {tenant!r}"


async def plan_changes(session: AsyncSession, desired: DesiredState, *, prune: bool) -> Plan:
    """What applying `desired` to the database would change, in the order it must happen."""
    policies = {p.name: p for p in await session.scalars(select(CachePolicy))}
    routes = {r.name: r for r in await session.scalars(select(Route))}
    tenants = {t.name: t for t in await session.scalars(select(Tenant))}
    tenant_names = {t.id: t.name for t in tenants.values()}
    keys = {k.key_hash: k for k in await session.scalars(select(ApiKey))}
    policy_names = {p.id: p.name for p in policies.values()}
    problems: list[str] = []
    changes: list[Change] = []
    kept: list[str] = []

    for name, policy in sorted(desired.policies.items()):
        row = policies.get(name)
        if row is None:
            changes.append(
                Change("create", f"policy {name!r}", _non_default(policy, POLICY_FIELDS),
                       _create_policy(policy))
            )  # fmt: skip
            continue
        current = {f: getattr(row, f) for f in POLICY_FIELDS}
        diff = _differences(PolicyCreate, current, policy, POLICY_FIELDS)
        if diff:
            body = PolicyUpdate(**{f: new for f, (_, new) in diff.items()})
            changes.append(Change("update", f"policy {name!r}", diff, _update_policy(row.id, body)))

    for name, route in sorted(desired.routes.items()):
        label = f"route {name!r}"
        wanted = route.cache_policy
        if wanted is not None and wanted not in desired.policies:
            if wanted not in policies:
                problems.append(f"{label}: cache_policy: no cache policy named {wanted!r}")
            elif prune:
                problems.append(
                    f"{label}: cache_policy: {wanted!r} is not in the file, so --prune deletes it"
                )
        route_row = routes.get(name)
        if route_row is None:
            changes.append(
                Change("create", label, _non_default(route, ROUTE_FIELDS), _create_route(route))
            )
            continue
        current = {f: getattr(route_row, f) for f in ROUTE_FIELDS if f != "cache_policy"}
        pid = route_row.cache_policy_id
        current["cache_policy"] = policy_names.get(pid) if pid is not None else None
        diff = _differences(RouteCreate, current, route, ROUTE_FIELDS)
        if diff:
            route_body = RouteUpdate(**{f: new for f, (_, new) in diff.items()})
            changes.append(Change("update", label, diff, _update_route(route_row.id, route_body)))

    for name, entry in sorted(desired.tenants.items()):
        label = f"tenant {name!r}"
        tenant_row = tenants.get(name)
        if tenant_row is None:
            changes.append(
                Change("create", label, _non_default(entry.tenant, TENANT_FIELDS),
                       _create_tenant(entry.tenant))
            )  # fmt: skip
        else:
            current = {f: getattr(tenant_row, f) for f in TENANT_FIELDS}
            diff = _differences(TenantCreate, current, entry.tenant, TENANT_FIELDS)
            if diff:
                tenant_body = TenantUpdate(**{f: new for f, (_, new) in diff.items()})
                changes.append(
                    Change("update", label, diff, _update_tenant(tenant_row.id, tenant_body))
                )
        for entry_key in sorted(entry.keys, key=lambda k: (k.name, k.digest)):
            key_label = _key_label(name, entry_key.name, entry_key.prefix)
            found = keys.get(entry_key.digest.removeprefix("sha256:"))
            if found is None:
                shown = _non_default(entry_key, ("name", *KEY_LIMIT_FIELDS))
                if not entry_key.is_active:
                    shown["is_active"] = False
                changes.append(Change("create", key_label, shown, _import_key(name, entry_key)))
                continue
            owner = tenant_names.get(found.tenant_id, str(found.tenant_id))
            if found.revoked_at is not None:
                problems.append(
                    f"tenant {name!r} key {entry_key.name!r}: digest: that key was revoked; a "
                    "revoked key cannot come back (remove it from the file)"
                )
            elif owner != name:
                problems.append(
                    f"tenant {name!r} key {entry_key.name!r}: digest: the key belongs to tenant "
                    f"{owner!r}; keys cannot move between tenants (revoke it and create a new one)"
                )
            elif found.key_prefix != entry_key.prefix:
                problems.append(
                    f"tenant {name!r} key {entry_key.name!r}: prefix: {entry_key.prefix!r} is not "
                    f"the prefix of the key with this digest ({found.key_prefix!r})"
                )
            else:
                current = {f: getattr(found, f) for f in KEY_MUTABLE}
                current |= {"prefix": entry_key.prefix, "digest": entry_key.digest}
                diff = _differences(KeyEntry, current, entry_key, KEY_MUTABLE)
                if diff:
                    body_key = KeyUpdate(**{f: new for f, (_, new) in diff.items()})
                    changes.append(
                        Change("update", key_label, diff, _update_key(found.id, body_key))
                    )

    # What the file leaves out: deleted with --prune (keys are revoked), otherwise only listed.
    wanted_digests = {
        k.digest.removeprefix("sha256:") for e in desired.tenants.values() for k in e.keys
    }
    absent_tenants = {t.id for n, t in tenants.items() if n not in desired.tenants}
    for key_row in sorted(keys.values(), key=lambda k: (tenant_names.get(k.tenant_id, ""), k.name)):
        if key_row.revoked_at is not None or key_row.key_hash in wanted_digests:
            continue
        if key_row.tenant_id in absent_tenants:
            continue  # goes with its tenant
        owner = tenant_names.get(key_row.tenant_id, "?")
        label = _key_label(owner, key_row.name, key_row.key_prefix)
        if prune:
            changes.append(Change("delete", label, {}, _revoke_key(key_row.id), note="revoked"))
        else:
            kept.append(label)
    for name, route_row in sorted(routes.items()):
        if name not in desired.routes:
            if prune:
                changes.append(
                    Change("delete", f"route {name!r}", {}, _delete(delete_route, route_row.id))
                )
            else:
                kept.append(f"route {name!r}")
    for name, policy_row in sorted(policies.items()):
        if name not in desired.policies:
            if prune:
                changes.append(
                    Change("delete", f"policy {name!r}", {}, _delete(delete_policy, policy_row.id))
                )
            else:
                kept.append(f"policy {name!r}")
    for name, tenant_row in sorted(tenants.items()):
        if name not in desired.tenants:
            if prune:
                count = sum(1 for k in keys.values() if k.tenant_id == tenant_row.id)
                note = f"with its {count} key{'s' if count != 1 else ''}" if count else ""
                changes.append(
                    Change(
                        "delete",
                        f"tenant {name!r}",
                        {},
                        _delete(delete_tenant, tenant_row.id),
                        note,
                    )
                )
            else:
                kept.append(f"tenant {name!r}")
    if problems:
        raise ConfigFileError(problems)
    return Plan(_ordered(changes), kept)


def _ordered(changes: list[Change]) -> list[Change]:
    """Policies before the routes that name them, tenants before their keys; deletions of
    routes before the policies they used, keys before tenants."""
    rank = {
        ("create", "policy"): 0, ("update", "policy"): 0,
        ("create", "route"): 1, ("update", "route"): 1, ("delete", "route"): 2,
        ("delete", "policy"): 3,
        ("create", "tenant"): 4, ("update", "tenant"): 4,
        ("create", "key"): 5, ("update", "key"): 5, ("delete", "key"): 6,
        ("delete", "tenant"): 7,
    }  # fmt: skip
    return sorted(changes, key=lambda c: rank[(c.action, c.label.split(" ", 1)[0])])


# --- carrying a plan out through the admin API's handlers -------------------------------------
Runner = Callable[[Admin, dict[str, int]], Awaitable[None]]


def _create_policy(body: PolicyCreate) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        await create_policy(admin, body, Response())

    return run


def _update_policy(policy_id: int, body: PolicyUpdate) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        await update_policy(admin, policy_id, body)

    return run


def _create_route(route: RouteCreate) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        await create_route(admin, route, Response())

    return run


def _update_route(route_id: int, body: RouteUpdate) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        await update_route(admin, route_id, body)

    return run


def _create_tenant(body: TenantCreate) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        created = await create_tenant(admin, body, Response())
        tenant_ids[created.name] = created.id

    return run


def _update_tenant(tenant_id: int, body: TenantUpdate) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        await update_tenant(admin, tenant_id, body)

    return run


def _import_key(tenant: str, key: KeyEntry) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        body = KeyCreate(
            tenant_id=tenant_ids[tenant],
            name=key.name,
            **key.model_dump(include=set(KEY_LIMIT_FIELDS)),
        )
        await import_key(
            admin,
            body,
            key_hash=key.digest.removeprefix("sha256:"),
            key_prefix=key.prefix,
            is_active=key.is_active,
            expires_at=key.expires_at,
        )

    return run


def _update_key(key_id: int, body: KeyUpdate) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        await update_key(admin, key_id, body)

    return run


def _revoke_key(key_id: int) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        await revoke_key(admin, key_id)

    return run


def _delete(handler: Callable[[Admin, int], Awaitable[Response]], row_id: int) -> Runner:
    async def run(admin: Admin, tenant_ids: dict[str, int]) -> None:
        await handler(admin, row_id)

    return run


def _admin_problem(label: str, exc: AdminError) -> str:
    errors = exc.extensions.get("errors") or []
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        parts.append(f"{label}: {'.'.join(loc) or '(entry)'}: {err.get('msg', err)}")
    return "; ".join(parts) or f"{label}: {exc.detail}"


class DryRun(Exception):
    """Raised inside the batch to roll a dry run back after it went through every check."""


@dataclass
class ApplyResult:
    plan: Plan
    applied: bool


async def apply_config(
    admin: Admin,
    desired: DesiredState,
    *,
    prune: bool,
    dry_run: bool,
    show: Callable[[Plan], None] = lambda plan: None,
) -> ApplyResult:
    """Plan and carry out `desired` in one transaction (`Admin.batch`); `show` gets the plan
    before anything is written. A dry run goes through every handler and rolls back, so it
    refuses exactly what the real apply would. Raises ConfigFileError, naming the entity."""
    plan: Plan | None = None
    try:
        async with admin.batch() as session:
            plan = await plan_changes(session, desired, prune=prune)
            show(plan)
            tenant_ids = {
                name: tid for tid, name in await session.execute(select(Tenant.id, Tenant.name))
            }
            for change in plan.changes:
                try:
                    await change.run(admin, tenant_ids)
                except AdminError as exc:
                    raise ConfigFileError([_admin_problem(change.label, exc)]) from None
            if dry_run:
                raise DryRun
    except DryRun:
        assert plan is not None
        return ApplyResult(plan, applied=False)
    return ApplyResult(plan, applied=bool(plan.changes))


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def format_plan(plan: Plan, *, prune: bool) -> list[str]:
    """The plan as lines: `+` create, `~` update (field: now -> then), `-` delete."""
    lines: list[str] = []
    sign = {"create": "+", "update": "~", "delete": "-"}
    for change in plan.changes:
        note = f" ({change.note})" if change.note else ""
        lines.append(f"{sign[change.action]} {change.action} {change.label}{note}")
        for name, value in change.fields.items():
            if change.action == "update":
                before, after = value
                lines.append(f"    {name}: {_shown(before)} -> {_shown(after)}")
            else:
                lines.append(f"    {name}: {_shown(value)}")
    if plan.kept and not prune:
        lines.append(
            f"  {len(plan.kept)} in the database but not in the file, kept (--prune deletes them; "
            "keys are revoked):"
        )
        lines.extend(f"    {label}" for label in plan.kept)
    counts = plan.counts()
    if plan.changes:
        lines.append(
            f"{counts['create']} to create, {counts['update']} to update, "
            f"{counts['delete']} to delete"
        )
    else:
        lines.append("no changes")
    return lines
