"""Institutions renamed and moved, AE titles edited and deleted, through the API: admins only,
every change audited, and the DICOM caller check follows the new registration."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from telehealth.auth.models import AuditEvent, Role
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.institutions import service as institutions
from tests.conftest import hub_with_users, login_token


@pytest.fixture
def hub(hub_factory: Callable[..., Hub], clock: FakeClock) -> Hub:
    return hub_with_users(
        hub_factory,
        clock,
        [
            ("admin", Role.ADMIN, "COUNTY"),
            ("tech", Role.TECHNICIAN, "CLINIC_A"),
        ],
    )


def _as(client: TestClient, username: str) -> dict[str, str]:
    return {"authorization": f"Bearer {login_token(client, username)}"}


def _tree(client: TestClient, headers: dict[str, str]) -> dict[str, dict[str, object]]:
    return {i["code"]: i for i in client.get("/api/institutions", headers=headers).json()}


def _audit(hub: Hub, prefix: str) -> list[tuple[str, str, str]]:
    with transaction(hub.factory) as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action.like(f"{prefix}.%")))
        return [(e.action, e.object_id, e.detail) for e in rows]


def test_rename_and_move_an_institution_but_never_below_itself(
    client: TestClient, hub: Hub
) -> None:
    admin = _as(client, "admin")
    created = client.post(
        "/api/institutions",
        json={"code": "VILLAGE_1", "name": "张家村", "level": "village", "parent_code": "CLINIC_A"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    village = created.json()
    tree = _tree(client, admin)

    moved = client.put(
        f"/api/institutions/{village['id']}",
        json={"name": "张家村卫生室", "level": "village", "parent_code": "CLINIC_B"},
        headers=admin,
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["name"] == "张家村卫生室"
    assert moved.json()["parent_id"] == tree["CLINIC_B"]["id"]
    assert _tree(client, admin)["VILLAGE_1"]["parent_id"] == tree["CLINIC_B"]["id"]

    # COUNTY under its own grandchild, or under itself: refused, nothing changes.
    county = tree["COUNTY"]["id"]
    for parent in ("VILLAGE_1", "COUNTY"):
        response = client.put(
            f"/api/institutions/{county}",
            json={"name": "县医院", "level": "county", "parent_code": parent},
            headers=admin,
        )
        assert response.status_code == 422, parent
    assert _tree(client, admin)["COUNTY"]["parent_id"] is None
    blank = client.put(
        f"/api/institutions/{county}", json={"name": " ", "level": "county"}, headers=admin
    )
    assert blank.status_code == 422
    missing = client.put(
        "/api/institutions/999", json={"name": "x", "level": "county"}, headers=admin
    )
    assert missing.status_code == 404
    assert _audit(hub, "institution") == [
        ("institution.create", "VILLAGE_1", ""),
        ("institution.update", "VILLAGE_1", "name, parent"),
    ]


def test_edit_and_delete_an_ae_title(client: TestClient, hub: Hub) -> None:
    admin = _as(client, "admin")
    created = client.post(
        "/api/application-entities",
        json={"ae_title": "VILLAGE_US", "institution_code": "CLINIC_A", "host": "10.0.0.7"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    entity = created.json()
    assert entity["host"] == "10.0.0.7"

    updated = client.put(
        f"/api/application-entities/{entity['id']}",
        json={
            "ae_title": "VILLAGE_US2",
            "institution_code": "CLINIC_B",
            "host": "10.0.0.8",
            "port": 11112,
            "description": "彩超",
        },
        headers=admin,
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["ae_title"], updated.json()["port"]) == ("VILLAGE_US2", 11112)
    with transaction(hub.factory) as session:
        caller = institutions.authorize_caller(session, "VILLAGE_US2", "10.0.0.8")
        assert caller.institution_id == institutions.get_institution(session, "CLINIC_B").id
        with pytest.raises(institutions.CallerRefused):
            institutions.authorize_caller(session, "VILLAGE_US2", "10.0.0.7")

    # No host: any address may call under the title.
    open_host = client.put(
        f"/api/application-entities/{entity['id']}",
        json={"ae_title": "VILLAGE_US2", "institution_code": "CLINIC_B", "host": ""},
        headers=admin,
    )
    assert open_host.json()["host"] is None
    # Refusals: a taken title, a bad title, a host with spaces, a bad port.
    for body, status in [
        ({"ae_title": "CLINIC_A_DR", "institution_code": "CLINIC_B"}, 409),
        ({"ae_title": "BAD\\TITLE", "institution_code": "CLINIC_B"}, 422),
        ({"ae_title": "VILLAGE_US2", "institution_code": "CLINIC_B", "host": "a b"}, 422),
        ({"ae_title": "VILLAGE_US2", "institution_code": "CLINIC_B", "port": 70000}, 422),
    ]:
        response = client.put(f"/api/application-entities/{entity['id']}", json=body, headers=admin)
        assert response.status_code == status, (body, response.text)

    assert (
        client.delete(f"/api/application-entities/{entity['id']}", headers=admin).status_code == 204
    )
    assert (
        client.delete(f"/api/application-entities/{entity['id']}", headers=admin).status_code == 404
    )
    titles = [e["ae_title"] for e in client.get("/api/application-entities", headers=admin).json()]
    assert "VILLAGE_US2" not in titles
    with transaction(hub.factory) as session, pytest.raises(institutions.CallerRefused):
        institutions.authorize_caller(session, "VILLAGE_US2", "10.0.0.8")
    assert [a for a, _, _ in _audit(hub, "ae")] == [
        "ae.create",
        "ae.update",
        "ae.update",
        "ae.delete",
    ]


def test_a_technician_may_not_change_the_consortium(client: TestClient, hub: Hub) -> None:
    tech = _as(client, "tech")
    county = _tree(client, tech)["COUNTY"]["id"]
    renamed = client.put(
        f"/api/institutions/{county}", json={"name": "mine", "level": "county"}, headers=tech
    )
    assert renamed.status_code == 403
    body = {"ae_title": "X", "institution_code": "CLINIC_A"}
    assert client.put("/api/application-entities/1", json=body, headers=tech).status_code == 403
    assert client.delete("/api/application-entities/1", headers=tech).status_code == 403
    assert _tree(client, tech)["COUNTY"]["name"] == "县人民医院"
