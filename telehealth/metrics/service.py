"""The figures a consortium is assessed on, computed from the cases and reports tables.

No tables of its own: counts are SQL aggregates that read the same on SQLite and PostgreSQL;
durations are selected as timestamp pairs and their percentiles taken here, because SQLite
has no percentile function and the two databases subtract timestamps differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, true
from sqlalchemy import case as sql_case
from sqlalchemy.orm import QueryableAttribute, Session

from telehealth.auth import service as auth
from telehealth.auth.models import User
from telehealth.cases import service as cases
from telehealth.cases.models import (
    OPEN_STATUSES,
    Case,
    CaseEvent,
    CaseEventKind,
    CasePriority,
    CaseService,
    CaseStatus,
)
from telehealth.clock import as_utc
from telehealth.errors import Invalid
from telehealth.institutions import service as institutions
from telehealth.institutions.models import Institution
from telehealth.metrics import breakdown
from telehealth.metrics.ranks import percentile
from telehealth.reports.models import CriticalResult, CriticalStatus, Report, ReportStatus

DEFAULT_PERIOD = timedelta(days=30)
# Grouping by local day in SQL costs one row per day and clinic; a decade of it is no summary.
MAX_PERIOD = timedelta(days=366)


class InvalidPeriod(Invalid):
    """`from` is not before `to`, or the period is longer than a year."""


@dataclass(frozen=True)
class Period:
    """Cases requested (critical results flagged) in [start, end)."""

    start: datetime
    end: datetime
    institution_id: int | None  # this institution and those below it; None = all


@dataclass(frozen=True)
class Volume:
    institution_id: int
    institution_code: str
    service: CaseService
    day: str  # YYYY-MM-DD in the consortium's time zone
    cases: int


@dataclass(frozen=True)
class Percentiles:
    """Minutes, nearest-rank: each figure is one of the measured durations."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None


@dataclass(frozen=True)
class Turnaround:
    request_to_claim: Percentiles  # to the first claim: time waiting in the queue
    claim_to_signed: Percentiles  # first claim to signature
    request_to_signed: Percentiles


@dataclass(frozen=True)
class Compliance:
    """Per priority. `due` counts the decided cases: signed, or open past their due time."""

    priority: CasePriority
    due: int
    met: int  # signed at or before due_at
    missed: int
    pending: int  # open, not yet due
    rate: float | None  # met / due


@dataclass(frozen=True)
class CriticalFigures:
    flagged: int
    acknowledged: int
    open: int
    ack_minutes: Percentiles


@dataclass(frozen=True)
class ReaderLoad:
    user_id: int
    username: str
    claimed: int  # distinct cases claimed in the period
    signed: int  # reports signed in the period
    in_progress: int  # cases held under a live lease now


@dataclass(frozen=True)
class Summary:
    start: datetime
    end: datetime
    institution_id: int | None
    generated_at: datetime
    volumes: list[Volume]
    turnaround: Turnaround
    compliance: list[Compliance]
    critical: CriticalFigures
    readers: list[ReaderLoad]
    by_clinic: list[breakdown.ClinicFigures] = field(default_factory=list)
    by_reader: list[breakdown.ReaderFigures] = field(default_factory=list)


def percentiles(minutes: Sequence[float]) -> Percentiles:
    return Percentiles(
        count=len(minutes),
        p50=percentile(minutes, 0.50),
        p90=percentile(minutes, 0.90),
        p99=percentile(minutes, 0.99),
    )


def _minutes(start: datetime, end: datetime) -> float:
    return round((as_utc(end) - as_utc(start)).total_seconds() / 60, 3)


def summary(
    session: Session,
    actor: auth.Actor,
    ctx: cases.CaseContext,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    institution: str | None = None,
) -> Summary:
    """The consortium's figures for cases requested in [start, end) (the last 30 days by
    default; a naive time is the consortium's local time), of `institution` (a code) and the
    institutions below it. Admins only: the admin role spans the consortium and no
    clinic-level admin role exists. Raises NotPermitted, InvalidPeriod, InstitutionNotFound.
    """
    auth.require(actor, auth.Permission.VIEW_METRICS)
    now = ctx.now()
    when = _period(session, ctx, start, end, institution)
    scope = _case_scope(session, when)
    result = Summary(
        start=when.start,
        end=when.end,
        institution_id=when.institution_id,
        generated_at=now,
        volumes=_volumes(session, scope, ctx, when),
        turnaround=_turnaround(session, scope),
        compliance=_compliance(session, scope, now),
        critical=_critical(session, when),
        readers=_readers(session, _institution_scope(session, when), when, now),
        by_clinic=breakdown.by_clinic(session, scope, _critical_scope(session, when), now),
        by_reader=breakdown.by_reader(
            session,
            _institution_scope(session, when),
            _critical_scope(session, when),
            when.start,
            when.end,
        ),
    )
    auth.audit(
        session,
        actor,
        "metrics.summary",
        object_type="institution",
        object_id=institution or "",
        detail=f"{when.start.isoformat()} / {when.end.isoformat()}",
        when=now,
    )
    return result


