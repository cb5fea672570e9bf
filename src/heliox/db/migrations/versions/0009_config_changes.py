"""`config_changes`: what each config version changed, so instances apply deltas.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

Every admin write adds one row, keyed by the version it bumped `config_version` to, in the same
transaction: the ids of the keys, tenants, routes and cache policies it touched (`changes`, JSON),
or `full` when no delta describes it. An instance re-reads only those rows; one that finds a
version without its row (a write by an instance still running 0008 during a rolling upgrade, the
seed, or rows pruned by age) loads the whole snapshot instead, as every instance did before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "config_changes",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("full", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )


def downgrade() -> None:
    op.drop_table("config_changes")
