"""ECG API shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class UploadOut(BaseModel):
    outcome: str  # the archive's word: new, duplicate, replaced
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    format: str  # dicom, hl7-aecg, scp-ecg, philips-xml, ge-muse-xml
    original_key: str | None
    leads: list[str]
    sampling_frequency_hz: float
    duration_s: float


class LeadSamples(BaseModel):
    name: str
    derived: bool  # computed from I and II (III, aVR, aVL, aVF of an 8-lead cart)
    samples: list[float]


class SamplesOut(BaseModel):
    sop_instance_uid: str
    sampling_frequency_hz: float
    num_samples: int
    units: str = "uV"
    leads: list[LeadSamples]


class TriageReasonOut(BaseModel):
    code: str
    priority: str  # stat | urgent
    message: str
    value: float | None = None
    threshold: float | None = None


class ReaderValuesOut(BaseModel):
    values: dict[str, Any]
    comment: str
    by: str | None
    at: datetime | None


class OriginalOut(BaseModel):
    format: str
    object_key: str
    sha256: str
    size_bytes: int
    filename: str


class MeasurementsOut(BaseModel):
    sop_instance_uid: str
    study_instance_uid: str
    status: str  # computed | failed
    error: str
    algorithm: str
    computed_at: datetime
    automatic: dict[str, Any]  # every automatic value, reasons in `not_computable`
    reader: ReaderValuesOut | None  # what a reader overruled, beside (not over) the above
    effective: dict[str, Any]  # the values that count: the reader's where given
    triage: list[TriageReasonOut]
    original: OriginalOut | None


class ReaderValuesIn(BaseModel):
    """A reader's values; fields left out keep the automatic value, null = not measurable.

    Replaces the reader's earlier values as a whole; `{"values": {}}` withdraws them.
    """

    model_config = ConfigDict(extra="forbid")

    values: dict[str, float | bool | None] = Field(default_factory=dict)
    comment: str = Field("", max_length=2000)
