"""C-GET and C-MOVE (PS3.4 C.4.2, C.4.3): the instances a retrieve names, and the sub-operations
that send them (as stored, or uncompressed: dicom_node.transcode). The handlers are
QueryRetrieve.on_get and on_move (dicom_node.query_retrieve); `_RetrieveService` carries out
what they decide (see dicom_node.query_retrieve for why not pynetdicom's own).
"""

from __future__ import annotations

import io
import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pynetdicom.association
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass, ServiceClass
from pynetdicom.status import code_to_category

from dicom_node import tls
from dicom_node.identifiers import (
    CANCEL,
    CANNOT_UNDERSTAND,
    NOT_AUTHORISED,
    PENDING,
    RETRIEVE_SOP_CLASSES,
    SUB_OPERATIONS_FAILED,
    SUCCESS,
    UNIQUE_KEY,
    WARNING_SOME_FAILED,
    Refused,
    Request,
    key_text,
    refusal,
)
from dicom_node.transcode import (
    CannotTranscode,
    accepted_syntaxes,
    choose_syntax,
    proposed_contexts,
    transcode,
)
from telehealth.archive.service import visible_study
from telehealth.archive.service.header import dataset_offset
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome
from telehealth.db import transaction
from telehealth.errors import DomainError
from telehealth.institutions.service import MoveDestination

if TYPE_CHECKING:
    from pynetdicom.events import Event
    from sqlalchemy.orm import Session

    from dicom_node.query_retrieve import QueryRetrieve

log = logging.getLogger(__name__)


def retrieve_params(request: Request) -> list[tuple[str, str]]:
    """QIDO-RS parameters that find the instances a C-GET/C-MOVE names by unique keys.

    Raises Refused (0xC000) when the level's unique key is missing, or any key holds a
    wildcard: a retrieve names what it wants, and "*" must not pull a whole archive.
    """
    params: list[tuple[str, str]] = []
    for level, keyword in UNIQUE_KEY.items():
        if level > request.level:
            break
        value = key_text(request.identifier.get(keyword))
        if not value:
            if level == request.level:
                raise Refused(CANNOT_UNDERSTAND, f"{request.level_name} retrieve needs {keyword}")
            continue
        if "*" in value or "?" in value:
            raise Refused(CANNOT_UNDERSTAND, f"{keyword}: wildcards are not allowed in a retrieve")
        params.append((keyword, value))
    return params


# --- what a retrieve sends --------------------------------------------------------------------


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


