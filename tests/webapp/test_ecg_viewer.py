"""The ECG viewer (/app/ecg/{sop}) in Chromium: paper calibrated in CSS millimetres, checked
on the screenshot's pixels against the known sampling of a real 12-lead DICOM ECG."""

from __future__ import annotations

import io
import itertools
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import DEV_DATA
from tests.dicomweb import PASSWORD, Web, fresh_copy
from tests.webapp.conftest import logged_in, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

DICOM_ECG = DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm"
AECG = DEV_DATA / "ecg_hl7_aecg" / "liryc-aecg__hl7aecg_example.xml"
HOSTILE = "<script>alert(1)</script><img src/x onerror>^王"  # no "=": PN groups
PX_PER_MM = 96 / 25.4  # CSS px per mm at zoom 100% (device_scale_factor 1 in these tests)
MAJOR = np.array([227, 135, 141])  # the paper's colours (viewers/ecg/paper.ts)
MINOR = np.array([246, 201, 204])


def add_ecg(web: Web) -> str:
    web.add(
        "ECG",
        "CLINIC_A",
        fresh_copy(DICOM_ECG, PatientName=HOSTILE, SpecificCharacterSet="ISO_IR 192"),
    )
    return web.sops["ECG"][-1]


def api_get(web: Web, username: str, path: str, **params: object) -> httpx.Response:
    with httpx.Client(
        base_url=web.base, headers={"authorization": f"Bearer {web.token(username)}"}, timeout=60
    ) as http:
        response = http.get(path, params=params)
    assert response.status_code == 200, response.text
    return response


def open_ecg(page: Any, web: Web, sop: str, drawn: str = "3x4 10 25") -> Any:
    page.goto(f"{web.base}/app/ecg/{sop}")
    canvas = page.get_by_test_id("ecg-canvas")
    page.locator(f'[data-testid="ecg-canvas"][data-drawn="{drawn}"]').wait_for()
    return canvas


def pixels(canvas: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)


def close_to(img: np.ndarray, color: np.ndarray, tol: int = 12) -> np.ndarray:
    return np.all(np.abs(img - color) <= tol, axis=-1)


def line_positions(mask_fraction: np.ndarray) -> np.ndarray:
    """Centres of runs of columns (or rows) where most pixels have the line's colour."""
    hits = np.flatnonzero(mask_fraction > 0.5)
    groups = np.split(hits, np.flatnonzero(np.diff(hits) > 1) + 1)
    return np.array([g.mean() for g in groups if g.size])


def spacing(positions: np.ndarray) -> float:
    slope, _ = np.polyfit(np.arange(positions.size), positions, 1)
    return float(slope)


def dark(img: np.ndarray) -> np.ndarray:
    return img.sum(axis=-1) < 300  # the trace and pulses are near black; the grid is not


def longest_vertical_runs(mask: np.ndarray) -> np.ndarray:
    """For each column, the longest run of True from top to bottom."""
    best = np.zeros(mask.shape[1], dtype=int)
    for x in range(mask.shape[1]):
        column = np.concatenate([[0], mask[:, x].astype(int), [0]])
        edges = np.flatnonzero(np.diff(column))
        if edges.size:
            best[x] = int(np.max(edges[1::2] - edges[0::2]))
    return best


def pulse_geometry(img: np.ndarray, region_px: float) -> tuple[int, float, int]:
    """(height px, width px between the two edges, baseline y) of the first calibration pulse."""
    region = dark(img[:, : int(region_px)])
    runs = longest_vertical_runs(region)
    tall = np.flatnonzero(runs >= runs.max() - 2)
    edges = np.split(tall, np.flatnonzero(np.diff(tall) > 2) + 1)
    assert len(edges) >= 2, f"pulse edges not found: {tall}"
    left, right = edges[0].mean(), edges[1].mean()
    x = int(edges[0][0])
    ys = np.flatnonzero(region[:, x])
    # The first (top row's) pulse: its run ends at that row's baseline.
    column = region[:, x]
    start = int(ys[0])
    end = start
    while end + 1 < column.size and column[end + 1]:
        end += 1
    return int(runs.max()), float(right - left), end


