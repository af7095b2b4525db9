"""Reports, their addenda, the documents signing produced, and critical results (危急值)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from telehealth.db import Base, UTCDateTime
from telehealth.errors import Conflict


class ReportStatus(StrEnum):
    DRAFT = "draft"  # the reader's own; the clinic does not see it
    PRELIMINARY = "preliminary"  # issued to the clinic, not yet signed
    SIGNED = "signed"  # final and immutable; corrections are addenda


class CriticalCategory(StrEnum):
    """危急值 categories of the usual hospital lists (imaging and ECG)."""

    INTRACRANIAL_HEMORRHAGE = "intracranial_hemorrhage"  # 颅内出血
    CEREBRAL_HERNIATION = "cerebral_herniation"  # 脑疝
    TENSION_PNEUMOTHORAX = "tension_pneumothorax"  # 张力性气胸
    PULMONARY_EMBOLISM = "pulmonary_embolism"  # 肺栓塞
    AORTIC_DISSECTION = "aortic_dissection"  # 主动脉夹层
    VISCERAL_PERFORATION = "visceral_perforation"  # 空腔脏器穿孔
    ORGAN_RUPTURE = "organ_rupture"  # 实质脏器破裂出血
    ECTOPIC_PREGNANCY = "ectopic_pregnancy"  # 异位妊娠破裂
    ACUTE_MI = "acute_mi"  # 急性心肌梗死 (STEMI)
    MALIGNANT_ARRHYTHMIA = "malignant_arrhythmia"  # 恶性心律失常
    SEVERE_BRADYCARDIA = "severe_bradycardia"  # 严重心动过缓 / 高度房室传导阻滞
    OTHER = "other"


class CriticalStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"


class AcknowledgeMethod(StrEnum):
    PHONE = "phone"  # 电话回读 (readback)
    IN_PERSON = "in_person"
    SYSTEM = "system"  # seen and confirmed in the hub


class ReportSigned(Conflict):
    """The report (or addendum) is signed; it never changes. Add an addendum instead."""


class Report(Base):
    """One reading of a case: `reading` 1, and 2 when a second reader is required."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("case_id", "reading"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    reading: Mapped[int] = mapped_column(Integer, default=1)
    template_code: Mapped[str] = mapped_column(String(64))
    # The template's title and field definitions as they were: a signed report never depends
    # on a template edited later.
    title: Mapped[str] = mapped_column(String(200))
    title_en: Mapped[str] = mapped_column(String(200), default="")
    field_defs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    findings: Mapped[str] = mapped_column(Text, default="")  # 所见
    impression: Mapped[str] = mapped_column(Text, default="")  # 印象
    status: Mapped[ReportStatus] = mapped_column(String(16))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    preliminary_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Double reading: the second reader's verdict on the first report.
    agrees: Mapped[bool | None] = mapped_column(Boolean)


class Addendum(Base):
    """A signed correction or supplement to a signed report (补充报告)."""

    __tablename__ = "report_addenda"
    __table_args__ = (Index("ix_report_addenda_report", "report_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    signed_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReportDocument(Base):
    """A PDF made at signing (the report, or the report with its addenda so far), and the
    Encapsulated PDF instance that carries it back into the study.

    `stored_at` None means not yet handed to the archive: the escalation sweep retries.
    """

    __tablename__ = "report_documents"
    __table_args__ = (Index("ix_report_documents_report", "report_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    addendum_id: Mapped[int | None] = mapped_column(
        ForeignKey("report_addenda.id", ondelete="CASCADE")
    )
    pdf: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    instance_number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class CriticalResult(Base):
    """A critical finding the clinic must acknowledge: who, when, how (危急值闭环)."""

    __tablename__ = "critical_results"
    __table_args__ = (
        Index("ix_critical_results_open", "institution_id", "status"),
        Index("ix_critical_results_next", "next_escalation_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id", ondelete="SET NULL"))
    # The requesting clinic, the one that must acknowledge.
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    category: Mapped[CriticalCategory] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[CriticalStatus] = mapped_column(String(16))
    flagged_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    flagged_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledge_method: Mapped[AcknowledgeMethod | None] = mapped_column(String(16))
    acknowledge_note: Mapped[str] = mapped_column(Text, default="")
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    # When the escalation sweep must look again; None once acknowledged or fully escalated.
    next_escalation_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --- a signed report never changes ------------------------------------------------------------
# The service refuses every edit of a signed report; this guard catches any path that forgets
# to (a bulk UPDATE aside), so the invariant does not rest on each caller.


def _was_signed(target: Report) -> bool:
    history = inspect(target).attrs.status.history
    before = [*history.deleted, *history.unchanged]
    return bool(before) and before[0] == ReportStatus.SIGNED


@event.listens_for(Report, "before_update")
def _report_is_final(_mapper: Mapper[Report], _connection: Any, target: Report) -> None:
    if _was_signed(target):
        raise ReportSigned(f"report {target.id} is signed")


@event.listens_for(Addendum, "before_update")
def _addendum_is_final(_mapper: Mapper[Addendum], _connection: Any, target: Addendum) -> None:
    raise ReportSigned(f"addendum {target.id} is signed")
