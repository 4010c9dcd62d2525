"""The verifiable log: records, payloads, Merkle nodes, checkpoints, registry.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "log_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "records",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("record_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("received_at", sa.String(32), nullable=False),
        sa.Column("record_bytes", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("nonce", "actor", name="uq_records_nonce_actor"),
    )
    op.create_index("ix_records_type_seq", "records", ["type", "seq"])
    op.create_table(
        "payloads",
        sa.Column(
            "seq",
            sa.BigInteger,
            sa.ForeignKey("records.seq"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        "merkle_nodes",
        sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_table(
        "projections",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("patient", sa.String(128), nullable=True),
        sa.Column("party", sa.String(128), nullable=True),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("tags", sa.Text, nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_projections_patient", "projections", ["kind", "patient", "seq"])
    op.create_index("ix_projections_party", "projections", ["kind", "party", "status", "seq"])


def downgrade() -> None:
    for table in (
        "projections",
        "checkpoints",
        "merkle_nodes",
        "payloads",
        "records",
        "log_head",
        "ledger_meta",
    ):
        op.drop_table(table)
