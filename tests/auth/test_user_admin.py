"""User administration through the API: edit, deactivate, reset a password; admins only,
every change audited. The real app on a real hub (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from telehealth.auth.models import AuditEvent, Role, User
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.conftest import USER_PASSWORD, hub_with_users, login_token

PASSWORD = USER_PASSWORD


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


def _token(client: TestClient, username: str, password: str = PASSWORD) -> str:
    return login_token(client, username, password)


def _as(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _user_id(hub: Hub, username: str) -> int:
    with transaction(hub.factory) as session:
        user_id = session.scalar(select(User.id).where(User.username == username))
    assert user_id is not None
    return user_id


def _audit(hub: Hub) -> list[tuple[str, str, str]]:
    with transaction(hub.factory) as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action.like("user.%")))
        return [(e.action, e.object_id, e.detail) for e in rows]


def test_admin_edits_deactivates_reactivates_and_resets_password(
    client: TestClient, hub: Hub, clock: FakeClock
) -> None:
    admin = _as(_token(client, "admin"))
    tech_token = _token(client, "tech")
    tech_id = _user_id(hub, "tech")

    response = client.patch(
        f"/api/users/{tech_id}",
        json={"display_name": "王 <b>技师</b>", "institution_code": "CLINIC_B"},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == "王 <b>技师</b>"
    listed = {u["username"]: u for u in client.get("/api/users", headers=admin).json()}
    assert listed["tech"]["institution_id"] != listed["admin"]["institution_id"]
    # Moving a user to another clinic changes what he may see: his old token is void.
    assert client.get("/api/auth/me", headers=_as(tech_token)).status_code == 401

    clock.advance(seconds=1)
    response = client.patch(f"/api/users/{tech_id}", json={"active": False}, headers=admin)
    assert response.status_code == 200 and response.json()["active"] is False
    login = client.post("/api/auth/login", json={"username": "tech", "password": PASSWORD})
    assert login.status_code == 401

    response = client.patch(f"/api/users/{tech_id}", json={"active": True}, headers=admin)
    assert response.json()["active"] is True
    _token(client, "tech")

    new_password = "another-long-password"
    short = client.post(f"/api/users/{tech_id}/password", json={"password": "short"}, headers=admin)
    assert short.status_code == 422
    clock.advance(seconds=1)
    response = client.post(
        f"/api/users/{tech_id}/password", json={"password": new_password}, headers=admin
    )
    assert response.status_code == 204
    old = client.post("/api/auth/login", json={"username": "tech", "password": PASSWORD})
    assert old.status_code == 401
    _token(client, "tech", new_password)

    assert _audit(hub) == [
        ("user.update", "tech", "display_name, institution=CLINIC_B"),
        ("user.update", "tech", "active=False"),
        ("user.update", "tech", "active=True"),
        ("user.password_reset", "tech", ""),
    ]


def test_role_change_and_refusals(client: TestClient, hub: Hub, clock: FakeClock) -> None:
    admin = _as(_token(client, "admin"))
    tech_id, admin_id = _user_id(hub, "tech"), _user_id(hub, "admin")

    response = client.patch(f"/api/users/{tech_id}", json={"role": "specialist"}, headers=admin)
    assert response.status_code == 200 and response.json()["role"] == "specialist"
    # Unknown role or institution, blank name, missing user.
    assert (
        client.patch(f"/api/users/{tech_id}", json={"role": "king"}, headers=admin).status_code
        == 422
    )
    bad_place = client.patch(
        f"/api/users/{tech_id}", json={"institution_code": "NOWHERE"}, headers=admin
    )
    assert bad_place.status_code == 404
    blank = client.patch(f"/api/users/{tech_id}", json={"display_name": "   "}, headers=admin)
    assert blank.status_code == 422
    assert client.patch("/api/users/9999", json={"active": False}, headers=admin).status_code == 404
    # An admin cannot lock himself out.
    for body in ({"active": False}, {"role": "technician"}):
        response = client.patch(f"/api/users/{admin_id}", json=body, headers=admin)
        assert response.status_code == 409, body
    # Nobody else may administer users.
    client.patch(f"/api/users/{tech_id}", json={"role": "technician"}, headers=admin)
    clock.advance(seconds=1)  # the role change voided tokens issued up to now
    tech = _as(_token(client, "tech"))
    assert client.get("/api/users", headers=tech).status_code == 403
    assert (
        client.patch(f"/api/users/{admin_id}", json={"active": False}, headers=tech).status_code
        == 403
    )
    reset = client.post(
        f"/api/users/{admin_id}/password", json={"password": "stolen-password"}, headers=tech
    )
    assert reset.status_code == 403
    _token(client, "admin")  # still works


def test_admin_routes_want_a_login(client: TestClient) -> None:
    for method, path in [
        ("PATCH", "/api/users/1"),
        ("POST", "/api/users/1/password"),
        ("PUT", "/api/institutions/1"),
        ("PUT", "/api/application-entities/1"),
        ("DELETE", "/api/application-entities/1"),
    ]:
        response = client.request(method, path, json={"active": False, "password": "x" * 12})
        assert response.status_code == 401, (method, path)
