"""Abuse detection after the response: feed the per-key detector, act on its verdicts.

The detector (`heliox.core.anomaly`) is pure and lives in this process; a verdict becomes a soft
block in the admission backend (so every instance enforces it) and an `abuse_events` row (so
operators see why). Nothing here runs before the client has its answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from heliox.core.anomaly import AbuseDetector, Verdict
from heliox.core.anomaly import reason as explain
from heliox.db.abuse_events import record_abuse_event
from heliox.snapshot import KeyConfig
from heliox.state.admission import key_subject, slowdown_subject

if TYPE_CHECKING:
    from heliox.runtime import Runtime

log = logging.getLogger("heliox.abuse")


class AbuseMonitor:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.detector: AbuseDetector = runtime.detector
        self._tasks: set[asyncio.Task[None]] = set()
        # Told at once when this instance slows a key down (others learn it from the backend).
        self.on_slowdown: Callable[[int, float, float], None] = lambda key_id, until, m: None
        self._default_rps = runtime.settings.default_rate_limit_rps

    def observe(self, key: KeyConfig, now: float) -> None:
        if key.abuse_exempt:
            return
        verdict = self.detector.record(
            key_subject(key.id),
            now,
            limit_rps=key.rate_limit_rps or self._default_rps,
            threshold=key.abuse_threshold,
        )
        if verdict is not None:  # record() returns only anomalous verdicts, once per window
            task = asyncio.create_task(self._act(key, verdict, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _act(self, key: KeyConfig, v: Verdict, now: float) -> None:
        rt = self.rt
        s = rt.settings
        action = s.abuse_action
        window = v.window_seconds
        observed_rate = v.observed / window
        baseline_rate = v.baseline_mean / window
        cfg = self.detector.config
        reason = explain(v, cfg.min_ratio, cfg.limit_fraction)
        until: float | None = None
        if action != "shadow":
            until = now + s.abuse_block_duration_seconds
            info = {
                "key_id": key.id,
                "tenant_id": key.tenant_id,
                "reason": reason,
                "score": v.score,
                "observed_rate": round(observed_rate, 3),
                "baseline_rate": round(baseline_rate, 3),
                "action": action,
            }
            subject = key_subject(key.id)
            if action == "multiplier":
                info["multiplier"] = s.abuse_rate_multiplier
                subject = slowdown_subject(key.id)
                self.on_slowdown(key.id, until, s.abuse_rate_multiplier)
            try:
                await rt.admission.block(subject, until, info)
                rt.metrics.count("abuse_blocks" if action == "block" else "abuse_slowdowns")
            except Exception as exc:
                log.warning("could not store the abuse block of key %s: %s", key.id, exc)
        else:
            rt.metrics.count("abuse_shadow_flags")
        log.warning("abuse: key %s (%s) %s; action %s", key.id, key.key_prefix, reason, action)
        try:
            await record_abuse_event(
                rt.session_factory,
                at=now,
                key_id=key.id,
                tenant_id=key.tenant_id,
                reason=reason,
                score=float(v.score),
                observed_rate=observed_rate,
                baseline_rate=baseline_rate,
                action=action,
                blocked_until=until,
            )
        except Exception as exc:
            log.warning("could not record the abuse event of key %s: %s", key.id, exc)
