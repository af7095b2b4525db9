"""The consults service on SQLite and PostgreSQL: scope, invitations, outcome, join tickets."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.auth.models import AuditEvent, AuditOutcome, Role
from telehealth.cases import service as cases
from telehealth.cases.models import CaseEvent, CaseEventKind
from telehealth.clock import FakeClock
from telehealth.consults import service as consults
from telehealth.consults.models import ConsultStatus, Referral
from telehealth.consults.tokens import ConsultRole, verify_join_token
from tests.cases import World, add_user, build_world

CONFIG = consults.ConsultConfig(
    join_key="k" * 64,
    stun_urls=("stun:stun.example.cn:3478",),
    turn_urls=("turn:turn.example.cn:3478?transport=udp", "turns:turn.example.cn:5349"),
    turn_secret="coturn-static-auth-secret",
)


@pytest.fixture
def world(factory: sessionmaker[Session], clock: FakeClock) -> Iterator[World]:
    session = factory()
    try:
        world = build_world(session, clock)
        world.users["partner"] = add_user(
            session, "partner", Role.SPECIALIST, world.ids["OTHER"], clock.now()
        )
        yield world
    finally:
        session.close()


def _consult(world: World, **fields: object) -> consults.Consult:  # type: ignore[name-defined]
    case = world.request(world.study())
    values: dict[str, object] = {"case_id": case.id, "host": "img1", "participants": ["ecg1"]}
    values.update(fields)
    request = consults.ConsultRequest(**values)  # type: ignore[arg-type]
    return consults.request_consult(
        world.session, world.actor("tech_a"), request, clock=world.clock
    )


def _history(world: World, case_id: int) -> list[CaseEvent]:
    query = select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(CaseEvent.id)
    return list(world.session.scalars(query))


def test_a_clinic_requests_a_consult_with_a_county_specialist(world: World) -> None:
    consult = _consult(world, reason="胸痛待查")
    seen = consults.read_consult(world.session, world.actor("img1"), consult.id)
    assert seen.host == "img1" and seen.requested_by == "tech_a"
    roles = {p.username: p.role for p in seen.participants}
    assert roles == {"img1": ConsultRole.HOST, "tech_a": ConsultRole.GUEST, "ecg1": "guest"}
    assert consult.status == ConsultStatus.SCHEDULED
    assert consult.scheduled_at == world.clock.now()  # "now"
    event = _history(world, consult.case_id)[-1]
    assert event.kind == CaseEventKind.CONSULT_REQUESTED
    assert event.detail["consult_id"] == consult.id and event.detail["host"] == "img1"


def test_the_host_must_be_a_specialist_and_everyone_of_the_consortium(world: World) -> None:
    with pytest.raises(consults.InvalidConsult, match="cannot host"):
        _consult(world, host="tech_b")
    with pytest.raises(consults.InvalidConsult, match="not a user of this consortium"):
        _consult(world, participants=["partner"])  # another county's consortium
    with pytest.raises(consults.InvalidConsult, match="not a user"):
        _consult(world, participants=["nobody"])
    with pytest.raises(consults.InvalidConsult, match="in the past"):
        _consult(world, scheduled_at=world.clock.now() - timedelta(hours=1))


def test_a_clinic_cannot_ask_about_another_clinics_case(world: World) -> None:
    case = world.request(world.study("CLINIC_B"), "tech_b")
    request = consults.ConsultRequest(case_id=case.id, host="img1")
    with pytest.raises(cases.CaseNotFound):
        consults.request_consult(world.session, world.actor("tech_a"), request)


def test_someone_not_invited_gets_not_found_and_the_refusal_is_audited(world: World) -> None:
    consult = _consult(world)
    for outsider in ("tech_b", "partner", "ecg2"):
        with pytest.raises(consults.ConsultNotFound):
            consults.read_consult(world.session, world.actor(outsider), consult.id)
        with pytest.raises(consults.ConsultNotFound):
            consults.join(world.session, world.actor(outsider), consult.id, CONFIG)
    denied = world.session.scalars(
        select(AuditEvent).where(
            AuditEvent.action == "consult.join", AuditEvent.outcome == AuditOutcome.DENIED
        )
    ).all()
    assert sorted(e.actor for e in denied) == ["ecg2", "partner", "tech_b"]


def test_join_ticket_binds_user_consult_and_role_and_carries_ice_servers(world: World) -> None:
    consult = _consult(world)
    ticket = consults.join(
        world.session, world.actor("img1"), consult.id, CONFIG, clock=world.clock
    )
    claims = verify_join_token(CONFIG.join_key, ticket.token, now=world.clock.now().timestamp())
    assert claims.user_id == world.users["img1"].id and claims.consult_id == consult.id
    assert claims.role == ConsultRole.HOST and ticket.role == ConsultRole.HOST
    assert ticket.expires_at == world.clock.now() + timedelta(minutes=2)
    assert ticket.signaling_url.endswith(f"/rooms/{consult.id}")
    stun, turn = ticket.ice_servers
    assert stun.urls == ["stun:stun.example.cn:3478"] and stun.username is None
    expiry, _, user = (turn.username or "").partition(":")
    assert user == str(world.users["img1"].id)
    assert int(expiry) == int((world.clock.now() + timedelta(hours=4)).timestamp())
    guest = consults.join(world.session, world.actor("ecg1"), consult.id, CONFIG)
    assert guest.role == ConsultRole.GUEST


def test_an_admin_sees_a_consult_but_only_participants_join(world: World) -> None:
    consult = _consult(world)
    assert consults.read_consult(world.session, world.actor("admin"), consult.id)
    with pytest.raises(consults.NotHost):
        consults.join(world.session, world.actor("admin"), consult.id, CONFIG)


def test_invite_then_the_invited_may_join_until_cancelled(world: World) -> None:
    consult = _consult(world)
    with pytest.raises(consults.NotHost):
        consults.invite(world.session, world.actor("ecg1"), consult.id, ["ecg2"])
    consults.invite(world.session, world.actor("img1"), consult.id, ["ecg2"])
    assert consults.join(world.session, world.actor("ecg2"), consult.id, CONFIG)
    with pytest.raises(consults.InvalidConsult, match="at most 4"):
        consults.invite(world.session, world.actor("img1"), consult.id, ["city1"])
    consults.cancel(world.session, world.actor("tech_a"), consult.id, "patient went home")
    with pytest.raises(consults.ConsultClosed):
        consults.join(world.session, world.actor("ecg2"), consult.id, CONFIG)
    assert _history(world, consult.case_id)[-1].kind == CaseEventKind.CONSULT_CANCELLED


def test_the_host_files_the_outcome_with_a_referral_up(world: World) -> None:
    consult = _consult(world)
    outcome = consults.Outcome(
        notes="ST 段抬高", advice="转上级医院", referral=Referral.UP,
        referral_institution="CITY", referral_reason="需要介入治疗",
    )  # fmt: skip
    with pytest.raises(consults.NotHost):
        consults.file_outcome(world.session, world.actor("tech_a"), consult.id, outcome)
    bad = consults.Outcome(referral=Referral.UP, referral_institution="OTHER", referral_reason="x")
    with pytest.raises(consults.InvalidConsult, match="destination"):
        consults.file_outcome(world.session, world.actor("img1"), consult.id, bad)
    no_reason = consults.Outcome(referral=Referral.DOWN, referral_institution="CLINIC_A")
    with pytest.raises(consults.InvalidConsult, match="reason"):
        consults.file_outcome(world.session, world.actor("img1"), consult.id, no_reason)
    consults.file_outcome(world.session, world.actor("img1"), consult.id, outcome)
    seen = consults.read_consult(world.session, world.actor("tech_a"), consult.id)
    assert seen.consult.status == ConsultStatus.COMPLETED
    assert seen.referral_institution == "CITY" and seen.consult.advice == "转上级医院"
    completed, referral = _history(world, consult.case_id)[-2:]
    assert completed.kind == CaseEventKind.CONSULT_COMPLETED
    assert completed.detail["notes"] == "ST 段抬高"
    assert referral.kind == CaseEventKind.CONSULT_REFERRAL
    assert referral.detail == {
        "consult_id": consult.id, "direction": "up", "destination": "CITY",
        "reason": "需要介入治疗",
    }  # fmt: skip
    with pytest.raises(consults.ConsultClosed):
        consults.file_outcome(world.session, world.actor("img1"), consult.id, outcome)


def test_upcoming_lists_my_scheduled_consults_soonest_first(world: World) -> None:
    later = _consult(world, scheduled_at=world.clock.now() + timedelta(days=1))
    now = _consult(world, participants=[])
    cancelled = _consult(world)
    consults.cancel(world.session, world.actor("img1"), cancelled.id)
    mine = consults.list_upcoming(world.session, world.actor("img1"), clock=world.clock)
    assert [v.consult.id for v in mine] == [now.id, later.id]
    ecg1 = consults.list_upcoming(world.session, world.actor("ecg1"), clock=world.clock)
    assert [v.consult.id for v in ecg1] == [later.id]
    assert consults.list_upcoming(world.session, world.actor("tech_b"), clock=world.clock) == []
    world.clock.advance(hours=3)  # the "now" consult is long over
    mine = consults.list_upcoming(world.session, world.actor("img1"), clock=world.clock)
    assert [v.consult.id for v in mine] == [later.id]
