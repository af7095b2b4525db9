"""The index of what the archive holds: patient → study → series → instance."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from telehealth.db import Base, UTCDateTime


class Patient(Base):
    """A patient as known to the institution that issued the Patient ID.

    Patient IDs are local: two clinics may both have patient "0001". The key is
    (issuer institution, Patient ID).
    """

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("issuer_id", "patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    patient_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        Index("ix_studies_institution_date", "institution_id", "study_date"),
        Index("ix_studies_unstable", "stable_at", "last_received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    # The institution that sent the study: it owns it and sees it.
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    modalities: Mapped[str] = mapped_column(String(64), default="")  # e.g. "CT\\SR"
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set when no instance arrived for the quiet period; cleared when one arrives later.
    stable_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(200), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)


class StorageState(StrEnum):
    SPOOLED = "spooled"  # bytes are in the local spool, not yet confirmed in the object store
    STORED = "stored"  # bytes are in the object store, verified
    PURGED = "purged"  # removed by a retention rule; the rows stay as the record


class IngestSource(StrEnum):
    DIMSE = "dimse"  # C-STORE
    STOW = "stow"  # STOW-RS
    UPLOAD = "upload"  # browser or CLI upload
    INTERNAL = "internal"  # made by the hub (reports, converted ECGs)
    RECOVERY = "recovery"  # re-indexed from the spool after a crash


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(255))
    state: Mapped[StorageState] = mapped_column(String(16), index=True)
    spool_name: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[IngestSource] = mapped_column(String(16))
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    source_address: Mapped[str] = mapped_column(String(128), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stored_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SupersededObject(Base):
    """An older version of an instance kept in the store after a replace (duplicate policy)."""

    __tablename__ = "superseded_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[StorageState] = mapped_column(String(16))
    spool_name: Mapped[str | None] = mapped_column(String(128))
    superseded_at: Mapped[datetime] = mapped_column(UTCDateTime)
