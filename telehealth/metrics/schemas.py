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
