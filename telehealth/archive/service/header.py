"""Read what the index needs from a DICOM instance without decoding pixel data.

The bytes are kept as received; this module only looks. It also proves the stream is
structurally complete, because pydicom silently accepts a file cut off mid-element and an
archive must not answer Success for half an image.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.filereader import data_element_generator
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from telehealth.errors import Invalid

# Every transfer syntax pydicom knows, plus those newer than it. Bytes are stored as received,
# so accepting a syntax costs nothing; refusing one loses the study.
TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    [str(ts) for ts in AllTransferSyntaxes]
    + [
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
        "1.2.840.10008.1.2.4.203",  # HTJ2K
        "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
    ]
)

# PS3.5 §9.1: digits and dots, no empty components, at most 64 characters.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UNDEFINED = 0xFFFFFFFF


class MalformedInstance(Invalid):
    """The bytes are not a complete, parseable DICOM instance."""


class UnknownTransferSyntax(Invalid):
    """The instance is encoded in a transfer syntax the archive does not know."""


class MissingIdentifier(Invalid):
    """A UID the archive keys on is missing or not a valid UID."""


@dataclass(frozen=True)
class InstanceHeader:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    referring_physician: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    instance_number: int | None
    number_of_frames: int


def is_valid_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_UID_RE.match(value))


def parse_header(data: bytes | bytearray) -> InstanceHeader:
    """Parse the header of a Part 10 instance (preamble optional, file meta required).

    Raises MalformedInstance for unreadable or truncated bytes and MissingIdentifier for a
    missing or invalid Study/Series/SOP Instance UID.
    """
    # Every received instance comes through here: pydicom's reader and its per-element value
    # conversion cost ~1 ms for a CT slice; the plain reader below walks the same elements in
    # ~0.1 ms and gives up (to pydicom, which then decides) on anything it is not sure of.
    try:
        scanned = _scan(data)
    except _Unsure:
        scanned = None
    if scanned is None:
        return _parse_with_pydicom(data)
    meta, transfer_syntax, values = scanned
    return _header(values.get, meta.get, transfer_syntax)


def _parse_with_pydicom(data: bytes | bytearray) -> InstanceHeader:
    fp = io.BytesIO(data)
    try:
        ds = dcmread(fp, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on junk; all mean the same here
        raise MalformedInstance(f"not a readable DICOM instance: {exc}") from exc
    meta = ds.file_meta
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
    if not transfer_syntax:
        raise MalformedInstance("file meta has no Transfer Syntax UID")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise UnknownTransferSyntax(f"unknown transfer syntax {transfer_syntax}")
    _check_complete(data, UID(transfer_syntax))
    return _header(ds.get, meta.get, transfer_syntax)


def _header(
    get: Callable[..., Any], meta_get: Callable[..., Any], transfer_syntax: str
) -> InstanceHeader:
    """The header from element values looked up by keyword (`Dataset.get` or alike)."""

    def uid(keyword: str, fallback: str = "") -> str:
        value = str(get(keyword, "") or fallback).strip().rstrip("\x00")
        if not value:
            raise MissingIdentifier(f"{keyword} is missing")
        if not is_valid_uid(value):
            raise MissingIdentifier(f"{keyword} is not a valid UID")
        return value

    try:
        return InstanceHeader(
            sop_instance_uid=uid("SOPInstanceUID", str(meta_get("MediaStorageSOPInstanceUID", ""))),
            sop_class_uid=uid("SOPClassUID", str(meta_get("MediaStorageSOPClassUID", ""))),
            study_instance_uid=uid("StudyInstanceUID"),
            series_instance_uid=uid("SeriesInstanceUID"),
            transfer_syntax_uid=transfer_syntax,
            patient_id=_text(get, "PatientID", 64),
            patient_name=_text(get, "PatientName", 324),
            patient_birth_date=_text(get, "PatientBirthDate", 8),
            patient_sex=_text(get, "PatientSex", 16),
            study_date=_text(get, "StudyDate", 8),
            study_time=_text(get, "StudyTime", 16),
            accession_number=_text(get, "AccessionNumber", 64),
            study_description=_text(get, "StudyDescription", 200),
            referring_physician=_text(get, "ReferringPhysicianName", 324),
            modality=_text(get, "Modality", 16),
            series_number=_integer(get, "SeriesNumber"),
            series_description=_text(get, "SeriesDescription", 200),
            body_part=_text(get, "BodyPartExamined", 64),
            instance_number=_integer(get, "InstanceNumber"),
            number_of_frames=_integer(get, "NumberOfFrames") or 1,
        )
    except (ValueError, TypeError, LookupError) as exc:  # undecodable element values
        raise MalformedInstance(f"unreadable header element: {exc}") from exc


def _text(get: Callable[..., Any], keyword: str, limit: int) -> str:
    """An element as text, decoded with the instance's SpecificCharacterSet."""
    value: Any = get(keyword, "")
    text = "" if value is None else str(value)
    return text.replace("\x00", "").strip()[:limit]


