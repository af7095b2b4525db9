"""Issue 5's "done means": every ECG in the shared dev data is ingested or converted, and
measured, on a real hub. Each file's outcome is stated exactly, including the ones that are
genuinely not measurable (a 13-sample aECG, a 100 Hz strip with only two beats in it).

The PhysioNet record (MIT-BIH 100: 30 min, MLII + V5, 360 Hz, 11-bit) is stored as 10 s
Ambulatory ECG parts of one series; the measurements read one instance, so the first part
is what is measured for "the record": its first 10 s.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import wfdb
from fastapi.testclient import TestClient
from sqlalchemy import select

from telehealth.app import create_app
from telehealth.archive.models import Instance, Series
from telehealth.archive.service import InstanceLocation
from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.db import transaction
from telehealth.ecg import service
from telehealth.ecg.service.dicom_writer import AMBULATORY_ECG
from telehealth.hub import Hub
from tests.conftest import DEV_DATA, seed_consortium, upload_origin

PASSWORD = "a-long-password"
WFDB_DIR = DEV_DATA / "ecg_wfdb" / "mitdb_100"
GROUPS = ("ecg_dicom", "ecg_hl7_aecg", "ecg_scp")


@dataclass(frozen=True)
class Expected:
    format: str
    heart_rate_bpm: float | None  # to ±0.5 bpm (the algorithm is deterministic)
    not_computable: str | None = None  # the stated reason when there is no heart rate


EXPECTED: dict[str, Expected] = {
    "ecg_dicom/pydicom__waveform_ecg.dcm": Expected("dicom", 61.1),
    "ecg_hl7_aecg/fda-aecg__minimum_aecg.xml": Expected(
        "hl7-aecg", None, "recording is 0.0 s; at least 5 s is needed"
    ),
    # 100 Hz, 10 s: too slow a rate and too few beats to measure, said so, not guessed.
    "ecg_hl7_aecg/liryc-aecg__hl7aecg_example.xml": Expected(
        "hl7-aecg", None, "only 2 beats found"
    ),
    "ecg_scp/ecg-contec__Example.scp": Expected("scp-ecg", 71.6),
}


@dataclass
class Site:
    hub: Hub
    client: TestClient
    token: str
    reader_token: str

    def auth(self, reader: bool = False) -> dict[str, str]:
        return {"authorization": f"Bearer {self.reader_token if reader else self.token}"}

    def measurements(self, sop: str) -> dict:  # type: ignore[type-arg]
        r = self.client.get(f"/api/ecg/{sop}/measurements", headers=self.auth(reader=True))
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


def _login(client: TestClient, username: str) -> str:
    r = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return str(r.json()["access_token"])


@pytest.fixture
def site(hub_factory: Callable[..., Hub]) -> Iterator[Site]:
    hub = hub_factory(dicom=False)
    with transaction(hub.factory) as session:
        seed_consortium(session)
        auth.create_user(
            session,
            username="tech",
            password=PASSWORD,
            role=Role.TECHNICIAN,
            institution_code="CLINIC_A",
        )
        auth.create_user(
            session,
            username="spec",
            password=PASSWORD,
            role=Role.SPECIALIST,
            institution_code="COUNTY",
        )
    with TestClient(create_app(hub)) as client:
        yield Site(hub, client, _login(client, "tech"), _login(client, "spec"))


def _institution(site: Site, code: str) -> int:
    from telehealth.institutions.models import Institution

    with transaction(site.hub.factory) as session:
        return int(session.scalar(select(Institution.id).where(Institution.code == code)) or 0)


def _annotated_rate(seconds: float) -> float:
    """Heart rate from the reference beat annotations in [0, seconds)."""
    ann = wfdb.rdann(str(WFDB_DIR / "100"), "atr")
    beats = np.array(
        [s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in "NLRBAaJSVrFejnE/fQ"]
    )
    beats = beats[beats < seconds * ann.fs]
    return float(60.0 / (np.mean(np.diff(beats)) / ann.fs))


def _series_parts(site: Site, series_uid: str) -> list[str]:
    with transaction(site.hub.factory) as session:
        return list(
            session.scalars(
                select(Instance.sop_instance_uid)
                .join(Series, Instance.series_pk == Series.id)
                .where(Series.series_instance_uid == series_uid)
                .order_by(Instance.instance_number)
            )
        )


def test_every_dev_sample_is_ingested_or_converted_and_measured(site: Site) -> None:
    on_disk = {
        str(p.relative_to(DEV_DATA))
        for group in GROUPS
        for p in (DEV_DATA / group).rglob("*")
        if p.is_file()
    }
    if not on_disk:
        pytest.skip(f"no ECG samples under {DEV_DATA}")
    assert on_disk == set(EXPECTED), "a sample was added or removed: state its outcome here"
    clinic = _institution(site, "CLINIC_A")
    for name, expected in sorted(EXPECTED.items()):
        data = (DEV_DATA / name).read_bytes()
        if expected.format == "dicom":
            sop = site.hub.archive.ingest(data, upload_origin(clinic)).sop_instance_uid
        else:
            r = site.client.post(
                "/api/ecg/uploads",
                files={"file": (Path(name).name, data, "application/octet-stream")},
                headers=site.auth(),
            )
            assert r.status_code == 201, (name, r.text)
            assert r.json()["format"] == expected.format, name
            sop = r.json()["sop_instance_uid"]
        measured = site.measurements(sop)
        assert measured["status"] == "computed", (name, measured["error"])
        hr = measured["automatic"]["heart_rate_bpm"]
        if expected.heart_rate_bpm is None:
            assert hr is None, (name, hr)
            assert measured["automatic"]["not_computable"]["heart_rate_bpm"] == (
                expected.not_computable
            ), name
        else:
            assert hr == pytest.approx(expected.heart_rate_bpm, abs=0.5), name


def test_physionet_record_converted_round_trips_and_is_measured(site: Site) -> None:
    files = sorted(WFDB_DIR.iterdir())
    if not files:
        pytest.skip(f"no WFDB record under {WFDB_DIR}")
    # Several files in one multipart upload, named anything: the header is found by content.
    r = site.client.post(
        "/api/ecg/uploads",
        files=[("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in files],
        headers=site.auth(),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "wfdb" and body["leads"] == ["II", "V5"]
    assert body["sampling_frequency_hz"] == 360.0 and body["duration_s"] == pytest.approx(
        650000 / 360, abs=0.01
    )
    assert body["sop_class_uid"] == AMBULATORY_ECG
    # The original is the record as one ZIP, every file in it as sent.
    with zipfile.ZipFile(io.BytesIO(site.hub.store.get_bytes(body["original_key"]))) as z:
        assert {n: z.read(n) for n in z.namelist()} == {p.name: p.read_bytes() for p in files}

    # Round trip: the parts, in order, give back the source's integers and its µV exactly
    # (quantisation step 1000/200 = 5 µV; nothing is rescaled).
    parts = _series_parts(site, body["series_instance_uid"])
    # 180 parts of 10 s and the 5.6 s tail (a tail under 5 s would join the part before).
    assert parts[0] == body["sop_instance_uid"] and len(parts) == 181
    source = wfdb.rdrecord(str(WFDB_DIR / "100"), physical=False)
    physical_uv = source.dac(expanded=False, return_res=64) * 1000.0
    stored: list[np.ndarray] = []
    stored_uv: list[np.ndarray] = []
    for sop in parts:
        location = _location(site, sop)
        record = service.rhythm_of(service.read_dicom_ecg(site.hub.archive.read_at(location)))
        assert record.names == ["II", "V5"] and record.sampling_frequency == 360.0
        stored.append(np.stack([lead.samples for lead in record.leads], axis=1))
        stored_uv.append(np.stack([lead.microvolts() for lead in record.leads], axis=1))
    assert np.array_equal(np.concatenate(stored).astype(np.int64), source.d_signal)
    np.testing.assert_allclose(np.concatenate(stored_uv), physical_uv, atol=2.5)

    # Measured: the first part (0–10 s) against the annotations' rate over the same 10 s.
    measured = site.measurements(parts[0])
    assert measured["status"] == "computed"
    assert measured["automatic"]["duration_s"] == pytest.approx(10.0)
    expected = _annotated_rate(10.0)
    assert measured["automatic"]["heart_rate_bpm"] == pytest.approx(expected, abs=2.0)


def _location(site: Site, sop: str) -> InstanceLocation:
    with transaction(site.hub.factory) as session:
        row = session.execute(
            select(Instance.state, Instance.spool_name, Instance.object_key).where(
                Instance.sop_instance_uid == sop
            )
        ).one()
    return InstanceLocation(sop, row.state, row.spool_name, row.object_key)
