"""Reports on cases, their PDF, templates, critical results and their acknowledgement."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from telehealth.auth import service as auth
from telehealth.db import transaction
from telehealth.deps import ActorOutsideSession, CurrentActor, HubDep, SessionDep
from telehealth.reports import service
from telehealth.reports.models import CriticalStatus
from telehealth.reports.schemas import (
    AcknowledgeIn,
    AddendumIn,
    AddendumOut,
    CriticalIn,
    CriticalOut,
    DocumentOut,
    ReportDraftIn,
    ReportOut,
    SignIn,
    TemplateFieldOut,
    TemplateOut,
)

router = APIRouter(prefix="/api", tags=["reports"])


def _context(hub: HubDep) -> service.ReportContext:
    return hub.reports


ContextDep = Annotated[service.ReportContext, Depends(_context)]


def _out(view: service.ReportView) -> ReportOut:
    r = view.report
    return ReportOut(
        id=r.id,
        case_id=r.case_id,
        reading=r.reading,
        status=r.status,
        template_code=r.template_code,
        title=r.title,
        title_en=r.title_en,
        fields=[TemplateFieldOut(**d) for d in r.field_defs],
        values=r.values,
        findings=r.findings,
        impression=r.impression,
        author_id=r.author_id,
        author=view.author,
        created_at=r.created_at,
        updated_at=r.updated_at,
        preliminary_at=r.preliminary_at,
        signed_by_id=r.signed_by_id,
        signed_by=view.signed_by,
        signed_at=r.signed_at,
        agrees=r.agrees,
        disagreement_note=view.disagreement_note,
        addenda=[
            AddendumOut(
                id=a.id,
                text=a.text,
                signed_by_id=a.signed_by_id,
                signed_by=n,
                signed_at=a.signed_at,
            )
            for a, n in view.addenda
        ],
        critical_results=[CriticalOut.model_validate(c) for c in view.critical_results],
        documents=[DocumentOut.model_validate(d) for d in view.documents],
    )


@router.get("/report-templates")
def list_templates(actor: CurrentActor) -> list[TemplateOut]:
    auth.require(actor, auth.Permission.VIEW_REPORTS)
    return [
        TemplateOut(
            code=t.code,
            service=str(t.service),
            title=t.title,
            title_en=t.title_en,
            modalities=list(t.modalities),
            fields=[TemplateFieldOut(**f.as_dict()) for f in t.fields],
            findings=t.findings,
            impression=t.impression,
        )
        for t in service.list_templates()
    ]


@router.get("/cases/{case_id}/reports")
def list_reports(case_id: int, session: SessionDep, actor: CurrentActor) -> list[ReportOut]:
    return [_out(v) for v in service.list_reports(session, actor, case_id)]


@router.get("/cases/{case_id}/report")
def get_report(case_id: int, session: SessionDep, actor: CurrentActor) -> ReportOut:
    return _out(service.get_report(session, actor, case_id))


@router.get("/cases/{case_id}/report.pdf")
def get_report_pdf(case_id: int, session: SessionDep, actor: CurrentActor) -> Response:
    report, pdf = service.report_pdf(session, actor, case_id)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"content-disposition": f'inline; filename="report-{case_id}-{report.id}.pdf"'},
    )


@router.put("/cases/{case_id}/report")
def save_draft(
    case_id: int, body: ReportDraftIn, session: SessionDep, actor: CurrentActor, ctx: ContextDep
) -> ReportOut:
    draft = service.ReportDraft(
        template=body.template,
        values=body.values,
        findings=body.findings,
        impression=body.impression,
    )
    service.save_draft(session, actor, case_id, draft, lease_token=body.lease_token, rctx=ctx)
    return _out(service.get_report(session, actor, case_id))


@router.post("/cases/{case_id}/report/preliminary")
def issue_preliminary(
    case_id: int, body: SignIn, session: SessionDep, actor: CurrentActor, ctx: ContextDep
) -> ReportOut:
    service.issue_preliminary(session, actor, case_id, lease_token=body.lease_token, rctx=ctx)
    return _out(service.get_report(session, actor, case_id))


@router.post("/cases/{case_id}/report/sign")
def sign_report(
    case_id: int, body: SignIn, hub: HubDep, actor: ActorOutsideSession, ctx: ContextDep
) -> ReportOut:
    # Our own transactions (no request session: on SQLite it would hold the write lock), so
    # the document is ingested only after the signature committed.
    critical = (
        service.CriticalFlag(body.critical.category, body.critical.note) if body.critical else None
    )
    opinion = service.SecondOpinion(body.agrees, body.note) if body.agrees is not None else None
    with transaction(hub.factory) as session:
        service.sign(
            session,
            actor,
            case_id,
            lease_token=body.lease_token,
            rctx=ctx,
            critical=critical,
            opinion=opinion,
        )
    service.store_pending_documents(ctx)
    with transaction(hub.factory) as session:
        return _out(service.get_report(session, actor, case_id))


@router.post("/cases/{case_id}/report/addenda", status_code=status.HTTP_201_CREATED)
def add_addendum(
    case_id: int, body: AddendumIn, hub: HubDep, actor: ActorOutsideSession, ctx: ContextDep
) -> ReportOut:
    with transaction(hub.factory) as session:
        service.add_addendum(session, actor, case_id, body.text, rctx=ctx)
    service.store_pending_documents(ctx)
    with transaction(hub.factory) as session:
        return _out(service.get_report(session, actor, case_id))


@router.post("/cases/{case_id}/critical", status_code=status.HTTP_201_CREATED)
def flag_critical(
    case_id: int, body: CriticalIn, session: SessionDep, actor: CurrentActor, ctx: ContextDep
) -> CriticalOut:
    flag = service.CriticalFlag(body.category, body.note)
    return CriticalOut.model_validate(service.flag(session, actor, case_id, flag, rctx=ctx))


@router.get("/critical")
def list_critical(
    session: SessionDep,
    actor: CurrentActor,
    status_: Annotated[CriticalStatus | None, Query(alias="status")] = None,
) -> list[CriticalOut]:
    rows = service.list_critical(session, actor, status=status_)
    return [CriticalOut.model_validate(r) for r in rows]


@router.post("/critical/{result_id}/acknowledge")
def acknowledge(
    result_id: int, body: AcknowledgeIn, session: SessionDep, actor: CurrentActor, ctx: ContextDep
) -> CriticalOut:
    result = service.acknowledge(
        session, actor, result_id, method=body.method, note=body.note, rctx=ctx
    )
    return CriticalOut.model_validate(result)
