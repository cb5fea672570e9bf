"""Fleet arithmetic for docs/scaling.md: measured per-request costs to counts of machines.

Pure functions: every input is a measurement (bench/scaling_figures.py prints them) or a stated
choice (the target utilisation); nothing here measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DAY_SECONDS = 86_400


@dataclass(frozen=True)
class Costs:
    """What one request costs, measured, by case."""

    gateway_cpu_hit: float  # seconds of gateway worker CPU per cache HIT
    gateway_cpu_miss: float  # ... per MISS (upstream excluded where it could be)
    redis_cpu_hit: float  # seconds of Redis server CPU per HIT
    redis_cpu_miss: float
    log_row_bytes: float  # bytes on disk per request-log row, indexes included
    pg_cpu_per_row: float  # seconds of PostgreSQL backend CPU per row written (COPY + roll-ups)
    # The busiest Redis master's cost per request. None: one Redis, so all of it. On a cluster, a
    # key every request reads puts its master's cost here, whatever the number of masters; 0.0:
    # no such key, the load spreads evenly over the masters (many API keys and URLs).
    redis_hot_cpu_hit: float | None = None
    redis_hot_cpu_miss: float | None = None


@dataclass(frozen=True)
class Fleet:
    rate: float  # requests/s
    hit_ratio: float
    gateway_cores: float  # cores of gateway workers busy at this rate
    gateway_workers: int  # workers needed at the target utilisation
    redis_cores: float
    redis_masters: int
    redis_hot_cores: float  # load on the busiest master: above the utilisation, not reachable
    redis_feasible: bool
    log_rows_per_s: float
    pg_cores: float  # PostgreSQL backend cores the log writes take
    log_bytes_per_day: float


def blend(hit_ratio: float, hit: float, miss: float) -> float:
    if not 0.0 <= hit_ratio <= 1.0:
        raise ValueError(f"hit_ratio must be within 0..1, not {hit_ratio}")
    return hit_ratio * hit + (1.0 - hit_ratio) * miss


def units(load_cores: float, utilisation: float) -> int:
    """Single-core units (gateway workers, Redis masters) to carry `load_cores` at `utilisation`
    of a core each; at least one."""
    if not 0.0 < utilisation <= 1.0:
        raise ValueError(f"utilisation must be within (0, 1], not {utilisation}")
    return max(1, math.ceil(round(load_cores / utilisation, 9)))


def fleet(
    rate: float,
    hit_ratio: float,
    costs: Costs,
    *,
    worker_utilisation: float = 0.7,
    redis_utilisation: float = 0.8,
) -> Fleet:
    gw = rate * blend(hit_ratio, costs.gateway_cpu_hit, costs.gateway_cpu_miss)
    rd = rate * blend(hit_ratio, costs.redis_cpu_hit, costs.redis_cpu_miss)
    hot_hit = costs.redis_cpu_hit if costs.redis_hot_cpu_hit is None else costs.redis_hot_cpu_hit
    hot_miss = (
        costs.redis_cpu_miss if costs.redis_hot_cpu_miss is None else costs.redis_hot_cpu_miss
    )
    hot = rate * blend(hit_ratio, hot_hit, hot_miss)
    masters = units(rd, redis_utilisation)
    if hot == 0.0:
        hot = rd / masters
    return Fleet(
        rate=rate,
        hit_ratio=hit_ratio,
        gateway_cores=gw,
        gateway_workers=units(gw, worker_utilisation),
        redis_cores=rd,
        redis_masters=masters,
        redis_hot_cores=hot,
        redis_feasible=hot <= redis_utilisation,
        log_rows_per_s=rate,  # one row per request, whatever its outcome
        pg_cores=rate * costs.pg_cpu_per_row,
        log_bytes_per_day=rate * DAY_SECONDS * costs.log_row_bytes,
    )


def connections(
    processes: int, redis_per_process: int, pg_per_process: int, extra_pg: int = 0
) -> tuple[int, int]:
    """(Redis, PostgreSQL) connections of `processes` gateway workers in all."""
    return processes * redis_per_process, processes * pg_per_process + extra_pg
