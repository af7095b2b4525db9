"""The web app (/app/) in Debian's Chromium against a real served hub.

`web` is a served hub with a consortium (COUNTY with CLINIC_A and CLINIC_B), one user per role
(admin, spec, tech_a, tech_b; password PASSWORD) and a few studies (tests/dicomweb). The
build is brought up to date with the sources first, so a test sees what src/ says.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from telehealth.hub import Hub
from telehealth.webapp import DEFAULT_DIST
from tests.browser import ARTIFACTS, launch_chromium, require
from tests.dicomweb import PASSWORD, Web, open_web

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = ARTIFACTS / "webapp"

# The pages only see HTTP; the API runs on both databases elsewhere.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="session")
def webapp_dist() -> Path:
    build = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_webapp.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    require(build.returncode == 0, f"web app build failed:\n{build.stdout}\n{build.stderr}")
    require((DEFAULT_DIST / "index.html").is_file(), f"no web app build at {DEFAULT_DIST}")
    return DEFAULT_DIST


@pytest.fixture(scope="module")
def browser(webapp_dist: Path) -> Iterator[Any]:
    yield from launch_chromium()


@pytest.fixture
def web(hub_factory: Callable[..., Hub], webapp_dist: Path) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False)) as web:
        yield web


def logged_in(browser: Any, web: Web, username: str, *, locale: str = "zh-CN") -> Any:
    """A new browser page whose context holds `username`'s session cookie, at /app/."""
    context = browser.new_context(
        viewport={"width": 1440, "height": 900}, device_scale_factor=1, locale=locale
    )
    response = context.request.post(
        f"{web.base}/api/auth/login", data={"username": username, "password": PASSWORD}
    )
    assert response.ok, response.text()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.script_errors = errors  # a test may assert there were none
    if locale != "zh-CN":
        page.add_init_script(f"localStorage.setItem('telehealth.locale', {locale!r})")
    return page


def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot under test-artifacts/webapp/ for a reviewer."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
