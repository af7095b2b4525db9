"""A report's life: draft → preliminary → signed, then addenda; the PDF made at each signing.

Only the reader holding the case's claim writes, issues and signs (the lease is checked by
cases.complete, with fencing). A signed report never changes: every path below refuses it,
and the model's before_update guard catches any that forgets.

Double reading (ReportConfig.double_reading_services): signing the first report (`reading`
1) does not complete the case; it goes back to the queue, and another reader writes and
signs a second report (`reading` 2) that agrees or disagrees with the first. Only then is the
case complete, and the clinic sees both reports and their PDFs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from telehealth.archive.models import Patient, Study
from telehealth.auth import service as auth
from telehealth.auth.models import Role, User
from telehealth.cases import service as cases
from telehealth.cases.models import (
    OPEN_STATUSES,
    Case,
    CaseEvent,
    CaseEventKind,
    CaseStatus,
    ReadingGroup,
)
from telehealth.institutions.models import Institution
from telehealth.reports.models import (
    Addendum,
    CriticalCategory,
    CriticalResult,
    Report,
    ReportDocument,
    ReportSigned,
    ReportStatus,
)
from telehealth.reports.service.common import (
    DocumentNotReady,
    InvalidReport,
    ReportContext,
    ReportNotFound,
    SameReader,
    history,
    holds_claim,
)
from telehealth.reports.service.pdf import Sheet, render_pdf
from telehealth.reports.service.templates import (
    get_template,
    initial_values,
    list_templates,
    validate_values,
)

_DEFAULT_TEMPLATE = "general"


class NotSigned(DocumentNotReady):
    """An addendum needs a signed report to amend."""


@dataclass(frozen=True)
class ReportDraft:
    """What a reader writes; None leaves a part as it is."""

    template: str | None = None
    values: dict[str, Any] | None = None
    findings: str | None = None
    impression: str | None = None


@dataclass(frozen=True)
class CriticalFlag:
    category: CriticalCategory
    note: str = ""


@dataclass(frozen=True)
class SecondOpinion:
    """The second reader's verdict on the first report; a disagreement says why."""

    agrees: bool
    note: str = ""


@dataclass
class ReportView:
    report: Report
    case: Case
    author: str | None
    signed_by: str | None
    addenda: list[tuple[Addendum, str | None]] = field(default_factory=list)
    critical_results: list[CriticalResult] = field(default_factory=list)
    documents: list[ReportDocument] = field(default_factory=list)
    disagreement_note: str | None = None  # a second reading that disagrees: why


# --- scope ------------------------------------------------------------------------------------


def _reader_case(session: Session, actor: auth.Actor, case_id: int, action: str) -> Case:
    """A case the actor may report on: SIGN_REPORTS and the case in his scope (else 404)."""
    auth.require(actor, auth.Permission.SIGN_REPORTS)
    return cases.get_case(session, actor, case_id, action=action, for_update=True)


def _current(session: Session, case_id: int) -> Report | None:
    return session.scalar(
        select(Report).where(Report.case_id == case_id).order_by(Report.reading.desc()).limit(1)
    )


def _claimed(case: Case, actor: auth.Actor, rctx: ReportContext, lease_token: int | None) -> None:
    if not holds_claim(case, actor, rctx.now(), lease_token):
        raise cases.LeaseExpired(f"you no longer hold case {case.id}; claim it again")


def _awaits_second_reading(case: Case, report: Report | None) -> bool:
    """The first report is signed but the case is still open: double reading under way."""
    return (
        report is not None
        and report.reading == 1
        and report.status == ReportStatus.SIGNED
        and case.status in OPEN_STATUSES
    )


def _first_report(session: Session, case_id: int) -> Report | None:
    return session.scalar(select(Report).where(Report.case_id == case_id, Report.reading == 1))


def _not_the_first_reader(session: Session, actor: auth.Actor, case: Case) -> Report:
    """The first report, when the actor did not write or sign it. Raises SameReader."""
    first = _first_report(session, case.id)
    assert first is not None
    if actor.user_id in (first.author_id, first.signed_by_id):
        raise SameReader(f"you read case {case.id} first; the second reading is another's")
    return first


# --- writing ----------------------------------------------------------------------------------


