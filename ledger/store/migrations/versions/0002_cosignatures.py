"""Witness cosignatures collected for checkpoints (c2sp.org/tlog-cosignature).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cosignatures",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("witness_name", sa.String(256), primary_key=True),
        sa.Column("key_id", sa.String(8), primary_key=True),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_cosignatures_witness_size", "cosignatures", ["witness_name", "key_id", "size"]
    )


def downgrade() -> None:
    op.drop_index("ix_cosignatures_witness_size", table_name="cosignatures")
    op.drop_table("cosignatures")
