"""receipts per instance and dep, lost instances, retry times of queue items

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

- dep_receipts: what the agent verified of each file it reports `succeeded` for
  (algorithm, sha256, size, mtime, when, where, agent version), so a job can go
  ready from the receipt without waiting for a heartbeat.
- instances.lost_at: the sweep's mark of an instance whose agent went silent.
  Not indexed: written rarely, read with the (small) table scan of the sweep.
- queue_items.next_attempt_at / failures: retry backoff of failed static and
  prefetch items; polls skip an item whose next attempt is in the future.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dep_receipts",
        sa.Column("instance_id", sa.String(length=200), nullable=False),
        sa.Column("dep_id", sa.String(length=200), nullable=False),
        sa.Column("algorithm", sa.String(length=10), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dest_relative_path", sa.Text(), nullable=True),
        sa.Column("final_path_verified", sa.Boolean(), nullable=False),
        sa.Column("agent_version", sa.String(length=100), nullable=True),
        sa.Column("item_id", sa.String(length=300), nullable=True),
        sa.Column("matches_catalog", sa.Boolean(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.instance_id"],
            name=op.f("fk_dep_receipts_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", "dep_id", name=op.f("pk_dep_receipts")),
    )
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(sa.Column("lost_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("queue_items") as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("queue_items") as batch_op:
        batch_op.drop_column("failures")
        batch_op.drop_column("next_attempt_at")
    with op.batch_alter_table("instances") as batch_op:
        batch_op.drop_column("lost_at")
    op.drop_table("dep_receipts")
