"""Faults while instances arrive: object store down, database down, spool full, crash leftovers.

Real parts only: a private embedded S3 server the test stops and starts, a TCP proxy in front
of the real PostgreSQL, dcmtk's storescu and pynetdicom as senders.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from telehealth.archive.models import Instance, StorageState
from telehealth.archive.service import IndexOutcome, SpoolFull, fsck, recover_spool
from telehealth.db import DatabaseUnavailable, transaction
from telehealth.errors import Overloaded, wire_status
from telehealth.hub import Hub
from telehealth.storage import EmbeddedS3, ObjectStore, S3Endpoint
from tests.conftest import dcmtk, hub_settings, seed_consortium, upload_origin
from tests.faults import (
    TcpProxy,
    dataset_sha256,
    make_series,
    sop_uid,
    storescu,
    wait_for,
    write_files,
)

OUT_OF_RESOURCES = 0xA700

HubMaker = Callable[..., Hub]


@pytest.fixture(scope="module")
def private_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    """An S3 server of this module's own, so stopping it disturbs no other test."""
    server = EmbeddedS3(tmp_path_factory.mktemp("private-s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[HubMaker]:
    """Open and start hubs on any database URL and S3 endpoint; all closed at the end."""
    hubs: list[Hub] = []

    def make(database_url: str, s3: S3Endpoint, bucket: str, **extra: object) -> Hub:
        hub = Hub(hub_settings(tmp_path / "data", database_url, s3, bucket, **extra)).open()
        hubs.append(hub)
        hub.start()
        return hub

    yield make
    for hub in reversed(hubs):
        hub.close()


def _seed(hub: Hub) -> dict[str, int]:
    with transaction(hub.factory) as session:
        return seed_consortium(session)


def _states(hub: Hub) -> dict[str, StorageState]:
    with transaction(hub.factory) as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.state))
        return {uid: state for uid, state in rows}


def _responses(output: str) -> list[str]:
    """The status words of every "Received Store Response (...)" line of storescu -v."""
    marker = "Received Store Response ("
    return [line.split(marker, 1)[1].rstrip(")") for line in output.splitlines() if marker in line]


# --- 1. object store down --------------------------------------------------------------------


def test_object_store_down_spools_then_drains_when_it_returns(
    tmp_path: Path, database_url: str, private_s3: EmbeddedS3, make_hub: HubMaker
) -> None:
    assert private_s3.endpoint is not None
    endpoint = private_s3.endpoint
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    ObjectStore(endpoint, bucket).ensure_bucket()
    hub = make_hub(database_url, endpoint, bucket, upload_retry_seconds=0.2)
    clinic = _seed(hub)["CLINIC_A"]
    instances = make_series(12)
    assert hub.dicom_node is not None

    private_s3.stop()
    try:
        for data in instances[:9]:
            assert hub.archive.ingest(data, upload_origin(clinic)).outcome == IndexOutcome.NEW
        sent = storescu(
            dcmtk("storescu"), hub.dicom_node.port, write_files(tmp_path / "send", instances[9:])
        )
        assert sent.returncode == 0, sent.stderr
        assert _responses(sent.stderr) == ["Success"] * 3

        # Success was answered with the store down: the spool holds every instance.
        states = _states(hub)
        assert sorted(states) == sorted(sop_uid(d) for d in instances)
        assert set(states.values()) == {StorageState.SPOOLED}
        assert len(list(hub.spool.names())) == 12
        health = hub.health()
        assert health["object_store"] is False
        assert health["status"] == "degraded"
        assert health["spool_backlog"] == 12
    finally:
        private_s3.start()  # same ports, folder and credentials: the hub's endpoint again

    wait_for(
        lambda: hub.archive.uploader.backlog == 0, timeout=90, what="the spool backlog to drain"
    )
    assert set(_states(hub).values()) == {StorageState.STORED}
    assert list(hub.spool.names()) == []
    assert hub.health()["object_store"] is True
    with transaction(hub.factory) as session:
        report = fsck(session, hub.spool, hub.store, deep=True)
        assert report.clean, report.problems
        assert report.stored == 12
        keys = dict(session.execute(select(Instance.sop_instance_uid, Instance.object_key)).all())
    for i, data in enumerate(instances):
        stored = hub.store.get_bytes(keys[sop_uid(data)])
        if i < 9:
            assert stored == data  # ingest keeps bytes as received
        else:
            assert dataset_sha256(stored) == dataset_sha256(data)  # node writes its own meta


