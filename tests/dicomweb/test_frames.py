"""WADO-RS frames and bulk data: as stored byte for byte, decoded as pydicom decodes, scoped."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels import pixel_array, unpack_bits
from pydicom.uid import UID, generate_uid
from sqlalchemy import select

from telehealth.auth.models import AuditEvent
from telehealth.db import transaction
from telehealth.dicomweb.service import bulk_data_uri_handler
from telehealth.hub import Hub
from tests.conftest import DEV_DATA, dev_files
from tests.dicomweb import CT, Web, fresh_copy, open_web, related_parts

ECG = DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm"
ICON = DEV_DATA / "dicom" / "sc_ot_other" / "octave-dicom__simpleImageWithIcon.dcm"
JPEG_BASELINE = DEV_DATA / "dicom" / "sc_ot_other" / "pydicom__SC_rgb_jpeg_dcmtk.dcm"
JPEG_LS_MULTIFRAME = DEV_DATA / "dicom" / "mr" / "pydicom-data__emri_small_jpeg_ls_lossless.dcm"
# Native samples whose bytes are not little endian as stored: served little endian.
NATIVE_EDGE = [
    "pydicom-data__emri_small_big_endian.dcm",
    "pydicom__MR_small_bigendian.dcm",
    "pydicom__SC_rgb_small_odd_big_endian.dcm",
    "pydicom__liver_expb_1frame.dcm",
    "pydicom__rtdose_expb.dcm",
    "pydicom__image_dfl.dcm",  # Deflated Explicit VR Little Endian
]
EXPLICIT_LE = "1.2.840.10008.1.2.1"
OHIF = "multipart/related; type=application/octet-stream; transfer-syntax=*"
NATIVE_PART = f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
AS_STORED = (("application/octet-stream", "*"),)
# dicomweb-client's own table of image media types (it refuses others, like image/jphc).
CLIENT_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@pytest.fixture
def web(hub_factory: Callable[..., Hub]) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False)) as web:
        yield web


def sample_paths() -> list[Path]:
    """Every encapsulated sample with pixel data under dicom/, and the odd native encodings."""
    picked = []
    for path in dev_files("dicom"):
        if "dicomdir" in path.parts:
            continue
        ds = dcmread(path, force=True)
        syntax = UID(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_LE))
        if "PixelData" in ds and syntax.is_encapsulated:
            picked.append(path)
    edge = DEV_DATA / "dicom_edge"
    return picked + [edge / name for name in NATIVE_EDGE]


def ingest(web: Web, path: Path, **attributes: object) -> tuple[str, str, str]:
    """A fresh copy of a sample in CLINIC_A; returns its (study, series, SOP) UIDs."""
    try:
        data = fresh_copy(path, **attributes)
    except TypeError:  # a sample pydicom reads but cannot write (implicit body, explicit meta)
        data = path.read_bytes()
    web.add(path.name, "CLINIC_A", data)
    return web.study[path.name], web.series[path.name], web.sops[path.name][-1]


def url(study: str, series: str, sop: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{sop}"


def items(pixel_data: bytes) -> list[tuple[int, bytes]]:
    """(position, value) of each item of encapsulated pixel data; the first is the BOT."""
    found, pos = [], 0
    while pos + 8 <= len(pixel_data):
        group, element, length = struct.unpack_from("<HHI", pixel_data, pos)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        assert (group, element) == (0xFFFE, 0xE000)
        found.append((pos, pixel_data[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    return found


def stored_frames(ds: Dataset) -> list[bytes]:
    """Each frame's fragments joined, read straight from the items (PS3.5 §A.4)."""
    (_, bot), *fragments = items(ds.PixelData)
    count = int(ds.get("NumberOfFrames") or 1)
    if count == 1:
        return [b"".join(value for _, value in fragments)]
    if bot:
        first = fragments[0][0]
        starts = [*struct.unpack(f"<{len(bot) // 4}I", bot), 1 << 62]
        return [
            b"".join(v for p, v in fragments if starts[i] <= p - first < starts[i + 1])
            for i in range(count)
        ]
    assert len(fragments) == count
    return [value for _, value in fragments]


