"""Claims: a lease on a case that its reader renews while reading and that lapses if he
vanishes. Two readers never hold one case: every claim is a conditional UPDATE that only
matches a free or lapsed case, and only the statement that changed the row wins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, cast

from sqlalchemy import (
    ColumnElement,
    Executable,
    Integer,
    Select,
    bindparam,
    exists,
    or_,
    select,
    update,
)
from sqlalchemy import case as sql_case
from sqlalchemy.orm import Session

from telehealth.auth import service as auth
from telehealth.auth.models import User
from telehealth.cases.models import (
    CLAIMABLE_STATUSES,
    OPEN_STATUSES,
    Case,
    CaseEvent,
    CaseEventKind,
    CaseStatus,
    NotificationKind,
    ReadingGroup,
    ReadingGroupMember,
)
from telehealth.cases.service.common import (
    CASE_ID,
    NOW,
    USER_ID,
    CaseClosed,
    CaseContext,
    CaseFields,
    ClaimHeld,
    GroupNotFound,
    InvalidRouting,
    LeaseExpired,
    NotClaimable,
    ScopedStatements,
    announce,
    get_case,
    notify,
    record,
    scope_params,
    username,
)
from telehealth.cases.service.routing import READER_ROLES
from telehealth.db import UTCDateTime
from telehealth.errors import Forbidden


class FirstReader(Forbidden):
    """Double reading: whoever signed the case's first report may not take its second."""


def _signed_by(user_id: ColumnElement[int]) -> ColumnElement[bool]:
    """The user signed a report of the case. An open case with a signed report waits for its
    second reading (telehealth.reports), and that must be someone else's."""
    return exists().where(
        CaseEvent.case_id == Case.id,
        CaseEvent.kind == CaseEventKind.REPORT_SIGNED,
        CaseEvent.user_id == user_id,
    )


@dataclass(frozen=True)
class Claim:
    """A reader's lease on a case. `lease_token` fences: it names this claim and no later one."""

    case_id: int
    holder_id: int
    holder: str
    claimed_at: datetime
    lease_expires_at: datetime
    lease_token: int


class _Leased(CaseFields, Protocol):
    @property
    def claimed_at(self) -> datetime | None: ...
    @property
    def lease_expires_at(self) -> datetime | None: ...
    @property
    def lease_token(self) -> int: ...


def _claim_of(case: _Leased, holder: str) -> Claim:
    assert case.claim_holder_id is not None
    assert case.claimed_at is not None and case.lease_expires_at is not None
    return Claim(
        case_id=case.id,
        holder_id=case.claim_holder_id,
        holder=holder,
        claimed_at=case.claimed_at,
        lease_expires_at=case.lease_expires_at,
        lease_token=case.lease_token,
    )


# --- statements, built once (common.ScopedStatements says why) ----------------------------

_UNTIL = bindparam("until", type_=UTCDateTime())
_TOKEN = bindparam("token", type_=Integer)
_FREE = or_(Case.claim_holder_id.is_(None), Case.lease_expires_at <= NOW)  # or lapsed


