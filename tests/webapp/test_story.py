"""Issue 6's whole story, three people in three browser contexts against one served hub:

1. tech_a (CLINIC_A) uploads a CT study and a 12-lead ECG through the desk and asks for both
   to be read;
2. spec (a county reader) sees them arrive live, claims the CT by keyboard, reads the image
   (pixels checked), scrolls, measures, writes from a template and signs; then draws the ECG
   (grid checked), flags a critical result and signs;
3. tech_a reads both reports, sees the critical result stand out, acknowledges it; it goes.

Along the way: the keyboard drives the reader's main actions, no text overflows its box in
zh-CN or English, hostile names and report text are text, and no page throws.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import DEV_DATA
from tests.dicomweb import CT, Web, fresh_copy
from tests.webapp.conftest import logged_in, screenshot
from tests.webapp.test_desk import payload, red_share, wait_done
from tests.webapp.test_ecg_viewer import (
    MAJOR,
    MINOR,
    PX_PER_MM,
    close_to,
    line_positions,
    pulse_geometry,
)
from tests.webapp.test_ecg_viewer import pixels as canvas_pixels
from tests.webapp.test_ecg_viewer import spacing as line_spacing
from tests.webapp.test_image_viewer import (
    assert_shows,
    ct_values,
    expected_on,
    full_range,
    image_box,
    next_frame,
    shot,
    wait_drawn,
    windowed,
)
from tests.webapp.test_worklist import reading_group, wait_until

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    # The hostile name's "=" make four PN groups where DICOM allows three; pydicom says so.
    pytest.mark.filterwarnings("ignore:The number of PN components"),
]

ECG = DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm"
XSS_NAME = "<img src=x onerror=window.__xss=1>"
XSS_HISTORY = "头痛伴呕吐 3 小时 <img src=x onerror=window.__xss=1>"
XSS_FINDINGS = "<script>window.__xss=1</script> 左侧基底节区见片状高密度影。"
IMPRESSION = "左侧基底节区脑出血，建议神经外科会诊。"
ECG_IMPRESSION = "窦性心律，下壁导联 ST 段抬高，考虑急性下壁心肌梗死。"
ROLL = 9  # columns each CT slice is shifted by, so scrolling shows a different image
SLICES = 3

# Elements whose text must fit their box: containers, table cells, buttons, headings, labels.
OVERFLOW_JS = """() => {
    const selector = 'main, section, article, header, nav, form, fieldset, .panel, td, th,' +
        ' button, h1, h2, h3, h4, label, legend, dt, dd, p, li, .badge, select';
    const bad = [];
    for (const el of document.querySelectorAll(selector)) {
        const style = getComputedStyle(el);
        if (style.display === 'inline' || style.display === 'none' || el.clientWidth <= 2) continue;
        if (!el.textContent.trim()) continue;
        if (['auto', 'scroll'].includes(style.overflowX)) continue;  // scrolls on purpose
        if (style.textOverflow === 'ellipsis') continue;  // cut short on purpose
        if (el.scrollWidth > el.clientWidth + 1) {
            bad.push(`${el.tagName.toLowerCase()}.${el.className} ` +
                `${el.scrollWidth}>${el.clientWidth}: ${el.textContent.trim().slice(0, 60)}`);
        }
    }
    const page = document.documentElement;
    if (page.scrollWidth > window.innerWidth + 1) bad.push(`page ${page.scrollWidth} wide`);
    return bad;
}"""

# Text must be legible on what is behind it: its colour against the nearest painted background
# (WCAG contrast ratio; 3 is the floor for large text and controls, lenient for muted text).
CONTRAST_JS = """() => {
    const rgba = (css) => (css.match(/[\\d.]+/g) || []).map(Number);
    const luminance = ([r, g, b]) => {
        const c = [r, g, b].map((v) => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
    };
    const bad = [];
    for (const el of document.querySelectorAll('body *')) {
        const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
        if (!own || !el.getClientRects().length || el.closest('svg')) continue;
        const style = getComputedStyle(el);
        if (style.visibility !== 'visible' || parseFloat(style.opacity) === 0) continue;
        let behind = null;
        for (let up = el; up && !behind; up = up.parentElement) {
            const bg = rgba(getComputedStyle(up).backgroundColor);
            if (bg.length >= 3 && (bg.length === 3 || bg[3] > 0.5)) behind = bg;
        }
        behind = behind || [255, 255, 255];
        const [a, b] = [luminance(rgba(style.color)), luminance(behind)];
        const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        if (ratio >= 3) continue;
        const what = `${el.tagName.toLowerCase()}.${el.className} ${ratio.toFixed(2)}`;
        bad.push(`${what}: ${el.textContent.trim().slice(0, 40)}`);
    }
    return bad;
}"""


def ct_slice(study_uid: str, series_uid: str, number: int) -> bytes:
    """The sample CT as slice `number` of a hostile-named patient's head CT, rolled sideways."""
    ds = dcmread(CT)
    ds.PixelData = np.roll(ds.pixel_array, ROLL * number, axis=1).tobytes()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, 2.5 * number]
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = XSS_NAME
    ds.PatientID = "XSS-001"
    ds.StudyDescription = "头颅CT平扫"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def shows_xss_name(shown: str) -> bool:
    """The hostile name as text; its "=" start DICOM name groups, which pages show spaced."""
    return re.sub(r"[\s/=]+", " ", shown).strip() == re.sub(r"[\s/=]+", " ", XSS_NAME)


