"""Hostile text in a request and a report is kept and shown as text: stored and returned
unchanged in JSON, printed literally in the PDF, never run as markup or SQL."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import func, select

from telehealth.app import create_app
from telehealth.cases.models import Case
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.reports.models import Report
from tests.cases import build_world
from tests.cases.test_api import Site
from tests.cases.test_hub import new_instance
from tests.conftest import upload_origin
from tests.reports.test_flow import CT, IMPRESSION

SCRIPT = "<script>alert(1)</script>"
SQL = "'; DROP TABLE cases; --"
MIXED = "胸痛3小时🫀，ST段抬高⚠️ 😷 患者自述“压榨样”疼痛"
HISTORY = f"{SCRIPT} {MIXED}"
QUESTION = f"{SQL} 排除心梗？"
FINDINGS = f"{SCRIPT}\n{SQL}\n{MIXED}"


@pytest.fixture
def site(hub_factory: Callable[..., Hub], clock: FakeClock) -> Iterator[Site]:
    hub = hub_factory(start=False, dicom=False, clock=clock)
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
        world.rule("COUNTY_IMG", modalities=["CT"])
    with TestClient(create_app(hub)) as client:
        yield Site(hub, client, world)


def plain_text(pdf: bytes) -> str:
    # pypdf puts a NUL before each CJK-font glyph; the spaces it keeps are the text's own.
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    return text.replace("\x00", "")


def test_hostile_text_is_stored_and_shown_as_text(site: Site) -> None:
    hub = site.hub
    uid = hub.archive.ingest(
        new_instance(CT), upload_origin(site.world.ids["CLINIC_A"])
    ).study_instance_uid
    case = site.request(uid, clinical_history=HISTORY, question=QUESTION, service="imaging")
    case_id = case["id"]
    assert (case["clinical_history"], case["question"]) == (HISTORY, QUESTION)

    token = site.call("POST", "img1", f"/api/cases/{case_id}/claim").json()["lease_token"]
    body = {"findings": FINDINGS, "impression": IMPRESSION, "lease_token": token}
    draft = site.call("PUT", "img1", f"/api/cases/{case_id}/report", json=body)
    assert draft.status_code == 200, draft.text
    signed = site.call("POST", "img1", f"/api/cases/{case_id}/report/sign", json=body)
    assert signed.status_code == 200, signed.text

    # JSON carries the exact characters: escaped by the encoder, never by rewriting them.
    report = site.call("GET", "tech_a", f"/api/cases/{case_id}/report")
    assert report.headers["content-type"] == "application/json"
    assert report.json()["findings"] == FINDINGS
    assert report.content.decode("utf-8").count("<script>") == 1  # raw in JSON, unmarked-up
    again = site.call("GET", "tech_a", f"/api/cases/{case_id}").json()
    assert (again["clinical_history"], again["question"]) == (HISTORY, QUESTION)
    with transaction(hub.factory) as session:
        # The SQL text was a value, not a statement: the table and the row are there, byte-equal.
        assert session.scalar(select(func.count()).select_from(Case)) == 1
        row = session.get(Case, case_id)
        assert row is not None
        assert (row.clinical_history.encode(), row.question.encode()) == (
            HISTORY.encode(),
            QUESTION.encode(),
        )
        stored = session.scalars(select(Report.findings)).one()
        assert stored.encode() == FINDINGS.encode()

    # The PDF prints the literal strings; nothing in it is active content.
    pdf = site.call("GET", "tech_a", f"/api/cases/{case_id}/report.pdf").content
    text = plain_text(pdf)
    assert SCRIPT in text and SQL in text
    squeezed = "".join(text.split())
    assert "胸痛3小时" in squeezed and "患者自述“压榨样”疼痛" in squeezed
    for active in (b"/JavaScript", b"/JS", b"/Launch"):  # fpdf2's /OpenAction only sets zoom
        assert active not in pdf