def check_destination(
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


def target_of(match: dict[str, Any]) -> Target:
    def value(tag: str) -> str:
        return str(match[tag]["Value"][0])

    return Target(
        study_uid=value("0020000D"),
        sop_class_uid=value("00080016"),
        sop_instance_uid=value("00080018"),
        transfer_syntax_uid=value("00083002"),
    )


# --- sending the bytes as stored ----------------------------------------------------------------


class StoredInstance(Dataset):
    """An instance to send with C-STORE as already encoded bytes, not re-encoded by pydicom.

    pynetdicom's send_c_store takes a Dataset (and finds the presentation context from its
    SOP Class UID and file meta transfer syntax); the encoding step (`_encode_as_stored`)
    then hands over `payload` instead of writing the dataset out again. The payload is the
    stored dataset itself, or its transcoding (dicom_node.transcode) into `syntax`.
    """

    def __init__(self, target: Target, payload: bytes, syntax: str) -> None:
        super().__init__()
        self.SOPClassUID = target.sop_class_uid
        self.SOPInstanceUID = target.sop_instance_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(syntax)
        self.payload = payload

    @classmethod
    def for_peer(cls, target: Target, data: bytes, accepted: list[str]) -> StoredInstance:
        """The instance as the peer can take it: as stored when it accepted the stored
        syntax, else uncompressed (see dicom_node.transcode).

        Raises CannotTranscode (no acceptable syntax, or decoding failed).
        """
        stored = target.transfer_syntax_uid
        syntax = choose_syntax(stored, accepted)
        if syntax is None:
            raise CannotTranscode(
                f"no context accepted for it as stored ({stored}) or uncompressed"
            )
        if syntax == stored:
            return cls(target, data[dataset_offset(data) :], syntax)
        return cls(target, transcode(data, syntax), syntax)

    def encoded(self, is_implicit_vr: bool, is_little_endian: bool, deflated: bool) -> bytes | None:
        """The payload when the context pynetdicom chose has the payload's encoding; None
        (pynetdicom then fails this sub-operation) otherwise."""
        syntax = UID(self.file_meta.TransferSyntaxUID)
        try:
            encoding = (syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        except ValueError:  # a syntax pydicom does not know: the dataset is explicit VR LE
            encoding = (False, True, False)
        if encoding != (is_implicit_vr, is_little_endian, deflated):
            log.warning(
                "%s is encoded as %s; the peer accepted no context for it in that syntax",
                self.SOPInstanceUID,
                syntax,
            )
            return None
        return self.payload


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


def sender_only(assoc: Association) -> Association:
    """Let only the thread that sends take DIMSE messages off an association we requested.

    pynetdicom's reactor thread polls the same queue. send_c_store pauses it while it waits
    for its response and resumes it after; a reactor woken by that resume but not yet run
    still reads as paused, so the next send_c_store goes ahead and the reactor, running at
    last, can take that request's response ("Received unexpected C-STORE service message"),
    leaving the sender to wait out its DIMSE timeout. The quicker the peer, the likelier. An
    association that only sends serves no requests: the reactor's polls (the only
    non-blocking reads) get nothing.
    """
    read = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        return read(block) if block else (None, None)

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]
    return assoc


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
            reply.refuse(refusal(exc))
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
        """An association to the move destination, over TLS when it is registered so,
        proposing each stored (SOP class, transfer syntax) and each class uncompressed
        (dicom_node.transcode); None, with every sub-operation counted failed, when it cannot
        be had."""
        destination = retrieval.destination
        assert destination is not None
        # Instances whose class and syntax get no context fail for want of one.
        contexts = proposed_contexts(
            (t.sop_class_uid, t.transfer_syntax_uid) for t in retrieval.targets
        )
        try:
            tls_args = None
            if destination.tls:
                # The host name (or address) as registered is what the certificate must name.
                tls_args = (tls.client_context(retrieval.qr.hub.settings), destination.host)
            store = self.ae.associate(
                destination.host,
                destination.port,
                contexts=contexts,
                ae_title=destination.ae_title,
                evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)],
                tls_args=tls_args,
            )
        except Exception as exc:  # a host name that does not resolve, say
            reason = str(exc)
        else:
            if store.is_established:
                return sender_only(store)
            reason = "association rejected" if store.is_rejected else "no association"
            # pynetdicom's own C-MOVE closes a failed requestor's socket by hand too.
            if store.dul.socket is not None:
                store.dul.socket.close()
        where = f"{destination.ae_title} at {destination.host}:{destination.port}"
        where += " (TLS)" if destination.tls else ""
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
            data = retrieval.read(target)
            accepted = accepted_syntaxes(store, target.sop_class_uid)
            ds = StoredInstance.for_peer(target, data, accepted)
        except CannotTranscode as exc:
            log.warning("C-STORE of %s not attempted: %s", target.sop_instance_uid, exc)
            return "Failure"
        except Exception as exc:
            log.warning("C-STORE of %s failed: %s", target.sop_instance_uid, exc)
            return "Failure"
        try:
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
    if uid in RETRIEVE_SOP_CLASSES:
        return _RetrieveService
    return _pynetdicom_service_class(uid)


# pynetdicom picks a request's service class through this module-level name.
pynetdicom.association.uid_to_service_class = _service_class
