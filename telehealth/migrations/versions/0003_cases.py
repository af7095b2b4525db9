"""cases: reading groups, routing rules, deadline policies, cases, history, notifications

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

import telehealth.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# At most one open case per study; signed and cancelled cases do not count.
OPEN = sa.text("status IN ('new', 'queued', 'claimed', 'reported')")


def upgrade() -> None:
    op.create_table('deadline_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('service', sa.String(length=32), nullable=True),
    sa.Column('minutes', sa.Integer(), nullable=False),
    sa.Column('warn_fraction', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('priority', 'service')
    )
    op.create_table('reading_groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('services', sa.JSON(), nullable=False),
    sa.Column('lead_user_id', sa.Integer(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], ),
    sa.ForeignKeyConstraint(['lead_user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_index('ix_reading_groups_institution_id', 'reading_groups', ['institution_id'], unique=False)

    op.create_table('reading_group_members',
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['reading_groups.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('group_id', 'user_id')
    )
    op.create_index('ix_reading_group_members_user_id', 'reading_group_members', ['user_id'], unique=False)

    op.create_table('routing_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('modalities', sa.JSON(), nullable=True),
    sa.Column('sop_classes', sa.JSON(), nullable=True),
    sa.Column('body_parts', sa.JSON(), nullable=True),
    sa.Column('services', sa.JSON(), nullable=True),
    sa.Column('priorities', sa.JSON(), nullable=True),
    sa.Column('institution_id', sa.Integer(), nullable=True),
    sa.Column('time_from', sa.String(length=5), nullable=True),
    sa.Column('time_to', sa.String(length=5), nullable=True),
    sa.Column('created_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['reading_groups.id'], ),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_routing_rules_group_id', 'routing_rules', ['group_id'], unique=False)
    op.create_index('ix_routing_rules_position', 'routing_rules', ['position', 'id'], unique=False)

    op.create_table('cases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('clinical_history', sa.Text(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('triage_reason', sa.Text(), nullable=True),
    sa.Column('priority_rank', sa.SmallInteger(), nullable=False),
    sa.Column('service', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('routing_rule_id', sa.Integer(), nullable=True),
    sa.Column('requested_by_id', sa.Integer(), nullable=True),
    sa.Column('claim_holder_id', sa.Integer(), nullable=True),
    sa.Column('claimed_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_expires_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_token', sa.Integer(), nullable=False),
    sa.Column('due_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('next_escalation_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('warned_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('overdue_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('escalation_level', sa.Integer(), nullable=False),
    sa.Column('created_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('closed_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['claim_holder_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['group_id'], ['reading_groups.id'], ),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], ),
    sa.ForeignKeyConstraint(['requested_by_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['routing_rule_id'], ['routing_rules.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_cases_claim_holder_id', 'cases', ['claim_holder_id'], unique=False)
    op.create_index('ix_cases_institution', 'cases', ['institution_id', 'created_at'], unique=False)
    op.create_index('ix_cases_lease', 'cases', ['status', 'lease_expires_at'], unique=False)
    op.create_index('ix_cases_next_escalation', 'cases', ['next_escalation_at'], unique=False)
    op.create_index('ix_cases_queue', 'cases', ['group_id', 'status', 'priority_rank', 'due_at'], unique=False)
    op.create_index('ix_cases_study_pk', 'cases', ['study_pk'], unique=False)
    op.create_index('ux_cases_open_study', 'cases', ['study_pk'], unique=True, sqlite_where=OPEN, postgresql_where=OPEN)

    op.create_table('case_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_case_events_case', 'case_events', ['case_id', 'id'], unique=False)

    op.create_table('notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('created_at', telehealth.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('read_at', telehealth.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_notifications_user', 'notifications', ['user_id', 'id'], unique=False)


def downgrade() -> None:
    for table in (
        "notifications",
        "case_events",
        "cases",
        "routing_rules",
        "reading_group_members",
        "reading_groups",
        "deadline_policies",
    ):
        op.drop_table(table)
