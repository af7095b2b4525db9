"""Writers of the formats the hub reads, for tests: SCP-ECG (with Huffman coding, reference-
beat subtraction and bimodal decimation), HL7 aECG, Philips XML (XLI) and GE MUSE XML.

Each follows the format's definition independently of the reader under test (the SCP-ECG
default Huffman table is written out bit by bit here, not imported).
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SCP_LEAD_IDS = {
    "I": 1, "II": 2, "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8,
    "III": 61, "aVR": 62, "aVL": 63, "aVF": 64,
}  # fmt: skip


def crc_ccitt(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


# --- SCP-ECG ----------------------------------------------------------------------------------


def _huffman_bits(value: int) -> str:
    """EN 1064 default table: 0 → "0", ±1 → "10s", ±2 → "110s" … ±8; else escapes."""
    if value == 0:
        return "0"
    if -8 <= value <= 8:
        ones = "1" * abs(value)
        return ones + "0" + ("1" if value < 0 else "0")
    if -128 <= value <= 127:
        return "1111111110" + format(value & 0xFF, "08b")
    if -32768 <= value <= 32767:
        return "1111111111" + format(value & 0xFFFF, "016b")
    raise ValueError(f"{value} does not fit the default table")


def huffman_encode(values: Sequence[int]) -> bytes:
    bits = "".join(_huffman_bits(int(v)) for v in values)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def difference(values: np.ndarray, order: int) -> np.ndarray:
    x = np.asarray(values, dtype=np.int64)
    if order == 0:
        return x.copy()
    if order == 1:
        return np.concatenate([x[:1], np.diff(x)])
    out = x.copy()
    out[2:] = x[2:] - 2 * x[1:-1] + x[:-2]
    return out


def _section(number: int, body: bytes) -> bytes:
    if len(body) % 2:
        body += b"\0"
    reserved = b"SCPECG" if number == 0 else b"\0" * 6
    header = struct.pack("<HIBB", number, 16 + len(body), 20, 20) + reserved
    crc = crc_ccitt(header + body)
    return struct.pack("<H", crc) + header + body


def _tag(number: int, value: bytes) -> bytes:
    return struct.pack("<BH", number, len(value)) + value


@dataclass(frozen=True)
class RefBeat:
    """Reference-beat subtraction: the beat (per lead), its fiducial (1-based) and the
    QRS complexes (type, subtraction start, fiducial, end, protected start, end; 1-based)."""

    beats: Mapping[str, np.ndarray]
    fiducial: int
    qrs: Sequence[tuple[int, int, int, int, int, int]]
    length_ms: int


def scp_file(
    leads: Mapping[str, np.ndarray],
    *,
    fs: float = 500.0,
    avm_nv: int = 2500,
    differences: int = 2,
    huffman: bool = True,
    patient_id: str = "SCP001",
    last_name: str = "Wang",
    first_name: str = "Wu",
    lead_ids: Mapping[str, int] | None = None,
    reference: RefBeat | None = None,
    decimation: int = 1,
    omit_rhythm: bool = False,
) -> bytes:
    """An SCP-ECG record of int samples (µV = sample × avm_nv / 1000)."""
    ids = dict(SCP_LEAD_IDS, **(lead_ids or {}))
    names = list(leads)
    n = len(next(iter(leads.values())))
    interval_us = round(1e6 / fs)
    sections: dict[int, bytes] = {}
    tags = (
        _tag(2, patient_id.encode() + b"\0")
        + _tag(0, last_name.encode() + b"\0")
        + _tag(1, first_name.encode() + b"\0")
        + _tag(8, bytes([1]))
        + _tag(25, struct.pack("<HBB", 2024, 3, 2))
        + _tag(26, bytes([8, 30, 15]))
        + _tag(255, b"")
    )
    sections[1] = tags
    if huffman:
        sections[2] = struct.pack("<H", 19999)
    flags = 0x04 | (len(names) << 3) | (0x01 if reference else 0)
    lead_defs = b"".join(struct.pack("<IIB", 1, n, ids[name]) for name in names)
    sections[3] = bytes([len(names), flags]) + lead_defs
    residual = {name: np.asarray(leads[name], dtype=np.int64).copy() for name in names}
    protected = np.zeros(n, dtype=bool)
    if reference is not None:
        qrs = reference.qrs
        body = struct.pack("<HHH", reference.length_ms, reference.fiducial, len(qrs))
        body += b"".join(struct.pack("<HIII", t, sb, fc, se) for t, sb, fc, se, _, _ in qrs)
        body += b"".join(struct.pack("<II", qb, qe) for *_, qb, qe in qrs)
        sections[4] = body
        for name in names:
            beat = np.asarray(reference.beats[name], dtype=np.int64)
            for t, sb, fc, se, _, _ in qrs:
                if t != 0:
                    continue
                for s in range(sb, se + 1):
                    at = s - fc + reference.fiducial - 1
                    if 0 <= at < beat.size:
                        residual[name][s - 1] -= beat[at]
        for *_, qb, qe in qrs:
            protected[qb - 1 : qe] = True
        encoded = [
            _encode(np.asarray(reference.beats[name], dtype=np.int64), differences, huffman)
            for name in names
        ]
        sections[5] = (
            struct.pack("<HHBB", avm_nv, interval_us, differences, 0)
            + struct.pack(f"<{len(names)}H", *(len(e) for e in encoded))
            + b"".join(encoded)
        )
    if decimation > 1:
        residual = {
            name: _decimate(values, protected, decimation) for name, values in residual.items()
        }
    if not omit_rhythm:
        encoded = [_encode(residual[name], differences, huffman) for name in names]
        sections[6] = (
            struct.pack("<HHBB", avm_nv, interval_us * decimation, differences, int(decimation > 1))
            + struct.pack(f"<{len(names)}H", *(len(e) for e in encoded))
            + b"".join(encoded)
        )
    # Section 0 points at sections 0–11; its own length is fixed, so indexes follow.
    order = [0, *sorted(sections)]
    built = {k: _section(k, body) for k, body in sections.items()}
    length0 = 16 + 10 * 12
    index = 7 + length0  # 1-based: after the record header (6 bytes) and section 0
    pointers = []
    positions = {}
    for k in order[1:]:
        positions[k] = index
        index += len(built[k])
    for k in range(12):
        if k == 0:
            pointers.append(struct.pack("<HII", 0, length0, 7))
        elif k in built:
            pointers.append(struct.pack("<HII", k, len(built[k]), positions[k]))
        else:
            pointers.append(struct.pack("<HII", k, 0, 0))
    section0 = _section(0, b"".join(pointers))
    body = section0 + b"".join(built[k] for k in order[1:])
    length = 6 + len(body)
    crc = crc_ccitt(struct.pack("<I", length) + body)
    return struct.pack("<HI", crc, length) + body


def _encode(values: np.ndarray, differences: int, huffman: bool) -> bytes:
    d = difference(values, differences)
    if huffman:
        return huffman_encode(d.tolist())
    return d.astype("<i2").tobytes()


def _decimate(values: np.ndarray, protected: np.ndarray, factor: int) -> np.ndarray:
    out: list[int] = []
    n = 0
    while n < values.size:
        if protected[n]:
            out.append(int(values[n]))
            n += 1
            continue
        end = n
        while end < values.size and not protected[end] and end - n < factor:
            end += 1
        out.append(round(float(np.mean(values[n:end]))))
        n = end
    return np.asarray(out, dtype=np.int64)


def rewrite_crc(data: bytes) -> bytes:
    """The record CRC recomputed (after a test edits the bytes)."""
    return struct.pack("<H", crc_ccitt(data[2:])) + data[2:]


# --- HL7 aECG ---------------------------------------------------------------------------------

_AECG_CODES = {
    "I": "MDC_ECG_LEAD_I", "II": "MDC_ECG_LEAD_II", "III": "MDC_ECG_LEAD_III",
    "aVR": "MDC_ECG_LEAD_AVR", "aVL": "MDC_ECG_LEAD_AVL", "aVF": "MDC_ECG_LEAD_AVF",
    **{f"V{k}": f"MDC_ECG_LEAD_V{k}" for k in range(1, 7)},
}  # fmt: skip


def aecg_xml(
    leads: Mapping[str, np.ndarray],
    *,
    fs: float = 500.0,
    scale_uv: float = 2.5,
    origin_uv: float = 0.0,
    codes: Mapping[str, str] | None = None,
    patient_id: str = "AECG001",
    name: tuple[str, str] = ("李", "四"),
) -> bytes:
    code_for = dict(_AECG_CODES, **(codes or {}))
    sequences = "".join(
        f"""<component><sequence><code code="{code_for[lead]}" codeSystem="2.16.840.1.113883.6.24"/>
