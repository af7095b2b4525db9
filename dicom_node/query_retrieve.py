"""DIMSE query/retrieve on the hub's node: C-FIND, C-GET and C-MOVE (PS3.4 Annex C).

A front door in the STYLE.md sense. An identifier becomes parameters for the QIDO-RS service
(telehealth.dicomweb.service.qido.search, the hub's one matcher); its DICOM JSON matches come
back as datasets; a retrieve sends each instance's stored bytes unchanged. Scope and audit come
with the service: a calling AE title acts for its institution
(auth.actor_for_application_entity) and sees what that institution sees. A study outside that
scope is simply not there.

C-FIND runs on pynetdicom's own service class. C-GET and C-MOVE sub-operations run in
`_RetrieveService` below, because pynetdicom's versions
- answer 0xA801 "Move Destination Unknown" when a registered destination cannot be reached,
  which sends a clinic to check our registry instead of its PACS; the standard's answer is
  failed sub-operations (0xA702);
- need a destination and a count before they can refuse anything, so a malformed identifier
  would first open an association to the destination;
- re-encode every instance through pydicom, where we send the bytes as stored.
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pynetdicom.association
from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import data_element_generator
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass, ServiceClass
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from telehealth.archive.service import visible_study
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome
from telehealth.db import DatabaseUnavailable, transaction
from telehealth.dicomweb.service import qido
from telehealth.dicomweb.service.qido import Level
from telehealth.errors import DomainError, wire_status
from telehealth.institutions.service import (
    Caller,
    CallerRefused,
    MoveDestination,
    MoveDestinationUnknown,
    get_move_destination,
)

if TYPE_CHECKING:
    from pynetdicom.events import Event
    from sqlalchemy.orm import Session

    from telehealth.hub import Hub

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
_RETRIEVE_SOP_CLASSES = frozenset(
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
_UNIQUE_KEY: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}
# Keys every response carries whether asked or not, and keys that say how to answer rather
# than what to match.
_QUERY_RETRIEVE_LEVEL = 0x00080052
_SPECIFIC_CHARACTER_SET = 0x00080005
_RETRIEVE_AE_TITLE = 0x00080054
_INSTANCE_AVAILABILITY = 0x00080056
_NOT_MATCHED = {_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET, _RETRIEVE_AE_TITLE}

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


def _refusal(exc: Exception) -> Dataset:
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


def _text(value: Any) -> str:
    """A decoded element value as QIDO-RS parameter text; multiple values joined by '\\'."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    return str(value).strip()


def query_params(request: Request) -> list[tuple[str, str]]:
    """QIDO-RS parameters for a C-FIND identifier: each key the index holds at this level or
    above, with its value to match (empty: universal matching, return only).

    Keys the index does not hold are not matched (an SCP need not support optional keys,
    PS3.4 C.2.2.1); they are returned empty.
    """
    params: list[tuple[str, str]] = []
    for elem in _keys(request):
        if elem.VR == "SQ":
            continue
        attr = qido.attribute(f"{int(elem.tag):08X}")
        if attr is None or attr.level > request.level or elem.VR in ("OB", "OW", "UN"):
            continue
        params.append((attr.keyword, _text(elem.value)))
    return params


def retrieve_params(request: Request) -> list[tuple[str, str]]:
    """QIDO-RS parameters that find the instances a C-GET/C-MOVE names by unique keys.

    Raises Refused (0xC000) when the level's unique key is missing, or any key holds a
    wildcard: a retrieve names what it wants, and "*" must not pull a whole archive.
    """
    params: list[tuple[str, str]] = []
    for level, keyword in _UNIQUE_KEY.items():
        if level > request.level:
            break
        value = _text(request.identifier.get(keyword))
        if not value:
            if level == request.level:
                raise Refused(CANNOT_UNDERSTAND, f"{request.level_name} retrieve needs {keyword}")
            continue
        if "*" in value or "?" in value:
            raise Refused(CANNOT_UNDERSTAND, f"{keyword}: wildcards are not allowed in a retrieve")
        params.append((keyword, value))
    return params


# --- responses -----------------------------------------------------------------------------------


