"""What the ECG service keeps beside the index: measurements per instance, original files."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from telehealth.db import Base, UTCDateTime


class MeasurementStatus(StrEnum):
    COMPUTED = "computed"  # measured (single values may still be None, with their reason)
    FAILED = "failed"  # the instance could not be read as an ECG; `error` says why


class EcgMeasurement(Base):
    """The automatic measurements of one ECG instance, and a reader's values beside them.

    `automatic` is what the algorithm found (recomputed at will, replaced each time);
    `reader_values` holds what a reader overruled (field → value, None meaning "not
    measurable") and is never touched by a recomputation. `sha256` names the instance
    version measured: a replaced instance is measured again.
    """

    __tablename__ = "ecg_measurements"

    instance_pk: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[MeasurementStatus] = mapped_column(String(16))
    automatic: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    algorithm: Mapped[str] = mapped_column(String(64), default="")
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reader_values: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reader_comment: Mapped[str] = mapped_column(Text, default="")
    reader_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reader_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EcgOriginal(Base):
    """The file a clinic uploaded (aECG, SCP-ECG, vendor XML), kept as sent in the store."""

    __tablename__ = "ecg_originals"

    instance_pk: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    format: Mapped[str] = mapped_column(String(32))
    object_key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255), default="")
    uploaded_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime)
