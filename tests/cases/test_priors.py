"""Prior studies of a case's patient: counted in the worklist, listed for the reader, scoped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Patient, Study
from telehealth.auth.models import Role
from telehealth.cases import service as cases
from telehealth.clock import FakeClock
from tests.cases import World, add_user, build_world


@pytest.fixture
def world(factory: sessionmaker[Session], clock: FakeClock) -> Iterator[World]:
    session = factory()
    try:
        world = build_world(session, clock)
        world.users["partner"] = add_user(
            session, "partner", Role.SPECIALIST, world.ids["OTHER"], clock.now()
        )
        world.group("PARTNER_IMG", "OTHER", ["partner"])
        yield world
    finally:
        session.close()


def study_of(world: World, patient: Patient | None, date: str, code: str = "CLINIC_A") -> Study:
    """A study dated `date`, of `patient` (None: a new patient)."""
    study = world.study(code)
    study.study_date = date
    if patient is not None:
        study.patient_pk = patient.id
    world.session.flush()
    return study


def test_the_worklist_counts_earlier_visible_studies_of_the_same_patient(world: World) -> None:
    first = study_of(world, None, "20250101")
    patient = world.session.get(Patient, first.patient_pk)
    assert patient is not None
    patient.sex, patient.birth_date = "F", "19600315"
    middle = study_of(world, patient, "20260101")
    newest = study_of(world, patient, "20260302")
    # Same Patient ID at another clinic: another person (IDs are local to their issuer).
    twin = study_of(world, None, "20200101", code="CLINIC_B")
    twin_patient = world.session.get(Patient, twin.patient_pk)
    assert twin_patient is not None
    twin_patient.patient_id = patient.patient_id
    world.session.flush()
    new_case = world.request(newest)
    old_case = world.request(first)

    page = cases.worklist(
        world.session, world.actor("img1"), cases.CaseFilter(), limit=50, offset=0
    )
    rows = {r.case.id: r for r in page.rows}
    assert rows[new_case.id].prior_studies == 2
    assert rows[old_case.id].prior_studies == 0
    assert (rows[new_case.id].patient_sex, rows[new_case.id].patient_birth_date) == (
        "F",
        "19600315",
    )
    assert cases.read_case(world.session, world.actor("img1"), new_case.id).prior_studies == 2

    priors = cases.prior_studies(world.session, world.actor("img1"), new_case.id)
    assert [p.study_instance_uid for p in priors] == [
        middle.study_instance_uid,
        first.study_instance_uid,
    ]
    assert [p.case_id for p in priors] == [None, old_case.id]
    assert cases.prior_studies(world.session, world.actor("img1"), old_case.id) == []


def test_a_partner_reader_sees_only_priors_routed_to_him(world: World) -> None:
    first = study_of(world, None, "20250101")
    patient = world.session.get(Patient, first.patient_pk)
    newest = study_of(world, patient, "20260302")
    case = world.request(newest)
    partner = world.actor("partner")
    cases.assign(
        world.session,
        world.actor("admin"),
        case.id,
        group_id=world.groups["PARTNER_IMG"],
        user=None,
        ctx=world.ctx,
    )
    # OTHER is outside the consortium: only the routed case's own study is his to open.
    assert cases.prior_studies(world.session, partner, case.id) == []
    page = cases.worklist(world.session, partner, cases.CaseFilter(), limit=50, offset=0)
    assert [(r.case.id, r.prior_studies) for r in page.rows] == [(case.id, 0)]
    # Another clinic sees neither the case nor its priors.
    with pytest.raises(cases.CaseNotFound):
        cases.prior_studies(world.session, world.actor("tech_b"), case.id)
