"""What every part of the cases service shares: errors, settings, scope, history, messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Executable, Integer, Select, bindparam, false, insert, select
from sqlalchemy.orm import Session

from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome, Role, User
from telehealth.cases.models import (
    Case,
    CaseEvent,
    CaseEventKind,
    CasePriority,
    CaseService,
    Notification,
    NotificationKind,
    ReadingGroupMember,
)
from telehealth.cases.scope import reader_cases
from telehealth.cases.service.live import publish_after_commit
from telehealth.clock import SYSTEM_CLOCK, Clock
from telehealth.db import UTCDateTime
from telehealth.ecg.service.triage import TriageThresholds
from telehealth.errors import Conflict, Invalid, NotFound

if TYPE_CHECKING:
    from telehealth.config import Settings
    from telehealth.events import EventBus

# --- errors -----------------------------------------------------------------------------------


class CaseNotFound(NotFound):
    """No such case, or not one the actor may see (the two are not told apart)."""


class CaseExists(Conflict):
    """The study already has an open case."""


class CaseClosed(Conflict):
    """The case is signed or cancelled; it no longer changes."""


class NotClaimable(Conflict):
    """The case is in no state a reader can claim (in no group, signed, cancelled)."""


class ClaimHeld(Conflict):
    """Another reader holds an unexpired lease on this case."""


class LeaseExpired(Conflict):
    """The actor's lease lapsed or was taken over; the case must be claimed again."""


class GroupNotFound(NotFound): ...


class GroupExists(Conflict): ...


class GroupInUse(Conflict):
    """A rule or a case still names the group; disable it instead."""


class RuleNotFound(NotFound): ...


class InvalidRouting(Invalid):
    """A routing rule, group, deadline or routing file that cannot be used as given."""


# --- settings ---------------------------------------------------------------------------------


_AUTO_DEFAULTS: Mapping[str, tuple[CasePriority, CaseService]] = MappingProxyType(
    {
        "ECG": (CasePriority.URGENT, CaseService.ECG),
        "US": (CasePriority.ROUTINE, CaseService.ULTRASOUND),
    }
)


@dataclass(frozen=True)
class CaseConfig:
    """The cases' settings, read once from `Settings` (TELEHEALTH_CASE_*)."""

    lease: timedelta = timedelta(minutes=5)
    # An admin's assignment reaches a reader who may not be at the screen yet.
    assign_lease: timedelta = timedelta(minutes=30)
    # After offering a case up, wait this long before offering it one level higher again.
    escalation_repeat: timedelta = timedelta(minutes=30)
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    auto_create: bool = True
    # Modality of a study that arrives without a request → (priority, service).
    auto_defaults: Mapping[str, tuple[CasePriority, CaseService]] = field(
        default_factory=lambda: _AUTO_DEFAULTS
    )
    auto_fallback: tuple[CasePriority, CaseService] = (CasePriority.ROUTINE, CaseService.IMAGING)
    # Studies holding nothing but these are not read (a report sent back, a key object).
    auto_skip_modalities: frozenset[str] = frozenset({"SR", "KO", "PR", "DOC"})
    # ECG triage (TELEHEALTH_ECG_TRIAGE_*): which measurements and request words raise a case.
    triage: TriageThresholds = field(default_factory=TriageThresholds)

    @classmethod
    def from_settings(cls, settings: Settings) -> CaseConfig:
        defaults: dict[str, tuple[CasePriority, CaseService]] = {}
        fallback = cls.auto_fallback
        for modality, value in settings.case_auto_defaults.items():
            priority, _, service = value.partition("/")
            pair = (CasePriority(priority.strip()), CaseService(service.strip() or "imaging"))
            if modality == "*":
                fallback = pair
            else:
                defaults[modality.upper()] = pair
        return cls(
            lease=timedelta(seconds=settings.case_lease_seconds),
            assign_lease=timedelta(seconds=settings.case_assign_lease_seconds),
            escalation_repeat=timedelta(minutes=settings.case_escalation_repeat_minutes),
            timezone=ZoneInfo(settings.case_timezone),
            auto_create=settings.case_auto_create,
            auto_defaults=MappingProxyType(defaults),
            auto_fallback=fallback,
            auto_skip_modalities=frozenset(m.upper() for m in settings.case_auto_skip_modalities),
            triage=TriageThresholds.from_settings(settings),
        )