<value xsi:type="SLIST_PQ"><origin value="{origin_uv:g}" unit="uV"/>
<scale value="{scale_uv:g}" unit="uV"/>
<digits>{" ".join(str(int(v)) for v in values)}</digits></value></sequence></component>"""
        for lead, values in leads.items()
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<id root="1.2.3"/><code code="93000" codeSystem="2.16.840.1.113883.6.12"/>
<effectiveTime><center value="20240302083015"/></effectiveTime>
<componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>
<id root="1.2.3.4" extension="{patient_id}"/>
<subjectDemographicPerson><name><family>{name[0]}</family><given>{name[1]}</given></name>
<administrativeGenderCode code="F"/><birthTime value="19600102"/></subjectDemographicPerson>
</trialSubject></subject></subjectAssignment></componentOf></timepointEvent></componentOf>
<component><series><code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>
<effectiveTime><low value="20240302083015"/></effectiveTime>
<component><sequenceSet>
<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>
<value xsi:type="GLIST_TS"><head value="20240302083015"/>
<increment value="{1.0 / fs:g}" unit="s"/></value>
</sequence></component>
{sequences}
</sequenceSet></component></series></component>
</AnnotatedECG>""".encode()


# --- Philips XML (XLI) ------------------------------------------------------------------------


def _lzw_encode(data: bytes, bits: int = 10) -> bytes:
    max_code = (1 << bits) - 2
    table = {bytes([i]): i for i in range(256)}
    next_code = 256
    codes: list[int] = []
    w = b""
    for byte in data:
        wc = w + bytes([byte])
        if wc in table:
            w = wc
            continue
        codes.append(table[w])
        if next_code <= max_code:
            table[wc] = next_code
            next_code += 1
        w = bytes([byte])
    if w:
        codes.append(table[w])
    stream = "".join(format(c, f"0{bits}b") for c in codes)
    stream += "0" * (-len(stream) % 8)
    return bytes(int(stream[i : i + 8], 2) for i in range(0, len(stream), 8))


