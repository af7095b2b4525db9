"""The routing table as an admin keeps it: reading groups, rules and deadlines, edited one by
one through the API or loaded from a readable YAML file (`telehealth routing load FILE`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.auth import service as auth
from telehealth.auth.models import User
from telehealth.cases.models import (
    Case,
    CasePriority,
    CaseService,
    DeadlinePolicy,
    ReadingGroup,
    ReadingGroupMember,
    RoutingRule,
)
from telehealth.cases.service.common import (
    CaseContext,
    GroupExists,
    GroupInUse,
    GroupNotFound,
    InvalidRouting,
    RuleNotFound,
)
from telehealth.cases.service.routing import parse_clock_time
from telehealth.db import transaction
from telehealth.institutions.models import Institution

log = logging.getLogger(__name__)

DEFAULT_ROUTING_FILE = Path(__file__).resolve().parents[1] / "routing.default.yaml"

# --- what an admin writes (API body or YAML) ---------------------------------------------------


class GroupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    institution: str = Field(description="code of the hosting institution")
    level: int = 0
    services: list[CaseService] = Field(default_factory=list, description="empty: every service")
    lead: str | None = Field(default=None, description="username of the group lead")
    members: list[str] = Field(default_factory=list, description="usernames")
    enabled: bool = True


class Conditions(BaseModel):
    """Each condition set must hold; a list matches when any of its values does."""

    model_config = ConfigDict(extra="forbid")

    modalities: list[str] | None = None
    sop_classes: list[str] | None = None
    body_parts: list[str] | None = None
    services: list[CaseService] | None = None
    priorities: list[CasePriority] | None = None
    institution: str | None = Field(default=None, description="sending institution or one below it")
    time: str | None = Field(default=None, description='local "HH:MM-HH:MM"; may wrap midnight')

    @field_validator("time")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None:
            start, sep, end = value.partition("-")
            if not sep:
                raise ValueError('time window must be "HH:MM-HH:MM"')
            parse_clock_time(start.strip())
            parse_clock_time(end.strip())
        return value


class RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    group: str = Field(description="code of the target reading group")
    when: Conditions = Field(default_factory=lambda: Conditions())
    position: int | None = Field(
        default=None, description="evaluation order; default: after the last"
    )
    enabled: bool = True


class DeadlineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: CasePriority
    service: CaseService | None = None
    minutes: int = Field(gt=0)
    warn_fraction: float = Field(default=0.75, gt=0, le=1)


class RoutingFile(BaseModel):
    """The YAML routing file; `deadlines` absent leaves the deadlines as they are."""

    model_config = ConfigDict(extra="forbid")

    groups: list[GroupSpec] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(default_factory=list)
    deadlines: list[DeadlineSpec] | None = None


_Spec = TypeVar("_Spec", bound=BaseModel)


def as_spec(kind: type[_Spec], data: dict[str, Any]) -> _Spec:
    """Validate an admin's input as `kind`. Raises InvalidRouting naming what is wrong."""
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise InvalidRouting(_problems(exc)) from exc


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


# --- lookups ---------------------------------------------------------------------------------


def _institution_id(session: Session, code: str) -> int:
    found = session.scalar(select(Institution.id).where(Institution.code == code))
    if found is None:
        raise InvalidRouting(f"no institution {code}")
    return found


def _user_ids(session: Session, usernames: list[str]) -> dict[str, int]:
    found = {
        name: user_id
        for name, user_id in session.execute(
            select(User.username, User.id).where(User.username.in_(usernames))
        )
    }
    missing = sorted(set(usernames) - set(found))
    if missing:
        raise InvalidRouting(f"no user {', '.join(missing)}")
    return found


def get_group(session: Session, group_id: int) -> ReadingGroup:
    group = session.get(ReadingGroup, group_id)
    if group is None:
        raise GroupNotFound(f"no reading group {group_id}")
    return group


def _group_by_code(session: Session, code: str) -> ReadingGroup:
    group = session.scalar(select(ReadingGroup).where(ReadingGroup.code == code))
    if group is None:
        raise InvalidRouting(f"no reading group {code}")
    return group


@dataclass(frozen=True)
class GroupView:
    group: ReadingGroup
    institution: str
    lead: str | None
    members: list[str]


def group_view(session: Session, group: ReadingGroup) -> GroupView:
    members = list(
        session.scalars(
            select(User.username)
            .join(ReadingGroupMember, ReadingGroupMember.user_id == User.id)
            .where(ReadingGroupMember.group_id == group.id)
            .order_by(User.username)
        )
    )
    institution = session.scalar(
        select(Institution.code).where(Institution.id == group.institution_id)
    )
    lead = session.scalar(select(User.username).where(User.id == group.lead_user_id))
    return GroupView(group, institution or "", lead, members)


# --- groups ----------------------------------------------------------------------------------