def test_paper_is_calibrated_against_the_samples(web: Web, browser: Any) -> None:
    sop = add_ecg(web)
    page = logged_in(browser, web, "admin", locale="en")
    canvas = open_ecg(page, web, sop)
    # The page as it settles: measurements and header arrive after the traces and change the
    # layout around the paper (a screenshot taken meanwhile has failed once in 7 runs).
    page.get_by_test_id("ecg-measurements").locator('[data-field="heart_rate_bpm"]').wait_for()
    page.get_by_test_id("ecg-patient").wait_for()
    img = pixels(canvas)
    screenshot(page, "ecg-3x4-en")

    # Grid: a major line every 5 mm, a minor one every 1 mm, both ways.
    major_x = line_positions(close_to(img, MAJOR).mean(axis=0))
    major_y = line_positions(close_to(img, MAJOR).mean(axis=1))
    assert major_x.size > 40 and major_y.size > 20
    assert spacing(major_x) == pytest.approx(5 * PX_PER_MM, abs=0.05)
    assert spacing(major_y) == pytest.approx(5 * PX_PER_MM, abs=0.05)
    minor_x = line_positions(close_to(img, MINOR).mean(axis=0))
    gaps = np.diff(minor_x)
    assert np.median(gaps[gaps < 2 * PX_PER_MM]) == pytest.approx(PX_PER_MM, abs=0.6)

    # Calibration pulse: 1 mV → 10 mm high, 200 ms → 5 mm wide at 25 mm/s, 10 mm/mV.
    height, width, _ = pulse_geometry(img, 10 * PX_PER_MM)
    assert height == pytest.approx(10 * PX_PER_MM, abs=2)
    assert width == pytest.approx(5 * PX_PER_MM, abs=1.5)

    # The lead II rhythm strip against the samples: R peaks where 25 mm/s puts them, as high
    # above the baseline (the pulse's foot in that row) as 10 mm/mV makes the sample values.
    samples = api_get(web, "admin", f"/api/ecg/{sop}/samples").json()
    fs = samples["sampling_frequency_hz"]
    lead_ii = np.array(next(x for x in samples["leads"] if x["name"] == "II")["samples"])
    measured = api_get(web, "admin", f"/api/ecg/{sop}/measurements").json()
    r_expected = []
    for t in measured["automatic"]["r_peaks_s"][:4]:
        lo = max(0, int((t - 0.06) * fs))
        r_expected.append(lo + int(np.argmax(lead_ii[lo : int((t + 0.06) * fs)])))
    label = page.locator(".ecg-lead-label.rhythm")
    assert label.inner_text() == "II"
    box, origin = label.bounding_box(), canvas.bounding_box()
    top = int(box["y"] - origin["y"])
    band = dark(img[top : top + int(30 * PX_PER_MM)])
    band[:, : int(10.5 * PX_PER_MM)] = False  # leave the pulse out
    band[: int(box["height"]) + 2, : int(box["x"] - origin["x"] + box["width"] + 2)] = False
    pulse_foot = top + pulse_geometry(img[top:], 10 * PX_PER_MM)[2]
    for index in r_expected:
        x = 10 * PX_PER_MM + index / fs * 25 * PX_PER_MM  # the traces start 10 mm in
        window = band[:, int(x) - 4 : int(x) + 5]
        rows = np.flatnonzero(window.any(axis=1))
        assert rows.size, f"no trace near x={x:.1f}"
        peak_y = top + rows[0]
        # Which column holds the peak: where 25 mm/s puts the sample, within a pixel or two.
        peak_x = int(x) - 4 + int(np.flatnonzero(window[rows[0]]).mean())
        assert peak_x == pytest.approx(x, abs=2)
        height_px = pulse_foot - peak_y
        assert height_px == pytest.approx(lead_ii[index] / 1000 * 10 * PX_PER_MM, abs=2.5)
    assert page.script_errors == []
    page.context.close()


