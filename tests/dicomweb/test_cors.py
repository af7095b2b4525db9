"""CORS on /dicomweb: a viewer served from another, configured origin may call the hub with
credentials; any other origin gets no CORS headers, so its browser withholds the answers.

Such a viewer sends the bearer token: the session cookie is SameSite=Strict and stays home.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from telehealth.hub import Hub
from tests.dicomweb import Web, open_web

# CORS is the app's middleware, the same whatever the database: one is enough.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

VIEWER = "https://viewer.county-hospital.example"
STRANGER = "https://elsewhere.example"


@pytest.fixture
def web(hub_factory: Callable[..., Hub]) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False, cors_origins=[VIEWER])) as web:
        yield web


def preflight(web: Web, origin: str) -> httpx.Response:
    return httpx.options(
        f"{web.base}/dicomweb/studies",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, accept",
        },
    )


def test_a_configured_viewer_origin_may_call_with_credentials(web: Web) -> None:
    allowed = preflight(web, VIEWER)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == VIEWER
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "GET" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()

    with web.http("spec") as http:
        found = http.get("/studies", headers={"Origin": VIEWER})
        assert found.status_code == 200 and found.json()
        assert found.headers["access-control-allow-origin"] == VIEWER
        assert found.headers["access-control-allow-credentials"] == "true"
        assert "origin" in found.headers["vary"].lower()  # caches must not mix origins
        metadata = http.get(
            f"/studies/{web.study['A']}/series/{web.series['A']}/metadata",
            headers={"Origin": VIEWER},
        )
        assert metadata.headers["access-control-allow-origin"] == VIEWER

    # The viewer must see a 401 to send its user to log in: errors carry the headers too.
    refused = httpx.get(f"{web.base}/dicomweb/studies", headers={"Origin": VIEWER})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == VIEWER


def test_an_unlisted_origin_gets_no_cors_headers(web: Web) -> None:
    denied = preflight(web, STRANGER)
    assert denied.status_code == 400
    assert "access-control-allow-origin" not in denied.headers

    with web.http("spec") as http:
        # The hub still answers a request that carries a token (CORS binds browsers, not
        # servers), but without the headers a browser page on that origin cannot read it.
        answer = http.get("/studies", headers={"Origin": STRANGER})
        assert answer.status_code == 200
        # (Starlette still adds Allow-Credentials; without Allow-Origin it grants nothing.)
        assert "access-control-allow-origin" not in answer.headers


def test_no_cors_headers_when_no_origin_is_configured(hub_factory: Callable[..., Hub]) -> None:
    with open_web(hub_factory(dicom=False)) as web, web.http("spec") as http:
        answer = http.get("/studies", headers={"Origin": VIEWER})
        assert answer.status_code == 200
        assert "access-control-allow-origin" not in answer.headers
        assert preflight(web, VIEWER).status_code == 405  # no CORS middleware: no OPTIONS
