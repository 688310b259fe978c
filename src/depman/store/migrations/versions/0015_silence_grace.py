"""a wide silence keeps its instances: instances.silence_grace_at

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

When the sweep last kept an instance through a wide silence (most of the fleet
quiet at once); its lost timeout counts from then too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on every dialect: a batch copy of `instances` on SQLite would drop
# its expression index (ix_instances_type_free).
def upgrade() -> None:
    op.add_column(
        "instances", sa.Column("silence_grace_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("instances", "silence_grace_at")
