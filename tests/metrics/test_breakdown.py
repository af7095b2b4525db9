"""The summary split by clinic and by reader, on the story of test_metrics (known times)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from telehealth.metrics import service as metrics
from tests.metrics.test_metrics import Story


@pytest.fixture
def story(session: Session) -> Story:
    story = Story(session)
    story.play()
    return story


def test_figures_by_clinic_and_by_reader(story: Story) -> None:
    summary = metrics.summary(story.session, story.world.actor("admin"), story.ctx)

    clinics = {c.institution_code: c for c in summary.by_clinic}
    assert list(clinics) == ["CLINIC_A", "CLINIC_B"]
    a, b = clinics["CLINIC_A"], clinics["CLINIC_B"]
    # CLINIC_A: cases 0–5 signed 12…22 min after the request, the late STAT case overdue,
    # two routine requests of the evening before still pending.
    assert (a.cases, a.signed) == (9, 6)
    assert (a.turnaround.count, a.turnaround.p50, a.turnaround.p90) == (6, 16.0, 22.0)
    assert (a.compliance.due, a.compliance.met) == (7, 6)
    assert a.compliance.rate == pytest.approx(0.8571)
    assert (a.critical.flagged, a.critical.acknowledged, a.critical.rate) == (2, 1, 0.5)
    assert (a.critical.p50, a.critical.p90) == (7.0, 7.0)
    # CLINIC_B: cases 6–9 signed 24…30 min after, all in time; one critical result, 3 min.
    assert (b.cases, b.signed) == (4, 4)
    assert (b.turnaround.p50, b.turnaround.p90) == (26.0, 30.0)
    assert (b.compliance.due, b.compliance.met, b.compliance.rate) == (4, 4, 1.0)
    assert (b.critical.flagged, b.critical.acknowledged, b.critical.p50) == (1, 1, 3.0)

    (reader,) = summary.by_reader
    assert (reader.username, reader.signed) == ("img1", 10)
    assert (reader.turnaround.p50, reader.turnaround.p90) == (20.0, 28.0)
    assert (reader.compliance.due, reader.compliance.met) == (10, 10)
    assert (reader.critical.flagged, reader.critical.acknowledged) == (3, 2)
    assert (reader.critical.p50, reader.critical.p90) == (3.0, 7.0)

    # Narrowed to one clinic, only its rows remain.
    only_b = metrics.summary(
        story.session, story.world.actor("admin"), story.ctx, institution="CLINIC_B"
    )
    assert [c.institution_code for c in only_b.by_clinic] == ["CLINIC_B"]
    assert [(r.signed, r.critical.flagged) for r in only_b.by_reader] == [(4, 1)]
