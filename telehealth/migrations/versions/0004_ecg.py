"""ecg: measurements per instance (automatic and reader values), uploaded originals

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

import telehealth.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ecg_measurements",
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("automatic", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("algorithm", sa.String(length=64), nullable=False),
        sa.Column("computed_at", telehealth.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reader_values", sa.JSON(), nullable=True),
        sa.Column("reader_comment", sa.Text(), nullable=False),
        sa.Column("reader_user_id", sa.Integer(), nullable=True),
        sa.Column("reader_at", telehealth.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["instance_pk"], ["instances.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reader_user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("instance_pk"),
    )
    op.create_table(
        "ecg_originals",
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("object_key", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("uploaded_by", sa.Integer(), nullable=True),
        sa.Column("uploaded_at", telehealth.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["instance_pk"], ["instances.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["uploaded_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("instance_pk"),
    )


def downgrade() -> None:
    op.drop_table("ecg_originals")
    op.drop_table("ecg_measurements")
