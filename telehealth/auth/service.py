"""Users, passwords, tokens, who may see what, and the audit trail."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from telehealth.auth.models import AuditEvent, AuditOutcome, Role, User
from telehealth.clock import SYSTEM_CLOCK, Clock
from telehealth.db import KEEP_ON_ROLLBACK
from telehealth.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from telehealth.institutions import service as institutions

_hasher = PasswordHasher()
# Checked when the user does not exist, so a wrong username costs as long as a wrong password
# and response times do not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password")
TOKEN_ALGORITHM = "HS256"  # noqa: S105
MIN_PASSWORD_LENGTH = 8


class BadCredentials(Unauthenticated):
    """Unknown user, wrong password, or a disabled account (one message for all three)."""


class BadToken(Unauthenticated):
    """The bearer token or session cookie is missing, forged, expired or revoked."""


class UserExists(Conflict): ...


class UserNotFound(NotFound): ...


class WeakPassword(Invalid): ...


class NotPermitted(Forbidden):
    """The actor's role does not allow this action."""


class Permission(StrEnum):
    VIEW_STUDIES = "view_studies"
    SEND_STUDIES = "send_studies"
    ADMINISTER = "administer"
    # Reading cases: which ones an actor sees is decided by scope (cases.visible_cases).
    VIEW_CASES = "view_cases"
    REQUEST_READING = "request_reading"
    READ_CASES = "read_cases"  # the reading worklist
    CLAIM_CASES = "claim_cases"
    ASSIGN_CASES = "assign_cases"
    MANAGE_ROUTING = "manage_routing"
    # Reports: which cases is decided by scope as for cases.
    VIEW_REPORTS = "view_reports"
    SIGN_REPORTS = "sign_reports"  # write, issue, sign, amend; flag critical results
    ACKNOWLEDGE_CRITICAL = "acknowledge_critical"  # the requesting clinic's confirmation
    # Consortium figures across every clinic: admins (Role.ADMIN holds every permission).
    VIEW_METRICS = "view_metrics"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.TECHNICIAN: frozenset(
        {
            Permission.VIEW_STUDIES,
            Permission.SEND_STUDIES,
            Permission.VIEW_CASES,
            Permission.REQUEST_READING,
            Permission.VIEW_REPORTS,
            Permission.ACKNOWLEDGE_CRITICAL,
        }
    ),
    Role.SPECIALIST: frozenset(
        {
            Permission.VIEW_STUDIES,
            Permission.VIEW_CASES,
            Permission.READ_CASES,
            Permission.CLAIM_CASES,
            Permission.VIEW_REPORTS,
            Permission.SIGN_REPORTS,
        }
    ),
    Role.CONSULT_DOCTOR: frozenset({Permission.VIEW_STUDIES}),
    Role.ADMIN: frozenset(Permission),
}


# A DICOM application entity (a modality, a clinic's PACS or workstation) sends its
# institution's studies and queries/retrieves what that institution may see; it administers
# nothing.
APPLICATION_ENTITY_PERMISSIONS = frozenset({Permission.VIEW_STUDIES, Permission.SEND_STUDIES})


@dataclass(frozen=True)
class Actor:
    """Who is acting, from where: a logged-in user or a DICOM application entity.

    An application entity has no role (`role` is None): it is a device, not a person, and
    must not borrow the rights of one.
    """

    name: str
    role: Role | None
    institution_id: int
    user_id: int | None = None
    address: str = ""
    ae_title: str | None = None

    def can(self, permission: Permission) -> bool:
        if self.role is None:
            return permission in APPLICATION_ENTITY_PERMISSIONS
        return permission in ROLE_PERMISSIONS[self.role]


def require(actor: Actor, permission: Permission) -> None:
    """Raises NotPermitted unless the actor's role grants the permission."""
    if not actor.can(permission):
        who = f"role {actor.role}" if actor.role is not None else f"AE {actor.ae_title}"
        raise NotPermitted(f"{who} may not {permission}")


def visible_institutions(session: Session, actor: Actor) -> set[int] | None:
    """The institutions whose patient data the actor may see; None means all.

    A clinic sees its own patients. County staff see their institution and the clinics
    below it in the consortium tree (reading groups narrow this once cases exist).
    An application entity sees what its institution sees: the institution and the clinics
    below it (a county PACS pulls its clinics' studies; a clinic's workstation its own).
    """
    if actor.role == Role.ADMIN:
        return None
    if actor.role == Role.TECHNICIAN:
        return {actor.institution_id}
    # Specialists, consult doctors, and application entities (no role).
    return institutions.subtree_ids(session, actor.institution_id)


# --- passwords and users ----------------------------------------------------------------------


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def create_user(
    session: Session,
    *,
    username: str,
    password: str,
    role: Role,
    institution_code: str,
    display_name: str = "",
    clock: Clock = SYSTEM_CLOCK,
) -> User:
    """Raises UserExists, WeakPassword, InstitutionNotFound."""
    username = username.strip()
    if not username or len(username) > 64:
        raise Invalid("username must have 1 to 64 characters")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise UserExists(f"user {username} already exists")
    institution = institutions.get_institution(session, institution_code)
    user = User(
        username=username,
        display_name=display_name or username,
        password_hash=hash_password(password),
        role=Role(role),
        institution_id=institution.id,
        active=True,
        created_at=clock.now(),
    )
    session.add(user)
    session.flush()
    return user


class CannotLockOut(Conflict):
    """An admin may not deactivate or demote their own account: nobody would be left to undo it."""


def get_user(session: Session, user_id: int) -> User:
    """Raises UserNotFound."""
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound(f"no user {user_id}")
    return user


