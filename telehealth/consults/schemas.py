"""API shapes of consults, their outcome and join tickets."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from telehealth.consults.models import ConsultStatus, RecordingStatus, Referral
from telehealth.consults.tokens import ConsultRole

_STRICT = ConfigDict(extra="forbid")


class ConsultIn(BaseModel):
    """A consult on a case: now (no `scheduled_at`) or at a time with its zone."""

    model_config = _STRICT

    case_id: int
    host: str = Field(min_length=1, max_length=64)  # username of the specialist
    participants: list[str] = Field(default_factory=list, max_length=8)
    scheduled_at: AwareDatetime | None = None
    reason: str = Field(default="", max_length=2_000)


class InviteIn(BaseModel):
    model_config = _STRICT

    participants: list[str] = Field(min_length=1, max_length=8)


class ConsultCancelIn(BaseModel):
    model_config = _STRICT

    reason: str = Field(default="", max_length=500)


class OutcomeIn(BaseModel):
    """Notes, advice and a referral (双向转诊: up to a higher institution, or down)."""

    model_config = _STRICT

    notes: str = Field(default="", max_length=20_000)
    advice: str = Field(default="", max_length=10_000)
    referral: Referral = Referral.NONE
    referral_institution: str | None = Field(default=None, max_length=64)
    referral_reason: str = Field(default="", max_length=2_000)


class ParticipantOut(BaseModel):
    username: str
    display_name: str
    role: ConsultRole
    institution_code: str


class ConsultOut(BaseModel):
    id: int
    case_id: int
    status: ConsultStatus
    scheduled_at: datetime
    reason: str
    host: str
    requested_by: str
    participants: list[ParticipantOut]
    notes: str
    advice: str
    referral: Referral
    referral_institution: str | None
    referral_reason: str
    created_at: datetime
    closed_at: datetime | None


class IceServerOut(BaseModel):
    """W3C RTCIceServer, passed to `new RTCPeerConnection({iceServers})` as is."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class JoinOut(BaseModel):
    consult_id: int
    token: str
    expires_at: datetime
    role: ConsultRole
    signaling_url: str
    ice_servers: list[IceServerOut]


class ChatIn(BaseModel):
    model_config = _STRICT

    text: str = Field(min_length=1, max_length=4_000)


class ChatOut(BaseModel):
    id: int
    username: str
    display_name: str
    text: str
    created_at: datetime


class RecordingOut(BaseModel):
    """A consented recording: WebM (VP8/Opus) in the object store once `stored`."""

    id: int
    consult_id: int
    status: RecordingStatus
    started_by: str
    consented: list[str]  # usernames of everyone inside when it started
    sha256: str | None
    size_bytes: int | None
    duration_seconds: float | None
    stop_reason: str
    started_at: datetime
    ended_at: datetime | None
