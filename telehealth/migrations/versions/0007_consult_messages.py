"""consult_messages: the chat of a consult, kept with it

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa
import telehealth.db


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('consult_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('consult_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['consult_id'], ['consults.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('consult_messages', schema=None) as batch_op:
        batch_op.create_index('ix_consult_messages_consult_id_id', ['consult_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('consult_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_consult_messages_consult_id_id')
    op.drop_table('consult_messages')
