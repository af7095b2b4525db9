"""Applying the retention policy: remove expired objects, mark their instances purged.

Each batch is one transaction: the rows are marked PURGED and committed first, then the
objects are removed. A crash in between leaves objects nobody indexes as stored (fsck lists
them as orphans) rather than rows pointing at nothing. Logs carry rule names and counts, never
patient data; the audit trail records each purge with the study's UID.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Instance, Series, StorageState, Study
from telehealth.auth import service as auth
from telehealth.auth.models import AuditEvent
from telehealth.db import transaction
from telehealth.institutions.models import Institution
from telehealth.retention.schemas import RetentionPolicy, RetentionRule
from telehealth.storage import ObjectStore

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class PurgeReport:
    dry_run: bool
    instances: dict[str, int] = field(default_factory=dict)  # rule name → instances
    bytes: dict[str, int] = field(default_factory=dict)
    audit_events_removed: int = 0

    @property
    def total_instances(self) -> int:
        return sum(self.instances.values())


def apply_policy(
    factory: sessionmaker[Session],
    store: ObjectStore,
    policy: RetentionPolicy,
    now: datetime,
    *,
    dry_run: bool = False,
) -> PurgeReport:
    report = PurgeReport(dry_run=dry_run)
    for rule in policy.rules:
        count = size = 0
        while True:
            with transaction(factory) as session:
                batch = _expired(session, rule, now)
                if not batch:
                    break
                count += len(batch)
                size += sum(i.size_bytes for i, _ in batch)
                if dry_run:
                    break  # one batch is enough to say "something would go"; counted below
                keys = [i.object_key for i, _ in batch]
                for instance, study_uid in batch:
                    instance.state = StorageState.PURGED
                    auth.audit(
                        session,
                        None,
                        "retention.purge",
                        object_type="instance",
                        object_id=instance.sop_instance_uid,
                        detail=f"rule={rule.name} study={study_uid}",
                        when=now,
                    )
            for key in keys:  # after the commit: see the module docstring
                store.remove(key)
            log.info("retention %s: purged %d instances (%d bytes)", rule.name, len(batch),
                     sum(i.size_bytes for i, _ in batch))  # fmt: skip
        if dry_run:
            count, size = _count_expired(factory, rule, now)
        report.instances[rule.name] = count
        report.bytes[rule.name] = size
    report.audit_events_removed = trim_audit(factory, policy, now, dry_run=dry_run)
    return report


def trim_audit(
    factory: sessionmaker[Session], policy: RetentionPolicy, now: datetime, *, dry_run: bool
) -> int:
    """Audit events older than audit_keep_days (never, when unset)."""
    if policy.audit_keep_days is None:
        return 0
    cutoff = now - timedelta(days=policy.audit_keep_days)
    with transaction(factory) as session:
        old = select(AuditEvent.id).where(AuditEvent.at < cutoff)
        if dry_run:
            return len(session.scalars(old).all())
        removed = session.execute(delete(AuditEvent).where(AuditEvent.at < cutoff)).rowcount
    if removed:
        log.info("retention: removed %d audit events older than %s days", removed,
                 policy.audit_keep_days)  # fmt: skip
    return int(removed or 0)


def _expired_query(rule: RetentionRule, now: datetime):  # type: ignore[no-untyped-def]
    cutoff = now - timedelta(days=rule.keep_days)
    query = (
        select(Instance, Study.study_instance_uid)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Instance.state == StorageState.STORED, Instance.received_at < cutoff)
    )
    if rule.modalities:
        query = query.where(Series.modality.in_(rule.modalities))
    if rule.sop_classes:
        query = query.where(Instance.sop_class_uid.in_(rule.sop_classes))
    if rule.institutions:
        query = query.join(Institution, Institution.id == Study.institution_id).where(
            Institution.code.in_(rule.institutions)
        )
    return query.order_by(Instance.id)


def _expired(session: Session, rule: RetentionRule, now: datetime) -> list[tuple[Instance, str]]:
    rows = session.execute(_expired_query(rule, now).limit(BATCH)).all()
    return [(row[0], row[1]) for row in rows]


def _count_expired(
    factory: sessionmaker[Session], rule: RetentionRule, now: datetime
) -> tuple[int, int]:
    expired = _expired_query(rule, now).subquery()
    with factory() as session:
        count, size = session.execute(
            select(func.count(), func.coalesce(func.sum(expired.c.size_bytes), 0))
        ).one()
    return int(count), int(size)
