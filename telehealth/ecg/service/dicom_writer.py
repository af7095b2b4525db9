"""Writing an ECG record as a DICOM waveform instance (PS3.3 A.34).

The 12-Lead ECG IOD is used when the recording fits its constraints (1–13 channels, 200–1000
Hz, at most 16384 samples); otherwise General ECG (≤ 24 channels, 200–1000 Hz) or Ambulatory
ECG (≤ 12 channels, 50–1000 Hz). Samples are stored as the source's integers with its scale
as Channel Sensitivity and its offset as Channel Baseline, so the conversion adds no
quantisation; only values beyond 16 bits are divided down (and said so in the result).

A recording longer than SEGMENT_S (a Holter, a PhysioNet record) is cut by `split` into
consecutive parts written as Ambulatory ECG instances of one series (`prefer`), each part's
start in its Multiplex Group Time Offset and Instance Number. One 30-minute multiplex group
would be legal for General ECG, but the measurements and the viewer read one instance's
rhythm group whole: for 30 minutes that takes minutes, and every part stays far inside the
IODs' per-group sample limits.

The output is deterministic: the same record and UIDs give the same bytes, so an upload sent
twice is the same instance twice (the archive stores it once).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pydicom.valuerep import DSfloat

from telehealth.ecg.service.waveform import LEAD_NUMBER_BY_NAME, EcgRecord, EcgUnreadable

TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
AMBULATORY_ECG = "1.2.840.10008.5.1.4.1.1.9.1.3"


def uid_from(*parts: str) -> str:
    """A UID derived from content (PS3.5 B.2: "2.25." + a 128-bit number from a hash)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


SEGMENT_S = 10.0  # a resting ECG's length: each part is measured like one


def split(record: EcgRecord, seconds: float = SEGMENT_S) -> list[tuple[float, EcgRecord]]:
    """Consecutive parts of at most `seconds`, each with its start in ms; a tail shorter
    than half a part joins the one before, so no part is too short to measure."""
    size = max(1, round(seconds * record.sampling_frequency))
    n = record.num_samples
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < size // 2:
        starts.pop()
    parts = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        leads = tuple(replace(lead, samples=lead.samples[start:end]) for lead in record.leads)
        parts.append((start * 1000.0 / record.sampling_frequency, replace(record, leads=leads)))
    return parts


def sop_class_for(record: EcgRecord, prefer: str | None = None) -> str:
    """The most specific ECG IOD whose constraints the record meets, or `prefer` when it
    meets that one's. Raises EcgUnreadable."""
    fs, channels, samples = record.sampling_frequency, len(record.leads), record.num_samples
    if prefer == AMBULATORY_ECG and 50 <= fs <= 1000 and channels <= 12:
        return AMBULATORY_ECG
    if 200 <= fs <= 1000 and channels <= 13 and samples <= 16384:
        return TWELVE_LEAD
    if 200 <= fs <= 1000 and channels <= 24:
        return GENERAL_ECG
    if 50 <= fs <= 1000 and channels <= 12:
        return AMBULATORY_ECG
    raise EcgUnreadable(
        f"{channels} leads at {fs:g} Hz fit no DICOM ECG waveform IOD (50–1000 Hz, ≤ 24 leads)"
    )


@dataclass(frozen=True)
class Quantised:
    """A lead as stored: int16 samples, sensitivity (µV/unit) and baseline (µV)."""

    samples: np.ndarray
    sensitivity_uv: float
    baseline_uv: float
    divided_by: int  # 1 unless the source's values did not fit 16 bits


def quantise(samples: np.ndarray, scale_uv: float, offset_uv: float) -> Quantised:
    """Fit a lead into signed 16 bits, keeping the source's integers when they fit."""
    # Fractional values (interpolated stretches of bimodal SCP-ECG) round to the source's
    # unit: its own quantisation step.
    values = np.rint(np.asarray(samples, dtype=np.float64))
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    divide = max(1, int(np.ceil(peak / 32767.0)))
    stored = np.rint(values / divide).astype("<i2")
    return Quantised(stored, scale_uv * divide, offset_uv, divide)


def _ds(value: float) -> DSfloat:
    return DSfloat(value, auto_format=True)


