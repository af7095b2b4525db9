"""reports: reports, addenda, signed documents (PDF + Encapsulated PDF), critical results

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa
import telehealth.db


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('reading', sa.Integer(), nullable=False),
    sa.Column('template_code', sa.String(length=64), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('title_en', sa.String(length=200), nullable=False),
    sa.Column('field_defs', sa.JSON(), nullable=False),
    sa.Column('values', sa.JSON(), nullable=False),
    sa.Column('findings', sa.Text(), nullable=False),
    sa.Column('impression', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('author_id', sa.Integer(), nullable=False),
    sa.Column('created_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('preliminary_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('signed_by_id', sa.Integer(), nullable=True),
    sa.Column('signed_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('agrees', sa.Boolean(), nullable=True),
    sa.ForeignKeyConstraint(['author_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['signed_by_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('case_id', 'reading')
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reports_case_id'), ['case_id'], unique=False)

    op.create_table('critical_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=True),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('flagged_by_id', sa.Integer(), nullable=False),
    sa.Column('flagged_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('acknowledged_by_id', sa.Integer(), nullable=True),
    sa.Column('acknowledged_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('acknowledge_method', sa.String(length=16), nullable=True),
    sa.Column('acknowledge_note', sa.Text(), nullable=False),
    sa.Column('escalation_level', sa.Integer(), nullable=False),
    sa.Column('next_escalation_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['acknowledged_by_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['flagged_by_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], ),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('critical_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_critical_results_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_critical_results_next', ['next_escalation_at'], unique=False)
        batch_op.create_index('ix_critical_results_open', ['institution_id', 'status'], unique=False)

    op.create_table('report_addenda',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('signed_by_id', sa.Integer(), nullable=False),
    sa.Column('signed_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['signed_by_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('report_addenda', schema=None) as batch_op:
        batch_op.create_index('ix_report_addenda_report', ['report_id', 'id'], unique=False)

    op.create_table('report_documents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('addendum_id', sa.Integer(), nullable=True),
    sa.Column('pdf', sa.LargeBinary(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=False),
    sa.Column('created_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('stored_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['addendum_id'], ['report_addenda.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('report_documents', schema=None) as batch_op:
        batch_op.create_index('ix_report_documents_report', ['report_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_report_documents_stored_at'), ['stored_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('report_documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_documents_stored_at'))
        batch_op.drop_index('ix_report_documents_report')

    op.drop_table('report_documents')
    with op.batch_alter_table('report_addenda', schema=None) as batch_op:
        batch_op.drop_index('ix_report_addenda_report')

    op.drop_table('report_addenda')
    with op.batch_alter_table('critical_results', schema=None) as batch_op:
        batch_op.drop_index('ix_critical_results_open')
        batch_op.drop_index('ix_critical_results_next')
        batch_op.drop_index(batch_op.f('ix_critical_results_case_id'))

    op.drop_table('critical_results')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reports_case_id'))

    op.drop_table('reports')
