"""Consortium metrics over cases built through the cases and reports services, with a
FakeClock so every duration, and so every percentile, is known exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from telehealth.app import create_app
from telehealth.auth.service import NotPermitted
from telehealth.cases import service as cases
from telehealth.cases.models import Case, CasePriority, CaseService
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.institutions.service import InstitutionNotFound
from telehealth.metrics import service as metrics
from telehealth.reports import service as reports
from telehealth.reports.models import AcknowledgeMethod, CriticalCategory
from tests.cases import PASSWORD, World, build_world

# 16:00 in Beijing. The two early requests fall on either side of local midnight, and the
# later one on another UTC date than its local one.
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
LATE_EVENING = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # 23:00 local, 1 March
SMALL_HOURS = datetime(2026, 3, 1, 17, 0, tzinfo=UTC)  # 01:00 local, 2 March


def move_to(clock: FakeClock, moment: datetime) -> None:
    assert moment >= clock.now(), "a FakeClock only moves forward"
    clock.advance(seconds=(moment - clock.now()).total_seconds())


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Story:
    """Fourteen cases with known times (minutes after T0):

    - cases 0–9 requested at 0, claimed by img1 at i+1, signed at 10 + 2(i+1):
      request→claim 1..10, claim→signed 11..20, request→signed 12, 14 … 30.
      0–5 from CLINIC_A, 6–9 from CLINIC_B; 7 is ultrasound; 8 and 9 are STAT imaging
      (due at 30: signed at 28 and 30, both in time).
    - case 10, STAT from CLINIC_A, claimed at 50 and held: past due and unsigned.
    - two routine requests the evening before, never claimed: pending.
    - critical results on cases 0 (acknowledged after 7 min), 1 (open) and 6 (CLINIC_B,
      acknowledged after 3 min).
    """

    def __init__(self, session: Session) -> None:
        self.clock = FakeClock(LATE_EVENING)
        self.world = build_world(session, self.clock)
        # Leases long enough for one reader to hold ten cases while the story plays out.
        self.ctx = cases.CaseContext(
            clock=self.clock, bus=self.world.bus, config=cases.CaseConfig(lease=timedelta(hours=2))
        )
        self.rctx = reports.ReportContext(cases=self.ctx)
        self.session = session

    def request(self, clinic: str, **fields: object) -> Case:
        study = self.world.study(clinic)
        tech = "tech_a" if clinic == "CLINIC_A" else "tech_b"
        request = cases.ReadingRequest(study_instance_uid=study.study_instance_uid, **fields)  # type: ignore[arg-type]
        return cases.request_reading(self.session, self.world.actor(tech), request, self.ctx)

    def play(self) -> None:
        self.request("CLINIC_A")
        move_to(self.clock, SMALL_HOURS)
        self.request("CLINIC_A")
        move_to(self.clock, T0)
        ids: list[int] = []
        for i in range(10):
            fields: dict[str, object] = {}
            if i == 7:
                fields["service"] = CaseService.ULTRASOUND
            if i in (8, 9):
                fields["priority"] = CasePriority.STAT
            ids.append(self.request("CLINIC_A" if i < 6 else "CLINIC_B", **fields).id)
        late = self.request("CLINIC_A", priority=CasePriority.STAT)
        assert late.due_at == at(30)

        reader = self.world.actor("img1")
        tokens: dict[int, int] = {}
        steps: list[tuple[float, Callable[[], object]]] = []
        for i, case_id in enumerate(ids):

            def claim(case_id: int = case_id) -> None:
                tokens[case_id] = cases.claim(self.session, reader, case_id, self.ctx).lease_token

            def sign(case_id: int = case_id, i: int = i) -> None:
                draft = reports.ReportDraft(findings="所见", impression="印象")
                reports.save_draft(
                    self.session,
                    reader,
                    case_id,
                    draft,
                    lease_token=tokens[case_id],
                    rctx=self.rctx,
                )
                critical = (
                    reports.CriticalFlag(CriticalCategory.INTRACRANIAL_HEMORRHAGE)
                    if i in (0, 1, 6)
                    else None
                )
                reports.sign(
                    self.session,
                    reader,
                    case_id,
                    lease_token=tokens[case_id],
                    rctx=self.rctx,
                    critical=critical,
                )

            steps += [(i + 1, claim), (10 + 2 * (i + 1), sign)]
        steps += [
            (12 + 7, lambda: self.acknowledge(ids[0], "tech_a")),
            (24 + 3, lambda: self.acknowledge(ids[6], "tech_b")),
            (50, lambda: cases.claim(self.session, reader, late.id, self.ctx)),
        ]
        for minutes, step in sorted(steps, key=lambda s: s[0]):
            move_to(self.clock, at(minutes))
            step()
        move_to(self.clock, at(60))

    def acknowledge(self, case_id: int, username: str) -> None:
        (result,) = [
            r
            for r in reports.list_critical(self.session, self.world.actor(username), status=None)
            if r.case_id == case_id
        ]
        reports.acknowledge(
            self.session,
            self.world.actor(username),
            result.id,
            method=AcknowledgeMethod.PHONE,
            note="回读确认",
            rctx=self.rctx,
        )


@pytest.fixture
def story(session: Session) -> Story:
    story = Story(session)
    story.play()
    return story


def as_dict(p: metrics.Percentiles) -> dict[str, object]:
    return {"count": p.count, "p50": p.p50, "p90": p.p90, "p99": p.p99}


def test_summary_gives_the_figures_of_the_story_and_narrows_them(story: Story) -> None:
    admin = story.world.actor("admin")
    summary = metrics.summary(story.session, admin, story.ctx)

    assert summary.generated_at == at(60)
    assert summary.end == at(60) and summary.start == at(60) - timedelta(days=30)
    assert [(v.day, v.institution_code, v.service, v.cases) for v in summary.volumes] == [
        ("2026-03-01", "CLINIC_A", CaseService.IMAGING, 1),
        ("2026-03-02", "CLINIC_A", CaseService.IMAGING, 8),  # small hours, 0–5, 10
        ("2026-03-02", "CLINIC_B", CaseService.IMAGING, 3),
        ("2026-03-02", "CLINIC_B", CaseService.ULTRASOUND, 1),
    ]
    # Nearest rank: p50 of 11 values is the 6th, p90 the 10th, p99 the 11th.
    assert as_dict(summary.turnaround.request_to_claim) == {
        "count": 11,
        "p50": 6.0,
        "p90": 10.0,
        "p99": 50.0,
    }
    assert as_dict(summary.turnaround.claim_to_signed) == {
        "count": 10,
        "p50": 15.0,
        "p90": 19.0,
        "p99": 20.0,
    }
    assert as_dict(summary.turnaround.request_to_signed) == {
        "count": 10,
        "p50": 20.0,
        "p90": 28.0,
        "p99": 30.0,
    }
    compliance = {c.priority: c for c in summary.compliance}
    assert list(compliance) == [CasePriority.STAT, CasePriority.URGENT, CasePriority.ROUTINE]
    stat = compliance[CasePriority.STAT]
    assert (stat.due, stat.met, stat.missed, stat.pending) == (3, 2, 1, 0)
    assert stat.rate == pytest.approx(0.6667)
    routine = compliance[CasePriority.ROUTINE]
    assert (routine.due, routine.met, routine.missed, routine.pending) == (8, 8, 0, 2)
    assert routine.rate == 1.0
    assert compliance[CasePriority.URGENT].rate is None

    critical = summary.critical
    assert (critical.flagged, critical.acknowledged, critical.open) == (3, 2, 1)
    assert (critical.ack_minutes.p50, critical.ack_minutes.p90) == (3.0, 7.0)

    assert [(r.username, r.claimed, r.signed, r.in_progress) for r in summary.readers] == [
        ("img1", 11, 10, 1)
    ]

    # The story costs seconds to play (ten signed PDFs): the narrowing is checked on it here.
    clinic_b = metrics.summary(story.session, admin, story.ctx, institution="CLINIC_B")
    assert {v.institution_code for v in clinic_b.volumes} == {"CLINIC_B"}
    assert clinic_b.turnaround.request_to_claim.count == 4
    assert (clinic_b.critical.flagged, clinic_b.critical.open) == (1, 0)
    assert clinic_b.critical.ack_minutes.p50 == 3.0
    assert [(r.claimed, r.signed, r.in_progress) for r in clinic_b.readers] == [(4, 4, 0)]

    # A naive time is Beijing time: from 2 March 00:00 local leaves out the 23:00 request.
    day = metrics.summary(
        story.session, admin, story.ctx, start=datetime(2026, 3, 2), end=datetime(2026, 3, 3)
    )
    assert sum(v.cases for v in day.volumes) == 12
    assert day.start == datetime(2026, 3, 1, 16, 0, tzinfo=UTC)

    with pytest.raises(metrics.InvalidPeriod):
        metrics.summary(story.session, admin, story.ctx, start=at(10), end=at(5))
    with pytest.raises(InstitutionNotFound):
        metrics.summary(story.session, admin, story.ctx, institution="NOWHERE")


@pytest.mark.parametrize("username", ["tech_a", "img1"])
def test_other_roles_may_not_see_metrics(session: Session, clock: FakeClock, username: str) -> None:
    world = build_world(session, clock)
    with pytest.raises(NotPermitted):
        metrics.summary(session, world.actor(username), world.ctx)


@pytest.fixture
def site(hub_factory: Callable[..., Hub], clock: FakeClock) -> Iterator[tuple[TestClient, World]]:
    hub = hub_factory(start=False, dicom=False, clock=clock)
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
        world.request(world.study())
    clock.advance(minutes=1)  # the default period ends now, exclusive
    with TestClient(create_app(hub)) as client:
        yield client, world


def test_metrics_api_is_for_admins(site: tuple[TestClient, World]) -> None:
    client, _ = site

    def get(username: str, **params: str) -> tuple[int, dict[str, object]]:
        login = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
        assert login.status_code == 200, login.text
        client.cookies.clear()
        token = login.json()["access_token"]
        response = client.get(
            "/api/metrics/summary", params=params, headers={"authorization": f"Bearer {token}"}
        )
        return response.status_code, response.json()

    status, body = get("admin", institution="CLINIC_A")
    assert status == 200, body
    assert body["volumes"] == [
        {
            "institution_id": body["volumes"][0]["institution_id"],  # type: ignore[index]
            "institution_code": "CLINIC_A",
            "service": "imaging",
            "day": "2026-03-02",
            "cases": 1,
        }
    ]
    assert body["turnaround"]["request_to_claim"] == {  # type: ignore[index]
        "count": 0,
        "p50": None,
        "p90": None,
        "p99": None,
    }
    assert get("admin", **{"from": "2026-03-02T10:00:00", "to": "2026-03-02T09:00:00"})[0] == 422
    assert get("tech_a")[0] == 403
    assert get("img1")[0] == 403
