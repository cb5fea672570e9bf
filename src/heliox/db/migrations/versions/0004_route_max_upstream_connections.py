"""Routes: `max_upstream_connections`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-01-04

Nullable: NULL (every existing route) means the process-wide default, UPSTREAM_POOL_SIZE, so an
instance still running 0003 during a rolling upgrade inserts rows that mean the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("max_upstream_connections", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.drop_column("max_upstream_connections")
