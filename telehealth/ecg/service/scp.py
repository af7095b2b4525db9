"""SCP-ECG reader (EN 1064 / ISO 11073-91064), sections 0–6. PyPI has no SCP-ECG reader.

- Record and section CRCs (CRC-CCITT, initial 0xFFFF) are checked; a mismatch is an error.
- Section 1 (patient and acquisition tags), 2 (Huffman tables, or 19999 = the standard's
  default table), 3 (lead definitions), 4 (QRS locations, subtraction and protected zones),
  5 (reference beats) and 6 (rhythm data) are read.
- Rhythm data may be Huffman coded, first or second differences, residuals after
  reference-beat subtraction (section 3 flag bit 0), and decimated outside the protected
  zones ("bimodal" compression, section 6 byte 6). The decimation factor is section 6's
  sample interval over section 5's; decimated stretches are linearly interpolated, so only
  the protected zones (the QRS complexes) come back sample-exact.

All numbers are little-endian. Index fields of section 0 are 1-based byte positions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from telehealth.ecg.service.waveform import (
    LEAD_NUMBERS,
    Acquisition,
    EcgChecksumMismatch,
    EcgRecord,
    EcgUnreadable,
    Lead,
    NoWaveform,
    Patient,
    TruncatedEcg,
    UnknownLead,
)

DEFAULT_TABLE_MARKER = 19999
_SECTION_HEADER = 16

# EN 1064 Annex C default Huffman table: (prefix bits, total bits, mode, base value, code).
# Codes are given here as they appear in the bit stream (most significant bit first).
DEFAULT_TABLE: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 1, 1, 0, 0b0),
    (3, 3, 1, 1, 0b100),
    (3, 3, 1, -1, 0b101),
    (4, 4, 1, 2, 0b1100),
    (4, 4, 1, -2, 0b1101),
    (5, 5, 1, 3, 0b11100),
    (5, 5, 1, -3, 0b11101),
    (6, 6, 1, 4, 0b111100),
    (6, 6, 1, -4, 0b111101),
    (7, 7, 1, 5, 0b1111100),
    (7, 7, 1, -5, 0b1111101),
    (8, 8, 1, 6, 0b11111100),
    (8, 8, 1, -6, 0b11111101),
    (9, 9, 1, 7, 0b111111100),
    (9, 9, 1, -7, 0b111111101),
    (10, 10, 1, 8, 0b1111111100),
    (10, 10, 1, -8, 0b1111111101),
    (10, 18, 1, 0, 0b1111111110),  # followed by the value in 8 bits
    (10, 26, 1, 0, 0b1111111111),  # followed by the value in 16 bits
)


def crc_ccitt(data: bytes | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-CCITT (polynomial 0x1021, initial 0xFFFF), as EN 1064 §5.3.2 specifies."""
    table = _CRC_TABLE
    for byte in bytes(data):
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        table.append(c & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


# --- Huffman ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Code:
    prefix_bits: int
    total_bits: int
    mode: int  # 1: a value; 0: switch to table number `value`
    value: int
    code: int  # as in the bit stream, MSB first


@dataclass
class _Table:
    """A Huffman table with a lookup by the next `max_prefix` bits of the stream."""

    codes: list[_Code]
    max_prefix: int = 0
    lookup: list[_Code | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.max_prefix = max((c.prefix_bits for c in self.codes), default=0)
        if not (0 < self.max_prefix <= 16):
            raise EcgUnreadable(f"SCP-ECG Huffman table with {self.max_prefix}-bit prefixes")
        self.lookup = [None] * (1 << self.max_prefix)
        for c in self.codes:
            if c.prefix_bits == 0 or c.code >> c.prefix_bits:
                raise EcgUnreadable("SCP-ECG Huffman table has a malformed code")
            shift = self.max_prefix - c.prefix_bits
            for k in range(c.code << shift, (c.code + 1) << shift):
                if self.lookup[k] is None:
                    self.lookup[k] = c


def _reverse(value: int, bits: int) -> int:
    out = 0
    for _ in range(bits):
        out = (out << 1) | (value & 1)
        value >>= 1
    return out


DEFAULT = _Table([_Code(*entry) for entry in DEFAULT_TABLE])


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def huffman_decode(data: bytes, count: int, tables: list[_Table]) -> np.ndarray:
    """Decode `count` values. Raises TruncatedEcg, EcgUnreadable (a code in no table)."""
    out = np.empty(count, dtype=np.int64)
    padded = data + b"\0\0\0\0"
    length = len(data) * 8
    from_bytes = int.from_bytes
    table = tables[0]
    lookup, width = table.lookup, table.max_prefix
    pos = i = 0
    # The bit reader is inlined: this loop runs once per sample of every lead.
    while i < count:
        byte = pos >> 3
        window = (from_bytes(padded[byte : byte + 4], "big") << (pos & 7)) & 0xFFFFFFFF
        entry = lookup[window >> (32 - width)]
        if entry is None:
            raise EcgUnreadable(f"SCP-ECG Huffman code at bit {pos} is in no table")
        pos += entry.prefix_bits
        if pos > length:
            raise TruncatedEcg("SCP-ECG lead data ends in the middle of a code")
        if entry.mode == 0:
            if not (1 <= entry.value <= len(tables)):
                raise EcgUnreadable(f"SCP-ECG Huffman switch to missing table {entry.value}")
            table = tables[entry.value - 1]
            lookup, width = table.lookup, table.max_prefix
            continue
        extra = entry.total_bits - entry.prefix_bits
        if extra > 0:
            if pos + extra > length:
                raise TruncatedEcg("SCP-ECG lead data ends in the middle of a value")
            value = 0
            for _ in range(extra):
                value = (value << 1) | ((padded[pos >> 3] >> (7 - (pos & 7))) & 1)
                pos += 1
            out[i] = _signed(value, extra)
        else:
            out[i] = entry.value
        i += 1
    return out


def _undifference(values: np.ndarray, order: int) -> np.ndarray:
    """Undo first or second differences (EN 1064 §5.7.2)."""
    if order == 0 or values.size == 0:
        return values
    if order == 1:
        return np.cumsum(values)
    if order == 2:
        if values.size < 2:
            return values
        steps = np.empty(values.size - 1, dtype=np.int64)
        steps[0] = values[1] - values[0]
        steps[1:] = values[2:]
        steps = np.cumsum(steps)  # x[n] − x[n−1]
        return np.concatenate([[values[0]], values[0] + np.cumsum(steps)])
    raise EcgUnreadable(f"SCP-ECG difference encoding {order} is not 0, 1 or 2")


# --- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LeadDef:
    start: int  # 1-based sample numbers, inclusive
    end: int
    lead_id: int


@dataclass(frozen=True)
class _Qrs:
    beat_type: int
    subtraction_start: int  # 1-based sample numbers
    fiducial: int
    subtraction_end: int
    protected_start: int
    protected_end: int


def _u(data: memoryview, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def _sections(data: bytes) -> dict[int, memoryview]:
    """The record's sections by number, each with its 16-byte header; CRCs checked."""
    if len(data) < 6 + _SECTION_HEADER + 10:
        raise TruncatedEcg(f"SCP-ECG file of {len(data)} bytes is too short")
    record_crc, record_length = struct.unpack_from("<HI", data, 0)
    if record_length > len(data):
        raise TruncatedEcg(
            f"SCP-ECG record declares {record_length} bytes but the file has {len(data)}"
        )
    view = memoryview(data)[:record_length]
    if crc_ccitt(view[2:]) != record_crc:
        raise EcgChecksumMismatch("SCP-ECG record CRC does not match its content")
    section0 = view[6:]
    if _u(section0, 2, 2) != 0:
        raise EcgUnreadable("SCP-ECG record does not start with section 0")
    length0 = _u(section0, 4, 4)
    if length0 < _SECTION_HEADER or 6 + length0 > record_length:
        raise TruncatedEcg("SCP-ECG section 0 is longer than the record")
    sections: dict[int, memoryview] = {}
    pointers = section0[_SECTION_HEADER:length0]
    for k in range(0, len(pointers) - 9, 10):
        number, length, index = struct.unpack_from("<HII", pointers, k)
        if length == 0 or index == 0:
            continue
        start = index - 1
        if start + length > record_length:
            raise TruncatedEcg(
                f"SCP-ECG section {number} ({length} bytes at byte {index}) runs past the end"
            )
        section = view[start : start + length]
        if _u(section, 2, 2) != number:
            raise EcgUnreadable(f"SCP-ECG pointer to section {number} finds another section")
        if _u(section, 4, 4) != length:
            raise EcgUnreadable(f"SCP-ECG section {number} length disagrees with section 0")
        if crc_ccitt(section[2:]) != _u(section, 0, 2):
            raise EcgChecksumMismatch(f"SCP-ECG section {number} CRC does not match its content")
        sections[number] = section
    return sections


def _text(value: bytes) -> str:
    value = value.split(b"\0", 1)[0]
    for encoding in ("utf-8", "gb18030"):
        try:
            return value.decode(encoding).strip()
        except UnicodeDecodeError:
            continue
    return value.decode("latin-1").strip()


_SEX = {1: "M", 2: "F"}
_AGE_UNITS = {1: "Y", 2: "M", 3: "W", 4: "D"}


def _section1(section: memoryview | None) -> tuple[Patient, Acquisition, dict[str, float]]:
    """Patient and acquisition tags (EN 1064 §5.5); the filters as {low_hz, high_hz, notch}."""
    if section is None:
        return Patient(), Acquisition(), {}
    body = bytes(section[_SECTION_HEADER:])
    tags: dict[int, bytes] = {}
    k = 0
    while k + 3 <= len(body):
        tag, length = body[k], int.from_bytes(body[k + 1 : k + 3], "little")
        if tag == 255:
            break
        if k + 3 + length > len(body):
            raise TruncatedEcg(f"SCP-ECG section 1 tag {tag} runs past the section")
        tags.setdefault(tag, body[k + 3 : k + 3 + length])
        k += 3 + length
    last, first = _text(tags.get(0, b"")), _text(tags.get(1, b""))
    birth = ""
    if len(tags.get(5, b"")) >= 4:
        year, month, day = struct.unpack_from("<HBB", tags[5])
        if year:
            birth = f"{year:04d}{month:02d}{day:02d}"
    age = ""
    if len(tags.get(4, b"")) >= 3:
        value, unit = struct.unpack_from("<HB", tags[4])
        if value and unit in _AGE_UNITS:
            age = f"{min(value, 999):03d}{_AGE_UNITS[unit]}"
    when = ""
    if len(tags.get(25, b"")) >= 4:
        year, month, day = struct.unpack_from("<HBB", tags[25])
        when = f"{year:04d}{month:02d}{day:02d}"
        if len(tags.get(26, b"")) >= 3:
            hour, minute, second = tags[26][:3]
            when += f"{hour:02d}{minute:02d}{second:02d}"
    device = manufacturer = software = ""
    if len(tags.get(14, b"")) >= 36:
        device_tag = tags[14]
        device = _text(device_tag[8:14])
        strings = [s for s in (_text(p) for p in device_tag[36:].split(b"\0")) if s]
        manufacturer = strings[-1] if strings else ""
        software = strings[2] if len(strings) > 2 else ""
    filters: dict[str, float] = {}
    if len(tags.get(27, b"")) >= 2:
        high_pass = int.from_bytes(tags[27][:2], "little")  # 1/100 Hz
        if high_pass:
            filters["low_hz"] = high_pass / 100.0
    if len(tags.get(28, b"")) >= 2:
        low_pass = int.from_bytes(tags[28][:2], "little")
        if low_pass:
            filters["high_hz"] = float(low_pass)
    if tags.get(29):
        bitmap = tags[29][0]
        if bitmap & 0x02:
            filters["notch_hz"] = 50.0
        elif bitmap & 0x01:
            filters["notch_hz"] = 60.0
    patient = Patient(
        patient_id=_text(tags.get(2, b"")),
        name="^".join(p for p in (last, first) if p) if first else last,
        birth_date=birth,
        sex=_SEX.get(tags.get(8, b"\0")[0] if tags.get(8) else 0, ""),
        age=age,
    )
    acquisition = Acquisition(
        when=when,
        institution=_text(tags.get(16, b"")),
        department=_text(tags.get(18, b"")),
        device=device,
        manufacturer=manufacturer,
        software=software,
        referring_physician=_text(tags.get(20, b"")),
        operator=_text(tags.get(22, b"")),
    )
    return patient, acquisition, filters


def _section2(section: memoryview | None) -> list[_Table] | None:
    """The Huffman tables; None when the data are not Huffman coded (no section 2)."""
    if section is None:
        return None
    body = section[_SECTION_HEADER:]
    if len(body) < 2:
        raise TruncatedEcg("SCP-ECG section 2 has no table count")
    count = _u(body, 0, 2)
    if count == DEFAULT_TABLE_MARKER:
        return [DEFAULT]
    tables: list[_Table] = []
    k = 2
    for _ in range(count):
        if k + 2 > len(body):
            raise TruncatedEcg("SCP-ECG section 2 ends inside a table")
        entries = _u(body, k, 2)
        k += 2
        codes = []
        for _ in range(entries):
            if k + 9 > len(body):
                raise TruncatedEcg("SCP-ECG section 2 ends inside a code structure")
            prefix, total, mode = body[k], body[k + 1], body[k + 2]
            value = struct.unpack_from("<h", body, k + 3)[0]
            code = _u(body, k + 5, 4)
            # Base codes are stored with their first bit in the least significant place.
            codes.append(_Code(prefix, total, mode, value, _reverse(code, prefix)))
            k += 9
        tables.append(_Table(codes))
    if not tables:
        raise EcgUnreadable("SCP-ECG section 2 declares no Huffman table")
    return tables


def _section3(section: memoryview | None) -> tuple[list[_LeadDef], bool]:
    if section is None:
        raise NoWaveform("SCP-ECG file has no lead definition (section 3)")
    body = section[_SECTION_HEADER:]
    if len(body) < 2:
        raise TruncatedEcg("SCP-ECG section 3 is empty")
    count, flags = body[0], body[1]
    if len(body) < 2 + 9 * count:
        raise TruncatedEcg(f"SCP-ECG section 3 is too short for {count} leads")
    leads = [_LeadDef(*struct.unpack_from("<IIB", body, 2 + 9 * k)) for k in range(count)]
    if not leads:
        raise NoWaveform("SCP-ECG section 3 defines no leads")
    return leads, bool(flags & 0x01)


def _section4(section: memoryview | None) -> tuple[int, list[_Qrs]]:
    """(reference-beat fiducial sample, QRS complexes) from section 4."""
    if section is None:
        return 0, []
    body = section[_SECTION_HEADER:]
    if len(body) < 6:
        raise TruncatedEcg("SCP-ECG section 4 is too short")
    _, fiducial, count = struct.unpack_from("<HHH", body, 0)
    need = 6 + 14 * count + 8 * count
    if len(body) < 6 + 14 * count:
        raise TruncatedEcg(f"SCP-ECG section 4 is too short for {count} QRS complexes")
    beats = [struct.unpack_from("<HIII", body, 6 + 14 * k) for k in range(count)]
    protected = [(0, 0)] * count
    if len(body) >= need:
        base = 6 + 14 * count
        protected = [struct.unpack_from("<II", body, base + 8 * k) for k in range(count)]
    qrs = [_Qrs(b[0], b[1], b[2], b[3], p[0], p[1]) for b, p in zip(beats, protected, strict=True)]
    return fiducial, qrs


@dataclass(frozen=True)
class _Encoded:
    avm_nv: int  # amplitude value multiplier: nV per unit
    interval_us: int
    differences: int
    bimodal: bool
    lengths: list[int]
    data: memoryview


def _encoded(section: memoryview, leads: int, number: int) -> _Encoded:
    body = section[_SECTION_HEADER:]
    if len(body) < 6 + 2 * leads:
        raise TruncatedEcg(f"SCP-ECG section {number} is too short for its header")
    avm, interval, differences, flag = struct.unpack_from("<HHBB", body, 0)
    lengths = list(struct.unpack_from(f"<{leads}H", body, 6))
    data = body[6 + 2 * leads :]
    if sum(lengths) > len(data):
        raise TruncatedEcg(
            f"SCP-ECG section {number} declares {sum(lengths)} bytes of lead data, has {len(data)}"
        )
    if avm == 0 or interval == 0:
        raise EcgUnreadable(f"SCP-ECG section {number} has no amplitude multiplier or interval")
    return _Encoded(avm, interval, differences, bool(flag) and number == 6, lengths, data)


def _decode_leads(
    encoded: _Encoded, counts: list[int], tables: list[_Table] | None
) -> list[np.ndarray]:
    out = []
    offset = 0
    for length, count in zip(encoded.lengths, counts, strict=True):
        chunk = bytes(encoded.data[offset : offset + length])
        offset += length
        if tables is None:
            if length < 2 * count:
                raise TruncatedEcg(f"SCP-ECG lead data has {length} bytes for {count} samples")
            values = np.frombuffer(chunk[: 2 * count], dtype="<i2").astype(np.int64)
        else:
            values = huffman_decode(chunk, count, tables)
        out.append(_undifference(values, encoded.differences))
    return out


def _protected_mask(total: int, qrs: list[_Qrs]) -> np.ndarray:
    mask = np.zeros(total, dtype=bool)
    for beat in qrs:
        if beat.protected_start and beat.protected_end >= beat.protected_start:
            mask[max(0, beat.protected_start - 1) : min(total, beat.protected_end)] = True
    return mask


def _decimated_count(mask: np.ndarray, factor: int) -> int:
    count, n, total = 0, 0, mask.size
    while n < total:
        if mask[n]:
            count += 1
            n += 1
            continue
        run = n
        while run < total and not mask[run] and run - n < factor:
            run += 1
        count += 1
        n = run
    return count


def _undecimate(stored: np.ndarray, mask: np.ndarray, factor: int) -> np.ndarray:
    """Full-rate residual from bimodal data: exact in protected zones, interpolated elsewhere."""
    total = mask.size
    positions: list[float] = []
    values: list[float] = []
    exact = np.zeros(total)
    k = n = 0
    while n < total:
        if mask[n]:
            exact[n] = stored[k]
            positions.append(float(n))
            values.append(float(stored[k]))
            k += 1
            n += 1
            continue
        run = n
        while run < total and not mask[run] and run - n < factor:
            run += 1
        positions.append((n + run - 1) / 2.0)  # the block's value stands for its middle
        values.append(float(stored[k]))
        k += 1
        n = run
    out = np.interp(np.arange(total), positions, values)
    out[mask] = exact[mask]
    return out


def read_scp(data: bytes) -> EcgRecord:
    """An SCP-ECG file as a record. Raises TruncatedEcg, EcgChecksumMismatch, UnknownLead,
    NoWaveform, EcgUnreadable — each naming the problem."""
    sections = _sections(data)
    patient, acquisition, filters = _section1(sections.get(1))
    tables = _section2(sections.get(2))
    lead_defs, subtracted = _section3(sections.get(3))
    names = []
    for lead in lead_defs:
        if lead.lead_id not in LEAD_NUMBERS:
            raise UnknownLead(f"SCP-ECG section 3: unknown lead code {lead.lead_id}")
        names.append(LEAD_NUMBERS[lead.lead_id])
    if len(set(names)) != len(names):
        raise EcgUnreadable("SCP-ECG section 3 names a lead twice")
    starts = {lead.start for lead in lead_defs}
    ends = {lead.end for lead in lead_defs}
    if len(starts) != 1 or len(ends) != 1:
        raise EcgUnreadable("SCP-ECG leads were not recorded over the same samples")
    total = lead_defs[0].end - lead_defs[0].start + 1
    if total <= 0:
        raise NoWaveform("SCP-ECG section 3 defines leads without samples")
    if 6 not in sections:
        raise NoWaveform("SCP-ECG file has no rhythm data (section 6)")
    rhythm = _encoded(sections[6], len(lead_defs), 6)

    fiducial, qrs = _section4(sections.get(4))
    reference: list[np.ndarray] | None = None
    median: _Encoded | None = None
    if subtracted:
        if 5 not in sections or not qrs:
            raise EcgUnreadable("SCP-ECG uses reference-beat subtraction but lacks section 4 or 5")
        median = _encoded(sections[5], len(lead_defs), 5)
        length_ms = _u(sections[4], _SECTION_HEADER, 2)
        ref_count = round(length_ms * 1000 / median.interval_us)
        reference = _decode_leads(median, [ref_count] * len(lead_defs), tables)

    factor = 1
    if rhythm.bimodal:
        if median is None:
            raise EcgUnreadable("SCP-ECG bimodal compression without reference beats")
        factor = max(1, round(rhythm.interval_us / median.interval_us))
    mask = _protected_mask(total, qrs)
    count = _decimated_count(mask, factor) if factor > 1 else total
    residuals = _decode_leads(rhythm, [count] * len(lead_defs), tables)
    interval = median.interval_us if factor > 1 and median else rhythm.interval_us

    leads = []
    exact = True
    for k, name in enumerate(names):
        values: np.ndarray = residuals[k]
        if factor > 1:
            values = _undecimate(values, mask, factor)
            exact = False
        if reference is not None and median is not None:
            values = values.astype(np.float64)
            beat = reference[k] * (median.avm_nv / rhythm.avm_nv)
            for complex_ in qrs:
                if complex_.beat_type != 0:
                    continue  # only type-0 beats had the reference subtracted
                for s in range(
                    max(1, complex_.subtraction_start), min(total, complex_.subtraction_end) + 1
                ):
                    at = s - complex_.fiducial + fiducial - 1
                    if 0 <= at < beat.size:
                        values[s - 1] += beat[at]
            if exact and median.avm_nv == rhythm.avm_nv:
                values = np.rint(values).astype(np.int64)
        leads.append(
            Lead(
                name=name,
                samples=values,
                scale_uv=rhythm.avm_nv / 1000.0,
                low_hz=filters.get("low_hz"),
                high_hz=filters.get("high_hz"),
                notch_hz=filters.get("notch_hz"),
            )
        )
    return EcgRecord(
        leads=tuple(leads),
        sampling_frequency=1_000_000.0 / interval,
        patient=patient,
        acquisition=acquisition,
        source_format="scp-ecg",
    )


def looks_like_scp(data: bytes) -> bool:
    """Section 0 at byte 6 with the "SCPECG" mark, and a record length that fits."""
    if len(data) < 6 + _SECTION_HEADER:
        return False
    section_id = int.from_bytes(data[8:10], "little")
    return section_id == 0 and data[16:22] == b"SCPECG"
