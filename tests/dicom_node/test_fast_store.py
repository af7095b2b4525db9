"""The fast store path (dicom_node.fast_store) against real peers: dcmtk storescu, pynetdicom
SCUs, and a scripted peer speaking raw PDUs for what real SCUs never do (several PDVs in one
PDU, an abort mid-dataset, silence). No mocks; expectations come from pynetdicom's own coders.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode, encode_file_meta
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from dicom_node import fast_store
from telehealth.archive.models import IngestSource
from telehealth.archive.service import Origin, parse_header
from telehealth.archive.service.header import _parse_with_pydicom, _scan
from telehealth.archive.service.index import StoredCopy, index_instance
from telehealth.clock import FakeClock
from telehealth.config import DuplicatePolicy
from telehealth.db import transaction
from telehealth.hub import Hub
from tests import faults
from tests.conftest import dcmtk, dev_files, seed_consortium
from tests.dicom_node.test_store import (
    CALLING_AE_NOT_RECOGNISED,
    CT,
    LOCAL_LIMIT_EXCEEDED,
    MEDIA_STORAGE_DIRECTORY,
    SUCCESS,
    assert_clean,
    assert_nothing_stored,
    associate,
    chunked_sends,
    dataset_offset,
    dataset_sha256,
    indexed_uids,
    rejection,
    seeded,
    store_all,
    wire_file,
)

FAST_LOG = "dicom_node.fast_store"


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def fast_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=FAST_LOG)
    return caplog


def served_fast(caplog: pytest.LogCaptureFixture) -> int:
    """How many associations the fast path took (it logs each at DEBUG)."""
    return sum(1 for r in caplog.records if r.name == FAST_LOG and "fast path" in r.message)


def stored_bytes(hub: Hub, uid: str) -> bytes:
    with transaction(hub.factory) as session:
        return hub.archive.read_instance(session, uid)


def pynetdicom_part10(sop_class: str, sop_instance: str, syntax: str, dataset: bytes) -> bytes:
    """What pynetdicom's event.encoded_dataset() gives for such a C-STORE: the bytes the hub
    stored before the fast path existed."""
    meta = create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
    )
    return b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + dataset


def small_series(tmp_path: Path, count: int, patient_id: str = "FAST1") -> list[Path]:
    instances = faults.make_series(count, patient_id=patient_id)
    return faults.write_files(tmp_path / patient_id, instances)


def wait_until(probe, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class RawPeer:
    """A scripted association requestor (in the spirit of pynetdicom's tests/parrot.py): it
    writes PDUs byte by byte as told, so a test can split, bundle, cut or abort them."""

    def __init__(self, hub: Hub, calling: str = "CLINIC_A_DR") -> None:
        self.sock = socket.create_connection(("127.0.0.1", hub.dicom_node.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.calling = calling
        self.message_id = 0

    def close(self) -> None:
        self.sock.close()

    def request(
        self, contexts: list[tuple[str, str]], max_pdu: int = 16384, *, pieces: int = 1
    ) -> int:
        """Send an A-ASSOCIATE-RQ (context IDs 1, 3, 5, ...), in `pieces` TCP writes a moment
        apart; return the answer's PDU type."""
        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title = self.calling
        primitive.called_ae_title = "TELEHEALTH"
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = max_pdu
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.9999"
        primitive.user_information = [max_length, class_uid]
        proposed = []
        for n, (sop_class, syntax) in enumerate(contexts):
            cx = build_context(sop_class, [syntax])
            cx.context_id = 2 * n + 1
            proposed.append(cx)
        primitive.presentation_context_definition_list = proposed
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(primitive)
        encoded = pdu.encode()
        step = -(-len(encoded) // pieces)
        for start in range(0, len(encoded), step):
            self.sock.sendall(encoded[start : start + step])
            time.sleep(0.05 if pieces > 1 else 0)
        return self.read_pdu()[0]

    def read_pdu(self) -> tuple[int, bytes]:
        header = self._read(6)
        if not header:
            return 0, b""  # closed
        pdu_type, length = struct.unpack(">BxI", header)
        return pdu_type, self._read(length)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                return data
            data += chunk
        return data

    def send_pdvs(self, pdvs: list[tuple[int, int, bytes]]) -> None:
        """One P-DATA-TF carrying (context ID, control header, fragment) PDVs."""
        body = b"".join(struct.pack(">IBB", len(f) + 2, cx, mch) + f for cx, mch, f in pdvs)
        self.sock.sendall(struct.pack(">BxI", 0x04, len(body)) + body)

    def store_command(self, uid: str) -> bytes:
        self.message_id += 1
        req = C_STORE()
        req.MessageID = self.message_id
        req.AffectedSOPClassUID = CTImageStorage
        req.AffectedSOPInstanceUID = uid
        req.Priority = 0
        req.DataSet = io.BytesIO(b"\x00")  # any: it only makes CommandDataSetType say "present"
        message = C_STORE_RQ()
        message.primitive_to_message(req)
        return encode(message.command_set, True, True)  # type: ignore[no-any-return]

    def read_status(self) -> tuple[int, str]:
        """Read P-DATA-TF PDUs up to a whole response command; its Status and Error Comment."""
        command = b""
        while True:
            pdu_type, body = self.read_pdu()
            assert pdu_type == 0x04, f"expected P-DATA-TF, got 0x{pdu_type:02X}"
            offset = 0
            while offset < len(body):
                length, _cx, mch = struct.unpack_from(">IBB", body, offset)
                command += body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if mch & 0x03 == 0x03:
                    ds = decode(io.BytesIO(command), True, True)
                    return int(ds.Status), str(ds.get("ErrorComment", ""))

    def release(self) -> int:
        self.sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        return self.read_pdu()[0]


@contextmanager
def raw_peer(hub: Hub, calling: str = "CLINIC_A_DR") -> Iterator[RawPeer]:
    peer = RawPeer(hub, calling)
    try:
        yield peer
    finally:
        peer.close()


def dataset_of(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data) :]


# --- the coders agree with pynetdicom's -------------------------------------------------------


def test_file_meta_is_byte_identical_to_pynetdicoms():
    rng = random.Random(7)
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, "1.2.3"]
    uids = [generate_uid()[: rng.randint(3, 64)].rstrip(".") for _ in range(200)]
    odd = ["1.2.3 ", "1.2\\3.4", "not a uid", "1.2.840.10008.5.1.4.1.1.2\x00"]
    for sop_instance in uids + odd:
        for syntax in syntaxes:
            expected = pynetdicom_part10(CTImageStorage, sop_instance, syntax, b"")
            assert fast_store.file_meta(CTImageStorage, sop_instance, syntax) == expected