@dataclass(frozen=True)
class CaseContext:
    """Time, the event bus and settings: what a case operation needs beyond the session."""

    clock: Clock = SYSTEM_CLOCK
    bus: EventBus | None = None
    config: CaseConfig = field(default_factory=CaseConfig)

    def now(self) -> datetime:
        return self.clock.now()


DEFAULT_CONTEXT = CaseContext()

# --- scope ------------------------------------------------------------------------------------


def member_group_ids(session: Session, user_id: int | None) -> list[int]:
    if user_id is None:
        return []
    return list(
        session.scalars(
            select(ReadingGroupMember.group_id).where(ReadingGroupMember.user_id == user_id)
        )
    )


def visible_cases(session: Session, actor: auth.Actor) -> ColumnElement[bool] | None:
    """A WHERE clause for the cases the actor may see; None means all (an admin).

    A clinic sees the cases of its own studies; a reader those routed to his groups, and the
    one he holds (an admin may assign him a case of another group).
    """
    kind = _scope_kind(actor)
    if kind == "institution":
        return Case.institution_id == actor.institution_id
    if kind == "reader":
        assert actor.user_id is not None
        return reader_cases(actor.user_id)
    return None if kind == "all" else false()


_ScopeKind = Literal["all", "institution", "reader", "none"]


def _scope_kind(actor: auth.Actor) -> _ScopeKind:
    """Which cases the actor may see, by role (visible_cases, ScopedStatements)."""
    if actor.role == Role.ADMIN:
        return "all"
    if actor.role == Role.TECHNICIAN:
        return "institution"
    if actor.role == Role.SPECIALIST and actor.user_id is not None:
        return "reader"
    return "none"


# Bound parameters of the statements built once below: building a statement costs
# SQLAlchemy more than the database takes to run one, and a claim cycle runs several.
CASE_ID = bindparam("case_id", type_=Integer)
USER_ID = bindparam("user_id", type_=Integer)
INSTITUTION_ID = bindparam("institution_id", type_=Integer)
NOW = bindparam("now", type_=UTCDateTime())


def _bound_scope(kind: _ScopeKind) -> ColumnElement[bool] | None:
    """visible_cases with bound parameters (USER_ID, INSTITUTION_ID) in place of values."""
    if kind == "institution":
        return Case.institution_id == INSTITUTION_ID
    if kind == "reader":
        # reader_cases takes the id; a bound parameter stands in for it here.
        return reader_cases(cast(int, USER_ID))
    return None if kind == "all" else false()


class ScopedStatements:
    """A statement limited to the cases the actor may see: one per kind of actor, built on
    first use and kept; run it with scope_params(actor, ...)."""

    def __init__(self, build: Callable[[ColumnElement[bool] | None], Executable]) -> None:
        self._build = build
        self._built: dict[_ScopeKind, Executable] = {}

    def __call__(self, actor: auth.Actor) -> Executable:
        kind = _scope_kind(actor)
        statement = self._built.get(kind)
        if statement is None:
            statement = self._built[kind] = self._build(_bound_scope(kind))
        return statement


def scope_params(actor: auth.Actor, **params: Any) -> dict[str, Any]:
    """The parameters of a ScopedStatements statement for the actor, and `params`."""
    return {"user_id": actor.user_id, "institution_id": actor.institution_id, **params}


def _case_query(scope: ColumnElement[bool] | None, *, for_update: bool) -> Select[Any]:
    query = select(Case).where(Case.id == CASE_ID)
    if scope is not None:
        query = query.where(scope)
    return query.with_for_update() if for_update else query


