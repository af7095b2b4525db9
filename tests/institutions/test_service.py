"""The consortium tree and DICOM callers, on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from telehealth.errors import Invalid
from telehealth.institutions import service
from telehealth.institutions.models import InstitutionLevel
from tests.conftest import seed_consortium


def test_tree_keeps_names_levels_and_parents(session: Session) -> None:
    ids = seed_consortium(session)
    village = service.add_institution(
        session, code="VILLAGE_1", name="张家村卫生室", level="village", parent_code="CLINIC_A"
    )
    rows = {i.code: i for i in service.list_institutions(session)}
    assert rows["COUNTY"].parent_id is None
    assert rows["CLINIC_A"].parent_id == ids["COUNTY"]
    assert rows["VILLAGE_1"].name == "张家村卫生室"
    assert rows["VILLAGE_1"].level == InstitutionLevel.VILLAGE
    assert service.get_institution(session, "VILLAGE_1").id == village.id


def test_subtree_holds_every_descendant_and_nothing_else(session: Session) -> None:
    ids = seed_consortium(session)
    village = service.add_institution(
        session, code="VILLAGE_1", name="村卫生室", level="village", parent_code="CLINIC_A"
    )
    other = service.add_institution(session, code="OTHER", name="邻县医院", level="county")
    assert service.subtree_ids(session, ids["COUNTY"]) == {
        ids["COUNTY"],
        ids["CLINIC_A"],
        ids["CLINIC_B"],
        village.id,
    }
    assert service.subtree_ids(session, ids["CLINIC_A"]) == {ids["CLINIC_A"], village.id}
    assert service.subtree_ids(session, village.id) == {village.id}
    assert service.subtree_ids(session, other.id) == {other.id}


def test_duplicate_code_missing_parent_and_bad_code_are_refused(session: Session) -> None:
    seed_consortium(session)
    with pytest.raises(service.InstitutionExists):
        service.add_institution(session, code="CLINIC_A", name="again", level="township")
    with pytest.raises(service.InstitutionExists):
        service.add_institution(session, code=" CLINIC_A ", name="padded", level="township")
    with pytest.raises(service.InstitutionNotFound):
        service.add_institution(
            session, code="LOST", name="孤儿", level="village", parent_code="NOWHERE"
        )
    for code in ("", "   ", "X" * 65):
        with pytest.raises(Invalid):
            service.add_institution(session, code=code, name="bad", level="village")
    with pytest.raises(ValueError):
        service.add_institution(session, code="NEW", name="bad level", level="planet")  # type: ignore[arg-type]
    with pytest.raises(service.InstitutionNotFound):
        service.get_institution(session, "NOWHERE")


@pytest.mark.parametrize("title", ["", "    ", "A" * 17, "BAD\\AE", "TAB\tAE"])
def test_invalid_ae_titles_are_refused(session: Session, title: str) -> None:
    seed_consortium(session)
    with pytest.raises(service.InvalidAeTitle):
        service.add_application_entity(session, ae_title=title, institution_code="CLINIC_A")


def test_ae_titles_are_unique_after_trimming_padding(session: Session) -> None:
    seed_consortium(session)
    entity = service.add_application_entity(
        session, ae_title=" CG_DR01  ", institution_code="CLINIC_A", host="10.1.2.3", port=104
    )
    assert entity.ae_title == "CG_DR01"
    with pytest.raises(service.AeTitleExists):
        service.add_application_entity(session, ae_title="CG_DR01", institution_code="CLINIC_B")
    with pytest.raises(service.InstitutionNotFound):
        service.add_application_entity(session, ae_title="NEW_AE", institution_code="NOWHERE")
    titles = [e.ae_title for e in service.list_application_entities(session)]
    assert titles == sorted(titles) == ["CG_DR01", "CLINIC_A_DR", "CLINIC_B_CT"]


def test_registered_caller_acts_for_its_institution(session: Session) -> None:
    ids = seed_consortium(session)
    caller = service.authorize_caller(session, "CLINIC_A_DR  ", "10.0.0.5")
    assert (caller.ae_title, caller.institution_id, caller.registered) == (
        "CLINIC_A_DR",
        ids["CLINIC_A"],
        True,
    )


def test_caller_tied_to_a_host_is_refused_from_elsewhere(session: Session) -> None:
    ids = seed_consortium(session)
    service.add_application_entity(
        session, ae_title="CG_DR01", institution_code="CLINIC_B", host="10.1.2.3"
    )
    assert (
        service.authorize_caller(session, "CG_DR01", "10.1.2.3").institution_id == ids["CLINIC_B"]
    )
    with pytest.raises(service.CallerRefused):
        service.authorize_caller(session, "CG_DR01", "10.6.6.6")


def test_unknown_caller_is_refused_unless_accepted(session: Session) -> None:
    ids = seed_consortium(session)
    with pytest.raises(service.CallerRefused, match="not registered"):
        service.authorize_caller(session, "STRANGER", "10.0.0.9")
    root = service.authorize_caller(session, "STRANGER", "10.0.0.9", accept_unknown=True)
    assert (root.institution_id, root.registered) == (ids["COUNTY"], False)
    chosen = service.authorize_caller(
        session, "STRANGER", "10.0.0.9", accept_unknown=True, unknown_institution_code="CLINIC_B"
    )
    assert chosen.institution_id == ids["CLINIC_B"]


def test_unknown_caller_with_no_institution_is_refused(session: Session) -> None:
    with pytest.raises(service.CallerRefused):
        service.authorize_caller(session, "STRANGER", "10.0.0.9", accept_unknown=True)
