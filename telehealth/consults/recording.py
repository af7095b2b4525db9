"""Recordings of a consult: start (the host, once everyone in the room consented), stop (any
participant; revoking consent in the room stops it too), list and download.

Consent is given and revoked in the room, over the signalling protocol; the signalling server,
which alone knows who is inside, lets the recorder in or refuses it. Who may see recordings:
as for the consult (its participants and admins), every access audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome, User
from telehealth.clock import SYSTEM_CLOCK, Clock
from telehealth.consults.models import ConsultRecording, RecordingStatus
from telehealth.consults.service import (
    ConsultConfig,
    ConsultNotFound,
    NotHost,
    _open,
    _participant_role,
    get_consult,
    ice_servers,
)
from telehealth.consults.tokens import ConsultRole, issue_join_token
from telehealth.db import transaction
from telehealth.storage import ObjectStore

if TYPE_CHECKING:
    from telehealth.consults.recorder import RecorderPool

RECORDER_USER_ID = 0  # no user has it: the recorder is never taken for a participant
RECORDER_NAME = "录制 recorder"


class RecordingNotFound(ConsultNotFound):
    """No such recording of this consult, or not stored (yet)."""


@dataclass(frozen=True)
class RecordingView:
    recording: ConsultRecording
    started_by: str
    consented: list[str]  # usernames


def start_recording(
    factory: sessionmaker[Session],
    actor: auth.Actor,
    consult_id: int,
    pool: RecorderPool,
    config: ConsultConfig,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> RecordingView:
    """The host starts recording; returns once media is being written.

    Units of work of its own around the wait for the recorder (seconds: on SQLite a request's
    transaction holds the write lock). Raises ConsultNotFound, NotHost, ConsultClosed,
    RecordingRefused (not everyone in the room consented), RecorderUnavailable.
    """
    from aiortc import RTCIceServer  # aiortc loads with the first recording, not with the hub

    from telehealth.consults.recorder import RecordingRefused

    with transaction(factory) as session:
        consult = get_consult(session, actor, consult_id, action="consult.recording.start")
        if actor.user_id is None or actor.user_id != consult.host_id:
            raise NotHost("only the host starts a recording")
        _open(consult)
        host_id = actor.user_id
    now = clock.now()
    token, _ = issue_join_token(
        config.join_key,
        user_id=RECORDER_USER_ID,
        consult_id=consult_id,
        role=ConsultRole.RECORDER,
        name=RECORDER_NAME,
        now=now,
        ttl=config.join_ttl,
    )
    ice = [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in ice_servers(config, "recorder", now=now)
    ]
    url = f"{config.signaling_url.rstrip('/')}/rooms/{consult_id}"
    try:
        started = pool.start(consult_id, url, token, ice)
    except RecordingRefused as exc:
        with transaction(factory) as session:
            auth.audit(
                session,
                actor,
                "consult.recording.start",
                outcome=AuditOutcome.DENIED,
                object_type="consult",
                object_id=str(consult_id),
                detail=str(exc)[:200],
            )
        raise
    with transaction(factory) as session:
        row = ConsultRecording(
            consult_id=consult_id,
            started_by_id=host_id,
            status=RecordingStatus.RECORDING,
            consented_user_ids=started.consented_user_ids,
            object_key=started.object_key,
            stop_reason="",
            started_at=now,
        )
        session.add(row)
        session.flush()
        pool.attach(consult_id, row.id)
        auth.audit(
            session,
            actor,
            "consult.recording.start",
            object_type="consult_recording",
            object_id=str(row.id),
            detail=f"consult {consult_id}; consented users {started.consented_user_ids}",
        )
        return _view(session, row)


def stop_recording(
    factory: sessionmaker[Session], actor: auth.Actor, consult_id: int, pool: RecorderPool
) -> RecordingView:
    """Any participant stops the running recording; returns it stored (the upload is waited
    for outside any transaction). Raises ConsultNotFound, NotHost (not a participant),
    NotRecording."""
    from telehealth.consults.recorder import NotRecording, apply_result

    with transaction(factory) as session:
        consult = get_consult(session, actor, consult_id, action="consult.recording.stop")
        if _participant_role(session, consult, actor.user_id) is None:
            raise NotHost("only participants stop a recording")
        recording_id = session.scalar(
            select(ConsultRecording.id)
            .where(
                ConsultRecording.consult_id == consult.id,
                ConsultRecording.status == RecordingStatus.RECORDING,
            )
            .order_by(ConsultRecording.id.desc())
        )
    if recording_id is None:
        raise NotRecording("no recording runs in this consult")
    result = pool.stop(consult_id)
    with transaction(factory) as session:
        row = session.get(ConsultRecording, recording_id)
        assert row is not None  # recordings go only with their consult
        if row.status == RecordingStatus.RECORDING:
            apply_result(row, result)
        auth.audit(
            session,
            actor,
            "consult.recording.stop",
            object_type="consult_recording",
            object_id=str(row.id),
        )
        session.flush()
        return _view(session, row)


def list_recordings(session: Session, actor: auth.Actor, consult_id: int) -> list[RecordingView]:
    """Raises ConsultNotFound."""
    consult = get_consult(session, actor, consult_id, action="consult.recording.list")
    rows = session.scalars(
        select(ConsultRecording)
        .where(ConsultRecording.consult_id == consult.id)
        .order_by(ConsultRecording.id)
    )
    found = [_view(session, r) for r in rows]
    auth.audit(
        session,
        actor,
        "consult.recording.list",
        object_type="consult",
        object_id=str(consult.id),
        detail=f"{len(found)} rows",
    )
    return found


def read_recording(
    session: Session, actor: auth.Actor, consult_id: int, recording_id: int, store: ObjectStore
) -> tuple[ConsultRecording, bytes]:
    """A stored recording's WebM. Raises ConsultNotFound, RecordingNotFound."""
    consult = get_consult(session, actor, consult_id, action="consult.recording.read")
    row = session.get(ConsultRecording, recording_id)
    if row is None or row.consult_id != consult.id or row.status != RecordingStatus.STORED:
        raise RecordingNotFound(f"no stored recording {recording_id} of consult {consult.id}")
    data = store.get_bytes(row.object_key)
    auth.audit(
        session,
        actor,
        "consult.recording.read",
        object_type="consult_recording",
        object_id=str(row.id),
    )
    return row, data


def _view(session: Session, row: ConsultRecording) -> RecordingView:
    ids = [row.started_by_id, *row.consented_user_ids]
    names = dict(session.execute(select(User.id, User.username).where(User.id.in_(ids))).all())
    return RecordingView(
        row,
        started_by=names.get(row.started_by_id, ""),
        consented=[names[i] for i in row.consented_user_ids if i in names],
    )
