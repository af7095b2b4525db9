"""The consult room's shared viewer (共享阅片) in two Chromium pages against the hub's real
signalling server: the host (specialist) drives the case's images, the clinic follows them in
its own viewer (viewer-sync, drawn locally, even in low-bandwidth mode), detaches and follows
again; a key image shared in the chat opens at that image, in the room and on its own page."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from telehealth.hub import Hub
from tests.browser import launch_chromium
from tests.dicomweb import Web, open_web
from tests.webapp.conftest import logged_in, screenshot
from tests.webapp.test_consult import MEDIA_ARGS, room_page
from tests.webapp.test_image_viewer import long_slice
from tests.webapp.test_worklist import hub_api, reading_group, request_case, wait_until

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

SLICES = 12
VIEWER = "[data-testid=shared-viewer] .image-viewer"
CANVAS_PNG = "() => document.querySelector('[data-testid=shared-viewer] canvas').toDataURL()"
# Only the app's own relative key image link becomes a link; these stay text.
NOT_LINKS = (
    "https://evil.example/app/studies/1.2?series=1.2&instance=1.2 "
    "javascript:alert(1) /app/studies/1.2?series=1.2&instance=1.2&next=//evil.example"
)


@pytest.fixture(scope="module")
def browser(webapp_dist: Any) -> Iterator[Any]:
    yield from launch_chromium(MEDIA_ARGS)


@pytest.fixture
def web(hub_factory: Callable[..., Hub], webapp_dist: Any) -> Iterator[Web]:
    """A served hub with its signalling server, and a 12-slice CT (each slice its own image)
    whose case comes to `spec`'s reading group."""
    hub = hub_factory(start=False, signaling_port=0)
    hub.start(dicom=False, signaling=True)
    with open_web(hub) as web:
        study_uid, series_uid = generate_uid(), generate_uid()
        for number in range(1, SLICES + 1):  # web.sops["LONG"][n - 1] is slice n
            web.add("LONG", "CLINIC_A", long_slice(study_uid, series_uid, number))
        reading_group(web)
        yield web


def canvas_pixels(page: Any) -> np.ndarray:
    url = page.evaluate(CANVAS_PNG)
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


def viewer(page: Any) -> Any:
    return page.locator(VIEWER)


def wait_for_slice(page: Any, n: int, selector: str = VIEWER) -> None:
    view = page.locator(selector)
    wait_until(
        lambda: (
            view.get_attribute("data-slice") == str(n)
            and view.get_attribute("data-ready") == "true"
        ),
        20,
    )


