"""A case's life outside the queue: requested or made from a stable study, routed, amended,
cancelled, and completed by the reports domain."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Study
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome, Role, User
from telehealth.cases.models import (
    OPEN_STATUSES,
    PRIORITY_RANK,
    Case,
    CaseEventKind,
    CaseOrigin,
    CasePriority,
    CaseService,
    CaseStatus,
    NotificationKind,
    ReadingGroup,
)
from telehealth.cases.service.common import (
    CaseClosed,
    CaseContext,
    CaseExists,
    LeaseExpired,
    announce,
    get_case,
    notify,
    record,
)
from telehealth.cases.service.deadlines import schedule
from telehealth.cases.service.routing import CaseFacts, route, study_facts
from telehealth.cases.service.triage import apply_triage
from telehealth.db import transaction
from telehealth.errors import NotFound

log = logging.getLogger(__name__)


class CaseStudyNotFound(NotFound):
    """No such study, or not one of the actor's institution (the two are not told apart)."""


@dataclass(frozen=True)
class ReadingRequest:
    study_instance_uid: str
    clinical_history: str = ""
    question: str = ""
    priority: CasePriority = CasePriority.ROUTINE
    service: CaseService = CaseService.IMAGING


@dataclass(frozen=True)
class CaseChanges:
    """Fields a clinic may amend on an open case; None leaves a field as it is."""

    clinical_history: str | None = None
    question: str | None = None
    priority: CasePriority | None = None
    service: CaseService | None = None


def _find_open_case(session: Session, study_pk: int) -> Case | None:
    return session.scalar(
        select(Case).where(Case.study_pk == study_pk, Case.status.in_(OPEN_STATUSES))
    )


def request_reading(
    session: Session, actor: auth.Actor, request: ReadingRequest, ctx: CaseContext
) -> Case:
    """Attach a reading request to a study of the actor's institution.

    A study that became a case by itself (not yet claimed) takes the request in; any other
    open case makes this a CaseExists. Raises CaseStudyNotFound, CaseExists, NotPermitted.
    """
    auth.require(actor, auth.Permission.REQUEST_READING)
    study = session.scalar(
        select(Study).where(Study.study_instance_uid == request.study_instance_uid)
    )
    if study is None or (actor.role != Role.ADMIN and study.institution_id != actor.institution_id):
        auth.audit(
            session,
            actor,
            "case.request",
            outcome=AuditOutcome.DENIED if study is not None else AuditOutcome.FAILED,
            object_type="study",
            object_id=request.study_instance_uid,
        )
        raise CaseStudyNotFound(f"no study {request.study_instance_uid}")
    existing = _find_open_case(session, study.id)
    if existing is not None:
        if existing.origin == CaseOrigin.AUTO and existing.claim_holder_id is None:
            return _take_request_into(session, actor, existing, request, ctx)
        raise CaseExists(f"study already has open case {existing.id}")
    case = _create(
        session,
        ctx,
        study,
        origin=CaseOrigin.REQUEST,
        actor=actor,
        clinical_history=request.clinical_history,
        question=request.question,
        priority=request.priority,
        service=request.service,
    )
    auth.audit(
        session,
        actor,
        "case.request",
        object_type="case",
        object_id=str(case.id),
        detail=f"study {study.study_instance_uid}",
    )
    return case


def _create(
    session: Session,
    ctx: CaseContext,
    study: Study,
    *,
    origin: CaseOrigin,
    actor: auth.Actor | None,
    clinical_history: str,
    question: str,
    priority: CasePriority,
    service: CaseService,
    facts: CaseFacts | None = None,
) -> Case:
    now = ctx.now()
    case = Case(
        study_pk=study.id,
        institution_id=study.institution_id,
        origin=origin,
        clinical_history=clinical_history,
        question=question,
        priority=priority,
        priority_rank=PRIORITY_RANK[priority],
        service=service,
        status=CaseStatus.NEW,
        requested_by_id=actor.user_id if actor else None,
        lease_token=0,
        escalation_level=0,
        created_at=now,
        updated_at=now,
    )
    schedule(session, case, now)
    try:
        # The partial unique index keeps one open case per study; two requests at once on
        # PostgreSQL meet here, and the savepoint keeps the caller's transaction usable.
        with session.begin_nested():
            session.add(case)
            session.flush()
    except IntegrityError as exc:
        raise CaseExists("study already has an open case") from exc
    record(
        session,
        case,
        CaseEventKind.CREATED,
        actor,
        now,
        origin=str(origin),
        priority=str(priority),
        service=str(service),
        due_at=case.due_at.isoformat(),
        study_instance_uid=study.study_instance_uid,
    )
    # Before routing: a STAT case may be routed elsewhere.
    if apply_triage(session, ctx, case, actor, caller_routes=True) and facts is not None:
        facts = dataclasses.replace(facts, priority=case.priority)
    route_case(session, ctx, case, actor, facts=facts)
    announce(session, ctx, "created", case)
    return case


