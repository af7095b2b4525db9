"""WADO-RS rendered images and thumbnails: what a person sees, from a real hub over HTTP."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from telehealth.auth.models import AuditEvent
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.conftest import DEV_DATA
from tests.dicomweb import CT, Web, fresh_copy, open_web

ECG = DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm"
SR = DEV_DATA / "dicom" / "sr" / "pydicom__test-SR.dcm"
RGB = DEV_DATA / "dicom" / "us" / "pydicom__examples_rgb_color.dcm"
YBR_JPEG = DEV_DATA / "dicom" / "us" / "pydicom__examples_ybr_color.dcm"  # 30 frames
YBR_422 = DEV_DATA / "dicom" / "sc_ot_other" / "pydicom__SC_ybr_full_422_uncompressed.dcm"
PALETTE = DEV_DATA / "dicom" / "us" / "pydicom__examples_palette.dcm"  # 800 × 350
MONOCHROME1 = DEV_DATA / "dicom" / "xray" / "pydicom-data__RG3_J2KI.dcm"
ENHANCED_CT = DEV_DATA / "dicom" / "ct" / "pydicom-data__eCT_Supplemental.dcm"
PNG = {"accept": "image/png"}


@pytest.fixture
def web(hub_factory: Callable[..., Hub]) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False)) as web:
        yield web


def ingest(web: Web, label: str, data: bytes) -> str:
    """Ingest into CLINIC_A; returns the instance's path under /dicomweb."""
    web.add(label, "CLINIC_A", data)
    study, series, sop = web.study[label], web.series[label], web.sops[label][-1]
    return f"/studies/{study}/series/{series}/instances/{sop}"


def sample(web: Web, path: Path, **attributes: object) -> str:
    return ingest(web, path.name, fresh_copy(path, **attributes))


def image(response: object) -> Image.Image:
    body = response.content  # type: ignore[attr-defined]
    return Image.open(io.BytesIO(body))


def pixels(response: object) -> np.ndarray:
    return np.asarray(image(response))


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 §C.11.2.1.2.1 linear VOI, written out independently of the hub's code."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    out = np.where(values <= low, 0, np.where(values > high, 255, out))
    return np.rint(out).astype(np.uint8)


PDF_DOCUMENT = b"%PDF-1.4\n%report\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def pdf_instance() -> bytes:
    """A small Encapsulated PDF; no such sample ships with the dev data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "A002", "DOC"
    assert len(PDF_DOCUMENT) % 2  # odd: the stored value carries a pad byte to drop
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = PDF_DOCUMENT + b"\0"
    ds.EncapsulatedDocumentLength = len(PDF_DOCUMENT)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_rendered_jpeg_and_png_sizes(web: Web) -> None:
    ct = f"/studies/{web.study['A']}/series/{web.series['A']}/instances/{web.sops['A'][0]}"
    palette = sample(web, PALETTE)
    with web.http("spec") as http:
        jpeg = http.get(ct + "/rendered")
        assert jpeg.headers["content-type"] == "image/jpeg"
        assert image(jpeg).format == "JPEG"
        assert image(jpeg).size == (128, 128)
        png = http.get(ct + "/rendered", headers=PNG)
        assert png.headers["content-type"] == "image/png"
        assert image(png).mode == "L"
        assert image(http.get(ct + "/rendered?viewport=64,64")).size == (64, 64)
        assert image(http.get(palette + "/rendered?viewport=400,400")).size == (400, 175)
        assert image(http.get(palette + "/rendered?viewport=,150")).size == (343, 150)
        assert image(http.get(palette + "/rendered?viewport=1600,")).size == (1600, 700)
        small = http.get(ct + "/rendered?quality=5")
        assert len(small.content) < len(jpeg.content)
        gif = http.get(ct + "/rendered", headers={"accept": "image/gif, image/png;q=0.5"})
        assert image(gif).format == "GIF"


def test_stored_window_and_override(web: Web) -> None:
    """The instance's first Window Center/Width after rescale; window= overrides it."""
    ct = sample(web, CT, WindowCenter=[40, 300], WindowWidth=[400, 1500])
    ds = dcmread(CT)
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    with web.http("spec") as http:
        stored = pixels(http.get(ct + "/rendered", headers=PNG))
        override = pixels(http.get(ct + "/rendered?window=300,1500,linear", headers=PNG))
        exact = http.get(ct + "/rendered?window=300,1500,linear-exact", headers=PNG)
        sigmoid = http.get(ct + "/rendered?window=300,1500,sigmoid", headers=PNG)
    assert np.array_equal(stored, window(hounsfield, 40, 400))
    assert np.array_equal(override, window(hounsfield, 300, 1500))
    assert np.abs(stored.astype(int) - override.astype(int)).mean() > 20  # visibly different
    assert exact.status_code == sigmoid.status_code == 200
    assert not np.array_equal(pixels(sigmoid), override)


