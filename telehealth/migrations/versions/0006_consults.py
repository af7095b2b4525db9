"""consults: video consults tied to cases, their participants and outcome

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa
import telehealth.db


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('consults',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('requested_by_id', sa.Integer(), nullable=False),
    sa.Column('host_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('scheduled_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('notes', sa.Text(), nullable=False),
    sa.Column('advice', sa.Text(), nullable=False),
    sa.Column('referral', sa.String(length=8), nullable=False),
    sa.Column('referral_institution_id', sa.Integer(), nullable=True),
    sa.Column('referral_reason', sa.Text(), nullable=False),
    sa.Column('created_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('closed_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['host_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], ),
    sa.ForeignKeyConstraint(['referral_institution_id'], ['institutions.id'], ),
    sa.ForeignKeyConstraint(['requested_by_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('consults', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consults_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_consults_status_time', ['status', 'scheduled_at'], unique=False)

    op.create_table('consult_participants',
    sa.Column('consult_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=8), nullable=False),
    sa.Column('invited_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['consult_id'], ['consults.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('consult_id', 'user_id')
    )
    with op.batch_alter_table('consult_participants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consult_participants_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('consult_participants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consult_participants_user_id'))
    op.drop_table('consult_participants')
    with op.batch_alter_table('consults', schema=None) as batch_op:
        batch_op.drop_index('ix_consults_status_time')
        batch_op.drop_index(batch_op.f('ix_consults_case_id'))
    op.drop_table('consults')
