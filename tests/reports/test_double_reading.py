"""Double reading: for a configured service the first signature sends the case back to the
queue; another reader of the group signs a second report that agrees or disagrees, and only
then is the case complete and the clinic sees both readings."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from telehealth.app import create_app
from telehealth.auth.models import Role
from telehealth.cases import service as cases
from telehealth.cases.models import Case, CaseStatus, ReadingGroupMember
from telehealth.cases.service.queue import FirstReader
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.reports import service as reports
from telehealth.reports.models import Report, ReportDocument, ReportStatus
from tests.cases import World, add_user, build_world
from tests.cases.test_api import Site
from tests.reports.test_flow import FINDINGS, IMPRESSION, pdf_text, routed_case

SECOND_IMPRESSION = "右侧额叶脑出血，约25ml。"
WHY = "出血量估计偏小，应为约40ml，建议复查CT。"


@pytest.fixture
def hub(hub_factory: Callable[..., Hub], clock: FakeClock) -> Hub:
    return hub_factory(
        start=False,
        dicom=False,
        clock=clock,
        study_stable_seconds=60,
        report_double_reading_services=["imaging"],
    )


def double_world(hub: Hub, clock: FakeClock) -> World:
    """The usual consortium, with a second imaging reader (img2) in COUNTY_IMG."""
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
        img2 = add_user(session, "img2", Role.SPECIALIST, world.ids["COUNTY"], clock.now())
        world.users["img2"] = img2
        session.add(ReadingGroupMember(group_id=world.groups["COUNTY_IMG"], user_id=img2.id))
        world.rule("COUNTY_IMG", modalities=["CT"])
        return world


@pytest.fixture
def world(hub: Hub, clock: FakeClock) -> World:
    return double_world(hub, clock)


def read(hub: Hub, world: World, username: str, case_id: int, impression: str) -> int:
    """Claim the case and save a draft as `username`; returns the lease token."""
    reader = world.actor(username)
    with transaction(hub.factory) as session:
        token = cases.claim(session, reader, case_id, hub.cases).lease_token
    with transaction(hub.factory) as session:
        draft = reports.ReportDraft(template="ct_head", findings=FINDINGS, impression=impression)
        reports.save_draft(session, reader, case_id, draft, lease_token=token, rctx=hub.reports)
    return token


def first_reading(hub: Hub, world: World, case_id: int) -> None:
    token = read(hub, world, "img1", case_id, IMPRESSION)
    with transaction(hub.factory) as session:
        reports.sign(session, world.actor("img1"), case_id, lease_token=token, rctx=hub.reports)


def kinds(hub: Hub, world: World, case_id: int) -> list[str]:
    with transaction(hub.factory) as session:
        return [str(e.kind) for e in cases.case_history(session, world.actor("admin"), case_id)]


def test_the_second_reader_signs_and_the_case_is_complete(
    hub: Hub, world: World, clock: FakeClock
) -> None:
    case_id, _ = routed_case(hub, world, clock)
    first_reading(hub, world, case_id)

    # Back in the queue, unheld, with no document yet; the clinic sees nothing of it.
    assert reports.store_pending_documents(hub.reports) == []
    tech_a = world.actor("tech_a")
    with transaction(hub.factory) as session:
        case = session.get(Case, case_id)
        assert case is not None
        assert (case.status, case.claim_holder_id) == (CaseStatus.QUEUED, None)
        assert case.next_escalation_at is not None  # the deadline keeps running
        assert reports.list_reports(session, tech_a, case_id) == []
        with pytest.raises(reports.ReportNotFound):
            reports.get_report(session, tech_a, case_id)
        with pytest.raises(reports.DocumentNotReady):
            reports.report_pdf(session, tech_a, case_id)
    assert kinds(hub, world, case_id)[-3:] == [
        "report.signed",
        "released",
        "report.second_reading",
    ]

    clock.advance(minutes=3)
    img2 = world.actor("img2")
    with transaction(hub.factory) as session:
        claim = cases.claim_next(session, img2, hub.cases)
        assert claim is not None and claim.case_id == case_id
    with transaction(hub.factory) as session:
        draft = reports.ReportDraft(impression=SECOND_IMPRESSION)
        second = reports.save_draft(
            session, img2, case_id, draft, lease_token=claim.lease_token, rctx=hub.reports
        )
        # Its own report, from the first one's template, not an edit of the first.
        assert (second.reading, second.template_code, second.author_id) == (
            2,
            "ct_head",
            world.users["img2"].id,
        )
    # A second reading needs a verdict, and is not issued as preliminary on its own.
    with pytest.raises(reports.InvalidReport), transaction(hub.factory) as session:
        reports.sign(session, img2, case_id, lease_token=claim.lease_token, rctx=hub.reports)
    with pytest.raises(reports.InvalidReport), transaction(hub.factory) as session:
        reports.issue_preliminary(
            session, img2, case_id, lease_token=claim.lease_token, rctx=hub.reports
        )
    with transaction(hub.factory) as session:
        reports.sign(
            session,
            img2,
            case_id,
            lease_token=claim.lease_token,
            rctx=hub.reports,
            opinion=reports.SecondOpinion(agrees=True),
        )
    assert len(reports.store_pending_documents(hub.reports)) == 2

    with transaction(hub.factory) as session:
        case = session.get(Case, case_id)
        assert case is not None and case.status == CaseStatus.SIGNED
        views = reports.list_reports(session, tech_a, case_id)
        assert [(v.report.reading, v.report.status, v.signed_by) for v in views] == [
            (1, ReportStatus.SIGNED, "img1"),
            (2, ReportStatus.SIGNED, "img2"),
        ]
        assert [len(v.documents) for v in views] == [1, 1]
        current = reports.get_report(session, tech_a, case_id)
        assert (current.report.reading, current.report.agrees) == (2, True)
        assert current.disagreement_note is None
        _, pdf = reports.report_pdf(session, tech_a, case_id)
    text = pdf_text(pdf)
    assert "".join(SECOND_IMPRESSION.split()) in text
    assert "同意初读报告" in text and "不同意" not in text
    assert kinds(hub, world, case_id)[-2:] == ["completed", "report.signed"]


def test_the_first_reader_cannot_take_the_second_reading(
    hub: Hub, world: World, clock: FakeClock
) -> None:
    case_id, _ = routed_case(hub, world, clock)
    first_reading(hub, world, case_id)
    img1 = world.actor("img1")
    with pytest.raises(FirstReader), transaction(hub.factory) as session:
        cases.claim(session, img1, case_id, hub.cases)
    with pytest.raises(reports.NotSigned), transaction(hub.factory) as session:
        reports.add_addendum(session, img1, case_id, "补充", rctx=hub.reports)  # not final yet
    with transaction(hub.factory) as session:
        assert cases.claim_next(session, img1, hub.cases) is None  # not offered to him either

    # An admin may hand him the case, but the reports refuse him all the same.
    with transaction(hub.factory) as session:
        cases.assign(
            session, world.actor("admin"), case_id, group_id=None, user="img1", ctx=hub.cases
        )
    with transaction(hub.factory) as session:
        token = session.get(Case, case_id).lease_token  # type: ignore[union-attr]
    with pytest.raises(reports.SameReader), transaction(hub.factory) as session:
        reports.save_draft(
            session,
            img1,
            case_id,
            reports.ReportDraft(impression="同意"),
            lease_token=token,
            rctx=hub.reports,
        )
    with pytest.raises(reports.SameReader), transaction(hub.factory) as session:
        reports.sign(
            session,
            img1,
            case_id,
            lease_token=token,
            rctx=hub.reports,
            opinion=reports.SecondOpinion(agrees=True),
        )
    with transaction(hub.factory) as session:
        assert [r.reading for r in session.scalars(select(Report))] == [1]
        assert session.scalars(select(ReportDocument)).all() == []
        assert session.get(Case, case_id).status != CaseStatus.SIGNED  # type: ignore[union-attr]


def test_a_disagreement_is_recorded_with_its_reason(
    hub: Hub, world: World, clock: FakeClock
) -> None:
    case_id, _ = routed_case(hub, world, clock)
    first_reading(hub, world, case_id)
    token = read(hub, world, "img2", case_id, SECOND_IMPRESSION)
    img2 = world.actor("img2")
    with pytest.raises(reports.InvalidReport), transaction(hub.factory) as session:
        reports.sign(  # disagreeing says why
            session,
            img2,
            case_id,
            lease_token=token,
            rctx=hub.reports,
            opinion=reports.SecondOpinion(agrees=False, note="  "),
        )
    with transaction(hub.factory) as session:
        second = reports.sign(
            session,
            img2,
            case_id,
            lease_token=token,
            rctx=hub.reports,
            opinion=reports.SecondOpinion(agrees=False, note=WHY),
        )
        first = session.scalar(select(Report).where(Report.reading == 1))
        assert first is not None
        history = cases.case_history(session, world.actor("admin"), case_id)
    disagreed = [e for e in history if e.kind == "report.disagreed"]
    assert [(e.actor, e.detail) for e in disagreed] == [
        ("img2", {"report_id": second.id, "first_report_id": first.id, "note": WHY})
    ]
    reports.store_pending_documents(hub.reports)
    with transaction(hub.factory) as session:
        view = reports.get_report(session, world.actor("tech_a"), case_id)
        assert (view.report.agrees, view.disagreement_note) == (False, WHY)
        _, pdf = reports.report_pdf(session, world.actor("tech_a"), case_id)
    assert "".join(WHY.split()) in pdf_text(pdf)


@pytest.fixture
def site(hub: Hub, clock: FakeClock) -> Iterator[Site]:
    world = double_world(hub, clock)
    with TestClient(create_app(hub)) as client:
        yield Site(hub, client, world)


def test_double_reading_through_the_api(site: Site, clock: FakeClock) -> None:
    case_id, _ = routed_case(site.hub, site.world, clock)
    token = site.call("POST", "img1", f"/api/cases/{case_id}/claim").json()["lease_token"]
    put = {"template": "ct_head", "impression": IMPRESSION, "lease_token": token}
    assert site.call("PUT", "img1", f"/api/cases/{case_id}/report", json=put).status_code == 200
    signed = site.call("POST", "img1", f"/api/cases/{case_id}/report/sign", json=put)
    assert signed.status_code == 200, signed.text
    assert signed.json()["documents"] == []  # no PDF before the second reading
    assert site.call("GET", "tech_a", f"/api/cases/{case_id}/report").status_code == 404
    assert site.call("POST", "img1", f"/api/cases/{case_id}/claim").status_code == 403

    token = site.call("POST", "img2", f"/api/cases/{case_id}/claim").json()["lease_token"]
    put = {"impression": SECOND_IMPRESSION, "lease_token": token}
    draft = site.call("PUT", "img2", f"/api/cases/{case_id}/report", json=put)
    assert draft.status_code == 200 and draft.json()["reading"] == 2
    sign = {"lease_token": token, "agrees": False, "note": WHY}
    done = site.call("POST", "img2", f"/api/cases/{case_id}/report/sign", json=sign)
    assert done.status_code == 200, done.text

    listing = site.call("GET", "tech_a", f"/api/cases/{case_id}/reports").json()
    assert [(r["reading"], r["status"], r["agrees"]) for r in listing] == [
        (1, "signed", None),
        (2, "signed", False),
    ]
    assert listing[1]["disagreement_note"] == WHY
    assert all(len(r["documents"]) == 1 for r in listing)
    events = site.call("GET", "tech_a", f"/api/cases/{case_id}/events").json()
    assert [e["detail"]["note"] for e in events if e["kind"] == "report.disagreed"] == [WHY]
