"""The live worklist: a real uvicorn server, real WebSocket clients (`websockets`)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from telehealth.cases import api as cases_api
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.deps import SESSION_COOKIE
from telehealth.hub import Hub
from tests.cases import PASSWORD, World, add_study, build_world
from tests.dicomweb import serve


@dataclass
class Live:
    hub: Hub
    base: str
    world: World
    tokens: dict[str, str] = field(default_factory=dict)
    sockets: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def token(self, username: str) -> str:
        if username not in self.tokens:
            response = httpx.post(
                f"{self.base}/api/auth/login", json={"username": username, "password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            self.tokens[username] = response.json()["access_token"]
        return self.tokens[username]

    def http(self, method: str, username: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token(username)}"}
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=30, **kwargs)

    def socket(
        self,
        username: str | None = None,
        *,
        how: str = "query",
        token: str | None = None,
        **kwargs: Any,
    ) -> ClientConnection:
        """A WebSocket to the live worklist, the token sent the way `how` says."""
        token = token or (self.token(username) if username else None)
        url = self.base.replace("http://", "ws://") + "/api/worklist/live"
        if how == "query" and token:
            url += f"?token={token}"
        if how == "cookie" and token:
            kwargs["additional_headers"] = {"cookie": f"{SESSION_COOKIE}={token}"}
        ws = self.sockets.enter_context(connect(url, open_timeout=10, **kwargs))
        if how == "message" and token:
            ws.send(json.dumps({"token": token}))
        return ws

    def reader(self, username: str, how: str = "query") -> ClientConnection:
        """A connected, authenticated socket, past its hello."""
        ws = self.socket(username, how=how)
        hello = receive(ws)
        assert hello["type"] == "hello" and hello["user"] == username
        return ws

    def study_uid(self, code: str = "CLINIC_A") -> str:
        with transaction(self.hub.factory) as session:
            return add_study(
                session, self.world.ids[code], self.world.clock.now()
            ).study_instance_uid


def receive(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    return message


def expect(ws: ClientConnection, *types: str) -> list[dict[str, Any]]:
    messages = [receive(ws) for _ in types]
    assert [m["type"] for m in messages] == list(types), messages
    return messages


def silent(ws: ClientConnection) -> bool:
    try:
        ws.recv(timeout=0.3)
    except TimeoutError:
        return True
    return False


@pytest.fixture
def live(hub_factory: Callable[..., Hub], clock: FakeClock) -> Iterator[Live]:
    hub = hub_factory(start=False, dicom=False, clock=clock)
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
    with serve(hub) as base:
        site = Live(hub, base, world)
        with site.sockets:
            yield site


def test_live_worklist_tells_each_reader_about_his_cases(live: Live) -> None:
    img1 = live.reader("img1", how="query")
    city1 = live.reader("city1", how="message")
    ecg1 = live.reader("ecg1", how="message")
    tech_a = live.reader("tech_a", how="cookie")
    tech_b = live.reader("tech_b")

    case = live.http(
        "POST", "tech_a", "/api/cases", json={"study_instance_uid": live.study_uid()}
    ).json()
    created = expect(img1, "case.created")[0]
    assert created["case_id"] == case["id"] and created["status"] == "queued"
    assert created["group_id"] == live.world.groups["COUNTY_IMG"]
    assert "patient" not in json.dumps(created)  # a doorbell, not patient data
    expect(tech_a, "case.created")

    live.http("POST", "img1", f"/api/cases/{case['id']}/claim")
    claimed = expect(img1, "case.claimed")[0]
    assert claimed["claim_holder_id"] == live.world.users["img1"].id
    live.http("POST", "img1", f"/api/cases/{case['id']}/release")
    expect(img1, "case.released")
    expect(tech_a, "case.claimed", "case.released")

    live.world.clock.advance(hours=24, minutes=1)  # a routine case, overdue and unclaimed
    live.hub.escalator.run_once()
    warning, _, escalated = expect(img1, "notification", "case.warning", "case.escalated")
    assert warning["kind"] == "deadline_warning" and warning["case_id"] == case["id"]
    assert escalated["group_id"] == live.world.groups["CITY_IMG"]
    assert escalated["previous_group_id"] == live.world.groups["COUNTY_IMG"]
    note, _ = expect(city1, "notification", "case.escalated")
    assert note["kind"] == "escalated"
    expect(tech_a, "case.warning", "case.escalated")
    # Readers of other groups and other clinics heard nothing of it.
    assert silent(ecg1) and silent(tech_b)


def closed_with(ws: ClientConnection) -> int:
    """The close code the server ends the connection with."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def test_live_worklist_refuses_without_a_valid_login(live: Live) -> None:
    for how in ("query", "message"):
        ws = live.socket(token="forged", how=how)
        assert receive(ws) == {"type": "error", "error": "BadToken"}
        assert closed_with(ws) == cases_api.WS_UNAUTHENTICATED
    # A session cookie sent from another site's page is not taken (cross-site hijacking):
    # without a token in the first message, the connection ends.
    ws = live.socket("img1", how="cookie", origin="http://evil.example")  # type: ignore[arg-type]
    ws.send(json.dumps({"hello": "no token here"}))
    assert closed_with(ws) == cases_api.WS_UNAUTHENTICATED


def test_a_logged_out_reader_is_disconnected(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cases_api, "REVALIDATE_SECONDS", 0.2)
    img1 = live.reader("img1")
    assert live.hub.case_feed.connections == 1
    assert live.http("POST", "img1", "/api/auth/logout").status_code == 204
    assert closed_with(img1) == cases_api.WS_UNAUTHENTICATED
    deadline = time.monotonic() + 10
    while live.hub.case_feed.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.hub.case_feed.connections == 0
