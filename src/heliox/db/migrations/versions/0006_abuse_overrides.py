"""Keys and tenants: `abuse_mode` and `abuse_zscore_threshold` (abuse detection overrides).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

`abuse_mode` is "default" (a key follows its tenant, a tenant the ABUSE_* settings), "exempt"
(never flagged) or "custom" (its own z threshold in `abuse_zscore_threshold`). The server default
"default" gives every existing row, and rows an instance still running 0005 inserts during a
rolling upgrade, the behaviour they had.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("tenants", "api_keys")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("abuse_mode", sa.String(16), nullable=False, server_default="default")
            )
            batch.add_column(sa.Column("abuse_zscore_threshold", sa.Float(), nullable=True))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("abuse_zscore_threshold")
            batch.drop_column("abuse_mode")
