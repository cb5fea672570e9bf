"""Request logs partitioned by day on PostgreSQL, and per-minute/hour/day roll-ups on both.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

PostgreSQL: `request_logs` becomes a table partitioned by range of `ts`, one partition per UTC
day plus a DEFAULT partition (see heliox.db.partitions). The existing table is renamed, its rows
are copied into the new one (partitions are created for every day that has rows and the days
around today), the id sequence is handed over, then the old table is dropped: no row is lost,
ids are kept. The primary key becomes (id, ts) because a partitioned table's unique keys must
include the partition key; ids still come from the same sequence.

Both backends: the roll-up tables (heliox.db.rollups) are created and filled from the rows
already there, so analytics read from them agree with the raw rows from the first request; the
keyed hours and days up to the start of the current hour, the compaction mark.

Downgrade copies the rows back into a plain table and drops the roll-ups.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

from heliox.db.partitions import (
    DEFAULT_PARTITION,
    PARTITIONS_AHEAD,
    create_partition_sql,
    days_between,
)
from heliox.db.rollups import (
    COMPACTED_MARK,
    COUNT_COLUMNS,
    GRAINS,
    HOUR,
    LAST_SEEN,
    LATENCY_SUM,
    MARKS_TABLE,
    MINUTE,
    rebuild_sql,
)

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_request_logs_ts": "ts",
    "ix_request_logs_route_ts": "route_name, ts",
    "ix_request_logs_key_ts": "key_id, ts",
    "ix_request_logs_tenant_ts": "tenant_id, ts",
}
OLD = "request_logs_unpartitioned"


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _is_postgres():
        _partition()
    compacted = int(datetime.now(UTC).timestamp()) // HOUR * HOUR
    op.create_table(
        MARKS_TABLE,
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("upto", sa.BigInteger(), nullable=False, comment="epoch seconds, a whole hour"),
        sa.PrimaryKeyConstraint("name"),
    )
    for g in GRAINS:
        keys: list[sa.Column[Any]] = [
            sa.Column("bucket", sa.BigInteger(), nullable=False, comment="start, epoch seconds"),
            sa.Column("route_name", sa.String(length=100), nullable=False),
        ]
        if g.keyed:
            keys.append(sa.Column("tenant_id", sa.Integer(), nullable=False))
            keys.append(sa.Column("key_id", sa.Integer(), nullable=False))
        op.create_table(
            g.table,
            *keys,
            *(sa.Column(name, sa.BigInteger(), nullable=True) for name in COUNT_COLUMNS),
            sa.Column(LATENCY_SUM, sa.Float(), nullable=False),
            sa.Column(LAST_SEEN, sa.Float(), nullable=False, comment="newest row, epoch seconds"),
            sa.PrimaryKeyConstraint(*(c.name for c in keys), name=f"pk_{g.table}"),
        )
        if g.keyed:
            op.create_index(f"ix_{g.table}_key", g.table, ["key_id", "bucket"])
            op.create_index(f"ix_{g.table}_tenant", g.table, ["tenant_id", "bucket"])
        # Keyed hours and days up to the compaction mark; the keyed minutes hold the rest.
        until = compacted if g.keyed and g.seconds > MINUTE else None
        op.execute(rebuild_sql(g, postgres=_is_postgres(), until=until))
    op.execute(
        sa.text(f"INSERT INTO {MARKS_TABLE} (name, upto) VALUES (:name, :upto)").bindparams(
            name=COMPACTED_MARK, upto=compacted
        )
    )


def _partition() -> None:
    bind = op.get_bind()
    op.execute(f"DROP INDEX {', '.join(INDEXES)}")
    op.execute(f"ALTER TABLE request_logs RENAME TO {OLD}")
    op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT request_logs_pkey TO {OLD}_pkey")
    sequence = bind.scalar(sa.text(f"SELECT pg_get_serial_sequence('{OLD}', 'id')"))
    op.execute(f"CREATE TABLE request_logs (LIKE {OLD} INCLUDING DEFAULTS) PARTITION BY RANGE (ts)")
    op.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF request_logs DEFAULT")
    today = datetime.now(UTC).date()
    days = set(days_between(today - timedelta(days=1), today + timedelta(days=PARTITIONS_AHEAD)))
    days |= {
        d
        for (d,) in bind.execute(
            sa.text(f"SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM {OLD}")
        )
    }
    for day in sorted(days):
        for sql in create_partition_sql(day):
            op.execute(sql)
    op.execute(f"INSERT INTO request_logs SELECT * FROM {OLD}")
    # Owned by the new column, or dropping the old table would drop the sequence with it.
    if sequence:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY request_logs.id")
    op.execute(f"DROP TABLE {OLD}")
    op.execute("ALTER TABLE request_logs ADD CONSTRAINT request_logs_pkey PRIMARY KEY (id, ts)")
    for name, columns in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON request_logs ({columns})")


def downgrade() -> None:
    for g in reversed(GRAINS):
        op.drop_table(g.table)
    op.drop_table(MARKS_TABLE)
    if not _is_postgres():
        return
    bind = op.get_bind()
    sequence = bind.scalar(sa.text("SELECT pg_get_serial_sequence('request_logs', 'id')"))
    op.execute(f"CREATE TABLE {OLD} (LIKE request_logs INCLUDING DEFAULTS)")
    op.execute(f"INSERT INTO {OLD} SELECT * FROM request_logs")
    if sequence:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {OLD}.id")
    op.execute("DROP TABLE request_logs")  # and every partition with it
    op.execute(f"ALTER TABLE {OLD} RENAME TO request_logs")
    op.execute("ALTER TABLE request_logs ADD CONSTRAINT request_logs_pkey PRIMARY KEY (id)")
    for name, columns in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON request_logs ({columns})")