def test_gain_speed_and_layout_switches(web: Web, browser: Any) -> None:
    sop = add_ecg(web)
    page = logged_in(browser, web, "admin")
    page.set_viewport_size({"width": 1440, "height": 1500})
    canvas = open_ecg(page, web, sop)
    assert page.locator(".ecg-lead-label").count() == 13  # 12 leads + the II rhythm strip
    height_10, width_25, _ = pulse_geometry(pixels(canvas), 10 * PX_PER_MM)

    page.get_by_test_id("ecg-gain").get_by_role("button", name="20 mm/mV").click()
    page.locator('[data-drawn="3x4 20 25"]').wait_for()
    height_20, _, _ = pulse_geometry(pixels(canvas), 10 * PX_PER_MM)
    assert height_20 == pytest.approx(2 * height_10, abs=2)
    assert height_20 == pytest.approx(20 * PX_PER_MM, abs=2)
    screenshot(page, "ecg-gain20-zh")

    page.get_by_test_id("ecg-speed").get_by_role("button", name="50 mm/s").click()
    page.locator('[data-drawn="3x4 20 50"]').wait_for()
    _, width_50, _ = pulse_geometry(pixels(canvas), 15 * PX_PER_MM)
    assert width_50 == pytest.approx(2 * width_25, abs=2)  # 200 ms is now 10 mm

    # Keyboard: "l" switches to one lead per row, twelve labels, no rhythm strip.
    page.get_by_test_id("ecg-layout").get_by_role("button", name="12×1").focus()
    page.keyboard.press("l")
    page.locator('[data-drawn="12x1 20 50"]').wait_for()
    labels = page.locator(".ecg-lead-label")
    assert labels.all_inner_texts() == [
        "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"
    ]  # fmt: skip
    tops = [labels.nth(i).bounding_box()["y"] for i in range(12)]
    assert all(b - a > 10 * PX_PER_MM for a, b in itertools.pairwise(tops))
    assert page.locator(".ecg-lead-label.rhythm").count() == 0
    screenshot(page, "ecg-12x1-zh")
    assert page.script_errors == []
    page.context.close()

    # On a 2× screen the paper is drawn in device pixels: the same millimetres, sharp lines.
    context = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=2)
    response = context.request.post(
        f"{web.base}/api/auth/login", data={"username": "admin", "password": PASSWORD}
    )
    assert response.ok
    retina = context.new_page()
    img = pixels(open_ecg(retina, web, sop))
    major = close_to(img, MAJOR, tol=6)  # exact colour: not smeared over two device pixels
    assert spacing(line_positions(major.mean(axis=0))) == pytest.approx(10 * PX_PER_MM, abs=0.1)
    assert spacing(line_positions(major.mean(axis=1))) == pytest.approx(10 * PX_PER_MM, abs=0.1)
    height, _, _ = pulse_geometry(img, 20 * PX_PER_MM)
    assert height == pytest.approx(20 * PX_PER_MM, abs=3)  # 10 mm in device pixels
    context.close()


def test_calipers_and_measurements_panel(web: Web, browser: Any) -> None:
    sop = add_ecg(web)
    measured = api_get(web, "admin", f"/api/ecg/{sop}/measurements").json()
    page = logged_in(browser, web, "admin", locale="en")
    canvas = open_ecg(page, web, sop)
    box = canvas.bounding_box()
    label = page.locator(".ecg-lead-label.rhythm").bounding_box()
    baseline_y = label["y"] + 18 * PX_PER_MM  # anywhere in the rhythm row will do

    # A time caliper from one R peak to the next in the rhythm strip.
    r1, r2 = measured["automatic"]["r_peaks_s"][1:3]
    x1 = box["x"] + (10 + r1 * 25) * PX_PER_MM
    x2 = box["x"] + (10 + r2 * 25) * PX_PER_MM
    page.mouse.move(x1, baseline_y)
    page.mouse.down()
    page.mouse.move((x1 + x2) / 2, baseline_y, steps=3)
    page.mouse.move(x2, baseline_y, steps=3)
    page.mouse.up()
    readout = page.get_by_test_id("ecg-caliper")
    ms = float(readout.locator('[data-value="ms"]').get_attribute("data-raw"))
    assert ms == pytest.approx((r2 - r1) * 1000, abs=12)  # under a pixel and a half
    assert f"Δt {round(ms)} ms" in readout.inner_text()
    bpm = float(readout.locator('[data-value="bpm"]').get_attribute("data-raw"))
    assert bpm == pytest.approx(60000 / ((r2 - r1) * 1000), abs=1.0)
    assert "Lead II" in readout.inner_text()
    screenshot(page, "ecg-caliper-en")

    # An amplitude caliper up the first calibration pulse: 1 mV.
    foot = box["y"] + pulse_geometry(pixels(canvas), 10 * PX_PER_MM)[2]
    page.mouse.move(box["x"] + 5 * PX_PER_MM, foot)
    page.mouse.down()
    page.mouse.move(box["x"] + 5 * PX_PER_MM, foot - 10 * PX_PER_MM, steps=4)
    page.mouse.up()
    mv = float(readout.locator('[data-value="mv"]').get_attribute("data-raw"))
    assert mv == pytest.approx(1.0, abs=0.03)
    page.keyboard.press("Escape")
    assert readout.count() == 0

    # The hub's measurements, as the API gave them.
    panel = page.get_by_test_id("ecg-measurements")
    hr = panel.locator('[data-field="heart_rate_bpm"] dd')
    hr.wait_for()
    assert hr.inner_text().strip() == f"{round(measured['effective']['heart_rate_bpm'])} bpm"
    qtc = panel.locator('[data-field="qtc_bazett_ms"] dd').inner_text()
    assert qtc.strip() == f"{round(measured['effective']['qtc_bazett_ms'])} ms"
    # The cart's own interpretation statements, from the DICOM waveform annotations.
    statements = page.get_by_test_id("ecg-statements")
    statements.get_by_text("RITMO SINUSALE").wait_for()
    assert page.script_errors == []
    page.context.close()


