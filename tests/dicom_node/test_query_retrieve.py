"""DIMSE query/retrieve against real peers: dcmtk's findscu, movescu, getscu and storescp;
pynetdicom SCUs where a test needs exact statuses, counts or a C-CANCEL at a chosen moment.

Expected answers come from what the test ingested; retrieved files are compared with the
ingested bytes (the dataset after each side's own file meta) by SHA-256.
"""

from __future__ import annotations

import io
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynetdicom.association
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from dicom_node.retrieve import sender_only
from telehealth.auth.models import AuditEvent
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.institutions.service import add_application_entity
from telehealth.storage import S3Endpoint
from tests.conftest import (
    DEV_DATA,
    dcmtk,
    free_port,
    hub_settings,
    sample_copy,
    seed_consortium,
    upload_origin,
)
from tests.faults import TcpProxy, dataset_sha256, wait_for

CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"
US_RLE = DEV_DATA / "dicom" / "us" / "pydicom-data__OBXXXX1A_rle_2frame.dcm"  # 2 frames, RLE
DCMTK_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
WARNING_SOME_FAILED = 0xB000
SUB_OPERATIONS_FAILED = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
OUT_OF_RESOURCES = 0xA700
NOT_AUTHORISED = 0x0124
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900


# --- the world: a consortium, its AEs, four studies ------------------------------------------


@dataclass
class World:
    """COUNTY above CLINIC_A and CLINIC_B; a workstation AE in each.

    A (CLINIC_A): Zhang^San=张^三 (UTF-8), 3 CT slices in one series, 2024-01-05, ACC1.
    A2 (CLINIC_A): 张三^李四 (GB18030), 1 CT slice, 2024-02-20.
    US (CLINIC_A): the 2-frame RLE ultrasound sample (compressed, sent as stored).
    B (CLINIC_B): Zhao^Liu, 1 CT slice, 2024-03-10, ACC2.
    """

    hub: Hub
    ids: dict[str, int]
    tmp: Path  # where peers write what they receive
    study: dict[str, str] = field(default_factory=dict)  # label → Study Instance UID
    series: dict[str, str] = field(default_factory=dict)
    sops: dict[str, list[str]] = field(default_factory=dict)  # label → SOP UIDs, in order
    sent: dict[str, bytes] = field(default_factory=dict)  # SOP UID → the bytes ingested

    @property
    def port(self) -> int:
        assert self.hub.dicom_node is not None
        return self.hub.dicom_node.port

    def add(self, label: str, code: str, data: bytes) -> None:
        result = self.hub.archive.ingest(data, upload_origin(self.ids[code]))
        self.study[label] = result.study_instance_uid
        self.series[label] = str(
            dcmread(io.BytesIO(data), stop_before_pixels=True).SeriesInstanceUID
        )
        self.sops.setdefault(label, []).append(result.sop_instance_uid)
        self.sent[result.sop_instance_uid] = data

    def register(self, ae_title: str, code: str, port: int | None = None) -> None:
        with transaction(self.hub.factory) as session:
            add_application_entity(
                session,
                ae_title=ae_title,
                institution_code=code,
                host="127.0.0.1" if port else None,
                port=port,
            )


def ct(study: str, series: str, number: int, **attributes: object) -> bytes:
    return sample_copy(
        CT, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=number, **attributes
    )


def build_world(hub: Hub, tmp: Path) -> World:
    with transaction(hub.factory) as session:
        world = World(hub, seed_consortium(session), tmp)
    for title, code in (("A_WS", "CLINIC_A"), ("B_WS", "CLINIC_B"), ("COUNTY_WS", "COUNTY")):
        world.register(title, code)
    study, series = generate_uid(), generate_uid()
    for number in (1, 2, 3):
        world.add(
            "A",
            "CLINIC_A",
            ct(
                study,
                series,
                number,
                PatientID="A001",
                PatientName="Zhang^San=张^三",
                SpecificCharacterSet="ISO_IR 192",
                StudyDate="20240105",
                AccessionNumber="ACC1",
            ),
        )
    world.add(
        "A2",
        "CLINIC_A",
        ct(
            generate_uid(),
            generate_uid(),
            1,
            PatientID="A002",
            PatientName="张三^李四",
            SpecificCharacterSet="GB18030",
            StudyDate="20240220",
            AccessionNumber="",
        ),
    )
    world.add(
        "US", "CLINIC_A", sample_copy(US_RLE, StudyInstanceUID=generate_uid(), PatientID="A003")
    )
    world.add(
        "B",
        "CLINIC_B",
        ct(
            generate_uid(),
            generate_uid(),
            1,
            PatientID="B001",
            PatientName="Zhao^Liu",
            StudyDate="20240310",
            AccessionNumber="ACC2",
        ),
    )
    return world