def test_responses_are_byte_identical_to_pynetdicoms():
    command = fast_store.Command(
        field=fast_store.C_STORE_RQ,
        message_id=7,
        has_dataset=True,
        sop_class_uid=CTImageStorage,
        sop_instance_uid=generate_uid(),
    )
    for status, comment in [(0x0000, ""), (0xC000, "dataset is truncated"), (0xA700, "odd")]:
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = command.sop_class_uid
        rsp.AffectedSOPInstanceUID = command.sop_instance_uid
        rsp.Status = status
        if comment:
            rsp.ErrorComment = comment
        message = C_STORE_RSP()
        message.primitive_to_message(rsp)
        expected = encode(message.command_set, True, True)
        assert fast_store.encode_response(command, fast_store.C_STORE_RSP, status, comment) == (
            expected
        )
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 7
    echo.AffectedSOPClassUID = Verification
    echo.Status = 0
    message = C_ECHO_RSP()
    message.primitive_to_message(echo)
    verification = fast_store.Command(fast_store.C_ECHO_RQ, 7, False, str(Verification), None)
    assert fast_store.encode_response(verification, fast_store.C_ECHO_RSP, 0) == encode(
        message.command_set, True, True
    )


def test_plain_header_reader_agrees_with_pydicom_on_every_sample_and_cut(tmp_path):
    """The archive's fast header reader gives pydicom's answer, or leaves the bytes to it."""
    rng = random.Random(3)
    fast = 0
    for path in dev_files("dicom", "ecg_dicom", "dicom_edge"):
        whole = wire_file(path, tmp_path).received
        cuts = {rng.randrange(132, len(whole)) for _ in range(6)} | {len(whole) - 1}
        for data in [whole, whole + b"\x00"] + [whole[:c] for c in cuts if c > 132]:
            fast += _scan(data) is not None
            outcomes = []
            for parse in (parse_header, _parse_with_pydicom):
                try:
                    outcomes.append(parse(data))
                except Exception as exc:
                    outcomes.append(type(exc))  # type: ignore[arg-type]
            assert outcomes[0] == outcomes[1], path
    assert fast > 150  # most samples are plain enough for the fast reader


