"""Which cases a reader may see: those routed to his groups and the one he holds; and the
cases of consults a user takes part in.

Apart from the service package because the archive's study scope check uses it too
(`archive.visible_study`), and the service package depends on the archive.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from telehealth.cases.models import Case, CaseStatus, ReadingGroupMember


def reader_cases(user_id: int) -> ColumnElement[bool]:
    """WHERE clause: cases routed to one of the user's reading groups, or claimed by him."""
    groups = select(ReadingGroupMember.group_id).where(ReadingGroupMember.user_id == user_id)
    return or_(Case.group_id.in_(groups), Case.claim_holder_id == user_id)


def routed_case_for_study(session: Session, user_id: int, study_pk: int) -> int | None:
    """The newest case of the study a reader may see (cancelled ones give no access)."""
    return session.scalar(
        select(Case.id)
        .where(
            Case.study_pk == study_pk,
            Case.status != CaseStatus.CANCELLED,
            reader_cases(user_id),
        )
        .order_by(Case.id.desc())
        .limit(1)
    )


def consulted_case_for_study(session: Session, user_id: int, study_pk: int) -> int | None:
    """The newest case of the study with a consult the user takes part in (host, requester or
    invited; a cancelled consult or case gives no access, a completed one still does: the
    participants advised on it)."""
    from telehealth.consults.models import Consult, ConsultParticipant, ConsultStatus

    return session.scalar(
        select(Case.id)
        .join(Consult, Consult.case_id == Case.id)
        .join(ConsultParticipant, ConsultParticipant.consult_id == Consult.id)
        .where(
            Case.study_pk == study_pk,
            Case.status != CaseStatus.CANCELLED,
            Consult.status != ConsultStatus.CANCELLED,
            ConsultParticipant.user_id == user_id,
        )
        .order_by(Case.id.desc())
        .limit(1)
    )