def _code(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if version:
        item.CodingSchemeVersion = version
    item.CodeMeaning = meaning
    return item


def _lo(text: str, limit: int = 64) -> str:
    """A value cut to its VR's length (LO, PN groups: 64 characters)."""
    return text.strip()[:limit]


def _date_time(when: str) -> tuple[str, str]:
    digits = "".join(c for c in when if c.isdigit())
    return (digits[:8], digits[8:14]) if len(digits) >= 8 else ("", "")


@dataclass(frozen=True)
class Written:
    data: bytes
    sop_class_uid: str
    max_divisor: int  # > 1 when some lead lost precision to fit 16 bits


def write_dicom_ecg(
    record: EcgRecord,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    series_description: str = "",
    institution_name: str = "",
    instance_number: int = 1,
    time_offset_ms: float = 0.0,
    prefer: str | None = None,
) -> Written:
    """The record as a DICOM ECG waveform Part 10 file (Explicit VR Little Endian).

    `instance_number` and `time_offset_ms` place one part of a split recording in its series.
    """
    sop_class = sop_class_for(record, prefer)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Chinese names and institutions
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    date, time = _date_time(record.acquisition.when)
    # Patient (Type 2 attributes are present, empty when unknown).
    ds.PatientName = _lo(record.patient.name)
    ds.PatientID = _lo(record.patient.patient_id)
    ds.PatientBirthDate = record.patient.birth_date
    ds.PatientSex = record.patient.sex
    if record.patient.age:
        ds.PatientAge = record.patient.age
    # General Study, General Series, General Equipment.
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.ContentDate = date
    ds.StudyTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = _lo(record.acquisition.referring_physician)
    ds.StudyID = ""
    ds.StudyDescription = "ECG"
    ds.Modality = "ECG"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = _lo(series_description)
    ds.Manufacturer = _lo(record.acquisition.manufacturer)
    if record.acquisition.device:
        ds.ManufacturerModelName = _lo(record.acquisition.device)
    if record.acquisition.software:
        ds.SoftwareVersions = _lo(record.acquisition.software)
    ds.InstitutionName = _lo(record.acquisition.institution or institution_name)
    if record.acquisition.department:
        ds.InstitutionalDepartmentName = _lo(record.acquisition.department)
    if record.acquisition.operator:
        ds.OperatorsName = _lo(record.acquisition.operator)
    # Waveform Identification, Acquisition Context.
    ds.InstanceNumber = instance_number
    if date:
        ds.AcquisitionDateTime = date + time
    ds.AcquisitionContextSequence = Sequence()

    quantised = [quantise(lead.samples, lead.scale_uv, lead.offset_uv) for lead in record.leads]
    group = Dataset()
    group.MultiplexGroupTimeOffset = _ds(time_offset_ms)  # PS3.3 C.10.9.1: from the start
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(record.leads)
    group.NumberOfWaveformSamples = record.num_samples
    group.SamplingFrequency = _ds(record.sampling_frequency)
    group.MultiplexGroupLabel = record.label or "RHYTHM"
    channels = []
    for lead, q in zip(record.leads, quantised, strict=True):
        channel = Dataset()
        number = LEAD_NUMBER_BY_NAME.get(lead.name.upper())
        if number is None:
            raise EcgUnreadable(f"lead {lead.name!r} has no DICOM code")
        # CID 3001 ECG Leads: ISO/IEEE 11073 MDC codes, partition 2.
        channel.ChannelSourceSequence = Sequence([_code(f"2:{number}", "MDC", f"Lead {lead.name}")])
        channel.ChannelSensitivity = _ds(q.sensitivity_uv)
        channel.ChannelSensitivityUnitsSequence = Sequence(
            [_code("uV", "UCUM", "microvolt", "1.4")]
        )
        channel.ChannelSensitivityCorrectionFactor = _ds(1.0)
        channel.ChannelBaseline = _ds(q.baseline_uv)
        channel.ChannelTimeSkew = _ds(0.0)
        channel.WaveformBitsStored = 16
        if lead.low_hz is not None:
            channel.FilterLowFrequency = _ds(lead.low_hz)
        if lead.high_hz is not None:
            channel.FilterHighFrequency = _ds(lead.high_hz)
        if lead.notch_hz is not None:
            channel.NotchFilterFrequency = _ds(lead.notch_hz)
        channels.append(channel)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    interleaved = np.stack([q.samples for q in quantised], axis=1).astype("<i2")
    group.WaveformData = interleaved.tobytes()
    ds.WaveformSequence = Sequence([group])

    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return Written(out.getvalue(), sop_class, max(q.divided_by for q in quantised))