def _integer(get: Callable[..., Any], keyword: str) -> int | None:
    try:
        value = get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _check_complete(data: bytes | bytearray, transfer_syntax: UID) -> None:
    """Walk every element of the dataset and check its value is wholly present.

    pydicom stops quietly at a short read and skips over values it defers; comparing each
    element's declared length with the bytes left catches a cut-off stream anywhere.
    """
    offset = dataset_offset(data)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # PS3.5 §A.5: raw deflate, no header
        try:
            body = inflater.decompress(data[offset:]) + inflater.flush()
        except zlib.error as exc:
            raise MalformedInstance(f"deflated dataset is corrupt: {exc}") from exc
        if not inflater.eof:
            raise MalformedInstance("deflated dataset is truncated")
        data, offset = body, 0
    # PS3.5 §10: every transfer syntax but the implicit and big-endian ones encodes the dataset
    # as explicit VR little endian, so a syntax newer than pydicom (say Deflated Image Frame
    # Compression, 1.2.840.10008.1.2.8.1) is still walkable.
    is_implicit = transfer_syntax == ImplicitVRLittleEndian
    is_little = transfer_syntax != ExplicitVRBigEndian
    total = len(data)
    fp = io.BytesIO(data)
    fp.seek(offset)
    try:
        for elem in data_element_generator(
            fp,
            is_implicit,
            is_little,
            defer_size=4096,
        ):
            if not isinstance(elem, RawDataElement) or elem.length == _UNDEFINED:
                continue  # sequences and encapsulated pixel data: read up to their delimiter
            if elem.value is None:
                if elem.value_tell + elem.length > total:
                    raise MalformedInstance(f"element {elem.tag} is truncated")
            elif len(elem.value) != elem.length:
                raise MalformedInstance(f"element {elem.tag} is truncated")
    except MalformedInstance:
        raise
    except Exception as exc:
        raise MalformedInstance(f"dataset is truncated or corrupt: {exc}") from exc
    if fp.tell() != total:
        raise MalformedInstance("dataset ends inside an element header")


def dataset_offset(data: bytes | bytearray) -> int:
    """Where the dataset starts: after the preamble, 'DICM' and the group 0002 file meta."""
    offset = 132 if data[128:132] == b"DICM" else 0
    fp = io.BytesIO(data)
    fp.seek(offset)
    for _ in data_element_generator(
        fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2
    ):
        pass
    return fp.tell()


# --- the plain reader -----------------------------------------------------------------------


class _Unsure(Exception):
    """The plain reader is not sure how pydicom reads this instance; pydicom reads it."""


