"""consult_recordings: consented recordings of a consult, WebM in the object store

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa
import telehealth.db


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('consult_recordings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('consult_id', sa.Integer(), nullable=False),
    sa.Column('started_by_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('consented_user_ids', sa.JSON(), nullable=False),
    sa.Column('object_key', sa.String(length=200), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('duration_seconds', sa.Float(), nullable=True),
    sa.Column('stop_reason', sa.String(length=32), nullable=False),
    sa.Column('started_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['consult_id'], ['consults.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['started_by_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('consult_recordings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consult_recordings_consult_id'), ['consult_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('consult_recordings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consult_recordings_consult_id'))
    op.drop_table('consult_recordings')
