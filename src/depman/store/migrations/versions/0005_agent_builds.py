"""agent builds: the agent file published for a server type, with its version and sha256

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

An operator publishes an agent build for a server type; register and heartbeat
answers then offer it to that type's agents (`agentUpdate`). The bytes live in
the table so every server process can serve them, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_builds",
        sa.Column("server_type", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("rollout_percent", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("server_type", name=op.f("pk_agent_builds")),
    )
    op.create_index(op.f("ix_agent_builds_sha256"), "agent_builds", ["sha256"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_builds_sha256"), table_name="agent_builds")
    op.drop_table("agent_builds")
