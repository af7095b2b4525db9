"""The consortium admin's pages in a real browser: institutions, users, AE titles, routing,
deadlines, the dashboard, and the refusal a technician meets. Each change is checked through
the API, not through the page that made it."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.dicomweb import PASSWORD, Web
from tests.webapp.conftest import logged_in, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HOSTILE_PLACE = "<img src=x onerror=alert(1)>东山镇卫生院"
HOSTILE_PERSON = "<script>alert(2)</script>李四"


def api(web: Web, username: str) -> httpx.Client:
    return httpx.Client(
        base_url=web.base, headers={"authorization": f"Bearer {web.token(username)}"}, timeout=30
    )


def no_dialogs(page: Any) -> list[str]:
    """Any alert() a hostile name managed to run lands here (and is dismissed)."""
    opened: list[str] = []

    def dismiss(dialog: Any) -> None:
        opened.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    return opened


def test_admin_adds_institution_user_ae_title_and_edits_routing(web: Web, browser: Any) -> None:
    with api(web, "admin") as admin:
        group = admin.post(
            "/api/routing/groups",
            json={
                "code": "COUNTY_IMG",
                "name": "县医院影像组",
                "institution": "COUNTY",
                "members": ["spec"],
                "lead": "spec",
            },
        )
        assert group.status_code == 201, group.text
        rule = admin.post(
            "/api/routing/rules",
            json={"name": "CT 到影像组", "group": "COUNTY_IMG", "when": {"modalities": ["CT"]}},
        )
        assert rule.status_code == 201, rule.text
        rule_id = rule.json()["id"]

    page = logged_in(browser, web, "admin")
    dialogs = no_dialogs(page)

    # Institutions: a new township below COUNTY, with a hostile name shown as text.
    page.goto(f"{web.base}/app/admin/institutions")
    county = page.locator('li[data-code="COUNTY"] > .tree-node')
    county.get_by_role("button", name="添加下级").click()
    form = page.get_by_role("form", name="在 县人民医院 下添加机构")
    form.get_by_label("代码").fill("TOWN_C")
    form.get_by_label("名称").fill(HOSTILE_PLACE)
    assert form.get_by_label("级别").input_value() == "township"  # a county's child
    form.get_by_role("button", name="添加").click()
    node = page.locator('li[data-code="COUNTY"] li[data-code="TOWN_C"] .node-name')
    node.wait_for()
    assert node.inner_text() == HOSTILE_PLACE
    assert page.locator("img[src=x]").count() == 0
    screenshot(page, "admin-institutions-zh")
    # Escape leaves an edit form without saving.
    page.locator('li[data-code="CLINIC_A"] > .tree-node').get_by_role("button", name="编辑").click()
    page.get_by_role("form", name="编辑机构：城关镇卫生院").get_by_label("名称").press("Escape")
    page.get_by_role("form", name="添加机构").wait_for()

    with api(web, "admin") as admin:
        tree = {i["code"]: i for i in admin.get("/api/institutions").json()}
    assert tree["TOWN_C"]["parent_id"] == tree["COUNTY"]["id"]
    assert tree["TOWN_C"]["level"] == "township" and tree["TOWN_C"]["name"] == HOSTILE_PLACE

    # Users: a technician at the new township.
    page.get_by_role("link", name="用户").click()
    form = page.get_by_role("form", name="添加用户")
    form.get_by_label("用户名").fill("tech_c")
    form.get_by_label("姓名").fill(HOSTILE_PERSON)
    form.get_by_label("密码").fill("short")
    form.get_by_label("机构").select_option("TOWN_C")
    form.get_by_role("button", name="添加").click()
    refusal = form.get_by_role("alert")
    refusal.wait_for()
    assert "password" in refusal.inner_text()  # the hub's own words, shown as they come
    form.get_by_label("密码").fill(PASSWORD)
    form.get_by_role("button", name="添加").click()
    row = page.locator('tr[data-username="tech_c"]')
    row.wait_for()
    assert HOSTILE_PERSON in row.inner_text() and HOSTILE_PLACE in row.inner_text()
    assert page.locator("tr[data-username]").count() == 5
    page.get_by_label("角色").first.select_option("technician")
    assert page.locator("tr[data-username]").count() == 3  # tech_a, tech_b, tech_c
    screenshot(page, "admin-users-zh")
    with api(web, "admin") as admin:
        users = {u["username"]: u for u in admin.get("/api/users").json()}
    assert users["tech_c"]["institution_id"] == tree["TOWN_C"]["id"]
    assert users["tech_c"]["role"] == "technician"
    assert web.token("tech_c")  # the new user can log in

    # AE titles: the township's ultrasound, tied to its host.
    page.get_by_role("link", name="AE 标题").click()
    form = page.get_by_role("form", name="登记 AE 标题")
    form.get_by_label("AE 标题").fill("TOWN_C_US")
    form.get_by_label("机构").select_option("TOWN_C")
    form.get_by_label("主机地址").fill("10.1.2.3")
    form.get_by_label("端口").fill("104")
    form.get_by_label("C-MOVE 仅经 TLS 发送").check()
    form.get_by_role("button", name="添加").click()
    page.locator('tbody[data-institution="TOWN_C"] tr[data-ae="TOWN_C_US"]').wait_for()
    screenshot(page, "admin-ae-titles-zh")
    with api(web, "admin") as admin:
        entities = {e["ae_title"]: e for e in admin.get("/api/application-entities").json()}
    assert entities["TOWN_C_US"]["institution_id"] == tree["TOWN_C"]["id"]
    town_us = entities["TOWN_C_US"]
    assert (town_us["host"], town_us["port"], town_us["tls"]) == ("10.1.2.3", 104, True)

    # Routing: edit the rule; a bad time window is refused with the hub's message.
    page.get_by_role("link", name="分诊规则").click()
    page.locator(f'tr[data-rule="{rule_id}"]').get_by_role("button", name="编辑").click()
    form = page.get_by_role("form", name="编辑规则：CT 到影像组")
    form.get_by_label("时间段").fill("8点到17点")
    form.get_by_role("checkbox", name="急诊").check()
    form.get_by_role("button", name="保存").click()
    refusal = form.get_by_role("alert")
    refusal.wait_for()
    assert "time" in refusal.inner_text()
    screenshot(page, "admin-routing-refused-zh")
    form.get_by_label("时间段").fill("08:00-17:30")
    form.get_by_role("button", name="保存").click()
    page.get_by_role("form", name="添加规则").wait_for()
    with api(web, "admin") as admin:
        (saved,) = admin.get("/api/routing/rules").json()
    assert saved["when"]["time"] == "08:00-17:30"
    assert saved["when"]["priorities"] == ["stat"]
    assert saved["when"]["modalities"] == ["CT"]
    screenshot(page, "admin-routing-zh")

    # Deadlines: STAT within 20 minutes.
    page.get_by_role("link", name="时限").click()
    page.locator("tr[data-row]").first.wait_for()
    minutes = page.get_by_label("时限（分钟）")
    priorities = page.locator("tr[data-row] td:first-child select")
    services = page.locator("tr[data-row] td:nth-child(2) select")
    index = next(
        i
        for i in range(priorities.count())
        if priorities.nth(i).input_value() == "stat" and services.nth(i).input_value() == ""
    )
    minutes.nth(index).fill("0")
    page.get_by_role("button", name="保存时限").click()
    page.locator(".deadlines [role=alert]").wait_for()
    assert "greater than 0" in page.locator(".deadlines [role=alert]").inner_text()
    minutes.nth(index).fill("20")
    page.get_by_role("button", name="保存时限").click()
    page.get_by_role("status").wait_for()
    with api(web, "admin") as admin:
        deadlines = admin.get("/api/routing/deadlines").json()
    assert {"priority": "stat", "service": None, "minutes": 20, "warn_fraction": 0.5} in deadlines
    screenshot(page, "admin-deadlines-zh")

    # Deactivate the new user: he can no longer log in.
    page.get_by_role("link", name="用户").click()
    page.locator('tr[data-username="tech_c"]').get_by_role("button", name="停用").click()
    page.locator('tr[data-username="tech_c"]').get_by_text("已停用").wait_for()
    login = httpx.post(
        f"{web.base}/api/auth/login", json={"username": "tech_c", "password": PASSWORD}
    )
    assert login.status_code == 401
    with httpx.Client(base_url=web.base) as http:
        stale = http.get(
            "/api/auth/me", headers={"authorization": f"Bearer {web.tokens['tech_c']}"}
        )
    assert stale.status_code == 401  # the session he had ended with the account

    assert dialogs == [] and page.script_errors == []
    page.context.close()


def test_a_technician_is_refused_in_the_page_and_by_the_api(web: Web, browser: Any) -> None:
    page = logged_in(browser, web, "tech_a")
    for path in ("/app/admin", "/app/admin/users", "/app/dashboard"):
        page.goto(f"{web.base}{path}")
        message = page.get_by_role("alert")
        message.wait_for()
        assert "没有权限" in message.inner_text(), path
        assert page.locator("table, form.admin-form, svg.bar-chart").count() == 0
    screenshot(page, "admin-refused-technician-zh")
    with api(web, "tech_a") as tech:
        assert tech.get("/api/users").status_code == 403
        assert tech.get("/api/application-entities").status_code == 403
        assert tech.get("/api/routing/rules").status_code == 403
        assert tech.get("/api/metrics/summary").status_code == 403
        body = {"name": "mine", "level": "county"}
        assert tech.put(f"/api/institutions/{web.ids['COUNTY']}", json=body).status_code == 403
        assert tech.patch("/api/users/1", json={"active": False}).status_code == 403
    page.context.close()


def _bar_heights(page: Any, chart: str) -> dict[str, float]:
    heights: dict[str, float] = {}
    for category in page.locator(f"#{chart} g.category").all():
        bar = category.locator("rect.bar")
        if bar.count():
            heights[category.get_attribute("data-category")] = bar.first.bounding_box()["height"]
    return heights


def _table(page: Any, testid: str) -> dict[str, list[str]]:
    rows = page.get_by_test_id(testid).locator("tbody tr")
    return {
        row.locator("th").inner_text(): [c.inner_text() for c in row.locator("td").all()]
        for row in rows.all()
    }


def test_dashboard_counts_and_bars_follow_the_cases(web: Web, browser: Any) -> None:
    with api(web, "admin") as admin:
        renamed = admin.put(
            f"/api/institutions/{web.ids['CLINIC_B']}",
            json={"name": HOSTILE_PLACE, "level": "township", "parent_code": "COUNTY"},
        )
        assert renamed.status_code == 200, renamed.text
        admin.post(
            "/api/routing/groups",
            json={
                "code": "COUNTY_IMG",
                "name": "影像组",
                "institution": "COUNTY",
                "members": ["spec"],
            },
        ).raise_for_status()
        admin.post("/api/routing/rules", json={"group": "COUNTY_IMG"}).raise_for_status()
    # Two requests from CLINIC_A, one from CLINIC_B; the first is read, flagged critical
    # and acknowledged by the clinic.
    cases: list[int] = []
    for username, label in [("tech_a", "A"), ("tech_a", "US"), ("tech_b", "B")]:
        with api(web, username) as tech:
            response = tech.post("/api/cases", json={"study_instance_uid": web.study[label]})
            assert response.status_code == 201, response.text
            cases.append(response.json()["id"])
    with api(web, "spec") as spec:
        token = spec.post(f"/api/cases/{cases[0]}/claim").json()["lease_token"]
        spec.put(
            f"/api/cases/{cases[0]}/report",
            json={"findings": "左侧基底节区出血", "impression": "脑出血", "lease_token": token},
        ).raise_for_status()
        spec.post(
            f"/api/cases/{cases[0]}/report/sign",
            json={"lease_token": token, "critical": {"category": "intracranial_hemorrhage"}},
        ).raise_for_status()
    with api(web, "tech_a") as tech:
        (critical,) = tech.get("/api/critical?status=open").json()
        tech.post(
            f"/api/critical/{critical['id']}/acknowledge", json={"method": "phone"}
        ).raise_for_status()

    page = logged_in(browser, web, "admin")
    dialogs = no_dialogs(page)
    page.goto(f"{web.base}/app/dashboard")
    page.get_by_test_id("table-volume-clinic").wait_for()
    volumes = _table(page, "table-volume-clinic")
    assert volumes == {"城关镇卫生院": ["2", "1"], HOSTILE_PLACE: ["1", "0"]}
    assert page.locator('[data-figure="cases"] dd').inner_text() == "3"
    assert page.locator('[data-figure="ack-rate"] dd').inner_text().startswith("100%")
    heights = _bar_heights(page, "chart-volume-clinic")
    assert heights["城关镇卫生院"] == pytest.approx(2 * heights[HOSTILE_PLACE], rel=0.02)
    assert heights[HOSTILE_PLACE] > 10
    critical_rows = _table(page, "table-critical-clinic")
    assert critical_rows["城关镇卫生院"][:3] == ["1", "1", "100%"]
    readers = _table(page, "table-turnaround-reader")
    assert list(readers) == ["spec"] and readers["spec"][0] == "1"
    assert page.locator("img[src=x]").count() == 0
    screenshot(page, "dashboard-zh")

    # A custom period before anything happened: no data, no bars.
    page.get_by_text("自定义").click()
    page.get_by_label("起").fill("2020-01-01")
    page.get_by_label("止").fill("2020-01-31")
    page.get_by_role("button", name="应用").click()
    page.get_by_text("2020").first.wait_for()
    expect(page.locator("rect.bar")).to_have_count(0)
    assert page.locator('[data-figure="cases"] dd').inner_text() == "0"
    # Back to the last 7 days.
    page.get_by_text("近 7 天").click()
    expect(page.locator("#chart-volume-clinic rect.bar")).to_have_count(2)
    assert dialogs == [] and page.script_errors == []
    page.context.close()

    english = logged_in(browser, web, "admin", locale="en")
    english.goto(f"{web.base}/app/dashboard")
    english.get_by_test_id("table-volume-clinic").wait_for()
    assert english.get_by_text("Requests per institution").first.is_visible()
    assert english.get_by_text("Last 30 days").is_visible()
    # Long captions and names stay inside their panels.
    overflow = english.evaluate(
        """() => [...document.querySelectorAll('.figure')].filter(
               f => f.scrollWidth > f.clientWidth + 1).length"""
    )
    assert overflow == 0
    screenshot(english, "dashboard-en")
    english.goto(f"{web.base}/app/admin/users")
    english.get_by_role("form", name="Add user").wait_for()
    assert re.search(r"4 of 4 users", english.locator("main").inner_text())
    screenshot(english, "admin-users-en")
    english.goto(f"{web.base}/app/admin/institutions")
    english.get_by_label("Consortium tree").wait_for()
    screenshot(english, "admin-institutions-en")
    assert english.script_errors == []
    english.context.close()
