"""The soak's API keys: loaded straight into the database, named on demand, walked so each is used.

Going through the admin API would take one HTTP call and one snapshot reload per key; 10^6 keys
are instead written in one statement (PostgreSQL hashes them itself) or one executemany
(SQLite), and the config version is bumped once afterwards, which is what an admin write does.
Plaintexts are never stored: key number g (1-based) is `hx_soak_<secret>_<g>`, rebuilt when
needed, so 10^6 keys cost the load generator no memory.

Keys whose number is a multiple of 50 get 1 request/s (burst 2): some traffic is refused by the
limiter, as in production. Every key has a daily quota far above the load, so every request also
writes a daily counter (a Redis key per API key that lives to the end of the day).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

SLOW_EVERY = 50  # every 50th key is limited to 1 request/s
DAILY_QUOTA = 1_000_000_000


@dataclass(frozen=True)
class KeySet:
    secret: str
    count: int

    def plaintext(self, index: int) -> str:
        """The key at 0-based `index` (key number index + 1)."""
        return f"hx_soak_{self.secret}_{index + 1}"


def new_keyset(count: int) -> KeySet:
    return KeySet(secrets.token_hex(6), count)


async def load_postgres(dsn: str, keys: KeySet) -> None:
    """A tenant and `keys.count` keys in one INSERT ... SELECT (PostgreSQL computes the hashes)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction():
            tenant = await conn.fetchval(
                "INSERT INTO tenants (name, description, is_active, created_at, updated_at)"
                " VALUES ('soak', '', true, now(), now()) RETURNING id"
            )
            await conn.execute(
                """
                INSERT INTO api_keys (tenant_id, name, key_hash, key_prefix, rate_limit_rps,
                    rate_limit_burst, rate_limit_algorithm, rate_limit_window_seconds,
                    daily_quota, monthly_quota, is_active, created_at, updated_at)
                SELECT $1, 'soak-' || g,
                    encode(sha256(convert_to('hx_soak_' || $2 || '_' || g, 'UTF8')), 'hex'),
                    'hx_soak_' || g,
                    CASE WHEN g % $4 = 0 THEN 1 ELSE 1000 END,
                    CASE WHEN g % $4 = 0 THEN 2 ELSE 2000 END,
                    'token_bucket', 1, $5, NULL, true, now(), now()
                FROM generate_series(1, $3) AS g
                """,
                tenant,
                keys.secret,
                keys.count,
                SLOW_EVERY,
                DAILY_QUOTA,
            )
    finally:
        await conn.close()


async def bump_postgres(dsn: str) -> None:
    """What every admin write does: move the config version, so the gateway reloads."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("UPDATE config_version SET version = version + 1")
    finally:
        await conn.close()


def load_sqlite(path: str, keys: KeySet) -> None:
    """The same rows as `load_postgres`, hashed here, in one transaction."""
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")  # SQLAlchemy's format

    def rows() -> Iterator[tuple[object, ...]]:
        for g in range(1, keys.count + 1):
            slow = g % SLOW_EVERY == 0
            digest = hashlib.sha256(f"hx_soak_{keys.secret}_{g}".encode()).hexdigest()
            yield (
                tenant, f"soak-{g}", digest, f"hx_soak_{g}", 1 if slow else 1000,
                2 if slow else 2000, DAILY_QUOTA, now, now,
            )  # fmt: skip

    # The gateway may hold the write lock for a moment (request logs): wait for it, not fail.
    conn = sqlite3.connect(path, timeout=60)
    try:
        with conn:
            cur = conn.execute(
                "INSERT INTO tenants (name, description, is_active, created_at, updated_at)"
                " VALUES ('soak', '', 1, ?, ?)",
                (now, now),
            )
            tenant = cur.lastrowid
            conn.executemany(
                "INSERT INTO api_keys (tenant_id, name, key_hash, key_prefix, rate_limit_rps,"
                " rate_limit_burst, rate_limit_algorithm, rate_limit_window_seconds,"
                " daily_quota, monthly_quota, is_active, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'token_bucket', 1, ?, NULL, 1, ?, ?)",
                rows(),
            )
    finally:
        conn.close()


def bump_sqlite(path: str) -> None:
    conn = sqlite3.connect(path, timeout=60)
    try:
        with conn:
            conn.execute("UPDATE config_version SET version = version + 1")
    finally:
        conn.close()


@dataclass
class KeyWalk:
    """Hands out key indexes so that every key is used once in the first `count` draws.

    A fixed stride coprime with `count` visits 0..count-1 in a scattered order without holding
    a permutation; `touched` records which keys have had an answer from the gateway.
    """

    count: int
    _next: int = 0
    _stride: int = 1
    touched: bytearray = field(default_factory=bytearray)
    touched_count: int = 0
    first_all_touched: float | None = None  # monotonic time when the last key got its answer

    def __post_init__(self) -> None:
        stride = max(1, int(self.count * 0.6180339887))
        while math.gcd(stride, self.count) != 1:
            stride += 1
        self._stride = stride
        self.touched = bytearray(self.count)

    def draw(self) -> int:
        index = (self._next * self._stride) % self.count
        self._next += 1
        return index

    def mark(self, index: int, now: float) -> None:
        if not self.touched[index]:
            self.touched[index] = 1
            self.touched_count += 1
            if self.touched_count == self.count:
                self.first_all_touched = now

    @property
    def drawn(self) -> int:
        return self._next

    @property
    def all_touched(self) -> bool:
        return self.touched_count == self.count
