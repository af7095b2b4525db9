"""The image viewer (our own canvas code) at /app/studies/{study}, checked by its pixels.

What the canvas shows is compared with numpy's rendering of the same pixels (Modality LUT,
then the VOI window of PS3.3 C.11.2.1.2), resized as the viewer fits it to its stage.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.pixels import apply_color_lut
from pydicom.uid import generate_uid

from telehealth.hub import Hub
from tests.conftest import sample_copy
from tests.dicomweb import CT, US_RLE, Web, ct_instance, open_web
from tests.viewer.test_ohif import CT_512, ct_series
from tests.webapp.conftest import SCREENSHOTS, logged_in, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def web(hub_factory: Callable[..., Hub], webapp_dist: Path) -> Iterator[Web]:
    """The shared studies, plus the 512×512 head CT stored uncompressed and as JPEG 2000, and
    a study whose patient name is markup."""
    with open_web(hub_factory(dicom=False)) as web:
        for label, as_stored in [("CT", False), ("CT_J2K", True)]:
            study_uid, series_uid = generate_uid(), generate_uid()
            for data in ct_series(study_uid, series_uid, as_stored=as_stored):
                web.add(label, "CLINIC_A", data)
        hostile = ct_instance(
            study_uid=generate_uid(),
            series_uid=generate_uid(),
            number=1,
            patient_id="H001",
            patient_name=HOSTILE,
            study_date="20240201",
            accession="ACC-H",
        )
        web.add("HOSTILE", "CLINIC_A", hostile)
        # Twelve slices, each its own image (the CT rolled sideways), stored out of order.
        study_uid, series_uid = generate_uid(), generate_uid()
        for number in (7, 3, 12, 1, 9, 5, 11, 2, 8, 4, 10, 6):
            web.add("LONG", "CLINIC_A", long_slice(study_uid, series_uid, number))
        # The same CT, but its values mean white for low (MONOCHROME1).
        web.add(
            "MONO1",
            "CLINIC_A",
            sample_copy(
                CT,
                StudyInstanceUID=generate_uid(),
                SeriesInstanceUID=generate_uid(),
                PhotometricInterpretation="MONOCHROME1",
            ),
        )
        yield web


def long_slice(study_uid: str, series_uid: str, number: int) -> bytes:
    ds = dcmread(CT)
    ds.PixelData = np.roll(ds.pixel_array, ROLL * number, axis=1).tobytes()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, 2.5 * number]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


ROLL = 9  # columns each slice of the LONG series is shifted by


# --- expected renderings ----------------------------------------------------------------------


def windowed(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI function to 0..255."""
    y = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0, 1) * 255