# --- 2. database down ------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_database_down_answers_out_of_resources_and_leaves_nothing(
    tmp_path: Path, database_url: str, s3: S3Endpoint, bucket: str, make_hub: HubMaker
) -> None:
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        hub = make_hub(proxied, s3, bucket, upload_retry_seconds=0.2)
        clinic = _seed(hub)["CLINIC_A"]
        assert hub.dicom_node is not None
        port = hub.dicom_node.port
        instances = make_series(4)

        ae = AE("CLINIC_A_DR")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="TELEHEALTH")
        assert assoc.is_established  # admitted while the database answers
        try:
            assert assoc.send_c_store(dcmread(io.BytesIO(instances[0]))).Status == 0x0000
            before = set(hub.spool.names())

            proxy.stop()
            with pytest.raises(Overloaded) as refused:
                hub.archive.ingest(instances[1], upload_origin(clinic))
            assert isinstance(refused.value, DatabaseUnavailable)
            assert wire_status(refused.value) == (503, OUT_OF_RESOURCES)
            status = assoc.send_c_store(dcmread(io.BytesIO(instances[2])))
            assert status.Status == OUT_OF_RESOURCES
            assert "database" in str(status.ErrorComment)
            # Refused instances leave no spool file behind; only the earlier Success remains
            # (its upload waits for the database to record it).
            assert set(hub.spool.names()) <= before

            # A new association cannot even be admitted without the database: never Success.
            sent = storescu(dcmtk("storescu"), port, write_files(tmp_path / "send", instances[3:]))
            assert sent.returncode != 0
            assert "Success" not in _responses(sent.stderr)
            assert set(hub.spool.names()) <= before

            proxy.start()  # the same port: the hub's pool reconnects by itself
            assert (
                hub.archive.ingest(instances[1], upload_origin(clinic)).outcome == IndexOutcome.NEW
            )
            assert assoc.send_c_store(dcmread(io.BytesIO(instances[2]))).Status == 0x0000
        finally:
            assoc.release()
        sent = storescu(dcmtk("storescu"), port, write_files(tmp_path / "again", instances[3:]))
        assert sent.returncode == 0, sent.stderr

        assert hub.archive.uploader.wait_idle(60)
        assert list(hub.spool.names()) == []
        states = _states(hub)
        assert sorted(states) == sorted(sop_uid(d) for d in instances)
        assert set(states.values()) == {StorageState.STORED}
        with transaction(hub.factory) as session:
            report = fsck(session, hub.spool, hub.store, deep=True)
        assert report.clean, report.problems
    finally:
        proxy.stop()


# --- 3. spool full ---------------------------------------------------------------------------


def test_spool_full_answers_out_of_resources_and_indexes_nothing(
    tmp_path: Path, hub_factory: HubMaker
) -> None:
    hub = hub_factory(spool_min_free_bytes=10**18)  # more than any disk: always "full"
    clinic = _seed(hub)["CLINIC_A"]
    assert hub.dicom_node is not None
    instances = make_series(2)

    with pytest.raises(SpoolFull) as refused:
        hub.archive.ingest(instances[0], upload_origin(clinic))
    assert wire_status(refused.value)[1] == OUT_OF_RESOURCES
    sent = storescu(
        dcmtk("storescu"), hub.dicom_node.port, write_files(tmp_path / "send", instances[1:])
    )
    assert sent.returncode != 0
    assert _responses(sent.stderr) == ["Refused: OutOfResources"], sent.stderr  # 0xA700

    assert _states(hub) == {}
    assert list(hub.spool.names()) == []
    with transaction(hub.factory) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0


# --- 5. spool recovery -----------------------------------------------------------------------


def test_recovery_indexes_orphan_spool_files_and_quarantines_junk(
    hub_factory: HubMaker,
) -> None:
    hub = hub_factory(start=False)
    clinic = _seed(hub)["CLINIC_A"]
    (data,) = make_series(1)
    # The hub died between the spool fsync and the index commit: a whole file nobody indexed.
    orphan = f"{uuid.uuid4().hex}-i{clinic}.dcm"
    hub.spool.path(orphan).write_bytes(data)
    junk = f"{uuid.uuid4().hex}-i{clinic}.dcm"
    hub.spool.path(junk).write_bytes(b"\x00garbage, not DICOM" * 10)
    # Half-received when the hub died (never answered Success): removed once old enough to be
    # nobody's receive in progress; a fresh one may be another process's, and stays.
    abandoned, receiving = hub.spool.path("a.part"), hub.spool.path("b.part")
    abandoned.write_bytes(data[:1000])
    receiving.write_bytes(data[:1000])
    an_hour_ago = time.time() - 3600
    os.utime(abandoned, (an_hour_ago, an_hour_ago))

    report = recover_spool(hub.archive)
    assert report.indexed == [orphan]
    assert report.quarantined == [junk]
    assert report.abandoned == 1
    assert not abandoned.exists() and receiving.exists()
    assert (hub.spool.quarantine / junk).exists()  # kept for a person, never deleted
    assert set(_states(hub).values()) == {StorageState.SPOOLED}

    hub.start()  # recovery again finds nothing new; the uploader takes the orphan
    assert hub.archive.uploader.wait_idle(30)
    assert _states(hub) == {sop_uid(data): StorageState.STORED}
    assert list(hub.spool.names()) == []
    with transaction(hub.factory) as session:
        result = fsck(session, hub.spool, hub.store, deep=True)
        key = session.scalar(select(Instance.object_key))
    assert result.clean, result.problems
    assert result.quarantined == [junk]
    assert key is not None and hub.store.get_bytes(key) == data