def _next_query(scope: ColumnElement[bool] | None) -> Select[int, int | None]:
    """The first claimable case of the actor's queue: the eligibility rules in one
    statement (only id and holder: the claim's RETURNING gives the rest)."""
    query = (
        select(Case.id, Case.claim_holder_id)
        .where(
            Case.status.in_(CLAIMABLE_STATUSES),
            Case.group_id.is_not(None),
            _FREE,
            ~_signed_by(USER_ID),
        )
        .order_by(Case.priority_rank, Case.due_at, Case.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return query if scope is None else query.where(scope)


_NEXT = ScopedStatements(_next_query)
_SIGNED_BY_ME = select(_signed_by(USER_ID)).where(Case.id == CASE_ID)

# What a claim returns of the case: the Claim, its history row and its live message.
_CLAIM_FIELDS = (
    Case.id,
    Case.status,
    Case.priority,
    Case.service,
    Case.group_id,
    Case.institution_id,
    Case.claim_holder_id,
    Case.due_at,
    Case.claimed_at,
    Case.lease_expires_at,
    Case.lease_token,
)
_CLAIM = (
    update(Case)
    .where(Case.id == CASE_ID, Case.status.in_(CLAIMABLE_STATUSES), _FREE)
    .values(
        claim_holder_id=USER_ID,
        claimed_at=NOW,
        lease_expires_at=_UNTIL,
        lease_token=Case.lease_token + 1,
        # A preliminary report stays REPORTED: its holder is there to sign it.
        status=sql_case(
            (Case.status == CaseStatus.REPORTED, CaseStatus.REPORTED),
            else_=CaseStatus.CLAIMED,
        ),
        updated_at=NOW,
    )
    .returning(*_CLAIM_FIELDS)
)


# Renew and release by the holder, with the lease token condition (fenced) or without (the
# caller gave no token). They return the Case: the caller's loaded one, refreshed.
def _renew_statement(fenced: bool) -> Executable:
    conditions = [Case.id == CASE_ID, Case.claim_holder_id == USER_ID, Case.lease_expires_at > NOW]
    if fenced:
        conditions.append(Case.lease_token == _TOKEN)
    return (
        update(Case)
        .where(*conditions)
        .values(lease_expires_at=_UNTIL)
        .returning(Case)
        .execution_options(synchronize_session=False, populate_existing=True)
    )


def _release_statement(fenced: bool) -> Executable:
    conditions = [Case.id == CASE_ID, Case.claim_holder_id == USER_ID]
    if fenced:
        conditions.append(Case.lease_token == _TOKEN)
    return (
        update(Case)
        .where(*conditions)
        .values(
            claim_holder_id=None,
            lease_expires_at=None,
            status=sql_case(
                (Case.status == CaseStatus.CLAIMED, CaseStatus.QUEUED), else_=Case.status
            ),
            updated_at=NOW,
        )
        .returning(Case)
        .execution_options(synchronize_session=False, populate_existing=True)
    )


_RENEW = {fenced: _renew_statement(fenced) for fenced in (False, True)}
_RELEASE = {fenced: _release_statement(fenced) for fenced in (False, True)}


def _try_claim(
    session: Session, case_id: int, user_id: int, now: datetime, until: datetime
) -> _Leased | None:
    """The one statement that decides who holds a case: it matches only a free or lapsed
    lease, so of two readers racing, the database lets exactly one change the row. Returns
    the case's fields as the winner left it (RETURNING: no second look), or None.

    A plain statement with no ORM object loaded; a Case of this session that holds the row
    is expired, so it reads the claim when next used."""
    row = (
        session.connection()
        .execute(_CLAIM, {"case_id": case_id, "user_id": user_id, "now": now, "until": until})
        .first()
    )
    if row is not None:
        loaded = session.identity_map.get(session.identity_key(Case, case_id))
        if loaded is not None:
            session.expire(loaded)
    return cast(_Leased | None, row)  # the row has the _CLAIM_FIELDS by name


def _claimed(
    session: Session,
    actor: auth.Actor,
    case: _Leased,
    previous: int | None,
    ctx: CaseContext,
) -> Claim:
    now = ctx.now()
    detail: dict[str, object] = {
        "lease_token": case.lease_token,
        "lease_expires_at": case.lease_expires_at.isoformat() if case.lease_expires_at else None,
    }
    if previous is not None and previous != actor.user_id:
        detail["lapsed_holder"] = username(session, previous)
    record(session, case, CaseEventKind.CLAIMED, actor, now, **detail)
    auth.audit(session, actor, "case.claim", object_type="case", object_id=str(case.id))
    announce(session, ctx, "claimed", case, previous_claim_holder_id=previous)
    return _claim_of(case, actor.name)


def claim(session: Session, actor: auth.Actor, case_id: int, ctx: CaseContext) -> Claim:
    """Take a lease on a case routed to one of the actor's groups.

    Claiming a case one already holds renews it. Raises CaseNotFound (also for a case of
    another group), NotClaimable, ClaimHeld, NotPermitted.
    """
    auth.require(actor, auth.Permission.CLAIM_CASES)
    assert actor.user_id is not None
    case = get_case(session, actor, case_id, action="case.claim")
    if case.status not in CLAIMABLE_STATUSES:
        raise NotClaimable(f"case {case_id} is {case.status}")
    if session.scalar(_SIGNED_BY_ME, {"user_id": actor.user_id, "case_id": case_id}):
        raise FirstReader(f"you signed the first report of case {case_id}; another reader reads it")
    now = ctx.now()
    previous = case.claim_holder_id
    claimed = _try_claim(session, case_id, actor.user_id, now, now + ctx.config.lease)
    if claimed is not None:
        return _claimed(session, actor, claimed, previous, ctx)
    session.refresh(case)
    if case.claim_holder_id == actor.user_id:
        return renew(session, actor, case_id, None, ctx)
    if case.status not in CLAIMABLE_STATUSES:
        raise NotClaimable(f"case {case_id} is {case.status}")
    # Who holds it and since when stays out of the message: the worklist shows what a
    # reader may know.
    raise ClaimHeld(f"case {case_id} is being read by another reader")


def claim_next(session: Session, actor: auth.Actor, ctx: CaseContext) -> Claim | None:
    """Claim the first free case of the actor's queue (priority, then due time); None when
    there is none. Readers calling at once get different cases (SKIP LOCKED on PostgreSQL;
    on SQLite one writer runs at a time)."""
    auth.require(actor, auth.Permission.CLAIM_CASES)
    assert actor.user_id is not None
    now = ctx.now()
    query = _NEXT(actor)
    params = scope_params(actor, now=now)
    # Plain statements do not autoflush: write what the caller left pending, as an ORM
    # query would (nothing, usually, and then this costs next to nothing).
    session.flush()
    conn = session.connection()
    for _ in range(20):
        row = conn.execute(query, params).first()
        if row is None:
            return None
        case_id, previous = row
        claimed = _try_claim(session, case_id, actor.user_id, now, now + ctx.config.lease)
        if claimed is not None:
            return _claimed(session, actor, claimed, previous, ctx)
    return None


def renew(
    session: Session, actor: auth.Actor, case_id: int, lease_token: int | None, ctx: CaseContext
) -> Claim:
    """Extend the actor's live lease. A renewal writes no history row: the claim already
    says who holds the case, and a client renews every minute or two.
    Raises CaseNotFound, LeaseExpired (lapsed, or taken over under a newer token)."""
    auth.require(actor, auth.Permission.CLAIM_CASES)
    now = ctx.now()
    # The holder always sees his case (reader_cases), so a renewal that matches needs no
    # scope check first; one that does not tells an unseen case from a lapsed lease after.
    case = session.scalars(
        _RENEW[lease_token is not None],
        {
            "case_id": case_id,
            "user_id": actor.user_id,
            "now": now,
            "until": now + ctx.config.lease,
            "token": lease_token,
        },
    ).one_or_none()
    if case is None:
        get_case(session, actor, case_id, action="case.renew")
        raise LeaseExpired(f"your claim on case {case_id} has expired; claim it again")
    return _claim_of(case, actor.name)


def release(
    session: Session, actor: auth.Actor, case_id: int, lease_token: int | None, ctx: CaseContext
) -> Case:
    """Give a claimed case back to the queue. Raises CaseNotFound, LeaseExpired (someone else
    holds it now, or nobody does)."""
    auth.require(actor, auth.Permission.CLAIM_CASES)
    now = ctx.now()
    # As in renew: only the holder's release matches, and the holder sees his case.
    case = session.scalars(
        _RELEASE[lease_token is not None],
        {"case_id": case_id, "user_id": actor.user_id, "now": now, "token": lease_token},
    ).one_or_none()
    if case is None:
        get_case(session, actor, case_id, action="case.release")
        raise LeaseExpired(f"you do not hold case {case_id}")
    record(session, case, CaseEventKind.RELEASED, actor, now)
    auth.audit(session, actor, "case.release", object_type="case", object_id=str(case.id))
    announce(session, ctx, "released", case, previous_claim_holder_id=actor.user_id)
    return case


def assign(
    session: Session,
    actor: auth.Actor,
    case_id: int,
    *,
    group_id: int | None,
    user: str | None,
    ctx: CaseContext,
) -> Case:
    """An admin moves a case to a group, and/or hands it to a reader of its group with a
    fresh lease (the previous holder's token stops working). Raises CaseNotFound,
    CaseClosed, GroupNotFound, InvalidRouting, NotPermitted."""
    auth.require(actor, auth.Permission.ASSIGN_CASES)
    if group_id is None and user is None:
        raise InvalidRouting("give a group, a user, or both")
    case = get_case(session, actor, case_id, action="case.assign", for_update=True)
    if case.status not in OPEN_STATUSES:
        raise CaseClosed(f"case {case_id} is {case.status}")
    now = ctx.now()
    previous_group, previous_holder = case.group_id, case.claim_holder_id
    detail: dict[str, object] = {}
    if group_id is not None:
        group = session.get(ReadingGroup, group_id)
        if group is None:
            raise GroupNotFound(f"no reading group {group_id}")
        case.group_id = group.id
        detail["group"] = group.code
        if case.status == CaseStatus.NEW:
            case.status = CaseStatus.QUEUED
    reader: User | None = None
    if user is not None:
        reader = session.scalar(select(User).where(User.username == user))
        if reader is None or not reader.active or reader.role not in READER_ROLES:
            raise InvalidRouting(f"{user} is not an active reader")
        member = session.scalar(
            select(ReadingGroupMember.user_id).where(
                ReadingGroupMember.group_id == case.group_id,
                ReadingGroupMember.user_id == reader.id,
            )
        )
        if member is None:
            raise InvalidRouting(f"{user} is not a member of the case's reading group")
        case.claim_holder_id = reader.id
        case.claimed_at = now
        case.lease_expires_at = now + ctx.config.assign_lease
        case.lease_token += 1
        if case.status != CaseStatus.REPORTED:
            case.status = CaseStatus.CLAIMED
        detail |= {"user": reader.username, "lease_token": case.lease_token}
    elif case.claim_holder_id is not None:
        # Moved to another group: whoever held it there lets go.
        case.claim_holder_id = None
        case.lease_expires_at = None
        if case.status == CaseStatus.CLAIMED:
            case.status = CaseStatus.QUEUED
    if previous_holder is not None and previous_holder != case.claim_holder_id:
        detail["previous_holder"] = username(session, previous_holder)
    case.updated_at = now
    session.flush()
    record(session, case, CaseEventKind.ASSIGNED, actor, now, **detail)
    if reader is not None:
        notify(
            session,
            ctx,
            reader.id,
            NotificationKind.ASSIGNED,
            f"case {case.id} ({case.priority} {case.service}) was assigned to you",
            case,
        )
    auth.audit(session, actor, "case.assign", object_type="case", object_id=str(case.id))
    announce(
        session,
        ctx,
        "assigned",
        case,
        previous_group_id=previous_group,
        previous_claim_holder_id=previous_holder,
    )
    return case


def expire_leases(session: Session, ctx: CaseContext, *, limit: int = 500) -> list[int]:
    """Put cases whose lease lapsed back in the queue, each with a history row.

    A lapsed lease is already claimable without this sweep (the claim statement accepts
    it); the sweep keeps statuses and live worklists truthful.
    """
    now = ctx.now()
    cases = session.scalars(
        select(Case)
        .where(
            Case.status.in_(CLAIMABLE_STATUSES),
            Case.claim_holder_id.is_not(None),
            Case.lease_expires_at <= now,
        )
        .order_by(Case.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for case in cases:
        holder = case.claim_holder_id
        case.claim_holder_id = None
        case.lease_expires_at = None
        if case.status == CaseStatus.CLAIMED:
            case.status = CaseStatus.QUEUED
        case.updated_at = now
        record(
            session, case, CaseEventKind.LEASE_EXPIRED, None, now, holder=username(session, holder)
        )
        announce(session, ctx, "released", case, previous_claim_holder_id=holder)
    return [c.id for c in cases]
