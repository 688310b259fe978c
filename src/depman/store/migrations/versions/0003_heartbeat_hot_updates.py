"""heartbeats update instances in place: no index on last_heartbeat_at, room on each page

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Every heartbeat rewrites its instance's last_heartbeat_at (10,000 agents: ~330
rows a second). With that column indexed, PostgreSQL could never update the row
in place (a HOT update): each heartbeat added a new entry to all six indexes of
the table, and without autovacuum the table and its indexes grew by the
heartbeat rate. The WAL this wrote filled max_wal_size within minutes, and the
checkpoints it forced stalled the store for seconds at a time. Nothing
needs the index: liveness is always filtered together with the server type, or
over the whole (small) table. On PostgreSQL the table also keeps 30% of each page
free, so a heartbeat's new row version fits beside the old one.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

HEARTBEAT_INDEX = "ix_instances_last_heartbeat_at"


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        batch_op.drop_index(HEARTBEAT_INDEX)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE instances SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE instances RESET (fillfactor)")
    with op.batch_alter_table("instances") as batch_op:
        batch_op.create_index(HEARTBEAT_INDEX, ["last_heartbeat_at"], unique=False)
