"""Vendor XML exports: Philips (Sierra ECG / PhilipsECG) and GE MUSE `RestingECG`.

Philips files compress their leads with XLI (LZW plus a delta code); the `sierraecg` package
decodes that, and its lead reconstruction (III, aVR, aVL, aVF are stored as residuals) is
used as is. Uncompressed Philips files are split here (sierraecg writes into read-only
buffers on that path). `ecg2dcm`'s GE MUSE reader cannot be installed beside pydicom 3 (it
pins pydicom < 3), so MUSE XML is read here: base64 little-endian int16 per lead,
LeadAmplitudeUnitsPerBit µV per unit, SampleBase × 10^SampleExponent Hz.
"""

from __future__ import annotations

import base64
import binascii
import io
import xml.etree.ElementTree as ET

import numpy as np

from telehealth.ecg.service.aecg import parse_xml
from telehealth.ecg.service.waveform import (
    Acquisition,
    EcgRecord,
    EcgUnreadable,
    Lead,
    NoWaveform,
    Patient,
    check_known_leads,
)


def _find_text(root: ET.Element | None, path: str) -> str:
    if root is None:
        return ""
    element = root.find(path)
    return "".join(element.itertext()).strip() if element is not None else ""


def _float(text: str, default: float | None = None) -> float | None:
    try:
        return float(text)
    except ValueError:
        return default


# --- Philips ----------------------------------------------------------------------------------


def read_philips(data: bytes) -> EcgRecord:
    """A Philips Sierra/PhilipsECG XML file. Raises EcgUnreadable, NoWaveform, UnknownLead."""
    root = parse_xml(data, "Philips ECG XML")  # well-formed and safe before sierraecg sees it
    if root.tag.split("}")[-1] != "restingecgdata":
        raise EcgUnreadable(f"not a Philips ECG XML: root element is {root.tag}")
    waveforms = root.find(".//parsedwaveforms")
    if waveforms is None or not (waveforms.text or "").strip():
        raise NoWaveform("Philips ECG XML has no parsedwaveforms")
    signal = root.find(".//dataacquisition/signalcharacteristics")
    rate = _float(_find_text(signal, "samplingrate"))
    if not rate:
        raise EcgUnreadable("Philips ECG XML has no sampling rate")
    # µV per unit: <resolution> in signalcharacteristics (5 µV on the carts we know of).
    resolution = _float(
        _find_text(signal, "resolution") or _find_text(signal, "signalresolution"), 5.0
    )
    compression = waveforms.get("compressmethod") or waveforms.get("compression") or "Uncompressed"
    labels = (waveforms.get("leadlabels") or "").split()
    count = int(_float(waveforms.get("numberofleads", ""), float(len(labels))) or 0)
    labels = labels[:count] if count else labels
    if not labels:
        raise EcgUnreadable("Philips ECG XML does not name its leads (leadlabels)")
    check_known_leads(labels, "Philips ECG XML")
    if compression == "XLI":
        arrays = _philips_xli(data)
    elif compression == "Uncompressed":
        try:
            raw = base64.b64decode((waveforms.text or "").strip(), validate=False)
        except binascii.Error as exc:
            raise EcgUnreadable("Philips ECG XML waveform is not base64") from exc
        duration_ms = _float(waveforms.get("durationperchannel", ""), 0.0) or 0.0
        per_lead = int(duration_ms * rate / 1000)
        values = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2")
        if per_lead <= 0 or values.size < per_lead * len(labels):
            raise EcgUnreadable("Philips ECG XML waveform is shorter than its leads need")
        arrays = [values[k * per_lead : (k + 1) * per_lead].copy() for k in range(len(labels))]
    else:
        raise EcgUnreadable(f"Philips ECG XML compression {compression!r} is not supported")
    if len(arrays) < len(labels):
        raise NoWaveform(f"Philips ECG XML holds {len(arrays)} leads for {len(labels)} labels")
    length = min(a.size for a in arrays[: len(labels)])
    leads = tuple(
        Lead(name, np.asarray(arrays[k][:length], dtype=np.int64), float(resolution or 5.0))
        for k, name in enumerate(labels)
    )
    patient_el = root.find(".//patient/generalpatientdata")
    acquisition_el = root.find(".//dataacquisition")
    when = ""
    if acquisition_el is not None:
        date = acquisition_el.get("date", "").replace("-", "")
        time = acquisition_el.get("time", "").replace(":", "")
        when = (date + time)[:14]
    sex = _find_text(patient_el, "sex").upper()[:1]
    return EcgRecord(
        leads=leads,
        sampling_frequency=rate,
        patient=Patient(
            patient_id=_find_text(patient_el, "patientid"),
            name="^".join(
                p
                for p in (
                    _find_text(patient_el, "name/lastname"),
                    _find_text(patient_el, "name/firstname"),
                )
                if p
            ),
            sex=sex if sex in ("M", "F") else "",
        ),
        acquisition=Acquisition(when=when, manufacturer="Philips"),
        source_format="philips-xml",
    )


