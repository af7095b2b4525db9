"""Reports, the PDF, WADO-RS of the Encapsulated PDF and critical results through the real app."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import select

from telehealth.app import create_app
from telehealth.auth.models import AuditEvent, AuditOutcome
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.cases import build_world
from tests.cases.test_api import HOSTILE, Site
from tests.cases.test_hub import new_instance
from tests.conftest import upload_origin
from tests.reports.test_flow import CT, IMPRESSION, pdf_text


@pytest.fixture
def site(hub_factory: Callable[..., Hub], clock: FakeClock) -> Iterator[Site]:
    hub = hub_factory(start=False, dicom=False, clock=clock, study_stable_seconds=60)
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
        world.rule("COUNTY_IMG", modalities=["CT"])
    with TestClient(create_app(hub)) as client:
        yield Site(hub, client, world)


def test_the_clinic_gets_its_signed_report_and_acknowledges_the_critical_result(
    site: Site, clock: FakeClock
) -> None:
    hub = site.hub
    study_uid = hub.archive.ingest(
        new_instance(CT), upload_origin(site.world.ids["CLINIC_A"])
    ).study_instance_uid
    clock.advance(minutes=2)
    hub.archive.check_stable_studies()
    case_id = site.call("GET", "img1", "/api/worklist").json()["items"][0]["id"]
    claim = site.call("POST", "img1", f"/api/cases/{case_id}/claim").json()
    token = claim["lease_token"]

    draft = site.call(
        "PUT",
        "img1",
        f"/api/cases/{case_id}/report",
        json={
            "template": "ct_head",
            "findings": HOSTILE,
            "impression": IMPRESSION,
            "lease_token": token,
        },
    )
    assert draft.status_code == 200, draft.text
    assert draft.json()["fields"][0]["label"] == "颅内出血"
    assert site.call("GET", "tech_a", f"/api/cases/{case_id}/report").status_code == 404
    # A technician never signs.
    assert (
        site.call("POST", "tech_a", f"/api/cases/{case_id}/report/sign", json={}).status_code == 403
    )
    signed = site.call(
        "POST",
        "img1",
        f"/api/cases/{case_id}/report/sign",
        json={
            "lease_token": token,
            "critical": {"category": "intracranial_hemorrhage", "note": "脑出血"},
        },
    )
    assert signed.status_code == 200, signed.text
    body = site.call("GET", "tech_a", f"/api/cases/{case_id}/report").json()
    assert body["status"] == "signed" and body["findings"] == HOSTILE  # text, unchanged
    document = body["documents"][0]
    assert document["stored_at"] is not None

    pdf = site.call("GET", "tech_a", f"/api/cases/{case_id}/report.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    assert "".join(IMPRESSION.split()) in pdf_text(pdf.content)

    # The clinic's PACS (or viewer) retrieves the Encapsulated PDF by WADO-RS.
    wado = site.call(
        "GET",
        "tech_a",
        f"/dicomweb/studies/{study_uid}/series/{document['series_instance_uid']}"
        f"/instances/{document['sop_instance_uid']}",
        headers={"accept": 'multipart/related; type="application/dicom"'},
    )
    assert wado.status_code == 200, wado.text
    part = wado.content.split(b"\r\n\r\n", 1)[1]
    ds = dcmread(io.BytesIO(part))
    assert ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength] == pdf.content

    # Signed is final: 409; corrections are addenda.
    changed = site.call(
        "PUT",
        "img1",
        f"/api/cases/{case_id}/report",
        json={"impression": "改", "lease_token": token},
    )
    assert changed.status_code == 409
    addendum = site.call(
        "POST", "img1", f"/api/cases/{case_id}/report/addenda", json={"text": "补充说明"}
    )
    assert addendum.status_code == 201, addendum.text
    assert [a["text"] for a in addendum.json()["addenda"]] == ["补充说明"]
    listing = site.call("GET", "tech_a", f"/api/cases/{case_id}/reports").json()
    assert [r["status"] for r in listing] == ["signed"]

    # Another clinic: 404, audited.
    assert site.call("GET", "tech_b", f"/api/cases/{case_id}/report").status_code == 404
    assert site.call("GET", "tech_b", f"/api/cases/{case_id}/report.pdf").status_code == 404
    with transaction(hub.factory) as session:
        denied = session.scalars(
            select(AuditEvent.action).where(
                AuditEvent.actor == "tech_b", AuditEvent.outcome == AuditOutcome.DENIED
            )
        ).all()
    assert set(denied) >= {"report.read", "report.pdf"}

    opened = site.call("GET", "tech_a", "/api/critical?status=open").json()
    assert [(c["case_id"], c["category"]) for c in opened] == [(case_id, "intracranial_hemorrhage")]
    assert site.call("GET", "tech_b", "/api/critical?status=open").json() == []
    result_id = opened[0]["id"]
    assert (
        site.call(
            "POST", "tech_b", f"/api/critical/{result_id}/acknowledge", json={"method": "phone"}
        ).status_code
        == 404
    )
    ack = site.call(
        "POST",
        "tech_a",
        f"/api/critical/{result_id}/acknowledge",
        json={"method": "phone", "note": "李护士回读：脑出血"},
    )
    assert ack.status_code == 200, ack.text
    assert ack.json()["status"] == "acknowledged"
    assert site.call("GET", "tech_a", "/api/critical?status=open").json() == []
    events = site.call("GET", "tech_a", f"/api/cases/{case_id}/events")
    assert events.status_code == 200, events.text
    assert "critical.acknowledged" in [e["kind"] for e in events.json()]