def _texts(match: dict[str, Any]) -> Iterator[str]:
    for element in match.values():
        for value in element.get("Value", []):
            if isinstance(value, dict):  # a person name's component groups
                yield from value.values()
            elif isinstance(value, str):
                yield value


def response_charset(requested: Any, match: dict[str, Any]) -> str | None:
    """The Specific Character Set of one response (PS3.4 C.4.1.1.3.2).

    The caller's own when every value fits in it (a clinic asking in GB18030 reads GB18030);
    UTF-8 (ISO_IR 192) when something does not; none when everything is ASCII and none was
    given. pydicom encodes the values in the set named here.
    """
    texts = list(_texts(match))
    asked = _text(requested)
    # Only a single set is echoed as is: code extensions ("\\ISO 2022 IR 87") need escape
    # sequences this check cannot vouch for.
    codec = python_encoding.get(asked) if "\\" not in asked else None
    if codec:
        try:
            for text in texts:
                text.encode(codec)
            return asked
        except UnicodeEncodeError:
            pass
    if all(text.isascii() for text in texts):
        return asked or None
    return "ISO_IR 192"


def find_response(request: Request, match: dict[str, Any], ae_title: str) -> Dataset:
    """One C-FIND response: exactly the requested keys, with values where the index has them,
    plus Specific Character Set, Query/Retrieve Level and Retrieve AE Title."""
    requested = _keys(request)
    values = {tag: match[tag] for tag in map(_json_tag, requested) if tag in match}
    found = Dataset.from_json(values)
    ds = Dataset()
    charset = response_charset(request.identifier.get("SpecificCharacterSet"), values)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = request.level_name
    ds.RetrieveAETitle = ae_title
    for elem in requested:
        if elem.tag in found:
            ds[elem.tag] = found[elem.tag]
        elif elem.tag == _INSTANCE_AVAILABILITY:
            ds.InstanceAvailability = "ONLINE"  # everything held is in the spool or the store
        elif elem.VR == "SQ":
            ds.add_new(elem.tag, "SQ", [])
        else:
            # A key the index does not hold: present and empty (zero length).
            ds.add_new(elem.tag, elem.VR if " or " not in elem.VR else "UN", None)
    return ds


def _keys(request: Request) -> list[DataElement]:
    """The keys to match and return: not the ones every response carries anyway, nor group
    lengths or anything below group 0008, which a Data Set does not hold (PS3.5 §7)."""
    return [
        elem
        for elem in request.identifier
        if elem.tag not in _NOT_MATCHED and elem.tag.element and elem.tag.group >= 0x0008
    ]


def _json_tag(elem: DataElement) -> str:
    return f"{int(elem.tag):08X}"


# --- the node's handlers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One instance a retrieve sends, as the index knows it."""

    study_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass
