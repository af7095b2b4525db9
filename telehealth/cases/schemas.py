"""API shapes of cases, the worklist, claims, notifications and the routing table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from telehealth.cases.models import (
    CaseEventKind,
    CaseOrigin,
    CasePriority,
    CaseService,
    CaseStatus,
    NotificationKind,
)

_STRICT = ConfigDict(extra="forbid")


class CaseRequestIn(BaseModel):
    """A technician's reading request on a study of his institution."""

    model_config = _STRICT

    study_instance_uid: str = Field(min_length=1, max_length=64)
    clinical_history: str = Field(default="", max_length=10_000)
    question: str = Field(default="", max_length=2_000)
    priority: CasePriority = CasePriority.ROUTINE
    service: CaseService = CaseService.IMAGING


class CaseUpdateIn(BaseModel):
    model_config = _STRICT

    clinical_history: str | None = Field(default=None, max_length=10_000)
    question: str | None = Field(default=None, max_length=2_000)
    priority: CasePriority | None = None
    service: CaseService | None = None


class CancelIn(BaseModel):
    model_config = _STRICT

    reason: str = Field(default="", max_length=500)


class LeaseIn(BaseModel):
    """Optional body of renew/release: the token of the claim being renewed (fencing)."""

    model_config = _STRICT

    lease_token: int | None = None


class AssignIn(BaseModel):
    model_config = _STRICT

    group_id: int | None = None
    user: str | None = Field(default=None, description="username of a reader of the case's group")


class CaseOut(BaseModel):
    """Text fields are plain text: clients must show them as text, never as markup."""

    id: int
    status: CaseStatus
    priority: CasePriority
    triage_reason: str | None = Field(
        default=None, description="why ECG triage raised the priority (None: it did not)"
    )
    service: CaseService
    origin: CaseOrigin
    study_instance_uid: str
    patient_id: str
    patient_name: str
    patient_sex: str = ""
    patient_birth_date: str = Field(default="", description="DICOM DA (YYYYMMDD) or empty")
    prior_studies: int = Field(
        default=0, description="earlier studies of the same patient the user may open"
    )
    study_date: str
    study_description: str
    modalities: list[str]
    institution_id: int
    institution_code: str
    institution_name: str
    clinical_history: str
    question: str
    group_id: int | None
    group_code: str | None
    claim_holder: str | None
    lease_expires_at: datetime | None
    due_at: datetime
    overdue: bool
    escalation_level: int
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class PriorStudyOut(BaseModel):
    """An earlier study of the case's patient (text fields are plain text)."""

    model_config = ConfigDict(from_attributes=True)

    study_instance_uid: str
    study_date: str
    study_time: str
    study_description: str
    modalities: list[str]
    num_series: int
    num_instances: int
    institution_name: str
    case_id: int | None = Field(description="the user's case of that study, if any")


class CaseList(BaseModel):
    total: int
    limit: int
    offset: int
    counts: dict[CasePriority, int] = Field(description="per priority, over every other filter")
    items: list[CaseOut]


class CaseEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    kind: CaseEventKind
    actor: str
    detail: dict[str, Any]


class ClaimOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    case_id: int
    holder: str
    claimed_at: datetime
    lease_expires_at: datetime
    lease_token: int = Field(description="send it back with renew/release and the report")


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: NotificationKind
    case_id: int | None
    message: str
    created_at: datetime
    read_at: datetime | None


# --- the routing table -----------------------------------------------------------------------


class GroupIn(BaseModel):
    model_config = _STRICT

    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    institution: str = Field(description="code of the hosting institution")
    level: int = Field(
        default=0, description="higher levels are tried later within the institution"
    )
    services: list[CaseService] = Field(default_factory=list, description="empty: all")
    lead: str | None = Field(default=None, description="username of the group lead")
    members: list[str] = Field(default_factory=list, description="usernames")
    enabled: bool = True


class GroupOut(GroupIn):
    id: int


class ConditionsIn(BaseModel):
    """Each condition given must hold; a list matches when any of its values does."""

    model_config = _STRICT

    modalities: list[str] | None = None
    sop_classes: list[str] | None = None
    body_parts: list[str] | None = None
    services: list[CaseService] | None = None
    priorities: list[CasePriority] | None = None
    institution: str | None = Field(
        default=None, description="sending institution, or one below it"
    )
    time: str | None = Field(
        default=None,
        pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$",
        description='local "HH:MM-HH:MM"; may wrap midnight',
    )


class RuleIn(BaseModel):
    model_config = _STRICT

    name: str = Field(default="", max_length=200)
    group: str = Field(description="code of the target reading group")
    when: ConditionsIn = Field(default_factory=lambda: ConditionsIn())
    position: int | None = Field(
        default=None, description="evaluation order; default: after the last"
    )
    enabled: bool = True


class RuleOut(RuleIn):
    id: int
    position: int  # type: ignore[assignment]


class DeadlineIn(BaseModel):
    model_config = _STRICT

    priority: CasePriority
    service: CaseService | None = Field(default=None, description="None: any service")
    minutes: int = Field(gt=0)
    warn_fraction: float = Field(default=0.75, gt=0, le=1)


class DeadlineOut(DeadlineIn):
    model_config = ConfigDict(from_attributes=True)


class LoadOut(BaseModel):
    groups: int
    rules: int
    deadlines: int | None