def test_the_clinic_follows_the_hosts_viewer_detaches_and_opens_a_key_image(
    web: Web, browser: Any
) -> None:
    case = request_case(web, "LONG")
    with hub_api(web, "tech_a") as tech:
        response = tech.post(
            "/api/consults", json={"case_id": case["id"], "host": "spec", "reason": "胸部 CT"}
        )
        assert response.status_code == 201, response.text
        consult = response.json()

    host = room_page(browser, web, "spec", consult["id"], "zh-CN")
    host.get_by_role("heading", name="共享阅片").wait_for()
    wait_for_slice(host, 1)
    # The host looks ahead before the clinic is in: who comes late starts where he is.
    viewer(host).focus()
    for _ in range(2):
        host.keyboard.press("ArrowDown")
    wait_for_slice(host, 3)

    guest = room_page(browser, web, "tech_a", consult["id"], "en")
    guest.get_by_text("Waiting for the host to let you in").wait_for()
    host.locator(".lobby li", has_text="tech_a").get_by_role("button", name="允许进入").click()
    guest.get_by_role("heading", name="Shared viewer").wait_for()
    guest.get_by_text("Following the host").wait_for()
    wait_for_slice(guest, 3)
    # The shared viewer is what low bandwidth is for: no video, the images still follow.
    guest.get_by_role("button", name="Low bandwidth (audio only)").click()
    before = canvas_pixels(guest)

    # The host scrolls to slice 5 and picks the bone window (L 400, W 1800).
    viewer(host).focus()
    for _ in range(2):
        host.keyboard.press("ArrowDown")
    host.keyboard.press("3")
    wait_for_slice(host, 5)
    host_window = host.get_by_test_id("overlay-window")
    wait_until(lambda: "窗位 400 窗宽 1800" in host_window.inner_text())
    guest_window = guest.get_by_test_id("overlay-window")
    wait_for_slice(guest, 5)
    wait_until(lambda: "L 400 W 1800" in guest_window.inner_text())
    assert guest.get_by_test_id("overlay-slice").inner_text() == f"Image 5/{SLICES}"
    assert host.get_by_test_id("overlay-slice").inner_text() == f"图像 5/{SLICES}"
    # Drawn locally from the same pixels: the guest's canvas changed, and shows what the
    # host's shows (same stage size in both pages, same window, same image).
    after = canvas_pixels(guest)
    assert after.shape == before.shape
    assert np.abs(after - before).mean() > 5
    wait_until(lambda: np.abs(canvas_pixels(host) - canvas_pixels(guest)).mean() < 1, 10)
    screenshot(guest, "consult_shared_viewer_en")
    screenshot(host, "consult_shared_viewer_zh")

    # The guest detaches: the host moves on, the guest stays on slice 5.
    guest.get_by_role("button", name="Browse on my own").click()
    guest.get_by_text("You are browsing on your own").wait_for()
    viewer(host).focus()
    for _ in range(3):
        host.keyboard.press("ArrowDown")
    wait_for_slice(host, 8)
    panel = guest.get_by_test_id("shared-viewer")
    wait_until(lambda: panel.get_attribute("data-host-slice") == "8")  # heard, not followed
    assert viewer(guest).get_attribute("data-slice") == "5"
    # ...and browses himself, then follows again: back to the host's slice.
    viewer(guest).focus()
    guest.keyboard.press("Home")
    wait_for_slice(guest, 1)
    guest.get_by_role("button", name="Follow the host").click()
    wait_for_slice(guest, 8)

    # The host shares slice 8 as a key image, then moves on.
    host.get_by_role("button", name="分享关键图像").click()
    line = guest.locator(".chat-lines li", has_text="关键图像：图像 8/12")
    line.wait_for()
    link = line.get_by_role("link", name="Open image")
    study, series, sop = web.study["LONG"], web.series["LONG"], web.sops["LONG"][7]
    href = f"/app/studies/{study}?series={series}&instance={sop}"
    assert link.get_attribute("href") == href
    viewer(host).focus()
    host.keyboard.press("Home")
    wait_for_slice(host, 1)
    wait_for_slice(guest, 1)
    # Hostile look-alikes in the chat stay text.
    guest.get_by_label("Chat").fill(NOT_LINKS)
    guest.keyboard.press("Enter")
    hostile = host.locator(".chat-lines li", has_text="evil.example")
    hostile.wait_for()
    assert hostile.locator("a").count() == 0
    assert hostile.locator(".text").inner_text() == NOT_LINKS

    # In the room, the link shows that image in the guest's viewer, which stops following.
    link.click()
    wait_for_slice(guest, 8)
    assert guest.get_by_test_id("shared-viewer").get_attribute("data-following") == "false"
    assert guest.url.endswith(f"/app/consults/{consult['id']}")
    # On its own page (a new tab), the study viewer opens at that image.
    page = logged_in(browser, web, "tech_a", locale="en")
    page.goto(f"{web.base}{href}")
    wait_for_slice(page, 8, ".image-viewer")
    assert page.get_by_test_id("overlay-slice").inner_text() == f"Image 8/{SLICES}"
    screenshot(page, "study_viewer_key_image_en")
    # The key image line is kept with the consult.
    with hub_api(web, "tech_a") as tech:
        kept = tech.get(f"/api/consults/{consult['id']}/messages").json()
    assert any(href in m["text"] for m in kept)
    assert host.script_errors == [] and guest.script_errors == [] and page.script_errors == []
