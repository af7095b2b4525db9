"""The reading workspace: the request on top, the right viewer for the case, the report editor
(templates, structured fields, critical result, save, sign by keyboard), prior studies side
by side, the unsaved-changes guard."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import DEV_DATA
from tests.dicomweb import Web, fresh_copy
from tests.webapp.conftest import logged_in, screenshot
from tests.webapp.test_worklist import (
    HOSTILE_TEXT,
    add_ct_study,
    hub_api,
    reading_group,
    request_case,
    wait_until,
)

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ECG = DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm"


def case_json(web: Web, case_id: int, path: str = "") -> Any:
    with hub_api(web, "spec") as spec:
        response = spec.get(f"/api/cases/{case_id}{path}")
        assert response.status_code == 200, response.text
        return response.json()


def test_read_a_case_write_flag_critical_and_sign_by_keyboard(web: Web, browser: Any) -> None:
    reading_group(web)
    case = request_case(
        web,
        "A",
        priority="urgent",
        clinical_history=HOSTILE_TEXT,
        question="头痛、呕吐，排除脑出血",
    )
    page = logged_in(browser, web, "spec")
    page.goto(f"{web.base}/app/read/{case['id']}")
    editor = page.get_by_test_id("report-editor")
    editor.wait_for()
    # Opening a free case claims it.
    wait_until(lambda: case_json(web, case["id"])["claim_holder"] == "spec")
    assert page.get_by_test_id("clinical-history").inner_text() == HOSTILE_TEXT
    assert "排除脑出血" in page.get_by_test_id("question").inner_text()
    assert page.get_by_test_id("case-viewer").get_attribute("data-kind") == "image"

    editor.get_by_label("报告模板").select_option("ct_head")
    editor.get_by_label("颅内出血").select_option("硬膜下")
    editor.locator('input[name="midline_shift"]').fill("6")
    editor.get_by_label("检查所见").fill("左侧额顶部硬膜下新月形高密度影，中线右移约6mm。")
    editor.get_by_label("诊断意见").fill("左侧急性硬膜下血肿。")
    editor.get_by_text("危急值", exact=True).click()
    editor.get_by_label("危急值类别").select_option("intracranial_hemorrhage")
    editor.get_by_label("危急值说明").fill("已电话通知")
    editor.get_by_role("button", name="立即通知危急值").click()
    page.get_by_test_id("critical-flagged").wait_for()
    assert "颅内出血" in page.get_by_test_id("critical-flagged").inner_text()

    page.keyboard.press("Control+s")
    wait_until(lambda: "已保存" in editor.get_by_role("status").inner_text())
    draft = case_json(web, case["id"], "/report")
    assert draft["status"] == "draft" and draft["template_code"] == "ct_head"
    assert draft["values"]["midline_shift"] == 6 and draft["values"]["hemorrhage"] == "硬膜下"
    screenshot(page, "reading-draft-zh")

    page.keyboard.press("Control+Enter")
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    screenshot(page, "reading-confirm-zh")
    dialog.get_by_role("button", name="确认签发").click()
    page.get_by_test_id("report-reading-1").wait_for()

    report = case_json(web, case["id"], "/report")
    assert report["status"] == "signed" and report["signed_by"] == "spec"
    assert report["impression"] == "左侧急性硬膜下血肿。"
    with hub_api(web, "spec") as spec:
        critical = spec.get("/api/critical").json()
    assert [(c["case_id"], c["category"]) for c in critical] == [
        (case["id"], "intracranial_hemorrhage")
    ]
    assert case_json(web, case["id"])["status"] == "signed"
    screenshot(page, "reading-signed-zh")
    assert page.script_errors == []
    page.context.close()


def test_an_ecg_case_mounts_the_ecg_viewer(web: Web, browser: Any) -> None:
    reading_group(web)
    web.add("ECG", "CLINIC_A", fresh_copy(ECG, PatientName="Chen^Liu"))
    case = request_case(web, "ECG", priority="stat", service="ecg", question="胸痛")
    page = logged_in(browser, web, "spec", locale="en")
    page.goto(f"{web.base}/app/read/{case['id']}")
    viewer = page.get_by_test_id("case-viewer")
    viewer.wait_for()
    assert viewer.get_attribute("data-kind") == "ecg"
    wait_until(lambda: viewer.get_attribute("data-sop") == web.sops["ECG"][0])
    # The ECG template is offered first for an ECG case.
    editor = page.get_by_test_id("report-editor")
    editor.get_by_label("Template").wait_for()
    assert editor.get_by_label("Template").input_value() == "ecg_12lead"
    screenshot(page, "reading-ecg-en")
    assert page.script_errors == []
    page.context.close()


def test_prior_studies_open_side_by_side_and_unsaved_changes_are_guarded(
    web: Web, browser: Any
) -> None:
    reading_group(web)
    prior_uid = add_ct_study(
        web, "A-prior", patient_id="A001", patient_name="Zhang^San", study_date="20230105"
    )
    case = request_case(web, "A", question="复查")
    page = logged_in(browser, web, "spec", locale="en")
    page.goto(f"{web.base}/app/read/{case['id']}")
    page.get_by_test_id("priors-toggle").click()
    priors = page.get_by_test_id("priors")
    priors.get_by_role("button", name="Compare").click()
    prior = page.get_by_test_id("prior-viewer")
    prior.wait_for()
    assert prior.get_attribute("data-study") == prior_uid
    current_box = page.get_by_test_id("case-viewer").bounding_box()
    prior_box = prior.bounding_box()
    assert prior_box["x"] >= current_box["x"] + current_box["width"] - 1  # beside, not below
    assert abs(prior_box["y"] - current_box["y"]) < 5
    screenshot(page, "reading-priors-en")

    # Unsaved text: leaving by a link asks first; declining keeps the page.
    editor = page.get_by_test_id("report-editor")
    editor.get_by_label("Findings").fill("Unsaved words")
    asked: list[str] = []

    def decline(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", decline)
    page.get_by_role("link", name="Back to worklist").click()
    wait_until(lambda: len(asked) == 1)
    assert "unsaved" in asked[0]
    assert f"/app/read/{case['id']}" in page.url
    assert editor.get_by_label("Findings").input_value() == "Unsaved words"
    assert page.script_errors == []
    page.context.close()