def list_groups(session: Session, actor: auth.Actor) -> list[GroupView]:
    auth.require(actor, auth.Permission.MANAGE_ROUTING)
    groups = session.scalars(select(ReadingGroup).order_by(ReadingGroup.code))
    return [group_view(session, g) for g in groups]


def _apply_group(session: Session, group: ReadingGroup, spec: GroupSpec) -> None:
    # Look everything up before touching the row: a query autoflushes, and a new group
    # flushed half-filled would break NOT NULL constraints.
    users = _user_ids(session, [*spec.members, *([spec.lead] if spec.lead else [])])
    institution_id = _institution_id(session, spec.institution)
    group.code = spec.code
    group.name = spec.name
    group.institution_id = institution_id
    group.level = spec.level
    group.services = [str(s) for s in spec.services]
    group.lead_user_id = users[spec.lead] if spec.lead else None
    group.enabled = spec.enabled
    session.add(group)
    session.flush()
    session.execute(delete(ReadingGroupMember).where(ReadingGroupMember.group_id == group.id))
    session.add_all(
        ReadingGroupMember(group_id=group.id, user_id=users[name]) for name in set(spec.members)
    )
    session.flush()


def save_group(
    session: Session,
    actor: auth.Actor | None,
    spec: GroupSpec,
    ctx: CaseContext,
    *,
    group_id: int | None = None,
) -> ReadingGroup:
    """Create a group (group_id None) or replace one. Raises GroupExists, GroupNotFound,
    InvalidRouting (unknown institution or user), NotPermitted."""
    if actor is not None:
        auth.require(actor, auth.Permission.MANAGE_ROUTING)
    same_code = session.scalar(select(ReadingGroup).where(ReadingGroup.code == spec.code))
    if group_id is None:
        if same_code is not None:
            raise GroupExists(f"reading group {spec.code} already exists")
        group = ReadingGroup(created_at=ctx.now())
    else:
        group = get_group(session, group_id)
        if same_code is not None and same_code.id != group_id:
            raise GroupExists(f"reading group {spec.code} already exists")
    _apply_group(session, group, spec)
    if actor is not None:
        auth.audit(session, actor, "routing.group.save", object_type="group", object_id=spec.code)
    return group


def delete_group(session: Session, actor: auth.Actor, group_id: int) -> None:
    """Raises GroupNotFound, GroupInUse (a rule or case names it: disable it instead)."""
    auth.require(actor, auth.Permission.MANAGE_ROUTING)
    group = get_group(session, group_id)
    in_rules = session.scalar(select(func.count()).where(RoutingRule.group_id == group_id))
    in_cases = session.scalar(select(func.count()).where(Case.group_id == group_id))
    if in_rules or in_cases:
        raise GroupInUse(f"reading group {group.code} is used by rules or cases; disable it")
    session.delete(group)
    auth.audit(session, actor, "routing.group.delete", object_type="group", object_id=group.code)


# --- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleView:
    rule: RoutingRule
    group: str
    institution: str | None


def rule_view(session: Session, rule: RoutingRule) -> RuleView:
    group = session.scalar(select(ReadingGroup.code).where(ReadingGroup.id == rule.group_id))
    institution = (
        session.scalar(select(Institution.code).where(Institution.id == rule.institution_id))
        if rule.institution_id
        else None
    )
    return RuleView(rule, group or "", institution)


def list_rules(session: Session, actor: auth.Actor) -> list[RuleView]:
    auth.require(actor, auth.Permission.MANAGE_ROUTING)
    rules = session.scalars(select(RoutingRule).order_by(RoutingRule.position, RoutingRule.id))
    return [rule_view(session, r) for r in rules]


def _apply_rule(session: Session, rule: RoutingRule, spec: RuleSpec, now: Any) -> None:
    when = spec.when
    rule.name = spec.name
    rule.enabled = spec.enabled
    rule.group_id = _group_by_code(session, spec.group).id
    rule.modalities = [m.upper() for m in when.modalities] if when.modalities is not None else None
    rule.sop_classes = when.sop_classes
    rule.body_parts = [b.upper() for b in when.body_parts] if when.body_parts is not None else None
    rule.services = [str(s) for s in when.services] if when.services is not None else None
    rule.priorities = [str(p) for p in when.priorities] if when.priorities is not None else None
    rule.institution_id = _institution_id(session, when.institution) if when.institution else None
    if when.time:
        start, _, end = when.time.partition("-")
        rule.time_from, rule.time_to = start.strip(), end.strip()
    else:
        rule.time_from = rule.time_to = None
    if spec.position is not None:
        rule.position = spec.position
    elif rule.position is None:
        last = session.scalar(select(func.max(RoutingRule.position)))
        rule.position = (last or 0) + 10
    rule.updated_at = now


