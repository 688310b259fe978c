"""upstream caps: queue items record their capped host and hand-out lease; upstream_slots

Revision ID: 0012
Revises: 0008
Create Date: 2026-12-07

`DEPMAN_UPSTREAM_CONCURRENCY` caps the downloads in flight per upstream host across
the fleet. A queue item handed out for a capped host records the host and the time
(a lease its next hand-out renews) and, while it waits, the host it waits for;
`upstream_slots` holds the slots taken outside the queues (the mirror fill).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queue_items") as batch:
        batch.add_column(sa.Column("upstream_host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("handed_out_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("waiting_upstream", sa.String(255), nullable=True))
    op.create_index("ix_queue_items_upstream_host", "queue_items", ["upstream_host", "state"])
    op.create_index("ix_queue_items_waiting_upstream", "queue_items", ["waiting_upstream"])
    op.create_table(
        "upstream_slots",
        sa.Column("holder", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_upstream_slots_host", "upstream_slots", ["host"])


def downgrade() -> None:
    op.drop_index("ix_upstream_slots_host", table_name="upstream_slots")
    op.drop_table("upstream_slots")
    op.drop_index("ix_queue_items_waiting_upstream", table_name="queue_items")
    op.drop_index("ix_queue_items_upstream_host", table_name="queue_items")
    with op.batch_alter_table("queue_items") as batch:
        batch.drop_column("waiting_upstream")
        batch.drop_column("handed_out_at")
        batch.drop_column("upstream_host")
