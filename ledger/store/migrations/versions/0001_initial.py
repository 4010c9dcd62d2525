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
        sa.UniqueConstraint("actor", "nonce", name="uq_records_actor_nonce"),
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
        "actors",
        sa.Column("actor_id", sa.String(128), primary_key=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("licence", sa.Text, nullable=True),
        sa.Column("registered_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "actor_keys",
        sa.Column("actor_id", sa.String(128), sa.ForeignKey("actors.actor_id"), primary_key=True),
        sa.Column("vkey", sa.Text, primary_key=True),
        sa.Column("valid_from", sa.String(32), nullable=False),
        sa.Column("valid_until", sa.String(32), nullable=True),
        sa.Column("revoked_at", sa.String(32), nullable=True),
    )


def downgrade() -> None:
    for table in (
        "actor_keys",
        "actors",
        "checkpoints",
        "merkle_nodes",
        "payloads",
        "records",
        "log_head",
        "ledger_meta",
    ):
        op.drop_table(table)
