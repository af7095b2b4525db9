"""The DICOM node against real peers: dcmtk's echoscu/storescu and pynetdicom SCUs, no mocks.

Expected outcomes are computed from the files (through the archive's own header parser on
exactly the bytes the node will receive), never hard-coded per file.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from dicom_node.retrieve import sender_only
from telehealth.archive.models import Instance, SupersededObject
from telehealth.archive.service import fsck, parse_header
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.institutions.service import add_application_entity
from tests import faults
from tests.conftest import DEV_DATA, dcmtk, dev_files, seed_consortium

CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SUCCESS = 0x0000
MAX_CONTEXTS = 128  # pynetdicom's limit per association


# --- helpers ----------------------------------------------------------------------------------


def dataset_offset(data: bytes) -> int:
    """Where the dataset starts: after the optional preamble + 'DICM' and any group 0002."""
    offset = 132 if data[128:132] == b"DICM" else 0
    fp = io.BytesIO(data)
    fp.seek(offset)
    for _ in data_element_generator(fp, False, True, stop_when=lambda tag, *_: tag.group != 2):
        pass
    return fp.tell()


def dataset_sha256(data: bytes) -> str:
    """Digest of the dataset alone: the node writes its own file meta in front of it."""
    return hashlib.sha256(data[dataset_offset(data) :]).hexdigest()


@dataclass(frozen=True)
class WireFile:
    """A sample as a C-STORE peer sends it: a SOP class, a transfer syntax, dataset bytes."""

    source: Path
    path: Path  # a Part 10 file whose meta names all three; pynetdicom sends it unparsed
    sop_class_uid: str
    transfer_syntax_uid: str
    received: bytes  # what the node's handler will see: preamble + meta + the same dataset

    @property
    def parses(self) -> bool:
        try:
            parse_header(self.received)
        except Exception:
            return False
        return True


def _guess_transfer_syntax(data: bytes) -> str:
    ds = dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    if ds.original_encoding[1] is False:
        return str(ExplicitVRBigEndian)
    return str(ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian)


def _part10(meta: FileMetaDataset, dataset: bytes) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + dataset


def wire_file(source: Path, work: Path) -> WireFile:
    """Prepare `source` for a chunked C-STORE with its dataset bytes untouched.

    Files without (complete) file meta still have a dataset a modality could send: the peer
    names the SOP class and instance in the command, so give them a meta that says the same.
    """
    data = source.read_bytes()
    offset = dataset_offset(data)
    try:
        meta = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    except Exception:
        meta = FileMetaDataset()
    try:
        ds = dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:
        ds = Dataset()
    sop_class = str(
        meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID") or SecondaryCaptureImageStorage
    )
    sop_instance = str(
        meta.get("MediaStorageSOPInstanceUID") or ds.get("SOPInstanceUID") or generate_uid()
    )
    syntax = str(meta.get("TransferSyntaxUID") or _guess_transfer_syntax(data[offset:]))
    path = source
    complete = all(
        meta.get(k)
        for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    )
    sent_meta = FileMetaDataset()
    sent_meta.MediaStorageSOPClassUID = sop_class
    sent_meta.MediaStorageSOPInstanceUID = sop_instance
    sent_meta.TransferSyntaxUID = syntax
    if not complete:
        path = work / f"{len(list(work.iterdir()))}-{source.name}"
        path.write_bytes(_part10(sent_meta, data[offset:]))
    return WireFile(source, path, sop_class, syntax, _part10(sent_meta, data[offset:]))


@contextmanager
def associate(
    hub: Hub, calling: str, contexts: list[tuple[str, str]], **kwargs: object
) -> Iterator[Association]:
    """An association from `calling` proposing (SOP class, transfer syntax) pairs."""
    ae = AE(calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = sender_only(
        ae.associate("127.0.0.1", hub.dicom_node.port, ae_title=hub.settings.ae_title, **kwargs)
    )
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


@contextmanager
def chunked_sends() -> Iterator[None]:
    """pynetdicom sends a file's dataset bytes as they are, instead of decoding and re-encoding."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


@dataclass(frozen=True)
class StoreAnswer:
    status: int | None  # None: no accepted context (the node refused the SOP class/syntax)
    comment: str