def test_frame_range_without_window_and_monochrome1_inverted(web: Web) -> None:
    ct = f"/studies/{web.study['A']}/series/{web.series['A']}/instances/{web.sops['A'][0]}"
    inverted = sample(web, MONOCHROME1)
    with web.http("spec") as http:
        grey = pixels(http.get(ct + "/rendered", headers=PNG))
        mono1 = pixels(http.get(inverted + "/rendered", headers=PNG))
    values = dcmread(CT).pixel_array.astype(np.float64)
    expected = np.rint((values - values.min()) * 255 / (values.max() - values.min()))
    assert np.array_equal(grey, expected.astype(np.uint8))
    # Its own window (550/1024), then inverted: high values dark, as MONOCHROME1 means.
    raw = pixel_array(MONOCHROME1).astype(np.float64)
    assert np.array_equal(mono1, 255 - window(raw, 550, 1024))


def test_colour_images(web: Web) -> None:
    rgb = sample(web, RGB)
    ybr = sample(web, YBR_JPEG)
    palette = sample(web, PALETTE)
    native_ybr = sample(web, YBR_422)
    with web.http("spec") as http:
        assert np.array_equal(pixels(http.get(rgb + "/rendered", headers=PNG)), pixel_array(RGB))
        ybr_422 = pixels(http.get(native_ybr + "/rendered", headers=PNG))
        first = pixels(http.get(ybr + "/rendered", headers=PNG))
        frame_5 = pixels(http.get(ybr + "/frames/5/rendered", headers=PNG))
        coloured = pixels(http.get(palette + "/rendered", headers=PNG))
    # JPEG's YCbCr converted to RGB exactly as pydicom does it
    assert np.array_equal(first, pixel_array(YBR_JPEG, index=0))
    assert np.array_equal(frame_5, pixel_array(YBR_JPEG, index=4))
    assert np.array_equal(ybr_422, pixel_array(YBR_422))  # native YBR_FULL_422 too
    lut = apply_color_lut(pixel_array(PALETTE), dcmread(PALETTE))
    assert np.array_equal(coloured, (lut >> 8).astype(np.uint8))
    assert coloured.shape == (350, 800, 3)


def test_frames_of_a_multiframe(web: Web) -> None:
    us = f"/studies/{web.study['US']}/series/{web.series['US']}/instances/{web.sops['US'][0]}"
    enhanced = sample(web, ENHANCED_CT)
    with web.http("spec") as http:
        whole = pixels(http.get(us + "/rendered", headers=PNG))
        first = pixels(http.get(us + "/frames/1/rendered", headers=PNG))
        second = pixels(http.get(us + "/frames/2/rendered", headers=PNG))
        assert np.array_equal(whole, first)
        assert not np.array_equal(first, second)
        missing = http.get(us + "/frames/3/rendered")
        assert missing.status_code == 404
        assert "2 frame(s)" in missing.json()["detail"]
        assert http.get(us + "/frames/1,2/rendered").status_code == 400
        assert http.get(us + "/frames/x/thumbnail").status_code == 400
        # Enhanced CT: rescale from the functional groups, so values are Hounsfield units
        assert http.get(enhanced + "/frames/2/rendered").status_code == 200


