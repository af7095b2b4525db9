"""DIMSE query/retrieve on the hub's node: C-FIND, C-GET and C-MOVE (PS3.4 Annex C).

A front door in the STYLE.md sense. An identifier becomes parameters for the QIDO-RS service
(telehealth.dicomweb.service.qido.search, the hub's one matcher); its DICOM JSON matches come
back as datasets; a retrieve sends each instance's stored bytes unchanged, or uncompressed
when the peer accepted only that (dicom_node.transcode). Scope and audit come
with the service: a calling AE title acts for its institution
(auth.actor_for_application_entity) and sees what that institution sees. A study outside that
scope is simply not there.

Where things are: this module holds the handlers (QueryRetrieve) and re-exports the names
callers use; dicom_node.identifiers decodes identifiers and holds the statuses;
dicom_node.find builds C-FIND responses; dicom_node.retrieve carries out C-GET and C-MOVE;
dicom_node.transcode decompresses for peers that accept only uncompressed syntaxes;
dicom_node.tls holds the TLS contexts.

C-FIND runs on pynetdicom's own service class. C-GET and C-MOVE sub-operations run in
`_RetrieveService` (dicom_node.retrieve), because pynetdicom's versions
- answer 0xA801 "Move Destination Unknown" when a registered destination cannot be reached,
  which sends a clinic to check our registry instead of its PACS; the standard's answer is
  failed sub-operations (0xA702);
- need a destination and a count before they can refuse anything, so a malformed identifier
  would first open an association to the destination;
- re-encode every instance through pydicom, where we send the bytes as stored; and fail an
  instance whose compressed syntax the peer did not accept, where we decompress it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from dicom_node.find import find_response, query_params, response_charset
from dicom_node.identifiers import (
    CANCEL,
    CANNOT_UNDERSTAND,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    MAX_SUB_OPERATIONS,
    MOVE_DESTINATION_UNKNOWN,
    NOT_AUTHORISED,
    PATIENT_ROOT,
    PENDING,
    PROCESSING_FAILURE,
    SOP_CLASSES,
    STUDY_ROOT,
    SUB_OPERATIONS_FAILED,
    SUCCESS,
    WARNING_SOME_FAILED,
    Refused,
    Request,
    decode_request,
    refusal,
    status,
)
from dicom_node.retrieve import (
    Outcome,
    Retrieval,
    StoredInstance,
    Target,
    check_destination,
    retrieve_params,
    target_of,
)
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome
from telehealth.db import DatabaseUnavailable, transaction
from telehealth.dicomweb.service import qido
from telehealth.dicomweb.service.qido import Level
from telehealth.errors import DomainError
from telehealth.institutions.service import (
    Caller,
    CallerRefused,
    MoveDestinationUnknown,
    get_move_destination,
)

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from telehealth.hub import Hub

log = logging.getLogger(__name__)

# The names callers used when all of this lived here.
__all__ = [
    "CANCEL",
    "CANNOT_UNDERSTAND",
    "IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS",
    "MAX_SUB_OPERATIONS",
    "MOVE_DESTINATION_UNKNOWN",
    "NOT_AUTHORISED",
    "PATIENT_ROOT",
    "PENDING",
    "PROCESSING_FAILURE",
    "SOP_CLASSES",
    "STUDY_ROOT",
    "SUB_OPERATIONS_FAILED",
    "SUCCESS",
    "WARNING_SOME_FAILED",
    "Outcome",
    "QueryRetrieve",
    "Refused",
    "Request",
    "Retrieval",
    "StoredInstance",
    "Target",
    "decode_request",
    "find_response",
    "query_params",
    "response_charset",
    "retrieve_params",
    "status",
]


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
            answer = refusal(exc)
            log.info("C-FIND refused with 0x%04X: %s", answer.Status, exc)
            yield answer, None
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
                targets = [target_of(match) for match in result.matches]
                if destination is not None:
                    check_destination(session, destination, targets, action)
        except MoveDestinationUnknown as exc:
            log.info("C-MOVE refused: %s", exc)
            return Retrieval(
                self, action=action, refusal=status(MOVE_DESTINATION_UNKNOWN, str(exc))
            )
        except Exception as exc:
            answer = refusal(exc)
            log.info("%s refused with 0x%04X: %s", action, answer.Status, exc)
            if actor is not None and not isinstance(exc, DatabaseUnavailable):
                denied = answer.Status == NOT_AUTHORISED
                outcome = AuditOutcome.DENIED if denied else AuditOutcome.FAILED
                self.audit(actor, action, outcome, "", f"refused: {exc}"[:200])
            return Retrieval(self, action=action, actor=actor, refusal=answer)
        if len(targets) > MAX_SUB_OPERATIONS:
            comment = f"{len(targets)} instances: retrieve by study or series"
            return Retrieval(
                self, action=action, actor=actor, refusal=status(CANNOT_UNDERSTAND, comment)
            )
        return Retrieval(self, action=action, actor=actor, targets=targets, destination=destination)
