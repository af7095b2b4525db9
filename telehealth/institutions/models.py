"""The consortium tree and the DICOM application entities of its members."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from telehealth.db import Base, UTCDateTime


class InstitutionLevel(StrEnum):
    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"
    VILLAGE = "village"
    OTHER = "other"


class Institution(Base):
    __tablename__ = "institutions"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    level: Mapped[InstitutionLevel] = mapped_column(String(16))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApplicationEntity(Base):
    """A modality or PACS of a member institution, known by its AE title."""

    __tablename__ = "application_entities"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    # When set, calls under this AE title are accepted only from this address.
    host: Mapped[str | None] = mapped_column(String(255))
    # Where C-MOVE sends to this AE; not needed for a modality that only stores.
    port: Mapped[int | None] = mapped_column(Integer)
    # C-MOVE connects to host:port with TLS, verifying the peer (TELEHEALTH_DICOM_MOVE_TLS_CA).
    tls: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
