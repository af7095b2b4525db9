"""Users, their roles, and the audit trail of who touched which patient data."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from telehealth.db import Base, UTCDateTime


class Role(StrEnum):
    TECHNICIAN = "technician"  # clinic staff who send studies and read reports back
    SPECIALIST = "specialist"  # county readers
    CONSULT_DOCTOR = "consult_doctor"  # joins video consultations
    ADMIN = "admin"  # consortium administration; sees every institution


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(String(32))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Tokens issued before this moment are void (password change, logout everywhere).
    tokens_valid_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILED = "failed"


class AuditEvent(Base):
    """One access to patient data or one security-relevant event (login, refusal)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))  # username or "ae:TITLE"
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[AuditOutcome] = mapped_column(String(16))
    object_type: Mapped[str] = mapped_column(String(32), default="")
    object_id: Mapped[str] = mapped_column(String(128), default="")
    source_address: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
