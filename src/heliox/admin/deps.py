"""What the admin API needs from the running gateway, and the per-request plumbing built on it.

`AdminRoute` authenticates before anything else (so an unauthenticated caller never gets its body
parsed or validated), turns whatever an endpoint raises into a problem response itself (so an
unexpected exception becomes a logged 500 problem, never a traceback, without reaching the
server's error middleware) and marks every response `no-store`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Query, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from heliox.admin.auth import authenticate, require_admin
from heliox.admin.errors import NO_STORE, NotFound, problem_for_exception, problem_response
from heliox.config import Settings
from heliox.core.headers import request_client_ip
from heliox.db.models import Base
from heliox.db.snapshot_loader import bump_config_version, record_config_change

log = logging.getLogger(__name__)

# Integer columns are 32-bit on PostgreSQL: ids above this cannot exist.
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 10**9
# Admin bodies are small JSON documents; anything near this is a mistake or an attack.
MAX_BODY_BYTES = 1024 * 1024

M = TypeVar("M", bound=Base)
# Set in a session's info by `record_audit`: the transaction holds a change to commit.
AUDITED = "heliox.admin.audited"
# Also kept there by `record_audit`: the (entity type, id) pairs the change touched, which the
# write records as its config delta.
CHANGED = "heliox.admin.changed"
# Set in a write session's info by `Admin.write`: the address the change came from, which
# `record_audit` stores with it.
CLIENT_IP = "heliox.admin.client_ip"


class AdminRuntime(Protocol):
    """The part of the gateway runtime the admin API uses (`app.state.runtime`).

    Optional: `session_actor(request) -> str | None` (sync or async). When present, a request
    without a valid `X-Admin-Key` is still admitted if it returns an actor (the UI's session).
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def session_factory(self) -> async_sessionmaker[AsyncSession]: ...

    async def config_changed(self) -> None:
        """Called after a config write has committed: reload and tell the other instances."""


def get_runtime(request: Request) -> AdminRuntime:
    runtime: AdminRuntime = request.app.state.runtime
    return runtime


@dataclass(slots=True)
class Admin:
    """One authenticated admin request: who is acting, and the database to act on."""

    runtime: AdminRuntime
    actor: str
    # Where the request came from (TRUSTED_PROXIES apply, as for the admin guard); None for the
    # CLI, which acts locally.
    client_ip: str | None = None
    # The session of the `batch()` in progress: every write() then joins its transaction.
    _batch: AsyncSession | None = field(default=None, init=False, repr=False)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def read(self) -> AsyncSession:
        """A session for reads (use as `async with admin.read() as session`)."""
        return self.runtime.session_factory()

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[AsyncSession]:
        """Many config changes as one: every `write()` inside the block joins one transaction,
        committed at the end with one version bump and one notification, as a single `write()`
        is; anything raised rolls all of it back (`heliox config apply`). Reads through `read()`
        do not see the batch's uncommitted changes: use the session this yields."""
        async with self.write() as session:
            self._batch = session
            try:
                yield session
            finally:
                self._batch = None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction for a config change: bumps the version, commits, then notifies.

        The block makes its change and records the audit row (`record_audit`). A block that
        records none changed nothing: it is rolled back, unannounced. Anything raised rolls the
        whole transaction back too. Inside a `batch()` the block joins the batch's transaction.
        """
        if self._batch is not None:
            yield self._batch
            return
        async with self.runtime.session_factory() as session:
            session.info[CLIENT_IP] = self.client_ip
            yield session
            if not session.info.get(AUDITED):
                await session.rollback()
                return
            version = await bump_config_version(session)
            await record_config_change(session, version, session.info.get(CHANGED, ()))
            await session.commit()
        try:
            await self.runtime.config_changed()
        except Exception:
            # The change is committed; other instances (and this one) still pick it up by
            # polling the version, so the write is reported as done.
            log.exception("config change committed but the reload/publish failed")


async def admin_context(request: Request, actor: Annotated[str, Depends(require_admin)]) -> Admin:
    runtime = get_runtime(request)
    peer = request.scope.get("client")
    client_ip = request_client_ip(
        peer[0] if peer else None,
        request.scope.get("headers", []),
        runtime.settings.trusted_proxy_networks,
    )
    return Admin(runtime=runtime, actor=actor, client_ip=client_ip)


AdminDep = Annotated[Admin, Depends(admin_context)]


def id_in_range(value: int, *, maximum: int = MAX_INT32) -> bool:
    """False for ids no row can have (they would overflow the column on PostgreSQL)."""
    return 1 <= value <= maximum


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


PageDep = Annotated[PageParams, Depends(page_params)]


async def get_or_404(session: AsyncSession, model: type[M], entity: str, entity_id: int) -> M:
    """The row with this id, or a 404 problem (also for ids no row could have)."""
    row = await session.get(model, entity_id) if id_in_range(entity_id) else None
    if row is None:
        raise NotFound(entity, entity_id)
    return row


class AdminRoute(APIRoute):
    """Route class of every admin endpoint: authenticate, then answer errors as problems."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def admin_handler(request: Request) -> Response:
            try:
                await authenticate(request)
                response = _body_too_large(request) or await handler(request)
            except Exception as exc:
                response = problem_for_exception(exc)
            response.headers["Cache-Control"] = NO_STORE
            return response

        return admin_handler


def _body_too_large(request: Request) -> Response | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return problem_response(413, f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    return None
