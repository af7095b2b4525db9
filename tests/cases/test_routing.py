"""Routing rules (each condition, order, fallback up the tree), the routing file, deadlines."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.auth.models import User
from telehealth.cases import service as cases
from telehealth.cases.models import (
    CasePriority,
    CaseService,
    CaseStatus,
    DeadlinePolicy,
    Notification,
    NotificationKind,
    ReadingGroup,
    RoutingRule,
)
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.institutions.models import Institution
from tests.cases import TWELVE_LEAD_ECG, World, build_world


@pytest.fixture
def world(session: Session, clock: FakeClock) -> World:
    return build_world(session, clock)


def routed(
    world: World,
    study_kwargs: dict[str, Any] | None = None,
    *,
    service: CaseService = CaseService.IMAGING,
    priority: CasePriority = CasePriority.ROUTINE,
) -> str | None:
    """The code of the group a new study (CLINIC_A CT unless told) would be routed to."""
    study = world.study(**(study_kwargs or {}))
    facts = cases.study_facts(
        world.session,
        study.id,
        service=service,
        priority=priority,
        now=world.clock.now(),
        timezone=cases.CaseConfig().timezone,
    )
    routing = cases.route(world.session, facts)
    if routing.group_id is None:
        return None
    group = world.session.get(ReadingGroup, routing.group_id)
    assert group is not None
    return group.code


# --- conditions --------------------------------------------------------------------------------


def test_modality_condition(world: World) -> None:
    world.rule("CITY_IMG", modalities=["MR"])
    assert routed(world, {"modality": "MR"}) == "CITY_IMG"
    # No rule matches a CT: nearest able imaging group from the clinic up.
    assert routed(world, {"modality": "CT"}) == "COUNTY_IMG"


def test_sop_class_condition_and_waveforms_count_as_ecg(world: World) -> None:
    world.rule("COUNTY_ECG", sop_classes=[TWELVE_LEAD_ECG])
    ecg = {"modality": "OT", "sop_class": TWELVE_LEAD_ECG}
    assert routed(world, ecg, service=CaseService.ECG) == "COUNTY_ECG"
    assert routed(world, {"modality": "OT"}) == "COUNTY_IMG"
    # A cart that labels its 12-lead "OT" still matches a rule on modality ECG.
    world.session.execute(delete(RoutingRule))
    world.rule("CITY_IMG", modalities=["ecg"])
    assert routed(world, ecg) == "CITY_IMG"
    # So does every ECG class the ECG reader measures (here General 32-bit ECG).
    assert routed(world, {"modality": "OT", "sop_class": "1.2.840.10008.5.1.4.1.1.9.1.4"}) == (
        "CITY_IMG"
    )


def test_body_part_condition(world: World) -> None:
    world.rule("CITY_IMG", body_parts=["head"])
    assert routed(world, {"body_part": "HEAD"}) == "CITY_IMG"
    assert routed(world, {"body_part": "CHEST"}) == "COUNTY_IMG"


def test_service_condition(world: World) -> None:
    world.rule("CITY_IMG", services=[CaseService.ULTRASOUND])
    assert routed(world, {"modality": "US"}, service=CaseService.ULTRASOUND) == "CITY_IMG"
    assert routed(world, {"modality": "US"}, service=CaseService.IMAGING) == "COUNTY_IMG"


def test_priority_condition(world: World) -> None:
    world.rule("CITY_IMG", priorities=[CasePriority.STAT])
    assert routed(world, priority=CasePriority.STAT) == "CITY_IMG"
    assert routed(world, priority=CasePriority.URGENT) == "COUNTY_IMG"


def test_sending_institution_subtree_condition(world: World) -> None:
    world.rule("CITY_IMG", institution="CLINIC_B")
    assert routed(world, {"code": "CLINIC_B"}) == "CITY_IMG"
    assert routed(world, {"code": "CLINIC_A"}) == "COUNTY_IMG"
    # A rule on the county covers every clinic below it.
    world.session.execute(delete(RoutingRule))
    world.rule("CITY_IMG", institution="COUNTY")
    assert routed(world, {"code": "CLINIC_A"}) == "CITY_IMG"


def test_time_of_day_window(world: World) -> None:
    # The clock starts at 08:00 UTC: 16:00 in Shanghai.
    world.rule("CITY_IMG", time="08:00-18:00")
    assert routed(world) == "CITY_IMG"
    world.clock.advance(hours=2)  # 18:00 local: the window's end is not in it
    assert routed(world) == "COUNTY_IMG"


def test_time_window_wrapping_midnight(world: World) -> None:
    world.rule("CITY_IMG", name="night", time="22:00-08:00")
    assert routed(world) == "COUNTY_IMG"  # 16:00
    world.clock.advance(hours=6)  # 22:00
    assert routed(world) == "CITY_IMG"
    world.clock.advance(hours=9, minutes=59)  # 07:59 next day
    assert routed(world) == "CITY_IMG"
    world.clock.advance(minutes=1)  # 08:00
    assert routed(world) == "COUNTY_IMG"


def test_every_condition_of_a_rule_must_hold(world: World) -> None:
    world.rule("CITY_IMG", modalities=["CT"], body_parts=["HEAD"], priorities=["stat"])
    assert routed(world, {"body_part": "HEAD"}, priority=CasePriority.STAT) == "CITY_IMG"
    assert routed(world, {"body_part": "HEAD"}) == "COUNTY_IMG"
    assert routed(world, {"body_part": "CHEST"}, priority=CasePriority.STAT) == "COUNTY_IMG"


# --- order and fallback ------------------------------------------------------------------------


def test_first_matching_rule_in_position_order_wins(world: World) -> None:
    world.rule("COUNTY_IMG", name="later", position=20, modalities=["CT"])
    world.rule("CITY_IMG", name="earlier", position=10, modalities=["CT"])
    assert routed(world) == "CITY_IMG"
    rules = cases.list_rules(world.session, world.actor("admin"))
    assert [v.rule.name for v in rules] == ["earlier", "later"]


def test_disabled_rule_is_skipped(world: World) -> None:
    rule_id = world.rule("CITY_IMG", modalities=["CT"])
    rule = world.session.get(RoutingRule, rule_id)
    assert rule is not None
    rule.enabled = False
    assert routed(world) == "COUNTY_IMG"


def test_group_without_an_active_reader_sends_the_case_up_the_tree(world: World) -> None:
    world.rule("COUNTY_IMG", modalities=["CT"])
    world.users["img1"].active = False
    study = world.study()
    case = world.request(study)
    assert case.group_id == world.groups["CITY_IMG"]
    history = cases.case_history(world.session, world.actor("admin"), case.id)
    trail = history[-1].detail["trail"]
    assert "no able reader" in trail[0] and "CITY_IMG" in trail[1]


def test_disabled_group_sends_the_case_up_and_a_higher_level_comes_first(world: World) -> None:
    world.group("COUNTY_SENIOR", "COUNTY", ["img1"], level=1)
    world.rule("COUNTY_IMG", modalities=["CT"])
    group = world.session.get(ReadingGroup, world.groups["COUNTY_IMG"])
    assert group is not None
    group.enabled = False
    assert routed(world) == "COUNTY_SENIOR"


def test_fallback_up_the_tree_respects_the_groups_services(world: World) -> None:
    # No rules: an ECG from a clinic goes to the county's ECG group, a CT to its imaging group.
    ecg = {"modality": "ECG", "sop_class": TWELVE_LEAD_ECG}
    assert routed(world, ecg, service=CaseService.ECG) == "COUNTY_ECG"
    assert routed(world) == "COUNTY_IMG"
    # The county's ECG readers all gone: the city's group (it serves everything) takes it.
    world.users["ecg1"].active = False
    world.users["ecg2"].active = False
    assert routed(world, {"modality": "ECG"}, service=CaseService.ECG) == "CITY_IMG"


def test_a_case_nobody_can_take_lands_in_the_admins_fallback_queue(world: World) -> None:
    for group in world.session.scalars(select(ReadingGroup)):
        group.enabled = False
    case = world.request(world.study())
    assert case.group_id is None and case.status == CaseStatus.NEW
    notes = world.session.scalars(
        select(Notification).where(Notification.kind == NotificationKind.UNROUTED)
    ).all()
    assert [n.user_id for n in notes] == [world.users["admin"].id]
    page = cases.worklist(
        world.session, world.actor("admin"), cases.CaseFilter(unrouted=True), limit=10, offset=0
    )
    assert [r.case.id for r in page.rows] == [case.id]


def test_a_cycle_in_the_tree_does_not_loop(world: World) -> None:
    city = world.session.get(Institution, world.ids["CITY"])
    assert city is not None
    city.parent_id = world.ids["CLINIC_A"]  # CLINIC_A → COUNTY → CITY → CLINIC_A
    for group in world.session.scalars(select(ReadingGroup)):
        group.enabled = False
    assert routed(world) is None


# --- the routing file --------------------------------------------------------------------------

ROUTING_YAML = """
deadlines:
  - {priority: stat, service: ecg, minutes: 5}
  - {priority: stat, minutes: 20, warn_fraction: 0.5}
  - {priority: urgent, minutes: 90}
  - {priority: routine, minutes: 600}
