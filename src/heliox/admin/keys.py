"""/admin/keys: API keys. The plaintext is returned once, at creation or rotation, never again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from heliox.admin.abuse import check_abuse_override
from heliox.admin.audit import record_audit
from heliox.admin.deps import (
    MAX_INT32,
    Admin,
    AdminDep,
    AdminRoute,
    PageDep,
    get_or_404,
    id_in_range,
)
from heliox.admin.errors import Conflict, invalid_field
from heliox.admin.keygen import generate_api_key
from heliox.admin.schemas import (
    KeyCreate,
    KeyCreated,
    KeyOut,
    KeyRotate,
    KeyRotated,
    KeyStatus,
    KeyUpdate,
    Page,
)
from heliox.db.models import ApiKey, Tenant

router = APIRouter(route_class=AdminRoute, tags=["keys"])

# Copied from the old key to its replacement on rotation.
_INHERITED = (
    "tenant_id",
    "name",
    "rate_limit_rps",
    "rate_limit_burst",
    "rate_limit_algorithm",
    "rate_limit_window_seconds",
    "daily_quota",
    "monthly_quota",
    "is_active",
    "abuse_mode",
    "abuse_zscore_threshold",
)


def key_status(key: ApiKey, now: datetime) -> KeyStatus:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    if not key.is_active:
        return "disabled"
    if key.expires_at is not None:
        return "expiring"
    return "active"


def _out(key: ApiKey, now: datetime) -> KeyOut:
    return KeyOut(
        id=key.id,
        tenant_id=key.tenant_id,
        name=key.name,
        key_prefix=key.key_prefix,
        status=key_status(key, now),
        is_active=key.is_active,
        rate_limit_rps=key.rate_limit_rps,
        rate_limit_burst=key.rate_limit_burst,
        rate_limit_algorithm=key.rate_limit_algorithm,
        rate_limit_window_seconds=key.rate_limit_window_seconds,
        daily_quota=key.daily_quota,
        monthly_quota=key.monthly_quota,
        abuse_mode=key.abuse_mode,
        abuse_zscore_threshold=key.abuse_zscore_threshold,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        rotated_from_id=key.rotated_from_id,
        created_at=key.created_at,
        updated_at=key.updated_at,
    )


def _audit_view(key: ApiKey, now: datetime) -> dict[str, Any]:
    # KeyOut carries no hash and no plaintext, so it is safe for the audit log as it is.
    return _out(key, now).model_dump(mode="json")


async def _tenant_exists(session: AsyncSession, tenant_id: int) -> bool:
    if not id_in_range(tenant_id):
        return False
    return await session.scalar(select(Tenant.id).where(Tenant.id == tenant_id)) is not None


@router.get("/keys")
async def list_keys(
    admin: AdminDep,
    page: PageDep,
    tenant_id: Annotated[int | None, Query(ge=1, le=MAX_INT32)] = None,
    include_revoked: bool = False,
) -> Page[KeyOut]:
    query = select(ApiKey)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    now = datetime.now(UTC)
    async with admin.read() as session:
        total = int(await session.scalar(select(func.count()).select_from(query.subquery())) or 0)
        keys = await session.scalars(
            query.order_by(ApiKey.id).limit(page.limit).offset(page.offset)
        )
        items = [_out(k, now) for k in keys]
    return Page(items=items, total=total, limit=page.limit, offset=page.offset)


@router.post("/keys", status_code=201)
async def create_key(admin: AdminDep, body: KeyCreate, response: Response) -> KeyCreated:
    check_abuse_override(body.abuse_mode, body.abuse_zscore_threshold)
    now = datetime.now(UTC)
    generated = generate_api_key()
    async with admin.write() as session:
        if not await _tenant_exists(session, body.tenant_id):
            raise invalid_field(("body", "tenant_id"), f"no tenant with id {body.tenant_id}")
        key = ApiKey(
            **body.model_dump(),
            key_hash=generated.key_hash,
            key_prefix=generated.key_prefix,
            created_at=now,
            updated_at=now,
        )
        session.add(key)
        await session.flush()
        out = _out(key, now)
        await record_audit(
            session, admin.actor, "key.create", "key", key.id, after=out.model_dump(mode="json")
        )
    response.headers["Location"] = f"/admin/keys/{out.id}"
    return KeyCreated(**out.model_dump(), key=generated.plaintext)


async def import_key(
    admin: Admin,
    body: KeyCreate,
    *,
    key_hash: str,
    key_prefix: str,
    is_active: bool = True,
    expires_at: datetime | None = None,
) -> KeyOut:
    """A key made from its SHA-256 digest: its plaintext exists only with its holder, who keeps
    using it (`heliox config apply` moving keys between instances). Not an HTTP endpoint; the
    same checks and audit row as `create_key`, which marks the row `from_digest`."""
    check_abuse_override(body.abuse_mode, body.abuse_zscore_threshold)
    now = datetime.now(UTC)
    async with admin.write() as session:
        if not await _tenant_exists(session, body.tenant_id):
            raise invalid_field(("body", "tenant_id"), f"no tenant with id {body.tenant_id}")
        if await session.scalar(select(ApiKey.id).where(ApiKey.key_hash == key_hash)) is not None:
            raise Conflict(f"a key with this digest already exists (prefix {key_prefix})")
        key = ApiKey(
            **body.model_dump(),
            key_hash=key_hash,
            key_prefix=key_prefix,
            is_active=is_active,
            expires_at=expires_at,
            created_at=now,
            updated_at=now,
        )
        session.add(key)
        await session.flush()
        out = _out(key, now)
        await record_audit(
            session,
            admin.actor,
            "key.create",
            "key",
            key.id,
            after=out.model_dump(mode="json") | {"from_digest": True},
        )
    return out


@router.get("/keys/{key_id}")
async def get_key(admin: AdminDep, key_id: int) -> KeyOut:
    async with admin.read() as session:
        key = await get_or_404(session, ApiKey, "key", key_id)
        return _out(key, datetime.now(UTC))


@router.patch("/keys/{key_id}")
async def update_key(admin: AdminDep, key_id: int, body: KeyUpdate) -> KeyOut:
    now = datetime.now(UTC)
    async with admin.write() as session:
        key = await get_or_404(session, ApiKey, "key", key_id)
        before = _audit_view(key, now)
        changes = {k: v for k, v in body.changes().items() if getattr(key, k) != v}
        if key.revoked_at is not None and changes.get("is_active") is True:
            raise Conflict("a revoked key cannot be reactivated; create a new key")
        if not changes:
            return _out(key, now)
        for field, value in changes.items():
            setattr(key, field, value)
        check_abuse_override(key.abuse_mode, key.abuse_zscore_threshold)
        await session.flush()
        out = _out(key, now)
        await record_audit(
            session,
            admin.actor,
            "key.update",
            "key",
            key.id,
            before=before,
            after=out.model_dump(mode="json"),
        )
    return out


@router.delete("/keys/{key_id}", status_code=204, response_class=Response)
async def revoke_key(admin: AdminDep, key_id: int) -> Response:
    """Revokes the key at once (on every instance within the config propagation bound).

    The row stays for the audit trail and the logs that refer to it; revoking twice is a no-op.
    """
    now = datetime.now(UTC)
    async with admin.write() as session:
        key = await get_or_404(session, ApiKey, "key", key_id)
        if key.revoked_at is None:
            before = _audit_view(key, now)
            key.revoked_at = now
            key.is_active = False
            await session.flush()
            await record_audit(
                session,
                admin.actor,
                "key.revoke",
                "key",
                key.id,
                before=before,
                after=_audit_view(key, now),
            )
    return Response(status_code=204)


@router.post("/keys/{key_id}/rotate", status_code=201)
async def rotate_key(
    admin: AdminDep, key_id: int, response: Response, body: KeyRotate | None = None
) -> KeyRotated:
    """A new key with the same tenant and limits; the old one works for the grace period."""
    grace = body.grace_seconds if body is not None else None
    if grace is None:
        grace = admin.settings.key_rotation_grace_seconds
    now = datetime.now(UTC)
    expires_at = now + timedelta(seconds=grace)
    generated = generate_api_key()
    async with admin.write() as session:
        old = await get_or_404(session, ApiKey, "key", key_id)
        if old.revoked_at is not None:
            raise Conflict("the key is revoked; create a new key instead")
        if old.expires_at is not None and old.expires_at <= now:
            raise Conflict("the key has expired; create a new key instead")
        old_before = _audit_view(old, now)
        # A second rotation never extends the life the first one gave the old key.
        if old.expires_at is None or expires_at < old.expires_at:
            old.expires_at = expires_at
        new = ApiKey(
            **{field: getattr(old, field) for field in _INHERITED},
            key_hash=generated.key_hash,
            key_prefix=generated.key_prefix,
            rotated_from_id=old.id,
            created_at=now,
            updated_at=now,
        )
        session.add(new)
        await session.flush()
        old_out, new_out = _out(old, now), _out(new, now)
        await record_audit(
            session,
            admin.actor,
            "key.rotate",
            "key",
            old.id,
            before=old_before,
            after=old_out.model_dump(mode="json") | {"replaced_by_id": new.id},
        )
        await record_audit(
            session, admin.actor, "key.create", "key", new.id, after=new_out.model_dump(mode="json")
        )
    response.headers["Location"] = f"/admin/keys/{new_out.id}"
    return KeyRotated(**new_out.model_dump(), key=generated.plaintext, previous_key=old_out)
