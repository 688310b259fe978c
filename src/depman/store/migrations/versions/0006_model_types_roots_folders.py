"""catalog entries know their ComfyUI type, file name, model root, source and files

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

Entries may be written as a ComfyUI folder key plus a file name, installed into a
model root of the nodes' extra_model_paths.yaml, resolved from hf:// or civitai://
sources (pinned revision kept), or be folder models (a list of files). Profiles
may name a default root. Every new column is nullable: v1 entries are unchanged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DEP_COLUMNS = ("model_type", "filename", "root", "source", "revision", "files")


def upgrade() -> None:
    with op.batch_alter_table("deps") as batch_op:
        batch_op.add_column(sa.Column("model_type", sa.String(100), nullable=True))
        batch_op.add_column(sa.Column("filename", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("root", sa.String(100), nullable=True))
        batch_op.add_column(sa.Column("source", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("revision", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("files", sa.JSON(), nullable=True))
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.add_column(sa.Column("root", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.drop_column("root")
    with op.batch_alter_table("deps") as batch_op:
        for column in reversed(DEP_COLUMNS):
            batch_op.drop_column(column)
