"""server types say how their instances join: server_types.enrollment

Revision ID: 0013
Revises: 0008
Create Date: 2026-12-07

`open` (the default, and what every existing type gets): an agent with the shared
secret and an instance id nobody declared creates its own instance record of that
type. `declared`: only instances declared by the operator may register.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("server_types") as batch_op:
        batch_op.add_column(
            sa.Column("enrollment", sa.String(20), nullable=False, server_default="open")
        )


def downgrade() -> None:
    with op.batch_alter_table("server_types") as batch_op:
        batch_op.drop_column("enrollment")
