"""later field agents and operator actions: item backoff/cancel/retry, drain, telemetry, audit

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Field agents from 0.3 on report `retrying` and back off locally; an item they back
off on waits (`next_attempt_at`, from 0004) instead of being handed out on every
poll, and `first_failed_at` bounds how long a dep may keep failing. Operators cancel items
(`cancel_reason`), force a retry (`force_retry`, `force_retry_after_ms`) and drain
instances. Telemetry the agents send (disk diagnostics, the stat path, the cloud
provider) is kept, and every operator action is recorded in `operator_actions`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queue_items") as batch_op:
        batch_op.add_column(sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("cancel_reason", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("force_retry", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("force_retry_after_ms", sa.Integer(), nullable=True))
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(
            sa.Column("drained", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("provider", sa.String(100), nullable=True))
        batch_op.add_column(sa.Column("provider_metadata", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("disk_stats_path", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("disk_diagnostics", sa.JSON(), nullable=True))
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("instance_id", sa.String(200), nullable=True),
        sa.Column("dep_id", sa.String(200), nullable=True),
        sa.Column("job_id", sa.String(200), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_operator_actions"),
    )
    op.create_index("ix_operator_actions_at", "operator_actions", ["at"])
    op.create_index("ix_operator_actions_instance_id", "operator_actions", ["instance_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_operator_actions_instance_id", table_name="operator_actions")
    op.drop_index("ix_operator_actions_at", table_name="operator_actions")
    op.drop_table("operator_actions")
    with op.batch_alter_table("instances") as batch_op:
        for name in ("disk_diagnostics", "disk_stats_path", "provider_metadata", "provider"):
            batch_op.drop_column(name)
        batch_op.drop_column("drained")
    with op.batch_alter_table("queue_items") as batch_op:
        for name in (
            "force_retry_after_ms",
            "force_retry",
            "cancel_reason",
            "first_failed_at",
        ):
            batch_op.drop_column(name)