def as_array(part: bytes, expected: np.ndarray, bits_allocated: int) -> np.ndarray:
    """An uncompressed little endian frame read back like the expected array."""
    if bits_allocated == 1:
        bits = np.asarray(unpack_bits(part, as_array=True))
        return bits[: expected.size].reshape(expected.shape)
    dtype = expected.dtype.newbyteorder("<")
    return np.frombuffer(part, dtype=dtype).reshape(expected.shape)


# One sample (SC_rgb_jpeg) has an explicit VR meta and an implicit VR body: pydicom says so.
@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_every_sample_as_stored_and_decoded(web: Web) -> None:
    client = web.client("spec")
    failures: list[str] = []
    for path in sample_paths():
        study, series, sop = ingest(web, path)
        data = web.sent[sop]
        ds = dcmread(io.BytesIO(data))
        syntax = str(ds.file_meta.TransferSyntaxUID)
        count = int(ds.get("NumberOfFrames") or 1)
        numbers = list(range(1, count + 1))
        expected = [pixel_array(ds, index=n - 1) for n in numbers]
        bits = int(ds.BitsAllocated)

        stored = client.retrieve_instance_frames(study, series, sop, numbers, AS_STORED)
        if UID(syntax).is_encapsulated:
            if stored != stored_frames(ds):
                failures.append(f"{path.name}: frames as stored differ from the fragments")
            media = CLIENT_MEDIA.get(syntax)
            if media is not None:
                typed = client.retrieve_instance_frames(
                    study, series, sop, [count], ((media, syntax),)
                )
                if typed != stored[-1:]:
                    failures.append(f"{path.name}: {media} frame differs from the stored one")
        else:  # native: as stored means little endian, like the decoded frames
            decoded = [as_array(p, e, bits) for p, e in zip(stored, expected, strict=True)]
            if not all(np.array_equal(d, e) for d, e in zip(decoded, expected, strict=True)):
                failures.append(f"{path.name}: native frames differ from pydicom's")

        uncompressed = client.retrieve_instance_frames(study, series, sop, numbers)
        decoded = [as_array(p, e, bits) for p, e in zip(uncompressed, expected, strict=True)]
        if not all(np.array_equal(d, e) for d, e in zip(decoded, expected, strict=True)):
            failures.append(f"{path.name}: decoded frames differ from pydicom's decode")
    assert not failures, "\n".join(failures)


def test_ohif_frame_request(web: Web) -> None:
    """Exactly what OHIF sends, unquoted and quoted, on native and JPEG instances."""
    jpeg = ingest(web, JPEG_BASELINE)
    ct = (web.study["A"], web.series["A"], web.sops["A"][0])
    quoted = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
    with web.http("spec") as http:
        for accept in (OHIF, quoted):
            response = http.get(url(*jpeg) + "/frames/1", headers={"accept": accept})
            assert response.status_code == 200, response.text
            assert 'type="application/octet-stream"' in response.headers["content-type"]
            [(headers, body)] = related_parts(response)
            assert headers["Content-Type"] == (
                "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
            )
            assert body == stored_frames(dcmread(io.BytesIO(web.sent[jpeg[2]])))[0]
            response = http.get(url(*ct) + "/frames/1", headers={"accept": accept})
            [(headers, body)] = related_parts(response)
            assert headers["Content-Type"] == NATIVE_PART
            assert body == dcmread(io.BytesIO(web.sent[ct[2]])).PixelData


def test_multiframe_us_frame_2(web: Web) -> None:
    us = (web.study["US"], web.series["US"], web.sops["US"][0])
    data = web.sent[us[2]]
    ds = dcmread(io.BytesIO(data))
    with web.http("spec") as http:
        response = http.get(url(*us) + "/frames/2", headers={"accept": OHIF})
        [(headers, body)] = related_parts(response)
        assert headers["Content-Type"].endswith("transfer-syntax=1.2.840.10008.1.2.5")
        assert body == stored_frames(ds)[1]
        # A list comes back in the order asked, decoded by default.
        response = http.get(url(*us) + "/frames/2,1")
        assert response.status_code == 200
        parts = [body for _, body in related_parts(response)]
    expected = [pixel_array(io.BytesIO(data), index=i) for i in (1, 0)]
    assert [as_array(p, e, 8).tolist() for p, e in zip(parts, expected, strict=True)] == [
        e.tolist() for e in expected
    ]
    assert not np.array_equal(expected[0], expected[1])