def ct_values(path: Path) -> np.ndarray:
    ds = dcmread(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def full_range(values: np.ndarray) -> tuple[float, float]:
    """The window the viewer takes for an image that names none: all its values."""
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, high - low


# --- what is on screen ------------------------------------------------------------------------


def wait_drawn(page: Any) -> None:
    page.locator(".image-viewer[data-ready=true]").wait_for(timeout=15_000)
    page.wait_for_function("() => (window.__viewerStats?.drawn ?? 0) > 0")
    next_frame(page)


def next_frame(page: Any) -> None:
    """Two animation frames: whatever a key asked for has been drawn."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def image_box(page: Any, rows: int, columns: int) -> dict[str, float]:
    """Where the fitted image sits on the canvas: centred, its longer side filling it."""
    box = page.locator("canvas.iv-canvas").bounding_box()
    scale = min(box["width"] / columns, box["height"] / rows)
    width, height = columns * scale, rows * scale
    return {
        "x": box["x"] + (box["width"] - width) / 2,
        "y": box["y"] + (box["height"] - height) / 2,
        "width": width,
        "height": height,
    }


def shot(page: Any, box: dict[str, float], mode: str = "L") -> np.ndarray:
    """The screen inside `box`, a few pixels in from its edges (they blend with the black)."""
    inset = {
        "x": round(box["x"]) + 3,
        "y": round(box["y"]) + 3,
        "width": round(box["width"]) - 6,
        "height": round(box["height"]) - 6,
    }
    png = page.screenshot(clip=inset)
    return np.asarray(Image.open(io.BytesIO(png)).convert(mode), dtype=np.float64)


def expected_on(region: np.ndarray, box: dict[str, float], image: np.ndarray) -> np.ndarray:
    """The expected image scaled to the box (smoothed when the viewer smooths), cut like
    `shot` cut the screen."""
    width, height = round(box["width"]), round(box["height"])
    smooth = width / image.shape[1] < 4
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    channels = image if image.ndim == 3 else image[..., None]
    planes = [
        np.asarray(
            Image.fromarray(channels[..., c].astype(np.uint8)).resize((width, height), resample),
            np.float64,
        )
        for c in range(channels.shape[2])
    ]
    scaled = np.stack(planes, axis=-1) if image.ndim == 3 else planes[0]
    return scaled[3 : 3 + region.shape[0], 3 : 3 + region.shape[1]]


def assert_shows(region: np.ndarray, expected: np.ndarray, what: str) -> None:
    r = float(np.corrcoef(region.ravel(), expected.ravel())[0, 1])
    diff = float(np.abs(region - expected).mean())
    assert r > 0.98 and diff < 6, f"{what}: correlation {r:.4f}, mean difference {diff:.2f}"


def save(region: np.ndarray, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(region.astype(np.uint8)).save(SCREENSHOTS / f"{name}.png")


def overlay(page: Any, part: str) -> str:
    return str(page.get_by_test_id(f"overlay-{part}").inner_text())


# --- tests ------------------------------------------------------------------------------------


def test_ct_is_drawn_windowed_and_scrolls_presets_inverts_and_measures(
    web: Web, browser: Any
) -> None:
    page = logged_in(browser, web, "tech_a")
    page.goto(f"{web.base}/app/studies/{web.study['A']}")
    wait_drawn(page)
    values = ct_values(CT)
    box = image_box(page, 128, 128)
    region = shot(page, box)
    assert_shows(region, expected_on(region, box, windowed(values, *full_range(values))), "CT")
    screenshot(page, "image-viewer-ct")
    assert "Zhang San" in overlay(page, "patient") and "A001" in overlay(page, "patient")
    assert overlay(page, "slice") == "图像 1/3"

    # Stack scroll: keys, the wheel, the scrollbar.
    page.keyboard.press("ArrowDown")
    page.get_by_text("图像 2/3").wait_for()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 120)
    page.get_by_text("图像 3/3").wait_for()
    page.keyboard.press("PageUp")  # a tenth of the stack, at least one
    page.get_by_text("图像 2/3").wait_for()
    page.keyboard.press("Home")
    page.get_by_text("图像 1/3").wait_for()
    bar = page.get_by_role("slider").bounding_box()
    page.mouse.click(bar["x"] + bar["width"] / 2, bar["y"] + bar["height"] - 2)
    page.get_by_text("图像 3/3").wait_for()

    # The lung window (key 1), then inverted (key i).
    page.keyboard.press("1")
    page.get_by_text("窗位 -600 窗宽 1500").wait_for()
    next_frame(page)
    lung = windowed(values, -600, 1500)
    region = shot(page, box)
    assert_shows(region, expected_on(region, box, lung), "lung window")
    save(region, "image-viewer-ct-lung")
    page.keyboard.press("i")
    page.get_by_text("反色", exact=True).wait_for()
    next_frame(page)
    region = shot(page, box)
    assert_shows(region, expected_on(region, box, 255 - lung), "inverted lung window")

    # Length: 200 screen pixels across, at 0.661468 mm per image pixel.
    page.keyboard.press("l")
    x0, y0 = box["x"] + 100, box["y"] + box["height"] / 2
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 100, y0, steps=4)
    page.mouse.move(x0 + 200, y0, steps=4)
    page.mouse.up()
    millimetres = 200 / (box["width"] / 128) * 0.661468
    page.get_by_test_id("measurement").first.wait_for()
    assert page.get_by_test_id("measurement").first.inner_text() == f"长度 {millimetres:.1f} mm"
    # Angle: one end, the vertex, the other end; a right angle.
    page.keyboard.press("a")
    page.mouse.click(x0, y0 + 100)
    page.mouse.click(x0, y0 - 50)
    page.mouse.click(x0 + 150, y0 - 50)
    page.get_by_text("角度 90.0°").wait_for()
    screenshot(page, "image-viewer-ct-measured")
    assert page.script_errors == []
    page.context.close()


def test_a_longer_series_loads_whole_and_each_slice_is_its_own(web: Web, browser: Any) -> None:
    page = logged_in(browser, web, "tech_a")
    frames: list[str] = []
    page.on("request", lambda r: frames.append(r.url) if "/frames/" in r.url else None)
    page.goto(f"{web.base}/app/studies/{web.study['LONG']}")
    wait_drawn(page)
    page.locator(".image-viewer[data-loaded='12']").wait_for()
    # The series came in one stream as stored; frames only for the first slices shown.
    assert len(frames) < 12, frames
    values = ct_values(CT)
    window = full_range(values)  # taken from the first slice, kept while scrolling
    box = image_box(page, 128, 128)
    for key, number in [("End", 12), ("PageUp", 11), ("Home", 1), ("PageDown", 2)]:
        page.keyboard.press(key)
        page.get_by_text(f"图像 {number}/12").wait_for()
        next_frame(page)
        region = shot(page, box)
        expected = windowed(np.roll(values, ROLL * number, axis=1), *window)
        assert_shows(region, expected_on(region, box, expected), f"slice {number}")
    assert page.script_errors == []
    page.context.close()


def test_jpeg2000_ct_shows_the_same_pixels_as_uncompressed(web: Web, browser: Any) -> None:
    page = logged_in(browser, web, "tech_a", locale="en")
    expected = windowed(ct_values(CT_512), 40, 100)  # the file's own window
    regions = {}
    for label in ("CT", "CT_J2K"):
        page.goto(f"{web.base}/app/studies/{web.study[label]}")
        wait_drawn(page)
        box = image_box(page, 512, 512)
        regions[label] = shot(page, box)
        assert_shows(regions[label], expected_on(regions[label], box, expected), label)
        assert overlay(page, "window").startswith("L 40 W 100")
        save(regions[label], f"image-viewer-{label.lower()}")
    assert float(np.abs(regions["CT"] - regions["CT_J2K"]).max()) <= 2
    screenshot(page, "image-viewer-j2k-en")

    # Right-drag windows (right: wider, down: higher level); ctrl+wheel zooms; f fits again.
    middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*middle)
    page.mouse.down(button="right")
    page.mouse.move(middle[0] + 100, middle[1] + 50, steps=5)
    page.mouse.up(button="right")
    level, width = overlay(page, "window").split("\n")[0].removeprefix("L ").split(" W ")
    assert float(level) > 40 and float(width) > 100
    fitted = overlay(page, "window").split("\n")[1]
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    page.wait_for_function(
        "f => document.querySelector('.iv-br').innerText.split('\\n')[1] != f",
        arg=fitted,
    )
    zoomed = overlay(page, "window").split("\n")[1]
    assert int(zoomed.split()[1].rstrip("%")) > int(fitted.split()[1].rstrip("%"))
    page.keyboard.press("f")
    page.get_by_text(fitted).wait_for()
    assert page.script_errors == []
    page.context.close()


def test_multiframe_ultrasound_plays_as_cine(web: Web, browser: Any) -> None:
    page = logged_in(browser, web, "tech_a")
    page.goto(f"{web.base}/app/studies/{web.study['US']}")
    wait_drawn(page)
    assert overlay(page, "slice") == "图像 1/2"
    ds = dcmread(US_RLE)
    rgb = apply_color_lut(ds.pixel_array[0], ds) / 257  # 16-bit palette entries to 8 bits
    box = image_box(page, int(ds.Rows), int(ds.Columns))
    region = shot(page, box, "RGB")
    assert_shows(region, expected_on(region, box, rgb), "ultrasound frame 1 through its palette")
    screenshot(page, "image-viewer-us")

    page.get_by_test_id("cine-play").click()
    page.get_by_text("图像 2/2").wait_for()
    page.get_by_text("图像 1/2").wait_for()  # and round again
    page.keyboard.press("Space")  # the viewer has focus: space pauses
    page.get_by_role("button", name="播放 (空格)").wait_for()
    shown = overlay(page, "slice")
    page.wait_for_timeout(300)
    assert overlay(page, "slice") == shown
    assert page.script_errors == []
    page.context.close()


def test_hostile_name_is_text_monochrome1_is_inverted_other_clinics_see_nothing(
    web: Web, browser: Any
) -> None:
    page = logged_in(browser, web, "tech_a", locale="en")
    page.goto(f"{web.base}/app/studies/{web.study['HOSTILE']}")
    wait_drawn(page)
    assert HOSTILE in overlay(page, "patient")
    assert page.locator(".iv-overlay img").count() == 0
    screenshot(page, "image-viewer-hostile-name")
    page.goto(f"{web.base}/app/studies/{web.study['MONO1']}")
    wait_drawn(page)
    values = ct_values(CT)
    box = image_box(page, 128, 128)
    region = shot(page, box)
    expected = 255 - windowed(values, *full_range(values))
    assert_shows(region, expected_on(region, box, expected), "MONOCHROME1")
    assert page.script_errors == []
    page.context.close()

    # Clinic B's technician: clinic A's study does not exist for them.
    page = logged_in(browser, web, "tech_b", locale="en")
    page.goto(f"{web.base}/app/studies/{web.study['A']}")
    page.get_by_role("alert").wait_for()
    assert "Zhang" not in page.locator(".image-viewer").inner_text()
    assert page.locator(".image-viewer").get_attribute("data-ready") == "false"
    page.context.close()
