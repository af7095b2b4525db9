"""Uploaded instances stay on local disk for fast reads, within a size budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from telehealth.archive.models import Instance
from telehealth.archive.service import InstanceNotFound, ReadCache
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.conftest import DEV_DATA, sample_copy, seed_consortium, upload_origin
from tests.faults import wait_for

CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"


def ingest_uploaded(hub: Hub, count: int) -> dict[str, bytes]:
    with transaction(hub.factory) as session:
        ids = seed_consortium(session)
    sent = {}
    for _ in range(count):
        data = sample_copy(CT, SOPInstanceUID=generate_uid())
        sent[hub.archive.ingest(data, upload_origin(ids["CLINIC_A"])).sop_instance_uid] = data
    assert hub.archive.uploader.wait_idle(30)
    return sent


def remove_objects(hub: Hub) -> None:
    with transaction(hub.factory) as session:
        for key in session.scalars(select(Instance.object_key)):
            hub.store.client.remove_object(hub.store.bucket, key)


def read(hub: Hub, sop: str) -> bytes:
    with transaction(hub.factory) as session:
        return hub.archive.read_instance(session, sop)


def test_uploaded_instances_are_read_from_the_local_cache(
    hub_factory: Callable[..., Hub],
) -> None:
    hub = hub_factory(dicom=False)
    sent = ingest_uploaded(hub, 3)
    assert list(hub.spool.names()) == []  # moved out of the spool, not copied
    remove_objects(hub)  # only the cache can answer now
    for sop, data in sent.items():
        assert read(hub, sop) == data


def test_without_a_cache_reads_go_to_the_object_store(hub_factory: Callable[..., Hub]) -> None:
    hub = hub_factory(dicom=False, read_cache_bytes=0)
    sent = ingest_uploaded(hub, 2)
    assert not hub.settings.read_cache_dir.exists() or not any(
        hub.settings.read_cache_dir.iterdir()
    )
    sop = next(iter(sent))
    assert read(hub, sop) == sent[sop]
    remove_objects(hub)
    with pytest.raises(InstanceNotFound):
        read(hub, sop)


def test_the_cache_keeps_to_its_budget_and_misses_fall_back(
    hub_factory: Callable[..., Hub],
) -> None:
    size = len(CT.read_bytes())
    hub = hub_factory(dicom=False, read_cache_bytes=int(size * 2.5))
    sent = ingest_uploaded(hub, 6)
    cached = list(hub.settings.read_cache_dir.iterdir())
    assert 1 <= len(cached) <= 2
    assert sum(p.stat().st_size for p in cached) <= size * 2.5
    for sop, data in sent.items():  # evicted ones come from the object store
        assert read(hub, sop) == data


def test_read_cache_unit(tmp_path: Path) -> None:
    cache = ReadCache(tmp_path / "cache", max_bytes=250)
    for n in range(4):
        spooled = tmp_path / f"spooled-{n}"
        spooled.write_bytes(bytes([n]) * 100)
        cache.adopt(spooled, f"dicom/1.2.{n}/abc{n}.dcm")
        assert not spooled.exists()
    assert cache.get("dicom/1.2.3/abc3.dcm") == bytes([3]) * 100
    assert cache.get("dicom/1.2.0/abc0.dcm") is None  # the oldest went first
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= 250
    assert ReadCache(tmp_path / "cache", max_bytes=250).get("dicom/1.2.3/abc3.dcm") is not None


def test_an_instance_read_from_the_store_is_kept_for_the_next_read(
    hub_factory: Callable[..., Hub],
) -> None:
    hub = hub_factory(dicom=False)
    sent = ingest_uploaded(hub, 1)
    for entry in hub.settings.read_cache_dir.iterdir():  # an older study, long evicted
        entry.unlink()
    sop, data = next(iter(sent.items()))
    assert read(hub, sop) == data  # from the object store …
    wait_for(lambda: any(hub.settings.read_cache_dir.iterdir()), timeout=10, what="kept")
    remove_objects(hub)
    assert read(hub, sop) == data  # … and now from the cache


def test_put_is_atomic_and_idempotent(tmp_path: Path) -> None:
    cache = ReadCache(tmp_path / "cache", max_bytes=1000)
    cache.put("dicom/1.2/abc.dcm", b"x" * 100)
    cache.put("dicom/1.2/abc.dcm", b"x" * 100)
    assert cache.get("dicom/1.2/abc.dcm") == b"x" * 100
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["dicom_1.2_abc.dcm"]
