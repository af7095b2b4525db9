"""Consult routes on the real app, and a join token from them used on the hub's own
signalling server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from websockets.asyncio.client import connect

from telehealth.app import create_app
from telehealth.auth.models import AuditEvent, Role
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.cases import PASSWORD, World, add_user, build_world


class Site:
    def __init__(self, hub: Hub, client: TestClient, world: World) -> None:
        self.hub, self.client, self.world = hub, client, world
        self.tokens: dict[str, str] = {}

    def call(self, method: str, username: str, path: str, **kwargs: Any) -> httpx.Response:
        if username not in self.tokens:  # Argon2: log in once per user
            response = self.client.post(
                "/api/auth/login", json={"username": username, "password": PASSWORD}
            )
            self.client.cookies.clear()
            self.tokens[username] = response.json()["access_token"]
        headers = {"authorization": f"Bearer {self.tokens[username]}"}
        return self.client.request(method, path, headers=headers, **kwargs)

    def consult(self) -> dict[str, Any]:
        with transaction(self.hub.factory) as session:
            self.world.session = session
            case = self.world.request(self.world.study())
            case_id = case.id
        response = self.call(
            "POST", "tech_a", "/api/consults",
            json={"case_id": case_id, "host": "img1", "participants": ["ecg1"], "reason": "胸痛"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def site(hub_factory: Callable[..., Hub], clock: FakeClock) -> Iterator[Site]:
    hub = hub_factory(
        start=False,
        clock=clock,
        signaling_port=0,
        ice_stun_urls=["stun:stun.example.cn:3478"],
        ice_turn_urls=["turn:turn.example.cn:3478"],
        turn_secret="coturn-secret",
    )
    # The signalling server as `telehealth serve` runs it: beside the hub, on its own port.
    hub.start(dicom=False, background=False, signaling=True)
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
    with TestClient(create_app(hub)) as client:
        yield Site(hub, client, world)


def test_request_list_read_and_join_a_consult(site: Site) -> None:
    consult = site.consult()
    assert consult["host"] == "img1" and consult["status"] == "scheduled"
    assert {p["username"] for p in consult["participants"]} == {"img1", "tech_a", "ecg1"}
    upcoming = site.call("GET", "ecg1", "/api/consults").json()
    assert [c["id"] for c in upcoming] == [consult["id"]]
    assert site.call("GET", "img1", f"/api/consults/{consult['id']}").status_code == 200

    ticket = site.call("POST", "img1", f"/api/consults/{consult['id']}/join").json()
    assert ticket["role"] == "host" and ticket["consult_id"] == consult["id"]
    stun, turn = ticket["ice_servers"]
    assert stun == {"urls": ["stun:stun.example.cn:3478"], "username": None, "credential": None}
    assert turn["username"].endswith(":" + str(site.world.users["img1"].id))
    assert site.hub.signaling is not None
    assert ticket["signaling_url"] == (
        f"ws://127.0.0.1:{site.hub.signaling.port}/rooms/{consult['id']}"
    )

    async def join() -> dict[str, Any]:
        async with connect(ticket["signaling_url"]) as ws:
            await ws.send(json.dumps({"v": 1, "type": "join", "token": ticket["token"]}))
            welcome: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
            return welcome

    welcome = asyncio.run(join())
    assert welcome["type"] == "welcome" and welcome["role"] == "host"


def test_another_clinic_gets_not_found_and_strangers_get_401(site: Site) -> None:
    consult = site.consult()
    for method, path in [
        ("GET", f"/api/consults/{consult['id']}"),
        ("POST", f"/api/consults/{consult['id']}/join"),
        ("POST", f"/api/consults/{consult['id']}/cancel"),
    ]:
        assert site.call(method, "tech_b", path).status_code == 404
        assert site.client.request(method, path).status_code == 401
    assert site.call("GET", "tech_b", "/api/consults").json() == []


def test_the_host_files_the_outcome_and_the_case_history_shows_it(site: Site) -> None:
    consult = site.consult()
    body = {
        "notes": "心电图示 ST 段抬高", "advice": "转县医院",
        "referral": "up", "referral_institution": "COUNTY", "referral_reason": "需介入",
    }  # fmt: skip
    path = f"/api/consults/{consult['id']}/outcome"
    assert site.call("POST", "tech_a", path, json=body).status_code == 403
    done = site.call("POST", "img1", path, json=body)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    assert done.json()["referral_institution"] == "COUNTY"
    again = site.call("POST", "img1", f"/api/consults/{consult['id']}/join")
    assert again.status_code == 409


def test_an_invited_doctor_of_another_clinic_sees_the_study_of_the_consult(site: Site) -> None:
    """Clinic B's doctor, invited to a consult on clinic A's case, opens the case's images
    (the room's shared viewer) and no other study of clinic A; a cancelled consult gives no
    access."""
    with transaction(site.hub.factory) as session:
        add_user(
            session,
            "other1",
            Role.CONSULT_DOCTOR,
            site.world.ids["CLINIC_B"],
            site.world.clock.now(),
        )
        site.world.session = session
        study = site.world.study()
        study_uid = study.study_instance_uid
        case_id = site.world.request(study).id
        unrelated = site.world.study().study_instance_uid
    path = f"/api/studies/{study_uid}"
    assert site.call("GET", "other1", path).status_code == 404  # not invited yet
    created = site.call(
        "POST", "tech_a", "/api/consults",
        json={"case_id": case_id, "host": "img1", "participants": ["other1"], "reason": "会诊"},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    assert site.call("GET", "other1", path).status_code == 200
    assert site.call("GET", "other1", f"/api/studies/{unrelated}").status_code == 404
    with transaction(site.hub.factory) as session:
        trail = session.scalars(
            select(AuditEvent.action).where(AuditEvent.object_id == study_uid)
        ).all()
    assert "study.access_via_consult" in trail

    cancelled = site.call("POST", "tech_a", f"/api/consults/{created.json()['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert site.call("GET", "other1", path).status_code == 404