@pytest.fixture
def world(hub: Hub, tmp_path: Path) -> World:
    return build_world(hub, tmp_path)


# --- peers ------------------------------------------------------------------------------------


def findscu(
    world: World, calling: str, *keys: str, model: str = "-S", query: Path | None = None
) -> tuple[list[Dataset], subprocess.CompletedProcess[str]]:
    """dcmtk findscu; each response identifier as written by -X (rsp0001.dcm, ...)."""
    out = world.tmp / f"find-{generate_uid()[-12:]}"
    out.mkdir(parents=True)
    args = [dcmtk("findscu"), "-v", "-X", model, "-aet", calling, "-aec", "TELEHEALTH"]
    args += ["127.0.0.1", str(world.port)]
    for key in keys:
        args += ["-k", key]
    if query is not None:
        args.append(str(query))
    result = subprocess.run(
        args,
        cwd=out,
        env=DCMTK_ENV,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=False,
    )
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], result


def movescu(
    world: World, calling: str, destination: str, *keys: str, model: str = "-S"
) -> subprocess.CompletedProcess[str]:
    args = [dcmtk("movescu"), "-v", model, "-aet", calling, "-aec", "TELEHEALTH"]
    args += ["-aem", destination, "127.0.0.1", str(world.port)]
    for key in keys:
        args += ["-k", key]
    return subprocess.run(
        args,
        env=DCMTK_ENV,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
        check=False,
    )


def getscu(
    world: World, calling: str, out: Path, *keys: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """dcmtk getscu writing what it receives bit-preserving (+B) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    args = [dcmtk("getscu"), "-v", "-S", "+B", *options, "-od", str(out)]
    args += ["-aet", calling, "-aec", "TELEHEALTH", "127.0.0.1", str(world.port)]
    for key in keys:
        args += ["-k", key]
    return subprocess.run(
        args,
        env=DCMTK_ENV,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
        check=False,
    )


@contextmanager
def storescp(folder: Path, ae_title: str, accept: str = "+xa") -> Iterator[int]:
    """dcmtk storescp writing each received instance exactly as it arrived (+B); its port.
    `accept`: its transfer syntax option (+xa: all it knows; +xe: uncompressed only)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [dcmtk("storescp"), "+B", accept, "-od", str(folder), "-aet", ae_title, str(port)]
    process = subprocess.Popen(args, env=DCMTK_ENV)

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, timeout=15, what="storescp listening")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)


def received_digests(folder: Path) -> dict[str, str]:
    """SOP Instance UID → SHA-256 of the dataset, for every file a peer wrote."""
    return {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_sha256(p.read_bytes())
        for p in folder.iterdir()
        if p.is_file()
    }


def sent_digests(world: World, *labels: str) -> dict[str, str]:
    return {uid: dataset_sha256(world.sent[uid]) for label in labels for uid in world.sops[label]}