groups:
  - code: COUNTY_ECG
    name: 县人民医院心电诊断组
    institution: COUNTY
    services: [ecg]
    lead: ecg2
    members: [ecg2]
  - code: CITY_NIGHT
    name: 市医院夜班
    institution: CITY
    members: [city1]
rules:
  - name: ECGs
    group: COUNTY_ECG
    when: {modalities: [ECG]}
  - name: nights
    group: CITY_NIGHT
    when: {time: "22:00-08:00"}
"""


def test_routing_file_loads_groups_rules_and_deadlines(world: World) -> None:
    report = cases.load_routing(
        world.session, world.actor("admin"), cases.parse_routing_file(ROUTING_YAML), world.ctx
    )
    assert (report.groups, report.rules, report.deadlines) == (2, 2, 4)
    groups = {v.group.code: v for v in cases.list_groups(world.session, world.actor("admin"))}
    assert groups["COUNTY_ECG"].members == ["ecg2"] and groups["COUNTY_ECG"].lead == "ecg2"
    assert groups["COUNTY_ECG"].group.name == "县人民医院心电诊断组"
    assert "COUNTY_IMG" in groups  # groups not in the file stay
    rules = cases.list_rules(world.session, world.actor("admin"))
    assert [(v.rule.name, v.group, v.rule.position) for v in rules] == [
        ("ECGs", "COUNTY_ECG", 10),
        ("nights", "CITY_NIGHT", 20),
    ]
    assert cases.deadline_for(world.session, CasePriority.STAT, CaseService.ECG).minutes == 5
    assert cases.deadline_for(world.session, CasePriority.STAT, CaseService.IMAGING) == (
        cases.Deadline(20, 0.5)
    )
    world.clock.advance(hours=7)  # 23:00 local
    assert routed(world) == "CITY_NIGHT"
    # Loading again replaces the rules instead of adding to them.
    cases.load_routing(world.session, None, cases.parse_routing_file(ROUTING_YAML), world.ctx)
    assert world.session.scalar(select(func.count()).select_from(RoutingRule)) == 2


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("members: [ecg2]", "no user nobody"),
        ("institution: CITY", "no institution NOWHERE"),
        ('when: {time: "22:00-08:00"}', "rules.1.when.time"),
        ("minutes: 600", "deadlines.3.minutes"),
    ],
)
def test_a_wrong_routing_file_changes_nothing(world: World, broken: str, message: str) -> None:
    replacement = {
        "members: [ecg2]": "members: [ecg2, nobody]",
        "institution: CITY": "institution: NOWHERE",
        'when: {time: "22:00-08:00"}': 'when: {time: "25:00-08:00"}',
        "minutes: 600": "minutes: -1",
    }[broken]
    world.rule("CITY_IMG", name="kept", modalities=["CT"])
    with pytest.raises(cases.InvalidRouting, match=message):
        text = ROUTING_YAML.replace(broken, replacement)
        cases.load_routing(world.session, None, cases.parse_routing_file(text), world.ctx)
    assert [v.rule.name for v in cases.list_rules(world.session, world.actor("admin"))] == ["kept"]
    assert world.session.scalar(select(func.count()).select_from(DeadlinePolicy)) == 0


def test_default_routing_file_seeds_empty_tables_once(
    factory: sessionmaker[Session], clock: FakeClock
) -> None:
    ctx = cases.CaseContext(clock=clock)
    report = cases.seed_on_first_start(factory, ctx)
    assert report is not None and report.deadlines == 4 and report.rules == 0
    with transaction(factory) as session:
        deadline = cases.deadline_for(session, CasePriority.STAT, CaseService.ECG)
    assert deadline.minutes == 10
    assert cases.seed_on_first_start(factory, ctx) is None  # not empty any more


def test_a_seed_file_naming_unknown_institutions_is_skipped_not_fatal(
    factory: sessionmaker[Session], clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(ROUTING_YAML, encoding="utf-8")  # COUNTY and its users do not exist here
    assert cases.seed_on_first_start(factory, cases.CaseContext(clock=clock), path) is None
    with transaction(factory) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0
        assert session.scalar(select(func.count()).select_from(DeadlinePolicy)) == 0


# --- deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "service", "minutes"),
    [
        (CasePriority.STAT, CaseService.ECG, 10),
        (CasePriority.STAT, CaseService.IMAGING, 30),
        (CasePriority.URGENT, CaseService.ECG, 120),
        (CasePriority.ROUTINE, CaseService.ULTRASOUND, 24 * 60),
    ],
)
def test_default_deadlines(
    session: Session, priority: CasePriority, service: CaseService, minutes: int
) -> None:
    assert cases.deadline_for(session, priority, service).minutes == minutes


def test_deadline_policy_for_the_service_beats_the_priority_default(world: World) -> None:
    cases.replace_deadlines(
        world.session,
        world.actor("admin"),
        [
            cases.DeadlineSpec(priority=CasePriority.URGENT, minutes=60),
            cases.DeadlineSpec(priority=CasePriority.URGENT, service=CaseService.ECG, minutes=15),
        ],
    )
    assert cases.deadline_for(world.session, CasePriority.URGENT, CaseService.ECG).minutes == 15
    assert cases.deadline_for(world.session, CasePriority.URGENT, CaseService.OTHER).minutes == 60
    # No policy for routine in the table: the built-in default.
    assert cases.deadline_for(world.session, CasePriority.ROUTINE, CaseService.ECG).minutes == 1440
    case = world.request(world.study(), priority=CasePriority.URGENT)
    assert case.due_at == world.clock.now() + timedelta(minutes=60)
