"""Consults: request (now or scheduled), invite, cancel, file the outcome, join.

Who may see a consult: its participants (host, requester, invited users) and admins. Anyone
else gets ConsultNotFound, as for a consult that does not exist, and the refusal is audited.
Joining needs a short-lived token for the signalling server (`tokens.py`) and comes with the
ICE servers, including ephemeral TURN credentials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome, Role, User
from telehealth.cases import service as cases
from telehealth.cases.models import Case, CaseEventKind, CaseStatus
from telehealth.cases.service.common import record
from telehealth.clock import SYSTEM_CLOCK, Clock, as_utc
from telehealth.consults.models import (
    Consult,
    ConsultMessage,
    ConsultParticipant,
    ConsultStatus,
    Referral,
)
from telehealth.consults.tokens import (
    ConsultRole,
    derive_join_key,
    issue_join_token,
    turn_credential,
)
from telehealth.errors import Conflict, Forbidden, Invalid, NotFound
from telehealth.institutions.models import Institution

if TYPE_CHECKING:
    from telehealth.config import Settings

# A consult that started this long ago still counts as upcoming: it may be running.
RUNNING_GRACE = timedelta(hours=2)
# Scheduling "now" from a client whose clock lags a little must not fail.
PAST_TOLERANCE = timedelta(minutes=5)
HOST_ROLES = frozenset({Role.SPECIALIST, Role.CONSULT_DOCTOR})
MAX_PARTICIPANTS = 4  # the host and three guests: a browser mesh beyond that is too heavy


class ConsultNotFound(NotFound):
    """No such consult, or not one the actor takes part in (the two are not told apart)."""


class ConsultClosed(Conflict):
    """The consult is completed or cancelled; nobody joins or changes it any more."""


class InvalidConsult(Invalid):
    """A host, participant, time or referral that cannot be used as given."""


class NotHost(Forbidden):
    """Only the host (or whoever is allowed to organise the consult) may do this."""


@dataclass(frozen=True)
class ConsultConfig:
    """Join tokens and ICE servers, from `Settings` and the hub's secret."""

    join_key: str
    join_ttl: timedelta = timedelta(minutes=2)
    signaling_url: str = "ws://127.0.0.1:8043"
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl: timedelta = timedelta(hours=4)
    max_participants: int = MAX_PARTICIPANTS

    @classmethod
    def from_settings(cls, settings: Settings, hub_secret: str) -> ConsultConfig:
        return cls(
            join_key=derive_join_key(hub_secret),
            join_ttl=timedelta(seconds=settings.consult_join_token_seconds),
            signaling_url=settings.signaling_public_url
            or f"ws://{settings.signaling_host}:{settings.signaling_port}",
            stun_urls=tuple(settings.ice_stun_urls),
            turn_urls=tuple(settings.ice_turn_urls),
            turn_secret=settings.turn_secret,
            turn_ttl=timedelta(seconds=settings.turn_credential_seconds),
            max_participants=settings.signaling_max_participants,
        )

    def with_signaling_url(self, url: str) -> ConsultConfig:
        return replace(self, signaling_url=url)


@dataclass(frozen=True)
class ConsultRequest:
    case_id: int
    host: str  # username of the specialist
    participants: Sequence[str] = ()  # usernames to invite besides the requester
    scheduled_at: datetime | None = None  # None: now
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    notes: str = ""
    advice: str = ""
    referral: Referral = Referral.NONE
    referral_institution: str | None = None  # institution code
    referral_reason: str = ""


@dataclass(frozen=True)
class ParticipantView:
    user_id: int
    username: str
    display_name: str
    role: ConsultRole
    institution_code: str


@dataclass(frozen=True)
class ConsultView:
    consult: Consult
    host: str
    requested_by: str
    participants: list[ParticipantView] = field(default_factory=list)
    referral_institution: str | None = None


