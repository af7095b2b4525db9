"""What DICOMweb keeps beside the index: each instance's metadata, ready to send."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from telehealth.db import Base


class InstanceMetadata(Base):
    """An instance's header as DICOM JSON text, computed once after it arrives.

    A 500-slice series' `metadata` is then one query instead of 500 object reads. BulkDataURIs
    in `json` start with a placeholder for the DICOMweb root (it depends on the request's
    host). `sha256` names the version described: a replaced instance gets new metadata.
    """

    __tablename__ = "instance_metadata"

    instance_pk: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64))
    json: Mapped[str] = mapped_column(Text)