def _xli_chunk(samples: np.ndarray) -> bytes:
    s = [int(v) for v in samples]
    n = len(s)
    first = 2 * s[1] - s[0] - s[2]
    u = [s[0], s[1]] + [2 * s[j] - s[j - 1] - s[j + 1] + 64 for j in range(2, n - 1)] + [0]
    high = bytes(((v & 0xFFFF) >> 8) for v in u)
    low = bytes((v & 0xFF) for v in u)
    chunk = _lzw_encode(high + low)
    return struct.pack("<iHh", len(chunk), 0, first) + chunk


def philips_xml(
    leads: Mapping[str, np.ndarray], *, fs: float = 500.0, resolution_uv: float = 5.0
) -> bytes:
    """A PhilipsECG 1.04 file with XLI-compressed leads (I, II, III, aVR, aVL, aVF first)."""
    names = list(leads)
    true = {k: np.asarray(v, dtype=np.int64) for k, v in leads.items()}
    stored = dict(true)
    # Philips stores the derived limb leads as residuals; sierraecg rebuilds them as
    # III = II − I − s, aVR = −s − ⌊(I+II)/2⌋, aVL = ⌊(I−III)/2⌋ − s, aVF = ⌊(II+III)/2⌋ − s.
    i, ii, iii = true["I"], true["II"], true["III"]
    stored["III"] = ii - i - iii
    stored["aVR"] = -true["aVR"] - np.floor((i + ii) / 2).astype(np.int64)
    stored["aVL"] = np.floor((i - iii) / 2).astype(np.int64) - true["aVL"]
    stored["aVF"] = np.floor((ii + iii) / 2).astype(np.int64) - true["aVF"]
    payload = b"".join(_xli_chunk(stored[name]) for name in names)
    n = len(next(iter(leads.values())))
    duration_ms = round(n / fs * 1000)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<restingecgdata>
