"""dicomweb: instance metadata computed once after ingest

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
        "instance_metadata",
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("json", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["instance_pk"], ["instances.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("instance_pk"),
    )


def downgrade() -> None:
    op.drop_table("instance_metadata")
