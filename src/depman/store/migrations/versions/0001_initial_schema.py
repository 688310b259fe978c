"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deps",
        sa.Column("dep_id", sa.String(length=200), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("auth", sa.String(length=20), nullable=False),
        sa.Column("dest_relative_path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("expected_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dep_id", name=op.f("pk_deps")),
    )
    op.create_table(
        "instances",
        sa.Column("instance_id", sa.String(length=200), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("server_type", sa.String(length=200), nullable=False),
        sa.Column("agent_token_hash", sa.String(length=128), nullable=True),
        sa.Column("agent_version", sa.String(length=100), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disk_total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("disk_free_bytes", sa.BigInteger(), nullable=True),
        sa.Column("disk_used_bytes", sa.BigInteger(), nullable=True),
        sa.Column("dynamic_bytes_used", sa.BigInteger(), nullable=True),
        sa.Column("queue_depth", sa.Integer(), nullable=True),
        sa.Column("downloading_dep_ids", sa.JSON(), nullable=False),
        sa.Column("failed_dep_ids", sa.JSON(), nullable=False),
        sa.Column("active_downloads", sa.JSON(), nullable=False),
        sa.Column("inventory_digest", sa.String(length=64), nullable=True),
        sa.Column("pinned_dep_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instances")),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_instances_agent_token_hash"), ["agent_token_hash"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_instances_ip"), ["ip"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_instances_last_heartbeat_at"), ["last_heartbeat_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_instances_server_type"), ["server_type"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(length=200), nullable=False),
        sa.Column("server_type", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("instance_id", sa.String(length=200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("placements", sa.Integer(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_instance_state", ["instance_id", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_server_type"), ["server_type"], unique=False)
        batch_op.create_index("ix_jobs_state_created", ["state", "created_at"], unique=False)

    op.create_table(
        "profiles",
        sa.Column("profile_id", sa.String(length=200), nullable=False),
        sa.Column("prefetch_on_boot", sa.Boolean(), nullable=False),
        sa.Column("dynamic_policy", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", name=op.f("pk_profiles")),
    )
    op.create_table(
        "server_types",
        sa.Column("server_type", sa.String(length=200), nullable=False),
        sa.Column("mode", sa.String(length=50), nullable=False),
        sa.Column("profile_id", sa.String(length=200), nullable=True),
        sa.Column("max_active_jobs", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("server_type", name=op.f("pk_server_types")),
    )
    op.create_table(
        "instance_deps",
        sa.Column("instance_id", sa.String(length=200), nullable=False),
        sa.Column("dep_id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.instance_id"],
            name=op.f("fk_instance_deps_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", "dep_id", name=op.f("pk_instance_deps")),
    )
    with op.batch_alter_table("instance_deps", schema=None) as batch_op:
        batch_op.create_index("ix_instance_deps_dep_id", ["dep_id"], unique=False)

    op.create_table(
        "job_deps",
        sa.Column("job_id", sa.String(length=200), nullable=False),
        sa.Column("dep_id", sa.String(length=200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.job_id"], name=op.f("fk_job_deps_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "dep_id", name=op.f("pk_job_deps")),
    )
    op.create_table(
        "profile_static_deps",
        sa.Column("profile_id", sa.String(length=200), nullable=False),
        sa.Column("dep_id", sa.String(length=200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["profiles.profile_id"],
            name=op.f("fk_profile_static_deps_profile_id_profiles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("profile_id", "dep_id", name=op.f("pk_profile_static_deps")),
    )
    op.create_table(
        "queue_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(length=200), nullable=False),
        sa.Column("dep_id", sa.String(length=200), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_progress_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.instance_id"],
            name=op.f("fk_queue_items_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_items")),
        sa.UniqueConstraint("instance_id", "dep_id", name=op.f("uq_queue_items_instance_id")),
    )
    with op.batch_alter_table("queue_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_queue_items_dispatch",
            ["instance_id", "state", "priority", "enqueued_at"],
            unique=False,
        )
        batch_op.create_index("ix_queue_items_state", ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("queue_items", schema=None) as batch_op:
        batch_op.drop_index("ix_queue_items_state")
        batch_op.drop_index("ix_queue_items_dispatch")

    op.drop_table("queue_items")
    op.drop_table("profile_static_deps")
    op.drop_table("job_deps")
    with op.batch_alter_table("instance_deps", schema=None) as batch_op:
        batch_op.drop_index("ix_instance_deps_dep_id")

    op.drop_table("instance_deps")
    op.drop_table("server_types")
    op.drop_table("profiles")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_created")
        batch_op.drop_index(batch_op.f("ix_jobs_server_type"))
        batch_op.drop_index("ix_jobs_instance_state")

    op.drop_table("jobs")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instances_server_type"))
        batch_op.drop_index(batch_op.f("ix_instances_last_heartbeat_at"))
        batch_op.drop_index(batch_op.f("ix_instances_ip"))
        batch_op.drop_index(batch_op.f("ix_instances_agent_token_hash"))

    op.drop_table("instances")
    op.drop_table("deps")