class Outcome:
    """Sub-operation counts, as C-GET and C-MOVE responses report them."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    cancelled: bool = False
    note: str = ""  # why everything failed, for the audit trail


class Retrieval:
    """A C-GET or C-MOVE as decided by the hub, before any sub-operation: the instances to
    send and where, or the status that refuses it. The EVT_C_GET/EVT_C_MOVE handlers return
    one; `_RetrieveService` carries it out."""

    def __init__(
        self,
        qr: QueryRetrieve,
        *,
        action: str,
        actor: auth.Actor | None = None,
        refusal: Dataset | None = None,
        targets: list[Target] | None = None,
        destination: MoveDestination | None = None,
    ) -> None:
        self.qr = qr
        self.action = action
        self.actor = actor
        self.refusal = refusal
        self.targets = targets or []
        self.destination = destination

    def read(self, target: Target) -> bytes:
        """The stored bytes of one instance, in a short transaction of its own: no session
        lives across a retrieve (on SQLite each holds the write lock).

        Raises InstanceNotFound, StoreUnavailable, DatabaseUnavailable.
        """
        with transaction(self.qr.hub.factory) as session:
            return self.qr.hub.archive.read_instance(session, target.sop_instance_uid)

    def finished(self, outcome: Outcome) -> None:
        """Record what was sent where; the matches were audited when they were looked up."""
        if self.actor is None:
            return
        where = f" to {self.destination.ae_title}" if self.destination else ""
        detail = (
            f"{outcome.completed} sent{where}, {outcome.failed} failed, {outcome.warning} "
            f"warnings{', cancelled' if outcome.cancelled else ''}"
            + (f"; {outcome.note}" if outcome.note else "")
        )
        self.qr.audit(
            self.actor,
            self.action,
            AuditOutcome.FAILED if outcome.failed else AuditOutcome.SUCCESS,
            ",".join(sorted({t.study_uid for t in self.targets})),
            detail,
        )


class QueryRetrieve:
    """The node's C-FIND, C-GET and C-MOVE handlers. `caller_for` is DicomNode's: the caller
    checked when the association was admitted (raises CallerRefused, Overloaded)."""

    def __init__(self, hub: Hub, caller_for: Callable[[Association], Caller]) -> None:
        self.hub = hub
        self._caller_for = caller_for

    @property
    def ae_title(self) -> str:
        return self.hub.settings.ae_title

    def audit(
        self, actor: auth.Actor, action: str, outcome: AuditOutcome, studies: str, detail: str
    ) -> None:
        """An audit record in a transaction of its own, after the work it describes."""
        try:
            with transaction(self.hub.factory) as session:
                auth.audit(
                    session,
                    actor,
                    action,
                    outcome=outcome,
                    object_type="study",
                    object_id=studies,
                    detail=detail,
                )
        except DomainError:
            log.warning("%s by %s not audited (database down): %s", action, actor.name, detail)

    def actor(self, assoc: Association) -> auth.Actor:
        """Raises CallerRefused for a caller nobody registered: accepting unknown callers
        (TELEHEALTH_ACCEPT_UNKNOWN_CALLERS) is for receiving, never for reading patient data."""
        caller = self._caller_for(assoc)
        if not caller.registered:
            raise CallerRefused(f"AE {caller.ae_title} is not registered for query/retrieve")
        return auth.actor_for_application_entity(
            caller.ae_title, caller.institution_id, caller.address
        )

    # --- C-FIND ------------------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """EVT_C_FIND: one pending response per match, then pynetdicom answers Success."""
        try:
            actor = self.actor(event.assoc)
            request = decode_request(event)
            with transaction(self.hub.factory) as session:
                result = qido.search(
                    session,
                    actor,
                    request.level,
                    query_params(request),
                    paged=False,
                    action="dimse.c_find",
                )
        except Exception as exc:
            refusal = _refusal(exc)
            log.info("C-FIND refused with 0x%04X: %s", refusal.Status, exc)
            yield refusal, None
            return
        for match in result.matches:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, find_response(request, match, self.ae_title)

    # --- C-GET and C-MOVE ----------------------------------------------------------------------

    def on_get(self, event: Event) -> Retrieval:
        """EVT_C_GET: the instances to send back over the caller's own association."""
        return self._retrieval(event, "dimse.c_get", move_to=None)

    def on_move(self, event: Event) -> Retrieval:
        """EVT_C_MOVE: the instances to send, and the registered AE to send them to."""
        return self._retrieval(event, "dimse.c_move", move_to=str(event.move_destination or ""))

    # Marks these handlers for _RetrieveService (see _service_class).
    on_get.hub_retrieval = True  # type: ignore[attr-defined]
    on_move.hub_retrieval = True  # type: ignore[attr-defined]

    def _retrieval(self, event: Event, action: str, move_to: str | None) -> Retrieval:
        actor = None
        try:
            actor = self.actor(event.assoc)
            request = decode_request(event)
            params = retrieve_params(request)
            with transaction(self.hub.factory) as session:
                destination = None
                if move_to is not None:
                    destination = get_move_destination(session, move_to)
                result = qido.search(
                    session, actor, Level.INSTANCE, params, paged=False, action=action
                )
                targets = [_target(match) for match in result.matches]
                if destination is not None:
                    _check_destination(session, destination, targets, action)
        except MoveDestinationUnknown as exc:
            log.info("C-MOVE refused: %s", exc)
            return Retrieval(
                self, action=action, refusal=status(MOVE_DESTINATION_UNKNOWN, str(exc))
            )
        except Exception as exc:
            refusal = _refusal(exc)
            log.info("%s refused with 0x%04X: %s", action, refusal.Status, exc)
            if actor is not None and not isinstance(exc, DatabaseUnavailable):
                denied = refusal.Status == NOT_AUTHORISED
                outcome = AuditOutcome.DENIED if denied else AuditOutcome.FAILED
                self.audit(actor, action, outcome, "", f"refused: {exc}"[:200])
            return Retrieval(self, action=action, actor=actor, refusal=refusal)
        if len(targets) > MAX_SUB_OPERATIONS:
            comment = f"{len(targets)} instances: retrieve by study or series"
            return Retrieval(
                self, action=action, actor=actor, refusal=status(CANNOT_UNDERSTAND, comment)
            )
        return Retrieval(self, action=action, actor=actor, targets=targets, destination=destination)