<documentinfo><documenttype>PhilipsECG</documenttype><documentversion>1.04</documentversion></documentinfo>
<patient><generalpatientdata><patientid>PH001</patientid>
<name><lastname>Chen</lastname><firstname>Yi</firstname></name><sex>Male</sex>
</generalpatientdata></patient>
<dataacquisition date="2024-03-02" time="08:30:15"><signalcharacteristics>
<samplingrate>{fs:g}</samplingrate><resolution>{resolution_uv:g}</resolution>
<acquisitiontype>STD-12</acquisitiontype>
<numberchannelsallocated>{len(names)}</numberchannelsallocated></signalcharacteristics></dataacquisition>
<waveforms><parsedwaveforms dataencoding="Base64" compression="XLI"
 durationperchannel="{duration_ms}" numberofleads="{len(names)}"
 leadlabels="{" ".join(names)}">{base64.b64encode(payload).decode()}</parsedwaveforms></waveforms>
</restingecgdata>""".encode()


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values).astype("<i2").tobytes()).decode()


# --- GE MUSE XML ------------------------------------------------------------------------------


def muse_xml(
    leads: Mapping[str, np.ndarray], *, fs: float = 500.0, units_per_bit: float = 4.88
) -> bytes:
    lead_data = "".join(
        f"""<LeadData><LeadByteCountTotal>{2 * len(v)}</LeadByteCountTotal>
<LeadSampleCountTotal>{len(v)}</LeadSampleCountTotal>
<LeadAmplitudeUnitsPerBit>{units_per_bit:g}</LeadAmplitudeUnitsPerBit>
<LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits><LeadID>{name}</LeadID>
<WaveFormData>{_b64(v)}</WaveFormData></LeadData>"""
        for name, v in leads.items()
    )
    exponent = 0
    base = fs
    while base >= 1000 and math.isclose(base % 10, 0):
        base /= 10
        exponent += 1
    return f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<RestingECG><MuseInfo><MuseVersion>8.0.2.10132</MuseVersion></MuseInfo>
<PatientDemographics><PatientID>GE001</PatientID><PatientLastName>Zhou</PatientLastName><PatientFirstName>Qi</PatientFirstName>
<Gender>FEMALE</Gender><DateofBirth>01-02-1960</DateofBirth></PatientDemographics>
<TestDemographics><AcquisitionDevice>MAC5500</AcquisitionDevice><SiteName>Township</SiteName>
<AcquisitionTime>08:30:15</AcquisitionTime><AcquisitionDate>03-02-2024</AcquisitionDate></TestDemographics>
<Waveform><WaveformType>Rhythm</WaveformType><NumberofLeads>{len(leads)}</NumberofLeads><SampleType>CONTINUOUS_SAMPLES</SampleType>
<SampleBase>{base:g}</SampleBase><SampleExponent>{exponent}</SampleExponent>
<HighPassFilter>5</HighPassFilter><LowPassFilter>150</LowPassFilter><ACFilter>50</ACFilter>
{lead_data}</Waveform></RestingECG>""".encode()
