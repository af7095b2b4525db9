"""Series metadata is computed once and then served from the index, never from the objects."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from sqlalchemy import func, select

from telehealth.archive.models import Instance, StorageState
from telehealth.archive.service import InstanceLocation
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.dicomweb.models import InstanceMetadata
from telehealth.dicomweb.service import instance_metadata
from telehealth.dicomweb.service.metadata_cache import ROOT_PLACEHOLDER
from telehealth.hub import Hub
from tests.conftest import upload_origin
from tests.dicomweb import Web, ct_instance, open_web
from tests.faults import wait_for


@pytest.fixture
def web(hub_factory: Callable[..., Hub], clock: FakeClock) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False, clock=clock, study_stable_seconds=30)) as web:
        yield web


def kept_rows(hub: Hub) -> int:
    with transaction(hub.factory) as session:
        return int(session.scalar(select(func.count()).select_from(InstanceMetadata)) or 0)


def series_metadata(web: Web, label: str) -> list[dict[str, object]]:
    with web.http("spec") as http:
        response = http.get(f"/studies/{web.study[label]}/series/{web.series[label]}/metadata")
    assert response.status_code == 200, response.text
    return list(response.json())


def lose_every_object(hub: Hub) -> None:
    """Delete the stored bytes behind the index's back: only kept metadata can answer now."""
    with transaction(hub.factory) as session:
        rows = session.execute(select(Instance.object_key, Instance.spool_name)).all()
    for key, spool_name in rows:
        hub.store.client.remove_object(hub.store.bucket, key)
        if spool_name:
            hub.spool.remove(spool_name)


def test_first_request_keeps_metadata_and_later_ones_read_no_object(web: Web) -> None:
    assert kept_rows(web.hub) == 0
    first = series_metadata(web, "A")
    expected = [
        instance_metadata(
            web.sent[sop],
            f"{web.base}/dicomweb/studies/{web.study['A']}/series/{web.series['A']}"
            f"/instances/{sop}",
        )
        for sop in web.sops["A"]
    ]
    assert first == expected
    assert kept_rows(web.hub) == 3
    wait_for(lambda: web.hub.archive.uploader.backlog == 0, timeout=30, what="uploads")
    lose_every_object(web.hub)
    assert series_metadata(web, "A") == first  # served from the index alone


def test_the_bulk_data_uri_follows_the_request_host(web: Web) -> None:
    series_metadata(web, "A")  # kept with the placeholder
    with transaction(web.hub.factory) as session:
        text = session.scalars(select(InstanceMetadata.json)).first()
    assert text is not None and ROOT_PLACEHOLDER in text
    with web.http("spec") as http:
        path = f"/studies/{web.study['A']}/series/{web.series['A']}/metadata"
        other = http.get(path, headers={"host": "viewer.example:8443"}).json()
    assert other[0]["7FE00010"]["BulkDataURI"].startswith("http://viewer.example:8443/dicomweb/")
    assert ROOT_PLACEHOLDER not in json.dumps(other)


def test_a_replaced_instance_gets_new_metadata(web: Web) -> None:
    series_metadata(web, "A")
    sop = web.sops["A"][0]
    corrected = ct_instance(
        study_uid=web.study["A"],
        series_uid=web.series["A"],
        number=1,
        patient_id="A001",
        patient_name="Zhang^San^Corrected",
        study_date="20240105",
        accession="ACC1",
    )
    # The same SOP Instance UID with different bytes (the default policy replaces).
    ds = dcmread(DicomBytesIO(corrected))
    ds.SOPInstanceUID = sop
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    web.hub.archive.ingest(buffer.getvalue(), upload_origin(web.ids["CLINIC_A"]))
    meta = series_metadata(web, "A")
    names = {m["00080018"]["Value"][0]: m["00100010"]["Value"][0]["Alphabetic"] for m in meta}
    assert names[sop] == "Zhang^San^Corrected"


def test_a_stable_study_is_warmed_in_the_background(web: Web, clock: FakeClock) -> None:
    clock.advance(seconds=31)
    web.hub.archive.check_stable_studies()
    # Studies A (3 instances), US (1) and B (1).
    wait_for(lambda: kept_rows(web.hub) == 5, timeout=30, what="warmed metadata")
    assert web.hub.metadata_warmer.warm(web.study["A"]) == 0  # nothing left to do


def test_an_instance_moved_to_the_store_after_lookup_is_still_read(web: Web) -> None:
    """The index said "in the spool", the uploader moved it since: read_at looks again."""
    wait_for(lambda: web.hub.archive.uploader.backlog == 0, timeout=30, what="uploads")
    sop = web.sops["A"][0]
    stale = InstanceLocation(sop, StorageState.SPOOLED, "gone-i1.dcm", "no/such/key")
    assert web.hub.archive.read_at(stale) == web.sent[sop]
