"""Read what the index needs from a DICOM instance without decoding pixel data.

The bytes are kept as received; this module only looks. It also proves the stream is
structurally complete, because pydicom silently accepts a file cut off mid-element and an
archive must not answer Success for half an image.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

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


def parse_header(data: bytes) -> InstanceHeader:
    """Parse the header of a Part 10 instance (preamble optional, file meta required).

    Raises MalformedInstance for unreadable or truncated bytes and MissingIdentifier for a
    missing or invalid Study/Series/SOP Instance UID.
    """
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

    def uid(keyword: str, fallback: str = "") -> str:
        value = str(ds.get(keyword, "") or fallback).strip().rstrip("\x00")
        if not value:
            raise MissingIdentifier(f"{keyword} is missing")
        if not is_valid_uid(value):
            raise MissingIdentifier(f"{keyword} is not a valid UID")
        return value

    try:
        return InstanceHeader(
            sop_instance_uid=uid("SOPInstanceUID", str(meta.get("MediaStorageSOPInstanceUID", ""))),
            sop_class_uid=uid("SOPClassUID", str(meta.get("MediaStorageSOPClassUID", ""))),
            study_instance_uid=uid("StudyInstanceUID"),
            series_instance_uid=uid("SeriesInstanceUID"),
            transfer_syntax_uid=transfer_syntax,
            patient_id=_text(ds, "PatientID", 64),
            patient_name=_text(ds, "PatientName", 324),
            patient_birth_date=_text(ds, "PatientBirthDate", 8),
            patient_sex=_text(ds, "PatientSex", 16),
            study_date=_text(ds, "StudyDate", 8),
            study_time=_text(ds, "StudyTime", 16),
            accession_number=_text(ds, "AccessionNumber", 64),
            study_description=_text(ds, "StudyDescription", 200),
            referring_physician=_text(ds, "ReferringPhysicianName", 324),
            modality=_text(ds, "Modality", 16),
            series_number=_integer(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription", 200),
            body_part=_text(ds, "BodyPartExamined", 64),
            instance_number=_integer(ds, "InstanceNumber"),
            number_of_frames=_integer(ds, "NumberOfFrames") or 1,
        )
    except (ValueError, TypeError, LookupError) as exc:  # undecodable element values
        raise MalformedInstance(f"unreadable header element: {exc}") from exc


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    """An element as text, decoded with the instance's SpecificCharacterSet."""
    value: Any = ds.get(keyword, "")
    text = "" if value is None else str(value)
    return text.replace("\x00", "").strip()[:limit]


def _integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _check_complete(data: bytes, transfer_syntax: UID) -> None:
    """Walk every element of the dataset and check its value is wholly present.

    pydicom stops quietly at a short read and skips over values it defers; comparing each
    element's declared length with the bytes left catches a cut-off stream anywhere.
    """
    offset = _dataset_offset(data)
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


def _dataset_offset(data: bytes) -> int:
    """Where the dataset starts: after the preamble, 'DICM' and the group 0002 file meta."""
    offset = 132 if data[128:132] == b"DICM" else 0
    fp = io.BytesIO(data)
    fp.seek(offset)
    for _ in data_element_generator(
        fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2
    ):
        pass
    return fp.tell()