def test_non_images_are_406_not_500(web: Web) -> None:
    ecg = sample(web, ECG)
    sr = sample(web, SR)
    pdf = ingest(web, "PDF", pdf_instance())
    ct = f"/studies/{web.study['A']}/series/{web.series['A']}/instances/{web.sops['A'][0]}"
    with web.http("spec") as http:
        for path, what in ((ecg, "12-lead ECG"), (sr, "Comprehensive SR")):
            for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
                response = http.get(path + suffix)
                assert response.status_code == 406, (path, suffix)
                assert what in response.json()["detail"]
        refused = http.get(pdf + "/rendered", headers={"accept": "image/jpeg"})
        assert refused.status_code == 406
        assert "application/pdf" in refused.json()["detail"]
        document = http.get(pdf + "/rendered")
        assert document.headers["content-type"] == "application/pdf"
        assert document.content == PDF_DOCUMENT
        html = http.get(ct + "/rendered", headers={"accept": "text/html"})
        assert html.status_code == 406
        assert "image/jpeg" in html.json()["detail"]


@pytest.mark.parametrize(
    "query",
    [
        "window=abc,400,linear",
        "window=40,0,linear",
        "window=40,400,cubic",
        "window=40",
        "viewport=0,0",
        "viewport=,",
        "viewport=10,10,0,0,5,5",
        "viewport=99999,10",
        "quality=0",
        "quality=101",
        "quality=high",
    ],
)
def test_bad_parameters_are_400(web: Web, query: str) -> None:
    ct = f"/studies/{web.study['A']}/series/{web.series['A']}/instances/{web.sops['A'][0]}"
    with web.http("spec") as http:
        response = http.get(f"{ct}/rendered?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "BadDicomwebRequest"


def test_thumbnails(web: Web) -> None:
    a, series = web.study["A"], web.series["A"]
    ct = f"/studies/{a}/series/{series}/instances/{web.sops['A'][0]}"
    palette = sample(web, PALETTE)
    ecg = sample(web, ECG)
    ecg_series = ecg.split("/instances/")[0]
    with web.http("spec") as http:
        assert image(http.get(ct + "/thumbnail")).size == (128, 128)
        assert image(http.get(palette + "/thumbnail")).size == (128, 56)
        assert image(http.get(palette + "/thumbnail?viewport=64,64")).size == (64, 28)
        # A thumbnail ignores window: the same image either way
        assert (
            http.get(ct + "/thumbnail?window=1,2,linear", headers=PNG).content
            == http.get(ct + "/thumbnail", headers=PNG).content
        )
        middle = http.get(f"/studies/{a}/series/{series}/thumbnail", headers=PNG)
        assert image(middle).size == (128, 128)
        study = http.get(f"/studies/{web.study['US']}/thumbnail")
        assert study.headers["content-type"] == "image/jpeg"
        assert http.get(ecg_series + "/thumbnail").status_code == 406
        assert http.get(f"/studies/{a}/series/1.2.3/thumbnail").status_code == 404


def test_other_institution_gets_404_and_an_audit_row(web: Web) -> None:
    a, series, sop = web.study["A"], web.series["A"], web.sops["A"][0]
    instance = f"/studies/{a}/series/{series}/instances/{sop}"
    with web.http("tech_b") as http:
        for path in (
            instance + "/rendered",
            instance + "/frames/1/rendered",
            instance + "/thumbnail",
            f"/studies/{a}/series/{series}/thumbnail",
            f"/studies/{a}/thumbnail",
        ):
            assert http.get(path).status_code == 404, path
    with transaction(web.hub.factory) as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.outcome, AuditEvent.object_id)
            .where(AuditEvent.action == "dicomweb.wado")
            .order_by(AuditEvent.id)
        ).all()
    assert [(actor, str(outcome)) for actor, outcome, _ in rows] == [("tech_b", "denied")] * 5
    assert [object_id for _, _, object_id in rows] == [sop, sop, sop, series, a]