@contextmanager
def associate(
    world: World,
    calling: str,
    *sop_classes: str,
    storage: tuple[tuple[str, str], ...] = (),
    handlers: list[Any] | None = None,
) -> Iterator[Association]:
    """A pynetdicom SCU association; `storage` contexts take the SCP role (C-GET)."""
    ae = AE(calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class)
    for sop_class, syntax in storage:
        ae.add_requested_context(sop_class, [syntax])
    roles: list[Any] = [build_role(sop_class, scp_role=True) for sop_class, _ in storage]
    assoc = ae.associate(
        "127.0.0.1",
        world.port,
        ae_title="TELEHEALTH",
        ext_neg=roles or None,
        evt_handlers=handlers or None,
    )
    try:
        assert assoc.is_established
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def identifier(level: str | None, **keys: object) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def bad_date() -> Dataset:
    """A STUDY identifier with an impossible Study Date (pydicom warns as it is set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return identifier("STUDY", StudyDate="20241301")


def final(responses: list[tuple[Dataset, Dataset | None]]) -> tuple[Dataset, Dataset | None]:
    assert responses, "no response"
    return responses[-1]


def uid_list(ds: Dataset) -> list[str]:
    """Failed SOP Instance UID List as a list, however many values it has."""
    value = ds.FailedSOPInstanceUIDList
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def move(
    world: World, calling: str, destination: str, ds: Dataset, model: str
) -> list[tuple[Dataset, Dataset | None]]:
    with associate(world, calling, model) as assoc:
        return list(assoc.send_c_move(ds, destination, model))


def find(
    world: World, calling: str, ds: Dataset, model: str = StudyRootQueryRetrieveInformationModelFind
) -> list[tuple[Dataset, Dataset | None]]:
    with associate(world, calling, model) as assoc:
        return list(assoc.send_c_find(ds, model))


def audit_rows(world: World, action: str) -> list[tuple[str, str, str, str]]:
    with transaction(world.hub.factory) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        ).all()
        return [(e.actor, str(e.outcome), e.object_id, e.detail) for e in events]


STUDY_ROOT_GET = StudyRootQueryRetrieveInformationModelGet
STUDY_ROOT_MOVE = StudyRootQueryRetrieveInformationModelMove
STUDY_ROOT_FIND = StudyRootQueryRetrieveInformationModelFind
PATIENT_ROOT_FIND = PatientRootQueryRetrieveInformationModelFind
PATIENT_ROOT_MOVE = PatientRootQueryRetrieveInformationModelMove


# --- C-FIND ------------------------------------------------------------------------------------


def keys_of(ds: Dataset) -> set[str]:
    return {elem.keyword for elem in ds}


def test_find_patient_root_at_each_level(world: World) -> None:
    answered = {"QueryRetrieveLevel", "RetrieveAETitle"}

    [patient], result = findscu(
        world, "A_WS", "QueryRetrieveLevel=PATIENT", "PatientID=A001", "PatientName", model="-P"
    )
    assert "Final Find Response (Success)" in result.stderr, result.stderr
    assert keys_of(patient) == {"PatientID", "PatientName", "SpecificCharacterSet"} | answered
    assert (patient.PatientID, str(patient.PatientName)) == ("A001", "Zhang^San=张^三")
    assert patient.QueryRetrieveLevel == "PATIENT"
    assert patient.RetrieveAETitle == "TELEHEALTH"

    studies, _ = findscu(
        world,
        "A_WS",
        "QueryRetrieveLevel=STUDY",
        "PatientID=A001",
        "StudyInstanceUID",
        "StudyDate",
        "NumberOfStudyRelatedInstances",
        model="-P",
    )
    assert [(s.StudyInstanceUID, s.StudyDate) for s in studies] == [(world.study["A"], "20240105")]
    assert studies[0].NumberOfStudyRelatedInstances == 3
    assert (
        keys_of(studies[0])
        == {
            "PatientID",
            "StudyInstanceUID",
            "StudyDate",
            "NumberOfStudyRelatedInstances",
        }
        | answered
    )

    series, _ = findscu(
        world,
        "A_WS",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={world.study['A']}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
        model="-P",
    )
    assert [(s.SeriesInstanceUID, s.Modality) for s in series] == [(world.series["A"], "CT")]
    assert series[0].NumberOfSeriesRelatedInstances == 3

    images, _ = findscu(
        world,
        "A_WS",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={world.study['A']}",
        f"SeriesInstanceUID={world.series['A']}",
        "SOPInstanceUID",
        "InstanceNumber",
        "SOPClassUID",
        model="-P",
    )
    assert [i.SOPInstanceUID for i in images] == world.sops["A"]  # in instance number order
    assert [i.InstanceNumber for i in images] == [1, 2, 3]
    assert {i.SOPClassUID for i in images} == {CTImageStorage}
    assert (
        keys_of(images[0])
        == {
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "InstanceNumber",
            "SOPClassUID",
        }
        | answered
    )

    # Relational: a patient's images without naming the study or series between.
    images, _ = findscu(
        world, "A_WS", "QueryRetrieveLevel=IMAGE", "PatientID=A002", "SOPInstanceUID", model="-P"
    )
    assert [i.SOPInstanceUID for i in images] == world.sops["A2"]


def test_find_study_root_matching(world: World) -> None:
    def studies(*keys: str) -> set[str]:
        found, result = findscu(world, "COUNTY_WS", "QueryRetrieveLevel=STUDY", *keys)
        assert "Final Find Response (Success)" in result.stderr, result.stderr
        return {str(ds.StudyInstanceUID) for ds in found}

    a, a2, us, b = (world.study[k] for k in ("A", "A2", "US", "B"))
    uid = "StudyInstanceUID"
    assert studies(uid) == {a, a2, us, b}  # the county sees its clinics
    assert studies(uid, "PatientName=zhang*") == {a}  # wildcard, case-insensitive PN
    assert studies(uid, "PatientName=Zhao^Liu") == {b}
    assert studies(uid, "AccessionNumber=ACC?") == {a, b}
    assert studies(uid, "StudyDate=20240101-20240131") == {a}
    assert studies(uid, "StudyDate=20240201-") == {a2, b}
    assert studies(uid, "StudyDate=20240310") == {b}
    assert studies(f"{uid}={a}\\{b}") == {a, b}  # a list of UIDs
    assert studies(uid, "ModalitiesInStudy=US") == {us}

    # Universal matching returns the value; a key the index does not hold comes back empty.
    [found], _ = findscu(
        world,
        "COUNTY_WS",
        "QueryRetrieveLevel=STUDY",
        f"{uid}={b}",
        "StudyDate",
        "InstitutionName",
        "InstanceAvailability",
    )
    assert found.StudyDate == "20240310"
    assert "InstitutionName" in found
    assert found.InstitutionName == ""
    assert found.InstanceAvailability == "ONLINE"


def _query_file(path: Path, charset: str, level: str, **keys: object) -> Path:
    ds = identifier(level, **keys)
    ds.SpecificCharacterSet = charset
    ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


def test_find_chinese_names_in_gb18030_and_utf8(world: World, tmp_path: Path) -> None:
    # A query written in GB18030 (as a Chinese PACS would send it) finds the name in either
    # component group and gets it back in GB18030.
    query = _query_file(
        tmp_path / "gb.dcm", "GB18030", "STUDY", PatientName="张*", StudyInstanceUID=""
    )
    found, result = findscu(world, "A_WS", query=query)
    assert "Final Find Response (Success)" in result.stderr, result.stderr
    names = {str(ds.StudyInstanceUID): str(ds.PatientName) for ds in found}
    assert names == {world.study["A"]: "Zhang^San=张^三", world.study["A2"]: "张三^李四"}
    assert {ds.SpecificCharacterSet for ds in found} == {"GB18030"}

    query = _query_file(
        tmp_path / "utf8.dcm", "ISO_IR 192", "PATIENT", PatientName="张三^李四", PatientID=""
    )
    [patient], _ = findscu(world, "A_WS", query=query, model="-P")
    assert (patient.PatientID, str(patient.PatientName)) == ("A002", "张三^李四")
    assert patient.SpecificCharacterSet == "ISO_IR 192"

    # No character set in the query: a name that needs one comes back in UTF-8.
    [study], _ = findscu(world, "A_WS", "QueryRetrieveLevel=STUDY", "PatientID=A002", "PatientName")
    assert study.SpecificCharacterSet == "ISO_IR 192"
    assert str(study.PatientName) == "张三^李四"


# --- C-MOVE and C-GET, byte for byte -----------------------------------------------------------


def test_move_to_storescp_sends_the_stored_bytes(world: World, tmp_path: Path) -> None:
    received = tmp_path / "received"
    with storescp(received, "A_STORE") as port:
        world.register("A_STORE", "CLINIC_A", port)
        result = movescu(
            world,
            "A_WS",
            "A_STORE",
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={world.study['A']}",
        )
        assert result.returncode == 0, result.stderr
        assert "Final Move Response (Success)" in result.stderr
        # Patient level (Patient Root), and a compressed instance sent in its own syntax.
        for patient_id in ("A002", "A003"):
            result = movescu(
                world,
                "A_WS",
                "A_STORE",
                "QueryRetrieveLevel=PATIENT",
                f"PatientID={patient_id}",
                model="-P",
            )
            assert "Final Move Response (Success)" in result.stderr, result.stderr
    assert received_digests(received) == sent_digests(world, "A", "A2", "US")
    rle = [p for p in received.iterdir() if p.name.startswith("US")]
    assert [dcmread(p).file_meta.TransferSyntaxUID for p in rle] == [RLELossless]

    [*_, done] = audit_rows(world, "dimse.c_move")
    assert done[0] == "ae:A_WS"
    assert done[2] == world.study["US"]
    assert "1 sent to A_STORE" in done[3]


def test_get_sends_the_stored_bytes_over_the_same_association(world: World, tmp_path: Path) -> None:
    a = world.study["A"]
    result = getscu(
        world,
        "A_WS",
        tmp_path / "series",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={a}",
        f"SeriesInstanceUID={world.series['A']}",
    )
    assert result.returncode == 0, result.stderr
    assert "Number of Completed Suboperations : 3" in result.stderr
    assert received_digests(tmp_path / "series") == sent_digests(world, "A")

    first, last = world.sops["A"][0], world.sops["A"][2]
    result = getscu(
        world,
        "A_WS",
        tmp_path / "images",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={a}",
        f"SeriesInstanceUID={world.series['A']}",
        f"SOPInstanceUID={first}\\{last}",
    )
    assert result.returncode == 0, result.stderr
    assert set(received_digests(tmp_path / "images")) == {first, last}

    result = getscu(
        world,
        "A_WS",
        tmp_path / "us",
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={world.study['US']}",
        options=("+xr",),  # the caller offers RLE: the stored syntax, sent as is
    )
    assert result.returncode == 0, result.stderr
    assert received_digests(tmp_path / "us") == sent_digests(world, "US")
    [*_, done] = audit_rows(world, "dimse.c_get")
    assert done[:3] == ("ae:A_WS", "success", world.study["US"])
    assert done[3].startswith("1 sent")


def test_get_decompresses_an_instance_whose_stored_syntax_the_caller_did_not_offer(
    world: World,
) -> None:
    # Offered only explicit VR little endian for ultrasound: the RLE instance is decoded
    # (more codecs in test_transcode.py).
    storage = ((UltrasoundMultiFrameImageStorage, ExplicitVRLittleEndian),)
    received: dict[str, Any] = {}

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds.pixel_array
        return SUCCESS

    with associate(
        world, "A_WS", STUDY_ROOT_GET, storage=storage, handlers=[(evt.EVT_C_STORE, on_store)]
    ) as assoc:
        ds = identifier("STUDY", StudyInstanceUID=world.study["US"])
        status, _ = final(list(assoc.send_c_get(ds, STUDY_ROOT_GET)))
    assert status.Status == SUCCESS
    [uid] = world.sops["US"]
    assert list(received) == [uid]
    assert (received[uid] == dcmread(io.BytesIO(world.sent[uid])).pixel_array).all()


# --- C-MOVE destinations --------------------------------------------------------------------


def test_move_destination_unknown_or_unreachable(world: World) -> None:
    ds = identifier("STUDY", StudyInstanceUID=world.study["A"])

    result = movescu(
        world, "A_WS", "NOBODY", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={world.study['A']}"
    )
    assert "MoveDestinationUnknown" in result.stderr, result.stderr
    [(status, _)] = move(world, "A_WS", "NOBODY", ds, STUDY_ROOT_MOVE)
    assert status.Status == MOVE_DESTINATION_UNKNOWN
    assert "NOBODY" in status.ErrorComment
    world.register("A_MODALITY", "CLINIC_A")  # registered, but no host and port to send to
    [(status, _)] = move(world, "A_WS", "A_MODALITY", ds, STUDY_ROOT_MOVE)
    assert status.Status == MOVE_DESTINATION_UNKNOWN

    # Registered with an address where nothing listens: every sub-operation failed, counted.
    world.register("A_GONE", "CLINIC_A", free_port())
    status, failed = final(move(world, "A_WS", "A_GONE", ds, STUDY_ROOT_MOVE))
    assert status.Status == SUB_OPERATIONS_FAILED
    assert (
        status.NumberOfCompletedSuboperations,
        status.NumberOfFailedSuboperations,
        status.NumberOfWarningSuboperations,
    ) == (0, 3, 0)
    assert failed is not None
    assert sorted(uid_list(failed)) == sorted(world.sops["A"])
    [*_, done] = audit_rows(world, "dimse.c_move")
    assert done[1] == "failed"
    assert "cannot reach A_GONE" in done[3]
    # Nothing was lost: the study is still whole.
    images = identifier("IMAGE", StudyInstanceUID=world.study["A"], SOPInstanceUID="")
    assert [s.Status for s, _ in find(world, "A_WS", images)] == [PENDING] * 3 + [SUCCESS]


def test_move_counts_each_failed_sub_operation(world: World) -> None:
    """A destination refusing one instance: Warning 0xB000 naming it, the others completed."""
    refuse = world.sops["A"][1]
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        uid = str(event.dataset.SOPInstanceUID)
        if uid == refuse:
            return 0xA700
        stored.append(uid)
        return SUCCESS

    ae = AE("A_PACS")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        world.register("A_PACS", "CLINIC_A", port)
        responses = move(
            world,
            "A_WS",
            "A_PACS",
            identifier("STUDY", StudyInstanceUID=world.study["A"]),
            STUDY_ROOT_MOVE,
        )
    finally:
        if server is not None:
            server.shutdown()
    pending = [s for s, _ in responses[:-1]]
    assert [s.Status for s in pending] == [PENDING, PENDING]
    assert [s.NumberOfRemainingSuboperations for s in pending] == [2, 1]
    status, failed = final(responses)
    assert status.Status == WARNING_SOME_FAILED
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (2, 1)
    assert failed is not None
    assert uid_list(failed) == [refuse]
    assert stored == [world.sops["A"][0], world.sops["A"][2]]


# --- scope ------------------------------------------------------------------------------------


def test_a_clinic_finds_and_retrieves_only_what_it_may_see(world: World, tmp_path: Path) -> None:
    a = world.study["A"]
    hidden = ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a}")
    found, result = findscu(world, "B_WS", *hidden)
    assert found == [] and "Final Find Response (Success)" in result.stderr
    found, _ = findscu(world, "B_WS", "QueryRetrieveLevel=STUDY", "PatientID=A001")
    assert found == []
    found, _ = findscu(world, "B_WS", "QueryRetrieveLevel=PATIENT", "PatientID", model="-P")
    assert [ds.PatientID for ds in found] == ["B001"]
    found, _ = findscu(world, "A_WS", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    assert {ds.StudyInstanceUID for ds in found} == {a, world.study["A2"], world.study["US"]}

    received = tmp_path / "b"
    with storescp(received, "B_STORE") as port:
        world.register("B_STORE", "CLINIC_B", port)
        # Another clinic's study is not there: nothing matches, nothing is sent.
        result = movescu(world, "B_WS", "B_STORE", *hidden)
        assert "Final Move Response (Success)" in result.stderr, result.stderr
        status, _ = final(
            move(world, "B_WS", "B_STORE", identifier("STUDY", StudyInstanceUID=a), STUDY_ROOT_MOVE)
        )
        assert (status.Status, status.NumberOfCompletedSuboperations) == (SUCCESS, 0)
        # A clinic's own study does not go to another clinic's AE either.
        status, _ = final(
            move(world, "A_WS", "B_STORE", identifier("STUDY", StudyInstanceUID=a), STUDY_ROOT_MOVE)
        )
        assert status.Status == NOT_AUTHORISED
        assert "B_STORE" in status.ErrorComment
    assert list(received.iterdir()) == []
    result = getscu(world, "B_WS", tmp_path / "get", *hidden)
    assert "Number of Completed Suboperations : 0" in result.stderr, result.stderr
    assert list((tmp_path / "get").iterdir()) == []

    finds = audit_rows(world, "dimse.c_find")
    assert finds[0][:2] == ("ae:B_WS", "success")
    assert f"StudyInstanceUID={a}" in finds[0][3]
    moves = audit_rows(world, "dimse.c_move")
    assert ("ae:A_WS", "denied", "") in [row[:3] for row in moves]  # who asked
    assert ("ae:B_STORE", "denied", a) in [row[:3] for row in moves]  # where it would have gone


def test_unregistered_callers_may_store_but_not_query(
    hub_factory: Callable[..., Hub], tmp_path: Path
) -> None:
    world = build_world(hub_factory(accept_unknown_callers=True), tmp_path)
    [(status, _)] = find(world, "NOBODY", identifier("STUDY", StudyInstanceUID=""))
    assert status.Status == NOT_AUTHORISED
    assert status.ErrorComment


# --- errors and C-CANCEL -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ds", "model", "expected"),
    [
        (identifier(None, PatientID="A001"), STUDY_ROOT_FIND, range(0xC000, 0xD000)),
        (identifier("FAMILY", PatientID=""), STUDY_ROOT_FIND, range(0xC000, 0xD000)),
        (
            identifier("PATIENT", PatientID=""),
            STUDY_ROOT_FIND,
            [IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS],
        ),
        (bad_date(), STUDY_ROOT_FIND, range(0xC000, 0xD000)),
        (identifier(None, PatientID="A001"), STUDY_ROOT_MOVE, range(0xC000, 0xD000)),
        (identifier("STUDY", StudyInstanceUID=""), STUDY_ROOT_MOVE, range(0xC000, 0xD000)),
        (identifier("PATIENT", PatientID="A*"), PATIENT_ROOT_MOVE, range(0xC000, 0xD000)),
    ],
)
def test_bad_identifiers_fail_with_a_reason(
    world: World, ds: Dataset, model: str, expected: range | list[int]
) -> None:
    with associate(world, "A_WS", model) as assoc:
        if model == STUDY_ROOT_FIND:
            responses = list(assoc.send_c_find(ds, model))
        else:
            responses = list(assoc.send_c_move(ds, "A_WS", model))
    [(status, _)] = responses
    assert status.Status in expected
    assert status.ErrorComment


def test_undecodable_identifier_fails_with_a_reason(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Query/Retrieve Level, then an element with the VR "XX", which no decoder knows.
    garbage = b"\x08\x00\x52\x00CS\x06\x00STUDY \x08\x00\x20\x00XX\x04\x00abcd"
    ae = AE("A_WS")
    ae.add_requested_context(STUDY_ROOT_FIND, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", world.port, ae_title="TELEHEALTH")
    try:
        assert assoc.is_established
        # The SCU encodes identifiers through this name; make it send the bytes above.
        monkeypatch.setattr(pynetdicom.association, "encode", lambda *_: garbage)
        responses = list(assoc.send_c_find(identifier("STUDY"), STUDY_ROOT_FIND))
        monkeypatch.undo()
    finally:
        assoc.release()
        ae.shutdown()
    [(status, _)] = responses
    assert 0xC000 <= status.Status <= 0xCFFF
    assert "cannot be decoded" in status.ErrorComment


def test_cancel_stops_a_find(world: World) -> None:
    hub = world.hub
    node = hub.dicom_node
    assert node is not None

    def serving() -> Association:
        [acceptor] = [a for a in node.ae.active_associations if a.is_acceptor]
        return acceptor

    with associate(world, "COUNTY_WS", STUDY_ROOT_FIND) as assoc:
        context_id = next(
            cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == STUDY_ROOT_FIND
        )
        # Hold the database so the search waits while the C-CANCEL arrives. pynetdicom drops a
        # C-CANCEL that comes before it starts serving the request, so send it once it has.
        with transaction(hub.factory) as session:
            if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
                session.execute(text("LOCK TABLE studies IN ACCESS EXCLUSIVE MODE"))
            else:
                session.execute(text("SELECT 1"))  # SQLite: BEGIN IMMEDIATE holds the lock
            responses = assoc.send_c_find(
                identifier("STUDY", StudyInstanceUID=""), STUDY_ROOT_FIND, msg_id=7
            )
            wait_for(lambda: serving()._is_paused, timeout=10, what="the hub serving the C-FIND")
            assoc.send_c_cancel(7, context_id)
            wait_for(lambda: serving().dimse.cancel_req, timeout=10, what="the C-CANCEL at the hub")
        answered = list(responses)
    assert [s.Status for s, _ in answered] == [CANCEL]  # no study was sent


def test_cancel_stops_a_get_between_sub_operations(world: World) -> None:
    received: list[str] = []
    cancel: dict[str, int] = {}

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        if len(received) == 1:
            # Sent before this store is answered, so it is there when the hub looks.
            event.assoc.send_c_cancel(cancel["msg_id"], cancel["context_id"])
        return SUCCESS

    storage = ((CTImageStorage, ExplicitVRLittleEndian),)
    with associate(
        world, "A_WS", STUDY_ROOT_GET, storage=storage, handlers=[(evt.EVT_C_STORE, on_store)]
    ) as assoc:
        cancel["msg_id"] = 11
        cancel["context_id"] = next(
            int(cx.context_id or 0)
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == STUDY_ROOT_GET
        )
        ds = identifier("STUDY", StudyInstanceUID=world.study["A"])
        status, _ = final(list(assoc.send_c_get(ds, STUDY_ROOT_GET, msg_id=11)))
    assert status.Status == CANCEL
    assert (status.NumberOfCompletedSuboperations, status.NumberOfRemainingSuboperations) == (1, 2)
    assert received == world.sops["A"][:1]
    [*_, done] = audit_rows(world, "dimse.c_get")
    assert "cancelled" in done[3]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_database_down_answers_out_of_resources(
    tmp_path: Path, database_url: str, s3: S3Endpoint, bucket: str
) -> None:
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    hub = Hub(hub_settings(tmp_path / "data", proxied, s3, bucket)).open()
    try:
        hub.start()
        world = build_world(hub, tmp_path)
        ds = identifier("STUDY", StudyInstanceUID=world.study["A"])
        with associate(world, "A_WS", STUDY_ROOT_FIND, STUDY_ROOT_MOVE) as assoc:
            proxy.stop()  # the caller was admitted while the database answered
            [(found, _)] = list(assoc.send_c_find(ds, STUDY_ROOT_FIND))
            [(moved, _)] = list(assoc.send_c_move(ds, "A_WS", STUDY_ROOT_MOVE))
            proxy.start()
            assert len(list(assoc.send_c_find(ds, STUDY_ROOT_FIND))) == 2  # back: one match
        assert found.Status == moved.Status == OUT_OF_RESOURCES
        assert "database" in found.ErrorComment
    finally:
        proxy.stop()
        hub.close()


def test_audit_names_the_calling_ae(world: World) -> None:
    find(world, "A_WS", identifier("STUDY", PatientID="A001", StudyInstanceUID=""))
    [row] = audit_rows(world, "dimse.c_find")
    assert row[:2] == ("ae:A_WS", "success")
    assert "1 matches" in row[3] and "PatientID=A001" in row[3]


@pytest.mark.parametrize("guarded", [True, False], ids=["sender_only", "pynetdicom"])
def test_a_sending_association_keeps_its_responses_from_pynetdicoms_reactor(
    guarded: bool,
) -> None:
    """The race sender_only closes, forced: a response waiting on the queue while the
    reactor runs. Without the guard the reactor takes it (and the sender would wait out its
    DIMSE timeout); with it the response stays for send_c_store."""
    peer = AE("PEER")
    peer.add_supported_context(CTImageStorage)
    server = peer.start_server(("127.0.0.1", 0), block=False)
    try:
        ae = AE("SENDER")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="PEER")
        assert assoc.is_established
        if guarded:
            sender_only(assoc)
        response = C_STORE()
        response.MessageIDBeingRespondedTo = 1
        response.Status = 0x0000
        assoc.dimse.msg_queue.put((1, response))
        time.sleep(0.2)  # the reactor polls the queue every millisecond
        assert (assoc.dimse.msg_queue.qsize() == 1) is guarded
        assoc.release()
    finally:
        server.shutdown()
