"""Request detail: cache key, upstream status and the refusing limit per log row; the address
of every admin change.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

`request_logs` gains `cache_key`, `upstream_status`, `refused_by` and `refusal` (JSON), all
nullable with no default: on PostgreSQL each is a catalogue change on the partitioned parent
that every partition takes at once (no rewrite); on SQLite a plain ADD COLUMN. Rows written
before have them null. `ix_request_logs_request_id` serves the detail view's lookup by request
id; on PostgreSQL it is a partitioned index (one per daily partition, and partitions created
later get theirs when attached). Building it holds off writes to `request_logs` while it runs:
the log writer spills meanwhile and replays afterwards, so no row is lost.

`audit_log` gains `client_ip` (nullable): where the change came from.

Downgrade drops them (on SQLite by rebuilding the tables, batch mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOG_COLUMNS = ("cache_key", "upstream_status", "refused_by", "refusal")
INDEX = "ix_request_logs_request_id"


def upgrade() -> None:
    op.add_column("request_logs", sa.Column("cache_key", sa.Text(), nullable=True))
    op.add_column("request_logs", sa.Column("upstream_status", sa.Integer(), nullable=True))
    op.add_column("request_logs", sa.Column("refused_by", sa.String(length=16), nullable=True))
    op.add_column("request_logs", sa.Column("refusal", sa.JSON(), nullable=True))
    op.create_index(INDEX, "request_logs", ["request_id"])
    op.add_column("audit_log", sa.Column("client_ip", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("client_ip")
    op.drop_index(INDEX, table_name="request_logs")
    with op.batch_alter_table("request_logs") as batch:
        for name in reversed(LOG_COLUMNS):
            batch.drop_column(name)
