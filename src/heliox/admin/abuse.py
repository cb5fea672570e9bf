"""/admin/abuse: keys soft-blocked by the abuse detector (or by hand), unblock, and events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select, update

from heliox.admin.audit import record_audit
from heliox.admin.deps import MAX_INT32, AdminDep, AdminRoute, get_or_404
from heliox.admin.errors import invalid_field
from heliox.db.models import AbuseEvent, ApiKey
from heliox.state.admission import key_subject, parse_key_subject, slowdown_subject

router = APIRouter(route_class=AdminRoute, tags=["abuse"])


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def check_abuse_override(mode: str, threshold: float | None) -> None:
    """abuse_mode 'custom' needs a threshold: checked on the row as created or patched (a PATCH
    may set abuse_mode and abuse_zscore_threshold apart, so a model validator cannot)."""
    if mode == "custom" and threshold is None:
        raise invalid_field(
            ("body", "abuse_zscore_threshold"),
            "abuse_mode 'custom' needs abuse_zscore_threshold (1 to 1000)",
        )


class BlockBody(BaseModel):
    duration_seconds: int = Field(300, ge=1, le=30 * 86400)
    reason: str = Field("blocked by an administrator", max_length=500)


@router.get("/abuse/blocked")
async def blocked_keys(admin: AdminDep, request: Request) -> dict[str, Any]:
    rt = _runtime(request)
    blocks = await rt.admission.blocked()
    snap = rt.snapshot
    items = []
    for b in blocks:
        key_id, _ = parse_key_subject(b.subject)
        if key_id is None:
            continue
        key = snap.keys_by_id.get(key_id)
        info = dict(b.info)
        items.append(
            {
                "key_id": key_id,
                "key_prefix": key.key_prefix if key else None,
                "key_name": key.name if key else None,
                "tenant_id": key.tenant_id if key else info.get("tenant_id"),
                "blocked_until": _iso(b.until),
                "reason": info.get("reason", ""),
                "score": info.get("score"),
                "observed_rate": info.get("observed_rate"),
                "baseline_rate": info.get("baseline_rate"),
                "action": info.get("action", "block"),
            }
        )
    return {"items": items, "total": len(items)}


@router.post("/abuse/unblock/{key_id}")
async def unblock_key(key_id: int, admin: AdminDep, request: Request) -> dict[str, Any]:
    rt = _runtime(request)
    async with admin.read() as session:
        await get_or_404(session, ApiKey, "API key", key_id)
    lifted = await rt.admission.unblock(key_subject(key_id))
    lifted = await rt.admission.unblock(slowdown_subject(key_id)) or lifted
    await rt.forget_abuse_state(key_id)
    now = datetime.now(UTC)
    async with rt.session_factory() as session:
        await session.execute(
            update(AbuseEvent)
            .where(AbuseEvent.key_id == key_id, AbuseEvent.unblocked_at.is_(None))
            .values(unblocked_at=now)
        )
        await record_audit(
            session, admin.actor, "abuse.unblock", "key", str(key_id),
            after={"unblocked": lifted},
        )  # fmt: skip
        await session.commit()
    rt.metrics.count("abuse_unblocks")
    return {"key_id": key_id, "unblocked": lifted}


@router.post("/abuse/block/{key_id}")
async def block_key(
    key_id: int, admin: AdminDep, request: Request, body: BlockBody | None = None
) -> dict[str, Any]:
    """Soft-block a key by hand (the same block the detector applies)."""
    rt = _runtime(request)
    body = body or BlockBody.model_validate({})
    async with admin.read() as session:
        key = await get_or_404(session, ApiKey, "API key", key_id)
        tenant_id = key.tenant_id
    now = await rt.admission.now()
    until = now + body.duration_seconds
    info = {"key_id": key_id, "tenant_id": tenant_id, "reason": body.reason, "action": "manual"}
    await rt.admission.block(key_subject(key_id), until, info)
    async with rt.session_factory() as session:
        session.add(
            AbuseEvent(
                ts=datetime.fromtimestamp(now, UTC), key_id=key_id, tenant_id=tenant_id,
                reason=body.reason, score=0.0, observed_rate=0.0, baseline_rate=0.0,
                action="manual", blocked_until=datetime.fromtimestamp(until, UTC),
            )
        )  # fmt: skip
        await record_audit(session, admin.actor, "abuse.block", "key", str(key_id), after=info)
        await session.commit()
    return {"key_id": key_id, "blocked_until": _iso(until)}


@router.get("/abuse/events")
async def abuse_events(
    admin: AdminDep,
    key_id: Annotated[int | None, Query(ge=1, le=MAX_INT32)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    query = select(AbuseEvent).order_by(AbuseEvent.id.desc()).limit(limit)
    if key_id is not None:
        query = query.where(AbuseEvent.key_id == key_id)
    async with admin.read() as session:
        rows = list((await session.scalars(query)).all())
    return {
        "items": [
            {
                "id": e.id,
                "ts": e.ts.isoformat(),
                "key_id": e.key_id,
                "tenant_id": e.tenant_id,
                "reason": e.reason,
                "score": e.score,
                "observed_rate": e.observed_rate,
                "baseline_rate": e.baseline_rate,
                "action": e.action,
                "blocked_until": e.blocked_until.isoformat() if e.blocked_until else None,
                "unblocked_at": e.unblocked_at.isoformat() if e.unblocked_at else None,
            }
            for e in rows
        ]
    }


@router.get("/keys/{key_id}/usage")
async def key_usage(key_id: int, admin: AdminDep, request: Request) -> dict[str, Any]:
    """This period's quota use of a key (for the UI's quota bars)."""
    rt = _runtime(request)
    async with admin.read() as session:
        key = await get_or_404(session, ApiKey, "API key", key_id)
        daily, monthly = key.daily_quota, key.monthly_quota
    u = await rt.admission.usage(key_subject(key_id), daily_limit=daily, monthly_limit=monthly)
    return {
        "key_id": key_id,
        "daily": {"used": u.daily_used, "limit": u.daily_limit, "remaining": u.daily_remaining,
                  "resets_at": _iso(u.daily_reset)},
        "monthly": {"used": u.monthly_used, "limit": u.monthly_limit,
                    "remaining": u.monthly_remaining, "resets_at": _iso(u.monthly_reset)},
    }  # fmt: skip
