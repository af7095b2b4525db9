"""ECG triage raises a case: measurements (bradycardia, …) and the request's words (胸痛)
make it more urgent, shorten its deadline and say why in the queue; never the other way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Instance, Series, Study
from telehealth.cases import service as cases
from telehealth.cases.api import _case_out
from telehealth.cases.models import Case, CaseEventKind, CasePriority, CaseService, CaseStatus
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.ecg import service as ecg
from telehealth.ecg.models import EcgMeasurement, MeasurementStatus
from telehealth.hub import Hub
from tests.cases import TWELVE_LEAD_ECG, World, build_world
from tests.conftest import upload_origin
from tests.ecg.test_service import ecg_instance

# --- a whole hub: ingest, measure, stable study ----------------------------------------------


@pytest.fixture
def hub(hub_factory: Callable[..., Hub], clock: FakeClock) -> Hub:
    # Not started: the test drives the ECG worker and the study-stable check itself.
    return hub_factory(start=False, dicom=False, clock=clock, study_stable_seconds=60)


@pytest.fixture
def hub_world(hub: Hub, clock: FakeClock) -> World:
    with transaction(hub.factory) as session:
        return build_world(session, clock)


def only_case(hub: Hub) -> Case:
    with transaction(hub.factory) as session:
        return session.scalars(select(Case)).one()


def history(hub: Hub, world: World, case_id: int) -> list[CaseEventKind]:
    with transaction(hub.factory) as session:
        return [e.kind for e in cases.case_history(session, world.actor("admin"), case_id)]


def become_stable(hub: Hub, clock: FakeClock) -> None:
    clock.advance(seconds=61)
    hub.archive.check_stable_studies()


def test_a_bradycardic_ecg_becomes_a_stat_case_with_its_reason(
    hub: Hub, hub_world: World, clock: FakeClock
) -> None:
    stored = hub.archive.ingest(
        ecg_instance(hr=35, seed=3), upload_origin(hub_world.ids["CLINIC_A"])
    )
    assert hub.ecg_worker.measure_named([stored.sop_instance_uid]) == 1  # no case yet: nothing
    become_stable(hub, clock)
    case = only_case(hub)
    assert case.service == CaseService.ECG
    assert case.priority == CasePriority.STAT  # the ECG default alone would be URGENT
    assert case.triage_reason is not None and "心动过缓" in case.triage_reason
    assert case.due_at - case.created_at == timedelta(minutes=10)  # STAT ECG, not 24 h or 2 h
    assert history(hub, hub_world, case.id) == [
        CaseEventKind.CREATED,
        CaseEventKind.TRIAGED,
        CaseEventKind.ROUTED,
    ]
    # The reader's queue shows why.
    with transaction(hub.factory) as session:
        page = cases.worklist(
            session, hub_world.actor("ecg1"), cases.CaseFilter(), limit=10, offset=0
        )
        out = [_case_out(row, hub.cases) for row in page.rows]
    assert [(o.id, o.priority) for o in out] == [(case.id, CasePriority.STAT)]
    assert out[0].triage_reason == case.triage_reason


def test_measurements_after_the_case_raise_it_once(
    hub: Hub, hub_world: World, clock: FakeClock
) -> None:
    stored = hub.archive.ingest(
        ecg_instance(hr=35, seed=4), upload_origin(hub_world.ids["CLINIC_A"])
    )
    become_stable(hub, clock)  # the worker has not measured it yet
    before = only_case(hub)
    assert (before.priority, before.triage_reason) == (CasePriority.URGENT, None)
    clock.advance(minutes=5)
    hub.ecg_worker.measure_named([stored.sop_instance_uid])  # publishes ecg.measured
    after = only_case(hub)
    assert after.priority == CasePriority.STAT and "心动过缓" in (after.triage_reason or "")
    assert after.due_at == clock.now() + timedelta(minutes=10) < before.due_at
    assert after.status == CaseStatus.QUEUED and after.group_id == hub_world.groups["COUNTY_ECG"]
    # Measured again (recompute): nothing more happens.
    ecg.compute(hub.archive, hub.factory, stored.sop_instance_uid, clock=clock, events=hub.events)
    assert history(hub, hub_world, after.id).count(CaseEventKind.TRIAGED) == 1
    assert only_case(hub).due_at == after.due_at


def test_a_normal_ecg_leaves_the_priority_alone(
    hub: Hub, hub_world: World, clock: FakeClock
) -> None:
    stored = hub.archive.ingest(
        ecg_instance(hr=72, seed=5), upload_origin(hub_world.ids["CLINIC_A"])
    )
    hub.ecg_worker.measure_named([stored.sop_instance_uid])
    become_stable(hub, clock)
    hub.ecg_worker.measure_named([stored.sop_instance_uid])
    case = only_case(hub)
    assert (case.priority, case.triage_reason) == (CasePriority.URGENT, None)
    assert case.due_at - case.created_at == timedelta(hours=2)
    assert CaseEventKind.TRIAGED not in history(hub, hub_world, case.id)


# --- the service on its own: requests and amendments -----------------------------------------


@pytest.fixture
def world(factory: sessionmaker[Session], clock: FakeClock) -> Iterator[World]:
    session = factory()
    try:
        yield build_world(session, clock)
    finally:
        session.close()


def add_measurements(world: World, study_pk: int, **values: float) -> None:
    """Automatic measurements for the study's one instance, as the ECG worker keeps them."""
    instance_pk = world.session.scalar(
        select(Instance.id).join(Series).where(Series.study_pk == study_pk)
    )
    assert instance_pk is not None
    world.session.add(
        EcgMeasurement(
            instance_pk=instance_pk,
            sha256="0" * 64,
            status=MeasurementStatus.COMPUTED,
            automatic=dict(values),
            computed_at=world.clock.now(),
        )
    )
    world.session.flush()


