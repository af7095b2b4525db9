"""Login, logout, who am I; user administration; the audit trail for admins."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from telehealth.auth import service
from telehealth.auth.models import AuditEvent, AuditOutcome, User
from telehealth.auth.schemas import AuditEventOut, LoginIn, LoginOut, UserIn, UserOut
from telehealth.deps import SESSION_COOKIE, CurrentActor, HubDep, SessionDep, client_address

router = APIRouter(prefix="/api", tags=["auth"])


@router.post("/auth/login")
def login(
    body: LoginIn, request: Request, response: Response, hub: HubDep, session: SessionDep
) -> LoginOut:
    address = client_address(request)
    try:
        user = service.authenticate(session, body.username, body.password)
    except service.BadCredentials:
        service.audit(
            session,
            None,
            "auth.login",
            outcome=AuditOutcome.DENIED,
            object_type="user",
            object_id=body.username,
            address=address,
        )
        raise
    token = service.issue_token(user, hub.secret, ttl=hub.token_ttl, clock=hub.clock)
    service.audit(session, service.actor_for(user, address), "auth.login", object_type="user")
    max_age = int(hub.token_ttl.total_seconds())
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=hub.settings.cookie_secure,
        path="/",
    )
    return LoginOut(access_token=token, expires_in=max_age, user=UserOut.model_validate(user))


@router.post("/auth/logout", status_code=204)
def logout(actor: CurrentActor, session: SessionDep, hub: HubDep, response: Response) -> None:
    """Void every token of this user (all devices) and clear the cookie."""
    user = session.get(User, actor.user_id)
    assert user is not None
    service.revoke_tokens(session, user, clock=hub.clock)
    service.audit(session, actor, "auth.logout", object_type="user")
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get("/auth/me")
def me(actor: CurrentActor, session: SessionDep) -> UserOut:
    return UserOut.model_validate(session.get(User, actor.user_id))


@router.get("/users")
def list_users(actor: CurrentActor, session: SessionDep) -> list[UserOut]:
    service.require(actor, service.Permission.ADMINISTER)
    return [UserOut.model_validate(u) for u in session.scalars(select(User).order_by(User.id))]


@router.post("/users", status_code=201)
def create_user(body: UserIn, actor: CurrentActor, session: SessionDep, hub: HubDep) -> UserOut:
    service.require(actor, service.Permission.ADMINISTER)
    user = service.create_user(
        session,
        username=body.username,
        password=body.password,
        role=body.role,
        institution_code=body.institution_code,
        display_name=body.display_name,
        clock=hub.clock,
    )
    service.audit(session, actor, "user.create", object_type="user", object_id=user.username)
    return UserOut.model_validate(user)


@router.get("/audit")
def list_audit(
    actor: CurrentActor,
    session: SessionDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> list[AuditEventOut]:
    service.require(actor, service.Permission.ADMINISTER)
    events = session.scalars(
        select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
    )
    return [AuditEventOut.model_validate(e) for e in events]
