"""C-GET and C-MOVE to peers that accept only uncompressed syntaxes: the hub decompresses.

The peers are dcmtk's getscu and storescp and pynetdicom; what they receive is compared with
what pydicom decodes from the file the test ingested, pixel for pixel.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pynetdicom._config
import pytest
from pydicom import dcmread
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt

from dicom_node.transcode import CannotTranscode, proposed_contexts, transcode
from telehealth.hub import Hub
from tests.conftest import DEV_DATA, free_port, sample_copy
from tests.dicom_node.test_query_retrieve import (
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    SUB_OPERATIONS_FAILED,
    SUCCESS,
    WARNING_SOME_FAILED,
    World,
    associate,
    audit_rows,
    build_world,
    final,
    getscu,
    identifier,
    move,
    movescu,
    received_digests,
    sent_digests,
    storescp,
    uid_list,
)

# One sample per codec the brief names; colour and multi-frame among them.
SAMPLES = {
    "j2k": DEV_DATA / "dicom" / "mr" / "pydicom__MR_small_jp2klossless.dcm",
    "jls": DEV_DATA / "dicom" / "mr" / "pydicom__MR_small_jpeg_ls_lossless.dcm",
    "rle": DEV_DATA / "dicom" / "sc_ot_other" / "pydicom__SC_rgb_rle_2frame.dcm",
    "jpeg": DEV_DATA / "dicom" / "sc_ot_other" / "pydicom__SC_rgb_jpeg_dcmtk.dcm",  # YBR
    "deflate": DEV_DATA / "dicom_edge" / "pydicom__image_dfl.dcm",
}
# JPEG Extended 12-bit that no decoder here reads (see the sample data README).
UNDECODABLE = DEV_DATA / "dicom_edge" / "pydicom__JPEG-lossy.dcm"


@pytest.fixture
def world(hub: Hub, tmp_path: Path) -> World:
    world = build_world(hub, tmp_path)
    study = generate_uid()
    for label, path in SAMPLES.items():
        world.add(label, "CLINIC_A", sample_copy(path, StudyInstanceUID=study, PatientID="A004"))
    return world


def pixels(data: bytes) -> np.ndarray:
    return dcmread(io.BytesIO(data)).pixel_array


def assert_same_pixels(world: World, folder: Path, syntax: str) -> None:
    """Every sample arrived in `syntax` with the pixels pydicom decodes from what we sent."""
    received = {str(dcmread(p).SOPInstanceUID): p for p in folder.iterdir()}
    expected = {world.sops[label][0]: label for label in SAMPLES}
    assert set(received) == set(expected)
    for uid, path in received.items():
        ds = dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax, expected[uid]
        assert np.array_equal(ds.pixel_array, pixels(world.sent[uid])), expected[uid]
        if ds.SamplesPerPixel == 3:
            assert (ds.PhotometricInterpretation, ds.PlanarConfiguration) == ("RGB", 0)


def test_getscu_offering_only_uncompressed_gets_decoded_pixels(
    world: World, tmp_path: Path
) -> None:
    # getscu proposes Explicit VR Little Endian alone for each storage class (its +xi does
    # not change that); the pynetdicom test below covers Implicit.
    out = tmp_path / "get"
    study = world.study["j2k"]
    result = getscu(
        world,
        "A_WS",
        out,
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={study}",
        options=("+xe",),
    )
    assert result.returncode == 0, result.stderr
    assert f"Number of Completed Suboperations : {len(SAMPLES)}" in result.stderr, result.stderr
    assert_same_pixels(world, out, ExplicitVRLittleEndian)
    [*_, done] = audit_rows(world, "dimse.c_get")
    assert done[1] == "success" and done[3].startswith(f"{len(SAMPLES)} sent")


def test_get_offering_only_implicit_little_endian(world: World, tmp_path: Path) -> None:
    storage = tuple(
        (str(sop_class), ImplicitVRLittleEndian)
        for sop_class in sorted({dcmread(path).SOPClassUID for path in SAMPLES.values()})
    )
    folder = tmp_path / "implicit"
    folder.mkdir()

    def on_store(event: evt.Event) -> int:
        assert event.context.transfer_syntax == ImplicitVRLittleEndian
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(folder / str(ds.SOPInstanceUID), enforce_file_format=True)
        return SUCCESS

    with associate(
        world, "A_WS", STUDY_ROOT_GET, storage=storage, handlers=[(evt.EVT_C_STORE, on_store)]
    ) as assoc:
        ds = identifier("STUDY", StudyInstanceUID=world.study["j2k"])
        status, _ = final(list(assoc.send_c_get(ds, STUDY_ROOT_GET)))
    assert (status.Status, status.NumberOfCompletedSuboperations) == (SUCCESS, len(SAMPLES))
    assert_same_pixels(world, folder, ImplicitVRLittleEndian)


def test_getscu_offering_the_stored_syntax_still_gets_the_stored_bytes(
    world: World, tmp_path: Path
) -> None:
    for label, option in (("j2k", "+xv"), ("jls", "+xt"), ("rle", "+xr")):
        out = tmp_path / label
        result = getscu(
            world,
            "A_WS",
            out,
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={world.study[label]}",
            f"SeriesInstanceUID={world.series[label]}",
            f"SOPInstanceUID={world.sops[label][0]}",
            options=(option,),
        )
        assert result.returncode == 0, result.stderr
        assert received_digests(out) == sent_digests(world, label)


def test_move_to_a_pynetdicom_scp_taking_only_explicit_little_endian(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub accepts any storage class in any syntax (server.py); this peer must not.
    monkeypatch.setattr(pynetdicom._config, "UNRESTRICTED_STORAGE_SERVICE", False)
    received: dict[str, bytes] = {}
    syntaxes: set[str] = set()

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        received[str(ds.SOPInstanceUID)] = out.getvalue()
        syntaxes.add(str(event.context.transfer_syntax))
        return SUCCESS

    ae = AE("A_PACS")
    for path in SAMPLES.values():
        ae.add_supported_context(dcmread(path).SOPClassUID, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        world.register("A_PACS", "CLINIC_A", port)
        ds = identifier("STUDY", StudyInstanceUID=world.study["j2k"])
        status, _ = final(move(world, "A_WS", "A_PACS", ds, STUDY_ROOT_MOVE))
    finally:
        server.shutdown()
    assert status.Status == SUCCESS
    assert status.NumberOfCompletedSuboperations == len(SAMPLES)
    assert syntaxes == {ExplicitVRLittleEndian}
    folder = world.tmp / "pacs"
    folder.mkdir()
    for uid, data in received.items():
        (folder / uid).write_bytes(data)
    assert_same_pixels(world, folder, ExplicitVRLittleEndian)


def test_move_to_storescp_accepting_uncompressed_only(world: World, tmp_path: Path) -> None:
    received = tmp_path / "received"
    with storescp(received, "A_STORE", accept="+xe") as port:
        world.register("A_STORE", "CLINIC_A", port)
        result = movescu(
            world,
            "A_WS",
            "A_STORE",
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={world.study['j2k']}",
        )
    assert "Final Move Response (Success)" in result.stderr, result.stderr
    assert_same_pixels(world, received, ExplicitVRLittleEndian)


def test_an_instance_that_cannot_be_decoded_fails_alone(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    study, series = generate_uid(), generate_uid()
    world.add("bad", "CLINIC_A", sample_copy(UNDECODABLE, StudyInstanceUID=study, PatientID="P9"))
    world.add(
        "good",
        "CLINIC_A",
        sample_copy(
            SAMPLES["j2k"], StudyInstanceUID=study, SeriesInstanceUID=series, PatientID="P9"
        ),
    )
    storage = tuple(
        (str(dcmread(path).SOPClassUID), ExplicitVRLittleEndian)
        for path in (UNDECODABLE, SAMPLES["j2k"])
    )
    got: list[str] = []

    def on_store(event: evt.Event) -> int:
        got.append(str(event.dataset.SOPInstanceUID))
        return SUCCESS

    with associate(
        world, "A_WS", STUDY_ROOT_GET, storage=storage, handlers=[(evt.EVT_C_STORE, on_store)]
    ) as assoc:
        status, failed = final(
            list(assoc.send_c_get(identifier("STUDY", StudyInstanceUID=study), STUDY_ROOT_GET))
        )
    assert status.Status == WARNING_SOME_FAILED
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (1, 1)
    assert failed is not None
    assert uid_list(failed) == world.sops["bad"]
    assert got == world.sops["good"]
    [line] = [r for r in caplog.records if world.sops["bad"][0] in r.getMessage()]
    assert "cannot be decoded" in line.getMessage()
    assert "P9" not in caplog.text  # no patient data in the log


def test_a_peer_taking_neither_stored_nor_uncompressed_gets_nothing(world: World) -> None:
    # Offered JPEG-LS only for the J2K instance's class: nothing it can take.
    storage = ((str(dcmread(SAMPLES["j2k"]).SOPClassUID), str(JPEGLSLossless)),)
    with associate(world, "A_WS", STUDY_ROOT_GET, storage=storage) as assoc:
        ds = identifier(
            "IMAGE",
            StudyInstanceUID=world.study["j2k"],
            SeriesInstanceUID=world.series["j2k"],
            SOPInstanceUID=world.sops["j2k"][0],
        )
        status, failed = final(list(assoc.send_c_get(ds, STUDY_ROOT_GET)))
    assert status.Status == SUB_OPERATIONS_FAILED
    assert failed is not None and uid_list(failed) == world.sops["j2k"]


def test_proposed_contexts_add_uncompressed_for_each_class() -> None:
    mr, sc = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"
    pairs = [(mr, str(JPEG2000Lossless)), (mr, str(ExplicitVRLittleEndian)), (sc, str(RLELossless))]
    proposed = [(cx.abstract_syntax, cx.transfer_syntax) for cx in proposed_contexts(pairs)]
    assert proposed == [
        (mr, [ExplicitVRLittleEndian]),
        (mr, [JPEG2000Lossless]),
        (sc, [RLELossless]),
        (mr, [ImplicitVRLittleEndian]),
        (sc, [ExplicitVRLittleEndian]),
        (sc, [ImplicitVRLittleEndian]),
    ]
    many = [(f"1.2.3.{n}", str(RLELossless)) for n in range(100)]
    assert len(proposed_contexts(many)) == 128


def test_transcode_refuses_what_it_cannot_make() -> None:
    with pytest.raises(CannotTranscode, match="cannot be decoded"):
        transcode(UNDECODABLE.read_bytes(), ExplicitVRLittleEndian)
    with pytest.raises(CannotTranscode, match="no transcoding into"):
        transcode(SAMPLES["j2k"].read_bytes(), str(UID("1.2.840.10008.1.2.4.80")))
    big_endian = DEV_DATA / "dicom_edge" / "pydicom__MR_small_bigendian.dcm"
    with pytest.raises(CannotTranscode, match="Big Endian"):
        transcode(big_endian.read_bytes(), ExplicitVRLittleEndian)