def _check_destination(
    session: Session, destination: MoveDestination, targets: list[Target], action: str
) -> None:
    """Patient data goes only where the hub would show it: the destination's institution must
    see every study moved, as its own AE would (a county PACS pulls its clinics' studies; one
    clinic's study never lands at another clinic). The refusal is audited (visible_study).

    Raises Refused (0x0124).
    """
    receiver = auth.actor_for_application_entity(destination.ae_title, destination.institution_id)
    for study_uid in sorted({t.study_uid for t in targets}):
        try:
            visible_study(session, receiver, study_uid, action=action)
        except DomainError:
            raise Refused(
                NOT_AUTHORISED, f"{destination.ae_title} may not receive study {study_uid}"
            ) from None


def _target(match: dict[str, Any]) -> Target:
    def value(tag: str) -> str:
        return str(match[tag]["Value"][0])

    return Target(
        study_uid=value("0020000D"),
        sop_class_uid=value("00080016"),
        sop_instance_uid=value("00080018"),
        transfer_syntax_uid=value("00083002"),
    )


# --- sending the bytes as stored ----------------------------------------------------------------


def _dataset_offset(data: bytes) -> int:
    """Where the dataset starts in a Part 10 file: after preamble, 'DICM' and group 0002."""
    offset = 132 if data[128:132] == b"DICM" else 0
    fp = io.BytesIO(data)
    fp.seek(offset)
    for _ in data_element_generator(
        fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2
    ):
        pass
    return fp.tell()