def ecg_study(world: World, **measured: float) -> Study:
    """An ECG study; with `measured`, its instance has those automatic measurements."""
    study = world.study(modality="ECG", sop_class=TWELVE_LEAD_ECG)
    if measured:
        add_measurements(world, study.id, **measured)
    return study


def test_chest_pain_on_a_routine_request_for_an_ecg_makes_it_stat(world: World) -> None:
    case = world.request(ecg_study(world), clinical_history="胸痛2小时", question="ST?")
    assert case.priority == CasePriority.STAT and case.service == CaseService.IMAGING
    assert "胸痛" in (case.triage_reason or "")
    assert case.due_at - case.created_at == timedelta(minutes=30)  # STAT, any service
    # The same words on a CT: ECG triage does not apply.
    ct = world.request(world.study(), clinical_history="胸痛2小时")
    assert (ct.priority, ct.triage_reason) == (CasePriority.ROUTINE, None)


def test_an_amendment_naming_chest_pain_raises_and_reroutes(world: World) -> None:
    case = world.request(ecg_study(world), service=CaseService.ECG)
    assert case.priority == CasePriority.ROUTINE
    world.clock.advance(hours=1)
    changed = cases.update_case(
        world.session,
        world.actor("tech_a"),
        case.id,
        cases.CaseChanges(question="急性胸痛"),
        world.ctx,
    )
    assert changed.priority == CasePriority.STAT
    assert changed.due_at == world.clock.now() + timedelta(minutes=10)
    history = [e.kind for e in cases.case_history(world.session, world.actor("admin"), case.id)]
    assert history[-3:] == [CaseEventKind.UPDATED, CaseEventKind.TRIAGED, CaseEventKind.ROUTED]


def test_triage_never_lowers_and_keeps_an_earlier_due_time(world: World) -> None:
    # Long QTc is URGENT: a STAT request stays STAT, with no triage reason.
    stat = world.request(ecg_study(world, qtc_bazett_ms=520.0), priority=CasePriority.STAT)
    assert (stat.priority, stat.triage_reason) == (CasePriority.STAT, None)
    # A routine request raised to URGENT; the clinic cannot lower it below what triage says.
    case = world.request(ecg_study(world, qtc_bazett_ms=520.0), service=CaseService.ECG)
    assert case.priority == CasePriority.URGENT and "QTc" in (case.triage_reason or "")
    cases.update_case(
        world.session,
        world.actor("tech_a"),
        case.id,
        cases.CaseChanges(priority=CasePriority.ROUTINE),
        world.ctx,
    )
    assert case.priority == CasePriority.URGENT
    # Near its routine deadline, a raise keeps the earlier due time.
    late = world.request(ecg_study(world), service=CaseService.ECG)
    due = late.due_at
    world.clock.advance(hours=23, minutes=30)
    add_measurements(world, late.study_pk, qtc_bazett_ms=530.0)
    assert cases.apply_triage(world.session, world.ctx, late, None)
    assert late.priority == CasePriority.URGENT and late.due_at == due
    assert late.due_at.astimezone(UTC) < world.clock.now() + timedelta(hours=2)
    assert not cases.apply_triage(world.session, world.ctx, late, None)  # idempotent
