"""The summary's figures split by clinic and by reader: what the dashboard draws side by side.

A clinic's row covers the cases it requested in the period; a reader's row covers the reports
he signed and the critical results he flagged in the period (the same rule as reader load:
a backlog read this month is this month's work).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from telehealth.auth.models import User
from telehealth.cases.models import OPEN_STATUSES, Case, CaseStatus
from telehealth.clock import as_utc
from telehealth.institutions.models import Institution
from telehealth.metrics.ranks import percentile
from telehealth.reports.models import CriticalResult, CriticalStatus, Report, ReportStatus


@dataclass(frozen=True)
class Share:
    """Deadline compliance of decided cases: signed, or open and past due."""

    due: int
    met: int
    rate: float | None  # met / due


@dataclass(frozen=True)
class Acknowledgement:
    flagged: int
    acknowledged: int
    rate: float | None  # acknowledged / flagged
    p50: float | None  # minutes from flag to acknowledgement
    p90: float | None


@dataclass(frozen=True)
class Turn:
    count: int
    p50: float | None  # minutes, request to signature
    p90: float | None


@dataclass(frozen=True)
class ClinicFigures:
    institution_id: int
    institution_code: str
    institution_name: str
    cases: int
    signed: int
    turnaround: Turn
    compliance: Share
    critical: Acknowledgement


@dataclass(frozen=True)
class ReaderFigures:
    user_id: int
    username: str
    display_name: str
    signed: int
    turnaround: Turn
    compliance: Share
    critical: Acknowledgement


def _minutes(start: datetime, end: datetime) -> float:
    return round((as_utc(end) - as_utc(start)).total_seconds() / 60, 3)


def _turn(minutes: list[float]) -> Turn:
    return Turn(len(minutes), percentile(minutes, 0.5), percentile(minutes, 0.9))


def _share(due: int, met: int) -> Share:
    return Share(due, met, round(met / due, 4) if due else None)


CriticalRow = tuple[CriticalStatus, datetime, datetime | None]  # status, flagged, acknowledged


def _acknowledgement(rows: list[CriticalRow]) -> Acknowledgement:
    waits = [
        _minutes(flagged, acked)
        for status, flagged, acked in rows
        if status == CriticalStatus.ACKNOWLEDGED and acked is not None
    ]
    return Acknowledgement(
        flagged=len(rows),
        acknowledged=len(waits),
        rate=round(len(waits) / len(rows), 4) if rows else None,
        p50=percentile(waits, 0.5),
        p90=percentile(waits, 0.9),
    )


def _critical_by(
    session: Session, key: InstrumentedAttribute[int], scope: ColumnElement[bool]
) -> dict[int, list[CriticalRow]]:
    """The critical results in scope, grouped by `key` (the clinic, or who flagged them)."""
    grouped: dict[int, list[CriticalRow]] = {}
    for owner, status, flagged, acked in session.execute(
        select(
            key,
            CriticalResult.status,
            CriticalResult.flagged_at,
            CriticalResult.acknowledged_at,
        ).where(scope)
    ):
        grouped.setdefault(owner, []).append((CriticalStatus(status), flagged, acked))
    return grouped


def by_clinic(
    session: Session,
    case_scope: ColumnElement[bool],
    critical_scope: ColumnElement[bool],
    now: datetime,
) -> list[ClinicFigures]:
    """One row per requesting institution with cases or critical results in the period."""
    cases: dict[int, list[tuple[datetime, datetime | None, CaseStatus, datetime]]] = {}
    for inst_id, created, closed, case_status, due in session.execute(
        select(
            Case.institution_id, Case.created_at, Case.closed_at, Case.status, Case.due_at
        ).where(case_scope)
    ):
        cases.setdefault(inst_id, []).append((created, closed, CaseStatus(case_status), due))
    critical = _critical_by(session, CriticalResult.institution_id, critical_scope)
    ids = set(cases) | set(critical)
    if not ids:
        return []
    names = {i.id: i for i in session.scalars(select(Institution).where(Institution.id.in_(ids)))}
    result = []
    for inst_id in sorted(ids, key=lambda i: names[i].code):
        rows = cases.get(inst_id, [])
        signed = [(c, closed, d) for c, closed, s, d in rows if s == CaseStatus.SIGNED and closed]
        overdue = [1 for _, _, s, d in rows if s in OPEN_STATUSES and as_utc(d) <= as_utc(now)]
        met = sum(1 for _, closed, d in signed if as_utc(closed) <= as_utc(d))
        result.append(
            ClinicFigures(
                institution_id=inst_id,
                institution_code=names[inst_id].code,
                institution_name=names[inst_id].name,
                cases=len(rows),
                signed=len(signed),
                turnaround=_turn([_minutes(c, closed) for c, closed, _ in signed]),
                compliance=_share(len(signed) + len(overdue), met),
                critical=_acknowledgement(critical.get(inst_id, [])),
            )
        )
    return result


def by_reader(
    session: Session,
    institution_scope: ColumnElement[bool],
    critical_scope: ColumnElement[bool],
    start: datetime,
    end: datetime,
) -> list[ReaderFigures]:
    """One row per reader who signed a report or flagged a critical result in the period."""
    signed: dict[int, list[tuple[datetime, datetime, datetime]]] = {}
    for user_id, created, signed_at, due in session.execute(
        select(Report.signed_by_id, Case.created_at, Report.signed_at, Case.due_at)
        .join(Case, Case.id == Report.case_id)
        .where(
            institution_scope,
            Report.status == ReportStatus.SIGNED,
            and_(Report.signed_at >= start, Report.signed_at < end),
            Report.signed_by_id.is_not(None),
        )
    ):
        if user_id is not None and signed_at is not None:  # both hold for a signed report
            signed.setdefault(user_id, []).append((created, signed_at, due))
    critical = _critical_by(session, CriticalResult.flagged_by_id, critical_scope)
    ids = set(signed) | set(critical)
    if not ids:
        return []
    users = {u.id: u for u in session.scalars(select(User).where(User.id.in_(ids)))}
    result = []
    for user_id in sorted(ids, key=lambda u: users[u].username):
        rows = signed.get(user_id, [])
        met = sum(1 for _, at, due in rows if as_utc(at) <= as_utc(due))
        result.append(
            ReaderFigures(
                user_id=user_id,
                username=users[user_id].username,
                display_name=users[user_id].display_name,
                signed=len(rows),
                turnaround=_turn([_minutes(created, at) for created, at, _ in rows]),
                compliance=_share(len(rows), met),
                critical=_acknowledgement(critical.get(user_id, [])),
            )
        )
    return result
