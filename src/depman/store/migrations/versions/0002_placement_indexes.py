"""placement indexes: holders by dep (covering), free instances by disk

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Placement reads the holders of a job's deps (an index-only scan on
(dep_id, instance_id)) and the live instances with the most free disk (an
ordered index scan that stops after a few rows), instead of scanning every
instance per job. The free-disk index orders ids as Python does
(COLLATE "C" on PostgreSQL; SQLite's default BINARY already does).
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FREE_INDEX = "ix_instances_type_free"


def upgrade() -> None:
    with op.batch_alter_table("instance_deps") as batch_op:
        batch_op.drop_index("ix_instance_deps_dep_id")
        batch_op.create_index("ix_instance_deps_dep_id", ["dep_id", "instance_id"], unique=False)
    collate = ' COLLATE "C"' if op.get_bind().dialect.name == "postgresql" else ""
    op.execute(
        f"CREATE INDEX {FREE_INDEX} ON instances "
        f"(server_type, coalesce(disk_free_bytes, 0) DESC, instance_id{collate})"
    )


def downgrade() -> None:
    op.execute(f"DROP INDEX {FREE_INDEX}")
    with op.batch_alter_table("instance_deps") as batch_op:
        batch_op.drop_index("ix_instance_deps_dep_id")
        batch_op.create_index("ix_instance_deps_dep_id", ["dep_id"], unique=False)