def _philips_xli(data: bytes) -> list[np.ndarray]:
    import sierraecg

    try:
        record = sierraecg.read_file(io.BytesIO(data))  # type: ignore[arg-type]
    except (
        sierraecg.UnsupportedXmlFileError,
        sierraecg.MissingXmlElementError,
        sierraecg.MissingXmlAttributeError,
    ) as exc:
        raise EcgUnreadable(f"Philips ECG XML: {type(exc).__name__} {exc}") from exc
    except (IndexError, ValueError, binascii.Error) as exc:
        raise EcgUnreadable(f"Philips ECG XML: XLI data cannot be decoded ({exc})") from exc
    return [np.asarray(lead.samples, dtype=np.int64) for lead in record.leads]


# --- GE MUSE ----------------------------------------------------------------------------------


def _muse_date(text: str) -> str:
    """MUSE writes MM-DD-YYYY; masked values (XX-XX-XXXX) give ""."""
    parts = text.strip().split("-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return f"{int(parts[2]):04d}{int(parts[0]):02d}{int(parts[1]):02d}"
    return ""


def read_muse(data: bytes) -> EcgRecord:
    """A GE MUSE RestingECG XML file (its rhythm waveform). Raises EcgUnreadable, NoWaveform,
    UnknownLead."""
    root = parse_xml(data, "GE MUSE XML")
    if root.tag != "RestingECG":
        raise EcgUnreadable(f"not a GE MUSE XML: root element is {root.tag}")
    waveforms = root.findall("Waveform")
    chosen = next(
        (w for w in waveforms if _find_text(w, "WaveformType").upper() == "RHYTHM"),
        waveforms[0] if waveforms else None,
    )
    if chosen is None:
        raise NoWaveform("GE MUSE XML has no Waveform")
    base = _float(_find_text(chosen, "SampleBase"), 500.0) or 500.0
    exponent = _float(_find_text(chosen, "SampleExponent"), 0.0) or 0.0
    high_pass = _float(_find_text(chosen, "HighPassFilter"))
    low_pass = _float(_find_text(chosen, "LowPassFilter"))
    ac = _find_text(chosen, "ACFilter")
    leads: list[Lead] = []
    for lead_el in chosen.findall("LeadData"):
        name = _find_text(lead_el, "LeadID")
        encoded = _find_text(lead_el, "WaveFormData")
        if not name or not encoded:
            continue
        check_known_leads([name], "GE MUSE XML")
        try:
            raw = base64.b64decode("".join(encoded.split()), validate=True)
        except binascii.Error as exc:
            raise EcgUnreadable(f"GE MUSE XML lead {name} is not base64") from exc
        samples = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.int64)
        total = int(_float(_find_text(lead_el, "LeadSampleCountTotal"), 0.0) or 0)
        if total:
            if samples.size < total:
                raise EcgUnreadable(
                    f"GE MUSE XML lead {name} has {samples.size} of {total} samples"
                )
            samples = samples[:total]
        per_bit = _float(_find_text(lead_el, "LeadAmplitudeUnitsPerBit"), 4.88) or 4.88
        units = _find_text(lead_el, "LeadAmplitudeUnits").upper()
        scale = per_bit * (1000.0 if "MILLI" in units else 1.0)
        leads.append(
            Lead(
                name,
                samples,
                scale,
                # MUSE gives the high-pass corner in hundredths of a hertz.
                low_hz=high_pass / 100.0 if high_pass is not None else None,
                high_hz=low_pass,
                notch_hz=_float(ac) if ac and ac.upper() != "NONE" else None,
            )
        )
    if not leads:
        raise NoWaveform("GE MUSE XML rhythm waveform holds no lead data")
    check_known_leads([lead.name for lead in leads], "GE MUSE XML")
    patient = root.find("PatientDemographics")
    test = root.find("TestDemographics")
    gender = _find_text(patient, "Gender").upper()
    time = _find_text(test, "AcquisitionTime").replace(":", "")
    return EcgRecord(
        leads=tuple(leads),
        sampling_frequency=base * 10**exponent,
        patient=Patient(
            patient_id=_find_text(patient, "PatientID"),
            name="^".join(
                p
                for p in (
                    _find_text(patient, "PatientLastName"),
                    _find_text(patient, "PatientFirstName"),
                )
                if p
            ),
            birth_date=_muse_date(_find_text(patient, "DateofBirth")),
            sex={"MALE": "M", "FEMALE": "F"}.get(gender, ""),
        ),
        acquisition=Acquisition(
            when=(_muse_date(_find_text(test, "AcquisitionDate")) + time)[:14],
            institution=_find_text(test, "SiteName"),
            device=_find_text(test, "AcquisitionDevice"),
            manufacturer="GE Healthcare",
        ),
        source_format="ge-muse-xml",
    )