def route_case(
    session: Session,
    ctx: CaseContext,
    case: Case,
    actor: auth.Actor | None,
    *,
    facts: CaseFacts | None = None,
) -> None:
    """Send the case to the group its routing rules choose, or to the admins' fallback."""
    now = ctx.now()
    if facts is None:
        facts = study_facts(
            session,
            case.study_pk,
            service=case.service,
            priority=case.priority,
            now=now,
            timezone=ctx.config.timezone,
        )
    routing = route(session, facts)
    case.group_id = routing.group_id
    case.routing_rule_id = routing.rule_id
    if case.status in (CaseStatus.NEW, CaseStatus.QUEUED):
        case.status = CaseStatus.QUEUED if routing.group_id is not None else CaseStatus.NEW
    case.updated_at = now
    group = session.get(ReadingGroup, routing.group_id) if routing.group_id else None
    record(
        session,
        case,
        CaseEventKind.ROUTED,
        actor,
        now,
        group=group.code if group else None,
        rule_id=routing.rule_id,
        trail=routing.trail,
    )
    if group is None:
        log.warning("case %s: no reading group can take it (%s)", case.id, "; ".join(routing.trail))
        for admin_id in session.scalars(
            select(User.id).where(User.role == Role.ADMIN, User.active.is_(True))
        ):
            notify(
                session,
                ctx,
                admin_id,
                NotificationKind.UNROUTED,
                f"case {case.id}: no reading group can take it ({routing.trail[-2:]})",
                case,
            )


def _take_request_into(
    session: Session, actor: auth.Actor, case: Case, request: ReadingRequest, ctx: CaseContext
) -> Case:
    now = ctx.now()
    case.origin = CaseOrigin.REQUEST
    case.requested_by_id = actor.user_id
    case.clinical_history = request.clinical_history
    case.question = request.question
    case.priority = request.priority
    case.priority_rank = PRIORITY_RANK[request.priority]
    case.service = request.service
    case.updated_at = now
    schedule(session, case, now)  # the clinic's request starts the clock it is promised
    record(
        session,
        case,
        CaseEventKind.REQUESTED,
        actor,
        now,
        priority=str(request.priority),
        service=str(request.service),
        due_at=case.due_at.isoformat(),
    )
    apply_triage(session, ctx, case, actor, caller_routes=True)
    route_case(session, ctx, case, actor)
    auth.audit(session, actor, "case.request", object_type="case", object_id=str(case.id))
    announce(session, ctx, "changed", case)
    return case


def open_case_for_stable_study(
    session: Session, study_instance_uid: str, ctx: CaseContext
) -> Case | None:
    """Make a case of a study that became stable without any case (none open, none read).

    Priority and service come from the configured defaults by modality. Studies that only
    hold documents (a report sent back) and studies that had a case before are left alone.
    """
    if not ctx.config.auto_create:
        return None
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None or session.scalar(select(Case.id).where(Case.study_pk == study.id).limit(1)):
        return None
    config = ctx.config
    facts = study_facts(
        session,
        study.id,
        service=config.auto_fallback[1],
        priority=config.auto_fallback[0],
        now=ctx.now(),
        timezone=config.timezone,
    )
    readable = facts.modalities - config.auto_skip_modalities
    if facts.modalities and not readable:
        return None
    # The most urgent default among the study's modalities wins (an ECG in a CT study).
    choices = [config.auto_defaults[m] for m in sorted(readable) if m in config.auto_defaults]
    priority, service = min(
        choices, key=lambda c: PRIORITY_RANK[c[0]], default=config.auto_fallback
    )
    try:
        return _create(
            session,
            ctx,
            study,
            origin=CaseOrigin.AUTO,
            actor=None,
            clinical_history="",
            question="",
            priority=priority,
            service=service,
            facts=dataclasses.replace(facts, priority=priority, service=service),
        )
    except CaseExists:
        return None  # a request arrived meanwhile


def stable_study_listener(
    factory: sessionmaker[Session], ctx: CaseContext
) -> Callable[[dict[str, Any]], None]:
    """The Topic.STUDY_STABLE listener: runs in the archive's watcher thread, so it opens a
    transaction of its own."""

    def listener(payload: dict[str, Any]) -> None:
        with transaction(factory) as session:
            open_case_for_stable_study(session, payload["study_instance_uid"], ctx)

    return listener


