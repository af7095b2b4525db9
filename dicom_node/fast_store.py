"""A lean upper layer for associations that only store or echo (PS3.8 §9 and Annex E).

pynetdicom runs each association as two threads that poll queues; a profile of one modality
storing put ~45% of the samples in those loops, and building each C-STORE response and file
meta through pydicom datasets cost another ~1.5 ms per instance. An association whose
accepted presentation contexts are all storage or Verification is served here instead: PDUs
are read straight into one buffer per dataset, the few command elements are coded by hand,
and the rest (presentation context negotiation, caller admission, the store handler and its
statuses) is pynetdicom's or shared with server.py. Anything else (query/retrieve contexts,
extended negotiation, TLS) is handed to pynetdicom without a byte consumed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom import sop_class as sop_class_module
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_unrestricted

from telehealth.institutions.service import Caller

if TYPE_CHECKING:
    from dicom_node.server import DicomNode
    from telehealth.archive.service import IncomingInstance

log = logging.getLogger(__name__)

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"  # PS3.7 Annex A.2.1
VERIFICATION = "1.2.840.10008.1.1"
# A request proposing pynetdicom's limit of 128 contexts with a few syntaxes each is ~15 kB.
# A larger one goes to pynetdicom: peeking waits for the whole request to sit in the socket's
# receive buffer, which must be able to hold it (Linux's default of 128 kB held 64 kB sent in
# 1.4 kB segments here; half that leaves room for a slower network's overhead).
MAX_REQUEST_BYTES = 32 * 1024
# A command set is a few hundred bytes; a peer claiming more is not speaking DIMSE.
MAX_COMMAND_BYTES = 64 * 1024
# Received bytes go to the archive (spool file and hash) in parts of at least this size, so
# that it works while the rest is on its way without a system call per PDV.
FEED_BYTES = 64 * 1024
# Buffers grow by at most this much ahead of the bytes that arrive, so a PDV that merely
# claims to be huge does not allocate its claim.
GROW_STEP = 16 * 1024 * 1024

# PDU types (PS3.8 §9.3.1)
A_ASSOCIATE_RQ_PDU, P_DATA_TF_PDU, A_RELEASE_RQ_PDU, A_RELEASE_RP_PDU, A_ABORT_PDU = (
    0x01,
    0x04,
    0x05,
    0x06,
    0x07,
)
A_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# A-ABORT reasons from the service provider (PS3.8 Table 9-26)
UNRECOGNISED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = 0x01, 0x02, 0x06

# DIMSE command fields and elements (PS3.7 §9.3, Annex E)
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
NO_DATASET = 0x0101
_AFFECTED_SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID = 0x0002, 0x0100, 0x0110
_RESPONDED_TO, _DATASET_TYPE, _STATUS, _ERROR_COMMENT = 0x0120, 0x0800, 0x0900, 0x0902
_AFFECTED_SOP_INSTANCE = 0x1000

_IMPLICIT_ELEMENT = struct.Struct("<HHI")  # group, element, length
_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")  # item length, context ID, message control header
_PLAIN_UID = re.compile(r"[0-9.]{1,64}")
_STORAGE_UIDS = frozenset(str(uid) for uid in sop_class_module._STORAGE_CLASSES.values())


class ProtocolError(Exception):
    """The peer broke PS3.8; the association is aborted with `reason`."""

    def __init__(self, message: str, reason: int = INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class _PeerGone(Exception):
    """The peer closed the connection or aborted."""


class _Silent(_PeerGone):
    """Nothing arrived within the timeout (ARTIM during negotiation, then the idle timeout)."""


# --- deciding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How an A-ASSOCIATE-RQ is answered when the fast path takes it."""

    request: A_ASSOCIATE
    accepted: dict[int, PresentationContext]
    peer_max_pdu: int  # 0: no limit
    accept_pdu: bytes  # the A-ASSOCIATE-AC, as pynetdicom would send it


