"""Daily partitions of `request_logs` on PostgreSQL (declarative range partitioning on `ts`).

One partition per UTC day, named `request_logs_pYYYYMMDD`, plus `request_logs_default` as a
safety net: a row whose day has no partition yet lands there instead of failing its whole
batch. Partitions are created ahead (PARTITIONS_AHEAD days) at every start-up after the
migrations and by the retention job, so the default normally stays empty. Creating a day's
partition moves any rows of that day out of the default first (PostgreSQL refuses to attach a
range the default holds rows for).

Retention drops whole partitions: a partition goes once its last instant is older than the
cutoff, so rows are kept up to one day longer than the retention asks. Nothing is deleted row
by row except stray rows in the default partition.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger("heliox.db")

PARENT = "request_logs"
DEFAULT_PARTITION = "request_logs_default"
PARTITIONS_AHEAD = 7
_PREFIX = "request_logs_p"


def partition_name(day: date) -> str:
    return f"{_PREFIX}{day:%Y%m%d}"


def day_of(name: str) -> date | None:
    if not name.startswith(_PREFIX):
        return None
    try:
        return datetime.strptime(name[len(_PREFIX) :], "%Y%m%d").date()
    except ValueError:
        return None


def _bound(day: date) -> str:
    return f"{day:%Y-%m-%d} 00:00:00+00"


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def create_partition_sql(day: date) -> list[str]:
    """Statements creating `day`'s partition, moving that day's rows out of the default."""
    name, lo, hi = partition_name(day), _bound(day), _bound(day + timedelta(days=1))
    return [
        f'CREATE TABLE IF NOT EXISTS "{name}" (LIKE {PARENT} INCLUDING DEFAULTS)',
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE ts >= '{lo}' AND ts < '{hi}' "
        f'RETURNING *) INSERT INTO "{name}" SELECT * FROM moved',
        f"ALTER TABLE {PARENT} ATTACH PARTITION \"{name}\" FOR VALUES FROM ('{lo}') TO ('{hi}')",
    ]


async def existing_partitions(conn: AsyncConnection) -> set[str]:
    rows = await conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :parent"
        ),
        {"parent": PARENT},
    )
    return {name for (name,) in rows}


async def is_partitioned(conn: AsyncConnection) -> bool:
    kind = await conn.scalar(
        text("SELECT relkind::text FROM pg_class WHERE relname = :t AND relkind IN ('p', 'r')"),
        {"t": PARENT},
    )
    return bool(kind == "p")


async def ensure_partitions(
    conn: AsyncConnection, now: datetime, *, ahead: int = PARTITIONS_AHEAD, behind: int = 1
) -> list[str]:
    """Create the partitions from `behind` days before `now` to `ahead` days after it that do
    not exist yet, and those of any day with rows in the default partition; returns their names.

    Each partition is created in its own transaction on `conn` (which must not be inside one),
    under a lock on the parent table so two processes never race for the same day.
    """
    if not await is_partitioned(conn):
        return []
    today = now.astimezone(UTC).date()
    wanted = set(days_between(today - timedelta(days=behind), today + timedelta(days=ahead)))
    stray = await conn.execute(
        text(f"SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM {DEFAULT_PARTITION}")
    )
    wanted |= {d for (d,) in stray}
    await conn.commit()
    have = {d for d in map(day_of, await existing_partitions(conn)) if d is not None}
    await conn.commit()
    created = []
    for day in sorted(wanted - have):
        async with conn.begin():
            # SHARE UPDATE EXCLUSIVE would do for ATTACH alone, but the move out of the default
            # must not race a writer putting more of that day's rows there.
            await conn.execute(text(f"LOCK TABLE {PARENT} IN SHARE ROW EXCLUSIVE MODE"))
            if partition_name(day) in await existing_partitions(conn):
                continue
            for sql in create_partition_sql(day):
                await conn.execute(text(sql))
        created.append(partition_name(day))
    if created:
        log.info("created request log partitions %s", ", ".join(created))
    return created


async def drop_partitions_before(conn: AsyncConnection, cutoff: datetime) -> list[str]:
    """Drop every daily partition whose whole day is before `cutoff`; returns their names."""
    if not await is_partitioned(conn):
        return []
    limit = cutoff.astimezone(UTC)
    victims = sorted(
        name
        for name in await existing_partitions(conn)
        if (day := day_of(name)) is not None
        and datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1) <= limit
    )
    await conn.commit()
    for name in victims:
        async with conn.begin():
            # DETACH then DROP: the parent is locked only for the catalogue change.
            await conn.execute(text(f'ALTER TABLE {PARENT} DETACH PARTITION "{name}"'))
            await conn.execute(text(f'DROP TABLE "{name}"'))
    if victims:
        log.info("dropped request log partitions %s", ", ".join(victims))
    return victims