def _open_case_to_change(session: Session, actor: auth.Actor, case_id: int, action: str) -> Case:
    auth.require(actor, auth.Permission.REQUEST_READING)
    case = get_case(session, actor, case_id, action=action, for_update=True)
    if case.status not in OPEN_STATUSES:
        raise CaseClosed(f"case {case_id} is {case.status}")
    return case


def update_case(
    session: Session, actor: auth.Actor, case_id: int, changes: CaseChanges, ctx: CaseContext
) -> Case:
    """Amend an open case. A new priority or service restarts the deadline from now and, while
    nobody holds the case, routes it again. Raises CaseNotFound, CaseClosed, NotPermitted."""
    case = _open_case_to_change(session, actor, case_id, "case.update")
    now = ctx.now()
    changed: dict[str, Any] = {}
    for name in ("clinical_history", "question", "priority", "service"):
        value = getattr(changes, name)
        if value is not None and value != getattr(case, name):
            setattr(case, name, value)
            changed[name] = str(value) if name in ("priority", "service") else "changed"
    if not changed:
        return case
    case.updated_at = now
    case.priority_rank = PRIORITY_RANK[case.priority]
    if "priority" in changed or "service" in changed:
        schedule(session, case, now)
        changed["due_at"] = case.due_at.isoformat()
    record(session, case, CaseEventKind.UPDATED, actor, now, **changed)
    raised = apply_triage(session, ctx, case, actor, caller_routes=True)
    if ("priority" in changed or "service" in changed or raised) and case.claim_holder_id is None:
        route_case(session, ctx, case, actor)
    auth.audit(session, actor, "case.update", object_type="case", object_id=str(case.id))
    announce(session, ctx, "changed", case)
    return case


def cancel_case(
    session: Session, actor: auth.Actor, case_id: int, reason: str, ctx: CaseContext
) -> Case:
    """The clinic withdraws its request. Raises CaseNotFound, CaseClosed, NotPermitted."""
    case = _open_case_to_change(session, actor, case_id, "case.cancel")
    now = ctx.now()
    previous_holder = case.claim_holder_id
    case.status = CaseStatus.CANCELLED
    case.claim_holder_id = None
    case.lease_expires_at = None
    case.next_escalation_at = None
    case.closed_at = now
    case.updated_at = now
    record(session, case, CaseEventKind.CANCELLED, actor, now, reason=reason)
    auth.audit(session, actor, "case.cancel", object_type="case", object_id=str(case.id))
    announce(session, ctx, "cancelled", case, previous_claim_holder_id=previous_holder)
    return case


def complete(
    session: Session,
    actor: auth.Actor,
    case_id: int,
    *,
    final: bool,
    lease_token: int | None,
    ctx: CaseContext,
) -> Case:
    """A report was issued on the case: preliminary (→ REPORTED) or signed (→ SIGNED).

    For the reports domain. Only the holder of a live lease may complete, and with
    `lease_token` only under that very claim (fencing): a reader whose lease lapsed and was
    taken over cannot sign over the new holder. Raises CaseNotFound, LeaseExpired.
    """
    auth.require(actor, auth.Permission.CLAIM_CASES)
    case = get_case(session, actor, case_id, action="case.complete")
    now = ctx.now()
    conditions = [
        Case.id == case_id,
        Case.claim_holder_id == actor.user_id,
        Case.lease_expires_at > now,
        Case.status.in_((CaseStatus.CLAIMED, CaseStatus.REPORTED)),
    ]
    if lease_token is not None:
        conditions.append(Case.lease_token == lease_token)
    values: dict[str, Any] = {"updated_at": now, "next_escalation_at": None}
    if final:
        values |= {
            "status": CaseStatus.SIGNED,
            "closed_at": now,
            "claim_holder_id": None,
            "lease_expires_at": None,
        }
    else:
        values["status"] = CaseStatus.REPORTED
    result = session.execute(
        update(Case)
        .where(*conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseExpired(f"you no longer hold case {case_id}; claim it again")
    session.refresh(case)
    record(
        session,
        case,
        CaseEventKind.COMPLETED,
        actor,
        now,
        final=final,
        lease_token=lease_token,
    )
    auth.audit(session, actor, "case.complete", object_type="case", object_id=str(case.id))
    announce(
        session,
        ctx,
        "signed" if final else "reported",
        case,
        previous_claim_holder_id=actor.user_id,
    )
    return case
