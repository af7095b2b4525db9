"""Prior studies: the same patient's earlier studies, which a reader compares with the new one.

A patient is (issuing institution, Patient ID), so two clinics' patient "0001" never mix.
Only studies the actor may open count: his institutions' (auth.visible_institutions) or, for
a reader, studies of cases routed to his groups, the same rule as archive.visible_study.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from telehealth.archive.models import Study
from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.cases.models import Case, CaseStatus
from telehealth.cases.scope import reader_cases
from telehealth.cases.service.common import get_case, visible_cases
from telehealth.institutions.models import Institution


@dataclass(frozen=True)
class PriorStudy:
    study_instance_uid: str
    study_date: str
    study_time: str
    study_description: str
    modalities: list[str]
    num_series: int
    num_instances: int
    institution_name: str
    case_id: int | None  # the reader's case of that study, if he has one


def visible_studies(session: Session, actor: auth.Actor) -> ColumnElement[bool] | None:
    """WHERE clause on Study for what the actor may open; None means all (an admin)."""
    visible = auth.visible_institutions(session, actor)
    if visible is None:
        return None
    clause: ColumnElement[bool] = Study.institution_id.in_(visible)
    if actor.role == Role.SPECIALIST and actor.user_id is not None:
        routed = select(Case.study_pk).where(
            Case.status != CaseStatus.CANCELLED, reader_cases(actor.user_id)
        )
        clause = or_(clause, Study.id.in_(routed))
    return clause


def _order(study_date: str, received: datetime, study_pk: int) -> tuple[str, datetime, int]:
    """Earlier means an earlier study date; a study without one counts from its arrival."""
    return (study_date or received.strftime("%Y%m%d"), received, study_pk)


def prior_counts(session: Session, actor: auth.Actor, study_pks: Iterable[int]) -> dict[int, int]:
    """How many earlier visible studies each study's patient has, in two queries for a page."""
    wanted = set(study_pks)
    if not wanted:
        return {}
    patient_of = dict(
        session.execute(select(Study.id, Study.patient_pk).where(Study.id.in_(wanted))).all()
    )
    query = select(Study.id, Study.patient_pk, Study.study_date, Study.first_received_at).where(
        Study.patient_pk.in_(set(patient_of.values()))
    )
    clause = visible_studies(session, actor)
    if clause is not None:
        query = query.where(clause)
    by_patient: dict[int, list[tuple[str, datetime, int]]] = defaultdict(list)
    keys: dict[int, tuple[str, datetime, int]] = {}
    for pk, patient_pk, date, received in session.execute(query).all():
        key = _order(date, received, pk)
        by_patient[patient_pk].append(key)
        keys[pk] = key
    # The case's own study may be visible only through the case: key it anyway.
    missing = wanted - keys.keys()
    if missing:
        for pk, date, received in session.execute(
            select(Study.id, Study.study_date, Study.first_received_at).where(Study.id.in_(missing))
        ).all():
            keys[pk] = _order(date, received, pk)
    return {pk: sum(1 for other in by_patient[patient_of[pk]] if other < keys[pk]) for pk in wanted}


def prior_studies(session: Session, actor: auth.Actor, case_id: int) -> list[PriorStudy]:
    """The earlier studies of the case's patient the actor may open, newest first.
    Raises CaseNotFound, NotPermitted."""
    auth.require(actor, auth.Permission.VIEW_CASES)
    case = get_case(session, actor, case_id, action="case.priors")
    current = session.get(Study, case.study_pk)
    assert current is not None
    key = _order(current.study_date, current.first_received_at, current.id)
    query = (
        select(Study, Institution.name)
        .join(Institution, Institution.id == Study.institution_id)
        .where(Study.patient_pk == current.patient_pk, Study.id != current.id)
    )
    clause = visible_studies(session, actor)
    if clause is not None:
        query = query.where(clause)
    earlier = [
        (study, name)
        for study, name in session.execute(query).all()
        if _order(study.study_date, study.first_received_at, study.id) < key
    ]
    earlier.sort(key=lambda r: _order(r[0].study_date, r[0].first_received_at, r[0].id))
    earlier.reverse()
    cases_of: dict[int, int] = {}
    if earlier:
        case_query = select(Case.study_pk, Case.id).where(
            Case.study_pk.in_([s.id for s, _ in earlier]), Case.status != CaseStatus.CANCELLED
        )
        scope = visible_cases(session, actor)
        if scope is not None:
            case_query = case_query.where(scope)
        for study_pk, found in session.execute(case_query.order_by(Case.id)).all():
            cases_of[study_pk] = found  # the newest case wins
    auth.audit(
        session,
        actor,
        "case.priors",
        object_type="case",
        object_id=str(case_id),
        detail=f"{len(earlier)} prior studies",
    )
    return [
        PriorStudy(
            study_instance_uid=s.study_instance_uid,
            study_date=s.study_date,
            study_time=s.study_time,
            study_description=s.description,
            modalities=[m for m in s.modalities.split("\\") if m],
            num_series=s.num_series,
            num_instances=s.num_instances,
            institution_name=name,
            case_id=cases_of.get(s.id),
        )
        for s, name in earlier
    ]
