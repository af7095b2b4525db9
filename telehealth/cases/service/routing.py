"""Which reading group gets a case: rules in order, first match wins, else up the tree.

Pure evaluation over a snapshot of groups, rules and the consortium tree, so the same
inputs always give the same group (tested with a fixed clock for time-of-day rules).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, time
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from telehealth.archive.models import Instance, Series, Study
from telehealth.auth.models import Role, User
from telehealth.cases.models import (
    CasePriority,
    CaseService,
    ReadingGroup,
    ReadingGroupMember,
    RoutingRule,
)
from telehealth.ecg.service.dicom_waveform import ECG_SOP_CLASSES
from telehealth.institutions.models import Institution

# Roles whose members count as readers able to take a case.
READER_ROLES = (Role.SPECIALIST, Role.ADMIN)


@dataclass(frozen=True)
class CaseFacts:
    """What routing rules look at."""

    institution_id: int
    service: CaseService
    priority: CasePriority
    local_time: time
    modalities: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Routing:
    """Where a case goes (None: the admins' fallback queue) and why, in words."""

    group_id: int | None
    rule_id: int | None
    trail: list[str] = field(default_factory=list)


def study_facts(
    session: Session,
    study_pk: int,
    *,
    service: CaseService,
    priority: CasePriority,
    now: datetime,
    timezone: ZoneInfo,
) -> CaseFacts:
    """The facts of a study as indexed so far (its series and SOP classes)."""
    study = session.get(Study, study_pk)
    assert study is not None
    series = session.execute(
        select(Series.modality, Series.body_part).where(Series.study_pk == study_pk).distinct()
    ).all()
    sop_classes = frozenset(
        session.scalars(
            select(Instance.sop_class_uid)
            .join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk == study_pk)
            .distinct()
        )
    )
    modalities = {m.upper() for m, _ in series if m}
    modalities |= {m.upper() for m in study.modalities.split("\\") if m}
    if sop_classes & ECG_SOP_CLASSES.keys():
        modalities.add("ECG")  # some carts label a 12-lead waveform "OT" or leave it empty
    return CaseFacts(
        institution_id=study.institution_id,
        service=service,
        priority=priority,
        local_time=now.astimezone(timezone).time(),
        modalities=frozenset(modalities),
        sop_classes=sop_classes,
        body_parts=frozenset(b.upper() for _, b in series if b),
    )


def parse_clock_time(value: str) -> time:
    """ "HH:MM" → time. Raises ValueError."""
    hours, _, minutes = value.partition(":")
    if len(hours) != 2 or len(minutes) != 2 or not (hours + minutes).isdigit():
        raise ValueError(f"time {value!r} is not HH:MM")
    return time(int(hours), int(minutes))


def in_window(moment: time, start: str | None, end: str | None) -> bool:
    """Inside [start, end) local time; a window whose end is before its start wraps midnight."""
    if start is None or end is None:
        return True
    lo, hi = parse_clock_time(start), parse_clock_time(end)
    if lo == hi:
        return True
    return lo <= moment < hi if lo < hi else (moment >= lo or moment < hi)


def _any(wanted: list[str] | None, present: frozenset[str]) -> bool:
    return wanted is None or bool({w.upper() for w in wanted} & present)


def rule_matches(rule: RoutingRule, facts: CaseFacts, lineage: list[int]) -> bool:
    """Every condition that is set holds. `lineage`: the sending institution and its parents."""
    return (
        _any(rule.modalities, facts.modalities)
        and (rule.sop_classes is None or bool(set(rule.sop_classes) & facts.sop_classes))
        and _any(rule.body_parts, facts.body_parts)
        and (rule.services is None or facts.service in rule.services)
        and (rule.priorities is None or facts.priority in rule.priorities)
        and (rule.institution_id is None or rule.institution_id in lineage)
        and in_window(facts.local_time, rule.time_from, rule.time_to)
    )


