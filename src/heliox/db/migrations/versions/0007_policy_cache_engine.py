"""Cache policies: `keep_seconds`, `lock_timeout_seconds`, `lock_age_seconds`, `max_variants`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

`keep_seconds` is how long an entry with a validator is kept after its stale windows, for a
conditional revalidation; the lock pair bounds how long a request waits for another's fill of the
same entry and how long a fill may hold it; `max_variants` caps the Vary variants stored per URL.
The server defaults of `keep_seconds` and `max_variants` (600 s, 8) give every existing policy, and
rows an instance still running 0006 inserts during a rolling upgrade, the values a new policy gets.
The lock pair has no server default: null, what those rows and new policies get, means the
gateway's CACHE_LOCK_TIMEOUT / CACHE_LOCK_AGE, so deployments that set those keep their values;
a number overrides them for the routes of that policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cache_policies") as batch:
        batch.add_column(
            sa.Column("keep_seconds", sa.Integer(), nullable=False, server_default=sa.text("600"))
        )
        batch.add_column(sa.Column("lock_timeout_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("lock_age_seconds", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("max_variants", sa.Integer(), nullable=False, server_default=sa.text("8"))
        )


def downgrade() -> None:
    with op.batch_alter_table("cache_policies") as batch:
        batch.drop_column("max_variants")
        batch.drop_column("lock_age_seconds")
        batch.drop_column("lock_timeout_seconds")
        batch.drop_column("keep_seconds")
