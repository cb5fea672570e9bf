"""Cache policies: `cache_with_cookies`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02

Off for every existing policy: a request carrying Cookie bypasses the cache unless its policy
keys on Cookie or opts in. The server default also covers rows an instance still running 0001
inserts during a rolling upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cache_policies") as batch:
        batch.add_column(
            sa.Column("cache_with_cookies", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("cache_policies") as batch:
        batch.drop_column("cache_with_cookies")
