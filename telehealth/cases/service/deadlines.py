"""Due times from the deadline policy, and the periodic check that escalates late cases.

Each case carries `next_escalation_at`, the moment the check must look at it again: the
warning point, then the deadline, then (after offering it up) one repeat interval later.
A step moves that moment past `now`, so running the check twice does nothing twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.cases.models import (
    OPEN_STATUSES,
    Case,
    CaseEventKind,
    CasePriority,
    CaseService,
    CaseStatus,
    DeadlinePolicy,
    NotificationKind,
    ReadingGroup,
)
from telehealth.cases.service.common import CaseContext, announce, notify, record
from telehealth.cases.service.routing import next_group_up
from telehealth.db import transaction

log = logging.getLogger(__name__)

# Used when the deadline_policies table has no row for a priority (minutes).
DEFAULT_DEADLINES: dict[tuple[CasePriority, CaseService | None], int] = {
    (CasePriority.STAT, CaseService.ECG): 10,
    (CasePriority.STAT, None): 30,
    (CasePriority.URGENT, None): 120,
    (CasePriority.ROUTINE, None): 24 * 60,
}
DEFAULT_WARN_FRACTION = 0.75


@dataclass(frozen=True)
class Deadline:
    minutes: int
    warn_fraction: float


def deadline_for(session: Session, priority: CasePriority, service: CaseService) -> Deadline:
    """The policy for (priority, service), else (priority, any service), else the default."""
    rows = {
        p.service: p
        for p in session.scalars(
            select(DeadlinePolicy).where(
                DeadlinePolicy.priority == priority,
                or_(DeadlinePolicy.service == service, DeadlinePolicy.service.is_(None)),
            )
        )
    }
    policy = rows.get(service) or rows.get(None)
    if policy is not None:
        return Deadline(policy.minutes, policy.warn_fraction)
    minutes = DEFAULT_DEADLINES.get((priority, service)) or DEFAULT_DEADLINES[(priority, None)]
    return Deadline(minutes, DEFAULT_WARN_FRACTION)


def schedule(session: Session, case: Case, start: datetime) -> Deadline:
    """Set the due time counted from `start` (the request) and restart the escalation steps."""
    deadline = deadline_for(session, case.priority, case.service)
    span = timedelta(minutes=deadline.minutes)
    case.due_at = start + span
    case.warned_at = None
    case.overdue_at = None
    fraction = min(max(deadline.warn_fraction, 0.0), 1.0)
    case.next_escalation_at = start + span * fraction
    return deadline


@dataclass(frozen=True)
class EscalationStep:
    case_id: int
    kind: CaseEventKind
    group_id: int | None


def check_escalations(
    session: Session, ctx: CaseContext, *, limit: int = 200
) -> list[EscalationStep]:
    """Warn the group lead of cases near their deadline; offer overdue unclaimed cases to
    the next group up. Idempotent for a given `ctx.now()`."""
    now = ctx.now()
    cases = session.scalars(
        select(Case)
        .where(
            Case.status.in_(OPEN_STATUSES),
            Case.next_escalation_at.is_not(None),
            Case.next_escalation_at <= now,
        )
        .order_by(Case.next_escalation_at, Case.id)
        .limit(limit)
        # Several hub processes may run the check; each case is stepped by one of them.
        .with_for_update(skip_locked=True)
    ).all()
    steps: list[EscalationStep] = []
    for case in cases:
        steps += _step(session, ctx, case, now)
    return steps


def _lead(session: Session, group_id: int | None) -> tuple[ReadingGroup | None, int | None]:
    group = session.get(ReadingGroup, group_id) if group_id is not None else None
    return group, group.lead_user_id if group else None


def _step(session: Session, ctx: CaseContext, case: Case, now: datetime) -> list[EscalationStep]:
    if case.status == CaseStatus.REPORTED:
        case.next_escalation_at = None  # a preliminary report answers the deadline
        return []
    steps: list[EscalationStep] = []
    group, lead = _lead(session, case.group_id)
    if case.warned_at is None:
        case.warned_at = now
        record(
            session,
            case,
            CaseEventKind.WARNED,
            None,
            now,
            group=group.code if group else None,
            lead_user_id=lead,
            due_at=case.due_at.isoformat(),
        )
        if lead is not None:
            notify(
                session,
                ctx,
                lead,
                NotificationKind.DEADLINE_WARNING,
                f"case {case.id} ({case.priority} {case.service}) is due at "
                f"{case.due_at.astimezone(ctx.config.timezone):%H:%M}",
                case,
            )
        announce(session, ctx, "warning", case)
        steps.append(EscalationStep(case.id, CaseEventKind.WARNED, case.group_id))
        if now < case.due_at:
            case.next_escalation_at = case.due_at
            return steps
    held = (
        case.claim_holder_id is not None
        and case.lease_expires_at is not None
        and case.lease_expires_at > now
    )
    first_overdue = case.overdue_at is None
    if first_overdue:
        case.overdue_at = now
    if held:
        # Being read, only late: say so once, and look again when the lease could lapse.
        assert case.lease_expires_at is not None
        case.next_escalation_at = case.lease_expires_at
        if first_overdue:
            record(session, case, CaseEventKind.OVERDUE, None, now, claimed=True)
            if lead is not None:
                notify(
                    session,
                    ctx,
                    lead,
                    NotificationKind.OVERDUE,
                    f"case {case.id} is overdue and still being read",
                    case,
                )
            announce(session, ctx, "overdue", case)
            steps.append(EscalationStep(case.id, CaseEventKind.OVERDUE, case.group_id))
        return steps
    up = next_group_up(
        session, group_id=case.group_id, institution_id=case.institution_id, service=case.service
    )
    if up is None:
        case.next_escalation_at = None
        record(
            session,
            case,
            CaseEventKind.ESCALATION_EXHAUSTED,
            None,
            now,
            group=group.code if group else None,
        )
        if lead is not None:
            notify(
                session,
                ctx,
                lead,
                NotificationKind.OVERDUE,
                f"case {case.id} is overdue and no group above can take it",
                case,
            )
        announce(session, ctx, "overdue", case)
        steps.append(EscalationStep(case.id, CaseEventKind.ESCALATION_EXHAUSTED, case.group_id))
        return steps
    previous = case.group_id
    case.group_id = up.id
    case.escalation_level += 1
    case.status = CaseStatus.QUEUED
    case.claim_holder_id = None  # any lease here has lapsed (`held` is false)
    case.lease_expires_at = None
    case.updated_at = now
    case.next_escalation_at = now + ctx.config.escalation_repeat
    record(
        session,
        case,
        CaseEventKind.ESCALATED,
        None,
        now,
        from_group=group.code if group else None,
        to_group=up.code,
        level=case.escalation_level,
    )
    if up.lead_user_id is not None:
        notify(
            session,
            ctx,
            up.lead_user_id,
            NotificationKind.ESCALATED,
            f"overdue case {case.id} ({case.priority} {case.service}) offered to {up.name}",
            case,
        )
    announce(session, ctx, "escalated", case, previous_group_id=previous)
    steps.append(EscalationStep(case.id, CaseEventKind.ESCALATED, up.id))
    return steps


class Escalator:
    """A background thread that sweeps lapsed leases and runs the escalation check."""

    def __init__(
        self, factory: sessionmaker[Session], ctx: CaseContext, *, interval: float = 15.0
    ) -> None:
        self.factory = factory
        self.ctx = ctx
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Other domains' sweeps on the same clock (critical results, report documents); each
        # opens its own transactions, and one failing holds back neither the cases nor others.
        self.hooks: list[Callable[[], object]] = []

    def run_once(self) -> list[EscalationStep]:
        from telehealth.cases.service.queue import expire_leases

        with transaction(self.factory) as session:
            expire_leases(session, self.ctx)
        with transaction(self.factory) as session:
            steps = check_escalations(session, self.ctx)
        for hook in self.hooks:
            try:
                hook()
            except Exception:
                log.exception("escalation hook %r failed; will try again", hook)
        return steps

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="case-escalation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                log.exception("case escalation check failed; will try again")