class StoredInstance(Dataset):
    """An instance to send with C-STORE exactly as stored, not decoded and re-encoded.

    pynetdicom's send_c_store takes a Dataset (and finds the presentation context from its
    SOP Class UID and file meta transfer syntax); the encoding step (`_encode_as_stored`)
    then hands over these bytes instead of writing the dataset out again.
    """

    def __init__(self, target: Target, data: bytes) -> None:
        super().__init__()
        self.SOPClassUID = target.sop_class_uid
        self.SOPInstanceUID = target.sop_instance_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(target.transfer_syntax_uid)
        self.stored_bytes = data
        self.stored_offset = _dataset_offset(data)

    def encoded(self, is_implicit_vr: bool, is_little_endian: bool, deflated: bool) -> bytes | None:
        """The dataset bytes when the association's transfer syntax is the stored one; None
        (pynetdicom then fails this sub-operation) when it would need transcoding."""
        syntax = UID(self.file_meta.TransferSyntaxUID)
        try:
            stored = (syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        except ValueError:  # a syntax pydicom does not know: the dataset is explicit VR LE
            stored = (False, True, False)
        if stored != (is_implicit_vr, is_little_endian, deflated):
            log.warning(
                "%s is stored as %s; the peer accepted no context for it in that syntax",
                self.SOPInstanceUID,
                syntax,
            )
            return None
        return self.stored_bytes[self.stored_offset :]


_pynetdicom_encode = pynetdicom.association.encode


def _encode_as_stored(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    if isinstance(ds, StoredInstance):
        return ds.encoded(is_implicit_vr, is_little_endian, deflated)
    return _pynetdicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


# pynetdicom's Association.send_c_store encodes through this module-level name; every other
# dataset still goes through pynetdicom's own encoder.
pynetdicom.association.encode = _encode_as_stored


# --- C-GET and C-MOVE sub-operations ---------------------------------------------------------


class _RetrieveService(QueryRetrieveServiceClass):
    """pynetdicom's Query/Retrieve service class, with C-GET and C-MOVE carried out from a
    Retrieval (see the module docstring for why). Associations whose handlers are not ours
    get pynetdicom's behaviour unchanged."""

    def _get_scp(self, req: C_GET, context: PresentationContext) -> None:
        if not _is_ours(self.assoc, evt.EVT_C_GET):
            super()._get_scp(req, context)
            return
        self._retrieve(req, context, C_GET(), evt.EVT_C_GET)

    def _move_scp(self, req: C_MOVE, context: PresentationContext) -> None:
        if not _is_ours(self.assoc, evt.EVT_C_MOVE):
            super()._move_scp(req, context)
            return
        self._retrieve(req, context, C_MOVE(), evt.EVT_C_MOVE)

    def _retrieve(
        self,
        req: C_GET | C_MOVE,
        context: PresentationContext,
        rsp: C_GET | C_MOVE,
        event: evt.InterventionEvent,
    ) -> None:
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        reply = _Reply(self, rsp, context)
        try:
            retrieval = evt.trigger(
                self.assoc,
                event,
                {
                    "request": req,
                    "context": context.as_tuple,
                    "_is_cancelled": self.is_cancelled,
                },
            )
        except Exception as exc:
            reply.refuse(_refusal(exc))
            return
        assert isinstance(retrieval, Retrieval)
        if retrieval.refusal is not None:
            reply.refuse(retrieval.refusal)
            return
        outcome = Outcome(remaining=len(retrieval.targets))
        try:
            if not retrieval.targets:
                reply.final(outcome)
                return
            if retrieval.destination is None:
                self._send_all(req, retrieval, self.assoc, outcome, reply)
                return
            store = self._associate(retrieval, outcome)
            if store is None:
                reply.final(outcome)
                return
            try:
                self._send_all(req, retrieval, store, outcome, reply)
            finally:
                if store.is_established:
                    store.release()
        finally:
            retrieval.finished(outcome)

    def _associate(self, retrieval: Retrieval, outcome: Outcome) -> Association | None:
        """An association to the move destination proposing each stored (SOP class, transfer
        syntax); None, with every sub-operation counted failed, when it cannot be had."""
        destination = retrieval.destination
        assert destination is not None
        pairs = sorted({(t.sop_class_uid, t.transfer_syntax_uid) for t in retrieval.targets})
        # pynetdicom proposes at most 128 contexts; instances beyond them fail for want of one.
        contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in pairs[:128]]
        try:
            store = self.ae.associate(
                destination.host,
                destination.port,
                contexts=contexts,
                ae_title=destination.ae_title,
                evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)],
            )
        except Exception as exc:  # a host name that does not resolve, say
            reason = str(exc)
        else:
            if store.is_established:
                return store
            reason = "association rejected" if store.is_rejected else "no association"
            # pynetdicom's own C-MOVE closes a failed requestor's socket by hand too.
            if store.dul.socket is not None:
                store.dul.socket.close()
        where = f"{destination.ae_title} at {destination.host}:{destination.port}"
        log.warning("C-MOVE: cannot associate with %s (%s)", where, reason)
        outcome.failed, outcome.remaining = outcome.remaining, 0
        outcome.failed_uids = [t.sop_instance_uid for t in retrieval.targets]
        outcome.note = f"cannot reach {where}"
        return None

    def _send_all(
        self,
        req: C_GET | C_MOVE,
        retrieval: Retrieval,
        store: Association,
        outcome: Outcome,
        reply: _Reply,
    ) -> None:
        """One C-STORE per instance, one instance in memory at a time; a pending response
        after each; then the final one."""
        is_move = isinstance(req, C_MOVE)
        for number, target in enumerate(retrieval.targets, start=1):
            if self.is_cancelled(int(req.MessageID or 0)):
                outcome.cancelled = True
                reply.final(outcome)
                return
            if not self.assoc.is_established:
                return  # the caller released or aborted: nobody to answer
            category = self._send_one(req, retrieval, store, target, number, is_move)
            outcome.remaining -= 1
            if category == "Success":
                outcome.completed += 1
            elif category == "Warning":
                outcome.warning += 1
            else:
                outcome.failed += 1
                outcome.failed_uids.append(target.sop_instance_uid)
            if outcome.remaining:
                reply.pending(outcome)
        reply.final(outcome)

    def _send_one(
        self,
        req: C_GET | C_MOVE,
        retrieval: Retrieval,
        store: Association,
        target: Target,
        number: int,
        is_move: bool,
    ) -> str:
        """Send one instance; the category of the C-STORE answer (Success/Warning/Failure)."""
        if not store.is_established:
            return "Failure"  # the destination went away: do not read what cannot be sent
        try:
            ds = StoredInstance(target, retrieval.read(target))
            kwargs: dict[str, Any] = {"msg_id": (int(req.MessageID or 0) + number) % 0x10000}
            if is_move:
                # The AE that asked for the move, and its message (PS3.7 §9.3.1.1).
                kwargs["originator_aet"] = self.assoc.requestor.ae_title
                kwargs["originator_id"] = req.MessageID
            answer = store.send_c_store(ds, **kwargs)
        except Exception as exc:
            log.warning("C-STORE of %s failed: %s", target.sop_instance_uid, exc)
            return "Failure"
        code = answer.get("Status")
        if code is None:
            log.warning("C-STORE of %s: no answer", target.sop_instance_uid)
            return "Failure"
        category = code_to_category(int(code))
        return category if category in ("Success", "Warning") else "Failure"


