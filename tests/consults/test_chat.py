"""A consult's chat is kept with it (the signalling server only relays), and past consults
are listed apart from upcoming ones."""

from __future__ import annotations

from telehealth.clock import FakeClock
from tests.consults.test_api import Site, site  # noqa: F401  (the fixture)


def test_participants_post_and_read_the_chat_others_cannot(site: Site) -> None:  # noqa: F811
    consult = site.consult()
    path = f"/api/consults/{consult['id']}/messages"
    hostile = "<img src=x onerror=alert(1)> 请看第 3 层"
    first = site.call("POST", "tech_a", path, json={"text": hostile})
    assert first.status_code == 201, first.text
    assert first.json()["username"] == "tech_a" and first.json()["text"] == hostile
    assert site.call("POST", "img1", path, json={"text": "收到"}).status_code == 201

    history = site.call("GET", "ecg1", path).json()
    assert [(m["username"], m["text"]) for m in history] == [("tech_a", hostile), ("img1", "收到")]
    # Another clinic sees nothing; nobody posts empty or oversized lines; no login, no chat.
    assert site.call("GET", "tech_b", path).status_code == 404
    assert site.call("POST", "tech_b", path, json={"text": "x"}).status_code == 404
    assert site.call("POST", "tech_a", path, json={"text": "   "}).status_code == 422
    assert site.call("POST", "tech_a", path, json={"text": "x" * 4001}).status_code == 422
    assert site.client.get(path).status_code == 401


def test_a_closed_consult_takes_no_more_chat_but_keeps_it(site: Site) -> None:  # noqa: F811
    consult = site.consult()
    path = f"/api/consults/{consult['id']}/messages"
    assert site.call("POST", "tech_a", path, json={"text": "before"}).status_code == 201
    done = site.call("POST", "img1", f"/api/consults/{consult['id']}/outcome", json={})
    assert done.status_code == 200, done.text
    assert site.call("POST", "tech_a", path, json={"text": "after"}).status_code == 409
    assert [m["text"] for m in site.call("GET", "img1", path).json()] == ["before"]


def test_past_consults_are_listed_apart(site: Site, clock: FakeClock) -> None:  # noqa: F811
    done, running = site.consult(), site.consult()
    site.call("POST", "img1", f"/api/consults/{done['id']}/cancel")
    upcoming = [c["id"] for c in site.call("GET", "ecg1", "/api/consults").json()]
    past = [c["id"] for c in site.call("GET", "ecg1", "/api/consults?past=true").json()]
    assert (upcoming, past) == ([running["id"]], [done["id"]])
    clock.advance(hours=3)  # the running one's time is long gone
    past = [c["id"] for c in site.call("GET", "ecg1", "/api/consults?past=true").json()]
    assert past == [running["id"], done["id"]]
    assert site.call("GET", "tech_b", "/api/consults?past=true").json() == []