def test_header_shows_a_hostile_name_as_text_and_scope_holds(web: Web, browser: Any) -> None:
    sop = add_ecg(web)
    for locale, sex in [("zh-CN", "女"), ("en", "Female")]:
        page = logged_in(browser, web, "tech_a", locale=locale)
        open_ecg(page, web, sop)
        header = page.get_by_test_id("ecg-header")
        header.locator('[data-field="acquired"]').wait_for()
        assert page.get_by_test_id("ecg-patient").inner_text() == HOSTILE.replace("^", " ")
        assert page.locator(".ecg-viewer img, .ecg-viewer script").count() == 0
        assert "2013-01-25 10:59:19" in header.inner_text()
        assert sex in header.inner_text()
        assert "12" in header.locator('[data-field="recording"]').inner_text()
        page.get_by_test_id("ecg-measurements").locator('[data-field="heart_rate_bpm"]').wait_for()
        screenshot(page, f"ecg-header-{locale}")
        assert page.script_errors == []
        page.context.close()

    # Another clinic's technician is told there is no such ECG; nothing of it is shown.
    other = logged_in(browser, web, "tech_b", locale="en")
    other.goto(f"{web.base}/app/ecg/{sop}")
    alert = other.get_by_role("alert")
    alert.wait_for()
    assert "No such ECG" in alert.inner_text()
    assert "王" not in other.content()
    other.context.close()


def test_an_uploaded_aecg_is_drawn(web: Web, browser: Any) -> None:
    """An HL7 aECG (converted to DICOM on upload) opens the same way."""
    with httpx.Client(
        base_url=web.base, headers={"authorization": f"Bearer {web.token('tech_a')}"}, timeout=60
    ) as http:
        response = http.post(
            "/api/ecg/uploads", files={"file": ("ecg.xml", AECG.read_bytes(), "text/xml")}
        )
    assert response.status_code == 201, response.text
    upload = response.json()
    page = logged_in(browser, web, "tech_a", locale="en")
    canvas = open_ecg(page, web, upload["sop_instance_uid"])
    traces = dark(pixels(canvas))
    traces[:, : int(10 * PX_PER_MM)] = False
    assert traces.sum() > 2000  # traces were drawn, not only the grid and pulses
    expected = {name for name in upload["leads"]}
    shown = set(page.locator(".ecg-lead-label").all_inner_texts())
    assert expected <= shown | {"III", "aVR", "aVL", "aVF"} and len(shown) >= 8
    assert page.script_errors == []
    page.context.close()


def test_samples_travel_with_the_session_check(web: Web, browser: Any) -> None:
    """Opened by its address, the viewer's samples are asked for beside the session check,
    not after it; each once, and the traces drawn from them."""
    sop = add_ecg(web)
    page = logged_in(browser, web, "spec")
    events: list[tuple[str, str]] = []
    page.on("request", lambda r: events.append(("sent", r.url)))
    page.on("requestfinished", lambda r: events.append(("done", r.url)))
    open_ecg(page, web, sop)
    samples = [url for kind, url in events if kind == "sent" and "/samples" in url]
    session = [url for kind, url in events if kind == "sent" and url.endswith("/api/auth/me")]
    assert len(samples) == 1 and "format=int16" in samples[0] and len(session) == 1
    sent = events.index(("sent", samples[0]))
    assert sent < events.index(("done", session[0])), events
    assert page.locator(".ecg-lead-label").count() == 13
    assert page.script_errors == []
    page.context.close()
