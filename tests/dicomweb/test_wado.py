"""WADO-RS: instances come back byte for byte as ingested, streamed, scoped and audited."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest
import requests
from pydicom import dcmread
from sqlalchemy import select

from telehealth.auth.models import AuditEvent
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.conftest import upload_origin
from tests.dicomweb import Web, ct_instance, multipart_parts, open_web, sha256

DICOM = {"accept": 'multipart/related; type="application/dicom"'}


@pytest.fixture
def web(hub_factory: Callable[..., Hub]) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False)) as web:
        yield web


def test_retrieve_with_dicomweb_client(web: Web) -> None:
    client = web.client("spec")
    sop = web.sops["A"][1]
    ds = client.retrieve_instance(web.study["A"], web.series["A"], sop)
    assert ds.SOPInstanceUID == sop
    assert ds.PixelData == dcmread(io.BytesIO(web.sent[sop])).PixelData
    series = client.retrieve_series(web.study["A"], web.series["A"])
    assert [d.SOPInstanceUID for d in series] == web.sops["A"]


def test_instances_come_back_byte_identical(web: Web) -> None:
    a, us = web.study["A"], web.study["US"]
    with web.http("tech_a") as http:
        one = http.get(
            f"/studies/{a}/series/{web.series['A']}/instances/{web.sops['A'][0]}", headers=DICOM
        )
        series = http.get(f"/studies/{a}/series/{web.series['A']}", headers={"accept": "*/*"})
        study = http.get(f"/studies/{us}")  # no Accept header at all
    assert one.status_code == series.status_code == study.status_code == 200
    assert "gzip" not in one.headers.get("content-encoding", "")  # pixels are not gzipped
    sent = {sop: sha256(data) for sop, data in web.sent.items()}
    assert [sha256(p) for p in multipart_parts(one)] == [sent[web.sops["A"][0]]]
    assert [sha256(p) for p in multipart_parts(series)] == [sent[s] for s in web.sops["A"]]
    # The 2-frame RLE ultrasound, stored as received: no transcoding on the way out either.
    assert [sha256(p) for p in multipart_parts(study)] == [sent[web.sops["US"][0]]]


def test_series_metadata(web: Web) -> None:
    client = web.client("spec")
    meta = client.retrieve_series_metadata(web.study["A"], web.series["A"])
    assert [m["00080018"]["Value"][0] for m in meta] == web.sops["A"]
    pixel = meta[0]["7FE00010"]
    assert "InlineBinary" not in pixel
    instance = f"/studies/{web.study['A']}/series/{web.series['A']}/instances/{web.sops['A'][0]}"
    # dicomweb-client sends a Host header without the port; the URI follows the Host header.
    assert pixel["BulkDataURI"].endswith(f"/dicomweb{instance}/bulk/7FE00010")
    with web.http("spec") as http:
        raw = http.get(f"/studies/{web.study['A']}/series/{web.series['A']}/metadata").json()
    assert raw[0]["7FE00010"]["BulkDataURI"] == f"{web.base}/dicomweb{instance}/bulk/7FE00010"
    assert meta[0]["00100010"]["Value"] == [{"Alphabetic": "Zhang^San"}]
    [us] = client.retrieve_study_metadata(web.study["US"])
    assert us["00280008"]["Value"] == [2]
    assert "BulkDataURI" in us["7FE00010"]


@pytest.mark.parametrize("accept", ["application/json", "image/jpeg", "multipart/related; type=x"])
def test_wrong_accept_is_406(web: Web, accept: str) -> None:
    a, series = web.study["A"], web.series["A"]
    with web.http("spec") as http:
        assert http.get(f"/studies/{a}", headers={"accept": accept}).status_code == 406
        response = http.get(f"/studies/{a}/series/{series}/metadata", headers=DICOM)
        assert response.status_code == 406
        ok = http.get(f"/studies/{a}/metadata", headers={"accept": "application/dicom+json"})
        assert ok.status_code == 200


def test_scope_not_found_and_bad_paths(web: Web) -> None:
    a, series, sop = web.study["A"], web.series["A"], web.sops["A"][0]
    tech_b = web.client("tech_b")
    with pytest.raises(requests.HTTPError) as info:
        tech_b.retrieve_instance(a, series, sop)
    assert info.value.response is not None
    assert info.value.response.status_code == 404
    with web.http("tech_b") as http:
        for path in [
            f"/studies/{a}",
            f"/studies/{a}/series/{series}",
            f"/studies/{a}/metadata",
            f"/studies/{a}/series/{series}/metadata",
            "/studies/1.2.3.4",  # does not exist: answered the same
        ]:
            assert http.get(path).status_code == 404, path
        assert http.get(f"/studies/{web.study['B']}/series/1.2.3").status_code == 404
    with web.http("spec") as http:
        assert http.get(f"/studies/{a}/series/{series}/instances/1.2.3").status_code == 404
        for path in [
            "/studies/..%2F..%2Fetc%2Fpasswd",
            f"/studies/{a}/series/..%2F..",
            f"/studies/{a}/series/{series}/instances/..%2F..%2F{sop}",
            "/studies/1.2.3;drop",
            f"/studies/{a}/series/%2e%2e/metadata",
        ]:
            status = http.get(path).status_code
            assert status in (400, 404), (path, status)
        assert http.get("/studies/abc").json()["error"] == "BadDicomwebRequest"


def test_retrieves_are_audited(web: Web) -> None:
    with web.http("tech_b") as http:
        http.get(f"/studies/{web.study['B']}")
        http.get(f"/studies/{web.study['A']}")
    with transaction(web.hub.factory) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "dicomweb.wado").order_by(AuditEvent.id)
        ).all()
        rows = [(e.actor, str(e.outcome), e.object_id) for e in events]
    assert rows == [
        ("tech_b", "success", web.study["B"]),
        ("tech_b", "denied", web.study["A"]),
    ]


def test_a_slow_download_does_not_block_ingest(web: Web) -> None:
    """No database session lives across the stream: SQLite would lock out every sender."""
    a, series = web.study["A"], web.series["A"]
    with (
        web.http("spec") as http,
        http.stream("GET", f"/studies/{a}/series/{series}", headers=DICOM) as response,
    ):
        chunks = response.iter_raw(1024)
        first = next(chunks)  # the client has started reading and then dawdles
        data = ct_instance(
            study_uid=a,
            series_uid=series,
            number=4,
            patient_id="A001",
            patient_name="Zhang^San",
            study_date="20240105",
            accession="ACC1",
        )
        web.hub.archive.ingest(data, upload_origin(web.ids["CLINIC_A"]))
        rest = b"".join(chunks)
    assert response.status_code == 200
    assert len(first + rest) > 3 * 39_000  # the three listed when the retrieve began