def is_storage(uid: str) -> bool:
    """The test pynetdicom's unrestricted negotiation applies: private, known storage, or
    unknown to pynetdicom (a newer or vendor storage class)."""
    value = UID(uid)
    return value.is_private or uid in _STORAGE_UIDS or not hasattr(sop_class_module, value.keyword)


def plan(
    request_pdu: bytes, supported: list[PresentationContext], user_information: list[Any]
) -> Plan | None:
    """The answer the fast path would give, or None to leave the association to pynetdicom.

    `user_information` is the acceptor's (DicomNode.acceptor_user_information).
    """
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(request_pdu)
        request = pdu.to_primitive()
    except Exception:
        return None  # pynetdicom answers malformed requests as it always has
    peer_max_pdu: int | None = None
    for item in request.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max_pdu = item.maximum_length_received
        elif not isinstance(
            item, ImplementationClassUIDNotification | ImplementationVersionNameNotification
        ):
            return None  # role selection, user identity, async ops, extended negotiation
    if peer_max_pdu is None:
        return None
    # The same negotiation pynetdicom runs for this node, so the accepted contexts and transfer
    # syntaxes cannot differ between the two paths.
    result, _roles = negotiate_unrestricted(
        request.presentation_context_definition_list, deepcopy(supported), {}
    )
    accepted = {int(cx.context_id): cx for cx in result if cx.result == 0x00}  # type: ignore[arg-type]
    if not all(
        cx.abstract_syntax == VERIFICATION or is_storage(str(cx.abstract_syntax))
        for cx in accepted.values()
    ):
        return None
    rejected = [cx for cx in result if cx.result != 0x00]
    answer = A_ASSOCIATE()
    answer.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    answer.calling_ae_title = request.calling_ae_title
    answer.called_ae_title = request.called_ae_title
    answer.result = 0x00
    answer.result_source = 0x01
    answer.presentation_context_definition_results_list = list(accepted.values()) + rejected
    answer.user_information = user_information
    accept = A_ASSOCIATE_AC()
    accept.from_primitive(answer)
    return Plan(request, accepted, peer_max_pdu, accept.encode())


class Plans:
    """Plans by the bytes of the request they answer.

    A modality sends the same A-ASSOCIATE-RQ every time. storescu's proposes every storage
    class in three transfer syntaxes, and decoding and negotiating it takes pynetdicom ~25 ms:
    more than storing a few instances.
    """

    def __init__(
        self, supported: list[PresentationContext], user_information: list[Any], size: int = 64
    ) -> None:
        self._supported = supported
        self._user_information = user_information
        self._size = size
        self._plans: OrderedDict[bytes, Plan | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, request_pdu: bytes) -> Plan | None:
        with self._lock:
            if request_pdu in self._plans:
                self._plans.move_to_end(request_pdu)
                return self._plans[request_pdu]
        answer = plan(request_pdu, self._supported, self._user_information)
        with self._lock:
            self._plans[request_pdu] = answer
            if len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return answer


def peek_request(sock: socket.socket, timeout: float) -> bytes | None:
    """The A-ASSOCIATE-RQ PDU waiting on `sock`, read without consuming it.

    Returns None when the first PDU is something else or too large (pynetdicom then reads it as
    it always has). Raises OSError when nothing complete arrives in time (the ARTIM timer of
    PS3.8 §9.1.5: the connection is closed) or the peer closes.
    """
    # Blocking, with a kernel timeout: MSG_WAITALL then waits for the whole request, however
    # many segments it comes in; on a socket with a Python timeout (non-blocking underneath) a
    # peek returns whatever has arrived so far.
    previous = sock.gettimeout()
    sock.settimeout(None)
    _set_receive_timeout(sock, timeout)
    try:
        flags = socket.MSG_PEEK | socket.MSG_WAITALL
        header = sock.recv(6, flags)
        if len(header) < 6:
            raise ConnectionError("closed before an A-ASSOCIATE-RQ")
        pdu_type, length = _PDU_HEADER.unpack(header)
        if pdu_type != A_ASSOCIATE_RQ_PDU or length + 6 > MAX_REQUEST_BYTES:
            return None
        data = sock.recv(length + 6, flags)
        if len(data) < length + 6:
            raise ConnectionError("closed inside an A-ASSOCIATE-RQ")
        return data
    finally:
        _set_receive_timeout(sock, 0)
        sock.settimeout(previous)


