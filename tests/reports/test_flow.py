"""Reports through a whole hub: a real CT is ingested, becomes a case, is claimed, reported,
signed; the PDF carries the Chinese text and goes back into the study as an Encapsulated PDF;
critical results escalate on a controlled clock until the clinic acknowledges."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from pydicom import dcmread
from pypdf import PdfReader
from sqlalchemy import func, select

from telehealth.archive.models import IngestSource, Instance, Series
from telehealth.auth.models import AuditEvent, AuditOutcome
from telehealth.auth.service import NotPermitted
from telehealth.cases import service as cases
from telehealth.cases.models import Case, CaseStatus, Notification
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.reports import service as reports
from telehealth.reports.models import (
    AcknowledgeMethod,
    CriticalCategory,
    CriticalStatus,
    Report,
    ReportSigned,
    ReportStatus,
)
from tests.cases import World, build_world
from tests.cases.test_hub import new_instance
from tests.conftest import DEV_DATA, upload_origin

CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"
FINDINGS = "右侧额叶见片状高密度影，周围水肿，中线结构左移约6mm。"
IMPRESSION = "右侧额叶脑出血，建议神经外科会诊。"


@pytest.fixture
def hub(hub_factory: Callable[..., Hub], clock: FakeClock) -> Hub:
    # Not started: the test drives the study-stable and escalation checks itself.
    return hub_factory(start=False, dicom=False, clock=clock, study_stable_seconds=60)


@pytest.fixture
def world(hub: Hub, clock: FakeClock) -> World:
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
        world.rule("COUNTY_IMG", modalities=["CT"])
        return world


def routed_case(hub: Hub, world: World, clock: FakeClock) -> tuple[int, str]:
    result = hub.archive.ingest(new_instance(CT), upload_origin(world.ids["CLINIC_A"]))
    clock.advance(minutes=2)
    hub.archive.check_stable_studies()
    with transaction(hub.factory) as session:
        case = session.scalars(select(Case)).one()
        assert case.status == CaseStatus.QUEUED and case.group_id == world.groups["COUNTY_IMG"]
        return case.id, result.study_instance_uid


def pdf_text(data: bytes) -> str:
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)
    # pypdf sets CJK glyphs apart (spaces, NULs): compare without them.
    return "".join(text.replace("\x00", " ").split())


def test_the_whole_report_flow(hub: Hub, world: World, clock: FakeClock) -> None:
    case_id, study_uid = routed_case(hub, world, clock)
    reader = world.actor("img1")
    with transaction(hub.factory) as session:
        claim = cases.claim(session, reader, case_id, hub.cases)
    with transaction(hub.factory) as session:
        draft = reports.ReportDraft(
            template="ct_head",
            values={"hemorrhage": "脑实质内", "midline_shift": 6, "hematoma_volume": 25.5},
            findings=FINDINGS,
            impression=IMPRESSION,
        )
        report = reports.save_draft(
            session, reader, case_id, draft, lease_token=claim.lease_token, rctx=hub.reports
        )
        assert report.status == ReportStatus.DRAFT and report.title == "头颅CT平扫检查报告"
        with pytest.raises(reports.InvalidReport):
            reports.save_draft(
                session,
                reader,
                case_id,
                reports.ReportDraft(values={"hemorrhage": "maybe"}),
                lease_token=claim.lease_token,
                rctx=hub.reports,
            )
    with transaction(hub.factory) as session:
        # The clinic does not see a draft.
        with pytest.raises(reports.ReportNotFound):
            reports.get_report(session, world.actor("tech_a"), case_id)
        reports.sign(
            session,
            reader,
            case_id,
            lease_token=claim.lease_token,
            rctx=hub.reports,
            critical=reports.CriticalFlag(CriticalCategory.INTRACRANIAL_HEMORRHAGE, "脑出血"),
        )
    assert len(reports.store_pending_documents(hub.reports)) == 1

    with transaction(hub.factory) as session:
        view = reports.get_report(session, world.actor("tech_a"), case_id)
        assert view.report.status == ReportStatus.SIGNED and view.signed_by == "img1"
        assert session.get(Case, case_id).status == CaseStatus.SIGNED  # type: ignore[union-attr]
        _, pdf = reports.report_pdf(session, world.actor("tech_a"), case_id)
        doc = view.documents[0]
        assert doc.stored_at is not None
    text = pdf_text(pdf)
    for expected in (
        FINDINGS,
        IMPRESSION,
        "头颅CT平扫检查报告",
        "城关镇卫生院",
        "中线移位Midlineshift:6mm",
    ):
        assert "".join(expected.split()) in text
    assert b"/FontFile" in pdf  # the CJK font is embedded, not referenced

    # The Encapsulated PDF instance: in the same study, its own DOC series, owned by the clinic.
    with transaction(hub.factory) as session:
        row, series = session.execute(
            select(Instance, Series)
            .join(Series, Series.id == Instance.series_pk)
            .where(Instance.sop_instance_uid == doc.sop_instance_uid)
        ).one()
        assert (row.sop_class_uid, row.source) == (reports.ENCAPSULATED_PDF, IngestSource.INTERNAL)
        assert series.modality == "DOC"
        ds = dcmread(io.BytesIO(hub.archive.read_instance(session, doc.sop_instance_uid)))
    assert ds.StudyInstanceUID == study_uid and ds.Modality == "DOC"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.ConceptNameCodeSequence[0].CodingSchemeDesignator == "LN"
    assert ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength] == pdf
    assert ds.DocumentTitle == "头颅CT平扫检查报告"

    # The DOC re-ingest makes no second case when the study settles again.
    clock.advance(minutes=2)
    hub.archive.check_stable_studies()
    with transaction(hub.factory) as session:
        assert session.scalar(select(func.count()).select_from(Case)) == 1

    # A signed report never changes: the service refuses, and so does the model guard.
    with transaction(hub.factory) as session, pytest.raises(ReportSigned):
        reports.save_draft(
            session,
            reader,
            case_id,
            reports.ReportDraft(impression="改了"),
            lease_token=None,
            rctx=hub.reports,
        )
    with pytest.raises(ReportSigned), transaction(hub.factory) as session:
        row_report = session.scalars(select(Report)).one()
        row_report.impression = "改了"
        session.flush()

    # A correction is an addendum, signed, with a new PDF in the same report series.
    clock.advance(minutes=5)
    with transaction(hub.factory) as session:
        reports.add_addendum(session, reader, case_id, "补充：左侧顶叶未见出血。", rctx=hub.reports)
    assert len(reports.store_pending_documents(hub.reports)) == 1
    with transaction(hub.factory) as session:
        view = reports.get_report(session, world.actor("tech_a"), case_id)
        assert [(a.text, n) for a, n in view.addenda] == [("补充：左侧顶叶未见出血。", "img1")]
        assert view.report.impression == IMPRESSION
        assert [d.instance_number for d in view.documents] == [1, 2]
        assert len({d.series_instance_uid for d in view.documents}) == 1
        _, pdf2 = reports.report_pdf(session, world.actor("tech_a"), case_id)
        history = cases.case_history(session, world.actor("admin"), case_id)
    assert "补充：左侧顶叶未见出血。" in pdf_text(pdf2)
    events = [str(e.kind) for e in history if "." in e.kind]
    assert events == [
        "report.created",
        "critical.flagged",
        "critical.notified",
        "report.signed",
        "report.addendum",
    ]


def test_critical_result_escalates_until_the_clinic_acknowledges(
    hub: Hub, world: World, clock: FakeClock
) -> None:
    case_id, _ = routed_case(hub, world, clock)
    reader = world.actor("img1")
    with transaction(hub.factory) as session:
        cases.claim(session, reader, case_id, hub.cases)
    with transaction(hub.factory) as session:  # urgent: before any report
        result = reports.flag(
            session,
            reader,
            case_id,
            reports.CriticalFlag(CriticalCategory.TENSION_PNEUMOTHORAX, "右侧张力性气胸"),
            rctx=hub.reports,
        )
    tech_a, tech_b = world.actor("tech_a"), world.actor("tech_b")
    with transaction(hub.factory) as session:
        assert [
            r.id for r in reports.list_critical(session, tech_a, status=CriticalStatus.OPEN)
        ] == [result.id]
        assert reports.list_critical(session, tech_b, status=None) == []
        told = session.scalars(select(Notification.user_id).order_by(Notification.id)).all()
        assert told == [world.users["tech_a"].id]

    clock.advance(minutes=9)
    assert hub.escalator.run_once() == []
    with transaction(hub.factory) as session:
        assert reports.check_critical_escalations(session, hub.reports) == []
    clock.advance(minutes=2)
    hub.escalator.run_once()  # level 1: the clinic has no admin; the group lead (img1)
    with transaction(hub.factory) as session:
        assert reports.check_critical_escalations(session, hub.reports) == []  # idempotent
    clock.advance(minutes=10)
    with transaction(hub.factory) as session:
        steps = reports.check_critical_escalations(session, hub.reports)
    assert [(s.level, s.user_ids) for s in steps] == [(2, (world.users["admin"].id,))]
    with transaction(hub.factory) as session:
        assert reports.check_critical_escalations(session, hub.reports) == []  # top reached
        told = session.scalars(select(Notification.user_id).order_by(Notification.id)).all()
        assert told == [
            world.users["tech_a"].id,
            world.users["img1"].id,
            world.users["admin"].id,
        ]

    # Another clinic cannot acknowledge it (404, audited); the reader may not either (403).
    with pytest.raises(reports.CriticalResultNotFound), transaction(hub.factory) as session:
        reports.acknowledge(
            session, tech_b, result.id, method=AcknowledgeMethod.PHONE, note="", rctx=hub.reports
        )
    with transaction(hub.factory) as session:
        denied = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "critical.acknowledge",
                AuditEvent.outcome == AuditOutcome.DENIED,
            )
        ).all()
        assert [e.actor for e in denied] == ["tech_b"]
    with (
        pytest.raises(NotPermitted),
        transaction(hub.factory) as session,
    ):
        reports.acknowledge(
            session, reader, result.id, method=AcknowledgeMethod.PHONE, note="", rctx=hub.reports
        )

    with transaction(hub.factory) as session:
        done = reports.acknowledge(
            session,
            tech_a,
            result.id,
            method=AcknowledgeMethod.PHONE,
            note="王护士电话回读：右侧张力性气胸",
            rctx=hub.reports,
        )
        assert done.status == CriticalStatus.ACKNOWLEDGED
    with transaction(hub.factory) as session:
        assert reports.list_critical(session, tech_a, status=CriticalStatus.OPEN) == []
        with pytest.raises(reports.AlreadyAcknowledged):
            reports.acknowledge(
                session,
                tech_a,
                result.id,
                method=AcknowledgeMethod.PHONE,
                note="",
                rctx=hub.reports,
            )
        history = cases.case_history(session, world.actor("admin"), case_id)
    events = [(str(e.kind), (e.detail or {}).get("level")) for e in history]
    assert [e for e in events if e[0].startswith("critical.")] == [
        ("critical.flagged", None),
        ("critical.notified", 0),
        ("critical.escalated", 1),
        ("critical.escalated", 2),
        ("critical.acknowledged", None),
    ]


def test_a_lapsed_lease_cannot_sign(hub: Hub, world: World, clock: FakeClock) -> None:
    case_id, _ = routed_case(hub, world, clock)
    reader = world.actor("img1")
    with transaction(hub.factory) as session:
        claim = cases.claim(session, reader, case_id, hub.cases)
    with transaction(hub.factory) as session:
        reports.save_draft(
            session,
            reader,
            case_id,
            reports.ReportDraft(template="ct_head", impression=IMPRESSION),
            lease_token=claim.lease_token,
            rctx=hub.reports,
        )
    clock.advance(minutes=6)  # the 5-minute lease lapsed
    with pytest.raises(cases.LeaseExpired), transaction(hub.factory) as session:
        reports.sign(session, reader, case_id, lease_token=claim.lease_token, rctx=hub.reports)
    with transaction(hub.factory) as session:
        assert session.scalars(select(Report)).one().status == ReportStatus.DRAFT
    # A technician never signs.
    with pytest.raises(NotPermitted), transaction(hub.factory) as s:
        reports.sign(s, world.actor("tech_a"), case_id, lease_token=None, rctx=hub.reports)