def save_draft(
    session: Session,
    actor: auth.Actor,
    case_id: int,
    draft: ReportDraft,
    *,
    lease_token: int | None,
    rctx: ReportContext,
) -> Report:
    """Start the case's report from a template, or change a draft or preliminary one.

    Raises CaseNotFound, NotPermitted, LeaseExpired, ReportSigned, TemplateNotFound,
    InvalidReport.
    """
    case = _reader_case(session, actor, case_id, "report.write")
    report = _current(session, case_id)
    reading = 1
    first: Report | None = None
    if _awaits_second_reading(case, report):
        first = _not_the_first_reader(session, actor, case)
        report, reading = None, 2  # the second reader starts a report of his own
    elif report is not None and report.status == ReportStatus.SIGNED:
        raise ReportSigned(f"the report of case {case_id} is signed; add an addendum")
    _claimed(case, actor, rctx, lease_token)
    now = rctx.now()
    created = report is None
    if report is None or (draft.template and draft.template != report.template_code):
        default = first.template_code if first is not None else _default_template(case)
        template = get_template(draft.template or default)
        defs = [f.as_dict() for f in template.fields]
        values = initial_values(session, template, case)
        if report is not None:  # keep what still fits the new template
            keys = {d["key"] for d in defs}
            values |= {k: v for k, v in report.values.items() if k in keys}
        if report is None:
            report = Report(
                case_id=case.id,
                reading=reading,
                status=ReportStatus.DRAFT,
                author_id=actor.user_id,
                created_at=now,
                findings=template.findings,
                impression=template.impression,
                values={},
            )
            session.add(report)
        report.template_code = template.code
        report.title = template.title
        report.title_en = template.title_en
        report.field_defs = defs
        report.values = values
    assert report is not None
    if draft.values is not None:
        report.values = {**report.values, **validate_values(report.field_defs, draft.values)}
    if draft.findings is not None:
        report.findings = draft.findings
    if draft.impression is not None:
        report.impression = draft.impression
    report.author_id = actor.user_id or report.author_id
    report.updated_at = now
    session.flush()
    history(
        session,
        case,
        actor,
        now,
        "report.created" if created else "report.saved",
        report_id=report.id,
        reading=report.reading,
        template=report.template_code,
    )
    auth.audit(session, actor, "report.write", object_type="report", object_id=str(report.id))
    return report


def _default_template(case: Case) -> str:
    found = list_templates(case.service)
    return found[0].code if found else _DEFAULT_TEMPLATE


def issue_preliminary(
    session: Session,
    actor: auth.Actor,
    case_id: int,
    *,
    lease_token: int | None,
    rctx: ReportContext,
) -> Report:
    """Issue the report to the clinic before signing (初步报告). Raises as `sign`."""
    case = _reader_case(session, actor, case_id, "report.preliminary")
    report = _report_to_sign(session, actor, case)
    if report.reading > 1:
        # The clinic sees the two readings together once both are signed, never one alone.
        raise InvalidReport("a second reading is signed, not issued as preliminary")
    cases.complete(session, actor, case_id, final=False, lease_token=lease_token, ctx=rctx.cases)
    now = rctx.now()
    report.status = ReportStatus.PRELIMINARY
    report.preliminary_at = now
    report.updated_at = now
    session.flush()
    history(session, case, actor, now, "report.preliminary", report_id=report.id)
    auth.audit(session, actor, "report.preliminary", object_type="report", object_id=str(report.id))
    return report


def _report_to_sign(session: Session, actor: auth.Actor, case: Case) -> Report:
    report = _current(session, case.id)
    if report is None:
        raise ReportNotFound(f"case {case.id} has no report yet")
    if _awaits_second_reading(case, report):
        _not_the_first_reader(session, actor, case)
        raise ReportNotFound(f"case {case.id} awaits a second reading; write it first")
    if report.status == ReportStatus.SIGNED:
        raise ReportSigned(f"the report of case {case.id} is signed; add an addendum")
    if not report.impression.strip():
        raise InvalidReport("a report is signed with an impression (印象)")
    return report


