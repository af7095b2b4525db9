"""Query/retrieve identifiers (PS3.4 C.4, C.6): information models, levels, statuses, and
decoding a C-FIND/C-GET/C-MOVE identifier. Shared by dicom_node.find and dicom_node.retrieve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from telehealth.dicomweb.service.qido import Level
from telehealth.errors import DomainError, wire_status

if TYPE_CHECKING:
    from pynetdicom.events import Event


log = logging.getLogger(__name__)

# --- information models and levels (PS3.4 C.6) -----------------------------------------------

PATIENT_ROOT = "PATIENT"
STUDY_ROOT = "STUDY"
_MODEL_OF: dict[str, str] = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT,
    PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
    StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT,
    StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT,
}
# The SOP classes the node offers; server.py adds them as supported contexts.
SOP_CLASSES: tuple[str, ...] = tuple(_MODEL_OF)
RETRIEVE_SOP_CLASSES = frozenset(
    {
        PatientRootQueryRetrieveInformationModelGet,
        PatientRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    }
)

_LEVELS: dict[str, Level] = {
    "PATIENT": Level.PATIENT,
    "STUDY": Level.STUDY,
    "SERIES": Level.SERIES,
    "IMAGE": Level.INSTANCE,
}
# The unique key of each level (PS3.4 C.6.1, C.6.2): what a retrieve names.
UNIQUE_KEY: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}
# Statuses (PS3.4 C.4.1, C.4.2, C.4.3; PS3.7 Annex C).
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
SUB_OPERATIONS_FAILED = 0xA702  # Refused: Out of Resources, unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
WARNING_SOME_FAILED = 0xB000  # Sub-operations complete, one or more failures or warnings
NOT_AUTHORISED = 0x0124
MAX_SUB_OPERATIONS = 0xFFFF  # the counts are US (PS3.7 Table E.1-1)


class Refused(Exception):
    """A request answered with a failure status and an Error Comment, before any match."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status


def status(code: int, comment: str = "") -> Dataset:
    """A status with an Error Comment (LO, 64 characters) so the peer sees why."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


def refusal(exc: Exception) -> Dataset:
    if isinstance(exc, Refused):
        return status(exc.status, str(exc))
    if isinstance(exc, DomainError):
        return status(wire_status(exc)[1], str(exc))
    log.error("query/retrieve failed unexpectedly", exc_info=exc)
    return status(PROCESSING_FAILURE, "processing failure")


# --- identifiers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A decoded C-FIND/C-GET/C-MOVE identifier and where it points."""

    identifier: Dataset
    level_name: str  # as sent, echoed in responses
    level: Level
    model: str


def decode_request(event: Event) -> Request:
    """The identifier, fully decoded, and its level within the request's model.

    Raises Refused: 0xC000 for an identifier that cannot be decoded or names no or an unknown
    level, 0xA900 for PATIENT level in the Study Root model.
    """
    model = _MODEL_OF.get(str(event.request.AffectedSOPClassUID), STUDY_ROOT)
    try:
        identifier = event.identifier
        # pydicom decodes lazily: touch every value now so a broken identifier (or one in an
        # unknown character set) fails here, with a reason, not halfway through the answer.
        for elem in identifier.iterall():
            _ = elem.value
    except Exception as exc:
        raise Refused(CANNOT_UNDERSTAND, f"identifier cannot be decoded: {exc}") from None
    level_name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level_name:
        raise Refused(CANNOT_UNDERSTAND, "identifier lacks Query/Retrieve Level (0008,0052)")
    level = _LEVELS.get(level_name)
    if level is None:
        raise Refused(CANNOT_UNDERSTAND, f"unknown Query/Retrieve Level {level_name[:16]!r}")
    if level == Level.PATIENT and model == STUDY_ROOT:
        raise Refused(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "no PATIENT level in Study Root")
    return Request(identifier, level_name, level, model)


def key_text(value: Any) -> str:
    """A decoded element value as QIDO-RS parameter text; multiple values joined by '\\'."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(key_text(v) for v in value)
    return str(value).strip()