def update_user(
    session: Session,
    actor: Actor,
    user_id: int,
    *,
    display_name: str | None = None,
    role: Role | None = None,
    institution_code: str | None = None,
    active: bool | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[User, list[str]]:
    """Change what is given; returns the user and the names of the fields that changed.

    Deactivating voids the user's tokens at once (a stolen cookie dies with the account).
    Raises NotPermitted, UserNotFound, InstitutionNotFound, CannotLockOut, Invalid.
    """
    require(actor, Permission.ADMINISTER)
    user = get_user(session, user_id)
    changed: list[str] = []
    if display_name is not None:
        name = display_name.strip()
        if not name or len(name) > 200:
            raise Invalid("display name must have 1 to 200 characters")
        if name != user.display_name:
            user.display_name = name
            changed.append("display_name")
    if role is not None and Role(role) != user.role:
        if user.id == actor.user_id:
            raise CannotLockOut("you may not change your own role")
        user.role = Role(role)
        changed.append("role")
    if institution_code is not None:
        institution = institutions.get_institution(session, institution_code)
        if institution.id != user.institution_id:
            user.institution_id = institution.id
            changed.append("institution")
    if active is not None and active != user.active:
        if user.id == actor.user_id:
            raise CannotLockOut("you may not deactivate your own account")
        user.active = active
        changed.append("active")
    if {"active", "role", "institution"} & set(changed):
        # What the old tokens' holder may do changed: make them log in again.
        revoke_tokens(session, user, clock=clock)
    session.flush()
    return user, changed


def reset_password(
    session: Session, actor: Actor, user_id: int, password: str, *, clock: Clock = SYSTEM_CLOCK
) -> User:
    """Set a new password chosen by an admin; every token of the user is void afterwards.

    Raises NotPermitted, UserNotFound, WeakPassword.
    """
    require(actor, Permission.ADMINISTER)
    user = get_user(session, user_id)
    user.password_hash = hash_password(password)
    revoke_tokens(session, user, clock=clock)
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> User:
    """Raises BadCredentials."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password)
        raise BadCredentials("wrong username or password")
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError) as exc:
        raise BadCredentials("wrong username or password") from exc
    if not user.active:
        raise BadCredentials("wrong username or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def actor_for(user: User, address: str = "") -> Actor:
    return Actor(
        name=user.username,
        role=Role(user.role),
        institution_id=user.institution_id,
        user_id=user.id,
        address=address,
    )


def actor_for_application_entity(ae_title: str, institution_id: int, address: str = "") -> Actor:
    """The actor for a registered DICOM caller (institutions.authorize_caller identified it).

    Audited as "ae:TITLE", the convention of AuditEvent.actor.
    """
    return Actor(
        name=f"ae:{ae_title}",
        role=None,
        institution_id=institution_id,
        address=address,
        ae_title=ae_title,
    )


# --- tokens -----------------------------------------------------------------------------------


def load_or_create_secret(data_dir: Path) -> str:
    """The token signing key, generated once into the data folder (never in the repo)."""
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.write_text(secret)
    path.chmod(0o600)
    return secret


def issue_token(user: User, secret: str, *, ttl: timedelta, clock: Clock = SYSTEM_CLOCK) -> str:
    now = clock.now()
    claims = {
        "sub": str(user.id),
        "iat": int(now.timestamp()),
        # `iat` has whole seconds; revocation compares milliseconds, so a login right after
        # a logout gets a token that works.
        "iat_ms": int(now.timestamp() * 1000),
        "exp": int((now + ttl).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=TOKEN_ALGORITHM)


def user_for_token(
    session: Session, token: str, secret: str, *, clock: Clock = SYSTEM_CLOCK
) -> User:
    """Raises BadToken for a forged, expired or revoked token or a disabled user."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[TOKEN_ALGORITHM],
            options={"require": ["sub", "exp", "iat"], "verify_exp": False},
        )
    except jwt.PyJWTError as exc:
        raise BadToken("invalid token") from exc
    now = clock.now().timestamp()
    if claims["exp"] <= now:
        raise BadToken("token expired")
    user = session.get(User, int(claims["sub"]))
    if user is None or not user.active:
        raise BadToken("invalid token")
    issued_ms = claims.get("iat_ms", claims["iat"] * 1000)
    if user.tokens_valid_after and issued_ms <= int(user.tokens_valid_after.timestamp() * 1000):
        raise BadToken("token revoked")
    return user


def revoke_tokens(session: Session, user: User, *, clock: Clock = SYSTEM_CLOCK) -> None:
    user.tokens_valid_after = clock.now()


# --- audit ------------------------------------------------------------------------------------


def audit(
    session: Session,
    actor: Actor | None,
    action: str,
    *,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    object_type: str = "",
    object_id: str = "",
    detail: str = "",
    address: str = "",
    when: datetime | None = None,
) -> None:
    """Record an access to patient data or a security event in the caller's transaction.

    A refusal is recorded even when the caller's transaction then rolls back.
    """

    def make() -> AuditEvent:
        return AuditEvent(
            at=at,
            actor=actor.name if actor else "anonymous",
            user_id=actor.user_id if actor else None,
            institution_id=actor.institution_id if actor else None,
            action=action,
            outcome=outcome,
            object_type=object_type,
            object_id=object_id[:128],
            source_address=(address or (actor.address if actor else ""))[:128],
            detail=detail[:2000],
        )

    at = when or SYSTEM_CLOCK.now()
    session.add(make())
    if outcome != AuditOutcome.SUCCESS:
        session.info.setdefault(KEEP_ON_ROLLBACK, []).append(make)