def sign(
    session: Session,
    actor: auth.Actor,
    case_id: int,
    *,
    lease_token: int | None,
    rctx: ReportContext,
    critical: CriticalFlag | None = None,
    opinion: SecondOpinion | None = None,
) -> Report:
    """Sign the case's report: final, immutable, rendered to a PDF for the study.

    With double reading, the first signature puts the case back in the queue for another
    reader and makes no PDF yet; the second report needs `opinion` and completes the case,
    rendering both. The documents go into the archive after the transaction commits
    (`store_pending_documents`). Raises CaseNotFound, NotPermitted, ReportNotFound,
    ReportSigned, InvalidReport, SameReader, LeaseExpired (lapsed lease, or another reader's
    claim).
    """
    from telehealth.reports.service.critical import flag_critical

    case = _reader_case(session, actor, case_id, "report.sign")
    report = _report_to_sign(session, actor, case)
    first: Report | None = None
    if report.reading > 1:
        first = _not_the_first_reader(session, actor, case)
        if opinion is None:
            raise InvalidReport("the second reading says whether it agrees with the first")
        if not opinion.agrees and not opinion.note.strip():
            raise InvalidReport("a disagreeing second reading says why (note)")
    elif opinion is not None:
        raise InvalidReport("only a second reading gives a verdict on the first")
    double = first is None and case.service in rctx.config.double_reading_services
    # The lease decides who signs (fencing); everything below happens only if it holds.
    if double:
        _claimed(case, actor, rctx, lease_token)  # a live lease; `release` fences the token
    else:
        cases.complete(session, actor, case_id, final=True, lease_token=lease_token, ctx=rctx.cases)
    now = rctx.now()
    if critical is not None:
        flag_critical(session, actor, case, critical, rctx, report=report)
    report.status = ReportStatus.SIGNED
    report.signed_by_id = actor.user_id
    report.signed_at = now
    report.updated_at = now
    if opinion is not None:
        report.agrees = opinion.agrees
    session.flush()
    if double:
        history(session, case, actor, now, "report.signed", report_id=report.id, reading=1)
        # Back to the queue for a reader of the group other than this one (cases.claim
        # refuses him). The deadline keeps running: the clinic waits for both readings.
        cases.release(session, actor, case_id, lease_token, rctx.cases)
        history(session, case, None, now, "report.second_reading", report_id=report.id)
        auth.audit(session, actor, "report.sign", object_type="report", object_id=str(report.id))
        return report
    if first is not None and opinion is not None and not opinion.agrees:
        # Before the PDF: the second report prints the reason from this row.
        history(
            session,
            case,
            actor,
            now,
            "report.disagreed",
            report_id=report.id,
            first_report_id=first.id,
            note=opinion.note,
        )
    # The clinic gets the readings together: the first one's PDF is made only now.
    signed = [first, report] if first is not None else [report]
    documents = [
        _document(session, case, r, rctx, series_instance_uid=generate_uid()) for r in signed
    ]
    history(
        session,
        case,
        actor,
        now,
        "report.signed",
        report_id=report.id,
        reading=report.reading,
        agrees=report.agrees,
        sop_instance_uid=documents[-1].sop_instance_uid,
    )
    auth.audit(session, actor, "report.sign", object_type="report", object_id=str(report.id))
    return report


def add_addendum(
    session: Session, actor: auth.Actor, case_id: int, text: str, *, rctx: ReportContext
) -> Addendum:
    """A signed correction to a signed report, with a new PDF in the report's series.

    Needs no claim: the case is closed. Raises CaseNotFound, NotPermitted, NotSigned,
    InvalidReport.
    """
    auth.require(actor, auth.Permission.SIGN_REPORTS)
    case = cases.get_case(session, actor, case_id, action="report.addendum", for_update=True)
    report = _current(session, case_id)
    # A first reading waiting for its second is not yet the clinic's to receive amended.
    if (
        report is None
        or report.status != ReportStatus.SIGNED
        or _awaits_second_reading(case, report)
    ):
        raise NotSigned(f"case {case_id} has no signed report to amend")
    if not text.strip():
        raise InvalidReport("an addendum needs text")
    now = rctx.now()
    addendum = Addendum(report_id=report.id, text=text, signed_by_id=actor.user_id, signed_at=now)
    session.add(addendum)
    session.flush()
    first = session.scalar(
        select(ReportDocument)
        .where(ReportDocument.report_id == report.id)
        .order_by(ReportDocument.id)
        .limit(1)
    )
    series = first.series_instance_uid if first is not None else generate_uid()
    document = _document(session, case, report, rctx, series_instance_uid=series, addendum=addendum)
    history(
        session,
        case,
        actor,
        now,
        "report.addendum",
        report_id=report.id,
        addendum_id=addendum.id,
        sop_instance_uid=document.sop_instance_uid,
    )
    auth.audit(session, actor, "report.addendum", object_type="report", object_id=str(report.id))
    return addendum