@dataclass
class _Snapshot:
    """Groups, the tree and who can read, loaded once per routing decision."""

    groups: dict[int, ReadingGroup]
    parents: dict[int, int | None]
    able: set[int]  # groups with at least one active reader

    @classmethod
    def load(cls, session: Session) -> _Snapshot:
        groups = {g.id: g for g in session.scalars(select(ReadingGroup))}
        parents = {
            child: parent
            for child, parent in session.execute(select(Institution.id, Institution.parent_id))
        }
        able = set(
            session.scalars(
                select(ReadingGroupMember.group_id)
                .join(User, User.id == ReadingGroupMember.user_id)
                .where(User.active.is_(True), User.role.in_(READER_ROLES))
                .distinct()
            )
        )
        return cls(groups, parents, able)

    def lineage(self, institution_id: int) -> list[int]:
        """The institution, its parent, … up to the root; a cycle in the tree stops the walk."""
        chain: list[int] = []
        current: int | None = institution_id
        while current is not None and current not in chain:
            chain.append(current)
            current = self.parents.get(current)
        return chain

    def can_take(self, group: ReadingGroup) -> bool:
        return group.enabled and group.id in self.able

    def serves(self, group: ReadingGroup, service: CaseService) -> bool:
        return not group.services or service in group.services

    def _at(self, institution_id: int) -> list[ReadingGroup]:
        at = [g for g in self.groups.values() if g.institution_id == institution_id]
        return sorted(at, key=lambda g: (g.level, g.id))

    def climb(
        self, *, institution_id: int, above: ReadingGroup | None = None
    ) -> Iterator[ReadingGroup]:
        """Groups in escalation order: above `above` (higher level at its institution, then
        its parent institutions), or from an institution upwards."""
        start = above.institution_id if above else institution_id
        for i, inst in enumerate(self.lineage(start)):
            for group in self._at(inst):
                if i == 0 and above is not None and group.level <= above.level:
                    continue
                yield group

    def first_able(
        self, service: CaseService, *, institution_id: int, above: ReadingGroup | None = None
    ) -> ReadingGroup | None:
        for group in self.climb(institution_id=institution_id, above=above):
            if self.can_take(group) and self.serves(group, service):
                return group
        return None


def route(session: Session, facts: CaseFacts) -> Routing:
    """The group for a case: the first matching rule's group, or the next able group above
    it, or (no rule) the nearest able group from the sending institution up; None when
    nobody can take it (the admins' fallback queue). Never raises for a bad rule: what went
    wrong is in the trail."""
    snap = _Snapshot.load(session)
    lineage = snap.lineage(facts.institution_id)
    trail: list[str] = []
    rules = session.scalars(
        select(RoutingRule)
        .where(RoutingRule.enabled.is_(True))
        .order_by(RoutingRule.position, RoutingRule.id)
    )
    for rule in rules:
        try:
            matched = rule_matches(rule, facts, lineage)
        except ValueError as exc:  # a time window stored badly by hand
            trail.append(f"rule {rule.id} {rule.name!r} skipped: {exc}")
            continue
        if not matched:
            continue
        target = snap.groups.get(rule.group_id)
        if target is None:
            trail.append(f"rule {rule.id} {rule.name!r}: its group no longer exists")
            continue
        if snap.can_take(target):
            trail.append(f"rule {rule.id} {rule.name!r} → {target.code}")
            return Routing(target.id, rule.id, trail)
        trail.append(f"rule {rule.id} {rule.name!r} → {target.code}, which has no able reader")
        up = snap.first_able(facts.service, institution_id=target.institution_id, above=target)
        if up is not None:
            trail.append(f"next level up → {up.code}")
            return Routing(up.id, rule.id, trail)
        trail.append("no group above can take it either")
    if not trail:
        trail.append("no rule matched")
    nearest = snap.first_able(facts.service, institution_id=facts.institution_id)
    if nearest is not None:
        trail.append(f"nearest able group up the tree → {nearest.code}")
        return Routing(nearest.id, None, trail)
    trail.append("no group can take it: fallback queue for admins")
    return Routing(None, None, trail)


def next_group_up(
    session: Session, *, group_id: int | None, institution_id: int, service: CaseService
) -> ReadingGroup | None:
    """The group a case is offered to when its group let the deadline pass."""
    snap = _Snapshot.load(session)
    current = snap.groups.get(group_id) if group_id is not None else None
    if current is None:
        return snap.first_able(service, institution_id=institution_id)
    return snap.first_able(service, institution_id=institution_id, above=current)