def save_rule(
    session: Session,
    actor: auth.Actor | None,
    spec: RuleSpec,
    ctx: CaseContext,
    *,
    rule_id: int | None = None,
) -> RoutingRule:
    """Create a rule (rule_id None) or replace one. Raises RuleNotFound, InvalidRouting."""
    if actor is not None:
        auth.require(actor, auth.Permission.MANAGE_ROUTING)
    now = ctx.now()
    if rule_id is None:
        rule = RoutingRule(created_at=now)
    else:
        found = session.get(RoutingRule, rule_id)
        if found is None:
            raise RuleNotFound(f"no routing rule {rule_id}")
        rule = found
    _apply_rule(session, rule, spec, now)
    session.add(rule)
    session.flush()
    if actor is not None:
        auth.audit(session, actor, "routing.rule.save", object_type="rule", object_id=str(rule.id))
    return rule


def delete_rule(session: Session, actor: auth.Actor, rule_id: int) -> None:
    auth.require(actor, auth.Permission.MANAGE_ROUTING)
    rule = session.get(RoutingRule, rule_id)
    if rule is None:
        raise RuleNotFound(f"no routing rule {rule_id}")
    session.delete(rule)
    auth.audit(session, actor, "routing.rule.delete", object_type="rule", object_id=str(rule_id))


# --- deadlines -------------------------------------------------------------------------------


def list_deadlines(session: Session, actor: auth.Actor) -> list[DeadlinePolicy]:
    auth.require(actor, auth.Permission.MANAGE_ROUTING)
    return list(session.scalars(select(DeadlinePolicy).order_by(DeadlinePolicy.id)))


def replace_deadlines(
    session: Session, actor: auth.Actor | None, specs: list[DeadlineSpec]
) -> list[DeadlinePolicy]:
    """Replace every deadline policy (open cases keep the due time they were given).
    Raises InvalidRouting for a (priority, service) given twice."""
    if actor is not None:
        auth.require(actor, auth.Permission.MANAGE_ROUTING)
    keys = [(s.priority, s.service) for s in specs]
    if len(set(keys)) != len(keys):
        raise InvalidRouting("a priority and service pair appears twice in the deadlines")
    session.execute(delete(DeadlinePolicy))
    rows = [
        DeadlinePolicy(
            priority=s.priority, service=s.service, minutes=s.minutes, warn_fraction=s.warn_fraction
        )
        for s in specs
    ]
    session.add_all(rows)
    session.flush()
    if actor is not None:
        auth.audit(session, actor, "routing.deadlines.replace", detail=f"{len(rows)} policies")
    return rows


# --- the routing file ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadReport:
    groups: int
    rules: int
    deadlines: int | None  # None: the file left the deadlines alone


def parse_routing_file(text: str) -> RoutingFile:
    """Raises InvalidRouting naming what is wrong and where."""
    try:
        document = yaml.safe_load(text) or {}
        return RoutingFile.model_validate(document)
    except yaml.YAMLError as exc:
        raise InvalidRouting(f"routing file is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise InvalidRouting(f"routing file: {_problems(exc)}") from exc


def load_routing(
    session: Session, actor: auth.Actor | None, document: RoutingFile, ctx: CaseContext
) -> LoadReport:
    """Apply a routing file: groups created or updated by code (others stay), every rule
    replaced by the file's in its order, deadlines replaced when the file has them.
    All or nothing: raises InvalidRouting and changes nothing when any entry is wrong."""
    if actor is not None:
        auth.require(actor, auth.Permission.MANAGE_ROUTING)
    with session.begin_nested():
        for spec in document.groups:
            existing = session.scalar(select(ReadingGroup).where(ReadingGroup.code == spec.code))
            save_group(session, None, spec, ctx, group_id=existing.id if existing else None)
        session.execute(delete(RoutingRule))
        for position, rule in enumerate(document.rules, start=1):
            ordered = rule.model_copy(update={"position": rule.position or position * 10})
            save_rule(session, None, ordered, ctx)
        deadlines = None
        if document.deadlines is not None:
            deadlines = len(replace_deadlines(session, None, document.deadlines))
    if actor is not None:
        auth.audit(session, actor, "routing.load", detail=f"{len(document.rules)} rules")
    return LoadReport(len(document.groups), len(document.rules), deadlines)


def routing_is_empty(session: Session) -> bool:
    return not any(
        session.scalar(select(func.count()).select_from(table))
        for table in (ReadingGroup, RoutingRule, DeadlinePolicy)
    )


def seed_on_first_start(
    factory: sessionmaker[Session], ctx: CaseContext, path: Path | None = None
) -> LoadReport | None:
    """Load the routing file into empty routing tables (a new hub). A file naming
    institutions or users that do not exist yet is logged and skipped, never fatal."""
    path = path or DEFAULT_ROUTING_FILE
    try:
        with transaction(factory) as session:
            if not routing_is_empty(session):
                return None
            return load_routing(session, None, parse_routing_file(path.read_text("utf-8")), ctx)
    except (InvalidRouting, OSError) as exc:
        log.warning("routing file %s not loaded: %s", path, exc)
        return None
