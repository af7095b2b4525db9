"""Measurements kept per instance: computed off the ingest thread, recomputable, overruled by
readers beside the automatic values; on SQLite and PostgreSQL, with a real S3 store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, select

from telehealth.archive.models import Instance
from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.db import transaction
from telehealth.ecg import service as ecg
from telehealth.ecg.models import EcgMeasurement, MeasurementStatus
from telehealth.ecg.service.waveform import EcgRecord, Lead, Patient
from telehealth.hub import Hub
from tests.conftest import DEV_DATA, seed_consortium, upload_origin
from tests.ecg.synthetic import synthetic_ecg

PASSWORD = "a-long-password"


def ecg_instance(
    *, hr: float = 72, qt_ms: float = 400, study_uid: str | None = None, seed: int = 0
) -> bytes:
    leads, _ = synthetic_ecg(hr=hr, qt_ms=qt_ms, seed=seed)
    record = EcgRecord(
        tuple(Lead(n, np.rint(v / 2.5).astype(np.int64), 2.5) for n, v in leads.items()),
        500.0,
        patient=Patient(patient_id=f"E{seed}", name="王^五"),
    )
    tag = f"{hr}-{qt_ms}-{seed}-{time.monotonic_ns()}"
    return ecg.write_dicom_ecg(
        record,
        study_uid=study_uid or ecg.uid_from("study", tag),
        series_uid=ecg.uid_from("series", tag),
        sop_uid=ecg.uid_from("sop", tag),
    ).data


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def kept(hub: Hub, sop_uid: str) -> EcgMeasurement | None:
    with transaction(hub.factory) as session:
        return session.scalar(
            select(EcgMeasurement)
            .join(Instance, Instance.id == EcgMeasurement.instance_pk)
            .where(Instance.sop_instance_uid == sop_uid)
        )


@pytest.fixture
def ids(hub: Hub) -> dict[str, int]:
    with transaction(hub.factory) as session:
        ids = seed_consortium(session)
        for username, role, code in [
            ("spec", Role.SPECIALIST, "COUNTY"),
            ("tech_a", Role.TECHNICIAN, "CLINIC_A"),
            ("tech_b", Role.TECHNICIAN, "CLINIC_B"),
        ]:
            auth.create_user(
                session, username=username, password=PASSWORD, role=role, institution_code=code
            )
    return ids


def actor(hub: Hub, username: str) -> auth.Actor:
    with transaction(hub.factory) as session:
        from telehealth.auth.models import User

        user = session.scalar(select(User).where(User.username == username))
        assert user is not None
        return auth.actor_for(user)


def test_stored_ecg_is_measured_off_the_ingest_thread(hub: Hub, ids: dict[str, int]) -> None:
    announced: list[dict[str, Any]] = []
    listener_threads: list[str] = []

    def listen(payload: dict[str, Any]) -> None:
        listener_threads.append(threading.current_thread().name)
        announced.append(payload)

    hub.events.subscribe(ecg.ECG_MEASURED, listen)
    result = hub.archive.ingest(ecg_instance(hr=165, seed=1), upload_origin(ids["CLINIC_A"]))
    row = wait_for(lambda: kept(hub, result.sop_instance_uid))
    assert row.status == MeasurementStatus.COMPUTED
    assert abs(row.automatic["heart_rate_bpm"] - 165) <= 2
    assert row.automatic["algorithm"] == row.algorithm
    payload = wait_for(lambda: announced and announced[-1])
    assert payload["sop_instance_uid"] == result.sop_instance_uid
    assert payload["study_instance_uid"] == result.study_instance_uid
    assert payload["institution_id"] == ids["CLINIC_A"]
    assert [r["code"] for r in payload["triage"]] == ["tachycardia"]
    assert listener_threads == ["ecg-measure"]  # never the thread that ingested


def test_non_ecg_instances_are_left_alone(hub: Hub, ids: dict[str, int]) -> None:
    ct = (DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm").read_bytes()
    result = hub.archive.ingest(ct, upload_origin(ids["CLINIC_A"]))
    assert hub.ecg_worker.measure_named([result.sop_instance_uid]) == 0
    assert kept(hub, result.sop_instance_uid) is None


def test_the_worker_looks_up_no_image_it_is_told_of(hub: Hub, ids: dict[str, int]) -> None:
    """A CT series announces every slice; only ECGs are worth a lookup on the worker's thread."""
    looked_up: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if threading.current_thread().name == "ecg-measure":
            looked_up.append(str(parameters))

    engine = hub.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        ct = (DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm").read_bytes()
        image = hub.archive.ingest(ct, upload_origin(ids["CLINIC_A"]))
        heart = hub.archive.ingest(ecg_instance(hr=70, seed=2), upload_origin(ids["CLINIC_A"]))
        wait_for(lambda: kept(hub, heart.sop_instance_uid))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert any(heart.sop_instance_uid in p for p in looked_up)  # the listener does hear
    assert not any(image.sop_instance_uid in p for p in looked_up)


def test_sweep_measures_what_no_event_announced(hub_factory: Callable[..., Hub]) -> None:
    """Instances stored by another process (a DICOM node worker) reach no listener here."""
    quiet = hub_factory(start=False)  # no worker running: the event is dropped
    with transaction(quiet.factory) as session:
        ids = seed_consortium(session)
    result = quiet.archive.ingest(ecg_instance(seed=2), upload_origin(ids["CLINIC_A"]))
    assert kept(quiet, result.sop_instance_uid) is None
    assert quiet.ecg_worker.sweep() == 1
    assert kept(quiet, result.sop_instance_uid).status == MeasurementStatus.COMPUTED
    assert quiet.ecg_worker.sweep() == 0


def test_unreadable_ecg_is_kept_as_failed(hub: Hub, ids: dict[str, int]) -> None:
    import io

    from pydicom import dcmread

    ds = dcmread(io.BytesIO(ecg_instance(seed=3)))
    ds.WaveformSequence[0].WaveformSampleInterpretation = "XX"
    out = io.BytesIO()
    ds.save_as(out)
    result = hub.archive.ingest(out.getvalue(), upload_origin(ids["CLINIC_A"]))
    row = wait_for(lambda: kept(hub, result.sop_instance_uid))
    assert row.status == MeasurementStatus.FAILED and "XX" in row.error


def test_reader_values_kept_beside_automatic_and_survive_recompute(
    hub: Hub, ids: dict[str, int]
) -> None:
    result = hub.archive.ingest(ecg_instance(seed=4), upload_origin(ids["CLINIC_A"]))
    sop = result.sop_instance_uid
    ecg.compute(hub.archive, hub.factory, sop)
    spec, tech = actor(hub, "spec"), actor(hub, "tech_a")
    thresholds = ecg.TriageThresholds()
    with transaction(hub.factory) as session, pytest.raises(ecg.NotAReader):
        ecg.set_reader_values(session, tech, sop, {"qt_ms": 400.0}, thresholds=thresholds)
    with transaction(hub.factory) as session, pytest.raises(ecg.BadReaderValue):
        ecg.set_reader_values(session, spec, sop, {"qt_ms": "long"}, thresholds=thresholds)
    with transaction(hub.factory) as session:
        view = ecg.set_reader_values(
            session,
            spec,
            sop,
            {"qtc_bazett_ms": 520.0, "pr_ms": None},
            comment="U wave",
            thresholds=thresholds,
        )
        automatic_qtc = view.kept.automatic["qtc_bazett_ms"]
        assert automatic_qtc is not None and automatic_qtc < 500
        assert view.effective["qtc_bazett_ms"] == 520.0 and view.effective["pr_ms"] is None
        assert [r.code for r in view.triage] == [ecg.TriageCode.LONG_QTC]
        assert view.reader_name == "spec"
    before = kept(hub, sop)
    ecg.compute(hub.archive, hub.factory, sop)  # recomputation replaces only the automatic
    after = kept(hub, sop)
    assert after.reader_values == {"qtc_bazett_ms": 520.0, "pr_ms": None}
    assert after.automatic["qtc_bazett_ms"] == before.automatic["qtc_bazett_ms"]
    with transaction(hub.factory) as session:
        reasons = ecg.triage_for_study(
            session, result.study_instance_uid, {"chest_pain"}, thresholds
        )
        assert [r.code for r in reasons] == [ecg.TriageCode.CHEST_PAIN, ecg.TriageCode.LONG_QTC]
    with transaction(hub.factory) as session:
        view = ecg.set_reader_values(session, spec, sop, {}, thresholds=thresholds)
        assert view.kept.reader_values is None and view.triage == []


def test_scope_follows_the_study(hub: Hub, ids: dict[str, int]) -> None:
    from telehealth.archive.service import StudyNotFound

    result = hub.archive.ingest(ecg_instance(seed=5), upload_origin(ids["CLINIC_A"]))
    with transaction(hub.factory) as session:
        found = ecg.find_instance(
            session, actor(hub, "spec"), result.sop_instance_uid, action="ecg.test"
        )
        assert found.study_instance_uid == result.study_instance_uid
    with transaction(hub.factory) as session, pytest.raises(StudyNotFound):
        ecg.find_instance(session, actor(hub, "tech_b"), result.sop_instance_uid, action="ecg.test")
