"""The consult pages: the list (request, invite), and the room in Chromium with a fake camera
and microphone against the hub's real signalling server: an aiortc peer or a second page is
the other participant; lobby, video both ways (getStats), chat both ways and kept with the
consult, refused tokens, hostile text, the host's outcome."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest
from aiortc import VideoStreamTrack
from sqlalchemy import select

from signaling.peer import ConsultPeer
from telehealth.auth.models import User
from telehealth.consults.tokens import ConsultRole, issue_join_token
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.browser import launch_chromium
from tests.dicomweb import Web, open_web
from tests.webapp.conftest import logged_in, screenshot
from tests.webapp.test_worklist import HOSTILE_TEXT, hub_api, request_case, wait_until

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

T = TypeVar("T")

# A fake camera and microphone, permission granted without a prompt; real host addresses in
# ICE candidates (no mDNS names) so that aiortc on this machine reaches the browser.
MEDIA_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
]
# Every RTCPeerConnection the page makes, for getStats from the test (added before the app).
CAPTURE_PCS = """
window.__pcs = [];
const Native = window.RTCPeerConnection;
window.RTCPeerConnection = function (...args) {
  const pc = new Native(...args);
  window.__pcs.push(pc);
  return pc;
};
window.RTCPeerConnection.prototype = Native.prototype;
window.__sockets = [];
const NativeSocket = window.WebSocket;
window.WebSocket = function (...args) {
  const ws = new NativeSocket(...args);
  window.__sockets.push(ws);
  return ws;
};
window.WebSocket.prototype = NativeSocket.prototype;
Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
"""
FRAMES_DECODED = """
async () => {
  let frames = 0;
  for (const pc of window.__pcs) {
    if (pc.connectionState === 'closed') continue;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded || 0;
    });
  }
  return frames;
}
"""


@pytest.fixture(scope="module")
def browser(webapp_dist: Any) -> Iterator[Any]:
    yield from launch_chromium(MEDIA_ARGS)


@pytest.fixture
def web(hub_factory: Callable[..., Hub], webapp_dist: Any) -> Iterator[Web]:
    """A served hub with its signalling server on a free port, as `telehealth serve` runs."""
    hub = hub_factory(start=False, signaling_port=0)
    hub.start(dicom=False, signaling=True)
    with open_web(hub) as web:
        yield web


class Loop:
    """An asyncio loop in a thread: the aiortc peer lives there while the test drives pages."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def new_consult(web: Web, participants: list[str] | None = None) -> dict[str, Any]:
    case = request_case(web, "A")
    with hub_api(web, "tech_a") as tech:
        response = tech.post(
            "/api/consults",
            json={
                "case_id": case["id"],
                "host": "spec",
                "participants": participants or [],
                "reason": HOSTILE_TEXT,
            },
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


def join_ticket(web: Web, username: str, consult_id: int) -> dict[str, Any]:
    with hub_api(web, username) as client:
        response = client.post(f"/api/consults/{consult_id}/join")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def user_id(web: Web, username: str) -> int:
    with transaction(web.hub.factory) as session:
        found = session.scalar(select(User.id).where(User.username == username))
    assert found is not None
    return int(found)


def room_page(browser: Any, web: Web, username: str, consult_id: int, locale: str) -> Any:
    page = logged_in(browser, web, username, locale=locale)
    page.add_init_script(CAPTURE_PCS)
    page.goto(f"{web.base}/app/consults/{consult_id}")
    return page


def wait_for_frames(page: Any, timeout: float = 20) -> int:
    frames = 0

    def decoded() -> bool:
        nonlocal frames
        frames = int(page.evaluate(FRAMES_DECODED))
        return frames > 0

    wait_until(decoded, timeout)
    return frames


def test_the_host_admits_an_aiortc_guest_video_and_chat_go_both_ways(
    web: Web, browser: Any
) -> None:
    consult = new_consult(web)
    host = room_page(browser, web, "spec", consult["id"], "zh-CN")
    host.get_by_role("button", name="静音").wait_for()
    assert host.locator(".room-head .reason").inner_text() == HOSTILE_TEXT

    loop = Loop()
    ticket = join_ticket(web, "tech_a", consult["id"])
    guest = ConsultPeer(ticket["signaling_url"], ticket["token"], track_factory=VideoStreamTrack)
    try:
        welcome = loop.run(guest.join())
        assert welcome["admitted"] is False  # the lobby, until the host lets him in
        lobby = host.locator(".lobby li", has_text="tech_a")
        lobby.get_by_role("button", name="允许进入").click()
        loop.run(guest.expect("admitted"))

        # The browser decodes the aiortc peer's frames; aiortc gets the fake camera's.
        assert wait_for_frames(host) > 0
        loop.run(asyncio.wait_for(guest.first_frame.wait(), 20))
        assert guest.frames_received > 0
        host.locator(".people li", has_text="tech_a").wait_for()

        host.get_by_label("文字交流").fill("请看第 3 层 CT")
        host.keyboard.press("Enter")
        said = loop.run(guest.expect("chat", where=lambda m: m["text"] == "请看第 3 层 CT"))
        assert said["name"] == "spec"
        loop.run(guest.chat(HOSTILE_TEXT))  # shown as text, never as markup
        line = host.locator(".chat-lines li", has_text="DROP TABLE")
        line.wait_for()
        assert line.locator(".text").inner_text() == HOSTILE_TEXT
        assert line.locator(".meta .name").inner_text() == "tech_a"
        assert host.locator(".chat-lines script, .chat-lines b").count() == 0
        # The quality indicator reads getStats: a round trip on loopback is "good".
        wait_until(lambda: host.locator(".tile.remote .quality.good").count() == 1, 10)
        detail = host.locator(".tile.remote .quality .detail")
        wait_until(lambda: re.search(r"(\d+) kbps", detail.inner_text()) is not None, 10)
        assert int(re.search(r"(\d+) kbps", detail.inner_text())[1]) > 0  # type: ignore[index]
        screenshot(host, "consult_room_zh")
        # The host's line is kept with the consult (the aiortc peer only relays).
        with hub_api(web, "tech_a") as tech:
            kept = tech.get(f"/api/consults/{consult['id']}/messages").json()
        assert [m["text"] for m in kept] == ["请看第 3 层 CT"]

        # The host's link drops: the guest sees him leave; the page takes a fresh token,
        # resumes without the lobby and calls again (aiortc answers on a new connection).
        frames_before = guest.frames_received
        host.evaluate("window.__sockets.forEach((ws) => ws.close())")
        loop.run(guest.expect("leave"))
        loop.run(guest.expect("join"))
        wait_until(lambda: host.locator(".tile.remote").count() == 1, 10)
        assert wait_for_frames(host) > 0
        wait_until(lambda: guest.frames_received > frames_before + 10, 20)

        # The host removes the guest: the server closes his socket for good.
        host.locator(".people li", has_text="tech_a").get_by_role("button", name="移出").click()
        closed = loop.run(guest.expect("closed"))
        assert closed["code"] == 4006
        wait_until(lambda: host.locator(".tile.remote").count() == 0, 10)
    finally:
        loop.run(guest.close())
        loop.close()
    assert host.script_errors == []


def test_two_pages_lobby_video_chat_history_and_the_outcome(web: Web, browser: Any) -> None:
    consult = new_consult(web)
    host = room_page(browser, web, "spec", consult["id"], "en")
    host.get_by_role("button", name="Mute").wait_for()
    guest = room_page(browser, web, "tech_a", consult["id"], "en")
    guest.get_by_text("Waiting for the host to let you in").wait_for()
    assert guest.locator(".tile.remote").count() == 0
    screenshot(guest, "consult_lobby_en")

    host.locator(".lobby li", has_text="tech_a").get_by_role("button", name="Admit").click()
    guest.get_by_role("button", name="Mute").wait_for()
    assert wait_for_frames(host) > 0 and wait_for_frames(guest) > 0

    guest.get_by_label("Chat").fill("血压 150/95")
    guest.get_by_role("button", name="Send").click()
    host.locator(".chat-lines .text", has_text="血压 150/95").wait_for()
    host.get_by_label("Chat").fill("<img src=x onerror=alert(1)>")
    host.keyboard.press("Enter")
    guest.locator(".chat-lines .text", has_text="onerror").wait_for()
    assert guest.locator(".chat-lines img").count() == 0

    # Low bandwidth on the host: audio only both ways (the guest is asked over the data
    # channel to stop its video encoder); the guest sees the host's camera as off.
    host.get_by_role("button", name="Low bandwidth (audio only)").click()
    guest.locator(".tile.remote .badge", has_text="Camera off").wait_for()
    time.sleep(1)  # frames in flight
    before = [page.evaluate(FRAMES_DECODED) for page in (host, guest)]
    time.sleep(2)
    assert [page.evaluate(FRAMES_DECODED) for page in (host, guest)] == before
    host.get_by_role("button", name="Video again").click()
    wait_until(lambda: host.evaluate(FRAMES_DECODED) > before[0], 10)
    wait_until(lambda: guest.evaluate(FRAMES_DECODED) > before[1], 10)

    # Presence: the guest mutes and turns the camera off; the host sees it.
    guest.get_by_role("button", name="Mute").click()
    guest.get_by_role("button", name="Camera off").click()
    remote = host.locator(".tile.remote")
    remote.locator(".badge", has_text="Mic off").wait_for()
    remote.locator(".badge", has_text="Camera off").wait_for()
    # Screen sharing: shared (the host sees the badge), or where the browser cannot (headless
    # without a picker) a message, and the call goes on.
    guest.get_by_role("button", name="Share screen").click()
    stop = guest.get_by_role("button", name="Stop sharing")
    stop.or_(guest.get_by_role("status").filter(has_text="Screen sharing")).first.wait_for()
    if stop.count():
        shared = remote.locator(".badge", has_text="Sharing screen")
        shared.wait_for()
        stop.click()
        wait_until(lambda: shared.count() == 0, 10)
    screenshot(host, "consult_room_en")

    # Whoever comes back later finds the chat kept with the consult.
    guest.get_by_role("button", name="Leave").click()
    guest.get_by_text("You left the consult room").wait_for()
    wait_until(lambda: host.locator(".tile.remote").count() == 0, 10)
    guest.get_by_role("button", name="Join again").click()
    # Admitted once: straight back in, with the history.
    guest.get_by_role("button", name="Mute").wait_for()
    texts = guest.locator(".chat-lines .text").all_inner_texts()
    assert texts[:2] == ["血压 150/95", "<img src=x onerror=alert(1)>"]

    host.get_by_role("button", name="End and file the outcome").click()
    form = host.get_by_role("form", name="Consult outcome")
    form.get_by_label("Advice").fill("转县医院心内科")
    form.get_by_label("Up to a higher-level hospital").check()
    form.get_by_label("Destination").select_option("COUNTY")
    form.get_by_label("Reason for referral").fill("需冠脉造影")
    screenshot(host, "consult_outcome_en")
    form.get_by_role("button", name="File the outcome").click()
    host.get_by_text("The outcome is filed.").wait_for()
    with hub_api(web, "spec") as spec:
        done = spec.get(f"/api/consults/{consult['id']}").json()
    assert (done["status"], done["referral"], done["referral_institution"]) == (
        "completed",
        "up",
        "COUNTY",
    )
    assert done["referral_reason"] == "需冠脉造影"
    assert host.script_errors == [] and guest.script_errors == []


def token_swapper(token: str) -> Callable[[Any], None]:
    """A route handler that hands the page `token` in place of the hub's join token."""

    def swap(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["token"] = token
        route.fulfill(response=response, json=body)

    return swap


def test_a_forged_or_expired_token_is_refused_with_a_clear_message(web: Web, browser: Any) -> None:
    consult = new_consult(web)
    forged = join_ticket(web, "spec", consult["id"])["token"][:-4] + "AAAA"
    expired, _ = issue_join_token(
        web.hub.consults.join_key,
        user_id=user_id(web, "spec"),
        consult_id=consult["id"],
        role=ConsultRole.HOST,
        name="spec",
        now=web.hub.clock.now() - timedelta(hours=1),
        ttl=timedelta(minutes=2),
    )
    for name, bad in [("forged", forged), ("expired", expired)]:
        page = logged_in(browser, web, "spec", locale="zh-CN")

        page.route("**/api/consults/*/join", token_swapper(bad))
        page.goto(f"{web.base}/app/consults/{consult['id']}")
        alert = page.get_by_role("alert")
        alert.wait_for()
        assert "会诊凭证无效或已过期" in alert.inner_text(), name
        assert page.locator(".tile").count() == 0
        screenshot(page, f"consult_refused_{name}_zh")
        page.context.close()


def test_the_list_requests_and_invites_and_shows_past_consults(web: Web, browser: Any) -> None:
    # The room's websocket goes to the signalling port: that origin, and only it, is allowed.
    assert web.hub.signaling is not None
    csp = httpx.get(f"{web.base}/app/consults").headers["content-security-policy"]
    connect = next(d for d in csp.split("; ") if d.startswith("connect-src"))
    assert connect == f"connect-src 'self' blob: ws://127.0.0.1:{web.hub.signaling.port}"
    case = request_case(web, "A")
    page = logged_in(browser, web, "tech_a", locale="zh-CN")
    page.goto(f"{web.base}/app/consults?case={case['id']}")
    page.get_by_label("主持专家（用户名）").fill("spec")
    page.get_by_label("会诊目的").fill(HOSTILE_TEXT)
    page.get_by_role("button", name="提交申请").click()
    row = page.locator("tr[data-consult]").first
    row.wait_for()
    assert row.locator(".reason").inner_text() == HOSTILE_TEXT
    row.get_by_label("邀请").fill("tech_b")  # another clinic of the same consortium
    row.get_by_role("button", name="邀请").click()
    row.locator(".people .badge", has_text="tech_b").wait_for()
    screenshot(page, "consults_zh")
    row.get_by_role("button", name="取消会诊").click()
    page.locator("section", has_text="已结束").locator(
        "tr[data-consult] .status-cancelled"
    ).wait_for()
    page.evaluate("localStorage.setItem('telehealth.locale', 'en')")
    page.reload()
    page.get_by_role("heading", name="Past").wait_for()
    screenshot(page, "consults_en")
    assert page.script_errors == []