def _period(
    session: Session,
    ctx: cases.CaseContext,
    start: datetime | None,
    end: datetime | None,
    institution: str | None,
) -> Period:
    zone = ctx.config.timezone
    end = (end if end.tzinfo else end.replace(tzinfo=zone)) if end else ctx.now()
    start = (start if start.tzinfo else start.replace(tzinfo=zone)) if start else None
    start = start or end - DEFAULT_PERIOD
    # SQLite compares the stored UTC text: a bound time must be UTC too, not Beijing time.
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start >= end:
        raise InvalidPeriod("`from` must be before `to`")
    if end - start > MAX_PERIOD:
        raise InvalidPeriod("a summary covers at most 366 days")
    institution_id = institutions.get_institution(session, institution).id if institution else None
    return Period(start, end, institution_id)


def _institutions(session: Session, when: Period) -> set[int] | None:
    if when.institution_id is None:
        return None
    return institutions.subtree_ids(session, when.institution_id)


def _institution_scope(session: Session, when: Period) -> ColumnElement[bool]:
    ids = _institutions(session, when)
    return Case.institution_id.in_(ids) if ids is not None else true()


def _case_scope(session: Session, when: Period) -> ColumnElement[bool]:
    """Cases requested in the period, of the institution and those below it."""
    return and_(
        Case.created_at >= when.start,
        Case.created_at < when.end,
        _institution_scope(session, when),
    )


def _local_day(
    session: Session, column: QueryableAttribute[datetime], ctx: cases.CaseContext, at: datetime
) -> ColumnElement[str]:
    """The column's date in the consortium's zone, as YYYY-MM-DD text on both databases."""
    zone = ctx.config.timezone
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone(zone.key, column), "YYYY-MM-DD")
    # SQLite keeps UTC text and knows no zones: shift by the offset (China has no DST).
    offset = at.astimezone(zone).utcoffset() or timedelta()
    return func.date(column, f"{int(offset.total_seconds() // 60):+d} minutes")


def _volumes(
    session: Session, scope: ColumnElement[bool], ctx: cases.CaseContext, when: Period
) -> list[Volume]:
    day = _local_day(session, Case.created_at, ctx, when.end).label("day")
    rows = session.execute(
        select(Case.institution_id, Institution.code, Case.service, day, func.count(Case.id))
        .join(Institution, Institution.id == Case.institution_id)
        .where(scope)
        .group_by(Case.institution_id, Institution.code, Case.service, day)
        .order_by(day, Institution.code, Case.service)
    ).all()
    return [
        Volume(
            institution_id=inst_id,
            institution_code=code,
            service=CaseService(service),
            day=str(day_),
            cases=count,
        )
        for inst_id, code, service, day_, count in rows
    ]


def _turnaround(session: Session, scope: ColumnElement[bool]) -> Turnaround:
    first_claim = (
        select(CaseEvent.case_id, func.min(CaseEvent.at).label("at"))
        .where(CaseEvent.kind == CaseEventKind.CLAIMED)
        .group_by(CaseEvent.case_id)
        .subquery()
    )
    rows = session.execute(
        select(Case.created_at, first_claim.c.at, Case.closed_at, Case.status)
        .outerjoin(first_claim, first_claim.c.case_id == Case.id)
        .where(scope)
    ).all()
    to_claim: list[float] = []
    claim_to_signed: list[float] = []
    to_signed: list[float] = []
    for created_at, claimed_at, closed_at, status in rows:
        signed = status == CaseStatus.SIGNED and closed_at is not None
        if claimed_at is not None:
            to_claim.append(_minutes(created_at, claimed_at))
            if signed:
                claim_to_signed.append(_minutes(claimed_at, closed_at))
        if signed:
            to_signed.append(_minutes(created_at, closed_at))
    return Turnaround(
        request_to_claim=percentiles(to_claim),
        claim_to_signed=percentiles(claim_to_signed),
        request_to_signed=percentiles(to_signed),
    )


