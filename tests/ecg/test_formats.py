"""ECG readers and the DICOM writer: every sample file, every sample interpretation, bad
input named for what is wrong, and conversions that keep the source's samples."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from telehealth.ecg.service import (
    EcgChecksumMismatch,
    EcgFormat,
    EcgUnreadable,
    NoWaveform,
    TruncatedEcg,
    UnknownLead,
    UnsupportedEcgFormat,
    detect_format,
    measure_record,
    read_dicom_ecg,
    read_ecg,
    rhythm_of,
    uid_from,
    write_dicom_ecg,
)
from telehealth.ecg.service.dicom_writer import AMBULATORY_ECG, TWELVE_LEAD
from telehealth.ecg.service.scp import crc_ccitt
from tests.conftest import DEV_DATA
from tests.ecg import builders
from tests.ecg.synthetic import synthetic_ecg

SCP_EXAMPLE = DEV_DATA / "ecg_scp" / "ecg-contec__Example.scp"
AECG_FILES = sorted((DEV_DATA / "ecg_hl7_aecg").glob("*.xml"))
DICOM_ECG = DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm"


def _ints(scale: float = 2.5, **kw: object) -> dict[str, np.ndarray]:
    leads, _ = synthetic_ecg(**kw)  # type: ignore[arg-type]
    return {k: np.rint(v / scale).astype(np.int64) for k, v in leads.items()}


# --- the sample files -------------------------------------------------------------------------


def test_every_sample_ecg_is_read_and_measured() -> None:
    files = [DICOM_ECG, SCP_EXAMPLE, *AECG_FILES]
    assert all(f.exists() for f in files), files
    for path in files:
        _kind, record = read_ecg(path.read_bytes())
        assert record.num_samples > 0 and record.leads, path
        m = measure_record(record)
        # Measured, or each missing value with its reason: never silently absent.
        for name in ("heart_rate_bpm", "qrs_ms", "qt_ms"):
            assert getattr(m, name) is not None or m.not_computable.get(name), (path, name)


def test_pydicom_waveform_sample_rhythm_group() -> None:
    records = read_dicom_ecg(DICOM_ECG.read_bytes())
    assert [r.label for r in records] == ["RHYTHM", "MEDIAN BEAT"]
    rhythm = rhythm_of(records)
    assert rhythm.sampling_frequency == 1000.0 and rhythm.num_samples == 10000
    assert rhythm.names[:3] == ["I", "II", "III"]
    ds = dcmread(DICOM_ECG)
    raw = ds.waveform_array(0)  # pydicom's own calibrated reading
    np.testing.assert_allclose(rhythm.lead("II").microvolts(), raw[:, 1])
    m = measure_record(rhythm)
    assert m.heart_rate_bpm is not None and 40 < m.heart_rate_bpm < 120


def test_scp_example_decodes_consistently() -> None:
    """Huffman default table, second differences: III = II − I holds sample by sample."""
    kind, record = read_ecg(SCP_EXAMPLE.read_bytes())
    assert kind == EcgFormat.SCP_ECG
    assert record.sampling_frequency == 500.0 and record.num_samples == 5000
    assert set(record.names) == {
        "I",
        "II",
        "III",
        "aVR",
        "aVL",
        "aVF",
        "V1",
        "V2",
        "V3",
        "V4",
        "V5",
        "V6",
    }
    i, ii, iii = (record.lead(n).samples for n in ("I", "II", "III"))
    assert np.array_equal(iii, ii - i)
    assert record.patient.patient_id == "SBJ-123"
    assert record.acquisition.when == "20021122091000"


def test_scp_crc_is_ccitt() -> None:
    data = SCP_EXAMPLE.read_bytes()
    assert crc_ccitt(data[2:]) == struct.unpack_from("<H", data)[0]
    assert crc_ccitt(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value


# --- DICOM waveform reading -------------------------------------------------------------------


def _waveform_ds(groups: list[Dataset], *, big_endian: bool = False) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = TWELVE_LEAD
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = TWELVE_LEAD
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "ECG"
    ds.PatientID = "W1"
    ds.WaveformSequence = Sequence(groups)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, little_endian=not big_endian, implicit_vr=False)
    return out.getvalue()


def _channel(
    code: tuple[str, str, str] | None = None,
    label: str = "",
    *,
    sensitivity: float = 1.0,
    correction: float = 1.0,
    baseline: float = 0.0,
    unit: str = "uV",
) -> Dataset:
    ch = Dataset()
    if code is not None:
        src = Dataset()
        src.CodeValue, src.CodingSchemeDesignator, src.CodeMeaning = code
        ch.ChannelSourceSequence = Sequence([src])
    if label:
        ch.ChannelLabel = label
    ch.ChannelSensitivity = sensitivity
    ch.ChannelSensitivityCorrectionFactor = correction
    ch.ChannelBaseline = baseline
    u = Dataset()
    u.CodeValue, u.CodingSchemeDesignator, u.CodeMeaning = unit, "UCUM", unit
    ch.ChannelSensitivityUnitsSequence = Sequence([u])
    return ch


def _group(
    data: bytes,
    bits: int,
    interpretation: str,
    channels: list[Dataset],
    samples: int,
    fs: float = 500.0,
    label: str = "RHYTHM",
) -> Dataset:
    g = Dataset()
    g.MultiplexGroupLabel = label
    g.NumberOfWaveformChannels = len(channels)
    g.NumberOfWaveformSamples = samples
    g.SamplingFrequency = fs
    g.WaveformBitsAllocated = bits
    g.WaveformSampleInterpretation = interpretation
    g.ChannelDefinitionSequence = Sequence(channels)
    g.WaveformData = data
    return g


@pytest.mark.parametrize(
    ("bits", "interpretation", "dtype", "raw", "expected"),
    [
        (8, "SB", "i1", [-128, -1, 0, 127], [-128, -1, 0, 127]),
        (8, "UB", "u1", [0, 128, 255, 7], [0, 128, 255, 7]),
        # G.711 µ-law: 0xFF = 0, 0x80 = +32124, 0x00 = −32124, 0xFE = +8 (16-bit PCM scale).
        (8, "MB", "u1", [0xFF, 0x80, 0x00, 0xFE], [0, 32124, -32124, 8]),
        # G.711 A-law: 0xD5 = +8, 0x55 = −8, 0xAA = +32256, 0x2A = −32256.
        (8, "AB", "u1", [0xD5, 0x55, 0xAA, 0x2A], [8, -8, 32256, -32256]),
        (16, "SS", "<i2", [-32768, -5, 0, 32767], [-32768, -5, 0, 32767]),
        (16, "US", "<u2", [0, 1, 40000, 65535], [0, 1, 40000, 65535]),
        (32, "SL", "<i4", [-100000, 0, 5, 2**31 - 1], [-100000, 0, 5, 2**31 - 1]),
        (32, "UL", "<u4", [0, 3, 100000, 2**32 - 1], [0, 3, 100000, 2**32 - 1]),
        (32, "FL", "<f4", [-1.5, 0.25, 3.0, 100.0], [-1.5, 0.25, 3.0, 100.0]),
        (64, "SV", "<i8", [-(2**40), 0, 7, 2**40], [-(2**40), 0, 7, 2**40]),
        (64, "UV", "<u8", [0, 9, 2**40, 2**41], [0, 9, 2**40, 2**41]),
        (64, "FD", "<f8", [-2.5, 0.5, 1e6, 3.25], [-2.5, 0.5, 1e6, 3.25]),
    ],
)
def test_every_sample_interpretation(
    bits: int, interpretation: str, dtype: str, raw: list[float], expected: list[float]
) -> None:
    data = np.asarray(raw, dtype=dtype).tobytes()
    ch = _channel(
        ("5.6.3-9-2", "SCPECG", "Lead II"), sensitivity=2.0, correction=1.5, baseline=10.0
    )
    record = rhythm_of(read_dicom_ecg(_waveform_ds([_group(data, bits, interpretation, [ch], 4)])))
    # PS3.3 C.10.9.1.4.3: value × sensitivity × correction factor + baseline.
    np.testing.assert_allclose(
        record.lead("II").microvolts(), np.asarray(expected, float) * 3.0 + 10.0
    )


def test_multiplex_groups_units_codes_and_padding() -> None:
    n = 6
    ecg = np.array(
        [[1, 2, 3], [4, 5, 6], [7, 8, 9], [-1, -2, -3], [0, 0, 0], [-32768, 10, 11]], "<i2"
    )
    channels = [
        _channel(("2:1", "MDC", "Lead I")),
        _channel(
            ("131330", "MDC", "MDC_ECG_ELEC_POTL_II"), unit="mV", sensitivity=0.001
        ),  # lead II
        _channel(label="Lead aVF", sensitivity=2.5),
    ]
    g1 = _group(ecg.tobytes(), 16, "SS", channels, n)
    g1.WaveformPaddingValue = struct.pack("<h", -32768)
    pressure = _group(
        np.arange(6, dtype="<i2").tobytes(), 16, "SS", [_channel(label="ART", unit="mm[Hg]")], n
    )
    median = _group(
        np.zeros((3, 1), "<i2").tobytes(),
        16,
        "SS",
        [_channel(("5.6.3-9-1", "SCPECG", "Lead I"))],
        3,
        label="MEDIAN BEAT",
    )
    records = read_dicom_ecg(_waveform_ds([g1, pressure, median]))
    assert [r.label for r in records] == ["RHYTHM", "MEDIAN BEAT"]  # pressure-only group left out
    rhythm = rhythm_of(records)
    assert rhythm.names == ["I", "II", "aVF"]
    np.testing.assert_allclose(rhythm.lead("I").microvolts(), [1, 4, 7, -1, 0, 0])  # padded → 0
    np.testing.assert_allclose(
        rhythm.lead("II").microvolts(), [2, 5, 8, -2, 0, 10]
    )  # 0.001 mV = 1 µV
    np.testing.assert_allclose(
        rhythm.lead("aVF").microvolts(), np.array([3, 6, 9, -3, 0, 11]) * 2.5
    )


def test_big_endian_waveform() -> None:
    values = np.array([[100, -200], [300, -400], [-5, 6]])
    ch = [
        _channel(("5.6.3-9-1", "SCPECG", "Lead I"), sensitivity=2.5),
        _channel(("5.6.3-9-2", "SCPECG", "Lead II"), sensitivity=2.5),
    ]
    data = _waveform_ds([_group(values.astype(">i2").tobytes(), 16, "SS", ch, 3)], big_endian=True)
    record = rhythm_of(read_dicom_ecg(data))
    np.testing.assert_allclose(record.lead("II").microvolts(), [-500, -1000, 15])


def test_dicom_without_waveform_is_not_an_ecg() -> None:
    with pytest.raises(EcgUnreadable, match="Waveform Sequence"):
        read_dicom_ecg((DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm").read_bytes())


# --- formats by content, and bad input --------------------------------------------------------


def test_format_is_told_by_content() -> None:
    ints = _ints(seconds=2.0)
    assert detect_format(builders.aecg_xml(ints)) == EcgFormat.HL7_AECG
    assert detect_format(builders.scp_file(ints)) == EcgFormat.SCP_ECG
    assert detect_format(builders.philips_xml(ints)) == EcgFormat.PHILIPS_XML
    assert detect_format(builders.muse_xml(ints)) == EcgFormat.GE_MUSE_XML
    assert detect_format(DICOM_ECG.read_bytes()) == EcgFormat.DICOM
    for junk, message in [
        (b"%PDF-1.4 ...", "not DICOM, HL7 aECG"),
        (b"<html><body/></html>", "<html>"),
    ]:
        with pytest.raises(UnsupportedEcgFormat, match=message):
            detect_format(junk)


def test_truncated_aecg() -> None:
    data = AECG_FILES[-1].read_bytes()
    with pytest.raises(TruncatedEcg, match="HL7 aECG is truncated"):
        read_ecg(data[: len(data) // 2])


def test_truncated_scp() -> None:
    data = SCP_EXAMPLE.read_bytes()
    with pytest.raises(TruncatedEcg, match="declares 34144 bytes"):
        read_ecg(data[:20000])


def test_scp_bad_crc() -> None:
    data = bytearray(SCP_EXAMPLE.read_bytes())
    data[5000] ^= 0xFF
    with pytest.raises(EcgChecksumMismatch, match="record CRC"):
        read_ecg(bytes(data))
    # With the record CRC made right again, the damaged section's own CRC still tells.
    with pytest.raises(EcgChecksumMismatch, match="section 6 CRC"):
        read_ecg(builders.rewrite_crc(bytes(data)))


def test_unknown_lead() -> None:
    ints = _ints(seconds=2.0)
    with pytest.raises(UnknownLead, match="MDC_ECG_LEAD_FOO"):
        read_ecg(
            builders.aecg_xml({"I": ints["I"], "II": ints["II"]}, codes={"II": "MDC_ECG_LEAD_FOO"})
        )
    with pytest.raises(UnknownLead, match="unknown lead code 250"):
        read_ecg(builders.scp_file({"I": ints["I"], "II": ints["II"]}, lead_ids={"II": 250}))
    with pytest.raises(UnknownLead, match="'V7X'"):
        read_ecg(builders.muse_xml({"I": ints["I"], "V7X": ints["II"]}))


def test_no_waveform() -> None:
    ints = _ints(seconds=2.0)
    xml = builders.aecg_xml({"I": ints["I"]})
    start, end = (
        xml.index(b'<component><sequence><code code="MDC_ECG_LEAD_I"'),
        xml.index(b"</sequenceSet>"),
    )
    with pytest.raises(NoWaveform, match="no lead sequences"):
        read_ecg(xml[:start] + xml[end:])
    with pytest.raises(NoWaveform, match="no rhythm data"):
        read_ecg(builders.scp_file({"I": ints["I"]}, omit_rhythm=True))


# --- conversions keep the samples -------------------------------------------------------------


def _round_trip(record: object) -> object:
    written = write_dicom_ecg(
        record, study_uid=uid_from("s"), series_uid=uid_from("se"), sop_uid=uid_from("i")
    )  # type: ignore[arg-type]
    return written, rhythm_of(read_dicom_ecg(written.data))


@pytest.mark.parametrize("fs", [250.0, 500.0, 1000.0])
def test_aecg_to_dicom_round_trip(fs: float) -> None:
    ints = _ints(fs=fs, seed=7)
    _kind, record = read_ecg(builders.aecg_xml(ints, fs=fs, scale_uv=4.88, origin_uv=-120.0))
    written, back = _round_trip(record)
    assert written.sop_class_uid == TWELVE_LEAD and back.sampling_frequency == fs
    assert back.names == record.names and back.patient.name == "李^四"
    for lead in record.leads:
        # Within the source's quantisation (here exact: the integers are kept).
        np.testing.assert_allclose(
            back.lead(lead.name).microvolts(), lead.microvolts(), atol=4.88 / 2
        )
        np.testing.assert_array_equal(back.lead(lead.name).samples, lead.samples)


def test_scp_to_dicom_round_trip() -> None:
    for data in (SCP_EXAMPLE.read_bytes(), builders.scp_file(_ints(seed=8), differences=1)):
        _, record = read_ecg(data)
        _written, back = _round_trip(record)
        for lead in record.leads:
            np.testing.assert_allclose(
                back.lead(lead.name).microvolts(), lead.microvolts(), atol=1.25
            )


def test_values_beyond_16_bits_are_divided_down_within_that_step() -> None:
    ints = _ints(scale=0.02, seconds=2.0)  # 0.02 µV steps: R waves exceed 32767 units
    _, record = read_ecg(builders.aecg_xml(ints, scale_uv=0.02))
    written, back = _round_trip(record)
    assert written.max_divisor > 1
    for lead in record.leads:
        step = 0.02 * written.max_divisor
        np.testing.assert_allclose(
            back.lead(lead.name).microvolts(), lead.microvolts(), atol=step / 2 + 1e-9
        )


def test_low_rate_aecg_becomes_ambulatory_ecg() -> None:
    _, record = read_ecg(AECG_FILES[-1].read_bytes())  # 100 Hz: outside 12-lead's 200–1000 Hz
    written, back = _round_trip(record)
    assert written.sop_class_uid == AMBULATORY_ECG and back.sampling_frequency == 100.0


def test_scp_reference_beat_subtraction_and_bimodal_decimation() -> None:
    from telehealth.ecg.service.measure import detect_r_peaks

    leads, _ = synthetic_ecg(hr=72, seed=3, noise_uv=5, wander_uv=0)
    ints = {k: np.rint(v / 2.5).astype(np.int64) for k, v in leads.items()}
    peaks = detect_r_peaks(np.vstack(list(leads.values())), 500.0)
    length, fiducial = 300, 150
    beats = {
        k: np.median(
            [
                v[p - fiducial : p - fiducial + length]
                for p in peaks
                if fiducial <= p <= v.size - length + fiducial
            ],
            axis=0,
        )
        .round()
        .astype(np.int64)
        for k, v in ints.items()
    }
    qrs = [
        (0, p + 1 - 40, p + 1, p + 1 + 60, p + 1 - 30, p + 1 + 40)
        for p in peaks
        if 40 < p < 5000 - 60
    ]
    reference = builders.RefBeat(beats, fiducial, qrs, 600)
    _, exact = read_ecg(builders.scp_file(ints, reference=reference))
    for name in exact.names:
        np.testing.assert_array_equal(exact.lead(name).samples, ints[name])
    _, lossy = read_ecg(builders.scp_file(ints, reference=reference, decimation=4))
    protected = np.zeros(5000, dtype=bool)
    for *_, start, end in qrs:
        protected[start - 1 : end] = True
    for name in lossy.names:
        error = np.abs(lossy.lead(name).samples - ints[name])
        assert error[protected].max() == 0  # QRS complexes exact
        assert error[~protected].mean() < 3  # decimated stretches interpolated (2.5 µV units)


def test_philips_xli_and_ge_muse() -> None:
    ints = _ints(scale=5.0, seed=9)
    kind, philips = read_ecg(builders.philips_xml(ints, resolution_uv=5.0))
    assert kind == EcgFormat.PHILIPS_XML and philips.names[:6] == [
        "I",
        "II",
        "III",
        "aVR",
        "aVL",
        "aVF",
    ]
    for name in philips.names:
        np.testing.assert_array_equal(philips.lead(name).samples, ints[name])
    eight = {k: ints[k] for k in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")}
    kind, muse = read_ecg(builders.muse_xml(eight, units_per_bit=4.88))
    assert kind == EcgFormat.GE_MUSE_XML and muse.patient.birth_date == "19600102"
    np.testing.assert_allclose(muse.lead("V2").microvolts(), ints["V2"] * 4.88)
    assert muse.with_derived_leads().lead("aVF").derived
    m = measure_record(muse)
    assert m.heart_rate_bpm is not None and m.frontal_axis_deg is not None