# --- reading ----------------------------------------------------------------------------------


def _visible_case(session: Session, actor: auth.Actor, case_id: int, action: str) -> Case:
    auth.require(actor, auth.Permission.VIEW_REPORTS)
    return cases.get_case(session, actor, case_id, action=action)


def _clinic_sees(actor: auth.Actor, case: Case, report: Report) -> bool:
    """The clinic sees issued reports only (preliminary, signed), never a reader's draft,
    and a double reading only once both readings are signed."""
    if actor.role != Role.TECHNICIAN:
        return True
    if report.status == ReportStatus.DRAFT:
        return False
    under_way = report.reading > 1 or report.status == ReportStatus.SIGNED
    return not (under_way and case.status in OPEN_STATUSES)


def list_reports(session: Session, actor: auth.Actor, case_id: int) -> list[ReportView]:
    """The case's reports the actor may see (first and second reading). Raises CaseNotFound."""
    case = _visible_case(session, actor, case_id, "report.list")
    rows = session.scalars(select(Report).where(Report.case_id == case_id).order_by(Report.reading))
    views = [_view(session, case, r) for r in rows if _clinic_sees(actor, case, r)]
    auth.audit(session, actor, "report.list", object_type="case", object_id=str(case_id))
    return views


def get_report(session: Session, actor: auth.Actor, case_id: int) -> ReportView:
    """The case's current report. Raises CaseNotFound, ReportNotFound."""
    case = _visible_case(session, actor, case_id, "report.read")
    report = _current(session, case_id)
    if report is None or not _clinic_sees(actor, case, report):
        raise ReportNotFound(f"case {case_id} has no report yet")
    auth.audit(session, actor, "report.read", object_type="report", object_id=str(report.id))
    return _view(session, case, report)


def report_pdf(session: Session, actor: auth.Actor, case_id: int) -> tuple[Report, bytes]:
    """The newest signed PDF (with addenda so far). Raises CaseNotFound, DocumentNotReady."""
    case = _visible_case(session, actor, case_id, "report.pdf")
    doc = session.scalar(
        select(ReportDocument)
        .join(Report, Report.id == ReportDocument.report_id)
        .where(Report.case_id == case.id)
        .order_by(ReportDocument.id.desc())
        .limit(1)
    )
    if doc is None:
        raise DocumentNotReady(f"case {case_id} has no signed report yet")
    report = session.get(Report, doc.report_id)
    assert report is not None
    auth.audit(session, actor, "report.pdf", object_type="report", object_id=str(report.id))
    return report, doc.pdf


def _view(session: Session, case: Case, report: Report) -> ReportView:
    names = _names(session)
    addenda = session.scalars(
        select(Addendum).where(Addendum.report_id == report.id).order_by(Addendum.id)
    )
    return ReportView(
        disagreement_note=_disagreement(session, report),
        report=report,
        case=case,
        author=names(report.author_id),
        signed_by=names(report.signed_by_id),
        addenda=[(a, names(a.signed_by_id)) for a in addenda],
        critical_results=list(
            session.scalars(
                select(CriticalResult)
                .where(CriticalResult.case_id == case.id)
                .order_by(CriticalResult.id)
            )
        ),
        documents=list(
            session.scalars(
                select(ReportDocument)
                .where(ReportDocument.report_id == report.id)
                .order_by(ReportDocument.id)
            )
        ),
    )


def _disagreement(session: Session, report: Report) -> str | None:
    """Why a second reading disagrees: its note lives in the case's history (report.disagreed)."""
    if report.agrees is not False:
        return None
    events = session.scalars(
        select(CaseEvent).where(
            CaseEvent.case_id == report.case_id,
            CaseEvent.kind == CaseEventKind.REPORT_DISAGREED,
        )
    )
    notes = [e.detail.get("note", "") for e in events if e.detail.get("report_id") == report.id]
    return notes[-1] if notes else ""


