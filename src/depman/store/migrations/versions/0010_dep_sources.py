"""dep sources: further URLs for the same bytes, tried in order after `url`

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-07

`deps.sources` lists, in order, the other places a catalog entry's file can be
fetched from: `[{"url", "source", "revision"}]`, `url` resolved (https), `source`
the hf:// or civitai:// URL as written (or null), `revision` what it was pinned to.
Identity stays the entry's sha256 and size; agents try each source after `url`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deps") as batch_op:
        batch_op.add_column(sa.Column("sources", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deps") as batch_op:
        batch_op.drop_column("sources")