# --- real peers on the fast path --------------------------------------------------------------


def test_storescu_stores_a_series_over_one_association_on_the_fast_path(
    hub, consortium, tmp_path, fast_log
):
    paths = small_series(tmp_path, 60)
    result = faults.storescu(dcmtk("storescu"), hub.dicom_node.port, paths)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("Received Store Response (Success)") == 60
    assert served_fast(fast_log) == 1
    assert sorted(indexed_uids(hub)) == sorted(faults.sop_uid(p.read_bytes()) for p in paths)
    for path in paths[:5]:
        stored = stored_bytes(hub, faults.sop_uid(path.read_bytes()))
        assert dataset_sha256(stored) == dataset_sha256(path.read_bytes())
    assert_clean(hub)


def test_parallel_associations_are_all_kept(hub, consortium, tmp_path, fast_log):
    folders = [small_series(tmp_path, 12, patient_id=f"PAR{n}") for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda p: faults.storescu(dcmtk("storescu"), hub.dicom_node.port, p), folders)
        )
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stderr.count("Received Store Response (Success)") == 12
    assert served_fast(fast_log) == 4
    assert len(indexed_uids(hub)) == 48
    wait_until(lambda: hub.dicom_node.fast_associations == 0)
    assert_clean(hub)


def test_every_sample_is_stored_as_pynetdicom_would_have_stored_it(
    hub, consortium, tmp_path, fast_log
):
    files = [wire_file(p, tmp_path) for p in dev_files("dicom", "ecg_dicom")]
    answers = store_all(hub, "CLINIC_A_DR", files)
    assert served_fast(fast_log) >= 1

    latest: dict[str, bytes] = {}
    for item in files:
        if item.sop_class_uid == MEDIA_STORAGE_DIRECTORY or not item.parses:
            continue
        assert answers[item.source].status == SUCCESS, item.source
        uid = parse_header(item.received).sop_instance_uid
        meta = dcmread(item.path, stop_before_pixels=True).file_meta
        # store_all sends the dataset bytes as they are in the file (chunked sends)
        latest[uid] = pynetdicom_part10(
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
            dataset_of(item.path),
        )
    assert len(latest) > 150
    for uid, expected in latest.items():
        stored = stored_bytes(hub, uid)
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(expected).hexdigest(), uid
    assert_clean(hub)