def _names(session: Session) -> Any:
    cache: dict[int, str] = {}

    def name(user_id: int | None) -> str | None:
        if user_id is None:
            return None
        if user_id not in cache:
            user = session.get(User, user_id)
            cache[user_id] = (user.display_name or user.username) if user else str(user_id)
        return cache[user_id]

    return name


# --- the document -----------------------------------------------------------------------------


def _document(
    session: Session,
    case: Case,
    report: Report,
    rctx: ReportContext,
    *,
    series_instance_uid: str,
    addendum: Addendum | None = None,
) -> ReportDocument:
    pdf = render_pdf(_sheet(session, case, report, rctx), font_path=rctx.config.font_path)
    number = (
        session.scalar(
            select(func.count())
            .select_from(ReportDocument)
            .where(ReportDocument.report_id == report.id)
        )
        or 0
    ) + 1
    doc = ReportDocument(
        report_id=report.id,
        addendum_id=addendum.id if addendum else None,
        pdf=pdf,
        sha256=hashlib.sha256(pdf).hexdigest(),
        series_instance_uid=series_instance_uid,
        sop_instance_uid=generate_uid(),
        instance_number=number,
        created_at=rctx.now(),
    )
    session.add(doc)
    session.flush()
    return doc


def _local(at: datetime | None, rctx: ReportContext) -> str:
    if at is None:
        return ""
    return at.astimezone(rctx.cases.config.timezone).strftime("%Y-%m-%d %H:%M")


def _sheet(session: Session, case: Case, report: Report, rctx: ReportContext) -> Sheet:
    study = session.get(Study, case.study_pk)
    assert study is not None
    patient = session.get(Patient, study.patient_pk)
    assert patient is not None
    clinic = session.get(Institution, case.institution_id)
    group = session.get(ReadingGroup, case.group_id) if case.group_id else None
    hospital = session.get(Institution, group.institution_id) if group else None
    names = _names(session)
    fields: list[tuple[str, str]] = []
    for spec in report.field_defs:
        value = report.values.get(spec["key"])
        if value is None or value == "":
            continue
        unit = f" {spec['unit']}" if spec.get("unit") else ""
        label = f"{spec['label']} {spec['label_en']}".strip()
        fields.append((label, f"{value}{unit}"))
    criticals = session.scalars(
        select(CriticalResult).where(CriticalResult.case_id == case.id).order_by(CriticalResult.id)
    )
    addenda = session.scalars(
        select(Addendum).where(Addendum.report_id == report.id).order_by(Addendum.id)
    )
    sex = {"M": "男 M", "F": "女 F"}.get(patient.sex, patient.sex)
    return Sheet(
        title=report.title,
        title_en=report.title_en,
        hospital=hospital.name if hospital else "",
        clinic=clinic.name if clinic else "",
        patient=[
            ("姓名 Name", patient.name.replace("^", " ").strip()),
            ("患者编号 Patient ID", patient.patient_id),
            ("性别 Sex", sex),
            ("出生日期 Birth date", patient.birth_date),
            ("检查日期 Study date", study.study_date),
            ("检查 Study", study.description),
            ("检查号 Accession", study.accession_number),
            ("临床病史 Clinical history", case.clinical_history),
            ("检查目的 Question", case.question),
        ],
        fields=fields,
        findings=report.findings,
        impression=report.impression,
        signed=f"报告医师 Signed by: {names(report.signed_by_id)}  "
        f"{_local(report.signed_at, rctx)}",
        critical=[f"{c.category}: {c.note}" for c in criticals],
        addenda=[
            (f"签名 Signed by: {names(a.signed_by_id)}  {_local(a.signed_at, rctx)}", a.text)
            for a in addenda
        ],
        status="" if case.status == CaseStatus.SIGNED else str(report.status),
        second_reading=_verdict_line(session, report),
    )


def _verdict_line(session: Session, report: Report) -> str:
    if report.agrees is None:
        return ""
    if report.agrees:
        return "复核意见 Second reading: 同意初读报告 agrees with the first report"
    note = _disagreement(session, report) or ""
    return f"复核意见 Second reading: 不同意初读报告 disagrees with the first report: {note}"
