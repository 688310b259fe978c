"""the fleet mirror: mirror_objects; bytes per source kind on instances and jobs

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-07

The fleet mirror keeps one verified copy of each catalog file in a bucket, under
its sha256; `mirror_objects` records which files are stored there and how their
fill goes. Instances and jobs count the bytes their downloads received from the
mirror and from the upstreams.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BYTE_COLUMNS = ("mirror_bytes", "upstream_bytes")


def upgrade() -> None:
    op.create_table(
        "mirror_objects",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("dep_id", sa.String(200), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("source_url", sa.Text(), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_mirror_objects"),
    )
    op.create_index("ix_mirror_objects_state", "mirror_objects", ["state", "next_attempt_at"])
    for table in ("instances", "jobs"):
        with op.batch_alter_table(table) as batch_op:
            for column in BYTE_COLUMNS:
                batch_op.add_column(
                    sa.Column(column, sa.BigInteger(), nullable=False, server_default="0")
                )


def downgrade() -> None:
    for table in ("jobs", "instances"):
        with op.batch_alter_table(table) as batch_op:
            for column in BYTE_COLUMNS:
                batch_op.drop_column(column)
    op.drop_index("ix_mirror_objects_state", table_name="mirror_objects")
    op.drop_table("mirror_objects")
