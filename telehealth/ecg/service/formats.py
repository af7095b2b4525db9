"""Which ECG format a file is, told by its content (never by its name), and reading it."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum

from telehealth.ecg.service.aecg import read_aecg
from telehealth.ecg.service.dicom_waveform import read_dicom_ecg, rhythm_of
from telehealth.ecg.service.scp import looks_like_scp, read_scp
from telehealth.ecg.service.vendor_xml import read_muse, read_philips
from telehealth.ecg.service.waveform import EcgRecord, UnsupportedEcgFormat
from telehealth.ecg.service.wfdb_record import (
    ZIP_MAGIC,
    is_wfdb_zip,
    looks_like_header,
    read_wfdb,
    read_wfdb_zip,
)


class EcgFormat(StrEnum):
    DICOM = "dicom"
    HL7_AECG = "hl7-aecg"
    SCP_ECG = "scp-ecg"
    PHILIPS_XML = "philips-xml"
    GE_MUSE_XML = "ge-muse-xml"
    WFDB = "wfdb"  # PhysioNet record: a ZIP of .hea + .dat [+ annotations]


EXTENSIONS = {
    EcgFormat.DICOM: ".dcm",
    EcgFormat.HL7_AECG: ".xml",
    EcgFormat.SCP_ECG: ".scp",
    EcgFormat.PHILIPS_XML: ".xml",
    EcgFormat.GE_MUSE_XML: ".xml",
    EcgFormat.WFDB: ".zip",
}
MEDIA_TYPES = {
    EcgFormat.DICOM: "application/dicom",
    EcgFormat.HL7_AECG: "application/xml",
    EcgFormat.SCP_ECG: "application/octet-stream",
    EcgFormat.PHILIPS_XML: "application/xml",
    EcgFormat.GE_MUSE_XML: "application/xml",
    EcgFormat.WFDB: "application/zip",
}
_XML_ROOTS = {
    "AnnotatedECG": EcgFormat.HL7_AECG,
    "restingecgdata": EcgFormat.PHILIPS_XML,
    "RestingECG": EcgFormat.GE_MUSE_XML,
}
# The first element after the XML declaration, comments and a DOCTYPE: its local name.
_ROOT = re.compile(rb"<(?![?!])(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")


def _xml_head(data: bytes) -> bytes:
    head = data[:8192]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return head.decode("utf-16", errors="ignore").encode("utf-8")
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")


def detect_format(data: bytes) -> EcgFormat:
    """Raises UnsupportedEcgFormat when the content is none of the formats read here."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return EcgFormat.DICOM
    if looks_like_scp(data):
        return EcgFormat.SCP_ECG
    # A WFDB record is told by its header's content, whatever the files are called.
    if data.startswith(ZIP_MAGIC):
        if is_wfdb_zip(data):
            return EcgFormat.WFDB
        raise UnsupportedEcgFormat("a ZIP is read only when it holds a WFDB record (.hea)")
    if looks_like_header(data):
        return EcgFormat.WFDB
    head = _xml_head(data)
    if head.startswith(b"<"):
        match = _ROOT.search(head)
        if match is not None:
            root = match.group(1).decode("ascii", errors="replace")
            if root in _XML_ROOTS:
                return _XML_ROOTS[root]
            raise UnsupportedEcgFormat(
                f"XML with root element <{root}> is not an ECG format the hub reads "
                "(HL7 aECG AnnotatedECG, Philips restingecgdata, GE MUSE RestingECG)"
            )
    raise UnsupportedEcgFormat(
        "the file is not DICOM, HL7 aECG, SCP-ECG, Philips XML, GE MUSE XML or a WFDB record"
    )


_READERS: dict[EcgFormat, Callable[[bytes], EcgRecord]] = {
    EcgFormat.DICOM: lambda data: rhythm_of(read_dicom_ecg(data)),
    EcgFormat.HL7_AECG: read_aecg,
    EcgFormat.SCP_ECG: read_scp,
    EcgFormat.PHILIPS_XML: read_philips,
    EcgFormat.GE_MUSE_XML: read_muse,
    # A header alone names its .dat, which is then missing: read_wfdb says so.
    EcgFormat.WFDB: lambda data: (
        read_wfdb_zip(data) if data.startswith(ZIP_MAGIC) else read_wfdb({"record.hea": data})
    ),
}


def read_ecg(data: bytes) -> tuple[EcgFormat, EcgRecord]:
    """The file's format and its (rhythm) record. Raises the EcgUnreadable family."""
    kind = detect_format(data)
    return kind, _READERS[kind](data)
