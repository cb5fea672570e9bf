"""Routes: `request_body_timeout_seconds` and `request_body_min_rate`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-01-05

Nullable: NULL (every existing route) means the settings' REQUEST_BODY_TIMEOUT and
REQUEST_BODY_MIN_RATE, so rows an instance still running 0004 inserts during a rolling upgrade
mean the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("request_body_timeout_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("request_body_min_rate", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.drop_column("request_body_min_rate")
        batch.drop_column("request_body_timeout_seconds")