def fits(page: Any, where: str) -> None:
    """No text sticks out of its box, and all text stands out from what is behind it."""
    bad = page.evaluate(OVERFLOW_JS)
    assert bad == [], f"text overflows on {where}: {bad}"
    faint = page.evaluate(CONTRAST_JS)
    assert faint == [], f"text hard to read on {where}: {faint}"


def clean(page: Any, where: str) -> None:
    """No script ran from data, no element came from data, no script error."""
    assert page.evaluate("() => window.__xss") is None, where
    assert page.locator("img[src=x], script:not([src])").count() == 0, where
    assert page.script_errors == [], f"{where}: {page.script_errors}"


def worklist_row(page: Any, case_id: int) -> Any:
    return page.locator(f'tr[data-case-id="{case_id}"]')


def focused_case(page: Any) -> int:
    return int(page.evaluate("document.activeElement.getAttribute('data-case-id')"))


def test_the_whole_story_technician_reader_technician(web: Web, browser: Any) -> None:
    reading_group(web)  # spec reads every clinic's cases
    study_uid, series_uid = generate_uid(), generate_uid()
    slices = [ct_slice(study_uid, series_uid, n) for n in range(1, SLICES + 1)]
    ecg = fresh_copy(ECG, PatientName="陈^六", SpecificCharacterSet="ISO_IR 192")
    ecg_study = str(dcmread(io.BytesIO(ecg), stop_before_pixels=True).StudyInstanceUID)

    tech = logged_in(browser, web, "tech_a")
    spec = logged_in(browser, web, "spec")
    spec.goto(f"{web.base}/app/worklist")
    spec.get_by_role("heading", name="工作列表").wait_for()
    assert spec.locator("tr[data-case-id]").count() == 0

    # --- 1. the technician uploads and requests ------------------------------------------------
    tech.goto(f"{web.base}/app/desk")
    tech.get_by_role("heading", name="上传检查").wait_for()
    files = [payload(f"CT{n}.dcm", d) for n, d in enumerate(slices, 1)]
    tech.set_input_files("[data-testid=pick-files]", [*files, payload("ecg.dcm", ecg)])
    ct_card = tech.locator(f"[data-testid=study-card][data-study='{study_uid}']")
    ecg_card = tech.locator(f"[data-testid=study-card][data-study='{ecg_study}']")
    ct_card.wait_for()
    assert shows_xss_name(ct_card.get_by_test_id("study-patient").inner_text())
    assert ecg_card.get_by_test_id("study-modality").inner_text() == "ECG"
    screenshot(tech, "story-01-desk-picked")
    tech.get_by_role("button", name="开始上传").click()
    wait_done(tech)
    assert tech.locator("[data-testid=file-row][data-state=stored]").count() == SLICES + 1
    fits(tech, "desk after upload (zh)")

    case_ids: dict[str, int] = {}
    for name, card_, history, question, priority in (
        ("ct", ct_card, XSS_HISTORY, "排除脑出血", "加急"),
        ("ecg", ecg_card, "胸闷、胸痛 1 小时", "排除急性心肌梗死", "急诊"),
    ):
        form = card_.get_by_role("form", name="申请远程诊断")
        form.get_by_label("病史摘要").fill(history)
        form.get_by_label("申请目的 / 需要回答的问题").fill(question)
        form.get_by_label(priority).check()
        form.get_by_role("button", name="提交申请").click()
        done = card_.get_by_test_id("request-done")
        done.wait_for()
        case_ids[name] = int(re.search(r"#(\d+)", done.inner_text()).group(1))  # type: ignore[union-attr]
    for case_id in case_ids.values():
        tech.locator(f"[data-testid=case-row][data-case='{case_id}']").wait_for()
    screenshot(tech, "story-02-desk-requested")
    fits(tech, "desk with requests (zh)")
    clean(tech, "desk")

    # --- 2. the reader: live arrival, keyboard claim, the CT ------------------------------------
    wait_until(lambda: spec.locator("tr[data-case-id]").count() == 2)  # came live, no reload
    ids = [int(r.get_attribute("data-case-id")) for r in spec.locator("tr[data-case-id]").all()]
    assert ids == [case_ids["ecg"], case_ids["ct"]]  # STAT before urgent
    ct_row = worklist_row(spec, case_ids["ct"])
    # The reader sees the priorities in the words the technician chose them by.
    assert worklist_row(spec, case_ids["ecg"]).locator(".badge").first.inner_text() == "急诊"
    assert ct_row.locator(".badge").first.inner_text() == "加急"
    assert shows_xss_name(ct_row.locator(".patient-name").inner_text())
    screenshot(spec, "story-03-worklist")
    fits(spec, "worklist (zh)")
    clean(spec, "worklist")

    spec.locator("tr[data-case-id]").first.focus()
    spec.keyboard.press("j")
    assert focused_case(spec) == case_ids["ct"]
    outline = spec.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert outline[0] != "none" and outline[1] >= 1, f"focus not visible: {outline}"
    spec.keyboard.press("k")
    assert focused_case(spec) == case_ids["ecg"]
    spec.keyboard.press("j")
    spec.keyboard.press("c")
    wait_until(lambda: "我在阅片" in ct_row.inner_text())
    screenshot(spec, "story-04-worklist-claimed")
    spec.keyboard.press("Enter")
    spec.wait_for_url(f"**/app/read/{case_ids['ct']}")

    editor = spec.get_by_test_id("report-editor")
    editor.wait_for()
    wait_drawn(spec)
    assert spec.get_by_test_id("clinical-history").inner_text() == XSS_HISTORY
    values = ct_values(CT)
    window = full_range(values)  # the sample names no window: all its values
    box = image_box(spec, 128, 128)
    region = shot(spec, box)
    assert region.std() > 10, "the image is blank"
    expected = windowed(np.roll(values, ROLL, axis=1), *window)
    assert_shows(region, expected_on(region, box, expected), "CT slice 1 in the workspace")
    spec.locator(".image-viewer").focus()  # the viewer takes keys once focused
    spec.keyboard.press("ArrowDown")
    spec.get_by_text(f"图像 2/{SLICES}").wait_for()
    next_frame(spec)
    region = shot(spec, box)
    expected = windowed(np.roll(values, 2 * ROLL, axis=1), *window)
    assert_shows(region, expected_on(region, box, expected), "CT slice 2 in the workspace")
    # A length of 100 screen pixels at 0.661468 mm per image pixel.
    spec.keyboard.press("l")
    x0, y0 = box["x"] + box["width"] / 4, box["y"] + box["height"] / 2
    spec.mouse.move(x0, y0)
    spec.mouse.down()
    spec.mouse.move(x0 + 50, y0, steps=3)
    spec.mouse.move(x0 + 100, y0, steps=3)
    spec.mouse.up()
    millimetres = 100 / (box["width"] / 128) * 0.661468
    measured = spec.get_by_test_id("measurement").first
    measured.wait_for()
    length = re.fullmatch(r"长度 (\d+\.\d) mm", measured.inner_text())
    assert length, measured.inner_text()
    assert float(length.group(1)) == pytest.approx(millimetres, abs=0.3)  # to a screen pixel
    screenshot(spec, "story-05-reading-ct")

    editor.get_by_label("报告模板").select_option("ct_head")
    findings = editor.get_by_label("检查所见")
    wait_until(lambda: findings.input_value().startswith("脑实质内未见异常密度影"))
    findings.fill(XSS_FINDINGS)
    editor.get_by_label("诊断意见").fill(IMPRESSION)
    fits(spec, "reading workspace, CT (zh)")
    spec.keyboard.press("Control+Enter")
    dialog = spec.get_by_role("dialog")
    dialog.wait_for()
    screenshot(spec, "story-06-reading-ct-confirm")
    dialog.get_by_role("button", name="确认签发").click()
    spec.get_by_test_id("report-reading-1").wait_for()
    assert XSS_FINDINGS in spec.get_by_test_id("report-reading-1").inner_text()
    screenshot(spec, "story-07-reading-ct-signed")
    clean(spec, "reading the CT")

    # --- the ECG: from the worklist by keyboard, drawn on paper, critical, signed --------------
    spec.get_by_role("link", name="返回工作列表").click()
    spec.wait_for_url("**/app/worklist")
    ecg_row = worklist_row(spec, case_ids["ecg"])
    ecg_row.wait_for()
    wait_until(lambda: worklist_row(spec, case_ids["ct"]).count() == 0)  # signed: off the queue
    ecg_row.focus()
    spec.keyboard.press("Enter")
    spec.wait_for_url(f"**/app/read/{case_ids['ecg']}")
    drawn = spec.locator('[data-testid="ecg-canvas"][data-drawn="3x4 10 25"]')
    drawn.wait_for(timeout=15_000)
    img = canvas_pixels(drawn)
    major_x = line_positions(close_to(img, MAJOR).mean(axis=0))
    major_y = line_positions(close_to(img, MAJOR).mean(axis=1))
    assert major_x.size > 20 and major_y.size > 10, "no ECG grid"
    assert line_spacing(major_x) == pytest.approx(5 * PX_PER_MM, abs=0.05)  # 5 mm
    assert line_spacing(major_y) == pytest.approx(5 * PX_PER_MM, abs=0.05)
    assert close_to(img, MINOR).mean() > 0.05  # the 1 mm grid
    assert (img.sum(axis=-1) < 300).mean() > 0.002  # a trace is drawn
    # The calibration pulse: 1 mV is 10 mm high (10 mm/mV), 200 ms 5 mm wide (25 mm/s).
    height, width, _ = pulse_geometry(img, 10 * PX_PER_MM)
    assert height == pytest.approx(10 * PX_PER_MM, abs=2)
    assert width == pytest.approx(5 * PX_PER_MM, abs=1.5)
    screenshot(spec, "story-08-reading-ecg")

    editor = spec.get_by_test_id("report-editor")
    editor.get_by_label("报告模板").wait_for()
    assert editor.get_by_label("报告模板").input_value() == "ecg_12lead"
    editor.get_by_label("诊断意见").fill(ECG_IMPRESSION)
    editor.get_by_text("危急值", exact=True).click()
    editor.get_by_label("危急值类别").select_option("acute_mi")
    editor.get_by_label("危急值说明").fill("请立即转诊胸痛中心")
    fits(spec, "reading workspace, ECG (zh)")
    spec.keyboard.press("Control+Enter")
    dialog = spec.get_by_role("dialog")
    dialog.wait_for()
    assert "急性心肌梗死" in dialog.inner_text()
    dialog.get_by_role("button", name="确认签发").click()
    spec.get_by_test_id("report-reading-1").wait_for()
    screenshot(spec, "story-09-reading-ecg-signed")
    clean(spec, "reading the ECG")

    # --- 3. the technician: both reports, the critical result, acknowledged --------------------
    for case_id in case_ids.values():
        row = tech.locator(f"[data-testid=case-row][data-case='{case_id}']")
        row.get_by_test_id("case-status").filter(has_text="已出报告").wait_for(timeout=10_000)
    banner = tech.get_by_test_id("critical")
    banner.wait_for(timeout=10_000)  # live, on top of the desk
    assert "急性心肌梗死" in banner.inner_text()
    assert red_share(banner.screenshot()) > 0.5  # it stands out
    screenshot(tech, "story-10-desk-critical")
    fits(tech, "desk with a critical result (zh)")

    tech.goto(f"{web.base}/app/cases/{case_ids['ct']}")
    tech.get_by_test_id("report").wait_for()
    assert tech.get_by_test_id("report-findings").inner_text() == XSS_FINDINGS  # as text
    assert tech.get_by_test_id("report-impression").inner_text() == IMPRESSION
    screenshot(tech, "story-11-case-ct-report")
    fits(tech, "case page, CT (zh)")
    clean(tech, "the CT's case page")

    tech.goto(f"{web.base}/app/cases/{case_ids['ecg']}")
    tech.get_by_test_id("report").wait_for()
    assert tech.get_by_test_id("report-impression").inner_text() == ECG_IMPRESSION
    case_banner = tech.get_by_test_id("critical")
    assert "急性心肌梗死" in case_banner.inner_text()
    screenshot(tech, "story-12-case-ecg-critical")
    fits(tech, "case page with a critical result (zh)")
    case_banner.get_by_role("button", name="确认收到").click()
    case_banner.get_by_label("确认方式").select_option("phone")
    case_banner.get_by_label("回读记录（谁在何时听到了什么）").fill("王护士回读：急性下壁心梗")
    case_banner.get_by_role("button", name="确认").click()
    tech.get_by_test_id("critical").wait_for(state="detached")
    screenshot(tech, "story-13-case-ecg-acknowledged")
    tech.goto(f"{web.base}/app/desk")
    tech.get_by_role("heading", name="本院的申请").wait_for()
    tech.locator("[data-testid=case-row]").first.wait_for()
    assert tech.get_by_test_id("critical").count() == 0  # gone for good
    clean(tech, "the ECG's case page and the desk")
    tech.context.close()
    spec.context.close()

    # --- the same pages in English: nothing overflows there either ----------------------------
    for username, path, ready in (
        ("tech_a", "/app/desk", "[data-testid=case-row]"),
        ("tech_a", f"/app/cases/{case_ids['ct']}", "[data-testid=report]"),
        ("tech_a", f"/app/cases/{case_ids['ecg']}", "[data-testid=report]"),
        ("spec", "/app/worklist", "table.cases"),
        ("spec", f"/app/read/{case_ids['ct']}", ".image-viewer[data-ready=true]"),
        ("spec", f"/app/read/{case_ids['ecg']}", '[data-testid="ecg-canvas"][data-drawn]'),
    ):
        english = logged_in(browser, web, username, locale="en")
        english.goto(f"{web.base}{path}")
        english.locator(ready).first.wait_for(timeout=15_000)
        name = re.sub(r"[^a-z0-9]+", "-", path.removeprefix("/app/")).strip("-")
        screenshot(english, f"story-14-en-{name}")
        fits(english, f"{path} (en)")
        clean(english, f"{path} (en)")
        english.context.close()
