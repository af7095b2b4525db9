"""HL7 annotated ECG (aECG, HL7 v3 PORT_MT020001) reader.

The PyPI `aecg` package needs Python ≥ 3.12 (the hub runs on 3.11), so this is a reader of
our own for what every aECG carries: the rhythm series' sequence set — a TIME_ABSOLUTE or
TIME_RELATIVE sequence (GLIST increment = sampling interval) and one SLIST_PQ sequence per
lead (physical value = origin + scale × digit) — plus patient, time, device and filters.
XML is parsed with defusedxml: uploads are untrusted (no entity expansion, no DTDs).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from telehealth.ecg.service.waveform import (
    LEAD_NUMBER_BY_NAME,
    LEAD_NUMBERS,
    Acquisition,
    EcgRecord,
    EcgUnreadable,
    Lead,
    NoWaveform,
    Patient,
    TruncatedEcg,
    UnknownLead,
)

HL7 = "urn:hl7-org:v3"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_UNITS_UV = {"uV": 1.0, "mV": 1000.0, "V": 1_000_000.0, "nV": 0.001}
_SECONDS = {"s": 1.0, "ms": 0.001, "us": 1e-6}


def _q(path: str) -> str:
    """An ElementPath in the HL7 namespace: "a/b" → "{urn:hl7-org:v3}a/{…}b"."""
    return "/".join(
        part if part in (".", "..") or part.startswith(".//") else f"{{{HL7}}}{part}"
        for part in path.split("/")
    )


def parse_xml(data: bytes, what: str) -> ET.Element:
    """Parse untrusted XML. Raises TruncatedEcg or EcgUnreadable naming the problem."""
    try:
        return SafeET.fromstring(data)
    except DefusedXmlException as exc:
        raise EcgUnreadable(f"{what}: forbidden XML construct ({type(exc).__name__})") from exc
    except ET.ParseError as exc:
        message = str(exc)
        if "no element found" in message or "unclosed token" in message:
            raise TruncatedEcg(f"{what} is truncated: {message}") from exc
        raise EcgUnreadable(f"{what} is not well-formed XML: {message}") from exc


def _lead_from_code(code: str) -> str:
    suffix = code[len("MDC_ECG_LEAD_") :] if code.upper().startswith("MDC_ECG_LEAD_") else ""
    number = LEAD_NUMBER_BY_NAME.get(suffix.upper())
    if number is None:
        raise UnknownLead(f"HL7 aECG: unknown lead {code!r}")
    return LEAD_NUMBERS[number]


def _number(element: ET.Element | None, what: str) -> tuple[float, str]:
    if element is None:
        raise EcgUnreadable(f"HL7 aECG: {what} is missing")
    try:
        return float(element.get("value", "")), element.get("unit", "")
    except ValueError as exc:
        raise EcgUnreadable(f"HL7 aECG: {what} {element.get('value')!r} is not a number") from exc


def _series(root: ET.Element) -> ET.Element:
    series = root.findall(_q("component/series"))
    if not series:
        raise NoWaveform("HL7 aECG has no series")
    for item in series:
        code = item.find(_q("code"))
        if code is not None and code.get("code") == "RHYTHM":
            return item
    return series[0]


def _filters(series: ET.Element) -> dict[str, float]:
    out: dict[str, float] = {}
    for variable in series.iter(f"{{{HL7}}}controlVariable"):
        code = variable.find(_q("code"))
        name = code.get("code", "") if code is not None else ""
        value = variable.find(_q("component/controlVariable/value"))
        if value is None:
            continue
        try:
            hz = float(value.get("value", ""))
        except ValueError:
            continue
        if name.endswith("FILTER_LOW_PASS"):
            out["high_hz"] = hz  # a low-pass filter sets the upper band edge
        elif name.endswith("FILTER_HIGH_PASS"):
            out["low_hz"] = hz
        elif name.endswith("FILTER_NOTCH"):
            out["notch_hz"] = hz
    return out


def _text(element: ET.Element | None) -> str:
    return "".join(element.itertext()).strip() if element is not None else ""


def _patient(root: ET.Element) -> Patient:
    subject = root.find(
        _q("componentOf/timepointEvent/componentOf/subjectAssignment/subject/trialSubject")
    )
    if subject is None:
        return Patient()
    ident = subject.find(_q("id"))
    patient_id = ident.get("extension", "") if ident is not None else ""
    person = subject.find(_q("subjectDemographicPerson"))
    name = sex = birth = ""
    if person is not None:
        name_el = person.find(_q("name"))
        if name_el is not None:
            family, given = _text(name_el.find(_q("family"))), _text(name_el.find(_q("given")))
            name = f"{family}^{given}" if given else family or _text(name_el)
        gender = person.find(_q("administrativeGenderCode"))
        sex = {"M": "M", "F": "F"}.get(gender.get("code", "") if gender is not None else "", "")
        born = person.find(_q("birthTime"))
        birth = (born.get("value", "") if born is not None else "")[:8]
        if not patient_id:
            patient_id = _text(person.find(_q("PatientID")))  # a vendor extension some carts use
    return Patient(patient_id=patient_id, name=name, birth_date=birth, sex=sex)


def _acquisition(root: ET.Element, series: ET.Element) -> Acquisition:
    when = ""
    for path in ("effectiveTime/low", "effectiveTime/center"):
        for holder in (series, root):
            element = holder.find(_q(path))
            if element is not None and element.get("value"):
                when = element.get("value", "")[:14]
                break
        if when:
            break
    device = series.find(_q("author/seriesAuthor/manufacturedSeriesDevice"))
    maker = series.find(_q("author/seriesAuthor/manufacturerOrganization/name"))
    return Acquisition(
        when=when,
        device=_text(device.find(_q("manufacturerModelName"))) if device is not None else "",
        software=_text(device.find(_q("softwareName"))) if device is not None else "",
        manufacturer=_text(maker),
    )


def read_aecg(data: bytes) -> EcgRecord:
    """An HL7 aECG file's rhythm series. Raises TruncatedEcg, UnknownLead, NoWaveform,
    EcgUnreadable — each naming the problem."""
    root = parse_xml(data, "HL7 aECG")
    if root.tag != f"{{{HL7}}}AnnotatedECG":
        raise EcgUnreadable(f"not an HL7 aECG: root element is {root.tag}")
    series = _series(root)
    sequence_set = series.find(_q("component/sequenceSet"))
    if sequence_set is None:
        raise NoWaveform("HL7 aECG rhythm series has no sequence set")
    interval_s: float | None = None
    filters = _filters(series)
    leads: list[Lead] = []
    for sequence in sequence_set.findall(_q("component/sequence")):
        code_el = sequence.find(_q("code"))
        code = code_el.get("code", "") if code_el is not None else ""
        value = sequence.find(_q("value"))
        if value is None:
            continue
        if code.startswith("TIME_"):
            amount, unit = _number(value.find(_q("increment")), "time increment")
            if unit not in _SECONDS or amount <= 0:
                raise EcgUnreadable(f"HL7 aECG: time increment {amount} {unit!r} is unusable")
            interval_s = amount * _SECONDS[unit]
            continue
        name = _lead_from_code(code)
        origin, origin_unit = _number(value.find(_q("origin")), f"{code} origin")
        scale, scale_unit = _number(value.find(_q("scale")), f"{code} scale")
        for unit in (origin_unit, scale_unit):
            if unit not in _UNITS_UV:
                raise EcgUnreadable(f"HL7 aECG: {code} is in {unit!r}, not a voltage")
        digits = value.find(_q("digits"))
        text = (digits.text or "") if digits is not None else ""
        try:
            samples = np.array(text.split(), dtype=np.int64)
        except ValueError as exc:
            raise EcgUnreadable(f"HL7 aECG: {code} digits are not integers") from exc
        if samples.size == 0:
            raise NoWaveform(f"HL7 aECG: lead {name} has no digits")
        leads.append(
            Lead(
                name=name,
                samples=samples,
                scale_uv=scale * _UNITS_UV[scale_unit],
                offset_uv=origin * _UNITS_UV[origin_unit],
                low_hz=filters.get("low_hz"),
                high_hz=filters.get("high_hz"),
                notch_hz=filters.get("notch_hz"),
            )
        )
    if not leads:
        raise NoWaveform("HL7 aECG rhythm series holds no lead sequences")
    if interval_s is None:
        raise EcgUnreadable("HL7 aECG has no TIME sequence: the sampling rate is unknown")
    names = [lead.name for lead in leads]
    if len(set(names)) != len(names):
        raise EcgUnreadable("HL7 aECG names a lead twice")
    return EcgRecord(
        leads=tuple(leads),
        sampling_frequency=round(1.0 / interval_s, 6),
        patient=_patient(root),
        acquisition=_acquisition(root, series),
        source_format="hl7-aecg",
    )