_GET_CASE = ScopedStatements(lambda scope: _case_query(scope, for_update=False))
_GET_CASE_FOR_UPDATE = ScopedStatements(lambda scope: _case_query(scope, for_update=True))


def get_case(
    session: Session, actor: auth.Actor, case_id: int, *, action: str, for_update: bool = False
) -> Case:
    """A case the actor may see. Raises CaseNotFound for a missing or out-of-scope case,
    recording the refusal in the audit trail under `action`."""
    query = (_GET_CASE_FOR_UPDATE if for_update else _GET_CASE)(actor)
    case = session.scalar(query, scope_params(actor, case_id=case_id))
    if case is None:
        exists = session.scalar(select(Case.id).where(Case.id == case_id)) is not None
        auth.audit(
            session,
            actor,
            action,
            outcome=AuditOutcome.DENIED if exists else AuditOutcome.FAILED,
            object_type="case",
            object_id=str(case_id),
        )
        raise CaseNotFound(f"no case {case_id}")
    return case


# --- history, notifications, live messages ----------------------------------------------------


class CaseFields(Protocol):
    """What history rows and live messages read of a case: a Case, or a row RETURNING these
    columns (a claim takes no ORM object)."""

    @property
    def id(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def priority(self) -> str: ...
    @property
    def service(self) -> str: ...
    @property
    def group_id(self) -> int | None: ...
    @property
    def institution_id(self) -> int: ...
    @property
    def claim_holder_id(self) -> int | None: ...
    @property
    def due_at(self) -> datetime: ...


# A plain INSERT, run at once: an ORM object would wait for the flush at commit, and the
# unit of work costs more than the statement.
_INSERT_EVENT = insert(CaseEvent)


def record(
    session: Session,
    case: CaseFields,
    kind: CaseEventKind,
    actor: auth.Actor | None,
    at: datetime,
    **detail: Any,
) -> None:
    """Append one row to the case's history (the case must be in the database already)."""
    session.connection().execute(
        _INSERT_EVENT,
        {
            "case_id": case.id,
            "at": at,
            "kind": kind,
            "actor": actor.name if actor else "system",
            "user_id": actor.user_id if actor else None,
            "detail": detail,
        },
    )


def announce(session: Session, ctx: CaseContext, kind: str, case: CaseFields, **extra: Any) -> None:
    """Tell live clients that a case changed, once the transaction commits.

    Messages carry no patient data: a client refetches its worklist, which is scoped and
    audited.
    """
    if ctx.bus is None:  # nobody to tell: spare building the message
        return
    message: dict[str, Any] = {
        "type": f"case.{kind}",
        "case_id": case.id,
        "status": str(case.status),
        "priority": str(case.priority),
        "service": str(case.service),
        "group_id": case.group_id,
        "institution_id": case.institution_id,
        "claim_holder_id": case.claim_holder_id,
        "due_at": case.due_at.isoformat(),
        "at": ctx.now().isoformat(),
    }
    message.update(extra)
    publish_after_commit(session, ctx.bus, message)


def notify(
    session: Session,
    ctx: CaseContext,
    user_id: int,
    kind: NotificationKind,
    text: str,
    case: Case | None = None,
) -> Notification:
    """Store a notification for one user and push it to him live after commit."""
    row = Notification(
        user_id=user_id,
        case_id=case.id if case else None,
        kind=kind,
        message=text,
        created_at=ctx.now(),
    )
    session.add(row)
    session.flush()
    publish_after_commit(
        session,
        ctx.bus,
        {
            "type": "notification",
            "notification_id": row.id,
            "user_id": user_id,
            "kind": str(kind),
            "case_id": row.case_id,
            "message": text,
            "at": row.created_at.isoformat(),
        },
    )
    return row


def username(session: Session, user_id: int | None) -> str | None:
    if user_id is None:
        return None
    return session.scalar(select(User.username).where(User.id == user_id))
