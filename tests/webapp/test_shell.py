"""The shell: login, the header naming who and where, the language switch, role menus."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.dicomweb import PASSWORD, Web
from tests.webapp.conftest import logged_in, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_login_form_then_header_shows_user_and_institution(web: Web, browser: Any) -> None:
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    page.goto(f"{web.base}/app/")
    page.get_by_label("用户名").fill("tech_a")
    page.get_by_label("密码").fill("wrong-password")
    page.get_by_role("button", name="登录").click()
    page.get_by_role("alert").wait_for()
    assert "用户名或密码不正确" in page.get_by_role("alert").inner_text()
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    who = page.get_by_test_id("who")
    who.wait_for()
    assert "tech_a" in who.inner_text()
    assert "城关镇卫生院" in who.inner_text()
    page.wait_for_url("**/app/desk")  # a technician starts at the clinic desk
    screenshot(page, "shell-technician-zh")
    # Switch to English: the menu changes language without a reload.
    page.get_by_label("语言").select_option("en")
    page.get_by_role("button", name="Log out").wait_for()
    assert page.get_by_role("link", name="Clinic desk").is_visible()
    page.get_by_role("button", name="Log out").click()
    page.get_by_label("Username").wait_for()
    context.close()


@pytest.mark.parametrize(
    ("username", "home", "shown", "hidden"),
    [
        ("spec", "/app/worklist", ["阅片工作列表"], ["系统管理", "检查申请"]),
        ("admin", "/app/admin", ["系统管理", "运行统计"], []),
    ],
)
def test_each_role_starts_on_its_page_and_sees_its_menus(
    web: Web, browser: Any, username: str, home: str, shown: list[str], hidden: list[str]
) -> None:
    page = logged_in(browser, web, username)
    page.goto(f"{web.base}/app/")
    page.wait_for_url(f"**{home}")
    nav = page.locator("header nav")
    for label in shown:
        assert nav.get_by_role("link", name=label).is_visible()
    for label in hidden:
        assert nav.get_by_role("link", name=label).count() == 0
    assert page.script_errors == []
    page.context.close()


def test_static_files_are_cached_by_content_and_routes_get_the_app(web: Web) -> None:
    with httpx.Client(base_url=web.base) as http:
        root = http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/app/"
        index = http.get("/app/worklist")  # a client route: no login needed for the shell
        assert index.status_code == 200
        assert '<div id="root">' in index.text
        assert index.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in index.headers["content-security-policy"]
        script = index.text.split('src="')[1].split('"')[0]
        js = http.get(script, headers={"accept-encoding": "gzip"})
        assert js.status_code == 200
        assert js.headers["cache-control"].endswith("immutable")
        assert js.headers["content-encoding"] == "gzip"
        again = http.get(script, headers={"if-none-match": js.headers["etag"]})
        assert again.status_code == 304
        assert http.get("/app/assets/missing.0123456789abcdef.js").status_code == 404
        assert http.get("/app/%2e%2e/package.json").status_code == 404
        # The API behind it still wants a login.
        assert http.get("/api/auth/me").status_code == 401