@dataclass(frozen=True)
class IceServer:
    """W3C RTCIceServer: what the browser's RTCPeerConnection takes as given."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class JoinTicket:
    consult_id: int
    token: str
    expires_at: datetime
    role: ConsultRole
    signaling_url: str
    ice_servers: list[IceServer]


# --- scope ------------------------------------------------------------------------------------


def get_consult(
    session: Session, actor: auth.Actor, consult_id: int, *, action: str, for_update: bool = False
) -> Consult:
    """A consult the actor takes part in (any, for an admin). Raises ConsultNotFound and
    audits the refusal under `action`."""
    query = select(Consult).where(Consult.id == consult_id)
    if actor.role != Role.ADMIN:
        query = query.where(Consult.id.in_(_consults_of(actor)))
    if for_update:
        query = query.with_for_update()
    consult = session.scalar(query)
    if consult is None:
        exists = session.get(Consult, consult_id) is not None
        auth.audit(
            session,
            actor,
            action,
            outcome=AuditOutcome.DENIED if exists else AuditOutcome.FAILED,
            object_type="consult",
            object_id=str(consult_id),
        )
        raise ConsultNotFound(f"no consult {consult_id}")
    return consult


def _consults_of(actor: auth.Actor) -> Select[int]:
    return select(ConsultParticipant.consult_id).where(
        ConsultParticipant.user_id == (actor.user_id if actor.user_id is not None else -1)
    )


def _participant_role(
    session: Session, consult: Consult, user_id: int | None
) -> ConsultRole | None:
    if user_id is None:
        return None
    role = session.scalar(
        select(ConsultParticipant.role).where(
            ConsultParticipant.consult_id == consult.id, ConsultParticipant.user_id == user_id
        )
    )
    return ConsultRole(role) if role is not None else None


def _consortium(session: Session, institution_id: int) -> set[int]:
    """Every institution in the consortium tree that holds `institution_id`."""
    parents: dict[int, int | None] = dict(
        session.execute(select(Institution.id, Institution.parent_id)).all()  # type: ignore[arg-type]
    )
    root, seen = institution_id, {institution_id}
    while (parent := parents.get(root)) is not None and parent not in seen:
        seen.add(parent)  # a cycle cannot loop us forever
        root = parent
    members, frontier = {root}, [root]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in members:
                members.add(child)
                frontier.append(child)
    return members


def _consortium_users(
    session: Session, usernames: Sequence[str], consortium: set[int]
) -> list[User]:
    """Active users of the consortium, in the given order. Raises InvalidConsult."""
    wanted = list(dict.fromkeys(u.strip() for u in usernames if u.strip()))
    found = {u.username: u for u in session.scalars(select(User).where(User.username.in_(wanted)))}
    users = []
    for name in wanted:
        user = found.get(name)
        # One message for unknown, disabled and outside: it does not reveal who exists where.
        if user is None or not user.active or user.institution_id not in consortium:
            raise InvalidConsult(f"{name} is not a user of this consortium")
        users.append(user)
    return users


# --- requests and changes ---------------------------------------------------------------------


def request_consult(
    session: Session, actor: auth.Actor, request: ConsultRequest, *, clock: Clock = SYSTEM_CLOCK
) -> Consult:
    """Ask a specialist for a consult on a case the actor may see.

    Raises CaseNotFound, CaseClosed, InvalidConsult, NotPermitted.
    """
    auth.require(actor, auth.Permission.VIEW_CASES)
    case = cases.get_case(session, actor, request.case_id, action="consult.create")
    if case.status == CaseStatus.CANCELLED:
        raise cases.CaseClosed(f"case {case.id} is cancelled")
    now = clock.now()
    when = as_utc(request.scheduled_at) if request.scheduled_at else now
    if when < now - PAST_TOLERANCE:
        raise InvalidConsult("a consult cannot be scheduled in the past")
    consortium = _consortium(session, case.institution_id)
    (host,) = _consortium_users(session, [request.host], consortium)
    if host.role not in HOST_ROLES:
        raise InvalidConsult(f"{host.username} cannot host a consult (not a specialist)")
    guests = [
        u
        for u in _consortium_users(session, [actor.name, *request.participants], consortium)
        if u.id != host.id
    ]
    if len(guests) + 1 > MAX_PARTICIPANTS:
        raise InvalidConsult(f"at most {MAX_PARTICIPANTS} people take part in a consult")
    consult = Consult(
        case_id=case.id,
        institution_id=case.institution_id,
        requested_by_id=actor.user_id,
        host_id=host.id,
        status=ConsultStatus.SCHEDULED,
        scheduled_at=when,
        reason=request.reason,
        notes="",
        advice="",
        referral=Referral.NONE,
        referral_reason="",
        created_at=now,
        updated_at=now,
    )
    session.add(consult)
    session.flush()
    session.add(
        ConsultParticipant(
            consult_id=consult.id, user_id=host.id, role=ConsultRole.HOST, invited_at=now
        )
    )
    for guest in guests:
        session.add(
            ConsultParticipant(
                consult_id=consult.id, user_id=guest.id, role=ConsultRole.GUEST, invited_at=now
            )
        )
    record(
        session,
        case,
        CaseEventKind.CONSULT_REQUESTED,
        actor,
        now,
        consult_id=consult.id,
        host=host.username,
        scheduled_at=when.isoformat(),
    )
    auth.audit(session, actor, "consult.create", object_type="consult", object_id=str(consult.id))
    session.flush()
    return consult


def _organiser(session: Session, actor: auth.Actor, consult: Consult) -> None:
    """The host, the requester or an admin organise a consult. Raises NotHost."""
    if actor.role == Role.ADMIN or actor.user_id in (consult.host_id, consult.requested_by_id):
        return
    raise NotHost("only the host or the requester may change this consult")


def _open(consult: Consult) -> None:
    if consult.status != ConsultStatus.SCHEDULED:
        raise ConsultClosed(f"consult {consult.id} is {consult.status}")


def invite(
    session: Session,
    actor: auth.Actor,
    consult_id: int,
    usernames: Sequence[str],
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> Consult:
    """Raises ConsultNotFound, ConsultClosed, NotHost, InvalidConsult."""
    consult = get_consult(session, actor, consult_id, action="consult.invite", for_update=True)
    _organiser(session, actor, consult)
    _open(consult)
    now = clock.now()
    present = set(
        session.scalars(
            select(ConsultParticipant.user_id).where(ConsultParticipant.consult_id == consult.id)
        )
    )
    users = _consortium_users(session, usernames, _consortium(session, consult.institution_id))
    new = [u for u in users if u.id not in present]
    if len(present) + len(new) > MAX_PARTICIPANTS:
        raise InvalidConsult(f"at most {MAX_PARTICIPANTS} people take part in a consult")
    for user in new:
        session.add(
            ConsultParticipant(
                consult_id=consult.id, user_id=user.id, role=ConsultRole.GUEST, invited_at=now
            )
        )
    consult.updated_at = now
    auth.audit(
        session,
        actor,
        "consult.invite",
        object_type="consult",
        object_id=str(consult.id),
        detail=",".join(u.username for u in new),
    )
    session.flush()
    return consult


def cancel(
    session: Session,
    actor: auth.Actor,
    consult_id: int,
    reason: str = "",
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> Consult:
    """Raises ConsultNotFound, ConsultClosed, NotHost."""
    consult = get_consult(session, actor, consult_id, action="consult.cancel", for_update=True)
    _organiser(session, actor, consult)
    _open(consult)
    now = clock.now()
    consult.status = ConsultStatus.CANCELLED
    consult.closed_at = consult.updated_at = now
    case = _case(session, consult)
    record(
        session,
        case,
        CaseEventKind.CONSULT_CANCELLED,
        actor,
        now,
        consult_id=consult.id,
        reason=reason,
    )
    auth.audit(session, actor, "consult.cancel", object_type="consult", object_id=str(consult.id))
    return consult


def file_outcome(
    session: Session,
    actor: auth.Actor,
    consult_id: int,
    outcome: Outcome,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> Consult:
    """The host files notes, advice and a referral (双向转诊) into the case history.

    Raises ConsultNotFound, ConsultClosed, NotHost, InvalidConsult.
    """
    consult = get_consult(session, actor, consult_id, action="consult.outcome", for_update=True)
    if actor.user_id != consult.host_id:
        raise NotHost("only the host files the outcome of a consult")
    _open(consult)
    destination: Institution | None = None
    if outcome.referral != Referral.NONE:
        code = (outcome.referral_institution or "").strip()
        destination = session.scalar(select(Institution).where(Institution.code == code))
        if destination is None or destination.id not in _consortium(
            session, consult.institution_id
        ):
            raise InvalidConsult("a referral needs a destination institution of the consortium")
        if not outcome.referral_reason.strip():
            raise InvalidConsult("a referral needs a reason")
    now = clock.now()
    consult.notes = outcome.notes
    consult.advice = outcome.advice
    consult.referral = outcome.referral
    consult.referral_institution_id = destination.id if destination else None
    consult.referral_reason = outcome.referral_reason if destination else ""
    consult.status = ConsultStatus.COMPLETED
    consult.closed_at = consult.updated_at = now
    case = _case(session, consult)
    record(
        session,
        case,
        CaseEventKind.CONSULT_COMPLETED,
        actor,
        now,
        consult_id=consult.id,
        notes=outcome.notes,
        advice=outcome.advice,
    )
    if destination is not None:
        record(
            session,
            case,
            CaseEventKind.CONSULT_REFERRAL,
            actor,
            now,
            consult_id=consult.id,
            direction=str(outcome.referral),
            destination=destination.code,
            reason=outcome.referral_reason,
        )
    auth.audit(session, actor, "consult.outcome", object_type="consult", object_id=str(consult.id))
    return consult


def _case(session: Session, consult: Consult) -> Case:
    case = session.get(Case, consult.case_id)
    assert case is not None  # consults cascade with their case
    return case


# --- reads ------------------------------------------------------------------------------------


def view(session: Session, consult: Consult) -> ConsultView:
    rows = session.execute(
        select(ConsultParticipant, User, Institution.code)
        .join(User, User.id == ConsultParticipant.user_id)
        .join(Institution, Institution.id == User.institution_id)
        .where(ConsultParticipant.consult_id == consult.id)
        .order_by(ConsultParticipant.role.desc(), User.username)  # host first
    ).all()
    people = [
        ParticipantView(user.id, user.username, user.display_name, ConsultRole(p.role), code)
        for p, user, code in rows
    ]
    ids = [consult.host_id, consult.requested_by_id]
    names = {
        i: n for i, n in session.execute(select(User.id, User.username).where(User.id.in_(ids)))
    }
    referral_code = None
    if consult.referral_institution_id is not None:
        referral_code = session.scalar(
            select(Institution.code).where(Institution.id == consult.referral_institution_id)
        )
    return ConsultView(
        consult,
        host=names.get(consult.host_id, ""),
        requested_by=names.get(consult.requested_by_id, ""),
        participants=people,
        referral_institution=referral_code,
    )


def read_consult(session: Session, actor: auth.Actor, consult_id: int) -> ConsultView:
    """Raises ConsultNotFound."""
    consult = get_consult(session, actor, consult_id, action="consult.read")
    auth.audit(session, actor, "consult.read", object_type="consult", object_id=str(consult.id))
    return view(session, consult)


def list_upcoming(
    session: Session, actor: auth.Actor, *, clock: Clock = SYSTEM_CLOCK, limit: int = 100
) -> list[ConsultView]:
    """The actor's scheduled consults from a little before now on, soonest first (an admin
    sees all)."""
    query = (
        select(Consult)
        .where(
            Consult.status == ConsultStatus.SCHEDULED,
            Consult.scheduled_at >= clock.now() - RUNNING_GRACE,
        )
        .order_by(Consult.scheduled_at, Consult.id)
        .limit(limit)
    )
    if actor.role != Role.ADMIN:
        query = query.where(Consult.id.in_(_consults_of(actor)))
    found = [view(session, c) for c in session.scalars(query)]
    auth.audit(session, actor, "consult.list", object_type="consult", detail=f"{len(found)} rows")
    return found


def list_past(
    session: Session, actor: auth.Actor, *, clock: Clock = SYSTEM_CLOCK, limit: int = 100
) -> list[ConsultView]:
    """The actor's closed consults and those whose time is long gone, latest first."""
    query = (
        select(Consult)
        .where(
            (Consult.status != ConsultStatus.SCHEDULED)
            | (Consult.scheduled_at < clock.now() - RUNNING_GRACE)
        )
        .order_by(Consult.scheduled_at.desc(), Consult.id.desc())
        .limit(limit)
    )
    if actor.role != Role.ADMIN:
        query = query.where(Consult.id.in_(_consults_of(actor)))
    found = [view(session, c) for c in session.scalars(query)]
    auth.audit(
        session, actor, "consult.list_past", object_type="consult", detail=f"{len(found)} rows"
    )
    return found


