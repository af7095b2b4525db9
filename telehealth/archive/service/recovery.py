"""After a crash: make the index agree with what the spool holds, before taking new work."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select

from telehealth.archive.models import IngestSource, Instance, StorageState, SupersededObject
from telehealth.archive.service.header import parse_header
from telehealth.archive.service.index import IndexOutcome, Origin, StoredCopy, index_instance
from telehealth.archive.service.spool import spool_institution
from telehealth.db import transaction
from telehealth.errors import DomainError, Invalid

if TYPE_CHECKING:
    from telehealth.archive.service.archive import Archive

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    indexed: list[str] = field(default_factory=list)  # spool files indexed after a crash
    removed: list[str] = field(default_factory=list)  # already stored; leftover copies
    quarantined: list[str] = field(default_factory=list)  # unreadable; kept aside
    abandoned: int = 0  # half-received files of a process that died, removed


def recover_spool(archive: Archive, *, min_age_seconds: float = 0.0) -> RecoveryReport:
    """Index spool files the index does not know, drop copies already stored.

    A file is in the spool but not the index when the hub died between the fsync and the
    commit, or the database's answer to the commit was lost: Success was never answered,
    but the bytes are whole, so keep them. `min_age_seconds` leaves alone files an ingest
    may still be committing (when this runs while the hub serves).
    """
    report = RecoveryReport(abandoned=archive.spool.remove_abandoned_parts())
    cutoff = time.time() - min_age_seconds
    with transaction(archive.factory) as session:
        known = set(
            session.scalars(select(Instance.spool_name).where(Instance.spool_name.is_not(None)))
        ) | set(
            session.scalars(
                select(SupersededObject.spool_name).where(SupersededObject.spool_name.is_not(None))
            )
        )
    for name in sorted(set(archive.spool.names()) - known):
        try:
            if min_age_seconds and archive.spool.path(name).stat().st_mtime > cutoff:
                continue
            data = archive.spool.read(name)
        except FileNotFoundError:
            continue  # uploaded and removed since we listed it
        try:
            header = parse_header(data)
        except Invalid as exc:
            log.warning("spool file %s is unreadable (%s); moved to quarantine", name, exc)
            archive.spool.quarantine_file(name)
            report.quarantined.append(name)
            continue
        sha256 = hashlib.sha256(data).hexdigest()
        with transaction(archive.factory) as session:
            stored = session.scalar(
                select(Instance.id).where(
                    Instance.sop_instance_uid == header.sop_instance_uid,
                    Instance.sha256 == sha256,
                    Instance.state == StorageState.STORED,
                )
            ) or session.scalar(
                select(SupersededObject.id).where(
                    SupersededObject.sop_instance_uid == header.sop_instance_uid,
                    SupersededObject.sha256 == sha256,
                    SupersededObject.state == StorageState.STORED,
                )
            )
        if stored:
            archive.spool.remove(name)  # uploaded and recorded; only the delete was lost
            report.removed.append(name)
            continue
        origin = Origin(IngestSource.RECOVERY, institution_id=spool_institution(name))
        try:
            with transaction(archive.factory) as session:
                outcome, _ = index_instance(
                    session,
                    header,
                    origin,
                    StoredCopy(name, sha256, len(data)),
                    now=archive.clock.now(),
                    policy=archive.duplicate_policy,
                )
        except DomainError as exc:
            log.warning("spool file %s could not be indexed (%s); quarantined", name, exc)
            archive.spool.quarantine_file(name)
            report.quarantined.append(name)
            continue
        if outcome == IndexOutcome.DUPLICATE:
            archive.spool.remove(name)  # the same bytes arrived again and were kept then
            report.removed.append(name)
            continue
        report.indexed.append(name)
    if report.indexed or report.removed or report.quarantined or report.abandoned:
        log.info(
            "spool recovery: %d indexed, %d leftover copies removed, %d quarantined,"
            " %d half-received files removed",
            len(report.indexed),
            len(report.removed),
            len(report.quarantined),
            report.abandoned,
        )
    return report
