"""Issue 4's "done means": the whole reading story through the real API on a real uvicorn
server, with the DICOM node listening and dcmtk's storescu as the clinic's modality.

Time is a FakeClock: the test settles studies and runs the escalation check itself, so the
background threads are not started (the node runs as in a DICOM worker process).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from tests import faults
from tests.cases import PASSWORD, World, build_world
from tests.cases.test_hub import new_instance
from tests.conftest import dcmtk
from tests.dicomweb import serve
from tests.reports.test_flow import CT, FINDINGS, IMPRESSION, pdf_text


class Api:
    """One logged-in httpx client per user against the served hub."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.clients: dict[str, httpx.Client] = {}

    def __call__(self, method: str, username: str, path: str, **kwargs: Any) -> httpx.Response:
        if username not in self.clients:
            login = httpx.post(
                f"{self.base}/api/auth/login", json={"username": username, "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            token = login.json()["access_token"]
            self.clients[username] = httpx.Client(
                base_url=self.base, headers={"authorization": f"Bearer {token}"}, timeout=30
            )
        return self.clients[username].request(method, path, **kwargs)

    def log_out(self, username: str) -> None:
        """Drop the user's token: the next call logs in at the (fake) time of then."""
        client = self.clients.pop(username, None)
        if client is not None:
            client.close()

    def dicomweb(self, username: str) -> DICOMwebClient:
        session = requests.Session()
        session.headers["Authorization"] = self.clients[username].headers["authorization"]
        return DICOMwebClient(url=f"{self.base}/dicomweb", session=session)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def settled(probe: Callable[[], object], what: str) -> None:
    """A write the previous response reported is visible to the next request at once.

    The request session commits before the response is sent (SessionDep's "function"
    scope); with FastAPI's default it committed afterwards and this raced.
    """
    assert probe(), f"not visible right after the response: {what}"


def send_study(hub: Hub, folder: Path, name: str) -> None:
    """One new CT study from the clinic's registered modality AE, by C-STORE."""
    assert hub.dicom_node is not None
    path = folder / f"{name}.dcm"
    path.write_bytes(new_instance(CT))
    result = faults.storescu(dcmtk("storescu"), hub.dicom_node.port, [path], calling="CLINIC_A_DR")
    assert result.returncode == 0, result.stderr


def settle(hub: Hub, clock: FakeClock) -> None:
    clock.advance(minutes=2)  # past study_stable_seconds: the study becomes a case
    hub.archive.check_stable_studies()


@pytest.fixture
def hub(hub_factory: Callable[..., Hub], clock: FakeClock) -> Hub:
    hub = hub_factory(start=False, clock=clock, study_stable_seconds=60)
    hub.start(dicom=True, background=False)
    return hub


@pytest.fixture
def world(hub: Hub, clock: FakeClock) -> World:
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
        world.rule("COUNTY_IMG", modalities=["CT"])
        return world


def test_a_study_from_the_clinic_is_read_reported_and_returned(
    hub: Hub, world: World, clock: FakeClock, tmp_path: Path
) -> None:
    with serve(hub) as base:
        api = Api(base)
        try:
            _story(hub, api, clock, tmp_path)
        finally:
            api.close()


def _story(hub: Hub, api: Api, clock: FakeClock, tmp_path: Path) -> None:
    # The clinic's CT sends a study; once stable it is a case routed to the county's readers.
    send_study(hub, tmp_path, "first")
    settle(hub, clock)
    queue = api("GET", "img1", "/api/worklist").json()["items"]
    assert [(c["status"], c["group_code"], c["institution_code"]) for c in queue] == [
        ("queued", "COUNTY_IMG", "CLINIC_A")
    ]
    case_id, study_uid = queue[0]["id"], queue[0]["study_instance_uid"]

    # A specialist claims it, flags a critical finding at once, writes and signs the report.
    claim = api("POST", "img1", f"/api/cases/{case_id}/claim")
    assert claim.status_code == 200, claim.text
    token = claim.json()["lease_token"]
    settled(
        lambda: api("GET", "img1", f"/api/cases/{case_id}").json()["claim_holder"] == "img1",
        "the claim",
    )
    assert api("POST", "city1", f"/api/cases/{case_id}/claim").status_code == 404  # not his group
    flagged = api(
        "POST",
        "img1",
        f"/api/cases/{case_id}/critical",
        json={"category": "intracranial_hemorrhage", "note": "右额叶脑出血"},
    )
    assert flagged.status_code == 201, flagged.text
    draft = api(
        "PUT",
        "img1",
        f"/api/cases/{case_id}/report",
        json={
            "template": "ct_head",
            "values": {"hemorrhage": "脑实质内", "midline_shift": 6},
            "findings": FINDINGS,
            "impression": IMPRESSION,
            "lease_token": token,
        },
    )
    assert draft.status_code == 200, draft.text
    settled(
        lambda: (
            api("GET", "img1", f"/api/cases/{case_id}/report").json()["impression"] == IMPRESSION
        ),
        "the draft",
    )
    signed = api("POST", "img1", f"/api/cases/{case_id}/report/sign", json={"lease_token": token})
    assert signed.status_code == 200, signed.text

    # The clinic's technician fetches the report as JSON and as PDF …
    report = api("GET", "tech_a", f"/api/cases/{case_id}/report")
    assert report.status_code == 200, report.text
    body = report.json()
    assert (body["status"], body["findings"], body["impression"]) == (
        "signed",
        FINDINGS,
        IMPRESSION,
    )
    assert api("GET", "tech_a", f"/api/cases/{case_id}").json()["status"] == "signed"
    pdf = api("GET", "tech_a", f"/api/cases/{case_id}/report.pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert "".join(IMPRESSION.split()) in pdf_text(pdf.content)

    # … and its PACS retrieves the Encapsulated PDF from the study by WADO-RS.
    (document,) = body["documents"]
    assert document["stored_at"] is not None
    ds = api.dicomweb("tech_a").retrieve_instance(
        study_uid, document["series_instance_uid"], document["sop_instance_uid"]
    )
    assert ds.Modality == "DOC" and ds.StudyInstanceUID == study_uid
    assert ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength] == pdf.content

    # The critical result: a named person at the clinic acknowledges it, how and when.
    opened = api("GET", "tech_a", "/api/critical?status=open").json()
    assert [(c["case_id"], c["id"]) for c in opened] == [(case_id, flagged.json()["id"])]
    ack = api(
        "POST",
        "tech_a",
        f"/api/critical/{opened[0]['id']}/acknowledge",
        json={"method": "phone", "note": "张护士电话回读：右额叶脑出血"},
    )
    assert ack.status_code == 200, ack.text
    assert ack.json()["status"] == "acknowledged"
    assert datetime.fromisoformat(ack.json()["acknowledged_at"]) == clock.now()
    settled(lambda: api("GET", "tech_a", "/api/critical?status=open").json() == [], "the ack")

    # A second study nobody reads: past its routine deadline it is offered to the city.
    send_study(hub, tmp_path, "second")
    settle(hub, clock)
    (waiting,) = api("GET", "img1", "/api/worklist").json()["items"]
    assert waiting["id"] != case_id and waiting["priority"] == "routine"
    clock.advance(hours=23)
    hub.escalator.run_once()
    assert api("GET", "admin", f"/api/cases/{waiting['id']}").json()["group_code"] == "COUNTY_IMG"
    clock.advance(hours=1, minutes=1)
    hub.escalator.run_once()
    escalated = api("GET", "admin", f"/api/cases/{waiting['id']}").json()
    assert (escalated["group_code"], escalated["escalation_level"], escalated["overdue"]) == (
        "CITY_IMG",
        1,
        True,
    )
    # A day passed on the hub's clock: the city reader's morning token has expired.
    assert api("GET", "city1", "/api/worklist").status_code == 401
    api.log_out("city1")
    assert [c["id"] for c in api("GET", "city1", "/api/worklist").json()["items"]] == [
        waiting["id"]
    ]
    events = [e["kind"] for e in api("GET", "admin", f"/api/cases/{waiting['id']}/events").json()]
    assert events[-2:] == ["warned", "escalated"]
    # The first case, signed and acknowledged, took no part in any of it.
    history = [e["kind"] for e in api("GET", "admin", f"/api/cases/{case_id}/events").json()]
    assert "escalated" not in history and "critical.escalated" not in history
    assert "critical.acknowledged" in history
