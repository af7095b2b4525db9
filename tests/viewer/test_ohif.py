"""OHIF (npm @ohif/app, served by the hub at /ohif/) shows a CT series from the hub.

Debian's headless Chromium, driven by Playwright, loads the viewer with the hub's own
app-config.js. Every DICOMweb call goes to the same hub with the session cookie. The image is
checked by its pixels against the series' own rendering: a viewer that draws nothing, or draws
without the frames route, fails.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from telehealth.hub import Hub
from telehealth.ohif import DEFAULT_DIST
from tests.browser import ARTIFACTS, launch_chromium, require
from tests.conftest import DEV_DATA
from tests.dicomweb import PASSWORD, Web, open_web, serve

CT_512 = DEV_DATA / "dicom" / "ct" / "pydicom-data__693_J2KR.dcm"  # a real 512x512 head CT
SLICES = 3
WINDOW = (40.0, 100.0)  # the file's own Window Center/Width, which OHIF applies first
# The user has confirmed OHIF's investigational-use notice and seen its tour: both would
# otherwise cover part of the viewport.
DISMISS_NOTICES = (
    "sessionStorage.setItem('investigationalUseDialog', 'hidden');"
    "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
)

# One database is enough: the viewer sees only HTTP; QIDO and WADO run on both elsewhere.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def ohif_dist() -> Path:
    require(
        (DEFAULT_DIST / "index.html").is_file(),
        f"no OHIF build at {DEFAULT_DIST}: run npm ci in viewer/ohif (bootstrap.sh does)",
    )
    return DEFAULT_DIST


@pytest.fixture(scope="module")
def browser(ohif_dist: Path) -> Iterator[Any]:
    yield from launch_chromium()


def ct_series(study_uid: str, series_uid: str, *, as_stored: bool) -> list[bytes]:
    """The 512x512 CT as SLICES slices 5 mm apart: JPEG 2000 lossless as the file has it, or
    decoded to Explicit VR Little Endian."""
    ds = dcmread(CT_512)
    if not as_stored:
        ds.PixelData = ds.pixel_array.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName = ("C002", "Li^Si") if as_stored else ("C001", "Wang^Wu")
    ds.StudyDescription = "CT HEAD J2K" if as_stored else "CT HEAD OHIF"
    ds.AccessionNumber, ds.StudyDate = "ACC-OHIF", "20240601"
    out = []
    for number in range(1, SLICES + 1):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [-122.5, -112.4, 47.0 + 5 * (number - 1)]
        ds.SliceLocation = 47.0 + 5 * (number - 1)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def expected_rendering() -> np.ndarray:
    """The slice as a viewer shows it by default: Modality LUT, then the file's window."""
    ds = dcmread(CT_512)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = WINDOW
    return np.clip((hu - (center - width / 2)) / width, 0, 1) * 255


@pytest.fixture
def web(hub_factory: Callable[..., Hub], ohif_dist: Path) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False)) as web:
        for label, as_stored in [("CT", False), ("CT_J2K", True)]:
            study_uid, series_uid = generate_uid(), generate_uid()
            for data in ct_series(study_uid, series_uid, as_stored=as_stored):
                web.add(label, "CLINIC_A", data)
        yield web


_UID = re.compile(r"\d+(\.\d+){4,}")


@dataclass
class Traffic:
    """What a page asked for: every response, and anything that tried to leave the hub."""

    base: str
    responses: list[tuple[int, str]] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    with_bearer: list[str] = field(default_factory=list)  # the cookie alone should do
    csp_violations: list[str] = field(default_factory=list)

    def dicomweb(self) -> list[tuple[int, str]]:
        return [(s, u) for s, u in self.responses if u.startswith(self.base + "/dicomweb/")]

    def failed(self) -> bool:
        return any(status >= 400 for status, _ in self.dicomweb())

    def summary(self) -> str:
        lines = (f"{s} {_UID.sub('…', u[len(self.base) :])[:150]}" for s, u in self.dicomweb())
        return "\n".join(list(lines)[-20:])


def open_page(browser: Any, web: Web, username: str | None) -> tuple[Any, Traffic]:
    """A fresh browser context (no cookies, empty cache), logged in as `username`."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(DISMISS_NOTICES)
    if username:
        login(context, web, username)
    page = context.new_page()
    traffic = Traffic(web.base)
    page.on("response", lambda r: traffic.responses.append((r.status, r.url)))

    def on_request(request: Any) -> None:
        if not request.url.startswith((web.base + "/", "data:", "blob:")):
            traffic.foreign.append(request.url)
        if "authorization" in request.headers:
            traffic.with_bearer.append(request.url)

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text:  # workers' errors arrive here too
            traffic.csp_violations.append(message.text)

    page.on("request", on_request)
    page.on("console", on_console)
    return page, traffic


def login(context: Any, web: Web, username: str) -> None:
    # context.request shares the context's cookie jar: the session cookie lands there.
    response = context.request.post(
        f"{web.base}/api/auth/login", data={"username": username, "password": PASSWORD}
    )
    assert response.ok, response.text()


def screenshot(page: Any, box: dict[str, float], name: str) -> np.ndarray:
    png = page.screenshot(clip=box)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / name).write_bytes(png)  # kept for a look when the test fails
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def image_region(shot: np.ndarray) -> np.ndarray:
    """Where OHIF draws the slice: fitted to the viewport's shorter side, centred."""
    height, width = shot.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return shot[top : top + side, left : left + side]


