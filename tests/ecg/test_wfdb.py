"""PhysioNet WFDB records: read by content, leads and calibration mapped, long records split,
bad records refused naming the problem with nothing stored."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import wfdb
from sqlalchemy import func, select

from telehealth.archive.models import Instance
from telehealth.db import transaction
from telehealth.ecg.service import (
    EcgChecksumMismatch,
    EcgFormat,
    TruncatedEcg,
    UnsupportedEcgFormat,
    bundle_files,
    detect_format,
    read_wfdb,
)
from telehealth.ecg.service.dicom_writer import AMBULATORY_ECG, TWELVE_LEAD, split
from tests.conftest import DEV_DATA
from tests.ecg.synthetic import synthetic_ecg
from tests.ecg.test_all_samples import Site, site  # noqa: F401  (the fixture)

MITDB = DEV_DATA / "ecg_wfdb" / "mitdb_100"


def _record_files(
    tmp_path: Path, seconds: float = 10.0, fmt: str = "16", names: tuple[str, ...] = ("MLII", "V1")
) -> dict[str, bytes]:
    """A small WFDB record written by `wfdb` itself: gain 200 adu/mV, baseline 1024."""
    fs = 500
    leads, _ = synthetic_ecg(seconds=seconds, fs=fs, seed=7)
    uv = np.stack([leads["II"], leads["V1"]], axis=1)[:, : len(names)]
    digital = (np.rint(uv / 5.0) + 1024).astype(np.int64)
    wfdb.wrsamp(
        "rec",
        fs=fs,
        units=["mV"] * len(names),
        sig_name=list(names),
        d_signal=digital,
        fmt=[fmt] * len(names),
        adc_gain=[200.0] * len(names),
        baseline=[1024] * len(names),
        write_dir=str(tmp_path),
    )
    return {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("rec.")}


def test_leads_gain_baseline_and_rate_mapped(tmp_path: Path) -> None:
    files = _record_files(tmp_path)
    record = read_wfdb(files)
    assert record.names == ["II", "V1"]  # MLII is recorded as lead II
    source = wfdb.rdrecord(str(tmp_path / "rec"))
    assert record.sampling_frequency == source.fs
    lead = record.leads[0]
    assert lead.scale_uv == 5.0 and lead.offset_uv == -1024 * 5.0
    np.testing.assert_allclose(lead.microvolts(), source.p_signal[:, 0] * 1000.0, atol=1e-6)


def test_told_by_header_content_not_name() -> None:
    hea = (MITDB / "100.hea").read_bytes()
    assert detect_format(hea) == EcgFormat.WFDB
    renamed = bundle_files([("header.txt", hea), ("100.dat", (MITDB / "100.dat").read_bytes())])
    assert detect_format(renamed) == EcgFormat.WFDB
    # A .hea name on something else is not a header.
    with pytest.raises(UnsupportedEcgFormat):
        bundle_files([("100.hea", b"just some text\n"), ("100.dat", b"\0" * 10)])
    # MIT-BIH's header opens with a comment; age and sex come from its comment lines.
    record = read_wfdb(
        {"100.hea": hea, "100.dat": (MITDB / "100.dat").read_bytes()},
    )
    assert (record.patient.age, record.patient.sex) == ("069Y", "M")


def test_long_record_is_split_into_ambulatory_parts() -> None:
    record = read_wfdb({p.name: p.read_bytes() for p in MITDB.iterdir()})
    parts = split(record)
    assert [round(start) for start, _ in parts[:3]] == [0, 10000, 20000]
    assert sum(p.num_samples for _, p in parts) == record.num_samples == 650000
    assert all(p.num_samples <= 16384 for _, p in parts)
    from telehealth.ecg.service.dicom_writer import sop_class_for

    assert sop_class_for(parts[0][1]) == TWELVE_LEAD  # what a lone 10 s strip would be
    assert sop_class_for(parts[0][1], AMBULATORY_ECG) == AMBULATORY_ECG


@pytest.mark.parametrize(
    ("damage", "exception", "message"),
    [
        ("no-dat", TruncatedEcg, "names signal file rec.dat, which was not sent"),
        ("short-dat", TruncatedEcg, "rec.dat has 3000 bytes"),
        ("format", UnsupportedEcgFormat, "signal format 508"),
        ("checksum", EcgChecksumMismatch, "checksum"),
    ],
)
def test_bad_records_name_the_problem(
    tmp_path: Path, damage: str, exception: type[Exception], message: str
) -> None:
    files = _record_files(tmp_path)
    if damage == "no-dat":
        del files["rec.dat"]
    elif damage == "short-dat":
        files["rec.dat"] = files["rec.dat"][:3000]
    elif damage == "format":
        files["rec.hea"] = files["rec.hea"].replace(b"rec.dat 16", b"rec.dat 508")
    else:
        dat = bytearray(files["rec.dat"])
        dat[101] ^= 0x01
        files["rec.dat"] = bytes(dat)
    with pytest.raises(exception, match=message):
        read_wfdb(files)


def _count(hub_site: Site) -> tuple[int, list[str]]:
    with transaction(hub_site.hub.factory) as session:
        count = session.scalar(select(func.count()).select_from(Instance)) or 0
    return count, [o.key for o in hub_site.hub.store.list_objects("originals/")]


def test_upload_as_zip_and_bad_uploads_refused_with_nothing_stored(
    site: Site,  # noqa: F811
    tmp_path: Path,
) -> None:
    files = _record_files(tmp_path, seconds=12.0)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        for name, data in files.items():
            z.writestr(f"export/{name}", data)
    bad = [
        ([("rec.hea", files["rec.hea"])], "names signal file rec.dat, which was not sent"),
        (
            [("rec.hea", files["rec.hea"]), ("rec.dat", files["rec.dat"][:100])],
            "rec.dat has 100 bytes",
        ),
        (
            [("rec.hea", files["rec.hea"].replace(b" 16 ", b" 508 ")), ("rec.dat", b"x")],
            "signal format 508",
        ),
        ([("a.txt", b"hello"), ("b.txt", b"world")], "none is a WFDB header"),
    ]
    before = _count(site)
    for parts, message in bad:
        r = site.client.post(
            "/api/ecg/uploads",
            files=[("file", (n, d, "application/octet-stream")) for n, d in parts],
            headers=site.auth(),
        )
        assert r.status_code == 422, (message, r.text)
        assert message in r.json()["detail"], (message, r.json())
    assert _count(site) == before

    r = site.client.post(
        "/api/ecg/uploads",
        files={"file": ("record.zip", zipped.getvalue(), "application/zip")},
        headers=site.auth(),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    # 12 s is one resting-length strip: one instance, the writer's own class.
    assert body["format"] == "wfdb" and body["leads"] == ["II", "V1"]
    assert body["sop_class_uid"] == TWELVE_LEAD and _count(site)[0] == before[0] + 1
    original = site.client.get(f"/api/ecg/{body['sop_instance_uid']}/original", headers=site.auth())
    assert original.status_code == 200 and original.content == zipped.getvalue()
    assert original.headers["content-type"] == "application/zip"
