"""Consult routes: request, list upcoming, read, invite, cancel, outcome, join."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from telehealth.consults import service
from telehealth.consults.schemas import (
    ConsultCancelIn,
    ConsultIn,
    ConsultOut,
    IceServerOut,
    InviteIn,
    JoinOut,
    OutcomeIn,
    ParticipantOut,
)
from telehealth.deps import CurrentActor, HubDep, SessionDep

router = APIRouter(prefix="/api", tags=["consults"])


def _out(found: service.ConsultView) -> ConsultOut:
    c = found.consult
    return ConsultOut(
        id=c.id,
        case_id=c.case_id,
        status=c.status,
        scheduled_at=c.scheduled_at,
        reason=c.reason,
        host=found.host,
        requested_by=found.requested_by,
        participants=[
            ParticipantOut(
                username=p.username,
                display_name=p.display_name,
                role=p.role,
                institution_code=p.institution_code,
            )
            for p in found.participants
        ],
        notes=c.notes,
        advice=c.advice,
        referral=c.referral,
        referral_institution=found.referral_institution,
        referral_reason=c.referral_reason,
        created_at=c.created_at,
        closed_at=c.closed_at,
    )


@router.post("/consults", status_code=201)
def request_consult(
    body: ConsultIn, actor: CurrentActor, session: SessionDep, hub: HubDep
) -> ConsultOut:
    """Ask a specialist for a consult on a case, now or at a time."""
    request = service.ConsultRequest(**body.model_dump())
    consult = service.request_consult(session, actor, request, clock=hub.clock)
    return _out(service.view(session, consult))


@router.get("/consults")
def upcoming_consults(actor: CurrentActor, session: SessionDep, hub: HubDep) -> list[ConsultOut]:
    """The caller's scheduled consults, soonest first (running ones included)."""
    return [_out(v) for v in service.list_upcoming(session, actor, clock=hub.clock)]


@router.get("/consults/{consult_id}")
def read_consult(consult_id: int, actor: CurrentActor, session: SessionDep) -> ConsultOut:
    return _out(service.read_consult(session, actor, consult_id))


@router.post("/consults/{consult_id}/invite")
def invite(
    consult_id: int, body: InviteIn, actor: CurrentActor, session: SessionDep, hub: HubDep
) -> ConsultOut:
    consult = service.invite(session, actor, consult_id, body.participants, clock=hub.clock)
    return _out(service.view(session, consult))


@router.post("/consults/{consult_id}/cancel")
def cancel(
    consult_id: int,
    actor: CurrentActor,
    session: SessionDep,
    hub: HubDep,
    body: ConsultCancelIn | None = None,
) -> ConsultOut:
    reason = body.reason if body else ""
    consult = service.cancel(session, actor, consult_id, reason, clock=hub.clock)
    return _out(service.view(session, consult))


@router.post("/consults/{consult_id}/outcome")
def file_outcome(
    consult_id: int, body: OutcomeIn, actor: CurrentActor, session: SessionDep, hub: HubDep
) -> ConsultOut:
    """The host files notes, advice and any referral; they go into the case history."""
    outcome = service.Outcome(**body.model_dump())
    consult = service.file_outcome(session, actor, consult_id, outcome, clock=hub.clock)
    return _out(service.view(session, consult))


@router.post("/consults/{consult_id}/join")
def join(consult_id: int, actor: CurrentActor, session: SessionDep, hub: HubDep) -> JoinOut:
    """A join token for the signalling server (about two minutes) and the ICE servers."""
    ticket = service.join(session, actor, consult_id, hub.consults, clock=hub.clock)
    return JoinOut(
        consult_id=ticket.consult_id,
        token=ticket.token,
        expires_at=ticket.expires_at,
        role=ticket.role,
        signaling_url=ticket.signaling_url,
        ice_servers=[IceServerOut(**asdict(s)) for s in ticket.ice_servers],
    )
