"""Finding studies, always within what the actor may see."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from telehealth.archive.models import Patient, Study
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome, Role
from telehealth.cases.scope import consulted_case_for_study, routed_case_for_study
from telehealth.errors import NotFound


class StudyNotFound(NotFound):
    """No such study, or not one the actor may see (the two are not told apart)."""


@dataclass(frozen=True)
class StudyFilter:
    patient_id: str | None = None
    patient_name: str | None = None  # substring, case-insensitive
    date_from: str | None = None  # YYYYMMDD, inclusive
    date_to: str | None = None
    modality: str | None = None
    institution_id: int | None = None
    accession_number: str | None = None


@dataclass(frozen=True)
class StudyPage:
    total: int
    rows: list[tuple[Study, Patient]]


def _scoped(query: Select, visible: set[int] | None) -> Select:  # type: ignore[type-arg]
    return query if visible is None else query.where(Study.institution_id.in_(visible))


def list_studies(
    session: Session, actor: auth.Actor, filters: StudyFilter, *, limit: int, offset: int
) -> StudyPage:
    """Studies matching the filters that the actor may see, newest first; audited."""
    auth.require(actor, auth.Permission.VIEW_STUDIES)
    visible = auth.visible_institutions(session, actor)
    query = select(Study, Patient).join(Patient, Study.patient_pk == Patient.id)
    query = _scoped(query, visible)
    if filters.patient_id:
        query = query.where(Patient.patient_id == filters.patient_id)
    if filters.patient_name:
        pattern = "%" + filters.patient_name.replace("%", r"\%").replace("_", r"\_") + "%"
        query = query.where(Patient.name.ilike(pattern, escape="\\"))
    if filters.date_from:
        query = query.where(Study.study_date >= filters.date_from)
    if filters.date_to:
        query = query.where(Study.study_date <= filters.date_to)
    if filters.modality:
        # Modalities are stored "CT\SR"; match a whole code, not a substring of another.
        # PostgreSQL's LIKE treats a backslash as its default escape, so the separator must be
        # made literal with an explicit ESCAPE; the code's own wildcards are escaped too.
        m = filters.modality.upper()
        lit = m.replace("!", "!!").replace("%", "!%").replace("_", "!_")
        query = query.where(
            (Study.modalities == m)
            | Study.modalities.like(f"{lit}\\%", escape="!")
            | Study.modalities.like(f"%\\{lit}", escape="!")
            | Study.modalities.like(f"%\\{lit}\\%", escape="!")
        )
    if filters.institution_id is not None:
        query = query.where(Study.institution_id == filters.institution_id)
    if filters.accession_number:
        query = query.where(Study.accession_number == filters.accession_number)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(
        query.order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit).offset(offset)
    ).all()
    auth.audit(
        session,
        actor,
        "study.list",
        object_type="study",
        detail=f"{len(rows)} of {total} studies",
    )
    return StudyPage(total=total, rows=[(s, p) for s, p in rows])


def visible_study(
    session: Session,
    actor: auth.Actor,
    study_instance_uid: str,
    *,
    action: str,
    object_id: str | None = None,
) -> tuple[int, int]:
    """The (primary key, owning institution) of a study the actor may see: one of his
    institutions' (auth.visible_institutions); for a reader, one of a case routed to his
    reading groups; for a consult participant, the study of the consult's case.

    Raises StudyNotFound for a missing study and for one outside the actor's scope (the two
    are not told apart), recording the refusal in the audit trail under `action`.
    """
    visible = auth.visible_institutions(session, actor)
    row = session.execute(
        select(Study.id, Study.institution_id).where(Study.study_instance_uid == study_instance_uid)
    ).first()
    if row is not None and visible is not None and row.institution_id not in visible:
        via = _case_giving_access(session, actor, row.id)
        if via is not None:
            # A partner hospital's reader opens a study only because a case was routed to
            # his group, a consult participant because of the consult; the trail says which.
            how, case_id = via
            auth.audit(
                session,
                actor,
                f"study.access_via_{how}",
                object_type="study",
                object_id=object_id or study_instance_uid,
                detail=f"{action} for case {case_id}",
            )
            return row.id, row.institution_id
    if row is None or (visible is not None and row.institution_id not in visible):
        auth.audit(
            session,
            actor,
            action,
            outcome=AuditOutcome.DENIED if row is not None else AuditOutcome.FAILED,
            object_type="study",
            object_id=object_id or study_instance_uid,
        )
        raise StudyNotFound(f"no study {study_instance_uid}")
    return row.id, row.institution_id


def _case_giving_access(
    session: Session, actor: auth.Actor, study_pk: int
) -> tuple[str, int] | None:
    """("case", id) for a case of the study routed to the reader's groups (or held by him);
    ("consult", id) for a case of the study with a consult the user takes part in."""
    if actor.user_id is None:
        return None
    if actor.role == Role.SPECIALIST:
        case_id = routed_case_for_study(session, actor.user_id, study_pk)
        if case_id is not None:
            return "case", case_id
    case_id = consulted_case_for_study(session, actor.user_id, study_pk)
    return ("consult", case_id) if case_id is not None else None


def get_study(
    session: Session, actor: auth.Actor, study_instance_uid: str
) -> tuple[Study, Patient]:
    """Raises StudyNotFound for a missing study and for one outside the actor's scope."""
    auth.require(actor, auth.Permission.VIEW_STUDIES)
    study_pk, _ = visible_study(session, actor, study_instance_uid, action="study.read")
    study, patient = session.execute(
        select(Study, Patient)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(Study.id == study_pk)
    ).one()
    auth.audit(session, actor, "study.read", object_type="study", object_id=study_instance_uid)
    return study, patient
