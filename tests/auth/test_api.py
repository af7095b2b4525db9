"""Login, tokens and cookies, and who may call what: the real app on a real hub."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from telehealth.auth import service as auth
from telehealth.auth.models import AuditEvent, AuditOutcome, Role, User
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.deps import SESSION_COOKIE
from telehealth.hub import Hub
from telehealth.institutions.models import ApplicationEntity, Institution
from tests.conftest import USER_PASSWORD, hub_with_users

PASSWORD = USER_PASSWORD
# Routes anyone may call. Every other route must answer 401 without a login.
PUBLIC = {
    ("GET", "/api/health"),
    ("POST", "/api/auth/login"),
    # The OHIF viewer's static files and generated config: no patient data; its DICOMweb
    # calls need a login like any other.
    ("GET", "/ohif"),
    ("GET", "/ohif/app-config.js"),
    ("GET", "/ohif/{rel:path}"),
    # The web app's static files, likewise (its pages call /api with the login).
    ("GET", "/"),
    ("GET", "/app"),
    ("GET", "/app/{rel:path}"),
}
# WebSocket routes authenticate in their own handshake; each has its own refusal test.
WEBSOCKETS = {"/api/worklist/live"}
DOCS = {"/api/docs", "/docs/oauth2-redirect", "/api/openapi.json", "/api/redoc"}


@pytest.fixture
def hub(hub_factory: Callable[..., Hub], clock: FakeClock) -> Hub:
    return hub_with_users(
        hub_factory,
        clock,
        [
            ("admin", Role.ADMIN, "COUNTY"),
            ("spec", Role.SPECIALIST, "COUNTY"),
            ("tech", Role.TECHNICIAN, "CLINIC_A"),
        ],
    )


def _login(client: TestClient, username: str, password: str = PASSWORD) -> str:
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _audit(hub: Hub, action: str) -> list[AuditEvent]:
    with transaction(hub.factory) as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()
        session.expunge_all()
        return list(rows)


def _guarded_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path with sample parameters) for every route that is not public or docs."""
    found = []
    # FastAPI 0.16x keeps included routers unflattened in app.routes; this walks into them.
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        if path in DOCS:
            continue
        # A route of another kind (a mount, a websocket) would slip past the check below.
        route = context.original_route
        if isinstance(route, APIWebSocketRoute):
            assert path in WEBSOCKETS, f"WebSocket route {path} without a refusal test"
            continue
        assert isinstance(route, APIRoute), f"unchecked route {type(route).__name__} {path}"
        for method in sorted(context.methods or ()):
            if (method, path) not in PUBLIC:
                found.append((method, re.sub(r"\{[^}]+\}", "1.2.3", path)))
    return found


# --- login ------------------------------------------------------------------------------------