def test_datasets_split_into_many_pdus_are_reassembled(hub_factory, tmp_path, fast_log):
    hub = seeded(hub_factory(max_pdu_bytes=4096))  # the SCU may send no PDU over 4 kB
    paths = [*small_series(tmp_path, 5, patient_id="SPLIT"), CT]
    result = faults.storescu(
        dcmtk("storescu"), hub.dicom_node.port, paths, options=("--max-send-pdu", "4096")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("Received Store Response (Success)") == 6

    # A pynetdicom SCU whose own limit is tiny: the node's responses must be split too.
    other = dcmread(CT)
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "tiny-pdu.dcm"
    other.save_as(path)
    ae_contexts = [(CTImageStorage, ExplicitVRLittleEndian)]
    with associate(hub, "CLINIC_A_DR", ae_contexts, max_pdu=64) as assoc, chunked_sends():
        assert assoc.is_established
        assert assoc.send_c_store(path).Status == SUCCESS
    assert served_fast(fast_log) == 2
    # dcmtk re-encodes what it reads (CT_small comes out other bytes); ours it sends as made
    for p in [*paths[:-1], path]:
        data = p.read_bytes()
        stored = stored_bytes(hub, faults.sop_uid(data))
        assert dataset_sha256(stored) == dataset_sha256(data), p
    assert_clean(hub)


def test_fragments_bundled_and_split_any_way_are_reassembled(hub, consortium, tmp_path):
    data = CT.read_bytes()
    uid = faults.sop_uid(data)
    dataset = dataset_of(CT)
    with raw_peer(hub) as peer:
        assert peer.request([(CTImageStorage, ExplicitVRLittleEndian)]) == 0x02  # A-ASSOCIATE-AC
        command = peer.store_command(uid)
        # The command in two PDVs of one PDU, then the dataset's first fragments in the same
        # PDU as its last command fragment would break PS3.8 (one message at a time), so:
        peer.send_pdvs([(1, 0x01, command[:10]), (1, 0x03, command[10:])])
        sizes = [1, 7, 1000, 3, 4096]
        assert sum(sizes) < len(dataset)
        pdvs, offset = [], 0
        for size in sizes:
            pdvs.append((1, 0x00, dataset[offset : offset + size]))
            offset += size
        peer.send_pdvs(pdvs)  # five dataset PDVs in one PDU
        while offset < len(dataset):
            chunk = dataset[offset : offset + 777]
            offset += len(chunk)
            peer.send_pdvs([(1, 0x02 if offset >= len(dataset) else 0x00, chunk)])
        assert peer.read_status() == (SUCCESS, "")
        assert peer.release() == 0x06  # A-RELEASE-RP
    stored = stored_bytes(hub, uid)
    meta = dcmread(CT, stop_before_pixels=True).file_meta
    assert stored == pynetdicom_part10(
        str(meta.MediaStorageSOPClassUID), uid, str(meta.TransferSyntaxUID), dataset
    )
    assert_clean(hub)


def test_a_request_arriving_in_pieces_is_waited_for(hub, consortium, fast_log):
    # A modality on a real network sends a large A-ASSOCIATE-RQ in several segments.
    contexts = [(CTImageStorage, ExplicitVRLittleEndian), (Verification, ExplicitVRLittleEndian)]
    with raw_peer(hub) as peer:
        assert peer.request(contexts, pieces=5) == 0x02  # A-ASSOCIATE-AC
        assert peer.release() == 0x06
    assert served_fast(fast_log) == 1


def test_unknown_caller_is_rejected_with_the_same_answer_and_log_line(hub, consortium, fast_log):
    with associate(hub, "NOBODY", [(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
        assert assoc.is_rejected
        assert rejection(assoc) == CALLING_AE_NOT_RECOGNISED
    assert served_fast(fast_log) == 1
    assert any(
        "refused association from AE 'NOBODY' at 127.0.0.1" in r.getMessage()
        for r in fast_log.records
    )
    assert hub.dicom_node.fast_associations == 0


def test_malformed_dataset_fails_and_the_association_goes_on(hub, consortium, tmp_path):
    good = CT.read_bytes()
    with raw_peer(hub) as peer:
        assert peer.request([(CTImageStorage, ExplicitVRLittleEndian)]) == 0x02
        junk_uid = generate_uid()
        peer.send_pdvs([(1, 0x03, peer.store_command(junk_uid))])
        peer.send_pdvs([(1, 0x02, b"\x08\x00\x18\x00UI\x40\x00" + b"1.2" * 5)])
        status, comment = peer.read_status()
        assert 0xC000 <= status <= 0xCFFF
        assert comment
        peer.send_pdvs([(1, 0x03, peer.store_command(faults.sop_uid(good)))])
        peer.send_pdvs([(1, 0x02, dataset_of(CT))])
        assert peer.read_status() == (SUCCESS, "")
        assert peer.release() == 0x06
    assert indexed_uids(hub) == [faults.sop_uid(good)]
    assert_clean(hub)


@pytest.mark.parametrize("how", ["a-abort", "connection closed"])
def test_an_association_ended_mid_dataset_stores_nothing(hub, consortium, how):
    data = CT.read_bytes()
    # A 512 x 512 slice: its first half is spooled as it arrives, and must go again.
    (big,) = faults.make_series(1, patient_id="CUT", size=512)
    dataset = big[dataset_offset(big) :]
    with raw_peer(hub) as peer:
        assert peer.request([(CTImageStorage, ExplicitVRLittleEndian)]) == 0x02
        peer.send_pdvs([(1, 0x03, peer.store_command(faults.sop_uid(big)))])
        half = len(dataset) // 2
        for start in range(0, half, 16384):
            peer.send_pdvs([(1, 0x00, dataset[start : min(start + 16384, half)])])
        wait_until(lambda: list(hub.spool.folder.glob("*.part")))  # being received
        if how == "a-abort":
            peer.sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    wait_until(lambda: hub.dicom_node.fast_associations == 0)
    assert_nothing_stored(hub)
    # the node serves the next caller as before
    result = faults.storescu(dcmtk("storescu"), hub.dicom_node.port, [CT])
    assert result.returncode == 0, result.stderr[-2000:]
    assert indexed_uids(hub) == [faults.sop_uid(data)]


def test_protocol_errors_are_answered_with_an_abort(hub, consortium):
    with raw_peer(hub) as peer:
        assert peer.request([(CTImageStorage, ExplicitVRLittleEndian)]) == 0x02
        peer.send_pdvs([(3, 0x03, peer.store_command(generate_uid()))])  # context 3: not there
        assert peer.read_pdu()[0] == 0x07  # A-ABORT
        assert peer.read_pdu()[0] == 0  # then closed
    with raw_peer(hub) as peer:
        assert peer.request([(CTImageStorage, ExplicitVRLittleEndian)]) == 0x02
        peer.send_pdvs([(1, 0x00, b"dataset without a command")])
        assert peer.read_pdu()[0] == 0x07
    wait_until(lambda: hub.dicom_node.fast_associations == 0)
    assert_nothing_stored(hub)


def test_silent_peers_are_dropped(hub, consortium):
    hub.dicom_node.ae.acse_timeout = 0.5  # ARTIM: waiting for the A-ASSOCIATE-RQ
    hub.dicom_node.ae.network_timeout = 0.5  # idle association
    with raw_peer(hub) as silent:
        started = time.monotonic()
        assert silent.read_pdu()[0] == 0  # closed without a word
        assert time.monotonic() - started < 5
    with raw_peer(hub) as idle:
        assert idle.request([(Verification, ExplicitVRLittleEndian)]) == 0x02
        assert idle.read_pdu()[0] == 0x07  # A-ABORT after the idle timeout
    wait_until(lambda: hub.dicom_node.fast_associations == 0)


# --- what the fast path leaves to pynetdicom --------------------------------------------------


def test_storage_with_query_goes_to_pynetdicom(hub, consortium, tmp_path, fast_log):
    contexts = [
        (CTImageStorage, ExplicitVRLittleEndian),
        (StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian),
    ]
    with associate(hub, "CLINIC_A_DR", contexts) as assoc, chunked_sends():
        assert assoc.is_established
        assert hub.dicom_node.fast_associations == 0
        assert any(a.is_acceptor for a in hub.dicom_node.ae.active_associations)
        assert assoc.send_c_store(CT).Status == SUCCESS
    assert served_fast(fast_log) == 0
    stored = stored_bytes(hub, faults.sop_uid(CT.read_bytes()))
    meta = dcmread(CT, stop_before_pixels=True).file_meta
    assert stored == pynetdicom_part10(
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
        dataset_of(CT),
    )


def test_both_paths_share_the_association_limit(hub_factory):
    hub = seeded(hub_factory(max_associations=2))
    echo = [(Verification, ExplicitVRLittleEndian)]
    mixed = [*echo, (StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)]
    with (
        associate(hub, "CLINIC_A_DR", echo) as fast,
        associate(hub, "CLINIC_B_CT", mixed) as slow,
    ):
        assert fast.is_established and slow.is_established
        assert hub.dicom_node.fast_associations == 1
        for contexts in (echo, mixed):
            with associate(hub, "CLINIC_A_DR", contexts) as third:
                assert third.is_rejected
                assert rejection(third) == LOCAL_LIMIT_EXCEEDED
        assert fast.send_c_echo().Status == SUCCESS
        assert slow.send_c_echo().Status == SUCCESS


def test_the_fast_path_can_be_turned_off(hub_factory, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=FAST_LOG)
    hub = seeded(hub_factory(dicom_fast_store=False))
    result = faults.storescu(dcmtk("storescu"), hub.dicom_node.port, [CT])
    assert result.returncode == 0, result.stderr[-2000:]
    assert served_fast(caplog) == 0
    assert indexed_uids(hub) == [faults.sop_uid(CT.read_bytes())]


# --- the ingest hot path ----------------------------------------------------------------------


def raw_rows(hub: Hub, sql: str) -> list[dict[str, object]]:
    """Rows as the database holds them (SQLite keeps datetimes as text, say)."""
    with hub.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.exec_driver_sql(sql)]


def test_known_series_rows_are_the_ones_sqlalchemy_writes(hub_factory):
    """Archive.ingest indexes a new instance of a known series on the driver's cursor
    (KnownSeriesIndex); the rows must be what index_instance's statements write."""
    clock = FakeClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    hub = hub_factory(clock=clock)
    with transaction(hub.factory) as session:
        clinic = seed_consortium(session)["CLINIC_A"]
    origin = Origin(IngestSource.DIMSE, clinic, ae_title="CLINIC_A_DR", address="127.0.0.1")
    first, second, third = faults.make_series(3, patient_id="ROWS")
    hub.archive.ingest(first, origin)  # a new series: index_instance's general path
    clock.advance(seconds=1)
    hub.archive.ingest(second, origin)  # a known series: the driver's cursor
    after_fast = raw_rows(hub, "SELECT * FROM studies") + raw_rows(hub, "SELECT * FROM series")

    clock.advance(seconds=1)
    header = parse_header(third)
    copy = StoredCopy("elsewhere.dcm", hashlib.sha256(third).hexdigest(), len(third))
    with transaction(hub.factory) as session:
        index_instance(
            session, header, origin, copy, now=clock.now(), policy=DuplicatePolicy.REPLACE
        )
    after_core = raw_rows(hub, "SELECT * FROM studies") + raw_rows(hub, "SELECT * FROM series")

    rows = {r["sop_instance_uid"]: r for r in raw_rows(hub, "SELECT * FROM instances")}
    fast = rows[parse_header(second).sop_instance_uid]
    core = rows[header.sop_instance_uid]
    differ = {"id", "sop_instance_uid", "spool_name", "sha256", "object_key", "size_bytes"}
    differ |= {"instance_number", "received_at"}
    assert {k: v for k, v in fast.items() if k not in differ} == {
        k: v for k, v in core.items() if k not in differ
    }
    assert type(fast["received_at"]) is type(core["received_at"])  # stored alike
    assert fast["object_key"] == f"dicom/{fast['sop_instance_uid']}/{fast['sha256']}.dcm"
    # Counters moved the same way: one more instance, its size, the time it came.
    study_fast, series_fast = after_fast
    study_core, series_core = after_core
    assert series_core["num_instances"] == series_fast["num_instances"] + 1 == 3
    assert study_core["num_instances"] == study_fast["num_instances"] + 1 == 3
    assert study_core["size_bytes"] == study_fast["size_bytes"] + len(third)
    assert type(study_fast["last_received_at"]) is type(study_core["last_received_at"])
    assert study_fast["stable_at"] is None and study_core["stable_at"] is None


def test_spool_spares_are_claimed_once_and_never_taken_for_instances(hub, consortium, tmp_path):
    spool = hub.spool
    spool.make_spares()
    spares = sorted(p.name for p in spool.folder.iterdir() if p.name.endswith(".spare"))
    assert len(spares) == spool.spares_wanted
    assert list(spool.names()) == []  # spares are not instances (recovery, fsck skip them)
    paths = small_series(tmp_path, 10, patient_id="SPARE")
    result = faults.storescu(dcmtk("storescu"), hub.dicom_node.port, paths)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(indexed_uids(hub)) == 10
    assert_clean(hub)
