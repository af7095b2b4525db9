"""Reading requests, the worklist (also live over a WebSocket), claims, the routing table."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Depends, Query, Response, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from telehealth.auth import service as auth
from telehealth.cases import service
from telehealth.cases.models import CasePriority, CaseService, CaseStatus
from telehealth.cases.schemas import (
    AssignIn,
    CancelIn,
    CaseEventOut,
    CaseList,
    CaseOut,
    CaseRequestIn,
    CaseUpdateIn,
    ClaimOut,
    ConditionsIn,
    DeadlineIn,
    DeadlineOut,
    GroupIn,
    GroupOut,
    LeaseIn,
    LoadOut,
    NotificationOut,
    PriorStudyOut,
    RuleIn,
    RuleOut,
)
from telehealth.db import transaction
from telehealth.deps import SESSION_COOKIE, CurrentActor, HubDep, SessionDep
from telehealth.errors import DomainError
from telehealth.hub import Hub

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["cases"])


def _context(hub: HubDep) -> service.CaseContext:
    return hub.cases


ContextDep = Annotated[service.CaseContext, Depends(_context)]


def _case_out(row: service.CaseRow, ctx: service.CaseContext) -> CaseOut:
    case = row.case
    open_ = case.status not in (CaseStatus.SIGNED, CaseStatus.CANCELLED)
    return CaseOut(
        id=case.id,
        status=case.status,
        priority=case.priority,
        triage_reason=case.triage_reason,
        service=case.service,
        origin=case.origin,
        study_instance_uid=row.study_instance_uid,
        patient_id=row.patient_id,
        patient_name=row.patient_name,
        patient_sex=row.patient_sex,
        patient_birth_date=row.patient_birth_date,
        prior_studies=row.prior_studies,
        study_date=row.study_date,
        study_description=row.study_description,
        modalities=row.modalities,
        institution_id=case.institution_id,
        institution_code=row.institution_code,
        institution_name=row.institution_name,
        clinical_history=case.clinical_history,
        question=case.question,
        group_id=case.group_id,
        group_code=row.group_code,
        claim_holder=row.claim_holder,
        lease_expires_at=case.lease_expires_at,
        due_at=case.due_at,
        overdue=open_ and case.due_at <= ctx.now(),
        escalation_level=case.escalation_level,
        created_at=case.created_at,
        updated_at=case.updated_at,
        closed_at=case.closed_at,
    )


def _case_list(
    page: service.CasePage, ctx: service.CaseContext, limit: int, offset: int
) -> CaseList:
    return CaseList(
        total=page.total,
        limit=limit,
        offset=offset,
        counts=page.counts,
        items=[_case_out(r, ctx) for r in page.rows],
    )


def _filters(
    status: list[CaseStatus] | None = Query(None, description="repeat for several"),
    priority: CasePriority | None = None,
    service_: CaseService | None = Query(None, alias="service"),
    modality: str | None = Query(None, max_length=16),
    institution_id: int | None = Query(None, description="the requesting clinic"),
    group_id: int | None = None,
    unrouted: bool = Query(False, description="only cases in no group (admins' fallback)"),
) -> service.CaseFilter:
    return service.CaseFilter(
        statuses=tuple(status) if status else None,
        priority=priority,
        service=service_,
        modality=modality,
        institution_id=institution_id,
        group_id=group_id,
        unrouted=unrouted,
    )


FiltersDep = Annotated[service.CaseFilter, Depends(_filters)]

# --- cases -----------------------------------------------------------------------------------


@router.post("/cases", status_code=201)
def request_reading(
    body: CaseRequestIn, actor: CurrentActor, session: SessionDep, ctx: ContextDep
) -> CaseOut:
    """Attach a reading request to a study of the technician's institution."""
    request = service.ReadingRequest(**body.model_dump())
    case = service.request_reading(session, actor, request, ctx)
    return _case_out(service.read_case(session, actor, case.id), ctx)


