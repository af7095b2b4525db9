"""ECG triage on cases: measurements and the request's words raise a case's priority.

The rules live in the ECG domain (`telehealth.ecg.service.triage`); this module applies
their answer to a case: a higher priority, a due time no later than that priority allows
from now, the reason shown in the queue. It never lowers a priority, so it may run as often
as anything changes (creation, a request taken in, an amendment, new measurements).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Instance, Series, Study
from telehealth.auth import service as auth
from telehealth.cases.models import (
    OPEN_STATUSES,
    PRIORITY_RANK,
    Case,
    CaseEventKind,
    CasePriority,
    CaseService,
)
from telehealth.cases.service.common import CaseContext, announce, record
from telehealth.cases.service.deadlines import deadline_for, schedule
from telehealth.db import transaction
from telehealth.ecg.service.dicom_waveform import ECG_SOP_CLASSES
from telehealth.ecg.service.results import triage_for_study
from telehealth.ecg.service.triage import TriageReason, request_flags_from_text

log = logging.getLogger(__name__)

# The queue shows the reason on one line; the full list is in the TRIAGED event.
TRIAGE_REASON_MAX = 300


def _is_ecg(session: Session, case: Case) -> bool:
    """An ECG case, or a case of a study holding an ECG (an ECG sent with a CT request)."""
    if case.service == CaseService.ECG:
        return True
    found = session.scalar(
        select(Instance.id)
        .join(Series, Instance.series_pk == Series.id)
        .where(
            Series.study_pk == case.study_pk,
            or_(Instance.sop_class_uid.in_(list(ECG_SOP_CLASSES)), Series.modality == "ECG"),
        )
        .limit(1)
    )
    return found is not None


def _reason_text(reasons: list[TriageReason]) -> str:
    text = "; ".join(r.message for r in reasons)
    if len(text) > TRIAGE_REASON_MAX:
        text = text[: TRIAGE_REASON_MAX - 1] + "…"
    return text


def apply_triage(
    session: Session,
    ctx: CaseContext,
    case: Case,
    actor: auth.Actor | None,
    *,
    caller_routes: bool = False,
) -> bool:
    """Raise an open ECG case's priority to its most urgent triage reason; True if raised.

    Flags come from the case's clinical history and question, reasons from every measured
    ECG of its study, thresholds from `ctx.config.triage`. The due time becomes the earlier
    of the current one and what the new priority gives from now. Never lowers a priority;
    running it again changes nothing. With `caller_routes` the caller routes and announces
    the case itself (it is being created or amended); otherwise a case nobody holds is
    routed again (a STAT case may go to another group) and live clients are told.
    """
    if case.status not in OPEN_STATUSES or not _is_ecg(session, case):
        return False
    study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == case.study_pk))
    if study_uid is None:
        return False
    flags = {str(f) for f in request_flags_from_text(case.clinical_history, case.question)}
    reasons = triage_for_study(session, study_uid, flags, ctx.config.triage)
    if not reasons:
        return False
    priority = CasePriority(reasons[0].priority)  # most urgent first
    if PRIORITY_RANK[priority] >= case.priority_rank:
        return False
    now = ctx.now()
    previous = case.priority
    previous_group = case.group_id
    case.priority = priority
    case.priority_rank = PRIORITY_RANK[priority]
    case.triage_reason = _reason_text(reasons)
    case.updated_at = now
    deadline = deadline_for(session, priority, case.service)
    # Never later than promised: a routine case raised at 23 h keeps its remaining hour if
    # that is shorter than the STAT deadline counted from now.
    if now + timedelta(minutes=deadline.minutes) < case.due_at:
        schedule(session, case, now)
    record(
        session,
        case,
        CaseEventKind.TRIAGED,
        actor,
        now,
        priority=str(priority),
        previous_priority=str(previous),
        due_at=case.due_at.isoformat(),
        reasons=[r.as_dict() for r in reasons],
    )
    log.info("case %s raised %s → %s: %s", case.id, previous, priority, case.triage_reason)
    if caller_routes:
        return True
    if case.claim_holder_id is None:
        # requests imports this module: import here to keep the two free of a cycle.
        from telehealth.cases.service.requests import route_case

        route_case(session, ctx, case, actor)
    # No reason text in the message: it is clinical; clients refetch the scoped worklist.
    announce(session, ctx, "triaged", case, previous_group_id=previous_group)
    return True


def triage_study(session: Session, ctx: CaseContext, study_instance_uid: str) -> Case | None:
    """Apply triage to the study's open case, if it has one; the case if it was raised."""
    case = session.scalar(
        select(Case)
        .join(Study, Study.id == Case.study_pk)
        .where(Study.study_instance_uid == study_instance_uid, Case.status.in_(OPEN_STATUSES))
        .with_for_update(of=Case)
    )
    if case is None:
        return None  # no case yet: triage runs when the stable study becomes one
    return case if apply_triage(session, ctx, case, None) else None


def ecg_measured_listener(
    factory: sessionmaker[Session], ctx: CaseContext
) -> Callable[[dict[str, Any]], None]:
    """The Topic.ECG_MEASURED listener: runs in the ECG worker's thread, so it opens a
    transaction of its own."""

    def listener(payload: dict[str, Any]) -> None:
        with transaction(factory) as session:
            triage_study(session, ctx, payload["study_instance_uid"])

    return listener
