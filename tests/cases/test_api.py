"""Cases, the worklist, claims and the routing table through the real app on a real hub."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from telehealth.app import create_app
from telehealth.auth.models import AuditEvent, Role
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.cases import PASSWORD, World, add_study, add_user, build_world
from tests.cases.test_routing import ROUTING_YAML

HOSTILE = "<script>alert('x')</script> & <b>胸痛</b> \"; DROP TABLE cases; --"


@dataclass
class Site:
    hub: Hub
    client: TestClient
    world: World
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, username: str) -> str:
        if username not in self.tokens:  # Argon2: log in once per user
            response = self.client.post(
                "/api/auth/login", json={"username": username, "password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            self.client.cookies.clear()
            self.tokens[username] = response.json()["access_token"]
        return self.tokens[username]

    def call(self, method: str, username: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token(username)}", **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def study_uid(self, code: str = "CLINIC_A", **kwargs: Any) -> str:
        with transaction(self.hub.factory) as session:
            study = add_study(session, self.world.ids[code], self.world.clock.now(), **kwargs)
            return study.study_instance_uid

    def request(self, uid: str, username: str = "tech_a", **fields: Any) -> dict[str, Any]:
        response = self.call(
            "POST", username, "/api/cases", json={"study_instance_uid": uid, **fields}
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def site(hub_factory: Callable[..., Hub], clock: FakeClock) -> Iterator[Site]:
    hub = hub_factory(start=False, dicom=False, clock=clock)
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
        world.users["partner"] = add_user(
            session, "partner", Role.SPECIALIST, world.ids["OTHER"], clock.now()
        )
        world.group("PARTNER_IMG", "OTHER", ["partner"])
    with TestClient(create_app(hub)) as client:
        yield Site(hub, client, world)


def test_a_technician_requests_a_reading(site: Site) -> None:
    uid = site.study_uid(patient_name="Wang^Wu")
    case = site.request(
        uid, clinical_history=HOSTILE, question="肺炎?", priority="urgent", service="imaging"
    )
    assert case["status"] == "queued" and case["group_code"] == "COUNTY_IMG"
    assert case["clinical_history"] == HOSTILE  # stored and returned as text, unchanged
    assert case["patient_name"] == "Wang^Wu" and case["institution_code"] == "CLINIC_A"
    assert case["priority"] == "urgent" and case["overdue"] is False
    for bad in ({"priority": "asap"}, {"service": "xray"}, {"colour": "red"}):
        response = site.call(
            "POST", "tech_a", "/api/cases", json={"study_instance_uid": uid, **bad}
        )
        assert response.status_code == 422, bad
    again = site.call("POST", "tech_a", "/api/cases", json={"study_instance_uid": uid})
    assert again.status_code == 409 and again.json()["error"] == "CaseExists"
    other = site.call(
        "POST", "tech_a", "/api/cases", json={"study_instance_uid": site.study_uid("CLINIC_B")}
    )
    assert other.status_code == 404 and other.json()["error"] == "CaseStudyNotFound"
    # Clinic B sees nothing of clinic A's case, and cannot tell it exists.
    foreign = site.call("GET", "tech_b", f"/api/cases/{case['id']}")
    missing = site.call("GET", "tech_b", "/api/cases/999999")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"] == missing.json()["error"] == "CaseNotFound"
    assert site.call("GET", "tech_b", "/api/cases").json()["items"] == []
    mine = site.call("GET", "tech_a", "/api/cases").json()
    assert [c["id"] for c in mine["items"]] == [case["id"]]
    events = site.call("GET", "tech_a", f"/api/cases/{case['id']}/events").json()
    assert [e["kind"] for e in events] == ["created", "routed"]
    changed = site.call(
        "PATCH", "tech_a", f"/api/cases/{case['id']}", json={"priority": "stat"}
    ).json()
    assert changed["priority"] == "stat"
    cancelled = site.call(
        "POST", "tech_a", f"/api/cases/{case['id']}/cancel", json={"reason": "重复"}
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_claims_through_the_api(site: Site) -> None:
    group = site.world.groups["COUNTY_IMG"]
    response = site.call(
        "PUT",
        "admin",
        f"/api/routing/groups/{group}",
        json={
            "code": "COUNTY_IMG",
            "name": "县人民医院影像诊断组",
            "institution": "COUNTY",
            "lead": "img1",
            "members": ["img1", "ecg2"],
        },
    )
    assert response.status_code == 200 and response.json()["members"] == ["ecg2", "img1"]
    stat = site.request(site.study_uid(), priority="stat")["id"]
    routine = site.request(site.study_uid())["id"]
    worklist = site.call("GET", "img1", "/api/worklist").json()
    assert [c["id"] for c in worklist["items"]] == [stat, routine]
    assert worklist["counts"] == {"stat": 1, "urgent": 0, "routine": 1}
    assert site.call("GET", "tech_a", "/api/worklist").status_code == 403

    claim = site.call("POST", "img1", f"/api/cases/{stat}/claim")
    assert claim.status_code == 200 and claim.json()["lease_token"] == 1
    held = site.call("POST", "ecg2", f"/api/cases/{stat}/claim")
    assert held.status_code == 409 and held.json()["error"] == "ClaimHeld"
    assert "img1" not in held.text
    assert site.call("POST", "city1", f"/api/cases/{stat}/claim").status_code == 404
    assert site.call("POST", "tech_a", f"/api/cases/{stat}/claim").status_code == 403
    assert site.call("POST", "img1", "/api/cases/999999/claim").status_code == 404

    site.world.clock.advance(minutes=6)
    lapsed = site.call("POST", "img1", f"/api/cases/{stat}/renew", json={"lease_token": 1})
    assert lapsed.status_code == 409 and lapsed.json()["error"] == "LeaseExpired"
    taken = site.call("POST", "ecg2", f"/api/cases/{stat}/claim").json()
    assert taken["lease_token"] == 2 and taken["holder"] == "ecg2"
    renewed = site.call("POST", "ecg2", f"/api/cases/{stat}/renew", json={"lease_token": 2})
    assert renewed.status_code == 200
    released = site.call("POST", "ecg2", f"/api/cases/{stat}/release", json={"lease_token": 2})
    assert released.status_code == 200 and released.json()["status"] == "queued"

    nxt = site.call("POST", "img1", "/api/worklist/next")
    assert nxt.status_code == 200 and nxt.json()["case_id"] == stat
    assert site.call("POST", "city1", "/api/worklist/next").status_code == 204

    assigned = site.call("POST", "admin", f"/api/cases/{routine}/assign", json={"user": "ecg2"})
    assert assigned.status_code == 200 and assigned.json()["claim_holder"] == "ecg2"
    notes = site.call("GET", "ecg2", "/api/notifications", params={"unread": True}).json()
    assert [(n["kind"], n["case_id"]) for n in notes] == [("assigned", routine)]
    read = site.call("POST", "ecg2", f"/api/notifications/{notes[0]['id']}/read")
    assert read.status_code == 200 and read.json()["read_at"] is not None
    assert site.call("POST", "img1", f"/api/notifications/{notes[0]['id']}/read").status_code == (
        404
    )
    assert site.call("GET", "ecg2", "/api/notifications", params={"unread": True}).json() == []


def test_routing_table_through_the_api(site: Site) -> None:
    rule = {
        "name": "夜间MR",
        "group": "CITY_IMG",
        "when": {"modalities": ["MR"], "time": "22:00-08:00"},
    }
    created = site.call("POST", "admin", "/api/routing/rules", json=rule)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["position"] == 10 and body["when"]["time"] == "22:00-08:00"
    assert body["when"]["modalities"] == ["MR"] and body["when"]["body_parts"] is None
    assert site.call("GET", "tech_a", "/api/routing/rules").status_code == 403
    assert site.call("GET", "img1", "/api/routing/rules").status_code == 403
    bad_time = {**rule, "when": {"time": "25:00-08:00"}}
    assert site.call("POST", "admin", "/api/routing/rules", json=bad_time).status_code == 422
    no_group = {**rule, "group": "NOWHERE"}
    response = site.call("POST", "admin", "/api/routing/rules", json=no_group)
    assert response.status_code == 422 and response.json()["error"] == "InvalidRouting"
    replaced = site.call(
        "PUT", "admin", f"/api/routing/rules/{body['id']}", json={**rule, "enabled": False}
    )
    assert replaced.json()["enabled"] is False
    in_use = site.call("DELETE", "admin", f"/api/routing/groups/{site.world.groups['CITY_IMG']}")
    assert in_use.status_code == 409
    assert site.call("DELETE", "admin", f"/api/routing/rules/{body['id']}").status_code == 204
    assert site.call("GET", "admin", "/api/routing/rules").json() == []

    deadlines = [{"priority": "stat", "minutes": 15}, {"priority": "routine", "minutes": 600}]
    put = site.call("PUT", "admin", "/api/routing/deadlines", json=deadlines)
    assert put.status_code == 200
    assert [(d["priority"], d["minutes"]) for d in put.json()] == [("stat", 15), ("routine", 600)]
    case = site.request(site.study_uid(), priority="stat")
    assert case["due_at"].startswith("2026-03-02T08:15:00")

    loaded = site.call(
        "POST",
        "admin",
        "/api/routing/file",
        content=ROUTING_YAML.encode(),
        headers={"content-type": "application/yaml"},
    )
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"groups": 2, "rules": 2, "deadlines": 4}
    broken = site.call(
        "POST",
        "admin",
        "/api/routing/file",
        content=b"rules: [{group: X, when: {colour: red}}]",
        headers={"content-type": "application/yaml"},
    )
    assert broken.status_code == 422 and "colour" in broken.json()["detail"]
    groups = site.call("GET", "admin", "/api/routing/groups").json()
    assert {g["code"] for g in groups} >= {"COUNTY_ECG", "CITY_NIGHT", "PARTNER_IMG"}


def test_a_reader_opens_the_study_of_a_case_routed_to_his_group(site: Site) -> None:
    uid = site.study_uid()
    case = site.request(uid)
    assert site.call("GET", "partner", f"/api/studies/{uid}").status_code == 404
    assert site.call("GET", "partner", f"/api/cases/{case['id']}").status_code == 404
    site.call(
        "POST",
        "admin",
        f"/api/cases/{case['id']}/assign",
        json={"group_id": site.world.groups["PARTNER_IMG"]},
    )
    study = site.call("GET", "partner", f"/api/studies/{uid}")
    assert study.status_code == 200 and study.json()["study_instance_uid"] == uid
    assert site.call("GET", "partner", f"/api/cases/{case['id']}").status_code == 200
    with transaction(site.hub.factory) as session:
        actions = [
            (a.action, a.outcome)
            for a in session.scalars(
                select(AuditEvent).where(AuditEvent.actor == "partner").order_by(AuditEvent.id)
            )
        ]
    assert ("study.access_via_case", "success") in actions
    assert ("study.read", "denied") in actions and ("case.read", "denied") in actions