@router.get("/cases")
def list_cases(
    actor: CurrentActor,
    session: SessionDep,
    ctx: ContextDep,
    filters: FiltersDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> CaseList:
    """The cases the user may see, newest first: a clinic's requests, a reader's cases."""
    page = service.list_cases(session, actor, filters, limit=limit, offset=offset)
    return _case_list(page, ctx, limit, offset)


@router.get("/cases/{case_id}")
def read_case(case_id: int, actor: CurrentActor, session: SessionDep, ctx: ContextDep) -> CaseOut:
    return _case_out(service.read_case(session, actor, case_id), ctx)


@router.patch("/cases/{case_id}")
def update_case(
    case_id: int, body: CaseUpdateIn, actor: CurrentActor, session: SessionDep, ctx: ContextDep
) -> CaseOut:
    service.update_case(session, actor, case_id, service.CaseChanges(**body.model_dump()), ctx)
    return _case_out(service.read_case(session, actor, case_id), ctx)


@router.post("/cases/{case_id}/cancel")
def cancel_case(
    case_id: int,
    actor: CurrentActor,
    session: SessionDep,
    ctx: ContextDep,
    body: CancelIn | None = None,
) -> CaseOut:
    service.cancel_case(session, actor, case_id, body.reason if body else "", ctx)
    return _case_out(service.read_case(session, actor, case_id), ctx)


@router.get("/cases/{case_id}/events")
def case_history(case_id: int, actor: CurrentActor, session: SessionDep) -> list[CaseEventOut]:
    return [CaseEventOut.model_validate(e) for e in service.case_history(session, actor, case_id)]


@router.get("/cases/{case_id}/priors")
def prior_studies(case_id: int, actor: CurrentActor, session: SessionDep) -> list[PriorStudyOut]:
    """Earlier studies of the case's patient that the user may open, newest first."""
    return [PriorStudyOut.model_validate(p) for p in service.prior_studies(session, actor, case_id)]


@router.post("/cases/{case_id}/claim")
def claim_case(case_id: int, actor: CurrentActor, session: SessionDep, ctx: ContextDep) -> ClaimOut:
    return ClaimOut.model_validate(service.claim(session, actor, case_id, ctx))


@router.post("/cases/{case_id}/renew")
def renew_claim(
    case_id: int,
    actor: CurrentActor,
    session: SessionDep,
    ctx: ContextDep,
    body: LeaseIn | None = None,
) -> ClaimOut:
    token = body.lease_token if body else None
    return ClaimOut.model_validate(service.renew(session, actor, case_id, token, ctx))


@router.post("/cases/{case_id}/release")
def release_claim(
    case_id: int,
    actor: CurrentActor,
    session: SessionDep,
    ctx: ContextDep,
    body: LeaseIn | None = None,
) -> CaseOut:
    service.release(session, actor, case_id, body.lease_token if body else None, ctx)
    return _case_out(service.read_case(session, actor, case_id), ctx)


@router.post("/cases/{case_id}/assign")
def assign_case(
    case_id: int, body: AssignIn, actor: CurrentActor, session: SessionDep, ctx: ContextDep
) -> CaseOut:
    """Admins: move the case to a group and/or hand it to one of its readers."""
    service.assign(session, actor, case_id, group_id=body.group_id, user=body.user, ctx=ctx)
    return _case_out(service.read_case(session, actor, case_id), ctx)


# --- the worklist ----------------------------------------------------------------------------


@router.get("/worklist")
def worklist(
    actor: CurrentActor,
    session: SessionDep,
    ctx: ContextDep,
    filters: FiltersDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> CaseList:
    """The reader's queue: open cases of his groups, by priority, then due time."""
    page = service.worklist(session, actor, filters, limit=limit, offset=offset)
    return _case_list(page, ctx, limit, offset)


@router.post("/worklist/next", response_model=None)
def claim_next(actor: CurrentActor, session: SessionDep, ctx: ContextDep) -> ClaimOut | Response:
    """Claim the first free case of the reader's queue; 204 when the queue is empty."""
    claim = service.claim_next(session, actor, ctx)
    if claim is None:
        return Response(status_code=204)
    return ClaimOut.model_validate(claim)


# WebSocket close codes (RFC 6455 §7.4.2 leaves 4000–4999 to applications).
WS_UNAUTHENTICATED = 4401
WS_FORBIDDEN = 4403
_AUTH_WAIT_SECONDS = 10.0
# How often a live connection re-checks its token (logout, disabled user) and groups.
REVALIDATE_SECONDS = 60.0


def _open_live(hub: Hub, token: str, address: str) -> tuple[auth.Actor, service.Viewer]:
    with transaction(hub.factory) as session:
        user = auth.user_for_token(session, token, hub.secret, clock=hub.clock)
        actor = auth.actor_for(user, address)
        return actor, service.live_viewer(session, actor)


def _revalidate(hub: Hub, token: str, address: str) -> service.Viewer:
    with transaction(hub.factory) as session:
        user = auth.user_for_token(session, token, hub.secret, clock=hub.clock)
        actor = auth.actor_for(user, address)
        auth.require(actor, auth.Permission.VIEW_CASES)
        groups = service.live_viewer(session, actor).group_ids
        return service.Viewer(actor.user_id or 0, user.role, user.institution_id, groups)


def _cross_site(websocket: WebSocket, hub: Hub) -> bool:
    """A browser sends the session cookie on a WebSocket from any page; only our own pages
    (and configured CORS origins) may use it (cross-site WebSocket hijacking)."""
    origin = websocket.headers.get("origin")
    if not origin or origin in hub.settings.cors_origins:
        return False
    return urlsplit(origin).netloc != websocket.headers.get("host", "")


async def _token(websocket: WebSocket, hub: Hub) -> str | None:
    """Browsers cannot set Authorization on a WebSocket: take the session cookie, a
    `token` query parameter, or a first message {"token": "..."}."""
    token = websocket.query_params.get("token")
    if token:
        return token
    cookie = websocket.cookies.get(SESSION_COOKIE)
    if cookie and not _cross_site(websocket, hub):
        return cookie
    try:
        first = await asyncio.wait_for(websocket.receive_json(), _AUTH_WAIT_SECONDS)
    except (TimeoutError, ValueError, KeyError, WebSocketDisconnect):
        return None
    value = first.get("token") if isinstance(first, dict) else None
    return value if isinstance(value, str) and value else None


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until it goes away: that is how we see it leave."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()


@router.websocket("/worklist/live")
async def worklist_live(websocket: WebSocket) -> None:
    """Pushes JSON messages ({"type": "case.claimed", "case_id": …}) for cases the user may
    see as they are created, routed, claimed, released, changed or escalated, and his
    notifications. Messages carry no patient data: refetch the worklist for that."""
    hub: Hub = websocket.app.state.hub
    await websocket.accept()
    address = websocket.client.host if websocket.client else ""
    token = await _token(websocket, hub)
    if token is None:
        await websocket.close(WS_UNAUTHENTICATED, "login required")
        return
    try:
        actor, viewer = await run_in_threadpool(_open_live, hub, token, address)
    except DomainError as exc:
        code = WS_UNAUTHENTICATED if isinstance(exc, auth.BadToken) else WS_FORBIDDEN
        await websocket.send_json({"type": "error", "error": type(exc).__name__})
        await websocket.close(code, type(exc).__name__)
        return
    subscription = hub.case_feed.attach(viewer, asyncio.get_running_loop())
    reader = asyncio.create_task(_drain(websocket))
    try:
        await websocket.send_json(
            {"type": "hello", "user": actor.name, "group_ids": sorted(viewer.group_ids)}
        )
        while True:
            getter = asyncio.create_task(subscription.queue.get())
            done, _ = await asyncio.wait(
                {getter, reader}, timeout=REVALIDATE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
            if reader in done:
                return
            if getter in done:
                message: dict[str, Any] = getter.result()
                if subscription.lagging:
                    subscription.lagging = False
                    await websocket.send_json({"type": "resync"})
                await websocket.send_json(message)
                continue
            try:
                fresh = await run_in_threadpool(_revalidate, hub, token, address)
            except DomainError as exc:
                await websocket.close(WS_UNAUTHENTICATED, type(exc).__name__)
                return
            hub.case_feed.replace_viewer(subscription, fresh)
    except WebSocketDisconnect:
        return
    finally:
        hub.case_feed.detach(subscription)
        reader.cancel()


# --- notifications ---------------------------------------------------------------------------


@router.get("/notifications")
def list_notifications(
    actor: CurrentActor,
    session: SessionDep,
    unread: bool = False,
    limit: int = Query(100, ge=1, le=1000),
) -> list[NotificationOut]:
    rows = service.list_notifications(session, actor, unread_only=unread, limit=limit)
    return [NotificationOut.model_validate(n) for n in rows]


@router.post("/notifications/{notification_id}/read")
def read_notification(
    notification_id: int, actor: CurrentActor, session: SessionDep, ctx: ContextDep
) -> NotificationOut:
    row = service.mark_notification_read(session, actor, notification_id, ctx)
    return NotificationOut.model_validate(row)


# --- the routing table (admins) --------------------------------------------------------------


def _group_out(view: service.GroupView) -> GroupOut:
    group = view.group
    return GroupOut(
        id=group.id,
        code=group.code,
        name=group.name,
        institution=view.institution,
        level=group.level,
        services=[CaseService(s) for s in group.services],
        lead=view.lead,
        members=view.members,
        enabled=group.enabled,
    )


def _rule_out(view: service.RuleView) -> RuleOut:
    rule = view.rule
    time = f"{rule.time_from}-{rule.time_to}" if rule.time_from and rule.time_to else None
    return RuleOut(
        id=rule.id,
        position=rule.position,
        name=rule.name,
        enabled=rule.enabled,
        group=view.group,
        when=ConditionsIn(
            modalities=rule.modalities,
            sop_classes=rule.sop_classes,
            body_parts=rule.body_parts,
            services=[CaseService(s) for s in rule.services] if rule.services is not None else None,
            priorities=(
                [CasePriority(p) for p in rule.priorities] if rule.priorities is not None else None
            ),
            institution=view.institution,
            time=time,
        ),
    )


@router.get("/routing/groups")
def list_groups(actor: CurrentActor, session: SessionDep) -> list[GroupOut]:
    return [_group_out(v) for v in service.list_groups(session, actor)]


@router.post("/routing/groups", status_code=201)
def create_group(
    body: GroupIn, actor: CurrentActor, session: SessionDep, ctx: ContextDep
) -> GroupOut:
    spec = service.as_spec(service.GroupSpec, body.model_dump())
    group = service.save_group(session, actor, spec, ctx)
    return _group_out(service.group_view(session, group))


@router.put("/routing/groups/{group_id}")
def replace_group(
    group_id: int, body: GroupIn, actor: CurrentActor, session: SessionDep, ctx: ContextDep
) -> GroupOut:
    spec = service.as_spec(service.GroupSpec, body.model_dump())
    group = service.save_group(session, actor, spec, ctx, group_id=group_id)
    return _group_out(service.group_view(session, group))


@router.delete("/routing/groups/{group_id}", status_code=204)
def delete_group(group_id: int, actor: CurrentActor, session: SessionDep) -> None:
    service.delete_group(session, actor, group_id)


@router.get("/routing/rules")
def list_rules(actor: CurrentActor, session: SessionDep) -> list[RuleOut]:
    return [_rule_out(v) for v in service.list_rules(session, actor)]


@router.post("/routing/rules", status_code=201)
def create_rule(body: RuleIn, actor: CurrentActor, session: SessionDep, ctx: ContextDep) -> RuleOut:
    rule = service.save_rule(
        session, actor, service.as_spec(service.RuleSpec, body.model_dump()), ctx
    )
    return _rule_out(service.rule_view(session, rule))


@router.put("/routing/rules/{rule_id}")
def replace_rule(
    rule_id: int, body: RuleIn, actor: CurrentActor, session: SessionDep, ctx: ContextDep
) -> RuleOut:
    spec = service.as_spec(service.RuleSpec, body.model_dump())
    rule = service.save_rule(session, actor, spec, ctx, rule_id=rule_id)
    return _rule_out(service.rule_view(session, rule))


@router.delete("/routing/rules/{rule_id}", status_code=204)
def delete_rule(rule_id: int, actor: CurrentActor, session: SessionDep) -> None:
    service.delete_rule(session, actor, rule_id)


@router.get("/routing/deadlines")
def list_deadlines(actor: CurrentActor, session: SessionDep) -> list[DeadlineOut]:
    return [DeadlineOut.model_validate(p) for p in service.list_deadlines(session, actor)]


@router.put("/routing/deadlines")
def replace_deadlines(
    body: list[DeadlineIn], actor: CurrentActor, session: SessionDep
) -> list[DeadlineOut]:
    specs = [service.as_spec(service.DeadlineSpec, d.model_dump()) for d in body]
    return [DeadlineOut.model_validate(p) for p in service.replace_deadlines(session, actor, specs)]


@router.post("/routing/file")
def load_routing_file(
    actor: CurrentActor,
    session: SessionDep,
    ctx: ContextDep,
    text: Annotated[str, Body(media_type="application/yaml", max_length=1_000_000)],
) -> LoadOut:
    """Apply a routing file (the YAML of `telehealth routing load`), all or nothing."""
    auth.require(actor, auth.Permission.MANAGE_ROUTING)
    report = service.load_routing(session, actor, service.parse_routing_file(text), ctx)
    return LoadOut(groups=report.groups, rules=report.rules, deadlines=report.deadlines)
