"""Consult routes: request, list upcoming, read, invite, cancel, outcome, join."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Query, Response

from telehealth.consults import recording, schemas, service
from telehealth.consults.schemas import (
    ChatIn,
    ChatOut,
    ConsultCancelIn,
    ConsultIn,
    ConsultOut,
    IceServerOut,
    InviteIn,
    JoinOut,
    OutcomeIn,
    ParticipantOut,
)
from telehealth.deps import ActorOutsideSession, CurrentActor, HubDep, SessionDep

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
def upcoming_consults(
    actor: CurrentActor, session: SessionDep, hub: HubDep, past: bool = Query(False)
) -> list[ConsultOut]:
    """The caller's scheduled consults, soonest first (running ones included); with
    `past=true` the closed and long-gone ones, latest first."""
    listing = service.list_past if past else service.list_upcoming
    return [_out(v) for v in listing(session, actor, clock=hub.clock)]


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


@router.get("/consults/{consult_id}/messages")
def chat_history(consult_id: int, actor: CurrentActor, session: SessionDep) -> list[ChatOut]:
    """The consult's chat, oldest first."""
    return [ChatOut(**asdict(line)) for line in service.list_messages(session, actor, consult_id)]


@router.post("/consults/{consult_id}/messages", status_code=201)
def post_chat(
    consult_id: int, body: ChatIn, actor: CurrentActor, session: SessionDep, hub: HubDep
) -> ChatOut:
    """Keep a chat line with the consult; the room relays it live over signalling."""
    line = service.post_message(session, actor, consult_id, body.text, clock=hub.clock)
    return ChatOut(**asdict(line))


# --- recordings (with the consent of everyone in the room) -------------------------------------


def _recording_out(found: recording.RecordingView) -> schemas.RecordingOut:
    r = found.recording
    return schemas.RecordingOut(
        id=r.id,
        consult_id=r.consult_id,
        status=r.status,
        started_by=found.started_by,
        consented=found.consented,
        sha256=r.sha256,
        size_bytes=r.size_bytes,
        duration_seconds=r.duration_seconds,
        stop_reason=r.stop_reason,
        started_at=r.started_at,
        ended_at=r.ended_at,
    )


@router.post("/consults/{consult_id}/recordings", status_code=201)
def start_recording(
    consult_id: int, actor: ActorOutsideSession, hub: HubDep
) -> schemas.RecordingOut:
    """The host starts recording; 409 unless everyone in the room has consented (consent is
    given in the room, over signalling). Returns once media is being written."""
    found = recording.start_recording(
        hub.factory, actor, consult_id, hub.recorder_pool(), hub.consults, clock=hub.clock
    )
    return _recording_out(found)


@router.post("/consults/{consult_id}/recordings/stop")
def stop_recording(
    consult_id: int, actor: ActorOutsideSession, hub: HubDep
) -> schemas.RecordingOut:
    """Stop, store (WebM and its sha256 in the object store) and return the recording."""
    return _recording_out(
        recording.stop_recording(hub.factory, actor, consult_id, hub.recorder_pool())
    )


@router.get("/consults/{consult_id}/recordings")
def list_recordings(
    consult_id: int, actor: CurrentActor, session: SessionDep
) -> list[schemas.RecordingOut]:
    return [_recording_out(r) for r in recording.list_recordings(session, actor, consult_id)]


@router.get("/consults/{consult_id}/recordings/{recording_id}/file")
def download_recording(
    consult_id: int, recording_id: int, actor: CurrentActor, session: SessionDep, hub: HubDep
) -> Response:
    row, data = recording.read_recording(session, actor, consult_id, recording_id, hub.store)
    return Response(
        data,
        media_type="video/webm",
        headers={
            "content-disposition": f'attachment; filename="consult-{consult_id}-{row.id}.webm"',
            "x-content-sha256": row.sha256 or "",
            "cache-control": "private, no-store",
        },
    )
