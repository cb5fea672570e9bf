"""/admin/routes: which upstream serves /g/{name}/..., with its cache policy and limits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from heliox.admin.audit import record_audit
from heliox.admin.deps import AdminDep, AdminRoute, PageDep, get_or_404, id_in_range
from heliox.admin.errors import Conflict, invalid_field
from heliox.admin.schemas import Page, RouteCreate, RouteOut, RouteUpdate, from_row
from heliox.admin.upstream_validation import UpstreamUrlError, validate_upstream_url
from heliox.db.models import CachePolicy, Route

router = APIRouter(route_class=AdminRoute, tags=["routes"])


async def _policy_names(session: AsyncSession, ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = await session.execute(
        select(CachePolicy.id, CachePolicy.name).where(CachePolicy.id.in_(wanted))
    )
    return {pid: name for pid, name in rows}


def _out(route: Route, policy_names: dict[int, str]) -> RouteOut:
    # Every other field is the column of the same name; only the policy's name is looked up.
    policy_id = route.cache_policy_id
    return from_row(
        RouteOut,
        route,
        cache_policy=policy_names.get(policy_id) if policy_id is not None else None,
    )


async def _one(session: AsyncSession, route: Route) -> RouteOut:
    return _out(route, await _policy_names(session, [route.cache_policy_id]))


async def _ensure_name_free(
    session: AsyncSession, name: str, *, except_id: int | None = None
) -> None:
    query = select(Route.id).where(Route.name == name)
    if except_id is not None:
        query = query.where(Route.id != except_id)
    if await session.scalar(query) is not None:
        raise Conflict(f"a route named {name!r} already exists")


async def _resolve_policy(session: AsyncSession, fields: dict[str, Any]) -> tuple[bool, int | None]:
    """(whether the body sets the policy, its id); takes `cache_policy` names out of `fields`."""
    given_id = "cache_policy_id" in fields
    given_name = "cache_policy" in fields
    policy_id: int | None = fields.pop("cache_policy_id", None)
    policy_name: str | None = fields.pop("cache_policy", None)
    if policy_id is not None and policy_name is not None:
        raise invalid_field(
            ("body", "cache_policy"), "give cache_policy_id or cache_policy, not both"
        )
    if policy_name is not None:
        found = await session.scalar(select(CachePolicy.id).where(CachePolicy.name == policy_name))
        if found is None:
            raise invalid_field(("body", "cache_policy"), f"no cache policy named {policy_name!r}")
        return True, found
    if policy_id is not None:
        exists = id_in_range(policy_id) and await session.get(CachePolicy, policy_id) is not None
        if not exists:
            raise invalid_field(("body", "cache_policy_id"), f"no cache policy with id {policy_id}")
    return given_id or given_name, policy_id


def _checked_upstream(url: str, *, allow_private: bool) -> str:
    try:
        return validate_upstream_url(url, allow_link_local=allow_private)
    except UpstreamUrlError as exc:
        raise invalid_field(("body", "upstream_url"), f"upstream_url {exc}") from exc


@router.get("/routes")
async def list_routes(
    admin: AdminDep,
    page: PageDep,
    is_active: Annotated[bool | None, Query()] = None,
) -> Page[RouteOut]:
    query = select(Route)
    if is_active is not None:
        query = query.where(Route.is_active.is_(is_active))
    async with admin.read() as session:
        total = int(await session.scalar(select(func.count()).select_from(query.subquery())) or 0)
        routes = list(
            await session.scalars(query.order_by(Route.id).limit(page.limit).offset(page.offset))
        )
        names = await _policy_names(session, [r.cache_policy_id for r in routes])
    return Page(
        items=[_out(r, names) for r in routes], total=total, limit=page.limit, offset=page.offset
    )


@router.post("/routes", status_code=201)
async def create_route(admin: AdminDep, body: RouteCreate, response: Response) -> RouteOut:
    fields = body.model_dump()
    fields["upstream_url"] = _checked_upstream(
        body.upstream_url, allow_private=body.allow_private_upstream
    )
    async with admin.write() as session:
        await _ensure_name_free(session, body.name)
        _, fields["cache_policy_id"] = await _resolve_policy(session, fields)
        route = Route(**fields)
        session.add(route)
        await session.flush()
        out = await _one(session, route)
        await record_audit(
            session,
            admin.actor,
            "route.create",
            "route",
            route.id,
            after=out.model_dump(mode="json"),
        )
    response.headers["Location"] = f"/admin/routes/{out.id}"
    return out


@router.get("/routes/{route_id}")
async def get_route(admin: AdminDep, route_id: int) -> RouteOut:
    async with admin.read() as session:
        return await _one(session, await get_or_404(session, Route, "route", route_id))


@router.patch("/routes/{route_id}")
async def update_route(admin: AdminDep, route_id: int, body: RouteUpdate) -> RouteOut:
    fields = body.changes()
    async with admin.write() as session:
        route = await get_or_404(session, Route, "route", route_id)
        before = await _one(session, route)
        sets_policy, policy_id = await _resolve_policy(session, fields)
        if sets_policy:
            fields["cache_policy_id"] = policy_id
        if "upstream_url" in fields or "allow_private_upstream" in fields:
            # Turning the opt-in off re-checks the stored upstream, so it cannot stay behind.
            fields["upstream_url"] = _checked_upstream(
                fields.get("upstream_url", route.upstream_url),
                allow_private=fields.get("allow_private_upstream", route.allow_private_upstream),
            )
        changes = {k: v for k, v in fields.items() if getattr(route, k) != v}
        if "name" in changes:
            await _ensure_name_free(session, changes["name"], except_id=route.id)
        if not changes:
            return before
        for field, value in changes.items():
            setattr(route, field, value)
        await session.flush()
        after = await _one(session, route)
        await record_audit(
            session,
            admin.actor,
            "route.update",
            "route",
            route.id,
            before=before.model_dump(mode="json"),
            after=after.model_dump(mode="json"),
        )
    return after


@router.delete("/routes/{route_id}", status_code=204, response_class=Response)
async def delete_route(admin: AdminDep, route_id: int) -> Response:
    async with admin.write() as session:
        route = await get_or_404(session, Route, "route", route_id)
        before = (await _one(session, route)).model_dump(mode="json")
        await session.delete(route)
        await record_audit(session, admin.actor, "route.delete", "route", route_id, before=before)
    return Response(status_code=204)