def content(region: np.ndarray) -> tuple[float, int]:
    """Non-black fraction and grey levels of the middle of the region (the corners hold
    OHIF's text overlays, which an empty viewport shows too)."""
    side = region.shape[0]
    middle = region[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4]
    return float((middle > 30).mean()), len(np.unique(middle.astype(np.uint8)))


def correlation(region: np.ndarray, expected: np.ndarray) -> float:
    side = region.shape[0]
    scaled = Image.fromarray(expected.astype(np.uint8)).resize(
        (side, side), Image.Resampling.BILINEAR
    )
    return float(np.corrcoef(region.ravel(), np.asarray(scaled, np.float64).ravel())[0, 1])


def assert_viewer_shows(page: Any, traffic: Traffic, web: Web, label: str) -> None:
    """Open the study in OHIF's viewer and check the slice it draws, pixel by pixel."""
    started = time.monotonic()
    page.goto(f"{web.base}/ohif/viewer?StudyInstanceUIDs={web.study[label]}")
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible", timeout=30_000)
    box = canvas.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 300, box

    # Poll until the slice is drawn: pixels arrive a few hundred ms after the canvas.
    deadline = time.monotonic() + 30
    while True:
        region = image_region(screenshot(page, box, f"ohif-viewer-{label}.png"))
        non_black, levels = content(region)
        if non_black > 0.3 or traffic.failed() or time.monotonic() > deadline:
            break
        page.wait_for_timeout(250)
    elapsed = time.monotonic() - started
    where = f"(test-artifacts/ohif-viewer-{label}.png; DICOMweb calls:\n{traffic.summary()})"

    # The middle of a head CT in a brain window: skull, brain, ventricles. An empty viewport
    # is black there (non-black 0, one grey level).
    assert non_black > 0.3, f"{label}: no image after {elapsed:.1f} s: {non_black=:.3f} {where}"
    assert levels > 40, f"{label}: {levels} grey levels {where}"
    assert region.std() > 40, f"{label}: std {region.std():.1f} {where}"
    # And it is this slice, in this place: against the file's own windowed pixels.
    r = correlation(region, expected_rendering())
    assert r > 0.9, f"{label}: correlation with the expected rendering {r:.3f} {where}"
    frames = [u for _, u in traffic.dicomweb() if "/frames/" in u and web.study[label] in u]
    assert frames, f"{label}: the pixels did not come through WADO-RS frames {where}"


def test_ohif_lists_the_study_and_shows_its_images(web: Web, browser: Any) -> None:
    page, traffic = open_page(browser, web, "spec")
    page.goto(f"{web.base}/ohif/")  # the study list, from QIDO-RS
    page.get_by_text("CT HEAD OHIF").first.wait_for(timeout=30_000)
    assert page.get_by_text("Wang, Wu").count() == 1

    # Frames go out as stored (transfer-syntax=*): the JPEG 2000 series is decoded by OHIF's
    # codec in a web worker, the other is plain little endian.
    assert_viewer_shows(page, traffic, web, "CT")
    assert_viewer_shows(page, traffic, web, "CT_J2K")

    # Every DICOMweb call succeeded on the session cookie alone (same origin, no token).
    assert all(status == 200 for status, _ in traffic.dicomweb()), traffic.summary()
    assert traffic.with_bearer == []
    assert traffic.foreign == [], "the viewer called outside the hub"
    assert traffic.csp_violations == []
    page.context.close()


