"""Consults: a video meeting about one case, its participants, notes and outcome."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from telehealth.consults.tokens import ConsultRole
from telehealth.db import Base, UTCDateTime


class ConsultStatus(StrEnum):
    """SCHEDULED (also "now") → COMPLETED when the outcome is filed; CANCELLED before that."""

    SCHEDULED = "scheduled"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Referral(StrEnum):
    """双向转诊: up to a higher institution, or down to the clinic for follow-up."""

    NONE = "none"
    UP = "up"
    DOWN = "down"


class Consult(Base):
    __tablename__ = "consults"
    __table_args__ = (Index("ix_consults_status_time", "status", "scheduled_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    # The case's institution (the clinic with the patient): the consult's scope.
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    host_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[ConsultStatus] = mapped_column(String(16))
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    advice: Mapped[str] = mapped_column(Text, default="")
    referral: Mapped[Referral] = mapped_column(String(8), default=Referral.NONE)
    referral_institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"))
    referral_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsultParticipant(Base):
    """Who may join: the host, the requester and every invited user."""

    __tablename__ = "consult_participants"

    consult_id: Mapped[int] = mapped_column(
        ForeignKey("consults.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    role: Mapped[ConsultRole] = mapped_column(String(8))
    invited_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsultMessage(Base):
    """One chat line of a consult, kept with it: the signalling server relays, never stores."""

    __tablename__ = "consult_messages"
    __table_args__ = (Index("ix_consult_messages_consult_id_id", "consult_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(ForeignKey("consults.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RecordingStatus(StrEnum):
    """RECORDING while the recorder is in the room; STORED once the WebM is in the object
    store with its sha256; FAILED when nothing usable came out (no media, upload failed)."""

    RECORDING = "recording"
    STORED = "stored"
    FAILED = "failed"


class ConsultRecording(Base):
    """One recording of a consult, made with the consent of everyone in the room."""

    __tablename__ = "consult_recordings"

    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(
        ForeignKey("consults.id", ondelete="CASCADE"), index=True
    )
    started_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[RecordingStatus] = mapped_column(String(16))
    # Who was inside and had consented when the recorder was let in (user ids).
    consented_user_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    object_key: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    # stopped, consent_revoked, nobody_left, removed_by_host, max_duration, disconnected, …
    stop_reason: Mapped[str] = mapped_column(String(32), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