def _set_receive_timeout(sock: socket.socket, seconds: float | None) -> None:
    """SO_RCVTIMEO and SO_SNDTIMEO (0: none) on a blocking socket."""
    whole = int(seconds or 0)
    timeval = struct.pack("ll", whole, int(((seconds or 0) - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


# --- file meta and commands ----------------------------------------------------------------

_PREAMBLE = b"\x00" * 128 + b"DICM"


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    """A group 0002 element, explicit VR little endian (PS3.5 §7.1.2)."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("latin-1")
    return raw + pad if len(raw) % 2 else raw


_META_TAIL = _explicit(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")) + _explicit(
    0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")
)
_META_VERSION = _explicit(0x0001, b"OB", b"\x00\x01")


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, 'DICM' and file meta exactly as pynetdicom's `event.encoded_dataset()` writes
    them, so a stored instance is the same bytes whichever path received it."""
    if not all(_PLAIN_UID.fullmatch(u) for u in (sop_class_uid, sop_instance_uid, transfer_syntax)):
        meta = create_file_meta(
            sop_class_uid=UID(sop_class_uid),
            sop_instance_uid=UID(sop_instance_uid),
            transfer_syntax=UID(transfer_syntax),
        )
        return _PREAMBLE + encode_file_meta(meta)  # the rare odd UID: pydicom's own writer
    body = b"".join(
        (
            _META_VERSION,
            _explicit(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _explicit(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _explicit(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
            _META_TAIL,
        )
    )
    return _PREAMBLE + _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


@dataclass(frozen=True)
class Command:
    """The command elements the fast path acts on (PS3.7 §9.3.1.1, §9.3.5.1)."""

    field: int
    message_id: int
    has_dataset: bool
    sop_class_uid: str | None
    sop_instance_uid: str | None


def decode_command(raw: bytes) -> Command:
    """Decode a command set (implicit VR little endian, group 0000). Raises ProtocolError."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 8 > end:
            raise ProtocolError("command set ends inside an element header")
        group, element, length = _IMPLICIT_ELEMENT.unpack_from(raw, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            raise ProtocolError("malformed command set")
        elements[element] = raw[offset : offset + length]
        offset += length

    def us(element: int) -> int:
        value = elements.get(element)
        if value is None or len(value) != 2:
            raise ProtocolError(f"command element (0000,{element:04X}) missing or malformed")
        return int.from_bytes(value, "little")

    def ui(element: int) -> str | None:
        value = elements.get(element)
        # pydicom's reading of a UI value: trailing NUL padding and spaces are not part of it.
        return None if value is None else value.decode("latin-1").rstrip("\x00 ")

    return Command(
        field=us(_COMMAND_FIELD),
        message_id=us(_MESSAGE_ID),
        has_dataset=us(_DATASET_TYPE) != NO_DATASET,
        sop_class_uid=ui(_AFFECTED_SOP_CLASS),
        sop_instance_uid=ui(_AFFECTED_SOP_INSTANCE),
    )


def _implicit(element: int, value: bytes) -> bytes:
    return _IMPLICIT_ELEMENT.pack(0x0000, element, len(value)) + value


def encode_response(request: Command, field: int, status: int, comment: str = "") -> bytes:
    """The command set of a C-STORE-RSP or C-ECHO-RSP, with the elements pynetdicom sends."""
    parts = []
    if request.sop_class_uid is not None:
        parts.append(_implicit(_AFFECTED_SOP_CLASS, _padded(request.sop_class_uid, b"\x00")))
    parts += [
        _implicit(_COMMAND_FIELD, struct.pack("<H", field)),
        _implicit(_RESPONDED_TO, struct.pack("<H", request.message_id)),
        _implicit(_DATASET_TYPE, struct.pack("<H", NO_DATASET)),
        _implicit(_STATUS, struct.pack("<H", status)),
    ]
    if comment:
        parts.append(_implicit(_ERROR_COMMENT, _padded(comment, b" ")))
    if field == C_STORE_RSP and request.sop_instance_uid is not None:
        parts.append(_implicit(_AFFECTED_SOP_INSTANCE, _padded(request.sop_instance_uid, b"\x00")))
    body = b"".join(parts)
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


def p_data_pdus(context_id: int, command: bytes, peer_max_pdu: int) -> bytes:
    """A command as P-DATA-TF PDUs, one PDV each, within the peer's maximum length."""
    size = len(command) if peer_max_pdu == 0 else max(1, peer_max_pdu - 6)
    out = []
    for start in range(0, len(command), size):
        fragment = command[start : start + size]
        last = start + size >= len(command)
        pdv = _PDV_HEADER.pack(len(fragment) + 2, context_id, 0x03 if last else 0x01)
        out.append(_PDU_HEADER.pack(P_DATA_TF_PDU, len(pdv) + len(fragment)) + pdv + fragment)
    return b"".join(out)


# --- one association -----------------------------------------------------------------------


@dataclass
class _Message:
    """A C-STORE whose dataset is arriving: file meta first, then the fragments, in place.

    With `incoming`, the bytes also go to the archive as they arrive, up to `fed`.
    """

    context: PresentationContext
    command: Command
    buffer: bytearray
    length: int
    has_meta: bool
    incoming: IncomingInstance | None = None
    fed: int = 0


class FastAssociation:
    """One association served by the fast path, in the server's thread for its connection."""

    def __init__(self, node: DicomNode, sock: socket.socket, address: str, plan: Plan) -> None:
        self.node = node
        self.sock = sock
        self.address = address
        self.plan = plan
        self.ae_title = (plan.request.calling_ae_title or "").strip()
        self._caller: Caller | None = None
        self._header = bytearray(6)
        self._command = bytearray()
        self._message: _Message | None = None
        self._expected_size = 1024 * 1024  # grows to the last dataset's size

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Negotiate, then serve until release, abort, timeout or a protocol error."""
        node = self.node
        try:
            self._set_timeouts(node.ae.acse_timeout)
            if not self._negotiate():
                return
            self._set_timeouts(node.ae.network_timeout)
            self._serve()
        except ProtocolError as exc:
            log.warning(
                "aborting association from AE %r at %s: %s", self.ae_title, self.address, exc
            )
            self._send_abort(exc.reason)
        except _Silent:
            log.info("aborting silent association from AE %r at %s", self.ae_title, self.address)
            self._send_abort(0x00)  # reason not specified, as pynetdicom's idle timeout does
        except (_PeerGone, OSError):
            pass  # released, aborted, or gone: nothing half-received is kept
        finally:
            if self._message is not None and self._message.incoming is not None:
                self._message.incoming.discard()  # its dataset never came whole
            node.fast_association_ended(self)
            self.close()

    def close(self) -> None:
        """Drop the connection (also from another thread, when the node stops)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _set_timeouts(self, seconds: float | None) -> None:
        # A kernel timeout on a blocking socket: Python's own timeout polls before every recv,
        # doubling the system calls of a dataset read in many fragments.
        self.sock.settimeout(None)
        _set_receive_timeout(self.sock, seconds)

    # --- association establishment (PS3.8 §7.1) ---------------------------------------------

    def _negotiate(self) -> bool:
        length = _PDU_HEADER.unpack(self._recv_header())[1]
        self._recv_exact(length)  # the request, peeked before: now consumed
        admitted, self._caller = self.node.check_caller(self.ae_title, self.address)
        rejection = None if admitted else (0x01, 0x01, 0x03)  # calling AE not recognised
        if not self.node.fast_association_started(self):
            rejection = (0x02, 0x03, 0x02)  # rejected-transient: local limit exceeded
        if rejection is not None:
            answer = A_ASSOCIATE()
            answer.result, answer.result_source, answer.diagnostic = rejection
            reject = A_ASSOCIATE_RJ()
            reject.from_primitive(answer)
            self.sock.sendall(reject.encode())
            return False
        self.sock.sendall(self.plan.accept_pdu)
        return True

    # --- data transfer -----------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            pdu_type, length = _PDU_HEADER.unpack(self._recv_header())
            if pdu_type == P_DATA_TF_PDU:
                self._p_data(length)
            elif pdu_type == A_RELEASE_RQ_PDU:
                if length != 4:
                    raise ProtocolError("malformed A-RELEASE-RQ")
                self._recv_exact(length)
                if self._message is not None or self._command:
                    log.warning("AE %r released mid-message; it is dropped", self.ae_title)
                # Counted out before the answer: a caller may associate again at once.
                self.node.fast_association_ended(self)
                self.sock.sendall(A_RELEASE_RP)
                return
            elif pdu_type == A_ABORT_PDU:
                return  # a half-received dataset is simply dropped: nothing was stored
            elif pdu_type in (A_ASSOCIATE_RQ_PDU, 0x02, 0x03, A_RELEASE_RP_PDU):
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", UNEXPECTED_PDU)
            else:
                raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}", UNRECOGNISED_PDU)

    def _p_data(self, length: int) -> None:
        remaining = length
        while remaining:
            if remaining < 6:
                raise ProtocolError("P-DATA-TF ends inside a PDV header")
            item_length, context_id, control = _PDV_HEADER.unpack(self._recv_header())
            remaining -= 4 + item_length
            if item_length < 2 or remaining < 0:
                raise ProtocolError("PDV length does not fit its P-DATA-TF")
            size = item_length - 2
            if control & 0x01:
                self._command_fragment(context_id, size, last=bool(control & 0x02))
            else:
                self._dataset_fragment(context_id, size, last=bool(control & 0x02))

    def _command_fragment(self, context_id: int, size: int, *, last: bool) -> None:
        if self._message is not None:
            raise ProtocolError("command fragment inside a dataset")
        if len(self._command) + size > MAX_COMMAND_BYTES:
            raise ProtocolError("command set too long")
        self._command += self._recv_exact(size)
        if not last:
            return
        command = decode_command(bytes(self._command))
        self._command.clear()
        context = self.plan.accepted.get(context_id)
        if context is None:
            raise ProtocolError(f"message on context {context_id}, which was not accepted")
        if command.field == C_STORE_RQ and command.has_dataset:
            meta = self._file_meta(context, command)
            buffer = bytearray(len(meta) + self._expected_size)
            buffer[: len(meta)] = meta
            # Spooled and hashed as it arrives, when the caller is known (it is not when the
            # registry was down at association time: the whole dataset then goes at the end).
            incoming = self.node.receive(self._caller) if meta and self._caller else None
            self._message = _Message(context, command, buffer, len(meta), bool(meta), incoming)
        elif command.field == C_STORE_RQ:  # no dataset: the archive says what is wrong
            meta = self._file_meta(context, command)
            self._store(_Message(context, command, bytearray(meta), len(meta), bool(meta)))
        elif command.field == C_ECHO_RQ and not command.has_dataset:
            response = encode_response(command, C_ECHO_RSP, 0x0000)
            self.sock.sendall(p_data_pdus(context_id, response, self.plan.peer_max_pdu))
        else:
            raise ProtocolError(f"command 0x{command.field:04X} is not served here", UNEXPECTED_PDU)

    def _dataset_fragment(self, context_id: int, size: int, *, last: bool) -> None:
        message = self._message
        if message is None or context_id != message.context.context_id:
            raise ProtocolError("dataset fragment without its command")
        buffer = message.buffer
        while size:
            step = min(size, GROW_STEP)
            end = message.length + step
            if end > len(buffer):
                buffer.extend(bytes(max(end - len(buffer), len(buffer) // 2)))
            with memoryview(buffer) as view:
                self._recv_into(view[message.length : end])
            message.length = end
            size -= step
        if message.incoming is not None and (last or message.length - message.fed >= FEED_BYTES):
            with memoryview(buffer) as view:
                message.incoming.add(view[message.fed : message.length])
            message.fed = message.length
        if last:
            self._message = None
            del buffer[message.length :]
            self._expected_size = len(buffer)
            self._store(message)

    def _file_meta(self, context: PresentationContext, command: Command) -> bytes:
        """The message's file meta; empty when it cannot be written (pydicom refuses an
        empty UID), which fails the C-STORE as pynetdicom's encoded_dataset() would."""
        try:
            return file_meta(
                command.sop_class_uid or "",
                command.sop_instance_uid or "",
                str(context.transfer_syntax[0]),
            )
        except Exception:
            log.exception("C-STORE from %s: no file meta for its command", self.ae_title)
            return b""

    def _store(self, message: _Message) -> None:
        command = message.command
        if message.has_meta:
            status, comment = self.node.store(
                message.buffer, command.sop_instance_uid or "", self._caller_of, message.incoming
            )
        else:
            status, comment = 0x0110, "processing failure"
        response = encode_response(command, C_STORE_RSP, status, comment)
        context_id = int(message.context.context_id)  # type: ignore[arg-type]
        self.sock.sendall(p_data_pdus(context_id, response, self.plan.peer_max_pdu))

    def _caller_of(self) -> Caller:
        """The admitted caller; one admitted unchecked (registry down) is checked now."""
        if self._caller is None:
            self._caller = self.node.identify(self.ae_title, self.address)
        return self._caller

    def _send_abort(self, reason: int) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(bytes((A_ABORT_PDU, 0, 0, 0, 0, 4, 0, 0, 0x02, reason)))

    # --- reading -----------------------------------------------------------------------------

    def _recv_header(self) -> bytearray:
        """The next 6 bytes (a PDU or PDV header), in a buffer reused for every header."""
        with memoryview(self._header) as view:
            self._recv_into(view)
        return self._header

    def _recv_exact(self, size: int) -> bytearray:
        buffer = bytearray(size)
        with memoryview(buffer) as view:
            self._recv_into(view)
        return buffer

    def _recv_into(self, view: memoryview) -> None:
        recv_into = self.sock.recv_into
        got = 0
        total = len(view)
        try:
            while got < total:
                n = recv_into(view[got:], total - got, socket.MSG_WAITALL)
                if not n:
                    raise _PeerGone("connection closed")
                got += n
        except BlockingIOError as exc:  # SO_RCVTIMEO expired: the peer went silent
            raise _Silent("timed out") from exc


def serve(
    node: DicomNode,
    sock: socket.socket,
    address: str,
    plans: Plans,
    hand_over: Callable[[], None],
) -> None:
    """Serve a new connection: on the fast path when its association qualifies, otherwise
    `hand_over()` to pynetdicom with the request still unread."""
    try:
        request = peek_request(sock, node.ae.acse_timeout or 30)
    except (OSError, ValueError):
        sock.close()  # nothing (complete) arrived in time: ARTIM expiry closes the connection
        return
    fast = plans.get(request) if request is not None else None
    if fast is None:
        hand_over()
        return
    log.debug("association from %s at %s on the fast path", fast.request.calling_ae_title, address)
    # pynetdicom leaves Nagle on; each C-STORE response then waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    FastAssociation(node, sock, address, fast).run()


__all__ = [
    "Command",
    "FastAssociation",
    "Plan",
    "Plans",
    "ProtocolError",
    "decode_command",
    "encode_response",
    "file_meta",
    "is_storage",
    "peek_request",
    "plan",
    "serve",
]
