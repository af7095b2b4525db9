"""Cases inside a whole hub: a real instance ingested becomes a case once its study is
stable; the hub's escalation check; the routing file loaded on start and by the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from telehealth.cases import service as cases
from telehealth.cases.models import (
    Case,
    CaseEventKind,
    CaseOrigin,
    CasePriority,
    CaseService,
    CaseStatus,
    DeadlinePolicy,
    RoutingRule,
)
from telehealth.clock import FakeClock
from telehealth.db import create_db_engine, make_session_factory, migrate, transaction
from telehealth.hub import Hub
from telehealth.storage import S3Endpoint
from tests.cases import World, build_world
from tests.cases.test_routing import ROUTING_YAML
from tests.conftest import DEV_DATA, sample_copy, upload_origin
from tests.test_cli import TELEHEALTH, Cli

ECG = DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm"
CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"


@pytest.fixture
def hub(hub_factory: Callable[..., Hub], clock: FakeClock) -> Hub:
    # Not started: the test drives the study-stable and escalation checks itself.
    return hub_factory(start=False, dicom=False, clock=clock, study_stable_seconds=60)


@pytest.fixture
def world(hub: Hub, clock: FakeClock) -> World:
    with transaction(hub.factory) as session:
        return build_world(session, clock)


def new_instance(path: Path) -> bytes:
    return sample_copy(path, StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())


def only_case(hub: Hub) -> Case:
    with transaction(hub.factory) as session:
        return session.scalars(select(Case)).one()


def test_a_stable_ecg_without_a_request_becomes_an_urgent_ecg_case(
    hub: Hub, world: World, clock: FakeClock
) -> None:
    result = hub.archive.ingest(new_instance(ECG), upload_origin(world.ids["CLINIC_A"]))
    clock.advance(seconds=59)
    hub.archive.check_stable_studies()
    with transaction(hub.factory) as session:
        assert session.scalar(select(func.count()).select_from(Case)) == 0
    clock.advance(seconds=2)
    assert [s.study_instance_uid for s in hub.archive.check_stable_studies()] == [
        result.study_instance_uid
    ]
    case = only_case(hub)
    assert (case.origin, case.priority, case.service) == (
        CaseOrigin.AUTO,
        CasePriority.URGENT,
        CaseService.ECG,
    )
    assert case.status == CaseStatus.QUEUED and case.group_id == world.groups["COUNTY_ECG"]
    with transaction(hub.factory) as session:
        history = cases.case_history(session, world.actor("admin"), case.id)
    assert [(e.kind, e.actor) for e in history] == [
        (CaseEventKind.CREATED, "system"),
        (CaseEventKind.ROUTED, "system"),
    ]
    # The hub's escalation check: past the urgent deadline (2 h) with nobody reading.
    clock.advance(hours=2)
    steps = hub.escalator.run_once()
    assert [s.kind for s in steps] == [CaseEventKind.WARNED, CaseEventKind.ESCALATED]
    assert only_case(hub).group_id == world.groups["CITY_IMG"]
    assert hub.escalator.run_once() == []


def test_a_study_requested_before_it_is_stable_keeps_its_one_case(
    hub: Hub, world: World, clock: FakeClock
) -> None:
    result = hub.archive.ingest(new_instance(CT), upload_origin(world.ids["CLINIC_A"]))
    with transaction(hub.factory) as session:
        request = cases.ReadingRequest(
            study_instance_uid=result.study_instance_uid, priority=CasePriority.STAT
        )
        cases.request_reading(session, world.actor("tech_a"), request, hub.cases)
    clock.advance(minutes=2)
    hub.archive.check_stable_studies()
    case = only_case(hub)
    assert (case.origin, case.priority, case.service) == (
        CaseOrigin.REQUEST,
        CasePriority.STAT,
        CaseService.IMAGING,
    )


def test_a_stable_ct_becomes_a_routine_imaging_case(
    hub: Hub, world: World, clock: FakeClock
) -> None:
    hub.archive.ingest(new_instance(CT), upload_origin(world.ids["CLINIC_B"]))
    clock.advance(minutes=2)
    hub.archive.check_stable_studies()
    case = only_case(hub)
    assert (case.priority, case.service, case.group_id) == (
        CasePriority.ROUTINE,
        CaseService.IMAGING,
        world.groups["COUNTY_IMG"],
    )
    assert (case.due_at - case.created_at).total_seconds() == 24 * 3600


def test_a_new_hub_seeds_the_default_deadlines(hub: Hub) -> None:
    with transaction(hub.factory) as session:
        assert session.scalar(select(func.count()).select_from(DeadlinePolicy)) == 4


def test_routing_load_command(cli: Cli, clock: FakeClock, tmp_path: Path) -> None:
    engine = create_db_engine(cli.database_url)
    migrate(engine)
    with transaction(make_session_factory(engine)) as session:
        build_world(session, clock, groups=False)
    path = tmp_path / "routing.yaml"
    path.write_text(ROUTING_YAML, encoding="utf-8")
    result = cli("routing", "load", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 groups, 2 rules, deadlines 4" in result.stdout
    shown = cli("routing", "show")
    assert shown.returncode == 0, shown.stderr
    assert "nights" in shown.stdout and "22:00-08:00" in shown.stdout
    with transaction(make_session_factory(engine)) as session:
        assert session.scalar(select(func.count()).select_from(RoutingRule)) == 2
    path.write_text(ROUTING_YAML.replace("[ecg2]", "[ecg2, nobody]"), encoding="utf-8")
    result = cli("routing", "load", str(path))
    assert result.returncode == 1 and "no user nobody" in result.stderr
    assert "Traceback" not in result.stderr
    engine.dispose()


@pytest.fixture
def cli(tmp_path: Path, s3: S3Endpoint, bucket: str) -> Cli:
    if not TELEHEALTH.exists():
        pytest.skip(f"{TELEHEALTH} is not installed (pip install -e .)")
    return Cli(tmp_path, s3, bucket)
