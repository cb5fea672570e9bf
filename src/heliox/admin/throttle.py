"""Guessing the admin key: failed attempts per client address, lock-outs, logs and audit rows.

Both ways in are covered, the `X-Admin-Key` header and the UI's sign-in form, with one record per
client address (the data plane's rule: X-Forwarded-For counts only from TRUSTED_PROXIES, so a
spoofed header cannot dodge it). After ADMIN_AUTH_MAX_FAILURES failures in a row the address is
locked out for ADMIN_AUTH_LOCKOUT_SECONDS, doubling with each further failure up to
ADMIN_AUTH_MAX_LOCKOUT_SECONDS; during a lock-out every attempt from the address gets a 429 with
Retry-After, the right key included, since answering it would tell the guesser when it hit.
Requests that present no key (the UI's own calls, signed in through its session) are neither
counted nor locked out: a session proves the key was already known.

Every failure is logged (WARNING, logger heliox.auth) and written to the audit log (action
`auth.failure`, entity `admin_auth` / the client address). The lock-outs bound the failures one
address can make; the audit rows of one process are also capped at AUDIT_ROWS_PER_SECOND, the rest
counted (`admin_auth_failures_unaudited`), so many addresses at once cannot fill the table either.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from heliox.admin.audit import record_audit
from heliox.admin.errors import AdminError
from heliox.config import Settings
from heliox.core.auth_throttle import ThrottlePolicy
from heliox.core.headers import request_client_ip
from heliox.core.ratelimit import TokenBucketState, to_us, token_bucket
from heliox.metrics import Metrics
from heliox.state.auth_throttle import AuthThrottle

log = logging.getLogger("heliox.auth")

AUDIT_ROWS_PER_SECOND = 10.0
AUDIT_ROWS_BURST = 100
ACTOR = "unauthenticated"
ENTITY = "admin_auth"
ACTION = "auth.failure"
UI_LOGIN = "ui-login"  # the audit rows' channel; X-Admin-Key failures are "x-admin-key"


class TooManyFailures(AdminError):
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed admin authentications from this address; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Attempt:
    """One authentication attempt from `address`, admitted to have its credential checked."""

    address: str
    streak: bool


def whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class AdminAuthGuard:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        session_factory: Any,
        *,
        redis: Any = None,
        clock: Any = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.session_factory = session_factory
        self.clock = clock
        policy = ThrottlePolicy(
            max_failures=settings.admin_auth_max_failures,
            base_lockout=settings.admin_auth_lockout_seconds,
            max_lockout=max(
                settings.admin_auth_max_lockout_seconds, settings.admin_auth_lockout_seconds
            ),
        )
        self.throttle = AuthThrottle(
            policy,
            redis=redis,
            prefix=settings.redis_key_prefix,
            clock=clock,
            on_redis_error=lambda: metrics.count("admin_auth_throttle_unavailable"),
        )
        self._audit_bucket: TokenBucketState | None = None

    def address(self, conn: HTTPConnection) -> str:
        peer = conn.scope.get("client")
        return request_client_ip(
            peer[0] if peer else None,
            conn.scope.get("headers", []),
            self.settings.trusted_proxy_networks,
        )

    async def attempt(self, conn: HTTPConnection) -> Attempt:
        """Before a credential is checked: raises TooManyFailures while the address is locked."""
        address = self.address(conn)
        standing = await self.throttle.standing(address)
        if standing.locked_for > 0:
            self.metrics.count("admin_auth_refused_locked")
            raise TooManyFailures(whole_seconds(standing.locked_for))
        return Attempt(address, standing.streak)

    async def succeeded(self, attempt: Attempt) -> None:
        if attempt.streak:
            await self.throttle.succeeded(attempt.address)

    async def failed(self, attempt: Attempt, channel: str) -> float:
        """Count, log and audit a failure; returns the lock-out it started (seconds, 0: none)."""
        failures, lockout = await self.throttle.failed(attempt.address)
        self.metrics.count("admin_auth_failures")
        if lockout:
            self.metrics.count("admin_auth_lockouts")
        log.warning(
            "admin authentication failed from %s via %s: %d in a row%s",
            attempt.address,
            channel,
            failures,
            f", locked out for {whole_seconds(lockout)} s" if lockout else "",
        )
        await self._audit(attempt.address, channel, failures, lockout)
        return lockout

    async def _audit(self, address: str, channel: str, failures: int, lockout: float) -> None:
        now_us = to_us(self.clock())
        outcome = token_bucket(self._audit_bucket, AUDIT_ROWS_PER_SECOND, AUDIT_ROWS_BURST, now_us)
        if not outcome.decision.allowed:
            self.metrics.count("admin_auth_failures_unaudited")
            return
        self._audit_bucket = outcome.state
        after = {
            "client_ip": address,
            "channel": channel,
            "failures_in_a_row": failures,
            "locked_out_seconds": whole_seconds(lockout) if lockout else 0,
        }
        try:
            async with self.session_factory() as session:
                await record_audit(
                    session, ACTOR, ACTION, ENTITY, address, after=after, client_ip=address
                )
                await session.commit()
        except Exception as exc:
            # The database is down: the log line above still records the failure.
            self.metrics.count("admin_auth_failures_unaudited")
            log.warning("could not audit an admin authentication failure: %s", exc)
