"""Reading cases back: the clinic's list, the reader's worklist, one case, its history,
notifications, and who a live connection belongs to. Always scoped, always audited."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased

from telehealth.archive.models import Patient, Study
from telehealth.auth import service as auth
from telehealth.auth.models import Role, User
from telehealth.cases.models import (
    OPEN_STATUSES,
    Case,
    CaseEvent,
    CasePriority,
    CaseService,
    CaseStatus,
    Notification,
    ReadingGroup,
)
from telehealth.cases.service.common import (
    CaseContext,
    get_case,
    member_group_ids,
    visible_cases,
)
from telehealth.cases.service.live import Viewer
from telehealth.cases.service.priors import prior_counts
from telehealth.errors import NotFound
from telehealth.institutions.models import Institution


class NotificationNotFound(NotFound): ...


@dataclass(frozen=True)
class CaseFilter:
    statuses: tuple[CaseStatus, ...] | None = None  # None: every status (worklist: open ones)
    priority: CasePriority | None = None
    service: CaseService | None = None
    modality: str | None = None
    institution_id: int | None = None  # the clinic
    group_id: int | None = None
    unrouted: bool = False  # only cases in no group (the admins' fallback queue)


@dataclass(frozen=True)
class CaseRow:
    """A case with what a list shows about its study and people."""

    case: Case
    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    study_description: str
    modalities: list[str]
    institution_code: str
    institution_name: str
    group_code: str | None
    claim_holder: str | None
    patient_sex: str = ""
    patient_birth_date: str = ""  # DICOM DA, may be empty
    prior_studies: int = 0  # earlier studies of the patient the actor may open


@dataclass(frozen=True)
class CasePage:
    total: int
    rows: list[CaseRow]
    counts: dict[CasePriority, int] = field(default_factory=dict)


_Holder = aliased(User)


def _base(session: Session, actor: auth.Actor) -> Select:  # type: ignore[type-arg]
    query = (
        select(
            Case,
            Study.study_instance_uid,
            Patient.patient_id,
            Patient.name,
            Study.study_date,
            Study.description,
            Study.modalities,
            Institution.code,
            Institution.name,
            ReadingGroup.code,
            _Holder.username,
            Patient.sex,
            Patient.birth_date,
        )
        .join(Study, Study.id == Case.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
        .join(Institution, Institution.id == Case.institution_id)
        .outerjoin(ReadingGroup, ReadingGroup.id == Case.group_id)
        .outerjoin(_Holder, _Holder.id == Case.claim_holder_id)
    )
    clause = visible_cases(session, actor)
    return query if clause is None else query.where(clause)


def _filtered(query: Select, filters: CaseFilter, *, priority: bool = True) -> Select:  # type: ignore[type-arg]
    if filters.statuses is not None:
        query = query.where(Case.status.in_(filters.statuses))
    if priority and filters.priority is not None:
        query = query.where(Case.priority == filters.priority)
    if filters.service is not None:
        query = query.where(Case.service == filters.service)
    if filters.institution_id is not None:
        query = query.where(Case.institution_id == filters.institution_id)
    if filters.group_id is not None:
        query = query.where(Case.group_id == filters.group_id)
    if filters.unrouted:
        query = query.where(Case.group_id.is_(None))
    if filters.modality:
        # Modalities are stored "CT\SR": match a whole code. "!" escapes LIKE wildcards, and
        # an explicit ESCAPE stops PostgreSQL reading the backslash separator as one.
        m = filters.modality.upper()
        lit = m.replace("!", "!!").replace("%", "!%").replace("_", "!_")
        query = query.where(
            (Study.modalities == m)
            | Study.modalities.like(f"{lit}\\%", escape="!")
            | Study.modalities.like(f"%\\{lit}", escape="!")
            | Study.modalities.like(f"%\\{lit}\\%", escape="!")
        )
    return query


def _row(values: tuple, priors: dict[int, int]) -> CaseRow:  # type: ignore[type-arg]
    case, uid, pid, name, date, description, modalities, icode, iname, gcode, holder = values[:11]
    sex, birth_date = values[11:]
    return CaseRow(
        case=case,
        study_instance_uid=uid,
        # Studies without a Patient ID get a generated "~…" key; it means nothing to people.
        patient_id="" if pid.startswith("~") else pid,
        patient_name=name,
        study_date=date,
        study_description=description,
        modalities=[m for m in modalities.split("\\") if m],
        institution_code=icode,
        institution_name=iname,
        group_code=gcode,
        claim_holder=holder,
        patient_sex=sex,
        patient_birth_date=birth_date,
        prior_studies=priors.get(case.study_pk, 0),
    )


def _page(
    session: Session,
    actor: auth.Actor,
    filters: CaseFilter,
    *,
    order: tuple,  # type: ignore[type-arg]
    limit: int,
    offset: int,
) -> CasePage:
    query = _filtered(_base(session, actor), filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(query.order_by(*order).limit(limit).offset(offset)).all()
    # Counts per priority ignore the priority filter: they label the tabs that set it.
    counted = _filtered(_base(session, actor), filters, priority=False).subquery()
    counts = {p: 0 for p in CasePriority}
    for priority, n in session.execute(
        select(counted.c.priority, func.count()).group_by(counted.c.priority)
    ):
        counts[CasePriority(priority)] = n
    priors = prior_counts(session, actor, (r[0].study_pk for r in rows))
    return CasePage(total=total, rows=[_row(tuple(r), priors) for r in rows], counts=counts)


def list_cases(
    session: Session, actor: auth.Actor, filters: CaseFilter, *, limit: int, offset: int
) -> CasePage:
    """The cases the actor may see, newest first (a clinic's requests with their status)."""
    auth.require(actor, auth.Permission.VIEW_CASES)
    page = _page(
        session,
        actor,
        filters,
        order=(Case.created_at.desc(), Case.id.desc()),
        limit=limit,
        offset=offset,
    )
    auth.audit(
        session, actor, "case.list", object_type="case", detail=f"{len(page.rows)} of {page.total}"
    )
    return page


def worklist(
    session: Session, actor: auth.Actor, filters: CaseFilter, *, limit: int, offset: int
) -> CasePage:
    """A reader's queue: open cases routed to his groups, by priority, then due time."""
    auth.require(actor, auth.Permission.READ_CASES)
    if filters.statuses is None:
        filters = CaseFilter(**{**filters.__dict__, "statuses": OPEN_STATUSES})
    page = _page(
        session,
        actor,
        filters,
        order=(Case.priority_rank, Case.due_at, Case.id),
        limit=limit,
        offset=offset,
    )
    auth.audit(
        session,
        actor,
        "worklist.list",
        object_type="case",
        detail=f"{len(page.rows)} of {page.total}",
    )
    return page


def read_case(session: Session, actor: auth.Actor, case_id: int) -> CaseRow:
    """Raises CaseNotFound for a missing case and for one outside the actor's scope."""
    auth.require(actor, auth.Permission.VIEW_CASES)
    get_case(session, actor, case_id, action="case.read")
    row = session.execute(_base(session, actor).where(Case.id == case_id)).one()
    auth.audit(session, actor, "case.read", object_type="case", object_id=str(case_id))
    return _row(tuple(row), prior_counts(session, actor, [row[0].study_pk]))


def case_history(session: Session, actor: auth.Actor, case_id: int) -> list[CaseEvent]:
    """Every change of the case, oldest first. Raises CaseNotFound."""
    auth.require(actor, auth.Permission.VIEW_CASES)
    get_case(session, actor, case_id, action="case.history")
    auth.audit(session, actor, "case.history", object_type="case", object_id=str(case_id))
    return list(
        session.scalars(
            select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(CaseEvent.id)
        )
    )


def list_notifications(
    session: Session, actor: auth.Actor, *, unread_only: bool, limit: int
) -> list[Notification]:
    query = select(Notification).where(Notification.user_id == actor.user_id)
    if unread_only:
        query = query.where(Notification.read_at.is_(None))
    return list(session.scalars(query.order_by(Notification.id.desc()).limit(limit)))


def mark_notification_read(
    session: Session, actor: auth.Actor, notification_id: int, ctx: CaseContext
) -> Notification:
    """Raises NotificationNotFound (also for another user's notification)."""
    row = session.get(Notification, notification_id)
    if row is None or row.user_id != actor.user_id:
        raise NotificationNotFound(f"no notification {notification_id}")
    if row.read_at is None:
        row.read_at = ctx.now()
    return row


def live_viewer(session: Session, actor: auth.Actor) -> Viewer:
    """Who a live worklist connection serves. Raises NotPermitted."""
    auth.require(actor, auth.Permission.VIEW_CASES)
    # VIEW_CASES belongs to people only; an application entity has no user or role.
    assert actor.user_id is not None and actor.role is not None
    auth.audit(session, actor, "worklist.live", object_type="case")
    groups = member_group_ids(session, actor.user_id) if actor.role == Role.SPECIALIST else []
    return Viewer(
        user_id=actor.user_id,
        role=actor.role,
        institution_id=actor.institution_id,
        group_ids=frozenset(groups),
    )
