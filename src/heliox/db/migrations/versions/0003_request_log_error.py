"""Request logs: why the upstream failed, and request ids of up to 128 characters.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-03

`error` holds the upstream's address and the cause of a failed call, which the client's 502/504
no longer shows. `request_id` widens from 40 to 128 characters: it now holds the client's own
X-Request-Id when that is a plain token. On PostgreSQL both are catalogue changes (no rewrite
of the table); on SQLite, batch mode rebuilds the table once so that the declared type matches.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs") as batch:
        batch.add_column(sa.Column("error", sa.String(length=500), nullable=True))
        batch.alter_column(
            "request_id",
            existing_type=sa.String(length=40),
            type_=sa.String(length=128),
            existing_nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("request_logs") as batch:
        batch.drop_column("error")
        batch.alter_column(
            "request_id",
            existing_type=sa.String(length=128),
            type_=sa.String(length=40),
            existing_nullable=False,
            postgresql_using="left(request_id, 40)",
        )
