"""The reader's worklist: live queue, counters, deadlines that tick and change colour, filters,
claim/release by mouse and keyboard, the prior-studies marker, hostile text shown as text."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import update

from telehealth.cases.models import Case
from telehealth.db import transaction
from tests.dicomweb import Web, ct_instance
from tests.webapp.conftest import logged_in, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# A DICOM name: "^" separates its components (shown as spaces), "=" would start a group.
HOSTILE_NAME = "<script>alert(1)</script>^<b>Wu</b>"
HOSTILE_SHOWN = "<script>alert(1)</script> <b>Wu</b>"
HOSTILE_TEXT = "<script>alert('x')</script> & <b>胸痛</b> \"; DROP TABLE cases; --"


def hub_api(web: Web, username: str) -> httpx.Client:
    return httpx.Client(
        base_url=web.base, headers={"authorization": f"Bearer {web.token(username)}"}, timeout=30
    )


def reading_group(web: Web) -> None:
    """One reading group at the county with `spec` in it: every clinic's case comes to him
    (no rule: the nearest group up the consortium tree)."""
    with hub_api(web, "admin") as admin:
        response = admin.post(
            "/api/routing/groups",
            json={
                "code": "COUNTY_READ",
                "name": "县人民医院阅片组",
                "institution": "COUNTY",
                "lead": "spec",
                "members": ["spec"],
            },
        )
        assert response.status_code == 201, response.text


def add_ct_study(
    web: Web,
    label: str,
    *,
    code: str = "CLINIC_A",
    patient_id: str = "P-NEW",
    patient_name: str = "Li^Si",
    study_date: str = "20260301",
) -> str:
    web.add(
        label,
        code,
        ct_instance(
            study_uid=generate_uid(),
            series_uid=generate_uid(),
            number=1,
            patient_id=patient_id,
            patient_name=patient_name,
            study_date=study_date,
            accession=label[:16],
        ),
    )
    return web.study[label]


def request_case(web: Web, label: str, username: str = "tech_a", **fields: Any) -> dict[str, Any]:
    with hub_api(web, username) as tech:
        response = tech.post("/api/cases", json={"study_instance_uid": web.study[label], **fields})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


def move_deadline(web: Web, case_id: int, *, allowed_minutes: int, left_minutes: float) -> None:
    """Make a case look `left_minutes` from its deadline out of `allowed_minutes` (test state:
    the hub's clock is the real one)."""
    now = web.hub.clock.now()
    due = now + timedelta(minutes=left_minutes)
    with transaction(web.hub.factory) as session:
        session.execute(
            update(Case)
            .where(Case.id == case_id)
            .values(due_at=due, created_at=due - timedelta(minutes=allowed_minutes))
        )


def seed_queue(web: Web) -> dict[str, dict[str, Any]]:
    """Three cases of three priorities; case "A" has a prior study of the same patient, "X"
    a hostile patient name and clinical history."""
    reading_group(web)
    add_ct_study(web, "A-prior", patient_id="A001", patient_name="Zhang^San", study_date="20230105")
    add_ct_study(web, "X", patient_name=HOSTILE_NAME)
    cases = {
        "A": request_case(web, "A", priority="routine", question="头痛三天"),
        "B": request_case(web, "B", "tech_b", priority="stat", question="外伤"),
        "X": request_case(
            web,
            "X",
            priority="urgent",
            clinical_history=HOSTILE_TEXT,
            question="<img src=x onerror=alert(1)>",
        ),
    }
    move_deadline(web, cases["B"]["id"], allowed_minutes=30, left_minutes=-5)  # overdue
    move_deadline(web, cases["X"]["id"], allowed_minutes=120, left_minutes=30)  # a quarter left
    return cases


def rows(page: Any) -> Any:
    return page.locator("tr[data-case-id]")


def row(page: Any, case_id: int) -> Any:
    return page.locator(f'tr[data-case-id="{case_id}"]')


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def mean_rgb(png: bytes) -> tuple[float, float, float]:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    r, g, b = pixels.reshape(-1, 3).mean(axis=0)
    return r, g, b


def test_the_queue_shows_priorities_deadlines_and_priors_and_updates_live(
    web: Web, browser: Any
) -> None:
    cases = seed_queue(web)
    page = logged_in(browser, web, "spec")
    page.goto(f"{web.base}/app/worklist")
    wait_until(lambda: rows(page).count() == 3)
    # Sorted by priority: STAT, urgent, routine.
    assert [int(r.get_attribute("data-case-id")) for r in rows(page).all()] == [
        cases["B"]["id"],
        cases["X"]["id"],
        cases["A"]["id"],
    ]
    for priority in ("stat", "urgent", "routine"):
        assert page.get_by_test_id(f"count-{priority}").inner_text().endswith("1")

    # Deadlines: red overdue, amber under half left, green otherwise, and ticking.
    states = {
        name: row(page, c["id"]).locator(".deadline").get_attribute("data-state")
        for name, c in cases.items()
    }
    assert states == {"B": "overdue", "X": "warn", "A": "ok"}
    red = mean_rgb(row(page, cases["B"]["id"]).locator(".deadline").screenshot())
    green = mean_rgb(row(page, cases["A"]["id"]).locator(".deadline").screenshot())
    assert red[0] > red[1] + 60  # red background
    assert green[1] > green[0] and green[1] > green[2]  # green tint
    before = row(page, cases["A"]["id"]).locator(".deadline").inner_text()
    wait_until(lambda: row(page, cases["A"]["id"]).locator(".deadline").inner_text() != before, 3)
    assert "超时" in row(page, cases["B"]["id"]).locator(".deadline").inner_text()

    # Prior studies marker only where the patient has an earlier study.
    assert row(page, cases["A"]["id"]).get_by_test_id("priors-marker").is_visible()
    assert row(page, cases["B"]["id"]).get_by_test_id("priors-marker").count() == 0

    # Hostile text is text: the name shows literally and no element was injected.
    hostile = row(page, cases["X"]["id"])
    assert hostile.locator(".patient-name").inner_text() == HOSTILE_SHOWN
    assert page.locator("table img, table b, table script").count() == 0
    screenshot(page, "worklist-zh")

    # A new case arrives while the page is open: it appears without a reload.
    add_ct_study(web, "LIVE", code="CLINIC_B", patient_name="Wang^Wu")
    live = request_case(web, "LIVE", "tech_b", priority="stat")
    wait_until(lambda: row(page, live["id"]).count() == 1)
    assert page.get_by_test_id("count-stat").inner_text().endswith("2")
    assert "Wang Wu" in row(page, live["id"]).inner_text()

    # Filters: a priority counter, the clinic, free text.
    page.get_by_test_id("count-stat").click()
    wait_until(lambda: rows(page).count() == 2)
    page.get_by_test_id("count-stat").click()
    page.get_by_label("申请机构").select_option(label="城关镇卫生院")
    wait_until(lambda: rows(page).count() == 2)
    page.get_by_label("搜索").fill("头痛")
    wait_until(lambda: rows(page).count() == 1)
    assert row(page, cases["A"]["id"]).count() == 1
    assert page.script_errors == []
    page.context.close()


def test_claim_and_release_by_keyboard_and_by_button(web: Web, browser: Any) -> None:
    cases = seed_queue(web)
    page = logged_in(browser, web, "spec")
    page.goto(f"{web.base}/app/worklist")
    wait_until(lambda: rows(page).count() == 3)

    def holder(case_id: int) -> str | None:
        with hub_api(web, "spec") as spec:
            value: str | None = spec.get(f"/api/cases/{case_id}").json()["claim_holder"]
            return value

    # Keyboard: focus the first row, j/ArrowDown move, c claims, r releases.
    rows(page).first.focus()
    page.keyboard.press("j")
    focused = page.evaluate("document.activeElement.getAttribute('data-case-id')")
    assert int(focused) == cases["X"]["id"]
    page.keyboard.press("c")
    wait_until(lambda: holder(cases["X"]["id"]) == "spec")
    wait_until(lambda: "我在阅片" in row(page, cases["X"]["id"]).inner_text())
    page.keyboard.press("k")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("r")
    wait_until(lambda: holder(cases["X"]["id"]) is None)
    wait_until(lambda: "待认领" in row(page, cases["X"]["id"]).inner_text())

    # Mouse: the row's buttons.
    target = row(page, cases["A"]["id"])
    target.get_by_role("button", name="认领").click()
    wait_until(lambda: holder(cases["A"]["id"]) == "spec")
    page.get_by_label("范围").select_option("mine")
    wait_until(lambda: rows(page).count() == 1)
    screenshot(page, "worklist-mine-zh")
    target.get_by_role("button", name="释放").click()
    wait_until(lambda: holder(cases["A"]["id"]) is None)
    wait_until(lambda: rows(page).count() == 0)

    # Enter opens the focused case in the reading workspace.
    page.get_by_label("范围").select_option("all")
    wait_until(lambda: rows(page).count() == 3)
    rows(page).first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/app/read/{cases['B']['id']}")
    assert page.script_errors == []
    page.context.close()


def test_the_worklist_in_english(web: Web, browser: Any) -> None:
    cases = seed_queue(web)
    page = logged_in(browser, web, "spec", locale="en")
    page.goto(f"{web.base}/app/worklist")
    wait_until(lambda: rows(page).count() == 3)
    assert page.get_by_role("heading", name="Worklist").is_visible()
    assert "Overdue" in row(page, cases["B"]["id"]).locator(".deadline").inner_text()
    assert "Priors 1" in row(page, cases["A"]["id"]).inner_text()
    # Long text stays inside the table: nothing wider than the page.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1440
    screenshot(page, "worklist-en")
    page.context.close()