# --- chat -------------------------------------------------------------------------------------


MAX_CHAT_CHARS = 4000  # as the signalling protocol relays


@dataclass(frozen=True)
class ChatLine:
    id: int
    username: str
    display_name: str
    text: str
    created_at: datetime


def post_message(
    session: Session,
    actor: auth.Actor,
    consult_id: int,
    text: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> ChatLine:
    """Keep one chat line of a participant with the consult (the room relays it live).

    Raises ConsultNotFound, NotHost (an admin who is no participant), ConsultClosed,
    InvalidConsult (empty).
    """
    consult = get_consult(session, actor, consult_id, action="consult.chat")
    if _participant_role(session, consult, actor.user_id) is None or actor.user_id is None:
        raise NotHost("only participants chat in a consult")
    _open(consult)
    if not text.strip():
        raise InvalidConsult("an empty chat message")
    line = ConsultMessage(
        consult_id=consult.id, user_id=actor.user_id, text=text, created_at=clock.now()
    )
    session.add(line)
    session.flush()
    user = session.get(User, actor.user_id)
    assert user is not None
    return ChatLine(line.id, user.username, user.display_name, line.text, line.created_at)


def list_messages(
    session: Session, actor: auth.Actor, consult_id: int, *, limit: int = 1000
) -> list[ChatLine]:
    """The consult's chat, oldest first. Raises ConsultNotFound."""
    consult = get_consult(session, actor, consult_id, action="consult.chat_read")
    rows = session.execute(
        select(ConsultMessage, User.username, User.display_name)
        .join(User, User.id == ConsultMessage.user_id)
        .where(ConsultMessage.consult_id == consult.id)
        .order_by(ConsultMessage.id)
        .limit(limit)
    ).all()
    auth.audit(
        session, actor, "consult.chat_read", object_type="consult", object_id=str(consult.id)
    )
    return [ChatLine(m.id, name, display, m.text, m.created_at) for m, name, display in rows]


# --- joining ----------------------------------------------------------------------------------


def join(
    session: Session,
    actor: auth.Actor,
    consult_id: int,
    config: ConsultConfig,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> JoinTicket:
    """A join token for the signalling server and the ICE servers, for a participant.

    Raises ConsultNotFound (not a participant, unless an admin), NotHost (an admin who is no
    participant: seeing a consult is not joining it), ConsultClosed.
    """
    consult = get_consult(session, actor, consult_id, action="consult.join")
    role = _participant_role(session, consult, actor.user_id)
    if role is None or actor.user_id is None:
        auth.audit(
            session,
            actor,
            "consult.join",
            outcome=AuditOutcome.DENIED,
            object_type="consult",
            object_id=str(consult.id),
        )
        raise NotHost("only invited participants join a consult")
    _open(consult)
    now = clock.now()
    token, expires = issue_join_token(
        config.join_key,
        user_id=actor.user_id,
        consult_id=consult.id,
        role=role,
        name=actor.name,
        now=now,
        ttl=config.join_ttl,
    )
    auth.audit(session, actor, "consult.join", object_type="consult", object_id=str(consult.id))
    return JoinTicket(
        consult_id=consult.id,
        token=token,
        expires_at=expires,
        role=role,
        signaling_url=f"{config.signaling_url.rstrip('/')}/rooms/{consult.id}",
        ice_servers=ice_servers(config, str(actor.user_id), now=now),
    )


def ice_servers(config: ConsultConfig, user: str, *, now: datetime) -> list[IceServer]:
    servers = []
    if config.stun_urls:
        servers.append(IceServer(urls=list(config.stun_urls)))
    if config.turn_urls and config.turn_secret:
        credential = turn_credential(config.turn_secret, user, now=now, ttl=config.turn_ttl)
        servers.append(
            IceServer(
                urls=list(config.turn_urls),
                username=credential.username,
                credential=credential.password,
            )
        )
    return servers
