"""The audit trail: one row per admin change, written in the change's own transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from heliox.admin.deps import AUDITED, CHANGED, CLIENT_IP, MAX_INT64, AdminDep, AdminRoute
from heliox.admin.schemas import AuditOut, AuditPage
from heliox.db.models import AuditLog

MAX_AUDIT_PAGE = 1000


async def record_audit(
    session: AsyncSession,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: object,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    client_ip: str | None = None,
) -> None:
    """Add an audit row to the session's transaction; `before`/`after` must hold no secrets.

    The entity is also what an admin write records as changed: instances re-read just it.
    `client_ip` defaults to the address of the request behind the session (`Admin.write`).
    """
    session.info[AUDITED] = True
    session.info.setdefault(CHANGED, set()).add((entity_type, str(entity_id)))
    session.add(
        AuditLog(
            actor=actor,
            action=action,
            entity_type=entity_type,
            entity_id=str(entity_id),
            before=before,
            after=after,
            client_ip=client_ip if client_ip is not None else session.info.get(CLIENT_IP),
        )
    )


router = APIRouter(route_class=AdminRoute, tags=["audit"])


@router.get("/audit")
async def list_audit(
    admin: AdminDep,
    entity_type: Annotated[str | None, Query(max_length=50)] = None,
    entity_id: Annotated[str | None, Query(max_length=50)] = None,
    action: Annotated[str | None, Query(max_length=50)] = None,
    actor: Annotated[str | None, Query(max_length=100)] = None,
    since: Annotated[datetime | None, Query(description="inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="exclusive, ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 100,
    cursor: Annotated[
        int | None, Query(ge=1, le=MAX_INT64, description="next_cursor of the previous page")
    ] = None,
) -> AuditPage:
    """Newest first; follow `next_cursor` for older entries."""
    query = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit + 1)
    if entity_type is not None:
        query = query.where(AuditLog.entity_type == entity_type)
    if entity_id is not None:
        query = query.where(AuditLog.entity_id == entity_id)
    if action is not None:
        query = query.where(AuditLog.action == action)
    if actor is not None:
        query = query.where(AuditLog.actor == actor)
    if since is not None:
        query = query.where(AuditLog.ts >= since)
    if until is not None:
        query = query.where(AuditLog.ts < until)
    if cursor is not None:
        query = query.where(AuditLog.id < cursor)
    async with admin.read() as session:
        rows = list(await session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        items=[AuditOut.model_validate(row, from_attributes=True) for row in rows],
        next_cursor=rows[-1].id if more else None,
    )
