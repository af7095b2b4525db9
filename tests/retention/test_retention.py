"""Retention rules remove expired raw data (the objects) and nothing else; the audit trail
records each removal and is itself kept at least as long as the longest rule."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy import select

from telehealth.archive.models import Instance, StorageState, Study
from telehealth.archive.service import InstancePurged, fsck
from telehealth.auth.models import AuditEvent
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.errors import wire_status
from telehealth.hub import Hub
from telehealth.retention import RetentionPolicy, apply_policy, load_policy
from telehealth.storage import ObjectStore
from tests.conftest import DEV_DATA, seed_consortium, upload_origin
from tests.dicomweb import CT, fresh_copy
from tests.faults import wait_for

ECG = DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm"
POLICY = """
rules:
  - name: ecg-raw-10y
    modalities: [ECG]
    keep_days: 3650
audit_keep_days: 3650
"""


def states(hub: Hub) -> dict[str, StorageState]:
    with hub.factory() as session:
        return dict(session.execute(select(Instance.sop_instance_uid, Instance.state)).all())


def test_expired_ecg_objects_go_the_rest_stays(
    hub_factory: Callable[..., Hub], clock: FakeClock, store: ObjectStore, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    hub = hub_factory(dicom=False, clock=clock)
    with transaction(hub.factory) as session:
        clinic = seed_consortium(session)["CLINIC_A"]
    old_ecg = hub.archive.ingest(fresh_copy(ECG), upload_origin(clinic)).sop_instance_uid
    old_ct = hub.archive.ingest(fresh_copy(CT), upload_origin(clinic)).sop_instance_uid
    clock.advance(days=3000)
    new_ecg = hub.archive.ingest(fresh_copy(ECG), upload_origin(clinic)).sop_instance_uid
    assert hub.archive.uploader.wait_idle(timeout=60)
    clock.advance(days=700)  # the first ECG is now 3700 days old, the second 700
    policy_file = tmp_path / "retention.yaml"
    policy_file.write_text(POLICY)
    policy = load_policy(policy_file)

    dry = apply_policy(hub.factory, hub.store, policy, clock.now(), dry_run=True)
    assert dry.instances == {"ecg-raw-10y": 1}
    assert states(hub)[old_ecg] == StorageState.STORED  # a dry run changes nothing
    objects_before = {o.key for o in store.list_objects()}

    caplog.set_level(logging.INFO, logger="telehealth.retention")
    done = apply_policy(hub.factory, hub.store, policy, clock.now())
    assert done.instances == {"ecg-raw-10y": 1}
    after = states(hub)
    assert after[old_ecg] == StorageState.PURGED
    assert after[old_ct] == StorageState.STORED  # not an ECG
    assert after[new_ecg] == StorageState.STORED  # not expired
    assert len(objects_before - {o.key for o in store.list_objects()}) == 1
    assert "ecg-raw-10y: purged 1 instances" in caplog.text
    assert old_ecg not in caplog.text  # counts in the log; the UID only in the audit trail
    with hub.factory() as session:
        trail = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "retention.purge")
        ).all()
        assert [e.object_id for e in trail] == [old_ecg]
    with transaction(hub.factory) as session:
        report = fsck(session, hub.spool, hub.store)
    assert report.clean and report.purged == 1
    # Nothing left to do the second time.
    again = apply_policy(hub.factory, hub.store, policy, clock.now())
    assert again.instances == {"ecg-raw-10y": 0}


def test_audit_is_trimmed_only_past_its_own_period(
    hub_factory: Callable[..., Hub], clock: FakeClock
) -> None:
    hub = hub_factory(dicom=False, clock=clock)
    start = clock.now()
    with transaction(hub.factory) as session:
        session.add(AuditEvent(at=start, actor="x", action="old-event", outcome="success"))
    clock.advance(days=3900)
    with transaction(hub.factory) as session:
        session.add(AuditEvent(at=clock.now(), actor="x", action="new-event", outcome="success"))
    clock.advance(days=100)
    policy = RetentionPolicy.model_validate({"rules": [], "audit_keep_days": 3650})
    report = apply_policy(hub.factory, hub.store, policy, clock.now())
    assert report.audit_events_removed == 1
    with hub.factory() as session:
        kept = session.scalars(select(AuditEvent.action).where(AuditEvent.actor == "x"))
        assert list(kept) == ["new-event"]


def test_a_policy_that_would_outlive_its_audit_or_is_too_short_is_refused() -> None:
    with pytest.raises(ValidationError, match="shorter than the longest rule"):
        RetentionPolicy.model_validate(
            {"rules": [{"name": "x", "keep_days": 3650}], "audit_keep_days": 3000}
        )
    with pytest.raises(ValidationError):  # days typed where years were meant
        RetentionPolicy.model_validate({"rules": [{"name": "x", "keep_days": 10}]})
    assert load_policy(None).rules == []  # no file: nothing is ever removed


def test_the_hub_applies_its_retention_file_by_itself(
    hub_factory: Callable[..., Hub], clock: FakeClock, tmp_path: Path
) -> None:
    policy_file = tmp_path / "retention.yaml"
    policy_file.write_text(POLICY)
    hub = hub_factory(
        dicom=False, clock=clock, retention_file=policy_file, retention_check_hours=0.0003
    )
    with transaction(hub.factory) as session:
        clinic = seed_consortium(session)["CLINIC_A"]
    ecg = hub.archive.ingest(fresh_copy(ECG), upload_origin(clinic)).sop_instance_uid
    assert hub.archive.uploader.wait_idle(timeout=60)
    clock.advance(days=3700)
    wait_for(lambda: states(hub)[ecg] == StorageState.PURGED, timeout=30, what="the purge")


def test_a_bad_retention_file_stops_the_start(
    hub_factory: Callable[..., Hub], tmp_path: Path
) -> None:
    policy_file = tmp_path / "retention.yaml"
    policy_file.write_text("rules:\n  - name: oops\n    keep_days: 7\n")
    with pytest.raises(ValidationError, match="keep_days"):
        hub_factory(dicom=False, retention_file=policy_file)


def test_a_purged_instance_answers_gone_and_its_study_is_still_listed(
    hub_factory: Callable[..., Hub], clock: FakeClock
) -> None:
    hub = hub_factory(dicom=False, clock=clock)
    with transaction(hub.factory) as session:
        clinic = seed_consortium(session)["CLINIC_A"]
    result = hub.archive.ingest(fresh_copy(ECG), upload_origin(clinic))
    assert hub.archive.uploader.wait_idle(timeout=60)
    clock.advance(days=3700)
    apply_policy(hub.factory, hub.store, load_policy_text(POLICY), clock.now())
    with transaction(hub.factory) as session, pytest.raises(InstancePurged):
        hub.archive.read_instance(session, result.sop_instance_uid)
    assert wire_status(InstancePurged("x"))[0] == 410
    with hub.factory() as session:
        assert session.scalar(
            select(Study.id).where(Study.study_instance_uid == result.study_instance_uid)
        )


def load_policy_text(text: str) -> RetentionPolicy:
    return RetentionPolicy.model_validate(yaml.safe_load(text))
