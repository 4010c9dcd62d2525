"""Patients' privacy: sealed payloads, data keys, the read log (ADR 0010).

``payloads.content`` holds sealed bytes from now on; ``owner`` names the data
key that seals them and ``erased_seq`` the record that shredded them.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payloads") as batch:
        batch.add_column(sa.Column("owner", sa.String(128), nullable=True))
        batch.add_column(sa.Column("erased_seq", sa.BigInteger, nullable=True))
    op.create_index("ix_payloads_owner", "payloads", ["owner", "seq"])
    op.create_table(
        "data_keys",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("wrapped", sa.LargeBinary, nullable=True),
        sa.Column("created_seq", sa.BigInteger, nullable=False),
        sa.Column("erased_seq", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "access_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("recorded", sa.String(32), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("patient", sa.String(128), nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=True),
        sa.Column("basis", sa.String(64), nullable=False),
        sa.Column("event", sa.Text, nullable=False),
    )
    op.create_index("ix_access_log_patient", "access_log", ["patient", "id"])


def downgrade() -> None:
    op.drop_index("ix_access_log_patient", table_name="access_log")
    op.drop_table("access_log")
    op.drop_table("data_keys")
    op.drop_index("ix_payloads_owner", table_name="payloads")
    with op.batch_alter_table("payloads") as batch:
        batch.drop_column("erased_seq")
        batch.drop_column("owner")
