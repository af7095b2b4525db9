"""Login, logout, who am I; user administration; the audit trail for admins."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from telehealth.auth import service
from telehealth.auth.models import AuditEvent, AuditOutcome, User
from telehealth.auth.schemas import (
    AuditEventOut,
    LoginIn,
    LoginOut,
    MeOut,
    PasswordResetIn,
    UserIn,
    UserOut,
    UserUpdateIn,
)
from telehealth.deps import SESSION_COOKIE, CurrentActor, HubDep, SessionDep, client_address
from telehealth.institutions.models import Institution

router = APIRouter(prefix="/api", tags=["auth"])
# A changed field's name → the request field holding its new value.
_FIELD = {"role": "role", "institution": "institution_code", "active": "active"}


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
def me(actor: CurrentActor, session: SessionDep) -> MeOut:
    user = session.get(User, actor.user_id)
    assert user is not None
    institution = session.get(Institution, user.institution_id)
    assert institution is not None
    return MeOut(
        **UserOut.model_validate(user).model_dump(),
        institution_code=institution.code,
        institution_name=institution.name,
        permissions=sorted(service.ROLE_PERMISSIONS[user.role]),
    )


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


@router.patch("/users/{user_id}")
def update_user(
    user_id: int, body: UserUpdateIn, actor: CurrentActor, session: SessionDep, hub: HubDep
) -> UserOut:
    """Change a user's display name, role, institution, or active flag (admins)."""
    fields = body.model_dump(exclude_unset=True)
    user, changed = service.update_user(session, actor, user_id, **fields, clock=hub.clock)
    if changed:
        service.audit(
            session,
            actor,
            "user.update",
            object_type="user",
            object_id=user.username,
            # New values, except the display name (free text; the current one is on the user).
            detail=", ".join(
                name if name == "display_name" else f"{name}={fields[_FIELD[name]]}"
                for name in changed
            ),
        )
    return UserOut.model_validate(user)


@router.post("/users/{user_id}/password", status_code=204)
def reset_password(
    user_id: int, body: PasswordResetIn, actor: CurrentActor, session: SessionDep, hub: HubDep
) -> None:
    """Set a new password for a user (admins); the user's sessions end."""
    user = service.reset_password(session, actor, user_id, body.password, clock=hub.clock)
    service.audit(
        session, actor, "user.password_reset", object_type="user", object_id=user.username
    )


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