def test_image_media_types(web: Web) -> None:
    jpeg = ingest(web, JPEG_BASELINE)
    jls = ingest(web, JPEG_LS_MULTIFRAME)
    with web.http("spec") as http:
        response = http.get(
            url(*jpeg) + "/frames/1", headers={"accept": 'multipart/related; type="image/jpeg"'}
        )
        [(headers, _)] = related_parts(response)
        assert headers["Content-Type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
        alias = 'multipart/related; type="image/x-jls"; transfer-syntax=1.2.840.10008.1.2.4.80'
        response = http.get(url(*jls) + "/frames/3", headers={"accept": alias})
        [(headers, _)] = related_parts(response)
        assert headers["Content-Type"] == "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"
        # The first acceptable range wins; q-values order them.
        accept = 'multipart/related; type="image/jp2";q=0.9, multipart/related; type="image/jls"'
        response = http.get(url(*jls) + "/frames/1", headers={"accept": accept})
        assert related_parts(response)[0][0]["Content-Type"].startswith("image/jls")
        refused = http.get(
            url(*jpeg) + "/frames/1", headers={"accept": 'multipart/related; type="image/jp2"'}
        )
        assert refused.status_code == 406
        assert "JPEG Baseline" in refused.json()["detail"]
        assert "transfer-syntax=1.2.840.10008.1.2.4.50" in refused.json()["detail"]


def test_single_part_frames(web: Web) -> None:
    ct = (web.study["A"], web.series["A"], web.sops["A"][0])
    us = (web.study["US"], web.series["US"], web.sops["US"][0])
    with web.http("spec") as http:
        response = http.get(url(*ct) + "/frames/1", headers={"accept": "application/octet-stream"})
        assert response.status_code == 200
        assert response.headers["content-type"] == NATIVE_PART
        assert response.content == dcmread(io.BytesIO(web.sent[ct[2]])).PixelData
        two = http.get(url(*us) + "/frames/1,2", headers={"accept": "application/octet-stream"})
        assert two.status_code == 406


def test_frame_errors(web: Web) -> None:
    ct = url(web.study["A"], web.series["A"], web.sops["A"][0])
    ecg = url(*ingest(web, ECG))
    with web.http("spec") as http:
        missing = http.get(ct + "/frames/2")
        assert missing.status_code == 404
        assert missing.json()["detail"] == "no frame 2: the instance has 1 frame(s)"
        for bad in ("0", "a", "1,,2", "-1", "1;2", "1.5"):
            response = http.get(f"{ct}/frames/{bad}")
            assert response.status_code == 400, bad
            assert response.json()["error"] == "BadDicomwebRequest"
        assert http.get(ct + "/frames/1,1").status_code == 400  # more frames than it has
        not_image = http.get(ecg + "/frames/1")
        assert not_image.status_code == 406
        assert "12-lead ECG" in not_image.json()["detail"]
        for accept in (
            'multipart/related; type="application/octet-stream"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50",  # we do not compress
            'multipart/related; type="application/dicom"',
            "image/jpeg",
        ):
            refused = http.get(ct + "/frames/1", headers={"accept": accept})
            assert refused.status_code == 406, accept
            assert "transfer-syntax=1.2.840.10008.1.2.1" in refused.json()["detail"]


def test_offset_tables_and_fragments(web: Web) -> None:
    """Frames found by Basic and Extended Offset Tables, and by end markers without either."""
    source = dcmread(JPEG_LS_MULTIFRAME)
    frames = stored_frames(source)
    halves = [piece for f in frames for piece in (f[: len(f) // 2], f[len(f) // 2 :])]
    extended, offsets, lengths = encapsulate_extended(frames)
    variants = {
        "basic": (encapsulate(frames, has_bot=True), None),
        "extended": (extended, (offsets, lengths)),
        "two fragments each": (encapsulate(halves, fragments_per_frame=1, has_bot=False), None),
    }
    client = web.client("spec")
    for name, (value, table) in variants.items():
        ds = dcmread(JPEG_LS_MULTIFRAME)
        ds.PixelData = value
        if table is not None:
            ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = table
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        web.add(name, "CLINIC_A", out.getvalue())
        target = (web.study[name], web.series[name], web.sops[name][0])
        if name == "two fragments each":  # 20 fragments for 10 frames: JPEG-LS end markers
            got = client.retrieve_instance_frames(*target, [1, 7, 10], AS_STORED)
            assert got == [frames[0], frames[6], frames[9]], name
            continue
        assert client.retrieve_instance_frames(*target, [10, 4], AS_STORED) == [
            frames[9],
            frames[3],
        ], name
        [decoded] = client.retrieve_instance_frames(*target, [4])
        expected = pixel_array(JPEG_LS_MULTIFRAME, index=3)
        assert np.array_equal(as_array(decoded, expected, 16), expected), name


# --- bulk data --------------------------------------------------------------------------------


def test_bulk_pixel_data_single_part_and_multipart(web: Web) -> None:
    ct = url(web.study["A"], web.series["A"], web.sops["A"][0])
    us = url(web.study["US"], web.series["US"], web.sops["US"][0])
    pixels = dcmread(io.BytesIO(web.sent[web.sops["A"][0]])).PixelData
    us_data = web.sent[web.sops["US"][0]]
    with web.http("spec") as http:
        single = http.get(ct + "/bulk/7FE00010", headers={"accept": "application/octet-stream"})
        assert single.headers["content-type"].startswith("application/octet-stream")
        assert single.content == pixels
        [(headers, body)] = related_parts(http.get(ct + "/bulk/7FE00010"))
        assert headers["Content-Type"] == NATIVE_PART
        assert body == pixels
        # Compressed: one part per frame as stored, or one part holding every decoded frame.
        stored = related_parts(http.get(us + "/bulk/7FE00010", headers={"accept": OHIF}))
        assert [body for _, body in stored] == stored_frames(dcmread(io.BytesIO(us_data)))
        [(_, decoded)] = related_parts(http.get(us + "/bulk/7FE00010"))
    assert decoded == pixel_array(io.BytesIO(us_data)).tobytes()
    # dicomweb-client follows a BulkDataURI the same way
    [body] = web.client("spec").retrieve_bulkdata(f"{web.base}/dicomweb{ct}/bulk/7FE00010")
    assert body == pixels


def bulk_uris(meta: dict[str, object]) -> Iterator[str]:
    for element in meta.values():
        assert isinstance(element, dict)
        if "BulkDataURI" in element:
            yield element["BulkDataURI"]
        if element.get("vr") == "SQ":
            for item in element.get("Value", []):
                yield from bulk_uris(item)


def test_ecg_waveform_bulk_data(web: Web) -> None:
    study, series, sop = ingest(web, ECG)
    waveforms = [bytes(item.WaveformData) for item in dcmread(ECG).WaveformSequence]
    with web.http("spec") as http:
        [meta] = http.get(f"/studies/{study}/series/{series}/metadata").json()
        first = meta["54000100"]["Value"][0]["54001010"]["BulkDataURI"]
        # OHIF's ECG viewer asks for exactly application/octet-stream and reads the body raw.
        response = http.get(first, headers={"accept": "application/octet-stream"})
        assert response.status_code == 200
        assert response.content == waveforms[0]
        for number, waveform in enumerate(waveforms):
            path = f"{url(study, series, sop)}/bulk/54000100/{number}/54001010"
            assert http.get(path, headers={"accept": "application/octet-stream"}).content == (
                waveform
            )
            [(headers, body)] = related_parts(http.get(path))
            assert body == waveform
            assert headers["Content-Type"].startswith("application/octet-stream")


def test_metadata_uris_named_by_path_resolve(web: Web) -> None:
    """Metadata made with bulk_data_uri_handler names each nested value apart, and the bulk
    route finds exactly that value: the waveforms of an ECG, an icon beside the image."""
    with web.http("spec") as http:
        for path in (ECG, ICON):
            study, series, sop = ingest(web, path)
            ds = dcmread(io.BytesIO(web.sent[sop]))
            base = f"{web.base}/dicomweb{url(study, series, sop)}"
            meta = ds.to_json_dict(
                bulk_data_threshold=1024,
                bulk_data_element_handler=bulk_data_uri_handler(ds, base),
            )
            uris = list(bulk_uris(meta))
            assert len(uris) == len(set(uris)) >= 2
            for uri in uris:
                tags = uri.split("/bulk/")[1].split("/")
                element = ds
                for depth in range(0, len(tags) - 1, 2):
                    element = element[int(tags[depth], 16)].value[int(tags[depth + 1])]
                expected = element[int(tags[-1], 16)].value
                got = http.get(uri, headers={"accept": "application/octet-stream"})
                assert got.content == expected, uri


def test_bulk_data_errors(web: Web) -> None:
    ecg = url(*ingest(web, ECG))
    with web.http("spec") as http:
        assert http.get(ecg + "/bulk/7FE00010").status_code == 404
        assert http.get(ecg + "/bulk/54000100/9/54001010").status_code == 404
        assert http.get(ecg + "/bulk/00100010").status_code == 404  # a name is not bulk data
        for bad in ("7FE0001", "zzzzzzzz", "54000100/x/54001010", "54000100/0"):
            response = http.get(f"{ecg}/bulk/{bad}")
            assert response.status_code == 400, bad
        refused = http.get(ecg + "/bulk/54000100/0/54001010", headers={"accept": "image/jpeg"})
        assert refused.status_code == 406
        assert "application/octet-stream" in refused.json()["detail"]


def test_other_institution_gets_404_and_an_audit_row(web: Web) -> None:
    ct = url(web.study["A"], web.series["A"], web.sops["A"][0])
    with web.http("tech_b") as http:
        for path in (ct + "/frames/1", ct + "/bulk/7FE00010"):
            response = http.get(path, headers={"accept": OHIF})
            assert response.status_code == 404, path
            assert "Pixel" not in response.text
    with web.http("tech_a") as http:
        assert http.get(ct + "/frames/1").status_code == 200
    with transaction(web.hub.factory) as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.outcome, AuditEvent.object_id)
            .where(AuditEvent.action == "dicomweb.wado")
            .order_by(AuditEvent.id)
        ).all()
    sop = web.sops["A"][0]
    assert [(a, str(o), i) for a, o, i in rows] == [
        ("tech_b", "denied", sop),
        ("tech_b", "denied", sop),
        ("tech_a", "success", sop),
    ]


def test_frames_of_the_ct_copy_are_the_sample(web: Web) -> None:
    """The CT sample copied by the fixture still has the sample's pixels: a sanity anchor."""
    sop = web.sops["A"][0]
    [frame] = web.client("spec").retrieve_instance_frames(
        web.study["A"], web.series["A"], sop, [1], AS_STORED
    )
    assert frame == dcmread(CT).PixelData


def test_deflated_image_frames(web: Web) -> None:
    """Deflated Image Frame Compression (newer than pydicom): stored as is, inflated here."""
    path = DEV_DATA / "dicom_edge" / "pydicom-data__liver_deflate.dcm"
    data = path.read_bytes()  # pydicom cannot write this syntax; its UIDs are its own
    web.add("deflate", "CLINIC_A", data)
    target = (web.study["deflate"], web.series["deflate"], web.sops["deflate"][0])
    client = web.client("spec")
    fragments = stored_frames(dcmread(io.BytesIO(data)))
    assert client.retrieve_instance_frames(*target, [1, 2, 3], AS_STORED) == fragments
    inflated = client.retrieve_instance_frames(*target, [1, 2, 3])
    assert inflated == [zlib.decompress(f, -zlib.MAX_WBITS) for f in fragments]
    # Its first frame is the liver_1frame sample's segment: an anchor outside this code.
    one = DEV_DATA / "dicom" / "seg_rt_pr_other" / "pydicom__liver_1frame.dcm"
    assert inflated[0] == dcmread(one).PixelData