def store_all(hub: Hub, calling: str, files: list[WireFile]) -> dict[Path, StoreAnswer]:
    """C-STORE every file, as few associations as pynetdicom's context limit allows."""
    answers: dict[Path, StoreAnswer] = {}
    batches: list[list[WireFile]] = [[]]
    for item in files:
        pairs = {(f.sop_class_uid, f.transfer_syntax_uid) for f in batches[-1] + [item]}
        if len(pairs) > MAX_CONTEXTS:
            batches.append([])
        batches[-1].append(item)
    with chunked_sends():
        for batch in batches:
            contexts = sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in batch})
            with associate(hub, calling, contexts) as assoc:
                assert assoc.is_established
                accepted = {
                    (cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
                }
                for item in batch:
                    if (item.sop_class_uid, item.transfer_syntax_uid) not in accepted:
                        answers[item.source] = StoreAnswer(None, "context not accepted")
                        continue
                    status = assoc.send_c_store(item.path)
                    assert status, f"no C-STORE response for {item.source}"
                    answers[item.source] = StoreAnswer(
                        int(status.Status), str(status.get("ErrorComment", ""))
                    )
    return answers


def storescu(hub: Hub, calling: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    """storescu -v (prints each Store Response) from `calling` to the hub's node."""
    assert hub.settings.ae_title == "TELEHEALTH"  # the called title faults.storescu uses
    return faults.storescu(dcmtk("storescu"), hub.dicom_node.port, list(paths), calling=calling)


def echoscu(hub: Hub, calling: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            dcmtk("echoscu"),
            "-aet",
            calling,
            "-aec",
            hub.settings.ae_title,
            "127.0.0.1",
            str(hub.dicom_node.port),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def indexed_uids(hub: Hub) -> list[str]:
    with transaction(hub.factory) as session:
        return list(session.scalars(select(Instance.sop_instance_uid)))


def assert_nothing_stored(hub: Hub) -> None:
    assert indexed_uids(hub) == []
    assert list(hub.spool.names()) == []
    assert list(hub.spool.folder.glob("*.part")) == []  # nor a half-received file


def assert_clean(hub: Hub) -> None:
    assert hub.archive.uploader.wait_idle(60)
    with transaction(hub.factory) as session:
        report = fsck(session, hub.spool, hub.store, deep=True)
    assert report.clean, report.problems


def stored_dataset_digests(hub: Hub) -> set[str]:
    """Dataset digests of every stored version, current and superseded."""
    digests: set[str] = set()
    with transaction(hub.factory) as session:
        for uid in session.scalars(select(Instance.sop_instance_uid)):
            digests.add(dataset_sha256(hub.archive.read_instance(session, uid)))
        for key in session.scalars(select(SupersededObject.object_key)):
            digests.add(dataset_sha256(hub.store.get_bytes(key)))
    return digests


def rejection(assoc: Association) -> tuple[int, int, int]:
    rsp = assoc.acceptor.primitive
    return (rsp.result, rsp.result_source, rsp.diagnostic)


CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)  # rejected-permanent, service user, PS3.8 9.3.4
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)  # rejected-transient, service provider (presentation)


def seeded(hub: Hub) -> Hub:
    with transaction(hub.factory) as session:
        seed_consortium(session)
    return hub


# --- association admission -------------------------------------------------------------------


def test_echo_from_registered_ae_succeeds_and_unknown_ae_is_rejected(hub, consortium):
    ok = echoscu(hub, "CLINIC_A_DR")
    assert ok.returncode == 0, ok.stderr
    refused = echoscu(hub, "NOBODY")
    assert refused.returncode != 0
    assert "reject" in (refused.stdout + refused.stderr).lower()

    with associate(hub, "NOBODY", [(Verification, ExplicitVRLittleEndian)]) as assoc:
        assert assoc.is_rejected
        assert rejection(assoc) == CALLING_AE_NOT_RECOGNISED
    with associate(hub, "CLINIC_B_CT", [(Verification, ExplicitVRLittleEndian)]) as assoc:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == SUCCESS


def test_unknown_callers_are_accepted_when_configured(hub_factory, tmp_path):
    hub = seeded(hub_factory(accept_unknown_callers=True))
    result = echoscu(hub, "NOBODY")
    assert result.returncode == 0, result.stderr
    wire = wire_file(CT, tmp_path)
    assert store_all(hub, "NOBODY", [wire])[CT].status == SUCCESS
    assert indexed_uids(hub) == [parse_header(CT.read_bytes()).sop_instance_uid]


def test_ae_tied_to_a_host_is_refused_from_elsewhere(hub, consortium):
    with transaction(hub.factory) as session:
        add_application_entity(
            session, ae_title="CLINIC_A_FAR", institution_code="CLINIC_A", host="10.9.9.9"
        )
        add_application_entity(
            session, ae_title="CLINIC_A_NEAR", institution_code="CLINIC_A", host="127.0.0.1"
        )
    with associate(hub, "CLINIC_A_FAR", [(Verification, ExplicitVRLittleEndian)]) as assoc:
        assert assoc.is_rejected
        assert rejection(assoc) == CALLING_AE_NOT_RECOGNISED
    assert echoscu(hub, "CLINIC_A_FAR").returncode != 0
    result = echoscu(hub, "CLINIC_A_NEAR")
    assert result.returncode == 0, result.stderr


# --- storing the sample data -----------------------------------------------------------------


def test_every_sample_is_answered_as_the_header_predicts_and_kept_byte_for_byte(
    hub, consortium, tmp_path
):
    files = [wire_file(p, tmp_path) for p in dev_files("dicom", "ecg_dicom")]
    answers = store_all(hub, "CLINIC_A_DR", files)

    accepted: list[WireFile] = []
    for item in files:
        answer = answers[item.source]
        if item.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            assert answer.status != SUCCESS, f"{item.source}: a DICOMDIR is not an instance"
        elif item.parses:
            assert answer.status == SUCCESS, f"{item.source}: {answer}"
            accepted.append(item)
        else:
            assert answer.status is not None and 0xC000 <= answer.status <= 0xCFFF, (
                f"{item.source}: {answer}"
            )
            assert answer.comment, item.source
    assert len(accepted) > 150  # the sample set is ~200 files; most are fine

    assert_clean(hub)
    expected_uids = {parse_header(f.received).sop_instance_uid for f in accepted}
    assert sorted(indexed_uids(hub)) == sorted(expected_uids)
    # Several samples share a SOP Instance UID with other bytes: the later one replaces the
    # earlier, which is kept as superseded. Either way every accepted dataset is kept intact.
    assert stored_dataset_digests(hub) == {dataset_sha256(f.received) for f in accepted}


def test_edge_files_get_the_predicted_answer_and_nothing_half_stored(hub, consortium, tmp_path):
    files = [wire_file(p, tmp_path) for p in dev_files("dicom_edge")]
    answers = store_all(hub, "CLINIC_A_DR", files)

    accepted = [f for f in files if f.parses]
    for item in files:
        answer = answers[item.source]
        if item.parses:
            assert answer.status == SUCCESS, f"{item.source}: {answer}"
        else:
            assert answer.status is not None and 0xC000 <= answer.status <= 0xCFFF, (
                f"{item.source}: {answer}"
            )
            assert answer.comment, item.source
    assert accepted and len(accepted) < len(files)  # the set must exercise both outcomes

    assert_clean(hub)
    assert list(hub.spool.names()) == []
    assert sorted(indexed_uids(hub)) == sorted(
        {parse_header(f.received).sop_instance_uid for f in accepted}
    )
    assert stored_dataset_digests(hub) == {dataset_sha256(f.received) for f in accepted}

    # The node is still serving after all that.
    result = storescu(hub, "CLINIC_A_DR", CT)
    assert result.returncode == 0, result.stderr
    assert parse_header(CT.read_bytes()).sop_instance_uid in indexed_uids(hub)


def test_truncated_dataset_on_the_wire_is_refused_and_others_unaffected(hub, consortium, tmp_path):
    data = CT.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: dataset_offset(data) + (len(data) - dataset_offset(data)) // 2])
    other = dcmread(CT)
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    whole = tmp_path / "whole.dcm"
    other.save_as(whole)
    contexts = [(CTImageStorage, ExplicitVRLittleEndian)]

    with (
        associate(hub, "CLINIC_A_DR", contexts) as bystander,
        associate(hub, "CLINIC_A_DR", contexts) as sender,
        chunked_sends(),
    ):
        status = sender.send_c_store(truncated)
        assert 0xC000 <= status.Status <= 0xCFFF
        assert status.ErrorComment
        assert_nothing_stored(hub)
        assert bystander.send_c_store(whole).Status == SUCCESS
        assert sender.send_c_store(CT).Status == SUCCESS  # the same association goes on too
    assert sorted(indexed_uids(hub)) == sorted([other.SOPInstanceUID, dcmread(CT).SOPInstanceUID])
    assert_clean(hub)


def test_unknown_transfer_syntax_is_refused(hub, consortium, tmp_path):
    unknown = "1.2.3.4.5.6.7"
    data = CT.read_bytes()
    meta = dcmread(CT, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = unknown
    odd = tmp_path / "odd.dcm"
    odd.write_bytes(_part10(meta, data[dataset_offset(data) :]))

    # The node negotiates storage unrestricted (the first proposed syntax is accepted), so the
    # refusal comes from the archive, per instance, with the reason.
    with associate(hub, "CLINIC_A_DR", [(CTImageStorage, unknown)]) as assoc, chunked_sends():
        assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == [unknown]
        status = assoc.send_c_store(odd)
        assert 0xC000 <= status.Status <= 0xCFFF
        assert "transfer syntax" in status.ErrorComment.lower()
    assert_nothing_stored(hub)


def test_same_instance_twice_by_storescu_is_one_instance(hub, consortium):
    for _ in range(2):
        result = storescu(hub, "CLINIC_A_DR", CT)
        assert result.returncode == 0, result.stderr
        assert "Received Store Response (Success)" in result.stdout + result.stderr
    assert indexed_uids(hub) == [parse_header(CT.read_bytes()).sop_instance_uid]
    assert_clean(hub)


def test_clinic_cannot_add_to_another_clinics_study(hub, consortium, tmp_path):
    first = wire_file(CT, tmp_path)
    assert store_all(hub, "CLINIC_A_DR", [first])[CT].status == SUCCESS
    intruder = dcmread(CT)
    intruder.SOPInstanceUID = intruder.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "intruder.dcm"
    intruder.save_as(path)

    answer = store_all(hub, "CLINIC_B_CT", [wire_file(path, tmp_path)])[path]
    assert answer.status == 0x0124
    assert answer.comment
    assert indexed_uids(hub) == [parse_header(first.received).sop_instance_uid]
    assert_clean(hub)


def test_spool_full_answers_out_of_resources(hub_factory, tmp_path):
    hub = seeded(hub_factory(spool_min_free_bytes=10**15))
    answer = store_all(hub, "CLINIC_A_DR", [wire_file(CT, tmp_path)])[CT]
    assert answer.status == 0xA700
    assert answer.comment
    assert_nothing_stored(hub)


def wait_for_no_associations(hub: Hub, seconds: float = 5.0) -> None:
    """The server counts an association until its thread ends, a moment after release."""
    deadline = time.monotonic() + seconds
    while hub.dicom_node.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)


def test_associations_beyond_the_limit_are_rejected_transiently(hub_factory):
    hub = seeded(hub_factory(max_associations=2))
    echo = [(Verification, ExplicitVRLittleEndian)]
    with (
        associate(hub, "CLINIC_A_DR", echo) as first,
        associate(hub, "CLINIC_B_CT", echo) as second,
    ):
        assert first.is_established and second.is_established
        with associate(hub, "CLINIC_A_DR", echo) as third:
            assert third.is_rejected
            assert rejection(third) == LOCAL_LIMIT_EXCEEDED
        assert first.send_c_echo().Status == SUCCESS  # the held ones are untouched
        assert second.send_c_echo().Status == SUCCESS
    wait_for_no_associations(hub)
    with associate(hub, "CLINIC_A_DR", echo) as again:
        assert again.is_established
        assert again.send_c_echo().Status == SUCCESS