def _compliance(session: Session, scope: ColumnElement[bool], now: datetime) -> list[Compliance]:
    signed = Case.status == CaseStatus.SIGNED
    open_ = Case.status.in_(OPEN_STATUSES)

    def count(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.sum(sql_case((condition, 1), else_=0))

    rows = session.execute(
        select(
            Case.priority,
            count(or_(signed, and_(open_, Case.due_at <= now))),
            count(and_(signed, Case.closed_at <= Case.due_at)),
            count(and_(open_, Case.due_at > now)),
        )
        .where(scope)
        .group_by(Case.priority)
    ).all()
    found = {CasePriority(p): (int(d or 0), int(m or 0), int(w or 0)) for p, d, m, w in rows}
    result = []
    for priority in CasePriority:  # every priority, in rank order, zeros included
        due, met, pending = found.get(priority, (0, 0, 0))
        result.append(
            Compliance(
                priority=priority,
                due=due,
                met=met,
                missed=due - met,
                pending=pending,
                rate=round(met / due, 4) if due else None,
            )
        )
    return result


def _critical_scope(session: Session, when: Period) -> ColumnElement[bool]:
    """Critical results flagged in the period for the institution and those below it."""
    ids = _institutions(session, when)
    return and_(
        CriticalResult.flagged_at >= when.start,
        CriticalResult.flagged_at < when.end,
        CriticalResult.institution_id.in_(ids) if ids is not None else true(),
    )


def _critical(session: Session, when: Period) -> CriticalFigures:
    query = select(
        CriticalResult.status, CriticalResult.flagged_at, CriticalResult.acknowledged_at
    ).where(_critical_scope(session, when))
    rows = session.execute(query).all()
    waits = [
        _minutes(flagged, acked)
        for status, flagged, acked in rows
        if status == CriticalStatus.ACKNOWLEDGED and acked is not None
    ]
    return CriticalFigures(
        flagged=len(rows),
        acknowledged=len(waits),
        open=sum(1 for status, _, _ in rows if status == CriticalStatus.OPEN),
        ack_minutes=percentiles(waits),
    )


def _readers(
    session: Session, scope: ColumnElement[bool], when: Period, now: datetime
) -> list[ReaderLoad]:
    """Claims and signatures in the period (on cases requested at any time: a backlog read
    this month is this month's work); holdings as of now."""
    claimed = dict(
        session.execute(
            select(CaseEvent.user_id, func.count(func.distinct(CaseEvent.case_id)))
            .join(Case, Case.id == CaseEvent.case_id)
            .where(
                scope,
                CaseEvent.kind == CaseEventKind.CLAIMED,
                CaseEvent.user_id.is_not(None),
                CaseEvent.at >= when.start,
                CaseEvent.at < when.end,
            )
            .group_by(CaseEvent.user_id)
        ).all()
    )
    signed = dict(
        session.execute(
            select(Report.signed_by_id, func.count(Report.id))
            .join(Case, Case.id == Report.case_id)
            .where(
                scope,
                Report.status == ReportStatus.SIGNED,
                Report.signed_at >= when.start,
                Report.signed_at < when.end,
            )
            .group_by(Report.signed_by_id)
        ).all()
    )
    held = dict(
        session.execute(
            select(Case.claim_holder_id, func.count(Case.id))
            .where(
                scope,
                Case.status.in_(OPEN_STATUSES),
                Case.claim_holder_id.is_not(None),
                Case.lease_expires_at > now,
            )
            .group_by(Case.claim_holder_id)
        ).all()
    )
    user_ids = {u for u in (*claimed, *signed, *held) if u is not None}
    if not user_ids:
        return []
    names = dict(session.execute(select(User.id, User.username).where(User.id.in_(user_ids))).all())
    return [
        ReaderLoad(
            user_id=user_id,
            username=names.get(user_id, str(user_id)),
            claimed=int(claimed.get(user_id, 0)),
            signed=int(signed.get(user_id, 0)),
            in_progress=int(held.get(user_id, 0)),
        )
        for user_id in sorted(user_ids, key=lambda u: names.get(u, str(u)))
    ]
