"""Critical results (危急值): flagged by the reader, acknowledged by a named person of the
requesting clinic (who, when, how), escalated while nobody does.

Escalation steps, counted from the flag: at once the clinic's users; after the first interval
the clinic's admins and the reading group's lead; after the second the consortium's admins
(every admin of an institution above the clinic). Each step moves `next_escalation_at` past
now, so running the sweep twice does nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome, Role, User
from telehealth.cases import service as cases
from telehealth.cases.models import Case, NotificationKind, ReadingGroup
from telehealth.cases.service.common import notify, visible_cases
from telehealth.institutions.models import Institution
from telehealth.reports.models import (
    AcknowledgeMethod,
    CriticalResult,
    CriticalStatus,
    Report,
)
from telehealth.reports.service.common import (
    AlreadyAcknowledged,
    CriticalResultNotFound,
    ReportContext,
    history,
)
from telehealth.reports.service.lifecycle import CriticalFlag

# No kind of their own yet in the cases domain (see common.history): ESCALATED reads right
# for a message that must reach someone now.
_KIND = NotificationKind.CRITICAL_RESULT


@dataclass(frozen=True)
class CriticalStep:
    result_id: int
    level: int
    user_ids: tuple[int, ...]


def flag(
    session: Session, actor: auth.Actor, case_id: int, flag: CriticalFlag, *, rctx: ReportContext
) -> CriticalResult:
    """Flag a critical finding before the report is signed (urgent). Raises CaseNotFound,
    NotPermitted."""
    auth.require(actor, auth.Permission.SIGN_REPORTS)
    case = cases.get_case(session, actor, case_id, action="critical.flag", for_update=True)
    return flag_critical(session, actor, case, flag, rctx)


def flag_critical(
    session: Session,
    actor: auth.Actor,
    case: Case,
    flag: CriticalFlag,
    rctx: ReportContext,
    *,
    report: Report | None = None,
) -> CriticalResult:
    """Record the finding and tell the clinic at once (escalation level 0)."""
    now = rctx.now()
    result = CriticalResult(
        case_id=case.id,
        report_id=report.id if report else None,
        institution_id=case.institution_id,
        category=flag.category,
        note=flag.note,
        status=CriticalStatus.OPEN,
        flagged_by_id=actor.user_id,
        flagged_at=now,
        escalation_level=0,
        next_escalation_at=now + rctx.config.critical_first_escalation,
    )
    session.add(result)
    session.flush()
    history(
        session,
        case,
        actor,
        now,
        "critical.flagged",
        critical_result_id=result.id,
        category=str(flag.category),
    )
    users = _clinic_users(session, case.institution_id)
    _tell(session, rctx, case, result, users, "危急值 critical result")
    history(
        session,
        case,
        None,
        now,
        "critical.notified",
        critical_result_id=result.id,
        level=0,
        user_ids=users,
    )
    auth.audit(
        session, actor, "critical.flag", object_type="critical_result", object_id=str(result.id)
    )
    return result


def acknowledge(
    session: Session,
    actor: auth.Actor,
    result_id: int,
    *,
    method: AcknowledgeMethod,
    note: str,
    rctx: ReportContext,
) -> CriticalResult:
    """A named user of the requesting clinic confirms receipt (who, when, how).

    Raises NotPermitted, CriticalResultNotFound (another institution's too), AlreadyAcknowledged.
    """
    auth.require(actor, auth.Permission.ACKNOWLEDGE_CRITICAL)
    result = session.scalar(
        select(CriticalResult).where(CriticalResult.id == result_id).with_for_update()
    )
    if result is None or result.institution_id != actor.institution_id:
        auth.audit(
            session,
            actor,
            "critical.acknowledge",
            outcome=AuditOutcome.DENIED if result else AuditOutcome.FAILED,
            object_type="critical_result",
            object_id=str(result_id),
        )
        raise CriticalResultNotFound(f"no critical result {result_id}")
    if result.status == CriticalStatus.ACKNOWLEDGED:
        raise AlreadyAcknowledged(f"critical result {result_id} is already acknowledged")
    now = rctx.now()
    result.status = CriticalStatus.ACKNOWLEDGED
    result.acknowledged_by_id = actor.user_id
    result.acknowledged_at = now
    result.acknowledge_method = method
    result.acknowledge_note = note
    result.next_escalation_at = None
    case = session.get(Case, result.case_id)
    assert case is not None
    history(
        session,
        case,
        actor,
        now,
        "critical.acknowledged",
        critical_result_id=result.id,
        method=str(method),
        note=note,
        minutes=round((now - result.flagged_at).total_seconds() / 60, 1),
    )
    auth.audit(
        session,
        actor,
        "critical.acknowledge",
        object_type="critical_result",
        object_id=str(result.id),
        detail=f"{method}: {note}",
    )
    return result


def list_critical(
    session: Session, actor: auth.Actor, *, status: CriticalStatus | None, limit: int = 200
) -> list[CriticalResult]:
    """The critical results of the cases the actor sees, newest first."""
    auth.require(actor, auth.Permission.VIEW_REPORTS)
    query = select(CriticalResult).join(Case, Case.id == CriticalResult.case_id)
    clause = visible_cases(session, actor)
    if clause is not None:
        query = query.where(clause)
    if status is not None:
        query = query.where(CriticalResult.status == status)
    auth.audit(session, actor, "critical.list", object_type="critical_result")
    return list(session.scalars(query.order_by(CriticalResult.id.desc()).limit(limit)))


def check_critical_escalations(
    session: Session, rctx: ReportContext, *, limit: int = 200
) -> list[CriticalStep]:
    """Escalate unacknowledged critical results that are due. Idempotent for a `now`."""
    now = rctx.now()
    due = session.scalars(
        select(CriticalResult)
        .where(
            CriticalResult.status == CriticalStatus.OPEN,
            CriticalResult.next_escalation_at.is_not(None),
            CriticalResult.next_escalation_at <= now,
        )
        .order_by(CriticalResult.next_escalation_at, CriticalResult.id)
        .limit(limit)
        # Several hub processes may sweep; each result is stepped by one of them.
        .with_for_update(skip_locked=True)
    ).all()
    steps: list[CriticalStep] = []
    for result in due:
        steps.append(_escalate(session, rctx, result, now))
    return steps


def _escalate(
    session: Session, rctx: ReportContext, result: CriticalResult, now: datetime
) -> CriticalStep:
    case = session.get(Case, result.case_id)
    assert case is not None
    level = result.escalation_level + 1
    if level == 1:
        users = _admins(session, [case.institution_id])
        group = session.get(ReadingGroup, case.group_id) if case.group_id else None
        if group is not None and group.lead_user_id is not None:
            users.append(group.lead_user_id)
        result.next_escalation_at = result.flagged_at + rctx.config.critical_second_escalation
        if result.next_escalation_at <= now:  # the sweep was late: next step at the next run
            result.next_escalation_at = now
    else:
        users = _admins(session, _ancestors(session, case.institution_id))
        result.next_escalation_at = None  # the top of the chain
    users = sorted(set(users))
    result.escalation_level = level
    minutes = int((now - result.flagged_at).total_seconds() // 60)
    _tell(
        session,
        rctx,
        case,
        result,
        users,
        f"危急值 unacknowledged for {minutes} min (escalation {level})",
    )
    history(
        session,
        case,
        None,
        now,
        "critical.escalated",
        critical_result_id=result.id,
        level=level,
        user_ids=users,
    )
    return CriticalStep(result.id, level, tuple(users))


def _tell(
    session: Session,
    rctx: ReportContext,
    case: Case,
    result: CriticalResult,
    user_ids: list[int],
    headline: str,
) -> None:
    # No patient data in the message: the client opens the case, which is scoped and audited.
    text = f"{headline}: case {case.id}, {result.category} (critical result {result.id})"
    for user_id in user_ids:
        notify(session, rctx.cases, user_id, _KIND, text, case)


def _clinic_users(session: Session, institution_id: int) -> list[int]:
    return list(
        session.scalars(
            select(User.id)
            .where(
                User.institution_id == institution_id,
                User.active.is_(True),
                User.role.in_((Role.TECHNICIAN, Role.ADMIN)),
            )
            .order_by(User.id)
        )
    )


def _admins(session: Session, institution_ids: list[int]) -> list[int]:
    if not institution_ids:
        return []
    return list(
        session.scalars(
            select(User.id)
            .where(
                User.institution_id.in_(institution_ids),
                User.active.is_(True),
                User.role == Role.ADMIN,
            )
            .order_by(User.id)
        )
    )


def _ancestors(session: Session, institution_id: int) -> list[int]:
    """The institutions above the clinic, nearest first (the consortium's lead and up)."""
    found: list[int] = []
    current = session.get(Institution, institution_id)
    while current is not None and current.parent_id is not None and len(found) < 10:
        found.append(current.parent_id)
        current = session.get(Institution, current.parent_id)
    return found
