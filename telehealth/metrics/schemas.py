"""API shape of the metrics summary. Durations are minutes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from telehealth.cases.models import CasePriority, CaseService

_FROM_SERVICE = ConfigDict(from_attributes=True)


class VolumeOut(BaseModel):
    model_config = _FROM_SERVICE

    institution_id: int
    institution_code: str
    service: CaseService
    day: str  # local date, YYYY-MM-DD
    cases: int


class PercentilesOut(BaseModel):
    """Nearest-rank percentiles in minutes; null when nothing was measured."""

    model_config = _FROM_SERVICE

    count: int
    p50: float | None
    p90: float | None
    p99: float | None


class TurnaroundOut(BaseModel):
    model_config = _FROM_SERVICE

    request_to_claim: PercentilesOut
    claim_to_signed: PercentilesOut
    request_to_signed: PercentilesOut


class ComplianceOut(BaseModel):
    model_config = _FROM_SERVICE

    priority: CasePriority
    due: int
    met: int
    missed: int
    pending: int
    rate: float | None


class CriticalOut(BaseModel):
    model_config = _FROM_SERVICE

    flagged: int
    acknowledged: int
    open: int
    ack_minutes: PercentilesOut


class ReaderLoadOut(BaseModel):
    model_config = _FROM_SERVICE

    user_id: int
    username: str
    claimed: int
    signed: int
    in_progress: int


class ShareOut(BaseModel):
    model_config = _FROM_SERVICE

    due: int
    met: int
    rate: float | None


class AcknowledgementOut(BaseModel):
    """Critical results flagged, acknowledged, and minutes to acknowledgement."""

    model_config = _FROM_SERVICE

    flagged: int
    acknowledged: int
    rate: float | None
    p50: float | None
    p90: float | None


class TurnOut(BaseModel):
    """Minutes from request to signature, nearest-rank."""

    model_config = _FROM_SERVICE

    count: int
    p50: float | None
    p90: float | None


class ClinicFiguresOut(BaseModel):
    model_config = _FROM_SERVICE

    institution_id: int
    institution_code: str
    institution_name: str
    cases: int
    signed: int
    turnaround: TurnOut
    compliance: ShareOut
    critical: AcknowledgementOut


class ReaderFiguresOut(BaseModel):
    model_config = _FROM_SERVICE

    user_id: int
    username: str
    display_name: str
    signed: int
    turnaround: TurnOut
    compliance: ShareOut
    critical: AcknowledgementOut


class SummaryOut(BaseModel):
    model_config = _FROM_SERVICE

    start: datetime
    end: datetime
    institution_id: int | None
    generated_at: datetime
    volumes: list[VolumeOut]
    turnaround: TurnaroundOut
    compliance: list[ComplianceOut]
    critical: CriticalOut
    readers: list[ReaderLoadOut]
    by_clinic: list[ClinicFiguresOut]  # the cases each clinic requested in the period
    by_reader: list[ReaderFiguresOut]  # reports signed, critical results flagged in the period
