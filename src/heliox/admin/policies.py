"""/admin/policies: cache policies (TTL, stale windows, what may be stored) that routes refer to."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Response
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from heliox.admin.audit import record_audit
from heliox.admin.deps import AdminDep, AdminRoute, PageDep, get_or_404
from heliox.admin.errors import Conflict
from heliox.admin.schemas import Page, PolicyCreate, PolicyOut, PolicyUpdate, from_row
from heliox.db.models import CachePolicy, Route

router = APIRouter(route_class=AdminRoute, tags=["policies"])


async def _route_counts(session: AsyncSession, policy_ids: Sequence[int]) -> dict[int, int]:
    if not policy_ids:
        return {}
    rows = await session.execute(
        select(Route.cache_policy_id, func.count())
        .where(Route.cache_policy_id.in_(policy_ids))
        .group_by(Route.cache_policy_id)
    )
    return {pid: int(n) for pid, n in rows if pid is not None}


def _out(policy: CachePolicy, route_counts: dict[int, int]) -> PolicyOut:
    # Every other field is the column of the same name; only the route count is computed.
    return from_row(PolicyOut, policy, route_count=route_counts.get(policy.id, 0))


async def _one(session: AsyncSession, policy: CachePolicy) -> PolicyOut:
    return _out(policy, await _route_counts(session, [policy.id]))


async def _ensure_name_free(
    session: AsyncSession, name: str, *, except_id: int | None = None
) -> None:
    query = select(CachePolicy.id).where(CachePolicy.name == name)
    if except_id is not None:
        query = query.where(CachePolicy.id != except_id)
    if await session.scalar(query) is not None:
        raise Conflict(f"a cache policy named {name!r} already exists")


@router.get("/policies")
async def list_policies(admin: AdminDep, page: PageDep) -> Page[PolicyOut]:
    async with admin.read() as session:
        total = int(await session.scalar(select(func.count()).select_from(CachePolicy)) or 0)
        policies = list(
            await session.scalars(
                select(CachePolicy).order_by(CachePolicy.id).limit(page.limit).offset(page.offset)
            )
        )
        counts = await _route_counts(session, [p.id for p in policies])
    return Page(
        items=[_out(p, counts) for p in policies], total=total, limit=page.limit, offset=page.offset
    )


@router.post("/policies", status_code=201)
async def create_policy(admin: AdminDep, body: PolicyCreate, response: Response) -> PolicyOut:
    async with admin.write() as session:
        await _ensure_name_free(session, body.name)
        policy = CachePolicy(**body.model_dump())
        session.add(policy)
        await session.flush()
        out = _out(policy, {})
        await record_audit(
            session,
            admin.actor,
            "policy.create",
            "policy",
            policy.id,
            after=out.model_dump(mode="json"),
        )
    response.headers["Location"] = f"/admin/policies/{out.id}"
    return out


@router.get("/policies/{policy_id}")
async def get_policy(admin: AdminDep, policy_id: int) -> PolicyOut:
    async with admin.read() as session:
        return await _one(
            session, await get_or_404(session, CachePolicy, "cache policy", policy_id)
        )


@router.patch("/policies/{policy_id}")
async def update_policy(admin: AdminDep, policy_id: int, body: PolicyUpdate) -> PolicyOut:
    async with admin.write() as session:
        policy = await get_or_404(session, CachePolicy, "cache policy", policy_id)
        before = await _one(session, policy)
        changes = {k: v for k, v in body.changes().items() if getattr(policy, k) != v}
        if "name" in changes:
            await _ensure_name_free(session, changes["name"], except_id=policy.id)
        if not changes:
            return before
        for field, value in changes.items():
            setattr(policy, field, value)
        await session.flush()
        after = await _one(session, policy)
        await record_audit(
            session,
            admin.actor,
            "policy.update",
            "policy",
            policy.id,
            before=before.model_dump(mode="json"),
            after=after.model_dump(mode="json"),
        )
    return after


@router.delete("/policies/{policy_id}", status_code=204, response_class=Response)
async def delete_policy(admin: AdminDep, policy_id: int) -> Response:
    """Deletes the policy; routes that used it are left without one (no caching)."""
    async with admin.write() as session:
        policy = await get_or_404(session, CachePolicy, "cache policy", policy_id)
        before = (await _one(session, policy)).model_dump(mode="json")
        route_ids = list(
            await session.scalars(select(Route.id).where(Route.cache_policy_id == policy.id))
        )
        before["detached_route_ids"] = route_ids
        # Explicit rather than trusting ON DELETE SET NULL, which SQLite honours only when asked.
        await session.execute(
            update(Route).where(Route.cache_policy_id == policy.id).values(cache_policy_id=None)
        )
        await session.delete(policy)
        await record_audit(
            session, admin.actor, "policy.delete", "policy", policy_id, before=before
        )
    return Response(status_code=204)