def test_ohif_shows_only_what_the_login_allows(web: Web, browser: Any) -> None:
    page, traffic = open_page(browser, web, None)
    with page.expect_response(lambda r: "/dicomweb/studies?" in r.url) as search:
        page.goto(f"{web.base}/ohif/")
    assert search.value.status == 401
    page.wait_for_load_state("networkidle")
    assert page.get_by_text("CT HEAD OHIF").count() == 0

    with page.expect_response(lambda r: "/dicomweb/" in r.url) as first:
        page.goto(f"{web.base}/ohif/viewer?StudyInstanceUIDs={web.study['CT']}")
    assert first.value.status == 401
    page.wait_for_load_state("networkidle")
    calls = traffic.dicomweb()
    assert calls and all(status == 401 for status, _ in calls), traffic.summary()
    assert not [u for _, u in calls if "/frames/" in u or "/metadata" in u]

    # Clinic B's technician: clinic B's study is listed, clinic A's CT is neither listed nor
    # shown (DICOMweb answers as if it did not exist).
    login(page.context, web, "tech_b")
    traffic.responses.clear()
    page.goto(f"{web.base}/ohif/")
    page.get_by_text("Zhao, Liu").first.wait_for(timeout=30_000)
    assert page.get_by_text("CT HEAD OHIF").count() == 0
    page.goto(f"{web.base}/ohif/viewer?StudyInstanceUIDs={web.study['CT']}")
    page.wait_for_load_state("networkidle")
    calls = traffic.dicomweb()
    assert not [u for _, u in calls if "/frames/" in u], traffic.summary()
    series = [status for status, u in calls if f"/studies/{web.study['CT']}/series" in u]
    assert series and set(series) == {404}, traffic.summary()
    page.context.close()


# --- the static files, without a browser ------------------------------------------------------


def test_static_files_caching_and_security_headers(web: Web) -> None:
    with httpx.Client(base_url=web.base, timeout=30) as http:
        redirect = http.get("/ohif")
        assert redirect.status_code == 308
        assert redirect.headers["location"] == "/ohif/"

        index = http.get("/ohif/")  # no login: the app holds no patient data
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert index.headers["cache-control"] == "no-cache"
        assert 'window.PUBLIC_URL="/ohif/"' in index.text
        assert 'src="/ohif/app-config.js"' in index.text
        assert 'src="/app' not in index.text and 'href="/assets' not in index.text
        assert "init-service-worker" not in index.text
        csp = index.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self' blob: data:;" in csp
        script_src = csp.split("script-src ")[1].split(";")[0]
        assert "'sha256-" in script_src
        assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
        assert index.headers["x-content-type-options"] == "nosniff"
        assert index.headers["referrer-policy"] == "no-referrer"

        # Client routes are the app's; missing assets and hidden files are not.
        route = http.get("/ohif/viewer", params={"StudyInstanceUIDs": web.study["CT"]})
        assert route.status_code == 200 and route.content == index.content
        assert http.get("/ohif/no-such.bundle.js").status_code == 404
        assert http.get("/ohif/sw.js").status_code == 404
        # OHIF's LICENSE sits just above dist/: out of reach (the client route answers).
        outside = http.get("/ohif/%2e%2e/LICENSE")
        assert outside.content == index.content, outside.text[:200]

        [bundle] = [p.name for p in DEFAULT_DIST.glob("app.bundle.*.js")]
        js = http.get(f"/ohif/{bundle}")
        assert js.status_code == 200
        assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert js.headers["content-encoding"] == "gzip"
        assert js.headers["content-type"].startswith("text/javascript")
        assert '__webpack_require__.p = "/ohif/";' in js.text
        again = http.get(f"/ohif/{bundle}", headers={"if-none-match": js.headers["etag"]})
        assert again.status_code == 304

        # Only the workers may build code from strings (the JPEG 2000 decoder's glue does).
        [decoder] = [
            p.name
            for p in DEFAULT_DIST.glob("*.bundle.*.js")
            if b"openjpeg" in p.read_bytes()
            and b"importScripts(__webpack_require__.p" in p.read_bytes()
        ]
        worker = http.get(f"/ohif/{decoder}")
        assert "'unsafe-eval'" in worker.headers["content-security-policy"]

        config = http.get("/ohif/app-config.js")
        assert config.headers["cache-control"] == "no-cache"
        assert "window.location.origin" in config.text
        assert '"routerBasename": "/ohif"' in config.text
        assert '"imageRendering": "wadors"' in config.text
        assert "http://" not in config.text and "https://" not in config.text


def test_the_hub_runs_without_the_build(
    hub_factory: Callable[..., Hub], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="telehealth.app")
    missing = tmp_path / "no-ohif"
    with serve(hub_factory(dicom=False, ohif_dist=missing)) as base:
        assert httpx.get(f"{base}/ohif/").status_code == 404
        assert httpx.get(f"{base}/api/health").status_code == 200
    assert f"OHIF viewer not served: no build at {missing}" in caplog.text


def test_a_build_it_cannot_rewrite_is_not_served(
    hub_factory: Callable[..., Hub], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Say a later OHIF sets its public path elsewhere: better no viewer than a blank page.
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text('<script>window.PUBLIC_URL="/"</script>')
    (dist / "app.bundle.0123456789abcdef.js").write_text("__webpack_require__.p = auto;")
    with serve(hub_factory(dicom=False, ohif_dist=dist)) as base:
        assert httpx.get(f"{base}/ohif/").status_code == 404
    assert "OHIF viewer not served: no app.bundle.*.js" in caplog.text
