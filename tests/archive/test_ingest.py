"""The one ingest path: durable, idempotent, strict about what it accepts, honest on reads."""

from __future__ import annotations

import hashlib
import io

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from telehealth.archive.models import Instance, StorageState, Study, SupersededObject
from telehealth.archive.service import (
    DuplicateRejected,
    IndexOutcome,
    MalformedInstance,
    MissingIdentifier,
    StudyOwnedElsewhere,
    UnknownTransferSyntax,
    fsck,
)
from telehealth.config import DuplicatePolicy
from telehealth.db import transaction
from telehealth.events import Topic
from tests.conftest import DEV_DATA, upload_origin

CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"


def _rewrite(data: bytes, **changes: str) -> bytes:
    ds = dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        if keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        elif value == "":
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if changes.get("SOPInstanceUID"):
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def test_ingest_indexes_uploads_and_reads_back_byte_identical(hub, consortium):
    data = CT.read_bytes()
    result = hub.archive.ingest(data, upload_origin(consortium["CLINIC_A"]))
    assert result.outcome == IndexOutcome.NEW
    with transaction(hub.factory) as session:
        assert hub.archive.read_instance(session, result.sop_instance_uid) == data
    assert hub.archive.uploader.wait_idle(30)
    with transaction(hub.factory) as session:
        instance = session.scalar(select(Instance))
        assert instance.state == StorageState.STORED
        assert instance.sha256 == hashlib.sha256(data).hexdigest()
        assert instance.spool_name is None
        assert hub.archive.read_instance(session, result.sop_instance_uid) == data
        assert hub.store.get_bytes(instance.object_key) == data
        assert fsck(session, hub.spool, hub.store, deep=True).clean
    assert list(hub.spool.names()) == []


def test_same_instance_twice_is_stored_once(hub, consortium):
    data = CT.read_bytes()
    hub.archive.ingest(data, upload_origin(consortium["CLINIC_A"]))
    again = hub.archive.ingest(data, upload_origin(consortium["CLINIC_A"]))
    assert again.outcome == IndexOutcome.DUPLICATE
    hub.archive.uploader.wait_idle(30)
    with transaction(hub.factory) as session:
        assert len(session.scalars(select(Instance)).all()) == 1
        study = session.scalar(select(Study))
        assert study.num_instances == 1
        assert fsck(session, hub.spool, hub.store).clean


def test_changed_bytes_replace_and_keep_the_old_version(hub, consortium):
    data = CT.read_bytes()
    corrected = _rewrite(data, PatientName="Corrected^Name")
    hub.archive.ingest(data, upload_origin(consortium["CLINIC_A"]))
    result = hub.archive.ingest(corrected, upload_origin(consortium["CLINIC_A"]))
    assert result.outcome == IndexOutcome.REPLACED
    hub.archive.uploader.wait_idle(30)
    with transaction(hub.factory) as session:
        assert hub.archive.read_instance(session, result.sop_instance_uid) == corrected
        old = session.scalar(select(SupersededObject))
        assert hub.store.get_bytes(old.object_key) == data  # nothing lost
        assert session.scalar(select(Study)).num_instances == 1
        assert fsck(session, hub.spool, hub.store, deep=True).clean


def test_reject_policy_refuses_changed_bytes(hub_factory, consortium_factory=None):
    hub = hub_factory(duplicate_policy=DuplicatePolicy.REJECT)
    from tests.conftest import seed_consortium

    with transaction(hub.factory) as session:
        ids = seed_consortium(session)
    data = CT.read_bytes()
    hub.archive.ingest(data, upload_origin(ids["CLINIC_A"]))
    with pytest.raises(DuplicateRejected):
        hub.archive.ingest(_rewrite(data, PatientName="Other"), upload_origin(ids["CLINIC_A"]))
    assert len(list(hub.spool.names())) <= 1  # only the first version's file, if not uploaded


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"StudyInstanceUID": ""}, MissingIdentifier),
        ({"SeriesInstanceUID": ""}, MissingIdentifier),
        ({"StudyInstanceUID": "1.2.3.../../etc"}, MissingIdentifier),
        ({"TransferSyntaxUID": "1.2.3.4.5.6"}, UnknownTransferSyntax),
    ],
)
def test_bad_instances_are_refused_and_leave_nothing(hub, consortium, change, error):
    bad = _rewrite(CT.read_bytes(), **change)
    with pytest.raises(error):
        hub.archive.ingest(bad, upload_origin(consortium["CLINIC_A"]))
    assert list(hub.spool.names()) == []
    with transaction(hub.factory) as session:
        assert session.scalars(select(Instance)).all() == []


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_truncated_instance_is_refused(hub, consortium, cut):
    data = CT.read_bytes()
    with pytest.raises(MalformedInstance):
        hub.archive.ingest(data[: int(len(data) * cut)], upload_origin(consortium["CLINIC_A"]))
    assert list(hub.spool.names()) == []


def test_garbage_is_refused(hub, consortium):
    with pytest.raises(MalformedInstance):
        hub.archive.ingest(b"\x00" * 128 + b"DICM" + b"\xff" * 300, upload_origin(1))
    with pytest.raises(MalformedInstance):
        hub.archive.ingest(b"<html>not dicom</html>", upload_origin(1))


def test_a_clinic_cannot_add_to_another_clinics_study(hub, consortium):
    data = CT.read_bytes()
    hub.archive.ingest(data, upload_origin(consortium["CLINIC_A"]))
    other = _rewrite(data, SOPInstanceUID=generate_uid())
    with pytest.raises(StudyOwnedElsewhere):
        hub.archive.ingest(other, upload_origin(consortium["CLINIC_B"]))


def test_same_patient_id_at_two_clinics_is_two_patients(hub, consortium):
    data = CT.read_bytes()
    hub.archive.ingest(data, upload_origin(consortium["CLINIC_A"]))
    other_study = _rewrite(
        data,
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        SOPInstanceUID=generate_uid(),
    )
    hub.archive.ingest(other_study, upload_origin(consortium["CLINIC_B"]))
    from telehealth.archive.models import Patient

    with transaction(hub.factory) as session:
        patients = session.scalars(select(Patient)).all()
        assert len(patients) == 2
        assert {p.patient_id for p in patients} == {dcmread(CT).PatientID}


def test_study_becomes_stable_after_quiet_period(hub_factory, clock):
    from tests.conftest import seed_consortium

    hub = hub_factory(clock=clock, study_stable_seconds=60, start=False)
    with transaction(hub.factory) as session:
        ids = seed_consortium(session)
    heard: list[dict] = []
    hub.events.subscribe(Topic.STUDY_STABLE, heard.append)
    hub.events.subscribe(Topic.STUDY_STABLE, lambda _: 1 / 0)  # a failing listener is ignored
    hub.archive.ingest(CT.read_bytes(), upload_origin(ids["CLINIC_A"]))
    clock.advance(seconds=59)
    assert hub.archive.check_stable_studies() == []
    clock.advance(seconds=2)
    stable = hub.archive.check_stable_studies()
    assert [s.study_instance_uid for s in stable] == [dcmread(CT).StudyInstanceUID]
    assert heard and heard[0]["study_instance_uid"] == dcmread(CT).StudyInstanceUID
    assert hub.archive.check_stable_studies() == []  # announced once
    # A late instance makes the study unstable again, and stable after another quiet period.
    hub.archive.ingest(
        _rewrite(CT.read_bytes(), SOPInstanceUID=generate_uid()), upload_origin(ids["CLINIC_A"])
    )
    clock.advance(seconds=61)
    assert len(hub.archive.check_stable_studies()) == 1
