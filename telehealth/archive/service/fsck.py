"""`telehealth fsck`: prove the index and the storage agree."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from telehealth.archive.models import Instance, StorageState, SupersededObject
from telehealth.archive.service.spool import Spool
from telehealth.storage import ObjectStore

OBJECT_PREFIX = "dicom/"


@dataclass
class FsckReport:
    instances: int = 0
    spooled: int = 0
    stored: int = 0
    superseded: int = 0
    purged: int = 0  # removed by retention rules
    problems: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)  # unreadable files kept for a person

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(session: Session, spool: Spool, store: ObjectStore, *, deep: bool = False) -> FsckReport:
    """Check every indexed version is where the index says, and nothing stored is unindexed.

    `deep` also reads every object back and compares its SHA-256 (slow: reads everything).
    """
    report = FsckReport()
    objects = {info.key: info for info in store.list_objects(OBJECT_PREFIX)}
    referenced_keys: set[str] = set()
    referenced_spool: set[str] = set()

    rows = list(
        session.execute(
            select(
                Instance.sop_instance_uid,
                Instance.state,
                Instance.spool_name,
                Instance.object_key,
                Instance.size_bytes,
                Instance.sha256,
            )
        )
    )
    superseded = list(
        session.execute(
            select(
                SupersededObject.sop_instance_uid,
                SupersededObject.state,
                SupersededObject.spool_name,
                SupersededObject.object_key,
                SupersededObject.size_bytes,
                SupersededObject.sha256,
            )
        )
    )
    report.instances = len(rows)
    report.superseded = len(superseded)
    for uid, state, spool_name, key, size, sha256 in rows + superseded:
        if state == StorageState.PURGED:  # retention removed its object; the row is the record
            report.purged += 1
            continue
        referenced_keys.add(key)
        if state == StorageState.SPOOLED:
            report.spooled += 1
            if not spool_name or not spool.exists(spool_name):
                report.problems.append(f"{uid}: indexed as spooled but spool file is missing")
                continue
            referenced_spool.add(spool_name)
            path = spool.path(spool_name)
            if path.stat().st_size != size:
                report.problems.append(f"{uid}: spool file size differs from the index")
            elif deep and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
                report.problems.append(f"{uid}: spool file content differs from the index")
            continue
        report.stored += 1
        info = objects.get(key)
        if info is None:
            report.problems.append(f"{uid}: indexed as stored but object {key} is missing")
        elif info.size != size:
            report.problems.append(f"{uid}: object {key} has size {info.size}, index {size}")
        elif deep and hashlib.sha256(store.get_bytes(key)).hexdigest() != sha256:
            report.problems.append(f"{uid}: object {key} content differs from the index")

    for key in sorted(set(objects) - referenced_keys):
        report.problems.append(f"object {key} is not in the index")
    for name in sorted(set(spool.names()) - referenced_spool):
        report.problems.append(f"spool file {name} is not in the index")
    report.quarantined = sorted(p.name for p in spool.quarantine.iterdir())
    return report
