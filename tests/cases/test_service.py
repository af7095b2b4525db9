"""Requests, the queue, claims and leases, escalation and scope: the service on a real
database (SQLite and PostgreSQL), time moved by a FakeClock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Study
from telehealth.archive.service import StudyNotFound, visible_study
from telehealth.auth import service as auth
from telehealth.auth.models import AuditEvent, AuditOutcome, Role
from telehealth.cases import service as cases
from telehealth.cases.models import (
    PRIORITY_RANK,
    CaseEventKind,
    CaseOrigin,
    CasePriority,
    CaseService,
    CaseStatus,
    Notification,
    NotificationKind,
)
from telehealth.clock import FakeClock
from tests.cases import Recorder, World, add_user, build_world


@pytest.fixture
def world(factory: sessionmaker[Session], clock: FakeClock) -> Iterator[World]:
    """A world on a plain session: tests commit it to see what is published after commit."""
    session = factory()
    try:
        yield build_world(session, clock)
    finally:
        session.close()


def kinds(world: World, case_id: int) -> list[CaseEventKind]:
    return [e.kind for e in cases.case_history(world.session, world.actor("admin"), case_id)]


def queue(world: World, username: str, **filters: object) -> list[int]:
    page = cases.worklist(
        world.session,
        world.actor(username),
        cases.CaseFilter(**filters),  # type: ignore[arg-type]
        limit=100,
        offset=0,
    )
    return [r.case.id for r in page.rows]


# --- requests ----------------------------------------------------------------------------------


def test_request_creates_a_routed_case_with_its_due_time_and_history(world: World) -> None:
    recorder = Recorder(world.bus)
    study = world.study()
    case = world.request(
        study,
        clinical_history="咳嗽两周",
        question="肺炎?",
        priority=CasePriority.URGENT,
    )
    world.session.commit()  # messages go out after commit
    assert case.status == CaseStatus.QUEUED
    assert case.group_id == world.groups["COUNTY_IMG"]
    assert case.origin == CaseOrigin.REQUEST
    assert case.requested_by_id == world.users["tech_a"].id
    assert case.due_at == world.clock.now() + timedelta(hours=2)
    assert kinds(world, case.id) == [CaseEventKind.CREATED, CaseEventKind.ROUTED]
    assert recorder.types() == ["case.created"]
    assert recorder.messages[0]["group_id"] == world.groups["COUNTY_IMG"]
    assert "Zhang" not in str(recorder.messages[0])  # no patient data in live messages
    row = cases.read_case(world.session, world.actor("tech_a"), case.id)
    assert (row.case.clinical_history, row.case.question) == ("咳嗽两周", "肺炎?")


def test_a_clinic_requests_only_for_its_own_studies(world: World) -> None:
    study_b = world.study("CLINIC_B")
    with pytest.raises(cases.CaseStudyNotFound):
        world.request(study_b, "tech_a")
    denied = world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "case.request")
    ).all()
    assert [(a.actor, a.outcome) for a in denied] == [("tech_a", AuditOutcome.DENIED)]
    with pytest.raises(auth.NotPermitted):
        world.request(study_b, "img1")  # readers read; they do not ask


def test_a_second_request_on_a_study_is_refused_with_the_open_case(world: World) -> None:
    study = world.study()
    first = world.request(study)
    with pytest.raises(cases.CaseExists, match=f"open case {first.id}"):
        world.request(study, priority=CasePriority.STAT)


def test_a_request_fills_in_the_case_a_stable_study_made_by_itself(world: World) -> None:
    study = world.study(modality="ECG", sop_class="1.2.840.10008.5.1.4.1.1.9.1.1")
    auto = cases.open_case_for_stable_study(world.session, study.study_instance_uid, world.ctx)
    assert auto is not None
    assert (auto.priority, auto.service, auto.origin) == (
        CasePriority.URGENT,
        CaseService.ECG,
        CaseOrigin.AUTO,
    )
    assert auto.group_id == world.groups["COUNTY_ECG"]
    world.clock.advance(minutes=5)
    case = world.request(
        study, clinical_history="胸痛", priority=CasePriority.STAT, service=CaseService.ECG
    )
    assert case.id == auto.id
    assert case.origin == CaseOrigin.REQUEST and case.clinical_history == "胸痛"
    assert case.due_at == world.clock.now() + timedelta(minutes=10)  # STAT ECG, from the request
    assert kinds(world, case.id)[-2:] == [CaseEventKind.REQUESTED, CaseEventKind.ROUTED]
    # A study that had a case is never made a case again by itself (a report sent back).
    assert (
        cases.open_case_for_stable_study(world.session, study.study_instance_uid, world.ctx) is None
    )


def test_documents_alone_do_not_become_a_case(world: World) -> None:
    sr = world.study(modality="SR", sop_class="1.2.840.10008.5.1.4.1.1.88.11")
    assert cases.open_case_for_stable_study(world.session, sr.study_instance_uid, world.ctx) is None


def test_clinic_updates_and_cancels_its_request(world: World) -> None:
    case = world.request(world.study())
    world.clock.advance(minutes=10)
    cases.update_case(
        world.session,
        world.actor("tech_a"),
        case.id,
        cases.CaseChanges(priority=CasePriority.STAT, question="出血?"),
        world.ctx,
    )
    assert case.priority == CasePriority.STAT and case.priority_rank == 1
    assert case.due_at == world.clock.now() + timedelta(minutes=30)
    with pytest.raises(cases.CaseNotFound):
        cases.cancel_case(world.session, world.actor("tech_b"), case.id, "", world.ctx)
    cases.cancel_case(world.session, world.actor("tech_a"), case.id, "sent by mistake", world.ctx)
    assert case.status == CaseStatus.CANCELLED and case.closed_at == world.clock.now()
    with pytest.raises(cases.NotClaimable):
        cases.claim(world.session, world.actor("img1"), case.id, world.ctx)
    with pytest.raises(cases.CaseClosed):
        cases.update_case(
            world.session,
            world.actor("tech_a"),
            case.id,
            cases.CaseChanges(question="x"),
            world.ctx,
        )
    assert kinds(world, case.id)[-3:] == [
        CaseEventKind.UPDATED,
        CaseEventKind.ROUTED,  # a new priority is routed again (rules may look at it)
        CaseEventKind.CANCELLED,
    ]
    # Cancelled, the study may be asked for again.
    study = world.session.get(Study, case.study_pk)
    assert study is not None
    assert world.request(study).id != case.id


# --- the queue ---------------------------------------------------------------------------------


def test_worklist_orders_by_priority_then_due_time_with_filters_and_counts(world: World) -> None:
    routine = world.request(world.study(), priority=CasePriority.ROUTINE).id
    stat_1 = world.request(world.study(), priority=CasePriority.STAT).id
    world.clock.advance(minutes=1)
    urgent = world.request(world.study("CLINIC_B"), "tech_b", priority=CasePriority.URGENT).id
    stat_2 = world.request(world.study(modality="US"), priority=CasePriority.STAT).id
    assert queue(world, "img1") == [stat_1, stat_2, urgent, routine]
    assert queue(world, "img1", priority=CasePriority.STAT) == [stat_1, stat_2]
    assert queue(world, "img1", modality="US") == [stat_2]
    assert queue(world, "img1", institution_id=world.ids["CLINIC_B"]) == [urgent]
    page = cases.worklist(
        world.session,
        world.actor("img1"),
        cases.CaseFilter(priority=CasePriority.STAT),
        limit=1,
        offset=1,
    )
    assert page.total == 2 and [r.case.id for r in page.rows] == [stat_2]
    # Counts label the priority tabs: they ignore the priority filter itself.
    assert page.counts == {CasePriority.STAT: 2, CasePriority.URGENT: 1, CasePriority.ROUTINE: 1}
    cases.claim(world.session, world.actor("img1"), urgent, world.ctx)
    assert queue(world, "img1", statuses=(CaseStatus.CLAIMED,)) == [urgent]
    assert queue(world, "img1", statuses=(CaseStatus.QUEUED,)) == [stat_1, stat_2, routine]


def test_each_sees_only_his_cases(world: World) -> None:
    ct = world.request(world.study()).id
    ecg = world.request(world.study(modality="ECG"), service=CaseService.ECG).id
    b = world.request(world.study("CLINIC_B"), "tech_b").id
    assert queue(world, "img1") == [ct, b]
    assert queue(world, "ecg2") == [ecg]
    assert queue(world, "city1") == []
    assert sorted(queue(world, "admin")) == sorted([ct, ecg, b])

    def listed(username: str) -> list[int]:
        page = cases.list_cases(
            world.session, world.actor(username), cases.CaseFilter(), limit=50, offset=0
        )
        return sorted(r.case.id for r in page.rows)

    assert listed("tech_a") == sorted([ct, ecg])
    assert listed("tech_b") == [b]
    with pytest.raises(cases.CaseNotFound):
        cases.read_case(world.session, world.actor("tech_b"), ct)
    with pytest.raises(cases.CaseNotFound):
        cases.read_case(world.session, world.actor("ecg1"), ct)
    with pytest.raises(auth.NotPermitted):
        cases.worklist(world.session, world.actor("tech_a"), cases.CaseFilter(), limit=5, offset=0)
    refused = world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "case.read")
    ).all()
    assert {(a.actor, a.outcome) for a in refused} == {
        ("tech_b", AuditOutcome.DENIED),
        ("ecg1", AuditOutcome.DENIED),
    }


# --- claims ------------------------------------------------------------------------------------


def test_claim_renew_release_and_a_lapsed_lease(world: World) -> None:
    case = world.request(world.study())
    world.session.commit()
    recorder = Recorder(world.bus)
    img1, ecg2 = world.actor("img1"), world.actor("ecg2")
    # Make ecg2 a reader of the imaging group too, so he can see and race for the case.
    cases.save_group(
        world.session,
        None,
        cases.GroupSpec(
            code="COUNTY_IMG",
            name="COUNTY_IMG",
            institution="COUNTY",
            lead="img1",
            members=["img1", "ecg2"],
        ),
        world.ctx,
        group_id=world.groups["COUNTY_IMG"],
    )
    first = cases.claim(world.session, img1, case.id, world.ctx)
    assert (first.holder, first.lease_token) == ("img1", 1)
    assert first.lease_expires_at == world.clock.now() + timedelta(minutes=5)
    assert case.status == CaseStatus.CLAIMED
    with pytest.raises(cases.ClaimHeld) as held:
        cases.claim(world.session, ecg2, case.id, world.ctx)
    assert "img1" not in str(held.value)  # who holds it is not told
    world.clock.advance(minutes=4)
    renewed = cases.renew(world.session, img1, case.id, first.lease_token, world.ctx)
    assert renewed.lease_expires_at == world.clock.now() + timedelta(minutes=5)
    again = cases.claim(world.session, img1, case.id, world.ctx)  # claiming what one holds renews
    assert again.lease_token == 1
    world.clock.advance(minutes=5, seconds=1)  # the client vanished: nobody renewed
    with pytest.raises(cases.LeaseExpired):
        cases.renew(world.session, img1, case.id, first.lease_token, world.ctx)
    second = cases.claim(world.session, ecg2, case.id, world.ctx)
    assert (second.holder, second.lease_token) == ("ecg2", 2)
    # Fencing: the lapsed reader cannot complete under his old claim.
    with pytest.raises(cases.LeaseExpired):
        cases.complete(world.session, img1, case.id, final=True, lease_token=1, ctx=world.ctx)
    with pytest.raises(cases.LeaseExpired):
        cases.release(world.session, img1, case.id, None, world.ctx)
    cases.release(world.session, ecg2, case.id, second.lease_token, world.ctx)
    assert case.status == CaseStatus.QUEUED and case.claim_holder_id is None
    world.session.commit()
    history = cases.case_history(world.session, world.actor("admin"), case.id)
    assert [e.kind for e in history] == [
        CaseEventKind.CREATED,
        CaseEventKind.ROUTED,
        CaseEventKind.CLAIMED,
        CaseEventKind.CLAIMED,
        CaseEventKind.RELEASED,
    ]
    assert history[3].detail["lapsed_holder"] == "img1" and history[3].actor == "ecg2"
    assert recorder.types() == ["case.claimed", "case.claimed", "case.released"]


def test_a_reader_of_another_group_cannot_claim(world: World) -> None:
    case = world.request(world.study())
    with pytest.raises(cases.CaseNotFound):
        cases.claim(world.session, world.actor("ecg1"), case.id, world.ctx)
    with pytest.raises(auth.NotPermitted):
        cases.claim(world.session, world.actor("tech_a"), case.id, world.ctx)
    refused = world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "case.claim")
    ).all()
    assert [(a.actor, a.outcome) for a in refused] == [("ecg1", AuditOutcome.DENIED)]
    with pytest.raises(cases.CaseNotFound):
        cases.claim(world.session, world.actor("img1"), 999_999, world.ctx)


def test_lapsed_leases_are_swept_back_into_the_queue(world: World) -> None:
    case = world.request(world.study())
    cases.claim(world.session, world.actor("img1"), case.id, world.ctx)
    world.clock.advance(minutes=4)
    assert cases.expire_leases(world.session, world.ctx) == []
    world.clock.advance(minutes=1)
    assert cases.expire_leases(world.session, world.ctx) == [case.id]
    assert case.status == CaseStatus.QUEUED and case.claim_holder_id is None
    assert cases.expire_leases(world.session, world.ctx) == []
    assert kinds(world, case.id)[-1] == CaseEventKind.LEASE_EXPIRED


def test_claim_next_takes_the_most_urgent_free_case(world: World) -> None:
    routine = world.request(world.study()).id
    stat = world.request(world.study(), priority=CasePriority.STAT).id
    img1 = world.actor("img1")
    got = cases.claim_next(world.session, img1, world.ctx)
    assert got is not None and got.case_id == stat
    got = cases.claim_next(world.session, img1, world.ctx)
    assert got is not None and got.case_id == routine
    assert cases.claim_next(world.session, img1, world.ctx) is None
    assert cases.claim_next(world.session, world.actor("ecg1"), world.ctx) is None


def test_claim_next_binds_each_readers_own_queue(world: World) -> None:
    # The queue statement is built once for all readers: each call must bind its reader.
    ct = world.request(world.study()).id
    ecg = world.request(world.study(modality="ECG"), service=CaseService.ECG).id
    first = cases.claim_next(world.session, world.actor("ecg1"), world.ctx)
    assert first is not None and (first.case_id, first.holder) == (ecg, "ecg1")
    assert cases.claim_next(world.session, world.actor("ecg2"), world.ctx) is None
    second = cases.claim_next(world.session, world.actor("img1"), world.ctx)
    assert second is not None and (second.case_id, second.holder) == (ct, "img1")
    assert cases.claim_next(world.session, world.actor("city1"), world.ctx) is None


def test_a_claimed_case_already_in_the_session_shows_the_claim(world: World) -> None:
    # claim_next writes with a plain statement; the Case this session loaded must not keep
    # the queued state it had before.
    case = world.request(world.study())
    assert case.status == CaseStatus.QUEUED
    got = cases.claim_next(world.session, world.actor("img1"), world.ctx)
    assert got is not None and got.case_id == case.id
    assert case.status == CaseStatus.CLAIMED
    assert (case.claim_holder_id, case.lease_token) == (world.users["img1"].id, 1)
    assert case.lease_expires_at == got.lease_expires_at
    history = cases.case_history(world.session, world.actor("admin"), case.id)
    assert history[-1].kind == CaseEventKind.CLAIMED
    assert history[-1].detail == {
        "lease_token": 1,
        "lease_expires_at": got.lease_expires_at.isoformat(),
    }


def test_claim_next_sees_what_the_session_left_unflushed(world: World) -> None:
    world.request(world.study())
    later = world.request(world.study())
    world.session.flush()
    later.priority, later.priority_rank = CasePriority.STAT, PRIORITY_RANK[CasePriority.STAT]
    got = cases.claim_next(world.session, world.actor("img1"), world.ctx)
    assert got is not None and got.case_id == later.id
    assert later.priority == CasePriority.STAT and later.status == CaseStatus.CLAIMED


def test_renew_and_release_out_of_scope_are_not_found_and_audited(world: World) -> None:
    case = world.request(world.study())
    claim = cases.claim(world.session, world.actor("img1"), case.id, world.ctx)
    ecg1 = world.actor("ecg1")  # a reader of another group: the case is not his to see
    with pytest.raises(cases.CaseNotFound):
        cases.renew(world.session, ecg1, case.id, claim.lease_token, world.ctx)
    with pytest.raises(cases.CaseNotFound):
        cases.release(world.session, ecg1, case.id, claim.lease_token, world.ctx)
    with pytest.raises(cases.CaseNotFound):
        cases.release(world.session, world.actor("img1"), 999_999, None, world.ctx)
    refused = world.session.scalars(
        select(AuditEvent).where(AuditEvent.action.in_(["case.renew", "case.release"]))
    ).all()
    assert [(a.actor, a.action, a.outcome) for a in refused] == [
        ("ecg1", "case.renew", AuditOutcome.DENIED),
        ("ecg1", "case.release", AuditOutcome.DENIED),
        ("img1", "case.release", AuditOutcome.FAILED),
    ]
    # The holder under a stale token: his case, not his lease.
    with pytest.raises(cases.LeaseExpired):
        cases.renew(world.session, world.actor("img1"), case.id, claim.lease_token + 1, world.ctx)
    with pytest.raises(cases.LeaseExpired):
        cases.release(world.session, world.actor("img1"), case.id, claim.lease_token + 1, world.ctx)
    assert case.claim_holder_id == world.users["img1"].id
    released = cases.release(
        world.session, world.actor("img1"), case.id, claim.lease_token, world.ctx
    )
    assert released is case and case.status == CaseStatus.QUEUED
    assert case.claim_holder_id is None and case.lease_expires_at is None


def test_preliminary_then_signed(world: World) -> None:
    case = world.request(world.study())
    img1 = world.actor("img1")
    claim = cases.claim(world.session, img1, case.id, world.ctx)
    cases.complete(
        world.session, img1, case.id, final=False, lease_token=claim.lease_token, ctx=world.ctx
    )
    assert case.status == CaseStatus.REPORTED and case.claim_holder_id == img1.user_id
    assert case.next_escalation_at is None  # a preliminary report answers the deadline
    cases.complete(
        world.session, img1, case.id, final=True, lease_token=claim.lease_token, ctx=world.ctx
    )
    assert case.status == CaseStatus.SIGNED and case.closed_at is not None
    assert case.claim_holder_id is None
    assert kinds(world, case.id)[-2:] == [CaseEventKind.COMPLETED, CaseEventKind.COMPLETED]


def test_admin_assigns_a_case_to_a_reader_of_another_group(world: World) -> None:
    case = world.request(world.study())
    img1 = world.actor("img1")
    claim = cases.claim(world.session, img1, case.id, world.ctx)
    with pytest.raises(cases.InvalidRouting, match="not a member"):
        cases.assign(
            world.session, world.actor("admin"), case.id, group_id=None, user="city1", ctx=world.ctx
        )
    with pytest.raises(auth.NotPermitted):
        cases.assign(world.session, img1, case.id, group_id=None, user="img1", ctx=world.ctx)
    cases.assign(
        world.session,
        world.actor("admin"),
        case.id,
        group_id=world.groups["CITY_IMG"],
        user="city1",
        ctx=world.ctx,
    )
    assert case.claim_holder_id == world.users["city1"].id
    assert case.lease_token == claim.lease_token + 1
    assert case.lease_expires_at == world.clock.now() + timedelta(minutes=30)
    with pytest.raises(cases.CaseNotFound):  # no longer his group's, no longer his
        cases.renew(world.session, img1, case.id, claim.lease_token, world.ctx)
    note = world.session.scalars(
        select(Notification).where(Notification.user_id == world.users["city1"].id)
    ).one()
    assert note.kind == NotificationKind.ASSIGNED
    event = cases.case_history(world.session, world.actor("admin"), case.id)[-1]
    assert event.kind == CaseEventKind.ASSIGNED
    assert event.detail == {
        "group": "CITY_IMG",
        "user": "city1",
        "lease_token": 2,
        "previous_holder": "img1",
    }


# --- deadlines and escalation -----------------------------------------------------------------


def test_escalation_warns_the_lead_then_offers_the_case_up_once_each(world: World) -> None:
    recorder = Recorder(world.bus)
    case = world.request(world.study(), priority=CasePriority.STAT)  # 30 min, warned at 75 %
    world.session.commit()
    world.clock.advance(minutes=22)
    assert cases.check_escalations(world.session, world.ctx) == []
    world.clock.advance(minutes=1)
    steps = cases.check_escalations(world.session, world.ctx)
    assert [(s.kind, s.group_id) for s in steps] == [
        (CaseEventKind.WARNED, world.groups["COUNTY_IMG"])
    ]
    assert cases.check_escalations(world.session, world.ctx) == []  # idempotent
    world.clock.advance(minutes=7)  # due
    steps = cases.check_escalations(world.session, world.ctx)
    assert [(s.kind, s.group_id) for s in steps] == [
        (CaseEventKind.ESCALATED, world.groups["CITY_IMG"])
    ]
    assert cases.check_escalations(world.session, world.ctx) == []
    assert case.group_id == world.groups["CITY_IMG"] and case.escalation_level == 1
    assert queue(world, "city1") == [case.id]
    assert queue(world, "img1") == []
    world.clock.advance(minutes=30)  # nobody at the city took it either; nobody above
    steps = cases.check_escalations(world.session, world.ctx)
    assert [s.kind for s in steps] == [CaseEventKind.ESCALATION_EXHAUSTED]
    world.clock.advance(hours=5)
    assert cases.check_escalations(world.session, world.ctx) == []
    world.session.commit()
    assert kinds(world, case.id) == [
        CaseEventKind.CREATED,
        CaseEventKind.ROUTED,
        CaseEventKind.WARNED,
        CaseEventKind.ESCALATED,
        CaseEventKind.ESCALATION_EXHAUSTED,
    ]
    notes = world.session.scalars(select(Notification).order_by(Notification.id)).all()
    assert [(n.user_id, n.kind) for n in notes] == [
        (world.users["img1"].id, NotificationKind.DEADLINE_WARNING),
        (world.users["city1"].id, NotificationKind.ESCALATED),
        (world.users["city1"].id, NotificationKind.OVERDUE),
    ]
    assert [t for t in recorder.types() if t != "notification"] == [
        "case.created",
        "case.warning",
        "case.escalated",
        "case.overdue",
    ]
    escalated = next(m for m in recorder.messages if m["type"] == "case.escalated")
    assert escalated["previous_group_id"] == world.groups["COUNTY_IMG"]


def test_a_case_being_read_is_marked_overdue_not_taken_away(world: World) -> None:
    case = world.request(world.study(), priority=CasePriority.STAT)
    img1 = world.actor("img1")
    claim = cases.claim(world.session, img1, case.id, world.ctx)
    for _ in range(9):  # reading for 36 minutes, renewing every 4
        world.clock.advance(minutes=4)
        cases.renew(world.session, img1, case.id, claim.lease_token, world.ctx)
        cases.check_escalations(world.session, world.ctx)
    assert case.group_id == world.groups["COUNTY_IMG"] and case.claim_holder_id == img1.user_id
    assert kinds(world, case.id)[-2:] == [CaseEventKind.WARNED, CaseEventKind.OVERDUE]
    world.clock.advance(minutes=6)  # then he vanished: the lease lapses, the case goes up
    cases.expire_leases(world.session, world.ctx)
    steps = cases.check_escalations(world.session, world.ctx)
    assert [s.kind for s in steps] == [CaseEventKind.ESCALATED]
    assert case.group_id == world.groups["CITY_IMG"]


def test_a_preliminary_report_stops_escalation(world: World) -> None:
    case = world.request(world.study(), priority=CasePriority.STAT)
    img1 = world.actor("img1")
    claim = cases.claim(world.session, img1, case.id, world.ctx)
    cases.complete(
        world.session, img1, case.id, final=False, lease_token=claim.lease_token, ctx=world.ctx
    )
    world.clock.advance(hours=3)
    assert cases.check_escalations(world.session, world.ctx) == []


# --- studies of routed cases -----------------------------------------------------------------


def test_a_partner_reader_opens_exactly_the_studies_routed_to_his_group(world: World) -> None:
    partner = add_user(
        world.session, "partner", Role.SPECIALIST, world.ids["OTHER"], world.clock.now()
    )
    world.users["partner"] = partner
    world.group("PARTNER_IMG", "OTHER", ["partner"])
    routed_study, other_study = world.study(), world.study()
    case = world.request(routed_study)
    world.request(other_study)
    actor = world.actor("partner")
    with pytest.raises(StudyNotFound):
        visible_study(world.session, actor, routed_study.study_instance_uid, action="study.read")
    cases.assign(
        world.session,
        world.actor("admin"),
        case.id,
        group_id=world.groups["PARTNER_IMG"],
        user=None,
        ctx=world.ctx,
    )
    pk, owner = visible_study(
        world.session, actor, routed_study.study_instance_uid, action="study.read"
    )
    assert (pk, owner) == (routed_study.id, world.ids["CLINIC_A"])
    with pytest.raises(StudyNotFound):
        visible_study(world.session, actor, other_study.study_instance_uid, action="study.read")
    granted = world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "study.access_via_case")
    ).one()
    assert granted.actor == "partner" and granted.detail == f"study.read for case {case.id}"
    # A cancelled case opens nothing.
    cases.cancel_case(world.session, world.actor("tech_a"), case.id, "", world.ctx)
    with pytest.raises(StudyNotFound):
        visible_study(world.session, actor, routed_study.study_instance_uid, action="study.read")
