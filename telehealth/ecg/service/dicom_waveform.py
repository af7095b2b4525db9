"""Reading DICOM waveforms (PS3.3 C.10.9): every multiplex group, calibrated to µV per lead.

Handles every Waveform Sample Interpretation the standard lists (SB, UB, MB, AB, SS, US, SL,
UL, SV, UV, FL, FD), both byte orders, Waveform Padding Value, and per-channel sensitivity,
sensitivity correction factor and baseline. Leads are identified by their Channel Source
code (SCPECG "5.6.3-9-N", MDC "2:N" or the 32-bit MDC code) or, failing that, by the code
meaning or channel label ("Lead II").
"""

from __future__ import annotations

import io

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from telehealth.ecg.service.waveform import (
    LEAD_NUMBERS,
    Acquisition,
    EcgRecord,
    EcgUnreadable,
    Lead,
    NotAnEcg,
    NoWaveform,
    Patient,
    lead_name,
)

# ECG-bearing waveform SOP classes (PS3.4 Annex B): measurements are computed for these.
ECG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.4": "General 32-bit ECG",
    "1.2.840.10008.5.1.4.1.1.9.2.1": "Hemodynamic Waveform",
}

# (bits allocated, interpretation) → numpy type; MB and AB are G.711 bytes expanded below.
_SAMPLE_TYPES: dict[tuple[int, str], str] = {
    (8, "SB"): "i1",
    (8, "UB"): "u1",
    (8, "MB"): "u1",
    (8, "AB"): "u1",
    (16, "SS"): "i2",
    (16, "US"): "u2",
    (32, "SL"): "i4",
    (32, "UL"): "u4",
    (32, "FL"): "f4",
    (64, "SV"): "i8",
    (64, "UV"): "u8",
    (64, "FD"): "f8",
}

# UCUM voltage units → µV. Channels in other units (mm[Hg], Cel, …) are not ECG leads.
_VOLTS_TO_UV = {"uV": 1.0, "mV": 1000.0, "V": 1_000_000.0, "nV": 0.001, "kV": 1e9}

_MDC_ELEC_POTL = 131328  # MDC_ECG_ELEC_POTL (2:256); + N is the potential of lead N


def mu_law_to_linear(codes: np.ndarray) -> np.ndarray:
    """ITU-T G.711 µ-law bytes → 16-bit linear values (as audio codecs expand them)."""
    u = (~codes.astype(np.int32)) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int32)


def a_law_to_linear(codes: np.ndarray) -> np.ndarray:
    """ITU-T G.711 A-law bytes → 16-bit linear values."""
    a = codes.astype(np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int32)


def _float(item: Dataset, keyword: str, default: float) -> float:
    value = item.get(keyword)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise EcgUnreadable(f"{keyword} {value!r} is not a number") from exc


def _optional_float(item: Dataset, keyword: str) -> float | None:
    value = item.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def channel_lead(channel: Dataset) -> str | None:
    """The lead a channel records, from its source code, code meaning or label."""
    sources = channel.get("ChannelSourceSequence") or []
    if sources:
        code = sources[0]
        value = str(code.get("CodeValue", "")).strip()
        scheme = str(code.get("CodingSchemeDesignator", "")).strip().upper()
        number: int | None = None
        if scheme == "SCPECG" and value.startswith("5.6.3-9-"):
            number = int(value.rsplit("-", 1)[1]) if value.rsplit("-", 1)[1].isdigit() else None
        elif scheme == "MDC" and value.startswith("2:") and value[2:].isdigit():
            number = int(value[2:])
        elif scheme == "MDC" and value.isdigit() and 0 < int(value) - _MDC_ELEC_POTL < 256:
            number = int(value) - _MDC_ELEC_POTL
        if number is not None and number in LEAD_NUMBERS:
            return LEAD_NUMBERS[number]
        name = lead_name(str(code.get("CodeMeaning", "")))
        if name:
            return name
    return lead_name(str(channel.get("ChannelLabel", "")))


def _units_to_uv(channel: Dataset) -> float | None:
    units = channel.get("ChannelSensitivityUnitsSequence") or []
    if not units:
        return 1.0  # the ECG IODs' only unit is µV-scale voltage; assume µV when not said
    return _VOLTS_TO_UV.get(str(units[0].get("CodeValue", "")).strip())


def _group_samples(group: Dataset, little_endian: bool) -> np.ndarray:
    """The group's samples as (samples, channels), G.711 expanded, padding as NaN."""
    try:
        bits = int(group.WaveformBitsAllocated)
        interpretation = str(group.WaveformSampleInterpretation).strip()
        channels = int(group.NumberOfWaveformChannels)
        samples = int(group.NumberOfWaveformSamples)
        data = bytes(group.WaveformData)
    except AttributeError as exc:
        raise NoWaveform(f"multiplex group lacks {exc.args[0].split()[-1]}") from exc
    kind = _SAMPLE_TYPES.get((bits, interpretation))
    if kind is None:
        raise EcgUnreadable(
            f"waveform sample interpretation {interpretation} with {bits} bits is not in PS3.3"
        )
    if channels <= 0 or samples <= 0:
        raise NoWaveform("multiplex group declares no channels or no samples")
    width = bits // 8
    expected = channels * samples * width
    if len(data) < expected:
        raise EcgUnreadable(
            f"Waveform Data has {len(data)} bytes; {channels} channels × {samples} samples × "
            f"{width} bytes need {expected}"
        )
    dtype = np.dtype(kind).newbyteorder("<" if little_endian else ">")
    raw = np.frombuffer(data[:expected], dtype=dtype).reshape(samples, channels)
    padding = group.get("WaveformPaddingValue")
    pad_mask = None
    if padding is not None:
        pad = np.frombuffer(bytes(padding)[:width], dtype=dtype)
        if pad.size:
            pad_mask = raw == pad[0]
    if interpretation == "MB":
        values = mu_law_to_linear(raw).astype(np.float64)
    elif interpretation == "AB":
        values = a_law_to_linear(raw).astype(np.float64)
    else:
        values = raw.astype(np.float64)
    if pad_mask is not None and pad_mask.any():
        values[pad_mask] = np.nan
    return values


