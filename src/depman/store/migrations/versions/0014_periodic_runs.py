"""periodic tasks keep their interval across server processes: periodic_runs

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

One row per periodic task (the maintenance sweep): when it last started in any
server process sharing the database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "periodic_runs",
        sa.Column("task", sa.String(40), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("periodic_runs")
