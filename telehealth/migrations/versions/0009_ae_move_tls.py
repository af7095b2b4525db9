"""ae_move_tls: C-MOVE destinations that need TLS

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('application_entities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tls', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('application_entities', schema=None) as batch_op:
        batch_op.drop_column('tls')
