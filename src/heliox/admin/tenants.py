"""/admin/tenants: the organisations API keys belong to."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import and_, case, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from heliox.admin.abuse import check_abuse_override
from heliox.admin.audit import record_audit
from heliox.admin.deps import AdminDep, AdminRoute, PageDep, get_or_404
from heliox.admin.errors import Conflict
from heliox.admin.schemas import Page, TenantCreate, TenantOut, TenantUpdate
from heliox.db.models import ApiKey, Tenant

router = APIRouter(route_class=AdminRoute, tags=["tenants"])


async def _key_counts(
    session: AsyncSession, tenant_ids: Sequence[int], now: datetime
) -> dict[int, tuple[int, int]]:
    """tenant id -> (keys not revoked, keys usable now)."""
    if not tenant_ids:
        return {}
    usable = and_(
        ApiKey.is_active.is_(True), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
    )
    query = (
        select(ApiKey.tenant_id, func.count(), func.sum(case((usable, 1), else_=0)))
        .where(ApiKey.revoked_at.is_(None), ApiKey.tenant_id.in_(tenant_ids))
        .group_by(ApiKey.tenant_id)
    )
    return {tid: (int(total), int(live or 0)) for tid, total, live in await session.execute(query)}


def _out(tenant: Tenant, counts: dict[int, tuple[int, int]]) -> TenantOut:
    total, live = counts.get(tenant.id, (0, 0))
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        description=tenant.description,
        is_active=tenant.is_active,
        abuse_mode=tenant.abuse_mode,
        abuse_zscore_threshold=tenant.abuse_zscore_threshold,
        key_count=total,
        active_key_count=live,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
    )


async def _one(session: AsyncSession, tenant: Tenant) -> TenantOut:
    return _out(tenant, await _key_counts(session, [tenant.id], datetime.now(UTC)))


async def _ensure_name_free(
    session: AsyncSession, name: str, *, except_id: int | None = None
) -> None:
    query = select(Tenant.id).where(Tenant.name == name)
    if except_id is not None:
        query = query.where(Tenant.id != except_id)
    if await session.scalar(query) is not None:
        raise Conflict(f"a tenant named {name!r} already exists")


@router.get("/tenants")
async def list_tenants(
    admin: AdminDep,
    page: PageDep,
    is_active: Annotated[bool | None, Query()] = None,
) -> Page[TenantOut]:
    query = select(Tenant)
    count = select(func.count()).select_from(Tenant)
    if is_active is not None:
        query = query.where(Tenant.is_active.is_(is_active))
        count = count.where(Tenant.is_active.is_(is_active))
    async with admin.read() as session:
        total = int(await session.scalar(count) or 0)
        tenants = list(
            await session.scalars(query.order_by(Tenant.id).limit(page.limit).offset(page.offset))
        )
        counts = await _key_counts(session, [t.id for t in tenants], datetime.now(UTC))
    return Page(
        items=[_out(t, counts) for t in tenants], total=total, limit=page.limit, offset=page.offset
    )


@router.post("/tenants", status_code=201)
async def create_tenant(admin: AdminDep, body: TenantCreate, response: Response) -> TenantOut:
    check_abuse_override(body.abuse_mode, body.abuse_zscore_threshold)
    async with admin.write() as session:
        await _ensure_name_free(session, body.name)
        tenant = Tenant(
            name=body.name,
            description=body.description,
            is_active=body.is_active,
            abuse_mode=body.abuse_mode,
            abuse_zscore_threshold=body.abuse_zscore_threshold,
        )
        session.add(tenant)
        await session.flush()
        out = _out(tenant, {})
        await record_audit(
            session,
            admin.actor,
            "tenant.create",
            "tenant",
            tenant.id,
            after=out.model_dump(mode="json"),
        )
    response.headers["Location"] = f"/admin/tenants/{out.id}"
    return out


@router.get("/tenants/{tenant_id}")
async def get_tenant(admin: AdminDep, tenant_id: int) -> TenantOut:
    async with admin.read() as session:
        tenant = await get_or_404(session, Tenant, "tenant", tenant_id)
        return await _one(session, tenant)


@router.patch("/tenants/{tenant_id}")
async def update_tenant(admin: AdminDep, tenant_id: int, body: TenantUpdate) -> TenantOut:
    async with admin.write() as session:
        tenant = await get_or_404(session, Tenant, "tenant", tenant_id)
        before = await _one(session, tenant)
        changes = {k: v for k, v in body.changes().items() if getattr(tenant, k) != v}
        if "name" in changes:
            await _ensure_name_free(session, changes["name"], except_id=tenant.id)
        for field, value in changes.items():
            setattr(tenant, field, value)
        if not changes:
            return before
        check_abuse_override(tenant.abuse_mode, tenant.abuse_zscore_threshold)
        await session.flush()
        after = await _one(session, tenant)
        await record_audit(
            session,
            admin.actor,
            "tenant.update",
            "tenant",
            tenant.id,
            before=before.model_dump(mode="json"),
            after=after.model_dump(mode="json"),
        )
    return after


@router.delete("/tenants/{tenant_id}", status_code=204, response_class=Response)
async def delete_tenant(admin: AdminDep, tenant_id: int) -> Response:
    """Deletes the tenant and every key it owns (revoked ones included)."""
    async with admin.write() as session:
        tenant = await get_or_404(session, Tenant, "tenant", tenant_id)
        before = (await _one(session, tenant)).model_dump(mode="json")
        key_ids = list(
            await session.scalars(select(ApiKey.id).where(ApiKey.tenant_id == tenant.id))
        )
        before["deleted_key_ids"] = key_ids
        # Explicit rather than trusting ON DELETE CASCADE, which SQLite honours only when asked.
        await session.execute(delete(ApiKey).where(ApiKey.tenant_id == tenant.id))
        await session.delete(tenant)
        await record_audit(
            session, admin.actor, "tenant.delete", "tenant", tenant_id, before=before
        )
    return Response(status_code=204)