def _patient(ds: Dataset) -> Patient:
    return Patient(
        patient_id=str(ds.get("PatientID", "") or ""),
        name=str(ds.get("PatientName", "") or ""),
        birth_date=str(ds.get("PatientBirthDate", "") or ""),
        sex=str(ds.get("PatientSex", "") or ""),
        age=str(ds.get("PatientAge", "") or ""),
    )


def _acquisition(ds: Dataset) -> Acquisition:
    when = str(ds.get("AcquisitionDateTime", "") or "")
    if not when:
        when = str(ds.get("ContentDate", "") or "") + str(ds.get("ContentTime", "") or "")
    return Acquisition(
        when=when.split(".")[0][:14],
        institution=str(ds.get("InstitutionName", "") or ""),
        department=str(ds.get("InstitutionalDepartmentName", "") or ""),
        device=str(ds.get("ManufacturerModelName", "") or ""),
        manufacturer=str(ds.get("Manufacturer", "") or ""),
        software=str(ds.get("SoftwareVersions", "") or ""),
        operator=str(ds.get("OperatorsName", "") or ""),
        referring_physician=str(ds.get("ReferringPhysicianName", "") or ""),
    )


def read_groups(ds: Dataset) -> list[EcgRecord]:
    """Each multiplex group that holds voltage leads, as a record; channels in other units
    (pressure, temperature) are left out.

    Raises NotAnEcg (no Waveform Sequence), NoWaveform (no voltage channel), EcgUnreadable.
    """
    groups = ds.get("WaveformSequence")
    if not groups:
        raise NotAnEcg("the instance has no Waveform Sequence (5400,0100)")
    little_endian = getattr(ds, "original_encoding", (None, True))[1]
    if little_endian is None:
        little_endian = True
    patient, acquisition = _patient(ds), _acquisition(ds)
    records: list[EcgRecord] = []
    for index, group in enumerate(groups):
        values = _group_samples(group, bool(little_endian))
        definitions = group.get("ChannelDefinitionSequence") or []
        fs = _float(group, "SamplingFrequency", 0.0)
        leads: list[Lead] = []
        used: set[str] = set()
        for number, channel in enumerate(definitions[: values.shape[1]]):
            to_uv = _units_to_uv(channel)
            if to_uv is None:
                continue
            name = channel_lead(channel) or f"Ch{number + 1}"
            if name in used:
                name = f"{name} ({number + 1})"
            used.add(name)
            sensitivity = _float(channel, "ChannelSensitivity", 1.0)
            correction = _float(channel, "ChannelSensitivityCorrectionFactor", 1.0)
            baseline = _float(channel, "ChannelBaseline", 0.0)
            # PS3.3 C.10.9.1.4.3: value = sample × sensitivity × correction + baseline, the
            # baseline in the sensitivity's units (pydicom's multiplex_array does the same).
            column = values[:, number]
            if np.isnan(column).any():
                column = np.nan_to_num(column, nan=0.0)  # padding: shown as baseline
            leads.append(
                Lead(
                    name=name,
                    samples=column,
                    scale_uv=sensitivity * correction * to_uv,
                    offset_uv=baseline * to_uv,
                    low_hz=_optional_float(channel, "FilterLowFrequency"),
                    high_hz=_optional_float(channel, "FilterHighFrequency"),
                    notch_hz=_optional_float(channel, "NotchFilterFrequency"),
                )
            )
        if not leads:
            continue
        label = str(group.get("MultiplexGroupLabel", "") or f"GROUP {index + 1}").upper()
        records.append(
            EcgRecord(
                leads=tuple(leads),
                sampling_frequency=fs,
                patient=patient,
                acquisition=acquisition,
                source_format="dicom",
                label=label,
            )
        )
    if not records:
        raise NoWaveform("no multiplex group holds voltage (ECG) channels")
    return records


def rhythm_of(records: list[EcgRecord]) -> EcgRecord:
    """The rhythm group: one labelled RHYTHM, else the longest one that is not a median beat."""
    for record in records:
        if "RHYTHM" in record.label:
            return record
    candidates = [r for r in records if "MEDIAN" not in r.label] or records
    return max(candidates, key=lambda r: r.duration_s)


def read_dicom_ecg(data: bytes) -> list[EcgRecord]:
    """All ECG multiplex groups of a Part 10 instance. Raises NotAnEcg, NoWaveform,
    EcgUnreadable."""
    try:
        ds = dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise EcgUnreadable(f"not a readable DICOM instance: {exc}") from exc
    return read_groups(ds)