_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ReferringPhysicianName",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "InstanceNumber",
    "NumberOfFrames",
)
# tag -> (keyword, the VR pydicom's dictionary gives it)
_WANTED: dict[int, tuple[str, str]] = {
    int(tag_for_keyword(k)): (k, dictionary_VR(k))  # type: ignore[arg-type]
    for k in _KEYWORDS
}
_META_WANTED = {
    0x00020002: "MediaStorageSOPClassUID",
    0x00020003: "MediaStorageSOPInstanceUID",
    0x00020010: "TransferSyntaxUID",
}
_PIXEL_DATA_TAGS = frozenset((0x7FE00008, 0x7FE00009, 0x7FE00010))  # where pydicom stops
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_VRS = frozenset(vr.value.encode() for vr in VR)
_LONG_LENGTH_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_IMPLICIT = struct.Struct("<HHI")  # group, element, 32-bit length (also items, delimiters)
_U32 = struct.Struct("<I")
# Transfer syntaxes whose datasets are explicit VR little endian and that pydicom knows.
_EXPLICIT_LITTLE = frozenset(
    str(ts)
    for ts in AllTransferSyntaxes
    if ts not in (ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
)
# Character sets without code extensions: pydicom decodes their values with one codec.
_PLAIN_CHARSETS = {
    term: python_encoding[term]
    for term in ("ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "GB18030", "GBK")
}
_PLAIN_INTEGER = re.compile(rb" *-?[0-9]{1,9} *")


def _scan(data: bytes | bytearray) -> tuple[dict[str, str], str, dict[str, Any]] | None:
    """File meta, transfer syntax and header values read without pydicom, with the stream
    walked to its end as _check_complete does; None when pydicom should read it."""
    try:
        return _scan_or_raise(data)
    except Exception:  # _Unsure, or anything a malformed stream trips (struct.error, ...)
        return None


def _scan_or_raise(data: bytes | bytearray) -> tuple[dict[str, str], str, dict[str, Any]]:
    if data[128:132] != b"DICM":
        raise _Unsure
    end = len(data)
    offset = 132
    meta: dict[str, str] = {}
    while offset + 8 <= end and data[offset : offset + 2] == b"\x02\x00":
        _group, element, vr, length = _EXPLICIT.unpack_from(data, offset)
        if vr not in _VRS:
            raise _Unsure
        start = offset + 8
        if vr in _LONG_LENGTH_VRS:
            (length,) = _U32.unpack_from(data, start)
            start += 4
        offset = start + length
        if length == 0xFFFFFFFF or offset > end:
            raise _Unsure
        keyword = _META_WANTED.get(0x00020000 | element)
        if keyword is not None:
            meta[keyword] = _plain_uid(bytes(data[start:offset]))
    transfer_syntax = meta.get("TransferSyntaxUID", "")
    if transfer_syntax == str(ImplicitVRLittleEndian):
        implicit = True
    elif transfer_syntax in _EXPLICIT_LITTLE and transfer_syntax in TRANSFER_SYNTAXES:
        implicit = False
    else:
        raise _Unsure  # big endian, deflated, unknown or missing: pydicom decides
    raw: dict[int, tuple[bytes | None, bytes]] = {}
    _walk(data, offset, end, implicit, raw, delimited=False)
    charset = raw.pop(0x00080005, None)
    if charset is None:
        encoding = python_encoding["ISO_IR 6"]
    else:
        encoding = _PLAIN_CHARSETS.get(_plain_uid(charset[1]), "")
        if not encoding or charset[0] not in (None, b"CS"):
            raise _Unsure
    values = {
        _WANTED[tag][0]: _value(_WANTED[tag][1], vr, value, encoding)
        for tag, (vr, value) in raw.items()
    }
    return meta, transfer_syntax, values


def _walk(
    data: bytes | bytearray,
    offset: int,
    end: int,
    implicit: bool,
    collect: dict[int, tuple[bytes | None, bytes]] | None,
    *,
    delimited: bool,
) -> int:
    """Walk the data elements of a dataset or item to `end` (or, `delimited`, to its item
    delimiter); return the offset after it. Raises _Unsure where pydicom might read otherwise
    or the stream is cut short."""
    first = True
    while offset < end:
        if offset + 8 > end:
            raise _Unsure
        group, element, length = _IMPLICIT.unpack_from(data, offset)
        vr: bytes | None = None
        start = offset + 8
        if group == 0xFFFE:  # item and delimiter tags carry no VR in either encoding
            if delimited and element == 0xE00D and length == 0:
                return start
            raise _Unsure
        vr_bytes = bytes(data[offset + 4 : offset + 6])
        # pydicom checks the first element to guess explicit or implicit VR (_is_implicit_vr).
        if first and implicit == (vr_bytes.isalpha() and vr_bytes.isupper()):
            raise _Unsure
        first = False
        if not implicit:
            vr = vr_bytes
            if vr not in _VRS:
                raise _Unsure
            if vr in _LONG_LENGTH_VRS:
                if start + 4 > end:
                    raise _Unsure
                (length,) = _U32.unpack_from(data, start)
                start += 4
            else:
                length = _EXPLICIT.unpack_from(data, offset)[3]
        tag = group << 16 | element
        if length == 0xFFFFFFFF:
            if vr == b"SQ" or (implicit and dictionary_vr(tag) == "SQ"):
                offset = _walk_sequence(data, start, end, implicit)
            elif vr in (b"OB", b"OW") and tag in _PIXEL_DATA_TAGS:
                offset = _walk_fragments(data, start, end)
            else:
                raise _Unsure
        else:
            offset = start + length
            if offset > end:
                raise _Unsure
            if collect is not None and tag in _WANTED:
                collect[tag] = (vr, bytes(data[start:offset]))
        if collect is not None and tag in _PIXEL_DATA_TAGS:
            collect = None  # dcmread(stop_before_pixels=True) sees nothing from here on
    if delimited:
        raise _Unsure
    return offset


def _walk_sequence(data: bytes | bytearray, offset: int, end: int, implicit: bool) -> int:
    """Walk the items of an undefined-length sequence up to and past its delimiter."""
    while True:
        if offset + 8 > end:
            raise _Unsure
        group, element, length = _IMPLICIT.unpack_from(data, offset)
        tag = group << 16 | element
        offset += 8
        if tag == _SEQUENCE_END and length == 0:
            return offset
        if tag != _ITEM:
            raise _Unsure
        if length == 0xFFFFFFFF:
            offset = _walk(data, offset, end, implicit, None, delimited=True)
        else:
            item_end = offset + length
            if item_end > end:
                raise _Unsure
            if _walk(data, offset, item_end, implicit, None, delimited=False) != item_end:
                raise _Unsure
            offset = item_end


def _walk_fragments(data: bytes | bytearray, offset: int, end: int) -> int:
    """Walk encapsulated pixel data items (PS3.5 §A.4) up to and past the delimiter."""
    while True:
        if offset + 8 > end:
            raise _Unsure
        group, element, length = _IMPLICIT.unpack_from(data, offset)
        tag = group << 16 | element
        offset += 8
        if tag == _SEQUENCE_END and length == 0:
            return offset
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise _Unsure
        offset += length
        if offset > end:
            raise _Unsure


def dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _plain_uid(raw: bytes) -> str:
    """A UI (or single CS) value as pydicom reads it: no trailing NULs or spaces."""
    if b"\\" in raw:
        raise _Unsure  # several values: pydicom makes a MultiValue
    return raw.decode("latin-1").rstrip("\x00 ")


def _value(dictionary: str, vr: bytes | None, raw: bytes, encoding: str) -> Any:
    """An element value equal to what pydicom's Dataset.get gives, for plain values only."""
    if (vr is not None and vr.decode() != dictionary) or b"\\" in raw or b"\x1b" in raw:
        raise _Unsure  # another VR, several values, or ISO 2022 code extensions
    if dictionary == "UI":
        return _plain_uid(raw)
    if dictionary == "IS":
        if not raw:
            return None
        if not _PLAIN_INTEGER.fullmatch(raw):
            raise _Unsure
        return int(raw)
    if dictionary == "PN":
        if b"=" in raw:
            raise _Unsure  # component groups: PersonName formats them
        return raw.rstrip(b"\x00 ").decode(encoding)
    if dictionary in ("SH", "LO"):
        return raw.decode(encoding)  # strict: what fails here pydicom decodes with a warning
    if dictionary in ("CS", "DA", "TM"):
        return raw.decode("latin-1")  # pydicom's default encoding for these VRs
    raise _Unsure
