"""Reading groups, routing rules, deadline policies, cases, their history and notifications."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from telehealth.db import Base, UTCDateTime


class CasePriority(StrEnum):
    STAT = "stat"  # 急: minutes (chest pain ECG, trauma CT)
    URGENT = "urgent"
    ROUTINE = "routine"


# The queue sorts by this rank; the names themselves sort the wrong way (routine < stat).
PRIORITY_RANK: dict[CasePriority, int] = {
    CasePriority.STAT: 1,
    CasePriority.URGENT: 2,
    CasePriority.ROUTINE: 3,
}


class CaseService(StrEnum):
    """What the clinic asks for; routing rules and deadlines are keyed by it."""

    IMAGING = "imaging"  # DR, CT, MR
    ECG = "ecg"
    ULTRASOUND = "ultrasound"
    OTHER = "other"


class CaseStatus(StrEnum):
    """NEW → QUEUED → CLAIMED → REPORTED (preliminary) → SIGNED; CANCELLED from any open state.

    NEW means "in no reading group": routing found nobody, so the case waits in the admins'
    fallback queue. A claim is a lease kept beside the status: an expired CLAIMED case is
    claimable again and goes back to QUEUED at the next sweep. REPORTED cases may be claimed
    too (to sign a preliminary report) without leaving REPORTED.
    """

    NEW = "new"
    QUEUED = "queued"
    CLAIMED = "claimed"
    REPORTED = "reported"
    SIGNED = "signed"
    CANCELLED = "cancelled"


OPEN_STATUSES: tuple[CaseStatus, ...] = (
    CaseStatus.NEW,
    CaseStatus.QUEUED,
    CaseStatus.CLAIMED,
    CaseStatus.REPORTED,
)
CLAIMABLE_STATUSES: tuple[CaseStatus, ...] = (
    CaseStatus.QUEUED,
    CaseStatus.CLAIMED,
    CaseStatus.REPORTED,
)


class CaseOrigin(StrEnum):
    REQUEST = "request"  # a technician asked for a reading
    AUTO = "auto"  # a study became stable without a request


class CaseEventKind(StrEnum):
    CREATED = "created"
    REQUESTED = "requested"  # a request filled in an automatic case
    UPDATED = "updated"
    TRIAGED = "triaged"  # ECG triage raised the priority
    ROUTED = "routed"
    CLAIMED = "claimed"
    RELEASED = "released"
    LEASE_EXPIRED = "lease_expired"
    ASSIGNED = "assigned"
    WARNED = "warned"  # near the deadline: the group lead was told
    OVERDUE = "overdue"
    ESCALATED = "escalated"  # offered to the next group up
    ESCALATION_EXHAUSTED = "escalation_exhausted"  # nobody above could take it
    COMPLETED = "completed"  # a report was issued (preliminary or signed)
    CANCELLED = "cancelled"
    # Steps of the case's report and critical results (telehealth.reports).
    REPORT_CREATED = "report.created"
    REPORT_SAVED = "report.saved"
    REPORT_PRELIMINARY = "report.preliminary"
    REPORT_SIGNED = "report.signed"
    # Double reading: the first report is signed and the case waits for a second reader …
    REPORT_SECOND_READING = "report.second_reading"
    # … who signed a second report that disagrees with the first (the note says why).
    REPORT_DISAGREED = "report.disagreed"
    REPORT_ADDENDUM = "report.addendum"
    CRITICAL_FLAGGED = "critical.flagged"
    CRITICAL_NOTIFIED = "critical.notified"
    CRITICAL_ACKNOWLEDGED = "critical.acknowledged"
    CRITICAL_ESCALATED = "critical.escalated"
    # Video consults about the case (telehealth.consults).
    CONSULT_REQUESTED = "consult.requested"
    CONSULT_CANCELLED = "consult.cancelled"
    CONSULT_COMPLETED = "consult.completed"  # notes and advice filed
    CONSULT_REFERRAL = "consult.referral"  # 双向转诊: referred up or down


class NotificationKind(StrEnum):
    DEADLINE_WARNING = "deadline_warning"
    OVERDUE = "overdue"
    ESCALATED = "escalated"
    ASSIGNED = "assigned"
    UNROUTED = "unrouted"  # to admins: routing found no group for a case
    CRITICAL_RESULT = "critical_result"  # a critical result awaits the clinic's acknowledgement


class ReadingGroup(Base):
    """Readers hosted by one institution (县医院影像组, 市医院心电组 …).

    `level` orders groups within the institution: when a group cannot take a case, a group
    of the same institution with a higher level is tried before the parent institution.
    `services` empty means every service.
    """

    __tablename__ = "reading_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    level: Mapped[int] = mapped_column(Integer, default=0)
    services: Mapped[list[str]] = mapped_column(JSON, default=list)
    lead_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReadingGroupMember(Base):
    __tablename__ = "reading_group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("reading_groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)


class RoutingRule(Base):
    """One line of the routing table: conditions (None = any) → target group.

    Rules are evaluated by (position, id); the first match wins.
    """

    __tablename__ = "routing_rules"
    __table_args__ = (Index("ix_routing_rules_position", "position", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("reading_groups.id"), index=True)
    modalities: Mapped[list[str] | None] = mapped_column(JSON)  # any of the study's
    sop_classes: Mapped[list[str] | None] = mapped_column(JSON)  # any instance's SOP class
    body_parts: Mapped[list[str] | None] = mapped_column(JSON)  # any series' Body Part
    services: Mapped[list[str] | None] = mapped_column(JSON)
    priorities: Mapped[list[str] | None] = mapped_column(JSON)
    # The sending institution is this one or below it in the consortium tree.
    institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"))
    # Local time-of-day window "HH:MM"; from > to wraps midnight (22:00–08:00).
    time_from: Mapped[str | None] = mapped_column(String(5))
    time_to: Mapped[str | None] = mapped_column(String(5))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeadlinePolicy(Base):
    """Minutes from request to report for a priority and service (None = any service)."""

    __tablename__ = "deadline_policies"
    __table_args__ = (UniqueConstraint("priority", "service"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    priority: Mapped[CasePriority] = mapped_column(String(16))
    service: Mapped[CaseService | None] = mapped_column(String(32))
    minutes: Mapped[int] = mapped_column(Integer)
    # The group lead is warned when this fraction of the time has passed.
    warn_fraction: Mapped[float] = mapped_column(Float, default=0.75)


# Open means not signed and not cancelled; at most one open case per study.
_OPEN_SQL = "status IN ('new', 'queued', 'claimed', 'reported')"


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (
        # The worklist: my groups' open cases by priority, then due time.
        Index("ix_cases_queue", "group_id", "status", "priority_rank", "due_at"),
        Index("ix_cases_institution", "institution_id", "created_at"),
        Index("ix_cases_next_escalation", "next_escalation_at"),
        Index("ix_cases_lease", "status", "lease_expires_at"),
        Index(
            "ux_cases_open_study",
            "study_pk",
            unique=True,
            sqlite_where=text(_OPEN_SQL),
            postgresql_where=text(_OPEN_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    # The study's owner: the clinic that asked and that sees the case.
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    origin: Mapped[CaseOrigin] = mapped_column(String(16))
    clinical_history: Mapped[str] = mapped_column(Text, default="")
    question: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[CasePriority] = mapped_column(String(16))
    # Why triage raised the priority (ECG measurements, the request's words); shown in the queue.
    triage_reason: Mapped[str | None] = mapped_column(Text)
    priority_rank: Mapped[int] = mapped_column(SmallInteger)
    service: Mapped[CaseService] = mapped_column(String(32))
    status: Mapped[CaseStatus] = mapped_column(String(16))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("reading_groups.id"))
    routing_rule_id: Mapped[int | None] = mapped_column(
        ForeignKey("routing_rules.id", ondelete="SET NULL")
    )
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # The claim: a lease. `lease_token` grows with every claim so a reader whose lease
    # lapsed cannot act over the next holder (fencing).
    claim_holder_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When the escalation check should look at this case next; None = never again.
    next_escalation_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    warned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    overdue_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CaseEvent(Base):
    """One change of a case, in order: who, when, what (its history)."""

    __tablename__ = "case_events"
    __table_args__ = (Index("ix_case_events_case", "case_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[CaseEventKind] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(100))  # username, or "system"
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Notification(Base):
    """A stored message to one user; delivered live and listed later (delivery is pluggable)."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user", "user_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    kind: Mapped[NotificationKind] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