class _Reply:
    """C-GET/C-MOVE responses on the caller's association."""

    def __init__(
        self, service: _RetrieveService, rsp: C_GET | C_MOVE, context: PresentationContext
    ) -> None:
        self.service = service
        self.rsp = rsp
        self.context_id = int(context.context_id or 0)
        self.syntax = context.transfer_syntax[0]

    def _send(self) -> None:
        if self.service.assoc.is_established:
            self.service.dimse.send_msg(self.rsp, self.context_id)

    def refuse(self, refusal: Dataset) -> None:
        self.rsp.Status = int(refusal.Status)
        if "ErrorComment" in refusal:
            self.rsp.ErrorComment = refusal.ErrorComment
        self._send()

    def pending(self, outcome: Outcome) -> None:
        self.rsp.Status = PENDING
        self.rsp.Identifier = None
        self._counts(outcome, remaining=True)
        self._send()

    def final(self, outcome: Outcome) -> None:
        """Success, Cancel, Warning (0xB000: some failed) or Failure (0xA702: all failed);
        all but Success name the failed instances."""
        if outcome.cancelled:
            self.rsp.Status = CANCEL
        elif not outcome.failed and not outcome.warning:
            self.rsp.Status = SUCCESS
        elif outcome.failed and not outcome.completed and not outcome.warning:
            self.rsp.Status = SUB_OPERATIONS_FAILED
        else:
            self.rsp.Status = WARNING_SOME_FAILED
        self.rsp.Identifier = None
        if self.rsp.Status != SUCCESS:
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = outcome.failed_uids
            data = encode(
                ds,
                self.syntax.is_implicit_VR,
                self.syntax.is_little_endian,
                self.syntax.is_deflated,
            )
            self.rsp.Identifier = io.BytesIO(data or b"")
        # Remaining belongs in pending and cancel responses only.
        self._counts(outcome, remaining=outcome.cancelled)
        self._send()

    def _counts(self, outcome: Outcome, *, remaining: bool) -> None:
        self.rsp.NumberOfRemainingSuboperations = outcome.remaining if remaining else None
        self.rsp.NumberOfCompletedSuboperations = outcome.completed
        self.rsp.NumberOfFailedSuboperations = outcome.failed
        self.rsp.NumberOfWarningSuboperations = outcome.warning


def _no_delay(event: Event) -> None:
    # pynetdicom leaves Nagle on; each C-STORE sub-operation then waits for a delayed ACK.
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _is_ours(assoc: Association, event: evt.InterventionEvent) -> bool:
    handler = assoc.get_handlers(event)[0]
    return bool(getattr(handler, "hub_retrieval", False))


_pynetdicom_service_class = pynetdicom.association.uid_to_service_class


def _service_class(uid: str) -> type[ServiceClass]:
    if uid in _RETRIEVE_SOP_CLASSES:
        return _RetrieveService
    return _pynetdicom_service_class(uid)


# pynetdicom picks a request's service class through this module-level name.
pynetdicom.association.uid_to_service_class = _service_class