def test_login_returns_a_token_and_sets_an_httponly_cookie(client: TestClient, hub: Hub) -> None:
    response = client.post("/api/auth/login", json={"username": "tech", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["user"]["username"] == "tech"
    assert "password_hash" not in body["user"]
    assert body["expires_in"] == int(hub.token_ttl.total_seconds())
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={body['access_token']};")
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert [e.outcome for e in _audit(hub, "auth.login")] == [AuditOutcome.SUCCESS]


@pytest.mark.parametrize(
    ("username", "password"), [("tech", "wrong-password"), ("nobody", PASSWORD)]
)
def test_wrong_password_is_401_and_audited_as_denied(
    client: TestClient, hub: Hub, username: str, password: str
) -> None:
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "set-cookie" not in response.headers
    # The refusal is kept although the request's transaction rolled back.
    events = _audit(hub, "auth.login")
    assert [(e.outcome, e.object_id, e.actor) for e in events] == [
        (AuditOutcome.DENIED, username, "anonymous")
    ]


def test_disabled_user_cannot_log_in(client: TestClient, hub: Hub) -> None:
    with transaction(hub.factory) as session:
        session.scalar(select(User).where(User.username == "tech")).active = False  # type: ignore[union-attr]
    response = client.post("/api/auth/login", json={"username": "tech", "password": PASSWORD})
    assert response.status_code == 401


def test_login_with_an_empty_body_is_422(client: TestClient) -> None:
    assert client.post("/api/auth/login", json={}).status_code == 422


def test_health_needs_no_login(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["database"] is True


# --- every other route needs a login ----------------------------------------------------------


def test_every_route_but_health_and_login_refuses_anonymous_callers(client: TestClient) -> None:
    routes = _guarded_routes(client.app)  # type: ignore[arg-type]
    # Guard against a vacuous pass: the routes we know of must be among those checked.
    assert {("GET", "/api/studies"), ("POST", "/api/instances"), ("GET", "/api/audit")} <= set(
        routes
    )
    for method, path in routes:
        for headers in ({}, _bearer("not-a-token"), {"cookie": f"{SESSION_COOKIE}=forged"}):
            response = client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["content-type"] == "application/json"


def test_bearer_token_and_cookie_both_identify_the_user(client: TestClient) -> None:
    token = _login(client, "spec")  # also sets the cookie in the client's jar
    assert client.get("/api/auth/me").json()["username"] == "spec"
    client.cookies.clear()
    assert client.get("/api/auth/me").status_code == 401
    response = client.get("/api/auth/me", headers=_bearer(token))
    assert response.json()["username"] == "spec"
    response = client.get("/api/auth/me", headers={"cookie": f"{SESSION_COOKIE}={token}"})
    assert response.json()["username"] == "spec"


def test_logout_voids_the_token_on_every_device(
    client: TestClient, hub: Hub, clock: FakeClock
) -> None:
    phone = _login(client, "tech")
    client.cookies.clear()
    laptop = _login(client, "tech")
    response = client.post("/api/auth/logout", headers=_bearer(laptop))
    assert response.status_code == 204
    assert SESSION_COOKIE in response.headers["set-cookie"]  # the browser drops the cookie
    for token in (phone, laptop):
        assert client.get("/api/auth/me", headers=_bearer(token)).status_code == 401
    clock.advance(seconds=2)
    again = _login(client, "tech")
    assert client.get("/api/auth/me", headers=_bearer(again)).status_code == 200
    assert [e.outcome for e in _audit(hub, "auth.logout")] == [AuditOutcome.SUCCESS]


def test_token_expires_with_the_hub_clock(client: TestClient, hub: Hub, clock: FakeClock) -> None:
    token = _login(client, "tech")
    clock.advance(seconds=hub.token_ttl.total_seconds() + 1)
    client.cookies.clear()
    assert client.get("/api/auth/me", headers=_bearer(token)).status_code == 401


def test_token_from_another_hub_is_refused(client: TestClient, hub: Hub, clock: FakeClock) -> None:
    with transaction(hub.factory) as session:
        tech = session.scalar(select(User).where(User.username == "tech"))
        assert tech is not None
        forged = auth.issue_token(tech, "x" * 64, ttl=hub.token_ttl, clock=clock)
    assert client.get("/api/auth/me", headers=_bearer(forged)).status_code == 401


# --- administration is for admins -------------------------------------------------------------

NEW_INSTITUTION = {
    "code": "VILLAGE_1",
    "name": "张家村卫生室",
    "level": "village",
    "parent_code": "CLINIC_A",
}
NEW_USER = {
    "username": "tech2",
    "password": "yet-another-password",
    "role": "technician",
    "institution_code": "CLINIC_A",
}
NEW_AE = {"ae_title": "VILLAGE_US", "institution_code": "CLINIC_A", "host": "10.0.0.9"}
ADMIN_POSTS = [
    ("/api/institutions", NEW_INSTITUTION),
    ("/api/users", NEW_USER),
    ("/api/application-entities", NEW_AE),
]


@pytest.mark.parametrize("username", ["tech", "spec"])
def test_non_admins_cannot_administer(client: TestClient, hub: Hub, username: str) -> None:
    token = _login(client, username)
    client.cookies.clear()
    for path, body in ADMIN_POSTS:
        response = client.post(path, json=body, headers=_bearer(token))
        assert response.status_code == 403, (path, response.text)
    for path in ("/api/users", "/api/application-entities", "/api/audit"):
        assert client.get(path, headers=_bearer(token)).status_code == 403, path
    with transaction(hub.factory) as session:
        assert session.scalar(select(Institution).where(Institution.code == "VILLAGE_1")) is None
        assert session.scalar(select(User).where(User.username == "tech2")) is None
        assert (
            session.scalar(
                select(ApplicationEntity).where(ApplicationEntity.ae_title == "VILLAGE_US")
            )
            is None
        )


def test_admin_creates_institution_user_and_ae(client: TestClient, hub: Hub) -> None:
    token = _login(client, "admin")
    client.cookies.clear()
    for path, body in ADMIN_POSTS:
        response = client.post(path, json=body, headers=_bearer(token))
        assert response.status_code == 201, (path, response.text)
    institutions = client.get("/api/institutions", headers=_bearer(token)).json()
    village = next(i for i in institutions if i["code"] == "VILLAGE_1")
    assert village["name"] == "张家村卫生室"
    assert village["level"] == "village"
    users = client.get("/api/users", headers=_bearer(token)).json()
    assert "tech2" in [u["username"] for u in users]
    entities = client.get("/api/application-entities", headers=_bearer(token)).json()
    assert ("VILLAGE_US", "10.0.0.9") in [(e["ae_title"], e["host"]) for e in entities]
    # The new user can log in with the password the admin set.
    assert _login(client, "tech2", "yet-another-password")
    # Creating the same things again is a conflict, not a server error.
    for path, body in ADMIN_POSTS:
        response = client.post(path, json=body, headers=_bearer(token))
        assert response.status_code == 409, (path, response.text)


def test_admin_input_is_validated(client: TestClient) -> None:
    token = _login(client, "admin")
    bad = [
        ("/api/users", {**NEW_USER, "password": "short"}),
        ("/api/users", {**NEW_USER, "role": "superuser"}),
        ("/api/institutions", {**NEW_INSTITUTION, "level": "planet"}),
        ("/api/application-entities", {**NEW_AE, "ae_title": "A\\B"}),
        ("/api/application-entities", {**NEW_AE, "port": 70000}),
    ]
    for path, body in bad:
        response = client.post(path, json=body, headers=_bearer(token))
        assert response.status_code == 422, (path, body, response.text)
    missing_parent = {**NEW_INSTITUTION, "parent_code": "NOWHERE"}
    response = client.post("/api/institutions", json=missing_parent, headers=_bearer(token))
    assert response.status_code == 404


def test_audit_trail_is_for_admins_only(client: TestClient) -> None:
    client.post("/api/auth/login", json={"username": "tech", "password": "wrong-password"})
    token = _login(client, "admin")
    client.cookies.clear()
    events = client.get("/api/audit", headers=_bearer(token)).json()
    assert [(e["action"], e["outcome"], e["actor"]) for e in events[:2]] == [
        ("auth.login", "success", "admin"),
        ("auth.login", "denied", "anonymous"),
    ]
    assert client.get("/api/audit?limit=100000", headers=_bearer(token)).status_code == 422
