"""Report, addendum, template and critical-result API shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from telehealth.reports.models import (
    AcknowledgeMethod,
    CriticalCategory,
    CriticalStatus,
    ReportStatus,
)


class TemplateFieldOut(BaseModel):
    key: str
    label: str
    label_en: str
    type: str
    choices: list[str] = []
    unit: str = ""
    min: float | None = None
    max: float | None = None
    default: Any = None


class TemplateOut(BaseModel):
    code: str
    service: str
    title: str
    title_en: str
    modalities: list[str]
    fields: list[TemplateFieldOut]
    findings: str
    impression: str


class LeaseIn(BaseModel):
    lease_token: int | None = None


class ReportDraftIn(LeaseIn):
    template: str | None = None
    values: dict[str, Any] | None = None
    findings: str | None = Field(default=None, max_length=20000)
    impression: str | None = Field(default=None, max_length=20000)


class CriticalIn(BaseModel):
    category: CriticalCategory
    note: str = Field(default="", max_length=2000)


class SignIn(LeaseIn):
    critical: CriticalIn | None = None
    # Double reading: the second reader's verdict on the first report, and why if he disagrees.
    agrees: bool | None = None
    note: str = Field(default="", max_length=2000)


class AddendumIn(BaseModel):
    text: str = Field(min_length=1, max_length=20000)


class AcknowledgeIn(BaseModel):
    method: AcknowledgeMethod
    note: str = Field(default="", max_length=2000)  # e.g. the readback: who heard what


class AddendumOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    text: str
    signed_by_id: int
    signed_by: str | None = None
    signed_at: datetime


class CriticalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    case_id: int
    report_id: int | None
    institution_id: int
    category: CriticalCategory
    note: str
    status: CriticalStatus
    flagged_by_id: int
    flagged_at: datetime
    acknowledged_by_id: int | None
    acknowledged_at: datetime | None
    acknowledge_method: AcknowledgeMethod | None
    acknowledge_note: str
    escalation_level: int


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sop_instance_uid: str
    series_instance_uid: str
    instance_number: int
    sha256: str
    created_at: datetime
    stored_at: datetime | None


class ReportOut(BaseModel):
    id: int
    case_id: int
    reading: int
    status: ReportStatus
    template_code: str
    title: str
    title_en: str
    fields: list[TemplateFieldOut]
    values: dict[str, Any]
    findings: str
    impression: str
    author_id: int
    author: str | None
    created_at: datetime
    updated_at: datetime
    preliminary_at: datetime | None
    signed_by_id: int | None
    signed_by: str | None
    signed_at: datetime | None
    agrees: bool | None
    disagreement_note: str | None = None
    addenda: list[AddendumOut]
    critical_results: list[CriticalOut]
    documents: list[DocumentOut]
